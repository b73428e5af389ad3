//! A workload: what to produce and consume, for how long. Read from a TOML
//! file (`benches/workloads/*.toml`) and/or command-line flags (flags win);
//! every problem is reported with the setting's name and, for a file, its path.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDistribution {
    /// No key; like Kafka's sticky partitioner, a producer fills one batch per
    /// partition and moves to the next when it is sealed.
    None,
    /// Keyed messages, the key cycling so partitions are used in turn.
    RoundRobin,
    /// A random 16-byte key per message; partition = hash(key).
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    /// The codec id in a record batch's attributes.
    pub fn codec_id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

/// Every setting of a run. Field names are the TOML keys and, with `-` for
/// `_`, the command-line flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Short name; used for file names in the report.
    pub name: String,
    pub description: String,
    pub topics: u32,
    pub partitions_per_topic: u32,
    /// Topic replication factor asked of the broker.
    pub replication_factor: i16,
    /// Bytes of payload per message (the first 8 carry the send time).
    pub message_size: usize,
    pub producers: u32,
    pub consumers: u32,
    /// Consumers join one consumer group (the broker's coordinator assigns
    /// through the leader); otherwise partitions are split among them statically.
    pub consumer_group: bool,
    /// Messages per second over all producers; 0 = as fast as possible.
    pub producer_rate: u64,
    pub key_distribution: KeyDistribution,
    /// -1 (all), 1 (leader) or 0 (none).
    pub acks: i16,
    /// A partition's batch is sent when it holds this many bytes...
    pub batch_bytes: usize,
    /// ...or its first message is this old.
    pub linger_ms: u64,
    /// Produce requests in flight per producer connection.
    pub max_in_flight: u32,
    /// The retry budget (Kafka's `delivery.timeout.ms`): a message is retried
    /// on retriable errors (NOT_LEADER_OR_FOLLOWER, a lost connection, ...)
    /// until this long after it was added to a batch, then counts as lost. A
    /// consumer's group or fetch operation is retried as long, then fails.
    pub delivery_timeout_ms: u64,
    /// How long a request may wait for its response (Kafka's
    /// `request.timeout.ms`; also the Produce request's timeout) before the
    /// connection is closed and the request retried.
    pub request_timeout_ms: u64,
    pub compression: Compression,
    pub warmup_s: u64,
    pub duration_s: u64,
    /// Backlog mode when > 0: produce this many bytes with no consumer
    /// reading, then the consumers drain the backlog from offset 0 (producers
    /// stopped). `duration_s` then caps the whole run.
    pub backlog_bytes: u64,
    /// Topics are named `<topic_prefix>-<run id>-<n>`.
    pub topic_prefix: String,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            name: "custom".into(),
            description: String::new(),
            topics: 1,
            partitions_per_topic: 16,
            replication_factor: 1,
            message_size: 1024,
            producers: 1,
            consumers: 1,
            consumer_group: true,
            producer_rate: 0,
            key_distribution: KeyDistribution::None,
            acks: -1,
            batch_bytes: 128 * 1024,
            linger_ms: 1,
            max_in_flight: 5,
            delivery_timeout_ms: 120_000,
            request_timeout_ms: 30_000,
            compression: Compression::None,
            warmup_s: 5,
            duration_s: 30,
            backlog_bytes: 0,
            topic_prefix: "sluice-bench".into(),
        }
    }
}

/// Largest message the bench builds (Kafka's default max.message.bytes is ~1 MiB).
pub const MESSAGE_SIZE_MAX: usize = 8 << 20;
/// The payload header: send time (8 bytes) and producer/sequence (8 bytes).
pub const MESSAGE_SIZE_MIN: usize = 16;

impl Workload {
    /// Reads a workload file; errors name the file and the offending key.
    pub fn from_file(path: &Path) -> Result<Workload, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read workload file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("workload file {}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Workload, String> {
        let workload: Workload =
            toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        workload.validate()?;
        Ok(workload)
    }

    pub fn total_partitions(&self) -> u64 {
        self.topics as u64 * self.partitions_per_topic as u64
    }

    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }

    /// The retry budget.
    pub fn delivery_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.delivery_timeout_ms)
    }

    pub fn is_backlog(&self) -> bool {
        self.backlog_bytes > 0
    }

    /// Checks the settings together; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |msg: String| Err(msg);
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return fail(format!(
                "name {:?}: use letters, digits, '-' and '_' (it names report files)",
                self.name
            ));
        }
        if self.topics == 0 {
            return fail("topics must be at least 1".into());
        }
        if self.partitions_per_topic == 0 {
            return fail("partitions_per_topic must be at least 1".into());
        }
        if self.total_partitions() > 100_000 {
            return fail(format!(
                "topics × partitions_per_topic = {} is over the bench's 100000",
                self.total_partitions()
            ));
        }
        if self.replication_factor < 1 {
            return fail("replication_factor must be at least 1".into());
        }
        if !(MESSAGE_SIZE_MIN..=MESSAGE_SIZE_MAX).contains(&self.message_size) {
            return fail(format!(
                "message_size {} is outside {MESSAGE_SIZE_MIN}..={MESSAGE_SIZE_MAX} bytes (the first {MESSAGE_SIZE_MIN} carry the send time and sequence)",
                self.message_size
            ));
        }
        if self.producers == 0 {
            return fail("producers must be at least 1".into());
        }
        if self.producers > 10_000 || self.consumers > 10_000 {
            return fail("producers and consumers are capped at 10000 each".into());
        }
        if self.is_backlog() && self.consumers == 0 {
            return fail("backlog_bytes needs at least one consumer to drain the backlog".into());
        }
        if ![-1, 0, 1].contains(&self.acks) {
            return fail(format!("acks {} must be -1 (all), 0 or 1", self.acks));
        }
        if self.batch_bytes < self.message_size.min(1024) || self.batch_bytes > 64 << 20 {
            return fail(format!(
                "batch_bytes {} must be between min(message_size, 1024) and 64 MiB",
                self.batch_bytes
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1024 {
            return fail(format!(
                "max_in_flight {} must be 1..=1024",
                self.max_in_flight
            ));
        }
        if self.delivery_timeout_ms == 0 || self.delivery_timeout_ms > 3_600_000 {
            return fail(format!(
                "delivery_timeout_ms {} must be 1..=3600000 (an hour)",
                self.delivery_timeout_ms
            ));
        }
        if !(100..=i32::MAX as u64).contains(&self.request_timeout_ms) {
            return fail(format!(
                "request_timeout_ms {} must be at least 100 (and fit an i32)",
                self.request_timeout_ms
            ));
        }
        if self.duration_s == 0 {
            return fail("duration_s must be at least 1".into());
        }
        if self.topic_prefix.is_empty()
            || !self
                .topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return fail(format!(
                "topic_prefix {:?}: Kafka topic names use letters, digits, '.', '_' and '-'",
                self.topic_prefix
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let w = Workload::from_toml(
            r#"
            name = "latency-200mb"
            topics = 2
            partitions_per_topic = 8
            message_size = 1024
            producers = 4
            consumers = 4
            consumer_group = false
            producer_rate = 195313
            key_distribution = "round-robin"
            acks = 1
            batch_bytes = 65536
            linger_ms = 2
            compression = "zstd"
            warmup_s = 3
            duration_s = 10
            "#,
        )
        .unwrap();
        assert_eq!(w.total_partitions(), 16);
        assert_eq!(w.key_distribution, KeyDistribution::RoundRobin);
        assert_eq!(w.compression, Compression::Zstd);
        assert_eq!(w.acks, 1);
        assert!(!w.consumer_group);
        // Unset keys keep their defaults.
        assert_eq!(w.max_in_flight, 5);
        assert_eq!(w.delivery_timeout_ms, 120_000);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = |text: &str| Workload::from_toml(text).unwrap_err();
        assert!(err("partitons_per_topic = 3").contains("unknown field `partitons_per_topic`"));
        assert!(err("acks = 2").contains("acks 2"));
        assert!(err("compression = \"snappy\"").contains("unknown variant `snappy`"));
        assert!(err("message_size = 4").contains("message_size 4"));
        assert!(err("partitions_per_topic = 0").contains("partitions_per_topic"));
        assert!(err("duration_s = \"ten\"").contains("invalid type"));
        assert!(err("name = \"a b\"").contains("name"));
        assert!(err("backlog_bytes = 1000\nconsumers = 0").contains("backlog_bytes"));
        assert!(err("topics = [").contains("invalid"));
        assert!(err("delivery_timeout_ms = 0").contains("delivery_timeout_ms 0"));
        assert!(err("request_timeout_ms = 10").contains("request_timeout_ms 10"));
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let e = Workload::from_file(Path::new("/nonexistent/w.toml")).unwrap_err();
        assert!(e.contains("/nonexistent/w.toml"), "{e}");
    }

    #[test]
    fn the_standard_workloads_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/workloads");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let w = Workload::from_file(&path).unwrap();
                names.push(w.name);
            }
        }
        assert!(names.len() >= 6, "standard workloads: {names:?}");
    }
}
