//! Errors of the partition log. Operating errors (bad input, a full disk, a
//! failed device) are values; broken invariants are assertions.

use sluice_protocol::record_batch::BatchError;
use std::fmt;
use std::io;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum LogError {
    /// The batch handed to `append` is not a valid v2 batch; nothing was written.
    InvalidBatch(BatchError),
    /// The batch is larger than a segment may hold.
    BatchTooLarge {
        batch_bytes: u64,
        segment_bytes: u64,
    },
    /// The offset is outside `[log_start_offset, high_watermark]`.
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        high_watermark: i64,
    },
    /// A write failed (ENOSPC, EIO). The appends of that round failed; the log
    /// is back at its last durable state and accepts appends again.
    Io(Arc<io::Error>),
    /// An fdatasync failed. Whether the data reached the disk is unknown, and
    /// Linux may already have dropped the dirty pages, so the log refuses
    /// appends until it is closed and recovered.
    SyncFailed(Arc<io::Error>),
    /// Stored bytes failed their check when read back: not served.
    Corrupt {
        segment_base_offset: i64,
        position: u64,
        detail: String,
    },
    /// The log was closed.
    Closed,
    /// The log is being truncated; retry.
    Busy,
}

impl LogError {
    pub fn io(error: io::Error) -> LogError {
        LogError::Io(Arc::new(error))
    }

    /// True for ENOSPC (Kafka: KAFKA_STORAGE_ERROR, with a clear log line).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC))
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::InvalidBatch(e) => write!(f, "invalid record batch: {e}"),
            LogError::BatchTooLarge {
                batch_bytes,
                segment_bytes,
            } => write!(
                f,
                "record batch of {batch_bytes} bytes is larger than segment_bytes {segment_bytes}"
            ),
            LogError::OffsetOutOfRange {
                offset,
                log_start_offset,
                high_watermark,
            } => write!(
                f,
                "offset {offset} is outside the log [{log_start_offset}, {high_watermark}]"
            ),
            LogError::Io(e) => write!(f, "write failed: {e}"),
            LogError::SyncFailed(e) => {
                write!(
                    f,
                    "fdatasync failed, log refuses appends until recovered: {e}"
                )
            }
            LogError::Corrupt {
                segment_base_offset,
                position,
                detail,
            } => write!(
                f,
                "corrupt data in segment {segment_base_offset:020} at byte {position}: {detail}"
            ),
            LogError::Closed => write!(f, "log is closed"),
            LogError::Busy => write!(f, "log is being truncated, retry"),
        }
    }
}

impl std::error::Error for LogError {}

impl From<BatchError> for LogError {
    fn from(e: BatchError) -> LogError {
        LogError::InvalidBatch(e)
    }
}

pub type LogResult<T> = Result<T, LogError>;
