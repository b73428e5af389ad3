//! Topic configs Sluice understands, their validation, and what they change.

use crate::settings::BrokerSettings;
use sluice_storage::LogConfig;
use std::collections::BTreeMap;

pub const RETENTION_MS: &str = "retention.ms";
pub const RETENTION_BYTES: &str = "retention.bytes";
pub const SEGMENT_BYTES: &str = "segment.bytes";
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
pub const MESSAGE_TIMESTAMP_TYPE: &str = "message.timestamp.type";

pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    RETENTION_MS,
    RETENTION_BYTES,
    SEGMENT_BYTES,
    MAX_MESSAGE_BYTES,
    MESSAGE_TIMESTAMP_TYPE,
];

/// Checks one `key = value`; the message says what is wrong.
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    let number = |min: i64| -> Result<(), String> {
        let n: i64 = value
            .parse()
            .map_err(|_| format!("{key}: `{value}` is not a number"))?;
        if n < min {
            return Err(format!("{key}: {n} is below the minimum {min}"));
        }
        Ok(())
    };
    match key {
        RETENTION_MS | RETENTION_BYTES => number(-1),
        SEGMENT_BYTES => {
            number(sluice_storage::config::SEGMENT_BYTES_MIN as i64)?;
            let n: i64 = value.parse().unwrap();
            if n as u64 > sluice_storage::config::SEGMENT_BYTES_MAX {
                return Err(format!(
                    "{key}: {n} is above the maximum {}",
                    sluice_storage::config::SEGMENT_BYTES_MAX
                ));
            }
            Ok(())
        }
        MAX_MESSAGE_BYTES => number(0),
        MESSAGE_TIMESTAMP_TYPE => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(format!(
                "{key}: `{value}` is not CreateTime or LogAppendTime"
            )),
        },
        _ => Err(format!(
            "unknown topic config `{key}` (supported: {})",
            TOPIC_CONFIG_KEYS.join(", ")
        )),
    }
}

/// A topic's settings after applying its overrides to the broker defaults.
#[derive(Debug, Clone)]
pub struct EffectiveTopicConfig {
    pub log: LogConfig,
    pub max_message_bytes: i64,
    pub log_append_time: bool,
}

/// A topic's `max.message.bytes` alone (the produce path asks for it per
/// request; `effective` builds the whole config).
pub fn max_message_bytes(settings: &BrokerSettings, configs: &BTreeMap<String, String>) -> i64 {
    configs
        .get(MAX_MESSAGE_BYTES)
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(settings.max_message_bytes)
}

pub fn effective(
    settings: &BrokerSettings,
    configs: &BTreeMap<String, String>,
) -> EffectiveTopicConfig {
    let mut log = settings.log.clone();
    let get = |key: &str| configs.get(key).and_then(|v| v.parse::<i64>().ok());
    if let Some(ms) = get(RETENTION_MS) {
        log.retention_ms = (ms >= 0).then_some(ms as u64);
    }
    if let Some(bytes) = get(RETENTION_BYTES) {
        log.retention_bytes = (bytes >= 0).then_some(bytes as u64);
    }
    if let Some(bytes) = get(SEGMENT_BYTES) {
        log.segment_bytes = bytes as u64;
    }
    EffectiveTopicConfig {
        log,
        max_message_bytes: max_message_bytes(settings, configs),
        log_append_time: configs
            .get(MESSAGE_TIMESTAMP_TYPE)
            .is_some_and(|v| v == "LogAppendTime"),
    }
}

/// Every supported config with its effective value and whether it is a default.
pub fn describe(
    settings: &BrokerSettings,
    configs: &BTreeMap<String, String>,
) -> Vec<(String, String, bool)> {
    let effective = effective(settings, configs);
    let value = |key: &str| -> String {
        match key {
            RETENTION_MS => effective
                .log
                .retention_ms
                .map_or(-1, |v| v as i64)
                .to_string(),
            RETENTION_BYTES => effective
                .log
                .retention_bytes
                .map_or(-1, |v| v as i64)
                .to_string(),
            SEGMENT_BYTES => effective.log.segment_bytes.to_string(),
            MAX_MESSAGE_BYTES => effective.max_message_bytes.to_string(),
            MESSAGE_TIMESTAMP_TYPE => if effective.log_append_time {
                "LogAppendTime"
            } else {
                "CreateTime"
            }
            .to_string(),
            _ => unreachable!(),
        }
    };
    TOPIC_CONFIG_KEYS
        .iter()
        .map(|key| (key.to_string(), value(key), !configs.contains_key(*key)))
        .collect()
}
