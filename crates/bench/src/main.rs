//! `sluice-bench`: loads any Kafka-compatible broker and reports the figures
//! the OpenMessaging Benchmark uses (publish latency and delay, end-to-end
//! latency, throughput, backlog).
//!
//! `sluice-bench run` runs one workload; `sluice-bench report` turns result
//! files into the Markdown report and latency plots.

mod accumulator;
mod client;
mod cluster;
mod consumer;
mod group;
mod producer;
mod rate;
mod records;
mod report;
mod result;
mod retry;
mod runner;
mod stats;
mod topology;
mod worker;
mod workload;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use workload::{Compression, KeyDistribution, Workload};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Kafka-protocol load generator and benchmark report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one workload against a broker.
    Run(Box<RunArgs>),
    /// Write the Markdown report and latency plots from result files.
    Report(ReportArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Workload file (TOML); flags below override its settings.
    #[arg(long)]
    workload: Option<PathBuf>,
    /// host:port of any broker of the cluster.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Write every figure, the workload and the broker info here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Worker threads (one executor per core); default: the CPUs available.
    #[arg(long)]
    threads: Option<usize>,
    /// Free text recorded in the result (e.g. the broker's command line and config).
    #[arg(long, default_value = "")]
    broker_info: String,
    /// Print the status line every N seconds.
    #[arg(long, default_value_t = 3)]
    status_every_s: u32,
    #[command(flatten)]
    overrides: Overrides,
}

/// Workload settings as flags; each overrides the file's value.
#[derive(Args, Default)]
struct Overrides {
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    topics: Option<u32>,
    #[arg(long)]
    partitions_per_topic: Option<u32>,
    #[arg(long)]
    replication_factor: Option<i16>,
    #[arg(long)]
    message_size: Option<usize>,
    #[arg(long)]
    producers: Option<u32>,
    #[arg(long)]
    consumers: Option<u32>,
    #[arg(long)]
    consumer_group: Option<bool>,
    /// Messages/s over all producers; 0 = as fast as possible.
    #[arg(long)]
    producer_rate: Option<u64>,
    #[arg(long, value_parser = parse_key_distribution)]
    key_distribution: Option<KeyDistribution>,
    #[arg(long, allow_hyphen_values = true)]
    acks: Option<i16>,
    #[arg(long)]
    batch_bytes: Option<usize>,
    #[arg(long)]
    linger_ms: Option<u64>,
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Retry budget: how long a message is retried before it counts as lost.
    #[arg(long)]
    delivery_timeout_ms: Option<u64>,
    /// How long a response may take before the connection is closed and the request retried.
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    #[arg(long, value_parser = parse_compression)]
    compression: Option<Compression>,
    #[arg(long)]
    warmup_s: Option<u64>,
    #[arg(long)]
    duration_s: Option<u64>,
    #[arg(long)]
    backlog_bytes: Option<u64>,
    #[arg(long)]
    topic_prefix: Option<String>,
}

fn parse_key_distribution(s: &str) -> Result<KeyDistribution, String> {
    toml::Value::String(s.to_string())
        .try_into()
        .map_err(|_| format!("{s:?}: expected none, round-robin or random"))
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    toml::Value::String(s.to_string())
        .try_into()
        .map_err(|_| format!("{s:?}: expected none, lz4 or zstd"))
}

impl Overrides {
    fn apply(self, w: &mut Workload) {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { w.$field = v; } )* };
        }
        set!(
            name,
            topics,
            partitions_per_topic,
            replication_factor,
            message_size,
            producers,
            consumers,
            consumer_group,
            producer_rate,
            key_distribution,
            acks,
            batch_bytes,
            linger_ms,
            max_in_flight,
            delivery_timeout_ms,
            request_timeout_ms,
            compression,
            warmup_s,
            duration_s,
            backlog_bytes,
            topic_prefix
        );
    }
}

#[derive(Args)]
struct ReportArgs {
    /// Directory for report.md, the plots and machine.json.
    #[arg(long, default_value = "target/bench-report")]
    out: PathBuf,
    /// fio JSON of the sequential O_DIRECT write job.
    #[arg(long)]
    fio_write: Option<PathBuf>,
    /// fio JSON of the fdatasync job.
    #[arg(long)]
    fio_sync: Option<PathBuf>,
    /// iperf3 -J output of the loopback run.
    #[arg(long)]
    iperf: Option<PathBuf>,
    /// Result files written by `sluice-bench run --json`.
    #[arg(required = true)]
    results: Vec<PathBuf>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => run(*args),
        Command::Report(args) => write_report(args),
    };
    if let Err(e) = outcome {
        eprintln!("sluice-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: RunArgs) -> Result<(), String> {
    let mut workload = match &args.workload {
        Some(path) => Workload::from_file(path)?,
        None => Workload::default(),
    };
    args.overrides.apply(&mut workload);
    workload.validate()?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = runner::Options {
        bootstrap: args.bootstrap,
        threads,
        broker_info: args.broker_info,
        status_every: args.status_every_s,
    };
    let result = runner::run(workload, &options)?;
    println!("{}", report::summary_table(&result));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("sluice-bench: wrote {}", path.display());
    }
    if result.totals.produce_errors > 0 {
        return Err(format!(
            "{} message(s) were not acknowledged ({} of them lost after retrying for delivery_timeout_ms): {:?}",
            result.totals.produce_errors, result.totals.lost_after_retries, result.errors
        ));
    }
    Ok(())
}

fn write_report(args: ReportArgs) -> Result<(), String> {
    let read = |path: &Option<PathBuf>| -> Result<Option<String>, String> {
        path.as_ref()
            .map(|p| {
                std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            })
            .transpose()
    };
    let mut limits = report::MachineLimits::default();
    if let Some(json) = read(&args.fio_write)? {
        limits.disk_write_mb_per_s = Some(report::parse_fio_write(&json)?);
    }
    if let Some(json) = read(&args.fio_sync)? {
        let (p50, p99) = report::parse_fio_sync(&json)?;
        limits.fdatasync_p50_us = Some(p50);
        limits.fdatasync_p99_us = Some(p99);
    }
    if let Some(json) = read(&args.iperf)? {
        limits.loopback_mb_per_s = Some(report::parse_iperf3(&json)?);
    }
    let results = args
        .results
        .iter()
        .map(|p| report::read_result(p))
        .collect::<Result<Vec<_>, _>>()?;
    let written = report::write_report(&args.out, &results, &limits)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}
