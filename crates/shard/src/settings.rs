//! Broker-wide settings every shard reads (immutable after start).

use sluice_storage::LogConfig;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub node_id: i32,
    pub cluster_id: String,
    pub data_dir: PathBuf,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    /// Largest request frame; a bigger one closes the connection.
    pub max_frame_bytes: usize,
    /// Requests read ahead on one connection before its responses are written.
    pub max_in_flight_per_connection: usize,
    /// Default `max.message.bytes` of topics (largest record batch).
    pub max_message_bytes: i64,
    /// Defaults of the partition logs; topic configs override some.
    pub log: LogConfig,
    /// How often each shard applies retention.
    pub retention_check_ms: u64,
    /// Committed offsets of an empty group expire after this long.
    pub offsets_retention_ms: i64,
    /// Most partitions one topic may have (CreateTopics/CreatePartitions).
    pub max_partitions_per_topic: i32,
    /// Each shard's budget for request bytes being read and response bytes
    /// waiting to be written (index = shard id).
    pub memory_budget_bytes_per_core: Vec<usize>,
    /// Each shard's tail cache bound (index = shard id).
    pub tail_cache_bytes_per_core: Vec<usize>,
    /// Each shard's smallest response buffer sent with SEND_ZC (0: none).
    pub send_zc_threshold_bytes_per_core: Vec<usize>,
    /// Incremental fetch sessions each shard keeps (Kafka's
    /// max.incremental.fetch.session.cache.slots, per broker there).
    pub fetch_session_cache_slots: usize,
    /// A connection with nothing in flight and no traffic this long is closed
    /// (Kafka's connections.max.idle.ms); also how long a response may make no progress.
    pub connections_max_idle_ms: u64,
    /// A request that stops arriving mid-frame this long closes its connection.
    pub request_timeout_ms: u64,
    /// Memory of one compaction run's key map, per shard (Kafka's
    /// log.cleaner.dedupe.buffer.size, which its cleaner threads share).
    pub log_cleaner_dedupe_buffer_bytes: usize,
    /// How often each shard looks for logs to compact (log.cleaner.backoff.ms).
    pub log_cleaner_backoff_ms: u64,
    /// Compaction reads plus writes per second, per shard (None: unlimited).
    pub log_cleaner_io_max_bytes_per_second: Option<u64>,
    /// A node the controller leader has not heard from this long is fenced.
    pub broker_session_timeout_ms: u64,
    /// Replicas of topics created without a replication factor.
    pub default_replication_factor: i32,
    /// Broker default of the min.insync.replicas topic config.
    pub min_insync_replicas: i32,
    /// A follower not caught up for this long leaves the ISR (replica.lag.time.max.ms).
    pub replica_lag_time_max_ms: u64,
    /// Replicas of `__consumer_offsets` (at most the live nodes when it is created).
    pub offsets_topic_replication_factor: i32,
    /// Controller voters named by `--controllers` (0 for a node of its own):
    /// a cluster is expected to have at least this many nodes.
    pub controller_voters: usize,
}

impl BrokerSettings {
    /// Small settings for one node of its own in `data_dir` (the request
    /// replay harness and tests).
    pub fn for_tests(data_dir: PathBuf) -> BrokerSettings {
        BrokerSettings {
            node_id: 0,
            cluster_id: "replay".into(),
            data_dir,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            auto_create_topics: true,
            default_partitions: 1,
            max_frame_bytes: 1 << 20,
            max_in_flight_per_connection: 8,
            max_message_bytes: 1 << 20,
            log: sluice_storage::LogConfig {
                segment_bytes: 1 << 20,
                ..sluice_storage::LogConfig::default()
            },
            retention_check_ms: 60_000,
            offsets_retention_ms: 60_000,
            max_partitions_per_topic: 4,
            memory_budget_bytes_per_core: vec![64 << 20],
            tail_cache_bytes_per_core: vec![16 << 20],
            fetch_session_cache_slots: 1000,
            send_zc_threshold_bytes_per_core: vec![0],
            connections_max_idle_ms: 600_000,
            request_timeout_ms: 30_000,
            log_cleaner_dedupe_buffer_bytes: 1 << 20,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_io_max_bytes_per_second: None,
            broker_session_timeout_ms: 9_000,
            default_replication_factor: 1,
            min_insync_replicas: 1,
            replica_lag_time_max_ms: 30_000,
            offsets_topic_replication_factor: 1,
            controller_voters: 0,
        }
    }

    pub fn memory_budget_bytes(&self, shard: usize) -> usize {
        self.memory_budget_bytes_per_core[shard]
    }

    pub fn send_zc_threshold_bytes(&self, shard: usize) -> usize {
        self.send_zc_threshold_bytes_per_core
            .get(shard)
            .copied()
            .unwrap_or_default()
    }

    pub fn tail_cache_bytes(&self, shard: usize) -> usize {
        self.tail_cache_bytes_per_core
            .get(shard)
            .copied()
            .unwrap_or_default()
    }

    pub fn topics_dir(&self) -> PathBuf {
        self.data_dir.join("topics")
    }

    /// The offsets topic's partitions live where the offset buckets of
    /// older data dirs did (`offsets/bucket-NN`).
    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        if topic == crate::groups::offsets::OFFSETS_TOPIC {
            return self
                .data_dir
                .join("offsets")
                .join(format!("bucket-{partition:02}"));
        }
        self.topics_dir().join(format!("{topic}-{partition}"))
    }
}
