//! The broker's configuration: built-in defaults, overridden by a TOML file
//! (`--config`), overridden by `SLUICE_*` environment variables, overridden by
//! flags. Invalid settings are refused with a message naming the setting.

use clap::Parser;
use serde::{Deserialize, Serialize};
use sluice_storage::{FlushPolicy, LogConfig};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Command line; every flag can also come from the environment.
#[derive(Parser, Debug, Default)]
#[command(
    name = "sluice",
    version,
    about = "A Kafka-wire-compatible streaming broker: thread-per-core, io_uring, O_DIRECT."
)]
pub struct Cli {
    /// TOML config file (global settings plus [core.N] overrides).
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where topics and metadata are stored [default: ./sluice-data]
    #[arg(long, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9092]
    #[arg(long, env = "SLUICE_LISTEN")]
    pub listen: Option<String>,
    /// Address clients are told to connect to [default: the listen address]
    #[arg(long, env = "SLUICE_ADVERTISED_LISTENER")]
    pub advertised_listener: Option<String>,
    /// Number of shards (one per core), or a CPU list such as 0,2-3 [default: all CPUs]
    #[arg(long, env = "SLUICE_CORES")]
    pub cores: Option<String>,
    /// Segment size in bytes [default: 1073741824]
    #[arg(long, env = "SLUICE_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Delete segments older than this; -1 keeps them [default: 604800000]
    #[arg(long, env = "SLUICE_RETENTION_MS", allow_hyphen_values = true)]
    pub retention_ms: Option<i64>,
    /// Keep at most about this many bytes per partition; -1 no limit [default: -1]
    #[arg(long, env = "SLUICE_RETENTION_BYTES", allow_hyphen_values = true)]
    pub retention_bytes: Option<i64>,
    /// `always` (acknowledge after fdatasync) or `unsafe_interval_ms=N` [default: always]
    #[arg(long, env = "SLUICE_FLUSH")]
    pub flush: Option<String>,
    /// Create topics on first use (metadata or produce) [default: true]
    #[arg(long, env = "SLUICE_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of an auto-created topic [default: 1]
    #[arg(long, env = "SLUICE_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<i32>,
    /// Largest request frame in bytes [default: 104857600]
    #[arg(long, env = "SLUICE_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// This node's id in the cluster (Kafka's node.id).
    #[arg(long, env = "SLUICE_NODE_ID")]
    pub node_id: Option<i32>,

    /// The controller voters, `ID@HOST:PORT,...` (their internal listeners).
    #[arg(long, env = "SLUICE_CONTROLLERS")]
    pub controllers: Option<String>,

    /// This node's internal listener when it is not a controller voter.
    #[arg(long, env = "SLUICE_INTERNAL_LISTENER")]
    pub internal_listener: Option<String>,

    /// HOST:PORT of the /metrics and /health listener ("" turns it off).
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Log lines as `text` (the default) or `json` (one object per line).
    #[arg(long, env = "SLUICE_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Per-core overrides: `[core.N]` in the TOML file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoreOverride {
    /// CPU to pin shard N to.
    pub cpu: Option<usize>,
    /// io_uring registered buffer memory of this shard.
    pub io_memory_bytes: Option<usize>,
    /// io_uring submission queue depth of this shard.
    pub io_depth: Option<usize>,
    /// Request and response bytes this shard may hold (see `memory_budget_bytes`).
    pub memory_budget_bytes: Option<usize>,
    /// Recently written batches this shard keeps in memory for fetches.
    pub tail_cache_bytes: Option<usize>,
    /// Response buffers at least this large go out with io_uring SEND_ZC (0: never).
    pub send_zc_threshold_bytes: Option<usize>,
}

/// The TOML file: the same settings as the flags, plus storage and per-core ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub advertised_listener: Option<String>,
    pub cores: Option<toml::Value>,
    pub node_id: Option<i32>,
    pub controllers: Option<Vec<String>>,
    pub internal_listener: Option<String>,
    pub metrics_listen: Option<String>,
    pub auto_create_topics: Option<bool>,
    pub default_partitions: Option<i32>,
    pub max_frame_bytes: Option<usize>,
    pub max_in_flight_per_connection: Option<usize>,
    pub max_message_bytes: Option<i64>,
    pub retention_check_ms: Option<u64>,
    pub offsets_retention_minutes: Option<i64>,
    pub max_partitions_per_topic: Option<i32>,
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<i64>,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    pub flush: Option<String>,
    pub index_interval_bytes: Option<u64>,
    pub preallocate_bytes: Option<u64>,
    pub write_buffer_bytes: Option<u64>,
    pub io_memory_bytes: Option<usize>,
    pub io_depth: Option<usize>,
    pub memory_budget_bytes: Option<usize>,
    pub tail_cache_bytes: Option<usize>,
    pub fetch_session_cache_slots: Option<usize>,
    pub send_zc_threshold_bytes: Option<usize>,
    pub connections_max_idle_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub log_cleaner_dedupe_buffer_bytes: Option<usize>,
    pub log_cleaner_backoff_ms: Option<u64>,
    pub log_cleaner_io_max_bytes_per_second: Option<u64>,
    pub broker_session_timeout_ms: Option<u64>,
    pub default_replication_factor: Option<i32>,
    pub min_insync_replicas: Option<i32>,
    pub replica_lag_time_max_ms: Option<u64>,
    pub offsets_topic_replication_factor: Option<i32>,
    #[serde(default)]
    pub core: BTreeMap<String, CoreOverride>,
}

/// What the broker runs with; printed at start.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: String,
    pub advertised_listener: String,
    /// The CPU of each shard.
    pub cpus: Vec<usize>,
    pub node_id: i32,
    /// Controller voters `ID@HOST:PORT` (empty: a cluster of this node alone).
    pub controllers: Vec<String>,
    /// The node-to-node listener of a node that is not a controller voter.
    pub internal_listener: String,
    /// Where /metrics (Prometheus) and /health are served; empty: nowhere.
    pub metrics_listen: String,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub max_frame_bytes: usize,
    pub max_in_flight_per_connection: usize,
    pub max_message_bytes: i64,
    pub retention_check_ms: u64,
    pub offsets_retention_minutes: i64,
    pub max_partitions_per_topic: i32,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub flush: String,
    pub index_interval_bytes: u64,
    pub preallocate_bytes: u64,
    pub write_buffer_bytes: u64,
    pub io_memory_bytes: usize,
    pub io_depth: usize,
    /// Per shard: request bytes being read plus response bytes waiting to be written.
    pub memory_budget_bytes: usize,
    /// Per shard: the most recently written batches, kept in memory so that
    /// fetches at the head of a log (consumers, followers) read no disk.
    pub tail_cache_bytes: usize,
    /// Per shard: incremental fetch sessions kept (KIP-227; Kafka's
    /// max.incremental.fetch.session.cache.slots); 0 turns sessions off.
    pub fetch_session_cache_slots: usize,
    /// Per shard: response buffers (stored batches of a fetch) at least this
    /// large are sent with io_uring SEND_ZC, smaller ones with sendmsg; 0
    /// sends everything with sendmsg (see benches/RESULTS.md, fetch).
    pub send_zc_threshold_bytes: usize,
    pub connections_max_idle_ms: u64,
    pub request_timeout_ms: u64,
    /// Per shard: memory of a compaction run's key → offset map.
    pub log_cleaner_dedupe_buffer_bytes: usize,
    pub log_cleaner_backoff_ms: u64,
    /// Per shard: compaction reads plus writes per second (0: unlimited).
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// A node the controller leader has not heard from this long is fenced.
    pub broker_session_timeout_ms: u64,
    /// Replicas of topics created without a replication factor
    /// (Kafka's default.replication.factor).
    pub default_replication_factor: i32,
    /// Broker default of the min.insync.replicas topic config.
    pub min_insync_replicas: i32,
    /// A follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// Replicas of `__consumer_offsets` (Kafka's offsets.topic.replication.factor).
    pub offsets_topic_replication_factor: i32,
    pub core: BTreeMap<String, CoreOverride>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
/// Redpanda's metrics port.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9644";
pub const IO_MEMORY_BYTES_DEFAULT: usize = 1 << 20;
pub const IO_DEPTH_DEFAULT: usize = 128;
/// Per shard: at 200 MB/s into one core, about a third of a second of
/// writes (see benches/RESULTS.md, fetch).
pub const TAIL_CACHE_BYTES_DEFAULT: usize = 64 << 20;
/// Off: on this machine's local paths SEND_ZC cost more CPU per byte than
/// sendmsg (benches/RESULTS.md, fetch).
pub const SEND_ZC_THRESHOLD_BYTES_DEFAULT: usize = 0;
/// Kafka's connections.max.idle.ms default (10 minutes).
pub const CONNECTIONS_MAX_IDLE_MS_DEFAULT: u64 = 600_000;
/// Per shard (Kafka's 128 MiB is shared by its cleaner threads): about
/// 500,000 keys per compaction run.
pub const LOG_CLEANER_DEDUPE_BUFFER_BYTES_DEFAULT: usize = 16 << 20;
/// Compaction I/O per shard: see benches/RESULTS.md (compaction) for what
/// it costs the produce path at which limit.
pub const LOG_CLEANER_IO_MAX_BYTES_PER_SECOND_DEFAULT: u64 = 100_000_000;
/// Kafka's log.cleaner.backoff.ms.
pub const LOG_CLEANER_BACKOFF_MS_DEFAULT: u64 = 15_000;
/// Kafka clients' request.timeout.ms default.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The memory budgets of all shards together default to this fraction of the
/// machine's memory (1/8), split evenly between them.
const MEMORY_BUDGET_FRACTION_DIVISOR: u64 = 8;

/// The default per-shard memory budget: 1/8 of the memory this process may
/// use (physical memory, or the cgroup's limit if lower) shared by the shards,
/// and at least twice the largest frame (the validation rule), so the
/// defaults start on any machine.
fn memory_budget_default(shards: usize, max_frame_bytes: usize) -> usize {
    // SAFETY: sysconf only reads system values.
    let (pages, page_bytes) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let physical = if pages > 0 && page_bytes > 0 {
        pages as u64 * page_bytes as u64
    } else {
        4 << 30
    };
    // cgroup v2: "max" or a byte count.
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    let usable = cgroup.map_or(physical, |limit| limit.min(physical));
    let per_shard = usable / MEMORY_BUDGET_FRACTION_DIVISOR / shards.max(1) as u64;
    (per_shard as usize)
        .max(2 * max_frame_bytes)
        .max(sluice_shard::memory::MEMORY_BUDGET_BYTES_MIN)
}

fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.parse()
                        .map_err(|_| format!("cores: `{part}` is not a CPU range"))?,
                    b.parse()
                        .map_err(|_| format!("cores: `{part}` is not a CPU range"))?,
                );
                if a > b {
                    return Err(format!("cores: range `{part}` is backwards"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(
                part.parse()
                    .map_err(|_| format!("cores: `{part}` is not a CPU number"))?,
            ),
        }
    }
    Ok(cpus)
}

/// `N` (a count: CPUs 0..N) or a CPU list.
fn parse_cores(text: &str, available: usize) -> Result<Vec<usize>, String> {
    let text = text.trim();
    if !text.contains([',', '-']) {
        let count: usize = text
            .parse()
            .map_err(|_| format!("cores: `{text}` is neither a count nor a CPU list"))?;
        if count == 0 {
            return Err("cores: must be at least 1".into());
        }
        if count > available {
            return Err(format!(
                "cores: {count} shards asked for, this machine has {available} CPUs"
            ));
        }
        return Ok((0..count).collect());
    }
    let cpus = parse_cpu_list(text)?;
    if cpus.is_empty() {
        return Err("cores: the CPU list is empty".into());
    }
    if let Some(cpu) = cpus.iter().find(|c| **c >= available) {
        return Err(format!(
            "cores: CPU {cpu} does not exist (this machine has {available})"
        ));
    }
    Ok(cpus)
}

impl Config {
    pub fn load(cli: &Cli) -> Result<Config, String> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("config {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| format!("config {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let available = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cores_text = match (&cli.cores, &file.cores) {
            (Some(text), _) => Some(text.clone()),
            (None, Some(toml::Value::Integer(n))) => Some(n.to_string()),
            (None, Some(toml::Value::String(s))) => Some(s.clone()),
            (None, Some(toml::Value::Array(items))) => Some(
                items
                    .iter()
                    .map(|v| v.to_string().trim_matches('"').to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (None, Some(other)) => {
                return Err(format!(
                    "cores: `{other}` is neither a count nor a CPU list"
                ))
            }
            (None, None) => None,
        };
        let mut cpus = match cores_text {
            Some(text) => parse_cores(&text, available)?,
            None => (0..available).collect(),
        };
        for (key, core) in &file.core {
            let index: usize = key
                .parse()
                .map_err(|_| format!("core.{key}: the core section must be a shard number"))?;
            if index >= cpus.len() {
                return Err(format!("core.{key}: there are only {} shards", cpus.len()));
            }
            if let Some(cpu) = core.cpu {
                if cpu >= available {
                    return Err(format!(
                        "core.{key}.cpu: CPU {cpu} does not exist (this machine has {available})"
                    ));
                }
                cpus[index] = cpu;
            }
            if core.io_depth == Some(0) {
                return Err(format!("core.{key}.io_depth: must be at least 1"));
            }
        }
        let listen = cli
            .listen
            .clone()
            .or(file.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let advertised_listener = cli
            .advertised_listener
            .clone()
            .or(file.advertised_listener.clone())
            .unwrap_or_else(|| listen.clone());
        let cpus_len = cpus.len();
        let max_frame_bytes = cli
            .max_frame_bytes
            .or(file.max_frame_bytes)
            .unwrap_or(sluice_protocol::frame::FRAME_BYTES_MAX_DEFAULT);
        let config = Config {
            data_dir: cli
                .data_dir
                .clone()
                .or(file.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from("./sluice-data")),
            listen,
            advertised_listener,
            cpus,
            node_id: cli.node_id.or(file.node_id).unwrap_or(0),
            controllers: match &cli.controllers {
                Some(list) => list
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                None => file.controllers.clone().unwrap_or_default(),
            },
            internal_listener: cli
                .internal_listener
                .clone()
                .or(file.internal_listener.clone())
                .unwrap_or_default(),
            metrics_listen: cli
                .metrics_listen
                .clone()
                .or(file.metrics_listen.clone())
                .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string()),
            auto_create_topics: cli
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(true),
            default_partitions: cli
                .default_partitions
                .or(file.default_partitions)
                .unwrap_or(1),
            max_frame_bytes,
            max_in_flight_per_connection: file.max_in_flight_per_connection.unwrap_or(64),
            max_message_bytes: file.max_message_bytes.unwrap_or(1_048_588),
            retention_check_ms: file.retention_check_ms.unwrap_or(60_000),
            offsets_retention_minutes: file.offsets_retention_minutes.unwrap_or(7 * 24 * 60),
            max_partitions_per_topic: file.max_partitions_per_topic.unwrap_or(10_000),
            segment_bytes: cli
                .segment_bytes
                .or(file.segment_bytes)
                .unwrap_or(sluice_storage::config::SEGMENT_BYTES_DEFAULT),
            segment_ms: file
                .segment_ms
                .unwrap_or(sluice_storage::config::SEGMENT_MS_DEFAULT as i64),
            retention_ms: cli
                .retention_ms
                .or(file.retention_ms)
                .unwrap_or(sluice_storage::config::RETENTION_MS_DEFAULT as i64),
            retention_bytes: cli.retention_bytes.or(file.retention_bytes).unwrap_or(-1),
            flush: cli
                .flush
                .clone()
                .or(file.flush.clone())
                .unwrap_or_else(|| "always".into()),
            index_interval_bytes: file
                .index_interval_bytes
                .unwrap_or(sluice_storage::config::INDEX_INTERVAL_BYTES_DEFAULT),
            preallocate_bytes: file
                .preallocate_bytes
                .unwrap_or(sluice_storage::config::PREALLOCATE_BYTES_DEFAULT),
            write_buffer_bytes: file
                .write_buffer_bytes
                .unwrap_or(sluice_storage::config::WRITE_BUFFER_BYTES_DEFAULT),
            io_memory_bytes: file.io_memory_bytes.unwrap_or(IO_MEMORY_BYTES_DEFAULT),
            io_depth: file.io_depth.unwrap_or(IO_DEPTH_DEFAULT),
            memory_budget_bytes: file
                .memory_budget_bytes
                .unwrap_or_else(|| memory_budget_default(cpus_len, max_frame_bytes)),
            tail_cache_bytes: file.tail_cache_bytes.unwrap_or(TAIL_CACHE_BYTES_DEFAULT),
            fetch_session_cache_slots: file.fetch_session_cache_slots.unwrap_or(1000),
            send_zc_threshold_bytes: file
                .send_zc_threshold_bytes
                .unwrap_or(SEND_ZC_THRESHOLD_BYTES_DEFAULT),
            connections_max_idle_ms: file
                .connections_max_idle_ms
                .unwrap_or(CONNECTIONS_MAX_IDLE_MS_DEFAULT),
            request_timeout_ms: file
                .request_timeout_ms
                .unwrap_or(REQUEST_TIMEOUT_MS_DEFAULT),
            log_cleaner_dedupe_buffer_bytes: file
                .log_cleaner_dedupe_buffer_bytes
                .unwrap_or(LOG_CLEANER_DEDUPE_BUFFER_BYTES_DEFAULT),
            log_cleaner_backoff_ms: file
                .log_cleaner_backoff_ms
                .unwrap_or(LOG_CLEANER_BACKOFF_MS_DEFAULT),
            log_cleaner_io_max_bytes_per_second: file
                .log_cleaner_io_max_bytes_per_second
                .unwrap_or(LOG_CLEANER_IO_MAX_BYTES_PER_SECOND_DEFAULT),
            broker_session_timeout_ms: file.broker_session_timeout_ms.unwrap_or(9000),
            default_replication_factor: file.default_replication_factor.unwrap_or(1),
            min_insync_replicas: file.min_insync_replicas.unwrap_or(1),
            replica_lag_time_max_ms: file.replica_lag_time_max_ms.unwrap_or(30_000),
            offsets_topic_replication_factor: file.offsets_topic_replication_factor.unwrap_or(3),
            core: file.core.clone(),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        resolve(&self.listen).map_err(|e| format!("listen: {e}"))?;
        self.voters()?;
        let (host, port) = self.advertised()?;
        if host.is_empty() || port <= 0 {
            return Err(format!(
                "advertised_listener: `{}` needs a host and a port",
                self.advertised_listener
            ));
        }
        // Kafka's rule: clients cannot connect to the wildcard address.
        if host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
        {
            return Err(format!(
                "advertised_listener: `{}` is the wildcard address, which clients cannot connect to; \
                 set advertised_listener (SLUICE_ADVERTISED_LISTENER, --advertised-listener) to this \
                 host's name or address (it defaults to `listen`)",
                self.advertised_listener
            ));
        }
        if self.default_partitions < 1 {
            return Err(format!(
                "default_partitions: must be at least 1, got {}",
                self.default_partitions
            ));
        }
        if self.max_frame_bytes < 1024 {
            return Err(format!(
                "max_frame_bytes: {} is too small",
                self.max_frame_bytes
            ));
        }
        if self.max_in_flight_per_connection == 0 {
            return Err("max_in_flight_per_connection: must be at least 1".into());
        }
        if self.max_message_bytes < 1 {
            return Err("max_message_bytes: must be at least 1".into());
        }
        if self.max_partitions_per_topic < 1 {
            return Err("max_partitions_per_topic: must be at least 1".into());
        }
        if self.default_partitions > self.max_partitions_per_topic {
            return Err("default_partitions: larger than max_partitions_per_topic".into());
        }
        if self.offsets_retention_minutes < 1 {
            return Err("offsets_retention_minutes: must be at least 1".into());
        }
        if self.io_depth == 0 {
            return Err("io_depth: must be at least 1".into());
        }
        for shard in 0..self.cpus.len() {
            let budget = self.memory_budget_bytes(shard);
            let name = match self.core_override(shard).memory_budget_bytes {
                Some(_) => format!("core.{shard}.memory_budget_bytes"),
                None => "memory_budget_bytes".to_string(),
            };
            if budget < sluice_shard::memory::MEMORY_BUDGET_BYTES_MIN {
                return Err(format!(
                    "{name}: {budget} is below the minimum {}",
                    sluice_shard::memory::MEMORY_BUDGET_BYTES_MIN
                ));
            }
            // A frame takes its bytes from the budget as they arrive: one
            // that cannot fit would wait for itself.
            if budget < 2 * self.max_frame_bytes {
                return Err(format!(
                    "{name}: {budget} must be at least twice max_frame_bytes ({})",
                    self.max_frame_bytes
                ));
            }
        }
        if self.log_cleaner_dedupe_buffer_bytes < 64 << 10 {
            return Err("log_cleaner_dedupe_buffer_bytes: must be at least 65536".into());
        }
        if self.default_replication_factor < 1 {
            return Err("default_replication_factor: must be at least 1".into());
        }
        if self.min_insync_replicas < 1 {
            return Err("min_insync_replicas: must be at least 1".into());
        }
        if self.offsets_topic_replication_factor < 1 {
            return Err("offsets_topic_replication_factor: must be at least 1".into());
        }
        if self.replica_lag_time_max_ms < 100 {
            return Err("replica_lag_time_max_ms: must be at least 100".into());
        }
        if self.broker_session_timeout_ms < 300 {
            return Err("broker_session_timeout_ms: must be at least 300".into());
        }
        if self.log_cleaner_backoff_ms < 10 {
            return Err("log_cleaner_backoff_ms: must be at least 10".into());
        }
        if self.connections_max_idle_ms < 100 {
            return Err("connections_max_idle_ms: must be at least 100".into());
        }
        if self.request_timeout_ms < 100 {
            return Err("request_timeout_ms: must be at least 100".into());
        }
        self.log_config()?.validate()?;
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        resolve(&self.listen).expect("validated")
    }

    /// The controller voters by node id; empty for a cluster of this node alone.
    pub fn voters(&self) -> Result<std::collections::BTreeMap<i32, String>, String> {
        let mut voters = std::collections::BTreeMap::new();
        for entry in &self.controllers {
            let (id, addr) = entry
                .split_once('@')
                .ok_or_else(|| format!("controllers: `{entry}` is not ID@HOST:PORT"))?;
            let id: i32 = id
                .parse()
                .map_err(|_| format!("controllers: `{id}` in `{entry}` is not a node id"))?;
            resolve(addr).map_err(|e| format!("controllers: `{entry}`: {e}"))?;
            if voters.insert(id, addr.to_string()).is_some() {
                return Err(format!("controllers: node {id} is listed twice"));
            }
        }
        if !voters.is_empty() && !voters.contains_key(&self.node_id) {
            if self.internal_listener.is_empty() {
                return Err(format!(
                    "internal_listener: node {} is not a controller voter, so it needs its own internal listener (HOST:PORT)",
                    self.node_id
                ));
            }
            resolve(&self.internal_listener).map_err(|e| format!("internal_listener: {e}"))?;
        }
        Ok(voters)
    }

    pub fn advertised(&self) -> Result<(String, i32), String> {
        let (host, port) = self.advertised_listener.rsplit_once(':').ok_or_else(|| {
            format!(
                "advertised_listener: `{}` is not HOST:PORT",
                self.advertised_listener
            )
        })?;
        let port: i32 = port
            .parse()
            .map_err(|_| format!("advertised_listener: `{port}` is not a port"))?;
        Ok((host.trim_matches(['[', ']']).to_string(), port))
    }

    pub fn log_config(&self) -> Result<LogConfig, String> {
        Ok(LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: (self.segment_ms > 0).then_some(self.segment_ms as u64),
            index_interval_bytes: self.index_interval_bytes,
            retention_bytes: (self.retention_bytes >= 0).then_some(self.retention_bytes as u64),
            retention_ms: (self.retention_ms >= 0).then_some(self.retention_ms as u64),
            flush: FlushPolicy::parse(&self.flush)?,
            preallocate_bytes: self.preallocate_bytes,
            write_buffer_bytes: self.write_buffer_bytes,
        })
    }

    pub fn memory_budget_bytes(&self, shard: usize) -> usize {
        self.core_override(shard)
            .memory_budget_bytes
            .unwrap_or(self.memory_budget_bytes)
    }

    pub fn send_zc_threshold_bytes(&self, shard: usize) -> usize {
        self.core_override(shard)
            .send_zc_threshold_bytes
            .unwrap_or(self.send_zc_threshold_bytes)
    }

    pub fn tail_cache_bytes(&self, shard: usize) -> usize {
        self.core_override(shard)
            .tail_cache_bytes
            .unwrap_or(self.tail_cache_bytes)
    }

    pub fn core_override(&self, shard: usize) -> CoreOverride {
        self.core
            .get(&shard.to_string())
            .cloned()
            .unwrap_or_default()
    }
}

fn resolve(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("`{text}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, cli: Cli) -> Result<Config, String> {
        let dir = tempfile_dir();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, toml_text).unwrap();
        Config::load(&Cli {
            config: Some(path),
            ..cli
        })
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sluice-config-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    #[test]
    fn defaults_are_the_embedded_ones() {
        let config = Config::load(&Cli::default()).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9092");
        assert_eq!(config.data_dir, PathBuf::from("./sluice-data"));
        assert_eq!(config.flush, "always");
        assert!(!config.cpus.is_empty());
    }

    #[test]
    fn flags_override_the_file_and_core_sections_apply() {
        let config = load(
            "listen = \"127.0.0.1:7000\"\nsegment_bytes = 1048576\ncores = 1\n[core.0]\ncpu = 0\nio_memory_bytes = 65536\n",
            Cli { listen: Some("127.0.0.1:7001".into()), ..Cli::default() },
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:7001");
        assert_eq!(config.segment_bytes, 1 << 20);
        assert_eq!(config.cpus, vec![0]);
        assert_eq!(config.core_override(0).io_memory_bytes, Some(65536));
        let config = load(
            "cores = 2\nmemory_budget_bytes = 268435456\n[core.1]\nmemory_budget_bytes = 536870912\n",
            Cli::default(),
        );
        if let Ok(config) = config {
            // (Machines with one CPU refuse `cores = 2`.)
            assert_eq!(config.memory_budget_bytes(0), 256 << 20);
            assert_eq!(config.memory_budget_bytes(1), 512 << 20);
        }
        let config = load(
            "cores = 2\nsend_zc_threshold_bytes = 65536\n[core.1]\ntail_cache_bytes = 0\nsend_zc_threshold_bytes = 0\n",
            Cli::default(),
        );
        if let Ok(config) = config {
            assert_eq!(config.tail_cache_bytes(0), TAIL_CACHE_BYTES_DEFAULT);
            assert_eq!(config.tail_cache_bytes(1), 0);
            assert_eq!(config.send_zc_threshold_bytes(0), 65536);
            assert_eq!(config.send_zc_threshold_bytes(1), 0);
        }
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let error = |text: &str| load(text, Cli::default()).unwrap_err();
        assert!(error("segment_bytes = 10\n").contains("segment_bytes"));
        assert!(error("flush = \"sometimes\"\n").contains("flush"));
        assert!(error("no_such_setting = 1\n").contains("no_such_setting"));
        assert!(error("cores = 999\n").contains("cores"));
        assert!(error("[core.5]\ncpu = 0\n").contains("core.5"));
        assert!(error("listen = \"nonsense\"\n").contains("listen"));
        assert!(error("default_partitions = 0\n").contains("default_partitions"));
        assert!(error("memory_budget_bytes = 1000\n").contains("memory_budget_bytes"));
        assert!(error("cores = 1\n[core.0]\nmemory_budget_bytes = 1000\n")
            .contains("core.0.memory_budget_bytes"));
        assert!(
            error("memory_budget_bytes = 134217728\nmax_frame_bytes = 104857600\n")
                .contains("twice max_frame_bytes")
        );
        assert!(error("connections_max_idle_ms = 0\n").contains("connections_max_idle_ms"));
        // A wildcard listen address is fine; advertising it (by default) is not.
        assert!(error("listen = \"0.0.0.0:9092\"\n").contains("wildcard"));
        assert!(error("listen = \"[::]:9092\"\n").contains("wildcard"));
        assert!(load(
            "listen = \"0.0.0.0:9092\"\nadvertised_listener = \"broker-1:9092\"\n",
            Cli::default()
        )
        .is_ok());
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0,2-3").unwrap(), vec![0, 2, 3]);
        assert!(parse_cores("0", 2).is_err());
        assert_eq!(parse_cores("2", 2).unwrap(), vec![0, 1]);
    }
}
