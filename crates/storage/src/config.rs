//! Settings of one partition log.

use crate::io::PAGE_BYTES;

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Default. An append completes once its bytes are written and fdatasync'd
    /// (group commit: one fdatasync per dirty file per round).
    Always,
    /// Relaxed, and named so: an append completes once its bytes are written
    /// (O_DIRECT, so out of the page cache but not necessarily out of the disk's
    /// volatile cache); fdatasync runs at most every `interval_ms`. A power cut
    /// may lose up to that interval of acknowledged appends.
    UnsafeIntervalMs(u64),
}

impl FlushPolicy {
    /// Parses `always` or `unsafe_interval_ms=N`.
    pub fn parse(text: &str) -> Result<FlushPolicy, String> {
        let text = text.trim();
        if text == "always" {
            return Ok(FlushPolicy::Always);
        }
        if let Some(ms) = text.strip_prefix("unsafe_interval_ms=") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| format!("flush: `{ms}` is not a number of ms"))?;
            if ms == 0 {
                return Ok(FlushPolicy::Always);
            }
            return Ok(FlushPolicy::UnsafeIntervalMs(ms));
        }
        Err(format!(
            "flush: expected `always` or `unsafe_interval_ms=N`, got `{text}`"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would pass this size.
    pub segment_bytes: u64,
    /// Roll when the active segment is older than this (None: never by age).
    pub segment_ms: Option<u64>,
    /// One sparse offset-index entry per this many bytes of batches.
    pub index_interval_bytes: u64,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest timestamp is older than this.
    pub retention_ms: Option<u64>,
    pub flush: FlushPolicy,
    /// Space is reserved in the active segment in steps of this size.
    pub preallocate_bytes: u64,
    /// Size of one write chunk: pending data is held in chunks of this size and
    /// a flush writes them all at once (so one large flush is several writes
    /// in flight). The first chunk after a flush is sized like that flush.
    pub write_buffer_bytes: u64,
}

pub const SEGMENT_BYTES_DEFAULT: u64 = 1 << 30;
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// Positions in the offset index are u32.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;
pub const INDEX_INTERVAL_BYTES_DEFAULT: u64 = 4096;
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 16 << 20;
pub const WRITE_BUFFER_BYTES_DEFAULT: u64 = 512 << 10;
pub const RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
pub const SEGMENT_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(PAGE_BYTES));
const _: () = assert!(PREALLOCATE_BYTES_DEFAULT.is_multiple_of(PAGE_BYTES));
const _: () = assert!(WRITE_BUFFER_BYTES_DEFAULT.is_multiple_of(PAGE_BYTES));
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_ms: Some(SEGMENT_MS_DEFAULT),
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            retention_bytes: None,
            retention_ms: Some(RETENTION_MS_DEFAULT),
            flush: FlushPolicy::Always,
            preallocate_bytes: PREALLOCATE_BYTES_DEFAULT,
            write_buffer_bytes: WRITE_BUFFER_BYTES_DEFAULT,
        }
    }
}

impl LogConfig {
    /// Checks the settings against each other; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(format!(
                "segment_bytes: {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err("index_interval_bytes: must be at least 1".into());
        }
        if !self.preallocate_bytes.is_multiple_of(PAGE_BYTES) {
            return Err(format!(
                "preallocate_bytes: must be a multiple of {PAGE_BYTES}"
            ));
        }
        if self.write_buffer_bytes < PAGE_BYTES || !self.write_buffer_bytes.is_power_of_two() {
            return Err(format!(
                "write_buffer_bytes: must be a power of two of at least {PAGE_BYTES}"
            ));
        }
        if self.segment_ms == Some(0) {
            return Err("segment_ms: must be at least 1".into());
        }
        Ok(())
    }
}
