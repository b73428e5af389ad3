//! CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs. Changes go
//! to the metadata writer (shard 0); single node, so replication factor 1
//! (or -1, the default) is the only valid one.

use super::{respond, str_bytes, HandlerResult};
use crate::mesh::AdminOp;
use crate::metadata::validate_topic_name;
use crate::shard::Shard;
use crate::topic_config;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    TopicName,
};
use sluice_protocol::api::error_code;
use sluice_protocol::frame::{decode_body, RequestFrame};
use sluice_protocol::kafka_protocol;
use std::collections::BTreeMap;
use std::rc::Rc;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config_source values.
const SOURCE_TOPIC_CONFIG: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

pub async fn create_topics(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: CreateTopicsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut results = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        let version = frame.api_version;
        let fail = |code: i16, message: String| {
            result
                .clone()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&message)))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
        };
        if let Err(e) = validate_topic_name(&name) {
            results.push(fail(error_code::INVALID_TOPIC_EXCEPTION, e));
            continue;
        }
        // Kafka's order: an existing topic is TOPIC_ALREADY_EXISTS whatever
        // its configs say (Kafka Connect creates its topics at every start
        // and expects exactly this answer).
        if shard.snapshot().topics.contains_key(&name) {
            results.push(fail(
                error_code::TOPIC_ALREADY_EXISTS,
                format!("Topic '{name}' already exists."),
            ));
            continue;
        }
        if topic.replication_factor != 1 && topic.replication_factor != -1 {
            results.push(fail(
                error_code::INVALID_REPLICATION_FACTOR,
                format!(
                    "replication factor {} is not possible on a single node (use 1 or -1)",
                    topic.replication_factor
                ),
            ));
            continue;
        }
        let mut configs = BTreeMap::new();
        let mut config_error = None;
        for config in &topic.configs {
            let key = config.name.to_string();
            let Some(value) = config.value.as_ref().map(|v| v.to_string()) else {
                continue;
            };
            match topic_config::validate(&key, &value) {
                Ok(()) => {
                    configs.insert(key, value);
                }
                Err(e) => config_error = Some(e),
            }
        }
        if let Some(e) = config_error {
            results.push(fail(error_code::INVALID_CONFIG, e));
            continue;
        }
        let partitions = if topic.num_partitions == -1 {
            shard.settings.default_partitions
        } else {
            topic.num_partitions
        };
        let op = AdminOp::CreateTopic {
            name: name.clone(),
            partitions,
            configs: configs.clone(),
            validate_only: request.validate_only,
        };
        let reply = shard.admin(op).await;
        if reply.error_code != error_code::NONE {
            results.push(fail(
                reply.error_code,
                reply.error_message.unwrap_or_default(),
            ));
            continue;
        }
        let topic_id = shard
            .snapshot()
            .topics
            .get(&name)
            .map(|t| t.uuid())
            .unwrap_or_default();
        let described = topic_config::describe(&shard.settings, &configs)
            .into_iter()
            .map(|(key, value, is_default)| {
                CreatableTopicConfigs::default()
                    .with_name(str_bytes(&key))
                    .with_value(Some(str_bytes(&value)))
                    .with_config_source(if is_default {
                        SOURCE_DEFAULT
                    } else {
                        SOURCE_TOPIC_CONFIG
                    })
            })
            .collect();
        let created = result.with_error_code(error_code::NONE);
        results.push(if version >= 7 {
            created
                .with_topic_id(topic_id)
                .with_num_partitions(partitions)
                .with_replication_factor(1)
                .with_configs(Some(described))
        } else if version >= 5 {
            created
                .with_num_partitions(partitions)
                .with_replication_factor(1)
                .with_configs(Some(described))
        } else {
            created
        });
    }
    respond(
        &frame,
        &CreateTopicsResponse::default().with_topics(results),
    )
}

pub async fn delete_topics(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: DeleteTopicsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    for state in &request.topics {
        wanted.push((state.name.as_ref().map(|n| n.0.to_string()), state.topic_id));
    }
    let mut responses = Vec::new();
    for (name, id) in wanted {
        let name = name.or_else(|| {
            shard
                .snapshot()
                .topics
                .values()
                .find(|t| t.uuid() == id && !id.is_nil())
                .map(|t| t.name.clone())
        });
        let result = DeletableTopicResult::default().with_topic_id(if frame.api_version >= 6 {
            id
        } else {
            Default::default()
        });
        let Some(name) = name else {
            responses.push(result.with_error_code(error_code::UNKNOWN_TOPIC_OR_PARTITION));
            continue;
        };
        let reply = shard
            .admin(AdminOp::DeleteTopic { name: name.clone() })
            .await;
        let version = frame.api_version;
        responses.push(
            result
                .with_name(Some(TopicName(str_bytes(&name))))
                .with_error_code(reply.error_code)
                .with_error_message(if version >= 5 {
                    reply.error_message.map(|m| str_bytes(&m))
                } else {
                    None
                }),
        );
    }
    respond(
        &frame,
        &DeleteTopicsResponse::default().with_responses(responses),
    )
}

pub async fn create_partitions(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: CreatePartitionsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut results = Vec::new();
    for topic in &request.topics {
        let op = AdminOp::CreatePartitions {
            name: topic.name.0.to_string(),
            count: topic.count,
            validate_only: request.validate_only,
        };
        let reply = shard.admin(op).await;
        results.push(
            CreatePartitionsTopicResult::default()
                .with_name(topic.name.clone())
                .with_error_code(reply.error_code)
                .with_error_message(reply.error_message.map(|m| str_bytes(&m))),
        );
    }
    respond(
        &frame,
        &CreatePartitionsResponse::default().with_results(results),
    )
}

pub async fn describe_configs(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: DescribeConfigsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut results = Vec::new();
    for resource in &request.resources {
        let name = resource.resource_name.to_string();
        let result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let keys: Option<Vec<String>> = resource
            .configuration_keys
            .as_ref()
            .map(|k| k.iter().map(|s| s.to_string()).collect());
        let entries: Vec<(String, String, bool)> = match resource.resource_type {
            RESOURCE_TOPIC => match shard.snapshot().topics.get(&name) {
                Some(topic) => topic_config::describe(&shard.settings, &topic.configs),
                None => {
                    results.push(
                        result
                            .with_error_code(error_code::UNKNOWN_TOPIC_OR_PARTITION)
                            .with_error_message(Some(str_bytes(&format!(
                                "topic `{name}` does not exist"
                            )))),
                    );
                    continue;
                }
            },
            RESOURCE_BROKER => topic_config::describe(&shard.settings, &BTreeMap::new())
                .into_iter()
                .map(|(key, value, _)| (broker_config_name(&key).to_string(), value, true))
                .collect(),
            other => {
                results.push(
                    result
                        .with_error_code(error_code::INVALID_REQUEST)
                        .with_error_message(Some(str_bytes(&format!(
                            "resource type {other} is not supported"
                        )))),
                );
                continue;
            }
        };
        let configs = entries
            .into_iter()
            .filter(|(key, _, _)| keys.as_ref().is_none_or(|k| k.contains(key)))
            .map(|(key, value, is_default)| {
                DescribeConfigsResourceResult::default()
                    .with_name(str_bytes(&key))
                    .with_value(Some(str_bytes(&value)))
                    .with_read_only(false)
                    .with_config_source(if is_default {
                        SOURCE_DEFAULT
                    } else {
                        SOURCE_TOPIC_CONFIG
                    })
                    .with_is_sensitive(false)
            })
            .collect();
        results.push(
            result
                .with_error_code(error_code::NONE)
                .with_configs(configs),
        );
    }
    respond(
        &frame,
        &DescribeConfigsResponse::default().with_results(results),
    )
}

/// The broker-level name of a topic config's default (as Kafka names them).
fn broker_config_name(topic_key: &str) -> &'static str {
    match topic_key {
        topic_config::RETENTION_MS => "log.retention.ms",
        topic_config::RETENTION_BYTES => "log.retention.bytes",
        topic_config::SEGMENT_BYTES => "log.segment.bytes",
        topic_config::MAX_MESSAGE_BYTES => "message.max.bytes",
        topic_config::MESSAGE_TIMESTAMP_TYPE => "log.message.timestamp.type",
        _ => "unknown",
    }
}
