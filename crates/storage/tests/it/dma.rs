//! The core scenarios on the real glommio O_DIRECT backend in a temp dir.

use crate::{batch, run, small_config, split_batches, stored_form};
use sluice_storage::io::dma::DmaDir;
use sluice_storage::{AppendOptions, LogConfig, LogError, PartitionLog, CLEAN_SHUTDOWN_FILE};
use std::path::Path;
use std::rc::Rc;

async fn open(path: &Path, config: LogConfig) -> Rc<PartitionLog<DmaDir>> {
    PartitionLog::open(DmaDir::create(path).unwrap(), config, "dma-0")
        .await
        .unwrap()
}

fn file_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn append_read_roll_reopen_on_o_direct_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("topic-0");
    let path2 = path.clone();
    run(move || async move {
        let log = open(&path, small_config()).await;
        let mut expected = Vec::new();
        for i in 0..60 {
            let raw = batch(i, 1 + (i as usize % 4), 350, 1000 + i as i64);
            let info = log.append(&raw, AppendOptions::default()).await.unwrap();
            assert_eq!(
                info.base_offset,
                expected.iter().map(|(_, n)| *n).sum::<i64>()
            );
            expected.push((
                stored_form(&raw, info.base_offset),
                info.last_offset - info.base_offset + 1,
            ));
        }
        let all: Vec<Vec<u8>> = expected.iter().map(|(b, _)| b.clone()).collect();
        // Disk reads go through the core's own ring, into buffers of their own.
        assert!(sluice_storage::io::uring::ReadRing::current().is_some());
        let read = log.read(0, 1 << 22).await.unwrap();
        assert_eq!(
            split_batches(&read.records.to_bytes())
                .into_iter()
                .map(|(_, b)| b)
                .collect::<Vec<_>>(),
            all
        );
        assert!(log.segment_base_offsets().len() > 2, "segments rolled");
        // Lookups.
        let (offset, ts) = log.offset_for_timestamp(1030).await.unwrap().unwrap();
        assert_eq!(ts, 1030);
        let got = split_batches(&log.read(offset, 1).await.unwrap().records.to_bytes());
        assert_eq!(got[0].0.base_offset, offset);
        assert_eq!(got[0].0.max_timestamp, 1030);
        assert_eq!(log.offset_for_timestamp(5000).await.unwrap(), None);
        log.close().await.unwrap();

        // Named by base offset, 20 digits, each with both indexes; cut to size.
        let names = file_names(&path);
        assert!(names.contains(&CLEAN_SHUTDOWN_FILE.to_string()));
        let logs: Vec<&String> = names.iter().filter(|n| n.ends_with(".log")).collect();
        assert_eq!(logs[0], "00000000000000000000.log");
        let total: u64 = logs
            .iter()
            .map(|n| std::fs::metadata(path.join(n)).unwrap().len())
            .sum();
        assert_eq!(total, all.iter().map(|b| b.len() as u64).sum::<u64>());
        for log_name in &logs {
            let stem = log_name.strip_suffix(".log").unwrap();
            assert!(names.contains(&format!("{stem}.index")));
            assert!(names.contains(&format!("{stem}.timeindex")));
        }

        let log = open(&path, small_config()).await;
        let read = log.read(0, 1 << 22).await.unwrap();
        assert_eq!(
            split_batches(&read.records.to_bytes())
                .into_iter()
                .map(|(_, b)| b)
                .collect::<Vec<_>>(),
            all
        );
        let next = log.high_watermark();
        let info = log
            .append(&batch(7, 1, 10, 1), AppendOptions::default())
            .await
            .unwrap();
        assert_eq!(info.base_offset, next);
        // Truncate back into an earlier segment and carry on.
        log.truncate_to(10).await.unwrap();
        let hw = log.high_watermark();
        assert!(
            hw <= 10 && hw > 5,
            "cut at the batch holding offset 10, got {hw}"
        );
        let info = log
            .append(&batch(8, 2, 10, 1), AppendOptions::default())
            .await
            .unwrap();
        assert_eq!(info.base_offset, hw);
        let read = log.read(0, 1 << 22).await.unwrap();
        let got = split_batches(&read.records.to_bytes());
        assert_eq!(got.last().unwrap().0.base_offset, hw);
        log.close().await.unwrap();
    });
    drop(path2);
}

#[test]
fn reopen_without_close_and_a_torn_tail_keep_every_acknowledged_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("topic-1");
    run(move || async move {
        let log = open(&path, small_config()).await;
        let mut all = Vec::new();
        for i in 0..25 {
            let raw = batch(i, 2, 400, 1);
            let info = log.append(&raw, AppendOptions::default()).await.unwrap();
            all.push(stored_form(&raw, info.base_offset));
        }
        // No close: the process "dies" here. (The page cache survives a process
        // death; a power cut is what the in-memory crash tests model.)
        drop(log);
        // A torn write at the tail: garbage after the last batch.
        let names = file_names(&path);
        let last = names.iter().rfind(|n| n.ends_with(".log")).unwrap().clone();
        let data_len: u64 = {
            let log = open(&path, small_config()).await;
            let read = log.read(0, 1 << 22).await.unwrap();
            assert_eq!(
                split_batches(&read.records.to_bytes())
                    .into_iter()
                    .map(|(_, b)| b)
                    .collect::<Vec<_>>(),
                all
            );
            let offsets = log.offsets();
            log.close().await.unwrap();
            offsets.size_bytes
        };
        let _ = data_len;
        {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(path.join(&last))
                .unwrap();
            let mut torn = batch(99, 3, 300, 1);
            torn.truncate(torn.len() / 2);
            file.write_all(&torn).unwrap();
        }
        std::fs::remove_file(path.join(CLEAN_SHUTDOWN_FILE)).unwrap();
        let log = open(&path, small_config()).await;
        let read = log.read(0, 1 << 22).await.unwrap();
        assert_eq!(
            split_batches(&read.records.to_bytes())
                .into_iter()
                .map(|(_, b)| b)
                .collect::<Vec<_>>(),
            all
        );
        let hw = log.high_watermark();
        let info = log
            .append(&batch(5, 1, 10, 1), AppendOptions::default())
            .await
            .unwrap();
        assert_eq!(info.base_offset, hw);
        log.close().await.unwrap();
    });
}

#[test]
fn concurrent_appends_share_a_flush_and_keep_order() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("topic-2");
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 1 << 20,
            ..small_config()
        };
        let log = open(&path, config).await;
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    log.append(&batch(i, 1, 100, 1), AppendOptions::default())
                        .await
                        .unwrap()
                        .base_offset
                })
            })
            .collect();
        let mut offsets = Vec::new();
        for task in tasks {
            offsets.push(task.await);
        }
        assert_eq!(
            offsets,
            (0..64).collect::<Vec<i64>>(),
            "offsets follow issue order"
        );
        assert_eq!(log.high_watermark(), 64);
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_time_deletes_old_sealed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("topic-3");
    run(move || async move {
        let config = LogConfig {
            retention_ms: Some(1000),
            ..small_config()
        };
        let log = open(&path, config).await;
        for i in 0..40 {
            log.append(&batch(i, 1, 900, i as i64 * 100), AppendOptions::default())
                .await
                .unwrap();
        }
        let bases = log.segment_base_offsets();
        // "Now" = 3000: segments whose newest record is before 2000 go.
        let deleted = log.enforce_retention(3000).await.unwrap();
        assert!(deleted >= 1);
        let start = log.log_start_offset();
        assert_eq!(start, bases[deleted]);
        assert!(matches!(
            log.read(start - 1, 1).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert!(!path.join(format!("{:020}.log", bases[0])).exists());
        log.close().await.unwrap();
    });
}

/// A follower's log: batches copied from the leader keep their offsets and
/// leader epochs byte for byte (across a roll), one below the end is
/// refused, a cut and a re-append come back identical, and a log started
/// over past its end (`reset_to`, a follower behind the leader's log start)
/// begins there.
#[test]
fn replicated_appends_keep_the_leaders_bytes_and_a_follower_can_start_over() {
    let tmp = tempfile::tempdir().unwrap();
    let (leader_path, follower_path) = (tmp.path().join("l-0"), tmp.path().join("f-0"));
    run(move || async move {
        let leader = open(&leader_path, small_config()).await;
        let follower = open(&follower_path, small_config()).await;
        for i in 0..30 {
            let options = AppendOptions {
                log_append_time_ms: None,
                partition_leader_epoch: (i / 10) as i32,
            };
            leader
                .append(
                    &batch(i, 1 + (i as usize % 3), 300, 1000 + i as i64),
                    options,
                )
                .await
                .unwrap();
        }
        let copied = leader.read(0, 1 << 22).await.unwrap().records.to_bytes();
        let batches = split_batches(&copied);
        for (_, bytes) in &batches {
            follower.append_replica(bytes).await.unwrap();
        }
        assert!(follower.segment_base_offsets().len() > 1, "segments rolled");
        assert_eq!(
            follower.read(0, 1 << 22).await.unwrap().records.to_bytes(),
            copied
        );
        assert_eq!(follower.high_watermark(), leader.high_watermark());
        assert_eq!(batches[20].0.partition_leader_epoch, 2);
        // Already here: refused, nothing written.
        let again = follower.append_replica(&batches[3].1).await;
        assert!(
            matches!(again, Err(LogError::OffsetOutOfRange { .. })),
            "{again:?}"
        );
        // Cut to a batch boundary, then the same batches again: identical.
        let cut_at = batches[12].0.base_offset;
        follower.truncate_to(cut_at).await.unwrap();
        assert_eq!(follower.high_watermark(), cut_at);
        for (_, bytes) in &batches[12..] {
            follower.append_replica(bytes).await.unwrap();
        }
        assert_eq!(
            follower.read(0, 1 << 22).await.unwrap().records.to_bytes(),
            copied
        );
        // Started over past its end, at the leader's (later) log start.
        let end = follower.high_watermark();
        follower.reset_to(end + 100).await.unwrap();
        assert_eq!(
            (follower.log_start_offset(), follower.high_watermark()),
            (end + 100, end + 100)
        );
        let mut next = stored_form(&batch(99, 2, 100, 5000), end + 100);
        next[12..16].copy_from_slice(&7i32.to_be_bytes()); // the leader's epoch (not in the CRC)
        follower.append_replica(&next).await.unwrap();
        assert_eq!(
            follower
                .read(end + 100, 1 << 20)
                .await
                .unwrap()
                .records
                .to_bytes(),
            next
        );
        leader.close().await.unwrap();
        follower.close().await.unwrap();
    });
}
