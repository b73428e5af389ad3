//! One partition a shard owns: its log, its effective topic config and its
//! idempotent-producer state, and the operations on it (produce with the
//! producer-sequence check, fetch, list offsets, delete records, config
//! changes, producer snapshots). Generic over the storage seam: the broker
//! runs it on O_DIRECT files, tests on the fault-injecting in-memory backend.
//! It knows nothing of shards, routing or requests.

use crate::mesh::{FetchOutcome, ListOffsetsOutcome, ProduceOutcome};
use crate::producers::{PartitionProducers, SequenceCheck};
use crate::replication::ReplicaState;
use crate::topic_config::EffectiveTopicConfig;
use sluice_protocol::api::error_code;
use sluice_protocol::record_batch::{BatchError, BatchHeader};
use sluice_storage::io::StorageDir;
use sluice_storage::{AppendOptions, LogError, PartitionLog, Records};
use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

pub struct Partition<D: StorageDir> {
    pub log: Rc<PartitionLog<D>>,
    /// Replaced when the topic's configs change (AlterConfigs).
    pub config: Cell<EffectiveTopicConfig>,
    pub producers: PartitionProducers,
    /// The partition's directory (producer snapshots are plain files in it).
    pub dir: PathBuf,
    /// High watermark covered by the last producer snapshot written.
    pub producers_snapshot_at: Cell<i64>,
    /// Leader, epoch, ISR, high watermark (see `replication.rs`).
    pub replica: ReplicaState,
}

impl<D: StorageDir + 'static> Partition<D> {
    /// Opens (recovers) the log in `storage` and rebuilds the producer state
    /// from the snapshot in `dir` and the log after it.
    pub async fn open(
        storage: D,
        config: EffectiveTopicConfig,
        name: String,
        dir: PathBuf,
        node_id: i32,
    ) -> Result<Partition<D>, String> {
        let log = PartitionLog::open(storage, config.log, name.clone())
            .await
            .map_err(|e| format!("opening partition {name}: {e}"))?;
        let producers = PartitionProducers::default();
        rebuild_producers(&log, &producers, &dir.join(crate::producers::SNAPSHOT_FILE))
            .await
            .map_err(|e| format!("partition {name}: {e}"))?;
        let replica = ReplicaState::new(node_id, &dir, log.high_watermark());
        Ok(Partition {
            log,
            config: Cell::new(config),
            producers,
            dir,
            producers_snapshot_at: Cell::new(-1),
            replica,
        })
    }

    fn refused(&self, error_code: i16, message: String) -> ProduceOutcome {
        ProduceOutcome {
            error_code,
            error_message: Some(message),
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: self.log.log_start_offset(),
        }
    }

    /// Appends a produced batch (already validated record by record by the
    /// produce handler): max.message.bytes, then the idempotent-producer
    /// check (a retried duplicate gets its original offsets), then the log.
    pub async fn produce(&self, records: bytes::Bytes) -> ProduceOutcome {
        let log = &self.log;
        let fail = |code: i16, message: String| self.refused(code, message);
        let max_message_bytes = self.config.get().max_message_bytes;
        if records.len() as i64 > max_message_bytes {
            return fail(
                error_code::MESSAGE_TOO_LARGE,
                format!(
                    "record batch of {} bytes exceeds max.message.bytes {max_message_bytes}",
                    records.len(),
                ),
            );
        }
        // Record-level validation was done by the produce handler on the
        // receiving shard (`handlers/produce.rs`); the log checks the CRC again.
        // Idempotent producers: a retried batch gets its original offsets.
        let header = BatchHeader::parse(&records).ok();
        if let Some(header) = &header {
            match self.producers.check(header) {
                SequenceCheck::Append => {}
                SequenceCheck::Duplicate(mut original) => {
                    // The original may still be on its way to disk.
                    while original.base_offset < 0 || log.high_watermark() <= original.last_offset {
                        // Bounded: the original's failure may be recorded after the last flush notice.
                        futures_lite::future::or(
                            log.wait_for_flush(),
                            glommio::timer::sleep(Duration::from_millis(20)),
                        )
                        .await;
                        match self.producers.check(header) {
                            SequenceCheck::Duplicate(now) => original = now,
                            // The original failed and was forgotten: this retry is appended.
                            SequenceCheck::Append => {
                                return Box::pin(self.append_checked(records, header)).await
                            }
                            SequenceCheck::Reject(code) => {
                                return fail(code, "producer sequence refused".into())
                            }
                        }
                    }
                    return ProduceOutcome {
                        error_code: error_code::NONE,
                        error_message: None,
                        base_offset: original.base_offset,
                        log_append_time_ms: -1,
                        log_start_offset: log.log_start_offset(),
                    };
                }
                SequenceCheck::Reject(code) => {
                    return fail(
                        code,
                        format!(
                            "producer {} epoch {} sequence {} refused",
                            header.producer_id, header.producer_epoch, header.base_sequence
                        ),
                    );
                }
            }
        }
        match header {
            Some(header) => self.append_checked(records, &header).await,
            None => self.append_unchecked(records).await,
        }
    }

    /// Appends a batch already accepted by the producer-sequence check.
    async fn append_checked(&self, records: bytes::Bytes, header: &BatchHeader) -> ProduceOutcome {
        let outcome = self.append_unchecked(records).await;
        if outcome.error_code == error_code::NONE {
            let last_offset = outcome.base_offset + header.last_offset_delta as i64;
            self.producers
                .confirm(header, outcome.base_offset, last_offset);
        } else {
            self.producers.forget(header);
        }
        outcome
    }

    async fn append_unchecked(&self, records: bytes::Bytes) -> ProduceOutcome {
        let log = &self.log;
        let fail = |code: i16, message: String| self.refused(code, message);
        // Checked here, in the step that stages the batch: a produce that
        // waited (a retried duplicate) may find this replica deposed.
        if !self.replica.is_leader() {
            return fail(
                error_code::NOT_LEADER_OR_FOLLOWER,
                "this replica no longer leads the partition".into(),
            );
        }
        let log_append_time_ms = self
            .config
            .get()
            .log_append_time
            .then(|| sluice_storage::now_ms() as i64);
        let options = AppendOptions {
            log_append_time_ms,
            partition_leader_epoch: self.replica.leader_epoch.get().max(0),
        };
        let result = log.append(&records, options).await;
        // An ISR of the leader alone moves the high watermark with its own appends.
        self.update_high_watermark();
        match result {
            Ok(info) => ProduceOutcome {
                error_code: error_code::NONE,
                error_message: None,
                base_offset: info.base_offset,
                log_append_time_ms: info.log_append_time_ms.unwrap_or(-1),
                log_start_offset: info.log_start_offset,
            },
            Err(e) => {
                if !matches!(e, LogError::InvalidBatch(_)) {
                    tracing::warn!(partition = log.name(), error = %e, "append failed");
                }
                fail(log_error_code(&e), e.to_string())
            }
        }
    }

    /// A consumer's read: whole batches below the high watermark.
    pub async fn fetch(&self, offset: i64, max_bytes: usize, strict: bool) -> FetchOutcome {
        let log = &self.log;
        let high_watermark = self.high_watermark();
        let result = if offset >= high_watermark && offset <= log.high_watermark() {
            // Past what every in-sync replica has: nothing to read yet.
            Ok(Records::new())
        } else {
            log.read(offset, max_bytes.max(1)).await.map(|read| {
                // Reads stop at the durable end: only a replicated partition
                // whose followers lag has batches to hold back.
                if read.next_offset <= high_watermark {
                    read.records
                } else {
                    read.records
                        .prefix_while(|header, _| header.last_offset() < high_watermark)
                }
            })
        };
        match result {
            Ok(records) => {
                let oversized = strict && records.len() > max_bytes;
                FetchOutcome {
                    error_code: error_code::NONE,
                    high_watermark,
                    log_start_offset: log.log_start_offset(),
                    records: if oversized { Records::new() } else { records },
                    oversized,
                    diverging: None,
                }
            }
            Err(e) => FetchOutcome {
                error_code: log_error_code(&e),
                high_watermark,
                log_start_offset: log.log_start_offset(),
                ..Default::default()
            },
        }
    }

    /// ListOffsets: -2 earliest, -1 latest, -3 max timestamp, else by
    /// timestamp; only records below the high watermark count.
    pub async fn list_offsets(&self, timestamp: i64) -> ListOffsetsOutcome {
        let mut outcome = self.list_log_offsets(timestamp).await;
        let by_time = timestamp == -3 || timestamp >= 0;
        if by_time && outcome.offset >= self.high_watermark() {
            outcome.offset = -1;
            outcome.timestamp = -1;
        }
        outcome
    }

    async fn list_log_offsets(&self, timestamp: i64) -> ListOffsetsOutcome {
        let log = &self.log;
        let found = |offset: i64, timestamp: i64| ListOffsetsOutcome {
            error_code: error_code::NONE,
            offset,
            timestamp,
            leader_epoch: -1,
        };
        match timestamp {
            // -4 (v8, KIP-405): the earliest offset on local storage; with no
            // tiered storage, the earliest offset.
            -2 | -4 => found(log.log_start_offset(), -1),
            -1 => found(self.high_watermark(), -1),
            -3 => match log.max_timestamp() {
                Some((offset, ts)) => found(offset, ts),
                None => found(-1, -1),
            },
            t if t >= 0 => match log.offset_for_timestamp(t).await {
                Ok(Some((offset, ts))) => found(offset, ts),
                Ok(None) => found(-1, -1),
                Err(e) => ListOffsetsOutcome {
                    error_code: log_error_code(&e),
                    offset: -1,
                    timestamp: -1,
                    leader_epoch: -1,
                },
            },
            _ => ListOffsetsOutcome {
                error_code: error_code::INVALID_REQUEST,
                offset: -1,
                timestamp: -1,
                leader_epoch: -1,
            },
        }
    }

    /// DeleteRecords: the log start moves up to `before` (-1: the high
    /// watermark); the answer is (error code, low watermark).
    pub async fn delete_records(&self, before: i64) -> (i16, i64) {
        let before = if before == -1 {
            self.high_watermark()
        } else {
            before
        };
        // As Kafka: not past what every in-sync replica has.
        if before > self.high_watermark() {
            return (error_code::OFFSET_OUT_OF_RANGE, -1);
        }
        match self.log.delete_records_before(before).await {
            Ok(low_watermark) => (error_code::NONE, low_watermark),
            Err(e) => (log_error_code(&e), -1),
        }
    }

    /// The topic's configs changed: produce checks use them at once, the log
    /// from its next roll, retention check or compaction.
    pub fn apply_config(&self, config: EffectiveTopicConfig) {
        self.config.set(config);
        if let Err(e) = self.log.set_config(config.log) {
            tracing::error!(partition = self.log.name(), error = %e, "topic config not applied to the log");
        }
    }

    /// A partition's producer snapshot to write, if the log moved since the last
    /// one and every append is confirmed; records it as written.
    pub fn prepare_producer_snapshot(&self) -> Option<(std::path::PathBuf, Vec<u8>)> {
        let covered = self.log.high_watermark();
        if self.producers_snapshot_at.get() == covered {
            return None;
        }
        // Only with every append confirmed: the state must equal the log below `covered`.
        let bytes = self.producers.encode_snapshot(covered)?;
        self.producers_snapshot_at.set(covered);
        Some((self.dir.clone(), bytes))
    }
}

/// The whole batches of `records` that end below `high_watermark`.
/// Kafka error code for a storage error; disk trouble is logged by storage.
pub fn log_error_code(error: &LogError) -> i16 {
    match error {
        LogError::InvalidBatch(BatchError::MagicUnsupported { .. }) => {
            error_code::UNSUPPORTED_FOR_MESSAGE_FORMAT
        }
        LogError::InvalidBatch(_) => error_code::CORRUPT_MESSAGE,
        LogError::BatchTooLarge { .. } => error_code::MESSAGE_TOO_LARGE,
        LogError::OffsetOutOfRange { .. } => error_code::OFFSET_OUT_OF_RANGE,
        LogError::Io(_)
        | LogError::SyncFailed(_)
        | LogError::Corrupt { .. }
        | LogError::Closed
        | LogError::Busy => error_code::KAFKA_STORAGE_ERROR,
    }
}

/// Rebuilds idempotent-producer state: from the snapshot if there is a usable
/// one, then the batches after it; else from the active segment's batches.
pub(crate) async fn rebuild_producers<D: StorageDir + 'static>(
    log: &Rc<PartitionLog<D>>,
    producers: &PartitionProducers,
    snapshot: &std::path::Path,
) -> Result<(), String> {
    let Some(&active) = log.segment_base_offsets().last() else {
        return Ok(());
    };
    let mut offset = active.max(log.log_start_offset());
    if let Ok(bytes) = std::fs::read(snapshot) {
        match producers.load_snapshot(&bytes) {
            Some(covered)
                if covered >= log.log_start_offset() && covered <= log.high_watermark() =>
            {
                offset = covered
            }
            Some(_) => producers.clear(),
            None => {
                tracing::warn!(path = %snapshot.display(), "producer snapshot damaged: reading the active segment")
            }
        }
    }
    loop {
        let read = log.read(offset, 1 << 20).await.map_err(|e| e.to_string())?;
        if read.records.is_empty() {
            return Ok(());
        }
        for header in read.records.headers() {
            if header.last_offset() >= offset {
                producers.observe_stored(&header);
            }
        }
        offset = read.next_offset;
    }
}

/// Writes a producer snapshot (temp file, fsync, rename, directory fsync).
/// Blocking; a failure is logged (recovery then reads the log instead).
pub fn write_producer_snapshot_file(dir: &std::path::Path, bytes: &[u8]) {
    let path = dir.join(crate::producers::SNAPSHOT_FILE);
    if let Err(e) = crate::storage_dir::write_durably(&path, bytes) {
        tracing::warn!(path = %path.display(), error = %e, "writing producer snapshot failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::record_batch::build_batch_with_producer;
    use sluice_storage::io::memory::{CrashMode, MemDir};
    use sluice_storage::{CompactionConfig, LogConfig};

    fn config() -> EffectiveTopicConfig {
        EffectiveTopicConfig {
            log: LogConfig {
                segment_bytes: 16 * 1024,
                preallocate_bytes: 8 * 1024,
                write_buffer_bytes: 4096,
                ..LogConfig::default()
            },
            max_message_bytes: 1 << 20,
            log_append_time: false,
            compact: false,
            compaction: CompactionConfig {
                delete_retention_ms: 0,
                min_cleanable_dirty_ratio: 0.5,
                min_compaction_lag_ms: 0,
                max_compaction_lag_ms: i64::MAX,
                map_bytes: 1 << 20,
                io_bytes_per_second: None,
            },
            min_insync_replicas: 1,
        }
    }

    fn batch(sequence: i32) -> bytes::Bytes {
        bytes::Bytes::from(build_batch_with_producer(1, &[b"a", b"b"], 7, 0, sequence))
    }

    /// Idempotence on the fault-injecting backend: duplicates get their
    /// original offsets, gaps are refused, and after a crash the producer
    /// state is rebuilt from the log so a retry is still recognized.
    #[test]
    fn idempotent_produce_survives_a_crash_on_the_memory_backend() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let storage = MemDir::new();
                let dir = tempfile::tempdir().unwrap();
                let open = || {
                    Partition::open(
                        storage.clone(),
                        config(),
                        "p-0".into(),
                        dir.path().to_path_buf(),
                        1,
                    )
                };
                let partition = open().await.unwrap();
                assert_eq!(partition.produce(batch(0)).await.base_offset, 0);
                assert_eq!(partition.produce(batch(2)).await.base_offset, 2);
                // The retry of an acknowledged batch: its offsets, nothing written.
                let retry = partition.produce(batch(2)).await;
                assert_eq!((retry.error_code, retry.base_offset), (error_code::NONE, 2));
                assert_eq!(partition.log.high_watermark(), 4);
                // A sequence gap.
                let gap = partition.produce(batch(9)).await;
                assert_eq!(gap.error_code, error_code::OUT_OF_ORDER_SEQUENCE_NUMBER);
                drop(partition);
                storage.crash(CrashMode::DropUnsynced);
                let partition = open().await.unwrap();
                let retry = partition.produce(batch(2)).await;
                assert_eq!((retry.error_code, retry.base_offset), (error_code::NONE, 2));
                assert_eq!(partition.produce(batch(4)).await.base_offset, 4);
                assert_eq!(partition.log.high_watermark(), 6);
                // Too large for max.message.bytes, refused before the log.
                partition.apply_config(EffectiveTopicConfig {
                    max_message_bytes: 10,
                    ..config()
                });
                assert_eq!(
                    partition.produce(batch(6)).await.error_code,
                    error_code::MESSAGE_TOO_LARGE
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
