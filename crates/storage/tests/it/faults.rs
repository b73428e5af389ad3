//! Deterministic fault scenarios on the in-memory backend.

use crate::{batch, run, small_config, split_batches, stored_form};
use sluice_storage::io::memory::{CrashMode, Faults, MemDir};
use sluice_storage::{
    AppendOptions, FlushPolicy, LogConfig, LogError, PartitionLog, CLEAN_SHUTDOWN_FILE,
};
use std::rc::Rc;

async fn open(dir: &MemDir, config: LogConfig) -> Rc<PartitionLog<MemDir>> {
    PartitionLog::open(dir.clone(), config, "faults-0")
        .await
        .unwrap()
}

async fn append(log: &Rc<PartitionLog<MemDir>>, raw: &[u8]) -> Result<i64, LogError> {
    log.append(raw, AppendOptions::default())
        .await
        .map(|i| i.base_offset)
}

#[test]
fn torn_tail_is_cut_and_every_whole_batch_survives() {
    run(|| async {
        // Relaxed policy: appends are acknowledged before fdatasync, so a crash
        // can tear the last write. Recovery must cut exactly at the torn batch.
        for torn_prefix_bytes in (0usize..4200).step_by(97) {
            let dir = MemDir::new();
            let config = LogConfig {
                flush: FlushPolicy::UnsafeIntervalMs(3_600_000),
                ..small_config()
            };
            let log = open(&dir, config).await;
            let mut raws = Vec::new();
            for i in 0..6 {
                let raw = batch(i, 3, 500, 10);
                append(&log, &raw).await.unwrap();
                raws.push(raw);
            }
            drop(log);
            // Keep the first 3 unsynced writes whole, tear the 4th.
            dir.crash(CrashMode::Torn {
                writes_kept: 3,
                torn_prefix_bytes,
            });
            let log = open(&dir, config).await;
            let read = log.read(0, 1 << 20).await.unwrap();
            let got = split_batches(&read.records.to_bytes());
            // Whatever survived is a prefix of what was written, byte for byte.
            assert!(got.len() <= raws.len());
            let mut offset = 0;
            for ((header, bytes), raw) in got.iter().zip(&raws) {
                assert_eq!(header.base_offset, offset);
                assert_eq!(bytes, &stored_form(raw, offset));
                offset = header.last_offset() + 1;
            }
            assert_eq!(log.high_watermark(), offset);
            // The log takes appends again right after the cut.
            let next = batch(99, 1, 10, 10);
            assert_eq!(append(&log, &next).await.unwrap(), offset);
        }
    });
}

#[test]
fn acknowledged_appends_survive_a_crash_that_drops_unsynced_data() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        let mut expected = Vec::new();
        for i in 0..40 {
            let raw = batch(i, 2, 300, 10);
            let base = append(&log, &raw).await.unwrap();
            expected.push(stored_form(&raw, base));
        }
        assert!(
            log.segment_base_offsets().len() > 1,
            "test should roll segments"
        );
        drop(log);
        dir.crash(CrashMode::DropUnsynced);
        let log = open(&dir, small_config()).await;
        let got: Vec<Vec<u8>> =
            split_batches(&log.read(0, 1 << 20).await.unwrap().records.to_bytes())
                .into_iter()
                .map(|(_, b)| b)
                .collect();
        assert_eq!(got, expected);
    });
}

#[test]
fn failed_fdatasync_fails_the_append_and_refuses_more_until_reopened() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        append(&log, &batch(1, 1, 10, 1)).await.unwrap();
        dir.set_faults(Faults {
            sync_failures: 1,
            ..Faults::default()
        });
        let err = append(&log, &batch(2, 1, 10, 1)).await.unwrap_err();
        assert!(matches!(err, LogError::SyncFailed(_)), "{err}");
        // No silent retry: the next append is refused even though fsync would work.
        let err = append(&log, &batch(3, 1, 10, 1)).await.unwrap_err();
        assert!(matches!(err, LogError::SyncFailed(_)), "{err}");
        // Durable data stays readable.
        assert_eq!(
            split_batches(&log.read(0, 4096).await.unwrap().records.to_bytes()).len(),
            1
        );
        let _ = log.close().await;
        drop(log);
        assert!(
            dir.file_bytes(CLEAN_SHUTDOWN_FILE).is_none(),
            "a failed log must not claim a clean close"
        );
        let log = open(&dir, small_config()).await;
        let next = log.high_watermark();
        assert!(
            next == 1 || next == 2,
            "the in-doubt batch is there whole or not at all"
        );
        assert_eq!(append(&log, &batch(4, 1, 10, 1)).await.unwrap(), next);
    });
}

#[test]
fn disk_full_fails_cleanly_and_the_log_recovers_when_space_returns() {
    run(|| async {
        let dir = MemDir::new();
        let config = LogConfig {
            preallocate_bytes: 0,
            ..small_config()
        };
        let log = open(&dir, config).await;
        let first = batch(1, 2, 100, 1);
        append(&log, &first).await.unwrap();
        dir.set_faults(Faults {
            capacity_bytes: Some(4096),
            ..Faults::default()
        });
        let big = batch(2, 4, 2000, 1);
        let err = append(&log, &big).await.unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        // Readable and consistent: exactly the first batch.
        let got = split_batches(&log.read(0, 1 << 20).await.unwrap().records.to_bytes());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, stored_form(&first, 0));
        assert_eq!(log.high_watermark(), 2);
        // Space back: the same offsets are handed out again.
        dir.set_faults(Faults::default());
        assert_eq!(append(&log, &big).await.unwrap(), 2);
        log.close().await.unwrap();
        let log = open(&dir, config).await;
        assert_eq!(log.high_watermark(), 6);
    });
}

#[test]
fn failed_write_fails_every_waiting_append_and_keeps_the_log_usable() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        dir.set_faults(Faults {
            write_failures: 1,
            ..Faults::default()
        });
        let a = {
            let log = log.clone();
            glommio::spawn_local(async move { append(&log, &batch(1, 1, 10, 1)).await })
        };
        let b = {
            let log = log.clone();
            glommio::spawn_local(async move { append(&log, &batch(2, 1, 10, 1)).await })
        };
        assert!(a.await.is_err());
        assert!(b.await.is_err());
        assert_eq!(log.high_watermark(), 0);
        assert_eq!(append(&log, &batch(3, 1, 10, 1)).await.unwrap(), 0);
    });
}

#[test]
fn corrupt_bytes_in_a_sealed_segment_are_detected_not_served() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        let mut positions = Vec::new();
        for i in 0..60 {
            positions.push(append(&log, &batch(i, 1, 700, 1)).await.unwrap());
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 3);
        log.close().await.unwrap();
        // Flip a byte in the middle of the first (sealed) segment.
        let name = format!("{:020}.log", bases[0]);
        let bytes = dir.file_bytes(&name).unwrap();
        let middle = bytes.len() as u64 / 2;
        dir.corrupt(&name, middle, &[bytes[middle as usize] ^ 0xff]);
        let log = open(&dir, small_config()).await;
        let mut corrupt_seen = false;
        for offset in bases[0]..bases[1] {
            match log.read(offset, 1).await {
                Ok(read) => {
                    for (_, b) in split_batches(&read.records.to_bytes()) {
                        sluice_protocol::record_batch::validate_batch(&b)
                            .expect("served batch is valid");
                    }
                }
                Err(LogError::Corrupt {
                    segment_base_offset,
                    ..
                }) => {
                    assert_eq!(segment_base_offset, bases[0]);
                    corrupt_seen = true;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(corrupt_seen, "the corrupt batch was served or skipped");
        // Other segments are unaffected.
        assert!(log.read(bases[1], 1 << 20).await.is_ok());
    });
}

#[test]
fn a_damaged_index_is_rebuilt_from_the_data() {
    run(|| async {
        let dir = MemDir::new();
        let config = LogConfig {
            index_interval_bytes: 256,
            ..small_config()
        };
        let log = open(&dir, config).await;
        for i in 0..40 {
            append(&log, &batch(i, 2, 200, i as i64)).await.unwrap();
        }
        let bases = log.segment_base_offsets();
        log.close().await.unwrap();
        let index = format!("{:020}.index", bases[0]);
        let bytes = dir.file_bytes(&index).unwrap();
        assert!(bytes.len() >= 24, "sealed segment has index entries");
        dir.corrupt(&index, 13, &[bytes[13] ^ 1]);
        let log = open(&dir, config).await;
        for offset in 0..log.high_watermark() {
            let read = log.read(offset, 1).await.unwrap();
            let got = split_batches(&read.records.to_bytes());
            assert!(got[0].0.base_offset <= offset && got[0].0.last_offset() >= offset);
        }
        assert_eq!(
            dir.file_bytes(&index).unwrap(),
            bytes,
            "rebuilt index equals the original"
        );
        assert_eq!(
            log.offset_for_timestamp(17).await.unwrap().map(|x| x.1),
            Some(17)
        );
    });
}

#[test]
fn clean_close_leaves_a_marker_that_the_next_open_consumes() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        for i in 0..5 {
            append(&log, &batch(i, 1, 100, 50 + i as i64))
                .await
                .unwrap();
        }
        log.close().await.unwrap();
        assert!(dir.file_bytes(CLEAN_SHUTDOWN_FILE).is_some());
        // The active segment is cut to its data (no preallocated tail).
        let active = dir.file_bytes(&format!("{:020}.log", 0)).unwrap();
        assert_eq!(active.len(), 5 * batch(0, 1, 100, 0).len());
        let log = open(&dir, small_config()).await;
        assert!(dir.file_bytes(CLEAN_SHUTDOWN_FILE).is_none());
        assert_eq!(log.high_watermark(), 5);
        assert_eq!(log.max_timestamp(), Some((4, 54)));
        assert!(matches!(append(&log, &batch(9, 1, 1, 1)).await, Ok(5)));
    });
}

#[test]
fn invalid_batches_are_rejected_with_nothing_written() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        let mut raw = batch(1, 2, 50, 1);
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(matches!(
            append(&log, &raw).await,
            Err(LogError::InvalidBatch(_))
        ));
        assert!(matches!(
            append(&log, &raw[..30]).await,
            Err(LogError::InvalidBatch(_))
        ));
        let huge = batch(1, 30, 1000, 1);
        assert!(matches!(
            append(&log, &huge).await,
            Err(LogError::BatchTooLarge { .. })
        ));
        assert_eq!(log.high_watermark(), 0);
        assert!(
            dir.list_names().iter().all(|n| !n.ends_with(".log")),
            "no segment written"
        );
    });
}

#[test]
fn retention_by_bytes_keeps_the_newest_segments() {
    run(|| async {
        let dir = MemDir::new();
        let config = LogConfig {
            retention_bytes: Some(40 * 1024),
            ..small_config()
        };
        let log = open(&dir, config).await;
        for i in 0..200 {
            append(&log, &batch(i, 1, 900, 1)).await.unwrap();
        }
        let before = log.offsets();
        let deleted = log.enforce_retention(0).await.unwrap();
        let after = log.offsets();
        assert!(deleted > 0);
        assert!(after.size_bytes >= 40 * 1024 - 16 * 1024 && after.size_bytes < before.size_bytes);
        assert_eq!(after.log_start_offset, log.segment_base_offsets()[0]);
        assert_eq!(after.high_watermark, 200);
        assert!(matches!(
            log.read(0, 100).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        let read = log.read(after.log_start_offset, 1 << 20).await.unwrap();
        assert_eq!(read.next_offset, 200);
        for name in dir.list_names() {
            if let Some(base) = name.strip_suffix(".log") {
                assert!(
                    base.parse::<i64>().unwrap() >= after.log_start_offset,
                    "{name} not deleted"
                );
            }
        }
    });
}

#[test]
fn log_append_time_is_stamped_and_checksummed() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        let info = log
            .append(
                &batch(1, 3, 10, 5),
                AppendOptions {
                    log_append_time_ms: Some(777),
                    partition_leader_epoch: 0,
                },
            )
            .await
            .unwrap();
        assert_eq!(info.max_timestamp, 777);
        let got = split_batches(&log.read(0, 4096).await.unwrap().records.to_bytes());
        assert!(got[0].0.is_log_append_time());
        assert_eq!(got[0].0.max_timestamp, 777);
        assert_eq!(log.offset_for_timestamp(700).await.unwrap(), Some((0, 777)));
    });
}

#[test]
fn a_corrupt_length_field_in_a_sealed_segment_is_reported_not_looped_on() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        let mut sizes = Vec::new();
        for i in 0..40 {
            let raw = batch(i, 1, 500, 1);
            sizes.push(raw.len() as u64);
            append(&log, &raw).await.unwrap();
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 2);
        log.close().await.unwrap();
        // batch_length (bytes 8..12, outside the CRC) of the third batch: huge.
        let name = format!("{:020}.log", bases[0]);
        let position = sizes[0] + sizes[1];
        dir.corrupt(&name, position + 8, &i32::MAX.to_be_bytes());
        let log = open(&dir, small_config()).await;
        let result = log.read(2, 1 << 20).await;
        assert!(
            matches!(result, Err(LogError::Corrupt { .. })),
            "{result:?}"
        );
        // A base offset rewritten outside the CRC is caught by continuity.
        dir.corrupt(&name, position + 8, &((sizes[2] - 12) as i32).to_be_bytes());
        dir.corrupt(&name, position, &77i64.to_be_bytes());
        let log = open(&dir, small_config()).await;
        assert!(matches!(
            log.read(0, 1 << 20).await,
            Err(LogError::Corrupt { .. })
        ));
    });
}

#[test]
fn a_closed_log_answers_closed_instead_of_panicking() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        append(&log, &batch(1, 1, 10, 1)).await.unwrap();
        log.close().await.unwrap();
        assert!(matches!(log.read(0, 100).await, Err(LogError::Closed)));
        assert!(matches!(
            append(&log, &batch(2, 1, 10, 1)).await,
            Err(LogError::Closed)
        ));
        assert!(matches!(
            log.offset_for_timestamp(0).await,
            Err(LogError::Closed)
        ));
        assert_eq!(log.enforce_retention(u64::MAX / 2).await.unwrap(), 0);
    });
}

#[test]
fn reads_and_appends_during_truncation_get_busy_not_a_broken_log() {
    run(|| async {
        let dir = MemDir::new();
        dir.set_faults(Faults {
            yield_on_io: true,
            ..Faults::default()
        });
        let log = open(&dir, small_config()).await;
        for i in 0..30 {
            append(&log, &batch(i, 1, 600, 1)).await.unwrap();
        }
        let truncation = {
            let log = log.clone();
            glommio::spawn_local(async move { log.truncate_to(0).await })
        };
        // Poll until the truncation is between its steps (file I/O yields).
        let mut during_read = None;
        for _ in 0..1000 {
            match log.read(0, 100).await {
                Err(LogError::Busy) => {
                    during_read = Some(LogError::Busy);
                    break;
                }
                _ => futures_lite::future::yield_now().await,
            }
        }
        assert!(
            during_read.is_some(),
            "never saw the truncation in progress"
        );
        let during_append = append(&log, &batch(50, 1, 10, 1)).await;
        truncation.await.unwrap();
        assert!(
            matches!(during_append, Err(LogError::Busy)),
            "{during_append:?}"
        );
        assert_eq!(log.high_watermark(), 0);
        assert_eq!(append(&log, &batch(51, 1, 10, 1)).await.unwrap(), 0);
        assert_eq!(
            split_batches(&log.read(0, 1 << 20).await.unwrap().records.to_bytes()).len(),
            1
        );
    });
}

#[test]
fn segments_below_an_offset_can_be_dropped() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        for i in 0..60 {
            append(&log, &batch(i, 1, 700, 1)).await.unwrap();
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 3);
        // Only segments wholly below the offset go; the one holding it stays.
        let deleted = log.delete_segments_before(bases[2] + 1).await.unwrap();
        assert_eq!(deleted, 2);
        assert_eq!(log.log_start_offset(), bases[2]);
        assert_eq!(
            log.delete_segments_before(i64::MAX).await.unwrap(),
            log.segment_base_offsets().len() - 1
        );
        assert_eq!(
            log.segment_base_offsets().len(),
            1,
            "the active segment is kept"
        );
        assert_eq!(log.high_watermark(), 60);
    });
}

#[test]
fn delete_records_moves_the_log_start_and_survives_a_crash() {
    run(|| async {
        let dir = MemDir::new();
        let log = open(&dir, small_config()).await;
        for i in 0..60 {
            append(&log, &batch(i, 1, 700, 1)).await.unwrap();
        }
        let bases = log.segment_base_offsets();
        let target = bases[2] + 1;
        assert_eq!(log.delete_records_before(target).await.unwrap(), target);
        assert_eq!(log.log_start_offset(), target);
        // Segments wholly below it are gone; the one holding it stays, hidden below.
        assert_eq!(log.segment_base_offsets()[0], bases[2]);
        assert!(matches!(
            log.read(target - 1, 1 << 20).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert!(!log.read(target, 1 << 20).await.unwrap().records.is_empty());
        // Lower offsets change nothing; past the high watermark is out of range.
        assert_eq!(log.delete_records_before(3).await.unwrap(), target);
        assert!(matches!(
            log.delete_records_before(61).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        drop(log);
        dir.crash(CrashMode::DropUnsynced);
        let log = open(&dir, small_config()).await;
        assert_eq!(log.log_start_offset(), target, "the moved start is durable");
        assert_eq!(log.delete_records_before(60).await.unwrap(), 60);
        assert_eq!(log.read(60, 1024).await.unwrap().records.len(), 0);
        assert_eq!(log.high_watermark(), 60);
    });
}
