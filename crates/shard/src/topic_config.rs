//! Topic configs: the whole set Kafka 3.7 reports for a topic, which of them
//! Sluice honours, their validation, their broker-level synonyms and
//! defaults, and what they change.
//!
//! Every config Kafka reports is described (DescribeConfigs), so tools that
//! decide from them (Kafka Connect's cleanup.policy check, Schema Registry)
//! see what they expect. A config Sluice *honours* may be set to any valid
//! value (CreateTopics, AlterConfigs, IncrementalAlterConfigs) and takes
//! effect on open logs at once. A config Sluice *does not implement* (tiered
//! storage, throttling, down-conversion, ...) may only be set to its default:
//! anything else is INVALID_CONFIG naming it, never silently ignored.

use crate::settings::BrokerSettings;
use sluice_storage::{CompactionConfig, LogConfig};
use std::collections::BTreeMap;

pub const CLEANUP_POLICY: &str = "cleanup.policy";
pub const RETENTION_MS: &str = "retention.ms";
pub const RETENTION_BYTES: &str = "retention.bytes";
pub const SEGMENT_BYTES: &str = "segment.bytes";
pub const SEGMENT_MS: &str = "segment.ms";
pub const INDEX_INTERVAL_BYTES: &str = "index.interval.bytes";
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
pub const MESSAGE_TIMESTAMP_TYPE: &str = "message.timestamp.type";
pub const DELETE_RETENTION_MS: &str = "delete.retention.ms";
pub const MIN_CLEANABLE_DIRTY_RATIO: &str = "min.cleanable.dirty.ratio";
pub const MIN_COMPACTION_LAG_MS: &str = "min.compaction.lag.ms";
pub const MAX_COMPACTION_LAG_MS: &str = "max.compaction.lag.ms";
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";

const LONG_MAX: &str = "9223372036854775807";

/// How a value is checked.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// A 64-bit integer at least this.
    Long(i64),
    /// A 32-bit integer at least this.
    Int(i32),
    /// A number in 0..=1.
    Ratio,
    Bool,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A comma-separated list of `delete` and `compact`.
    Policy,
    /// Anything (only its default is accepted: see `Support`).
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Sluice does what the config says; any valid value is accepted.
    Honoured,
    /// Reported with Kafka's default; only that value is accepted.
    DefaultOnly,
}

/// One topic config as Kafka defines it.
#[derive(Debug, Clone, Copy)]
pub struct TopicConfigDef {
    pub name: &'static str,
    /// The broker config that supplies its default (DescribeConfigs synonym).
    pub synonym: Option<&'static str>,
    pub support: Support,
    /// Kafka's default, for configs without a Sluice broker setting.
    kafka_default: &'static str,
    check: Check,
}

const fn def(
    name: &'static str,
    synonym: Option<&'static str>,
    support: Support,
    kafka_default: &'static str,
    check: Check,
) -> TopicConfigDef {
    TopicConfigDef {
        name,
        synonym,
        support,
        kafka_default,
        check,
    }
}

use Support::{DefaultOnly, Honoured};

/// Every topic config of Kafka 3.7, in its order (what `kafka-configs
/// --describe --all` lists for a topic).
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def(
        CLEANUP_POLICY,
        Some("log.cleanup.policy"),
        Honoured,
        "delete",
        Check::Policy,
    ),
    def(
        "compression.type",
        Some("compression.type"),
        DefaultOnly,
        "producer",
        Check::Text,
    ),
    def(
        DELETE_RETENTION_MS,
        Some("log.cleaner.delete.retention.ms"),
        Honoured,
        "86400000",
        Check::Long(0),
    ),
    def(
        "file.delete.delay.ms",
        Some("log.segment.delete.delay.ms"),
        DefaultOnly,
        "60000",
        Check::Long(0),
    ),
    def(
        "flush.messages",
        Some("log.flush.interval.messages"),
        DefaultOnly,
        LONG_MAX,
        Check::Long(1),
    ),
    def(
        "flush.ms",
        Some("log.flush.interval.ms"),
        DefaultOnly,
        LONG_MAX,
        Check::Long(0),
    ),
    def(
        "follower.replication.throttled.replicas",
        None,
        DefaultOnly,
        "",
        Check::Text,
    ),
    def(
        INDEX_INTERVAL_BYTES,
        Some("log.index.interval.bytes"),
        Honoured,
        "4096",
        Check::Int(1),
    ),
    def(
        "leader.replication.throttled.replicas",
        None,
        DefaultOnly,
        "",
        Check::Text,
    ),
    def(
        "local.retention.bytes",
        Some("log.local.retention.bytes"),
        DefaultOnly,
        "-2",
        Check::Long(-2),
    ),
    def(
        "local.retention.ms",
        Some("log.local.retention.ms"),
        DefaultOnly,
        "-2",
        Check::Long(-2),
    ),
    def(
        MAX_COMPACTION_LAG_MS,
        Some("log.cleaner.max.compaction.lag.ms"),
        Honoured,
        LONG_MAX,
        Check::Long(1),
    ),
    def(
        MAX_MESSAGE_BYTES,
        Some("message.max.bytes"),
        Honoured,
        "1048588",
        Check::Int(0),
    ),
    def(
        "message.downconversion.enable",
        Some("log.message.downconversion.enable"),
        DefaultOnly,
        "true",
        Check::Bool,
    ),
    def(
        "message.format.version",
        Some("log.message.format.version"),
        DefaultOnly,
        "3.0-IV1",
        Check::Text,
    ),
    def(
        "message.timestamp.after.max.ms",
        Some("log.message.timestamp.after.max.ms"),
        DefaultOnly,
        LONG_MAX,
        Check::Long(0),
    ),
    def(
        "message.timestamp.before.max.ms",
        Some("log.message.timestamp.before.max.ms"),
        DefaultOnly,
        LONG_MAX,
        Check::Long(0),
    ),
    def(
        "message.timestamp.difference.max.ms",
        Some("log.message.timestamp.difference.max.ms"),
        DefaultOnly,
        LONG_MAX,
        Check::Long(0),
    ),
    def(
        MESSAGE_TIMESTAMP_TYPE,
        Some("log.message.timestamp.type"),
        Honoured,
        "CreateTime",
        Check::OneOf(&["CreateTime", "LogAppendTime"]),
    ),
    def(
        MIN_CLEANABLE_DIRTY_RATIO,
        Some("log.cleaner.min.cleanable.ratio"),
        Honoured,
        "0.5",
        Check::Ratio,
    ),
    def(
        MIN_COMPACTION_LAG_MS,
        Some("log.cleaner.min.compaction.lag.ms"),
        Honoured,
        "0",
        Check::Long(0),
    ),
    def(
        MIN_INSYNC_REPLICAS,
        Some("min.insync.replicas"),
        Honoured,
        "1",
        Check::Int(1),
    ),
    def(
        "preallocate",
        Some("log.preallocate"),
        DefaultOnly,
        "false",
        Check::Bool,
    ),
    def(
        "remote.storage.enable",
        None,
        DefaultOnly,
        "false",
        Check::Bool,
    ),
    def(
        RETENTION_BYTES,
        Some("log.retention.bytes"),
        Honoured,
        "-1",
        Check::Long(-1),
    ),
    def(
        RETENTION_MS,
        Some("log.retention.ms"),
        Honoured,
        "604800000",
        Check::Long(-1),
    ),
    def(
        SEGMENT_BYTES,
        Some("log.segment.bytes"),
        Honoured,
        "1073741824",
        Check::Int(sluice_storage::config::SEGMENT_BYTES_MIN as i32),
    ),
    def(
        "segment.index.bytes",
        Some("log.index.size.max.bytes"),
        DefaultOnly,
        "10485760",
        Check::Int(4),
    ),
    def(
        "segment.jitter.ms",
        Some("log.roll.jitter.ms"),
        DefaultOnly,
        "0",
        Check::Long(0),
    ),
    def(
        SEGMENT_MS,
        Some("log.roll.ms"),
        Honoured,
        "604800000",
        Check::Long(1),
    ),
    def(
        UNCLEAN_LEADER_ELECTION_ENABLE,
        Some("unclean.leader.election.enable"),
        Honoured,
        "false",
        Check::Bool,
    ),
];

/// DescribeConfigs config_type of a list (cleanup.policy).
pub const CONFIG_TYPE_LIST: i8 = 7;

impl TopicConfigDef {
    /// DescribeConfigs v3+ config_type: 1 boolean, 2 string, 3 int, 5 long,
    /// 6 double, 7 list.
    pub fn config_type(&self) -> i8 {
        match self.check {
            Check::Bool => 1,
            Check::OneOf(_) | Check::Text => 2,
            Check::Int(_) => 3,
            Check::Long(_) => 5,
            Check::Ratio => 6,
            Check::Policy => CONFIG_TYPE_LIST,
        }
    }
}

pub fn find(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks one `key = value`; the message names the config and says what is wrong.
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    let Some(def) = find(key) else {
        return Err(format!("unknown topic config `{key}`"));
    };
    let long = |min: i64| -> Result<(), String> {
        let n: i64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{key}: `{value}` is not a number"))?;
        if n < min {
            return Err(format!("{key}: {n} is below the minimum {min}"));
        }
        Ok(())
    };
    match def.check {
        Check::Long(min) => long(min)?,
        Check::Int(min) => {
            long(min as i64)?;
            if value.trim().parse::<i32>().is_err() {
                return Err(format!(
                    "{key}: `{value}` is above the maximum {}",
                    i32::MAX
                ));
            }
        }
        Check::Ratio => match value.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => {}
            _ => return Err(format!("{key}: `{value}` is not a number in 0..1")),
        },
        Check::Bool => {
            if !value.trim().eq_ignore_ascii_case("true")
                && !value.trim().eq_ignore_ascii_case("false")
            {
                return Err(format!("{key}: `{value}` is not true or false"));
            }
        }
        Check::OneOf(words) => {
            if !words.contains(&value) {
                return Err(format!(
                    "{key}: `{value}` is not one of {}",
                    words.join(", ")
                ));
            }
        }
        Check::Policy => {
            let parts: Vec<&str> = value.split(',').map(str::trim).collect();
            if parts.iter().any(|p| !matches!(*p, "delete" | "compact")) || value.trim().is_empty()
            {
                return Err(format!(
                    "{key}: `{value}` is not a list of `delete` and `compact`"
                ));
            }
        }
        Check::Text => {}
    }
    if key == SEGMENT_BYTES {
        let n: u64 = value.trim().parse().unwrap_or(0);
        if n > sluice_storage::config::SEGMENT_BYTES_MAX {
            return Err(format!(
                "{key}: {n} is above the maximum {}",
                sluice_storage::config::SEGMENT_BYTES_MAX
            ));
        }
    }
    if def.support == Support::DefaultOnly && value.trim() != def.kafka_default {
        return Err(format!(
            "{key}: Sluice does not implement this config; only its default `{}` is accepted",
            def.kafka_default
        ));
    }
    Ok(())
}

/// The broker-level default of a config: Sluice's setting where it has one
/// (and whether it differs from Kafka's default, i.e. was configured), else
/// Kafka's default.
fn broker_default(settings: &BrokerSettings, def: &TopicConfigDef) -> (String, bool) {
    let log = &settings.log;
    let ours = match def.name {
        RETENTION_MS => Some(log.retention_ms.map_or(-1, |v| v as i64).to_string()),
        RETENTION_BYTES => Some(log.retention_bytes.map_or(-1, |v| v as i64).to_string()),
        SEGMENT_BYTES => Some(log.segment_bytes.to_string()),
        SEGMENT_MS => Some(
            log.segment_ms
                .map_or(LONG_MAX.to_string(), |v| v.to_string()),
        ),
        INDEX_INTERVAL_BYTES => Some(log.index_interval_bytes.to_string()),
        MAX_MESSAGE_BYTES => Some(settings.max_message_bytes.to_string()),
        MIN_INSYNC_REPLICAS => Some(settings.min_insync_replicas.to_string()),
        _ => None,
    };
    match ours {
        Some(value) => {
            let configured = value != def.kafka_default;
            (value, configured)
        }
        None => (def.kafka_default.to_string(), false),
    }
}

/// A topic's settings after applying its overrides to the broker defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EffectiveTopicConfig {
    pub log: LogConfig,
    pub max_message_bytes: i64,
    pub log_append_time: bool,
    /// `cleanup.policy` holds `compact`.
    pub compact: bool,
    pub compaction: CompactionConfig,
    pub min_insync_replicas: i32,
}

fn value<'a>(
    settings: &BrokerSettings,
    configs: &'a BTreeMap<String, String>,
    key: &str,
) -> std::borrow::Cow<'a, str> {
    match configs.get(key) {
        Some(v) => std::borrow::Cow::Borrowed(v.trim()),
        None => {
            std::borrow::Cow::Owned(broker_default(settings, find(key).expect("a known config")).0)
        }
    }
}

fn number<T: std::str::FromStr>(
    settings: &BrokerSettings,
    configs: &BTreeMap<String, String>,
    key: &str,
    fallback: T,
) -> T {
    value(settings, configs, key).parse().unwrap_or(fallback)
}

/// What the produce path checks per request: cheaper than [`effective`].
#[derive(Debug, Clone, Copy)]
pub struct ProduceRules {
    pub max_message_bytes: i64,
    /// Compacted topics refuse records without a key (as Kafka does).
    pub keys_required: bool,
}

pub fn produce_rules(
    settings: &BrokerSettings,
    configs: &BTreeMap<String, String>,
) -> ProduceRules {
    ProduceRules {
        max_message_bytes: configs
            .get(MAX_MESSAGE_BYTES)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(settings.max_message_bytes),
        keys_required: configs
            .get(CLEANUP_POLICY)
            .is_some_and(|p| p.split(',').any(|p| p.trim() == "compact")),
    }
}

pub fn effective(
    settings: &BrokerSettings,
    configs: &BTreeMap<String, String>,
) -> EffectiveTopicConfig {
    let mut log = settings.log;
    let policy = value(settings, configs, CLEANUP_POLICY);
    let compact = policy.split(',').any(|p| p.trim() == "compact");
    let delete = policy.split(',').any(|p| p.trim() == "delete");
    let retention_ms: i64 = number(settings, configs, RETENTION_MS, -1);
    let retention_bytes: i64 = number(settings, configs, RETENTION_BYTES, -1);
    // A compact-only topic keeps its (compacted) data forever, as in Kafka.
    log.retention_ms = (delete && retention_ms >= 0).then_some(retention_ms as u64);
    log.retention_bytes = (delete && retention_bytes >= 0).then_some(retention_bytes as u64);
    log.segment_bytes = number(settings, configs, SEGMENT_BYTES, log.segment_bytes);
    let segment_ms: i64 = number(settings, configs, SEGMENT_MS, i64::MAX);
    log.segment_ms = (segment_ms < i64::MAX).then_some(segment_ms.max(1) as u64);
    log.index_interval_bytes = number(
        settings,
        configs,
        INDEX_INTERVAL_BYTES,
        log.index_interval_bytes,
    )
    .max(1);
    EffectiveTopicConfig {
        log,
        max_message_bytes: produce_rules(settings, configs).max_message_bytes,
        log_append_time: value(settings, configs, MESSAGE_TIMESTAMP_TYPE) == "LogAppendTime",
        compact,
        compaction: CompactionConfig {
            delete_retention_ms: number(settings, configs, DELETE_RETENTION_MS, 86_400_000),
            min_cleanable_dirty_ratio: number(settings, configs, MIN_CLEANABLE_DIRTY_RATIO, 0.5),
            min_compaction_lag_ms: number(settings, configs, MIN_COMPACTION_LAG_MS, 0),
            max_compaction_lag_ms: number(settings, configs, MAX_COMPACTION_LAG_MS, i64::MAX),
            map_bytes: settings.log_cleaner_dedupe_buffer_bytes,
            io_bytes_per_second: settings.log_cleaner_io_max_bytes_per_second,
        },
        min_insync_replicas: number(settings, configs, MIN_INSYNC_REPLICAS, 1),
    }
}

/// DescribeConfigs config_source values.
pub mod source {
    pub const TOPIC_CONFIG: i8 = 1;
    pub const STATIC_BROKER_CONFIG: i8 = 4;
    pub const DEFAULT_CONFIG: i8 = 5;
}

/// One described config: value, source, and synonyms (name, value, source)
/// from the most to the least specific, as Kafka lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    pub name: String,
    /// DescribeConfigs v3+ config_type (0: unknown).
    pub config_type: i8,
    pub value: String,
    pub source: i8,
    pub read_only: bool,
    pub synonyms: Vec<(String, String, i8)>,
}

impl Described {
    pub fn is_default(&self) -> bool {
        self.source == source::DEFAULT_CONFIG
    }
}

/// Every topic config with its effective value, its source and its synonyms.
pub fn describe(settings: &BrokerSettings, configs: &BTreeMap<String, String>) -> Vec<Described> {
    TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let (default, configured) = broker_default(settings, def);
            let broker_source = if configured {
                source::STATIC_BROKER_CONFIG
            } else {
                source::DEFAULT_CONFIG
            };
            let mut synonyms = Vec::new();
            let (value, source) = match configs.get(def.name) {
                Some(v) => {
                    synonyms.push((def.name.to_string(), v.clone(), source::TOPIC_CONFIG));
                    (v.clone(), source::TOPIC_CONFIG)
                }
                None => (default.clone(), broker_source),
            };
            if let Some(synonym) = def.synonym {
                synonyms.push((synonym.to_string(), default, broker_source));
            }
            Described {
                name: def.name.to_string(),
                config_type: def.config_type(),
                value,
                source,
                read_only: false,
                synonyms,
            }
        })
        .collect()
}

/// The broker's own configs (DescribeConfigs on a broker resource): its
/// settings under Kafka's names, static (read-only) as Sluice does not change
/// broker configs at runtime.
pub fn describe_broker(settings: &BrokerSettings) -> Vec<Described> {
    let mut out: Vec<Described> = TOPIC_CONFIGS
        .iter()
        .filter_map(|def| {
            let name = def.synonym?;
            let (value, configured) = broker_default(settings, def);
            Some((name, value, configured))
        })
        .map(|(name, value, configured)| Described {
            name: name.to_string(),
            config_type: 0,
            value: value.clone(),
            source: if configured {
                source::STATIC_BROKER_CONFIG
            } else {
                source::DEFAULT_CONFIG
            },
            read_only: true,
            synonyms: Vec::new(),
        })
        .collect();
    let listener = format!(
        "PLAINTEXT://{}:{}",
        settings.advertised_host, settings.advertised_port
    );
    let statics: [(&str, String); 12] = [
        ("broker.id", settings.node_id.to_string()),
        ("node.id", settings.node_id.to_string()),
        ("advertised.listeners", listener.clone()),
        ("listeners", listener),
        ("log.dirs", settings.data_dir.display().to_string()),
        ("num.partitions", settings.default_partitions.to_string()),
        (
            "auto.create.topics.enable",
            settings.auto_create_topics.to_string(),
        ),
        ("default.replication.factor", "1".into()),
        (
            "offsets.retention.minutes",
            (settings.offsets_retention_ms / 60_000).to_string(),
        ),
        (
            "connections.max.idle.ms",
            settings.connections_max_idle_ms.to_string(),
        ),
        (
            "socket.request.max.bytes",
            settings.max_frame_bytes.to_string(),
        ),
        (
            "log.cleaner.dedupe.buffer.size",
            settings.log_cleaner_dedupe_buffer_bytes.to_string(),
        ),
    ];
    for (name, value) in statics {
        out.push(Described {
            name: name.to_string(),
            config_type: 0,
            value,
            source: source::STATIC_BROKER_CONFIG,
            read_only: true,
            synonyms: Vec::new(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honoured_configs_take_any_valid_value_others_only_their_default() {
        assert!(validate(CLEANUP_POLICY, "compact,delete").is_ok());
        assert!(validate(CLEANUP_POLICY, "compact, delete").is_ok());
        assert!(validate(CLEANUP_POLICY, "shred")
            .unwrap_err()
            .contains(CLEANUP_POLICY));
        assert!(validate(MIN_CLEANABLE_DIRTY_RATIO, "0.1").is_ok());
        assert!(validate(MIN_CLEANABLE_DIRTY_RATIO, "1.5").is_err());
        assert!(validate(RETENTION_MS, "-1").is_ok());
        assert!(validate(RETENTION_MS, "-2").is_err());
        assert!(validate("preallocate", "false").is_ok());
        assert!(validate("preallocate", "true")
            .unwrap_err()
            .contains("does not implement"));
        assert!(validate("remote.storage.enable", "true").is_err());
        assert!(validate("no.such.config", "1")
            .unwrap_err()
            .contains("no.such.config"));
        assert!(validate(MAX_MESSAGE_BYTES, "99999999999").is_err());
        assert_eq!(TOPIC_CONFIGS.len(), 31);
    }
}
