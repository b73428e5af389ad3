//! Log compaction: the latest record per key survives, offsets keep their
//! gaps, and a crash at any step of a run loses nothing and duplicates nothing.

use crate::{run, small_config};
use sluice_protocol::compression::{compress, decompress, Codec};
use sluice_protocol::record_batch::{
    assemble_batch, put_record_with, records, BatchFields, BatchHeader, HEADER_BYTES,
};
use sluice_storage::io::memory::{CrashMode, Faults, MemDir};
use sluice_storage::{AppendOptions, CompactionConfig, LogConfig, PartitionLog};
use std::collections::BTreeMap;
use std::rc::Rc;

type Key = Option<Vec<u8>>;
type Value = Option<Vec<u8>>;

/// A batch of keyed records, compressed with `codec`.
fn keyed_batch(codec: Codec, timestamp: i64, entries: &[(Key, Value)]) -> Vec<u8> {
    let mut section = Vec::new();
    for (i, (key, value)) in entries.iter().enumerate() {
        put_record_with(&mut section, 0, i as i32, key.as_deref(), value.as_deref());
    }
    let section = compress(codec, &section);
    let fields = BatchFields {
        attributes: codec.id(),
        base_timestamp: timestamp,
        max_timestamp: timestamp,
        records_count: entries.len() as i32,
        ..BatchFields::default()
    };
    let mut out = Vec::new();
    assemble_batch(&mut out, &fields, &section);
    out
}

/// Every record served from offset 0: (offset, key, value), checking that
/// offsets only grow.
async fn read_all(log: &Rc<PartitionLog<MemDir>>) -> Vec<(i64, Key, Value)> {
    let mut out: Vec<(i64, Key, Value)> = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let read = log.read(offset, 64 << 10).await.unwrap();
        if read.records.is_empty() {
            break;
        }
        let mut at = 0;
        let stored = read.records.to_bytes();
        while at < stored.len() {
            let header = BatchHeader::parse(&stored[at..]).unwrap();
            let batch = &stored[at..at + header.total_bytes()];
            at += header.total_bytes();
            let mut scratch = Vec::new();
            let section = match Codec::from_id(header.compression()).unwrap() {
                Codec::None => batch[HEADER_BYTES..].to_vec(),
                codec => {
                    let n =
                        decompress(codec, &batch[HEADER_BYTES..], 1 << 26, &mut scratch).unwrap();
                    scratch[..n].to_vec()
                }
            };
            let walked: Vec<_> = records(&section, header.records_count).collect();
            assert_eq!(walked.len(), header.records_count as usize);
            for r in walked {
                let o = header.base_offset + r.offset_delta as i64;
                assert!(o <= header.last_offset());
                if o < offset {
                    continue;
                }
                if let Some(last) = out.last() {
                    assert!(o > last.0, "offset {o} served after {}", last.0);
                }
                out.push((o, r.key.map(|k| k.to_vec()), r.value.map(|v| v.to_vec())));
            }
        }
        offset = read.next_offset;
    }
    out
}

fn config() -> CompactionConfig {
    CompactionConfig {
        delete_retention_ms: 86_400_000,
        min_cleanable_dirty_ratio: 0.0,
        min_compaction_lag_ms: 0,
        max_compaction_lag_ms: i64::MAX,
        map_bytes: 1 << 20,
        io_bytes_per_second: None,
    }
}

/// Writes 1500 records over 40 keys (gzip and plain batches, some tombstones);
/// returns what was written by offset.
async fn fill(log: &Rc<PartitionLog<MemDir>>, now: i64) -> BTreeMap<i64, (Key, Value)> {
    let mut written = BTreeMap::new();
    let mut n = 0u64;
    for b in 0..300 {
        let entries: Vec<(Key, Value)> = (0..5)
            .map(|_| {
                n += 1;
                let key = format!("key-{}", (n * 7919) % 40).into_bytes();
                let value = (!n.is_multiple_of(97))
                    .then(|| format!("value-{n}-{}", "x".repeat(40)).into_bytes());
                (Some(key), value)
            })
            .collect();
        let codec = if b % 2 == 0 { Codec::Gzip } else { Codec::None };
        let info = log
            .append(&keyed_batch(codec, now, &entries), AppendOptions::default())
            .await
            .unwrap();
        for (i, entry) in entries.into_iter().enumerate() {
            written.insert(info.base_offset + i as i64, entry);
        }
    }
    written
}

/// What every state of the log must satisfy: each record served is the one
/// written at its offset, and the latest record of every key is served.
fn check_subset_and_latest(served: &[(i64, Key, Value)], written: &BTreeMap<i64, (Key, Value)>) {
    for (offset, key, value) in served {
        assert_eq!(
            written.get(offset),
            Some(&(key.clone(), value.clone())),
            "record at {offset}"
        );
    }
    let mut latest: BTreeMap<&Key, i64> = BTreeMap::new();
    for (offset, (key, _)) in written {
        latest.insert(key, *offset);
    }
    for offset in latest.values() {
        assert!(
            served.iter().any(|(o, _, _)| o == offset),
            "latest record of a key at {offset} lost"
        );
    }
}

#[test]
fn compaction_keeps_the_latest_record_of_each_key() {
    run(|| async {
        let dir = MemDir::new();
        let log = PartitionLog::open(dir.clone(), small_config(), "compact-0")
            .await
            .unwrap();
        let now = sluice_storage::now_ms() as i64;
        let written = fill(&log, now).await;
        let before = log.offsets().size_bytes;
        let stats = log.compact(&config(), now).await.unwrap().expect("a run");
        assert!(stats.records_removed > 1000, "{stats:?}");
        assert!(log.offsets().size_bytes < before / 3);
        let served = read_all(&log).await;
        check_subset_and_latest(&served, &written);
        // Below the cleaner offset each key appears once; the active segment is untouched.
        let cleaned = log.cleaner_offset().unwrap();
        let active = *log.segment_base_offsets().last().unwrap();
        assert_eq!(cleaned, active);
        let mut seen = std::collections::HashSet::new();
        for (offset, key, _) in served.iter().filter(|(o, _, _)| *o < cleaned) {
            assert!(
                seen.insert(key.clone()),
                "key twice below the cleaner offset (at {offset})"
            );
        }
        for offset in active..log.high_watermark() {
            assert!(
                served.iter().any(|(o, _, _)| *o == offset),
                "active segment record {offset}"
            );
        }
        // Nothing more to do until new data arrives; the log still appends.
        assert!(log.compact(&config(), now).await.unwrap().is_none());
        // Reopened, it serves the same.
        log.close().await.unwrap();
        drop(log);
        let log = PartitionLog::open(dir.clone(), small_config(), "compact-0")
            .await
            .unwrap();
        assert_eq!(read_all(&log).await, served);
        assert_eq!(log.cleaner_offset(), Some(cleaned));
    });
}

#[test]
fn tombstones_go_after_delete_retention_and_the_ratio_gates_a_run() {
    run(|| async {
        let dir = MemDir::new();
        let log = PartitionLog::open(dir.clone(), small_config(), "compact-1")
            .await
            .unwrap();
        let now = sluice_storage::now_ms() as i64;
        let written = fill(&log, now - 10_000).await;
        // A high ratio with the dirty part being everything: still runs (ratio 1.0).
        // A min lag longer than the records' age: no run.
        let lagged = CompactionConfig {
            min_compaction_lag_ms: 60_000,
            ..config()
        };
        assert!(log.compact(&lagged, now).await.unwrap().is_none());
        // Tombstones older than delete.retention.ms go.
        let eager = CompactionConfig {
            delete_retention_ms: 1_000,
            ..config()
        };
        log.compact(&eager, now).await.unwrap().expect("a run");
        let served = read_all(&log).await;
        let cleaned = log.cleaner_offset().unwrap();
        assert!(
            served.iter().all(|(o, _, v)| *o >= cleaned || v.is_some()),
            "a tombstone survived"
        );
        for (offset, key, value) in &served {
            assert_eq!(written.get(offset), Some(&(key.clone(), value.clone())));
        }
        // Fresh dirty data below the ratio: no run.
        let strict = CompactionConfig {
            min_cleanable_dirty_ratio: 0.99,
            ..config()
        };
        for i in 0..20 {
            let entries = vec![(Some(b"late".to_vec()), Some(format!("{i}").into_bytes()))];
            log.append(
                &keyed_batch(Codec::None, now, &entries),
                AppendOptions::default(),
            )
            .await
            .unwrap();
        }
        assert!(log.compact(&strict, now).await.unwrap().is_none());
    });
}

#[test]
fn a_crash_at_any_step_of_a_compaction_loses_and_duplicates_nothing() {
    let mut step = 0;
    loop {
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = finished.clone();
        run(move || async move {
            let dir = MemDir::new();
            let config_log = LogConfig { ..small_config() };
            let log = PartitionLog::open(dir.clone(), config_log, "compact-2")
                .await
                .unwrap();
            let now = sluice_storage::now_ms() as i64;
            let written = fill(&log, now).await;
            let served_before = read_all(&log).await;
            // Every I/O yields once: interrupt the run after `step` yields.
            dir.set_faults(Faults {
                yield_on_io: true,
                ..Faults::default()
            });
            let completed = Rc::new(std::cell::Cell::new(false));
            let task = glommio::spawn_local({
                let log = log.clone();
                let completed = completed.clone();
                async move {
                    log.compact(&config(), now).await.unwrap();
                    completed.set(true);
                }
            })
            .detach();
            for _ in 0..step {
                futures_lite::future::yield_now().await;
            }
            task.cancel();
            let completed = completed.get();
            drop(log);
            dir.set_faults(Faults::default());
            dir.crash(CrashMode::DropUnsynced);
            let log = PartitionLog::open(dir.clone(), config_log, "compact-2")
                .await
                .unwrap();
            let served = read_all(&log).await;
            check_subset_and_latest(&served, &written);
            assert!(served.len() <= served_before.len());
            // A later run completes the job.
            log.compact(&config(), now).await.unwrap();
            let served = read_all(&log).await;
            check_subset_and_latest(&served, &written);
            let cleaned = log.cleaner_offset().unwrap();
            let mut seen = std::collections::HashSet::new();
            for (_, key, _) in served.iter().filter(|(o, _, _)| *o < cleaned) {
                assert!(
                    seen.insert(key.clone()),
                    "key twice below the cleaner offset"
                );
            }
            done.store(completed, std::sync::atomic::Ordering::SeqCst);
        });
        if finished.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(step > 10, "the run should take many I/O steps, took {step}");
            eprintln!("compaction interrupted at each of {step} steps");
            break;
        }
        step += 1;
        assert!(step < 5000, "compaction never finished");
    }
}
