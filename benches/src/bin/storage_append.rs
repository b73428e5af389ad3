//! Durable append throughput and latency of the partition log on real O_DIRECT
//! files, on one core, for the scenarios of benches/RESULTS.md.
//!
//! usage: storage-append [--dir DIR] [--seconds N] [--disk-mbps MBPS] [--only NAME]
//!
//! `--disk-mbps` is the disk's sequential O_DIRECT write bandwidth (measured by
//! fio in scripts/bench-storage.sh); each throughput is also printed as a
//! fraction of it.

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use sluice_protocol::record_batch::build_batch;
use sluice_storage::io::dma::DmaDir;
use sluice_storage::{AppendOptions, LogConfig, PartitionLog};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

struct Scenario {
    name: &'static str,
    partitions: usize,
    records_per_batch: usize,
    record_bytes: usize,
    /// Appends in flight per partition (producers / pipelined requests).
    in_flight_per_partition: usize,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "1 partition, 1 MiB batches",
        partitions: 1,
        records_per_batch: 1000,
        record_bytes: 1024,
        in_flight_per_partition: 4,
    },
    Scenario {
        name: "1 partition, 16 KiB batches",
        partitions: 1,
        records_per_batch: 16,
        record_bytes: 1024,
        in_flight_per_partition: 32,
    },
    Scenario {
        name: "100 partitions, 16 KiB batches",
        partitions: 100,
        records_per_batch: 16,
        record_bytes: 1024,
        in_flight_per_partition: 2,
    },
    Scenario {
        name: "1000 partitions, 16 KiB batches",
        partitions: 1000,
        records_per_batch: 16,
        record_bytes: 1024,
        in_flight_per_partition: 1,
    },
];

struct Args {
    dir: PathBuf,
    seconds: u64,
    warmup_seconds: u64,
    disk_mbps: Option<f64>,
    only: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: PathBuf::from("target/bench-storage"),
        seconds: 5,
        warmup_seconds: 1,
        disk_mbps: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value()),
            "--seconds" => args.seconds = value().parse().expect("--seconds N"),
            "--warmup-seconds" => {
                args.warmup_seconds = value().parse().expect("--warmup-seconds N")
            }
            "--disk-mbps" => args.disk_mbps = Some(value().parse().expect("--disk-mbps MBPS")),
            "--only" => args.only = Some(value()),
            "-h" | "--help" => {
                println!("usage: storage-append [--dir DIR] [--seconds N] [--warmup-seconds N] [--disk-mbps MBPS] [--only TEXT]");
                std::process::exit(0);
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

struct Outcome {
    mb_per_s: f64,
    appends_per_s: f64,
    latency_us: Histogram<u64>,
}

fn run_scenario(scenario: &'static Scenario, args: &Args) -> Outcome {
    let root = args.dir.join(scenario.name.replace([' ', ','], "_"));
    let _ = std::fs::remove_dir_all(&root);
    let warmup = Duration::from_secs(args.warmup_seconds);
    let measure = Duration::from_secs(args.seconds);
    let root_for_executor = root.clone();
    let outcome = LocalExecutorBuilder::new(Placement::Fixed(0))
        // Registered buffers must fit RLIMIT_MEMLOCK (8 MiB here): glommio
        // registers this memory with each of its three rings.
        .io_memory(1 << 20)
        .spawn(move || async move {
            let config = LogConfig {
                // Many partitions: reserve less space per file.
                preallocate_bytes: if scenario.partitions > 10 {
                    4 << 20
                } else {
                    64 << 20
                },
                ..LogConfig::default()
            };
            let value = vec![b'x'; scenario.record_bytes];
            let values: Vec<&[u8]> = (0..scenario.records_per_batch)
                .map(|_| value.as_slice())
                .collect();
            let batch = Rc::new(build_batch(1_700_000_000_000, &values));
            let mut logs = Vec::new();
            for p in 0..scenario.partitions {
                let dir = DmaDir::create(root_for_executor.join(format!("bench-{p}"))).unwrap();
                logs.push(
                    PartitionLog::open(dir, config, format!("bench-{p}"))
                        .await
                        .unwrap(),
                );
            }
            let histogram = Rc::new(RefCell::new(
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
            ));
            let bytes = Rc::new(RefCell::new(0u64));
            let appends = Rc::new(RefCell::new(0u64));
            let start = Instant::now();
            let measure_from = start + warmup;
            let end = measure_from + measure;
            let mut tasks = Vec::new();
            for log in &logs {
                for _ in 0..scenario.in_flight_per_partition {
                    let (log, batch, histogram, bytes, appends) = (
                        log.clone(),
                        batch.clone(),
                        histogram.clone(),
                        bytes.clone(),
                        appends.clone(),
                    );
                    tasks.push(glommio::spawn_local(async move {
                        loop {
                            let t0 = Instant::now();
                            if t0 >= end {
                                break;
                            }
                            log.append(&batch, AppendOptions::default())
                                .await
                                .expect("append");
                            if t0 >= measure_from {
                                let us = t0.elapsed().as_micros() as u64;
                                histogram.borrow_mut().record(us.max(1)).unwrap();
                                *bytes.borrow_mut() += batch.len() as u64;
                                *appends.borrow_mut() += 1;
                            }
                        }
                    }));
                }
            }
            for task in tasks {
                task.await;
            }
            for log in &logs {
                log.close().await.unwrap();
            }
            let seconds = measure.as_secs_f64();
            let histogram = histogram.borrow().clone();
            let bytes = *bytes.borrow();
            let appends = *appends.borrow();
            Outcome {
                mb_per_s: bytes as f64 / 1e6 / seconds,
                appends_per_s: appends as f64 / seconds,
                latency_us: histogram,
            }
        })
        .expect("executor starts")
        .join()
        .expect("benchmark finished");
    let _ = std::fs::remove_dir_all(&root);
    outcome
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = parse_args();
    std::fs::create_dir_all(&args.dir).expect("bench dir");
    println!("storage-append: durable appends (flush = always: acknowledged after fdatasync), one core, O_DIRECT");
    println!(
        "dir {}, {} s measured after {} s warm-up per scenario",
        args.dir.display(),
        args.seconds,
        args.warmup_seconds
    );
    if let Some(disk) = args.disk_mbps {
        println!(
            "disk limit (fio sequential O_DIRECT write, 1 MiB blocks, iodepth 8): {disk:.0} MB/s"
        );
    }
    println!();
    println!(
        "| {:<32} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} |",
        "scenario", "MB/s", "of disk", "appends/s", "p50 µs", "p99 µs", "p99.9 µs"
    );
    println!(
        "|{:-<34}|{:->11}|{:->11}|{:->11}|{:->11}|{:->11}|{:->11}|",
        "", "", "", "", "", "", ""
    );
    for scenario in SCENARIOS {
        if args
            .only
            .as_ref()
            .is_some_and(|only| !scenario.name.contains(only.as_str()))
        {
            continue;
        }
        let outcome = run_scenario(scenario, &args);
        let fraction = args
            .disk_mbps
            .map(|disk| format!("{:.2}", outcome.mb_per_s / disk))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {:<32} | {:>9.0} | {:>9} | {:>9.0} | {:>9} | {:>9} | {:>9} |",
            scenario.name,
            outcome.mb_per_s,
            fraction,
            outcome.appends_per_s,
            outcome.latency_us.value_at_quantile(0.50),
            outcome.latency_us.value_at_quantile(0.99),
            outcome.latency_us.value_at_quantile(0.999),
        );
    }
}
