//! CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
//! AlterConfigs, IncrementalAlterConfigs, DeleteRecords. Topic changes go to
//! shard 0, which proposes them to the cluster's metadata log
//! (`topics.rs`). Partitions have one replica each until replication is
//! built, so replication factor 1 (or -1, the default) is the only valid one.

use super::{respond, str_bytes, HandlerResult};
use crate::mesh::{AdminOp, PartitionOp, PartitionReply};
use crate::metadata::validate_topic_name;
use crate::shard::Shard;
use crate::topic_config;
use kafka_protocol::messages::alter_configs_response;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::api::error_code;
use sluice_protocol::frame::{decode_body, RequestFrame};
use sluice_protocol::kafka_protocol;
use std::collections::BTreeMap;
use std::rc::Rc;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

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
            replication_factor: topic.replication_factor as i32,
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
            .map(|d| {
                CreatableTopicConfigs::default()
                    .with_name(str_bytes(&d.name))
                    .with_value(Some(str_bytes(&d.value)))
                    .with_read_only(d.read_only)
                    .with_config_source(d.source)
            })
            .collect();
        let replication_factor = shard
            .snapshot()
            .topics
            .get(&name)
            .and_then(|t| t.replicas.first().map(|r| r.len() as i16))
            .unwrap_or(if topic.replication_factor > 0 {
                topic.replication_factor
            } else {
                shard.settings.default_replication_factor as i16
            });
        let created = result.with_error_code(error_code::NONE);
        results.push(if version >= 7 {
            created
                .with_topic_id(topic_id)
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)
                .with_configs(Some(described))
        } else if version >= 5 {
            created
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)
                .with_configs(Some(described))
        } else {
            created
        });
    }
    for result in &results {
        shard.error_answer(
            frame.api_key,
            format_args!("topic {}", result.name.0),
            result.error_code,
        );
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
            shard.error_answer(
                frame.api_key,
                format_args!("topic id {id}"),
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
            );
            responses.push(result.with_error_code(error_code::UNKNOWN_TOPIC_OR_PARTITION));
            continue;
        };
        let reply = shard
            .admin(AdminOp::DeleteTopic { name: name.clone() })
            .await;
        shard.error_answer(
            frame.api_key,
            format_args!("topic {name}"),
            reply.error_code,
        );
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
        shard.error_answer(
            frame.api_key,
            format_args!("topic {}", topic.name.0),
            reply.error_code,
        );
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
    let version = frame.api_version;
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
        let entries = match resource.resource_type {
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
            RESOURCE_BROKER if name.is_empty() || name == shard.settings.node_id.to_string() => {
                topic_config::describe_broker(&shard.settings)
            }
            RESOURCE_BROKER => {
                results.push(
                    result
                        .with_error_code(error_code::INVALID_REQUEST)
                        .with_error_message(Some(str_bytes(&format!(
                            "broker `{name}` is not this node ({})",
                            shard.settings.node_id
                        )))),
                );
                continue;
            }
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
            .filter(|d| keys.as_ref().is_none_or(|k| k.contains(&d.name)))
            .map(|d| {
                let synonyms = if request.include_synonyms {
                    d.synonyms
                        .iter()
                        .map(|(name, value, source)| {
                            DescribeConfigsSynonym::default()
                                .with_name(str_bytes(name))
                                .with_value(Some(str_bytes(value)))
                                .with_source(*source)
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                DescribeConfigsResourceResult::default()
                    .with_name(str_bytes(&d.name))
                    .with_value(Some(str_bytes(&d.value)))
                    .with_read_only(d.read_only)
                    .with_config_source(d.source)
                    .with_is_sensitive(false)
                    .with_synonyms(synonyms)
                    .with_config_type(if version >= 3 { d.config_type } else { 0 })
            })
            .collect();
        results.push(
            result
                .with_error_code(error_code::NONE)
                .with_configs(configs),
        );
    }
    for result in &results {
        shard.error_answer(
            frame.api_key,
            format_args!(
                "{} {}",
                resource_kind(result.resource_type),
                result.resource_name
            ),
            result.error_code,
        );
    }
    respond(
        &frame,
        &DescribeConfigsResponse::default().with_results(results),
    )
}

/// What a config resource type is, for log lines.
fn resource_kind(resource_type: i8) -> &'static str {
    match resource_type {
        RESOURCE_TOPIC => "topic",
        RESOURCE_BROKER => "broker",
        _ => "resource",
    }
}

/// One resource of an (Incremental)AlterConfigs request: the topic's new
/// overrides, computed from its current ones (or from none, with
/// `replace`) by `ops` (name, operation, value), validated, then applied by
/// the metadata writer (persisted, and given to open logs at once).
async fn alter_resource(
    shard: &Rc<Shard>,
    api_key: i16,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    replace: bool,
    ops: Vec<(String, i8, Option<String>)>,
) -> (i16, Option<StrBytes>) {
    let (code, message) = match resource_type {
        RESOURCE_TOPIC => match shard.snapshot().topics.get(name).cloned() {
            Some(topic) => {
                let mut configs = if replace {
                    BTreeMap::new()
                } else {
                    topic.configs.clone()
                };
                match ops.into_iter().try_for_each(|(key, op, value)| {
                    apply_config_op(shard, &mut configs, key, op, value)
                }) {
                    Err(e) => (error_code::INVALID_CONFIG, Some(e)),
                    Ok(()) => {
                        let invalid: Vec<String> = configs
                            .iter()
                            .filter_map(|(k, v)| topic_config::validate(k, v).err())
                            .collect();
                        if !invalid.is_empty() {
                            (error_code::INVALID_CONFIG, Some(invalid.join("; ")))
                        } else if validate_only {
                            (error_code::NONE, None)
                        } else {
                            let op = AdminOp::AlterTopicConfigs {
                                name: name.to_string(),
                                configs,
                            };
                            let reply = shard.admin(op).await;
                            (reply.error_code, reply.error_message)
                        }
                    }
                }
            }
            None => (
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(format!("topic `{name}` does not exist")),
            ),
        },
        RESOURCE_BROKER => (
            error_code::INVALID_CONFIG,
            Some(
                "broker configs are static in Sluice: set them in its config file and restart"
                    .into(),
            ),
        ),
        other => (
            error_code::INVALID_REQUEST,
            Some(format!("resource type {other} is not supported")),
        ),
    };
    shard.error_answer(
        api_key,
        format_args!("{} {name}", resource_kind(resource_type)),
        code,
    );
    (code, message.map(|m| str_bytes(&m)))
}

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// One IncrementalAlterConfigs operation on a topic's overrides.
fn apply_config_op(
    shard: &Shard,
    configs: &mut BTreeMap<String, String>,
    key: String,
    op: i8,
    value: Option<String>,
) -> Result<(), String> {
    let def = topic_config::find(&key).ok_or_else(|| format!("unknown topic config `{key}`"))?;
    match op {
        OP_SET => {
            configs.insert(key, value.unwrap_or_default());
        }
        OP_DELETE => {
            configs.remove(&key);
        }
        OP_APPEND | OP_SUBTRACT => {
            if def.config_type() != topic_config::CONFIG_TYPE_LIST {
                return Err(format!(
                    "{key} is not a list: APPEND and SUBTRACT do not apply"
                ));
            }
            let current = configs.get(&key).cloned().unwrap_or_else(|| {
                topic_config::describe(&shard.settings, &BTreeMap::new())
                    .into_iter()
                    .find(|d| d.name == key)
                    .map(|d| d.value)
                    .unwrap_or_default()
            });
            let mut items: Vec<String> = current
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            for item in value.unwrap_or_default().split(',').map(str::trim) {
                if op == OP_APPEND && !items.iter().any(|i| i == item) {
                    items.push(item.to_string());
                } else if op == OP_SUBTRACT {
                    items.retain(|i| i != item);
                }
            }
            configs.insert(key, items.join(","));
        }
        other => return Err(format!("{key}: unknown operation {other}")),
    }
    Ok(())
}

pub async fn incremental_alter_configs(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: IncrementalAlterConfigsRequest =
        decode_body(frame.body.clone(), frame.api_version)?;
    let mut responses = Vec::new();
    for resource in &request.resources {
        let ops = resource
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.config_operation,
                    c.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let name = resource.resource_name.to_string();
        let (code, message) = alter_resource(
            shard,
            frame.api_key,
            resource.resource_type,
            &name,
            request.validate_only,
            false,
            ops,
        )
        .await;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    respond(
        &frame,
        &IncrementalAlterConfigsResponse::default().with_responses(responses),
    )
}

/// AlterConfigs (the older API): the resource's overrides become exactly the
/// configs given; the ones left out go back to their defaults.
pub async fn alter_configs(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: AlterConfigsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut responses = Vec::new();
    for resource in &request.resources {
        let ops = resource
            .configs
            .iter()
            .filter_map(|c| {
                Some((
                    c.name.to_string(),
                    OP_SET,
                    Some(c.value.as_ref()?.to_string()),
                ))
            })
            .collect();
        let name = resource.resource_name.to_string();
        let (code, message) = alter_resource(
            shard,
            frame.api_key,
            resource.resource_type,
            &name,
            request.validate_only,
            true,
            ops,
        )
        .await;
        responses.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    respond(
        &frame,
        &AlterConfigsResponse::default().with_responses(responses),
    )
}

/// DeleteRecords: each partition's log start offset moves up to the given
/// offset (-1: the high watermark), on the shard that owns it.
pub async fn delete_records(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: DeleteRecordsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut topics = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::new();
        for partition in &topic.partitions {
            let (code, low_watermark) = if partition.offset < -1 {
                (error_code::OFFSET_OUT_OF_RANGE, -1)
            } else {
                match shard
                    .call(
                        &name,
                        partition.partition_index,
                        PartitionOp::DeleteRecords {
                            before: partition.offset,
                        },
                    )
                    .await
                {
                    PartitionReply::DeleteRecords(answer) => answer,
                    _ => (error_code::KAFKA_STORAGE_ERROR, -1),
                }
            };
            shard.error_answer(
                frame.api_key,
                format_args!("{name}-{}", partition.partition_index),
                code,
            );
            partitions.push(
                DeleteRecordsPartitionResult::default()
                    .with_partition_index(partition.partition_index)
                    .with_low_watermark(low_watermark)
                    .with_error_code(code),
            );
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    respond(
        &frame,
        &DeleteRecordsResponse::default().with_topics(topics),
    )
}
