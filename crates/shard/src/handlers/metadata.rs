//! Metadata: this node is the only broker, the controller, and the leader of
//! every partition. Requested topics that do not exist are created when the
//! client allows it (v4+; always before) and `auto_create_topics` is on.

use super::{respond, str_bytes, HandlerResult};
use crate::mesh::AdminOp;
use crate::metadata::{validate_topic_name, TopicMeta};
use crate::shard::Shard;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use sluice_protocol::api::error_code;
use sluice_protocol::frame::{decode_body, RequestFrame};
use sluice_protocol::kafka_protocol;
use std::collections::BTreeMap;
use std::rc::Rc;

pub async fn handle(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: MetadataRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let settings = &shard.settings;
    let node = BrokerId(settings.node_id);
    let may_create =
        settings.auto_create_topics && (frame.api_version < 4 || request.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match request.topics {
        None => {
            for topic in shard.snapshot().topics.values() {
                topics.push(topic_metadata(topic, node, frame.api_version));
            }
        }
        Some(requested) => {
            for wanted in requested {
                let Some(name) = wanted.name.map(|n| n.0.to_string()) else {
                    topics.push(error_topic(None, error_code::UNKNOWN_TOPIC_OR_PARTITION));
                    continue;
                };
                if validate_topic_name(&name).is_err() {
                    topics.push(error_topic(
                        Some(&name),
                        error_code::INVALID_TOPIC_EXCEPTION,
                    ));
                    continue;
                }
                let mut existing = shard.snapshot().topics.get(&name).cloned();
                if existing.is_none() && may_create {
                    let op = AdminOp::CreateTopic {
                        name: name.clone(),
                        partitions: settings.default_partitions,
                        configs: BTreeMap::new(),
                        validate_only: false,
                    };
                    let reply = shard.admin(op).await;
                    if reply.error_code != error_code::NONE
                        && reply.error_code != error_code::TOPIC_ALREADY_EXISTS
                    {
                        topics.push(error_topic(Some(&name), reply.error_code));
                        continue;
                    }
                    existing = shard.snapshot().topics.get(&name).cloned();
                }
                match existing {
                    Some(topic) => topics.push(topic_metadata(&topic, node, frame.api_version)),
                    None => topics.push(error_topic(
                        Some(&name),
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    )),
                }
            }
        }
    }
    let broker = MetadataResponseBroker::default()
        .with_node_id(node)
        .with_host(str_bytes(&settings.advertised_host))
        .with_port(settings.advertised_port);
    let body = MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id((frame.api_version >= 2).then(|| str_bytes(&settings.cluster_id)))
        .with_controller_id(node)
        .with_topics(topics);
    respond(&frame, &body)
}

fn topic_metadata(topic: &TopicMeta, node: BrokerId, version: i16) -> MetadataResponseTopic {
    let partitions = (0..topic.partition_count())
        .map(|p| {
            MetadataResponsePartition::default()
                .with_error_code(error_code::NONE)
                .with_partition_index(p)
                .with_leader_id(node)
                .with_leader_epoch(if version >= 7 { 0 } else { -1 })
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_error_code(error_code::NONE)
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_topic_id(if version >= 10 {
            topic.uuid()
        } else {
            Default::default()
        })
        .with_partitions(partitions)
}

fn error_topic(name: Option<&str>, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(name.map(|n| TopicName(str_bytes(n))))
}
