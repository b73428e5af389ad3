//! What log compaction costs the produce path while it runs, on one core, as
//! a shard runs it: durable appends to one partition log while another log
//! on the same core is compacted from the background task queue (a tenth of
//! the default queue's shares, as the broker creates it).
//!
//! usage: compaction [--dir DIR] [--log-mib N] [--keys N] [--rounds N] [--io-mbps 0,200,100,50]
//!
//! `--io-mbps`: the compaction I/O limits to compare (log.cleaner.io.max.bytes.per.second; 0 = none).
//!
//! Each round: (1) appends alone for as long as (2) lasts; (2) appends while a
//! compaction of the prefilled log runs, from its start to its end. The
//! figures are the ratio of (2) to (1) within the round (throughput, p99), so
//! they compare like with like on a disk whose speed varies between days.

use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use hdrhistogram::Histogram;
use sluice_protocol::record_batch::{assemble_batch, build_batch, put_record_with, BatchFields};
use sluice_storage::io::dma::DmaDir;
use sluice_storage::{AppendOptions, CompactionConfig, LogConfig, PartitionLog};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

struct Args {
    dir: PathBuf,
    log_mib: usize,
    keys: usize,
    rounds: usize,
    /// Compaction I/O limits to compare, MB/s (0: none).
    io_mbps: Vec<u64>,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: PathBuf::from("target/bench-compaction"),
        log_mib: 256,
        keys: 100_000,
        rounds: 2,
        io_mbps: vec![0, 200, 100, 50],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value),
            "--log-mib" => args.log_mib = value.parse().expect("--log-mib N"),
            "--keys" => args.keys = value.parse().expect("--keys N"),
            "--rounds" => args.rounds = value.parse().expect("--rounds N"),
            "--io-mbps" => {
                args.io_mbps = value
                    .split(',')
                    .map(|v| v.parse().expect("--io-mbps N,N,..."))
                    .collect()
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// 1000 records of 1 KiB with keys `key-<n % keys>`: about 1 MiB.
fn keyed_batch(first: usize, keys: usize) -> Vec<u8> {
    let mut section = Vec::new();
    let value = vec![b'v'; 1024];
    for i in 0..1000 {
        let key = format!("key-{:08}", (first + i) * 7919 % keys);
        put_record_with(
            &mut section,
            0,
            i as i32,
            Some(key.as_bytes()),
            Some(&value),
        );
    }
    let fields = BatchFields {
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000,
        records_count: 1000,
        ..BatchFields::default()
    };
    let mut out = Vec::new();
    assemble_batch(&mut out, &fields, &section);
    out
}

struct Window {
    mb_per_s: f64,
    p99_us: u64,
}

/// 32 appends of 16 KiB in flight (the storage bench's "1 partition, 16 KiB
/// batches") until `until` says stop; returns the figures over that time.
async fn produce_while(log: &Rc<PartitionLog<DmaDir>>, until: Rc<Cell<bool>>) -> Window {
    let value = vec![b'x'; 1024];
    let values: Vec<&[u8]> = (0..16).map(|_| value.as_slice()).collect();
    let batch = Rc::new(build_batch(1_700_000_000_000, &values));
    let histogram = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let bytes = Rc::new(Cell::new(0u64));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (log, batch, histogram, bytes, until) = (
            log.clone(),
            batch.clone(),
            histogram.clone(),
            bytes.clone(),
            until.clone(),
        );
        tasks.push(glommio::spawn_local(async move {
            while !until.get() {
                let t0 = Instant::now();
                log.append(&batch, AppendOptions::default())
                    .await
                    .expect("append");
                histogram
                    .borrow_mut()
                    .record((t0.elapsed().as_micros() as u64).max(1))
                    .unwrap();
                bytes.set(bytes.get() + batch.len() as u64);
            }
        }));
    }
    // The log would grow by the disk's speed: keep only its last segments.
    let trimmer = {
        let (log, until) = (log.clone(), until.clone());
        glommio::spawn_local(async move {
            while !until.get() {
                glommio::timer::sleep(std::time::Duration::from_millis(200)).await;
                log.delete_segments_before(log.high_watermark())
                    .await
                    .expect("trim");
            }
        })
    };
    for task in tasks {
        task.await;
    }
    trimmer.await;
    let seconds = start.elapsed().as_secs_f64();
    let histogram = histogram.borrow();
    Window {
        mb_per_s: bytes.get() as f64 / 1e6 / seconds,
        p99_us: histogram.value_at_quantile(0.99),
    }
}

fn main() {
    let args = parse_args();
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).expect("bench dir");
    println!(
        "compaction: durable appends (32 × 16 KiB in flight) to one log while another log of {} MiB \
         ({} keys, 1 KiB values) on the same core is compacted; one core, O_DIRECT, dir {}",
        args.log_mib,
        args.keys,
        args.dir.display()
    );
    println!();
    println!(
        "| I/O limit MB/s | round | log MB → after | compaction s | compacted MB/s | produce MB/s alone | with compaction | ratio | p99 µs alone | with compaction | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let dir = args.dir.clone();
    LocalExecutorBuilder::new(Placement::Fixed(0))
        .io_memory(1 << 20)
        .spawn(move || async move {
            let background = glommio::executor().create_task_queue(
                Shares::Static(100),
                Latency::NotImportant,
                "compaction",
            );
            let produced_config = LogConfig { segment_bytes: 128 << 20, preallocate_bytes: 64 << 20, ..LogConfig::default() };
            let compacted_config = LogConfig { segment_bytes: 64 << 20, preallocate_bytes: 64 << 20, ..LogConfig::default() };
            let produced = PartitionLog::open(DmaDir::create(dir.join("produced")).unwrap(), produced_config, "produced")
                .await
                .unwrap();
            let mut summaries = Vec::new();
            for (step, &mbps) in args.io_mbps.iter().enumerate() {
            let mut ratios = Vec::new();
            for round in 1..=args.rounds {
                // A fresh log to compact each round: every key written ~10 times.
                let path = dir.join(format!("compacted-{step}-{round}"));
                let compacted = PartitionLog::open(DmaDir::create(&path).unwrap(), compacted_config, "compacted")
                    .await
                    .unwrap();
                let batches = args.log_mib;
                let mut pending = Vec::new();
                for b in 0..batches {
                    let batch = keyed_batch(b * 1000, args.keys);
                    let log = compacted.clone();
                    pending.push(glommio::spawn_local(async move {
                        log.append(&batch, AppendOptions::default()).await.expect("prefill");
                    }));
                    if pending.len() == 8 {
                        for task in pending.drain(..) {
                            task.await;
                        }
                    }
                }
                for task in pending {
                    task.await;
                }
                let size = compacted.offsets().size_bytes;
                let config = CompactionConfig {
                    delete_retention_ms: 86_400_000,
                    min_cleanable_dirty_ratio: 0.0,
                    min_compaction_lag_ms: 0,
                    max_compaction_lag_ms: i64::MAX,
                    map_bytes: 16 << 20,
                    io_bytes_per_second: (mbps > 0).then_some(mbps * 1_000_000),
                };
                // (2) produce while the compaction runs.
                let done = Rc::new(Cell::new(false));
                let started = Instant::now();
                let compaction = glommio::spawn_local_into(
                    {
                        let (log, done) = (compacted.clone(), done.clone());
                        async move {
                            let stats = log.compact(&config, sluice_storage::now_ms() as i64).await.expect("compaction");
                            done.set(true);
                            stats
                        }
                    },
                    background,
                )
                .unwrap();
                let with = produce_while(&produced, done.clone()).await;
                let stats = compaction.await.expect("a compaction run");
                let took = started.elapsed();
                // (1) produce alone for as long.
                let stop = Rc::new(Cell::new(false));
                let timer = {
                    let stop = stop.clone();
                    glommio::spawn_local(async move {
                        glommio::timer::sleep(took).await;
                        stop.set(true);
                    })
                };
                let alone = produce_while(&produced, stop).await;
                timer.await;
                compacted.close().await.unwrap();
                drop(compacted);
                let _ = std::fs::remove_dir_all(&path);
                let throughput = with.mb_per_s / alone.mb_per_s;
                let p99 = with.p99_us as f64 / alone.p99_us as f64;
                ratios.push((throughput, p99));
                println!(
                    "| {} | {round} | {:.0} → {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} | {:.2} |",
                    if mbps == 0 { "none".to_string() } else { mbps.to_string() },
                    size as f64 / 1e6,
                    stats.bytes_after as f64 / 1e6 + (size - stats.bytes_before) as f64 / 1e6,
                    took.as_secs_f64(),
                    size as f64 / 1e6 / took.as_secs_f64(),
                    alone.mb_per_s,
                    with.mb_per_s,
                    throughput,
                    alone.p99_us,
                    with.p99_us,
                    p99
                );
            }
            let n = ratios.len() as f64;
            summaries.push(format!(
                "I/O limit {}: produce throughput with compaction / alone = {:.2}, p99 = {:.2}× (mean of {} rounds)",
                if mbps == 0 { "none".to_string() } else { format!("{mbps} MB/s") },
                ratios.iter().map(|r| r.0).sum::<f64>() / n,
                ratios.iter().map(|r| r.1).sum::<f64>() / n,
                ratios.len(),
            ));
            }
            produced.close().await.unwrap();
            println!();
            for line in summaries {
                println!("{line}");
            }
        })
        .expect("executor starts")
        .join()
        .expect("benchmark finished");
    let _ = std::fs::remove_dir_all(&args.dir);
}
