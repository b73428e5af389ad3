//! Metadata and DescribeCluster: the cluster's nodes and each partition's
//! leader, from the cluster metadata this node has applied. Requested topics
//! that do not exist are created when the client allows it (v4+; always
//! before) and `auto_create_topics` is on.

use super::{respond, str_bytes, HandlerResult};
use crate::mesh::AdminOp;
use crate::metadata::{validate_topic_name, TopicMeta};
use crate::shard::Shard;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
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
                        replication_factor: -1,
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
    let brokers = cluster_nodes(shard)
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(str_bytes(&host))
                .with_port(port)
        })
        .collect();
    for topic in &topics {
        let name = topic.name.as_ref().map_or("", |n| n.0.as_str());
        shard.error_answer(
            frame.api_key,
            format_args!("topic {name}"),
            topic.error_code,
        );
        for partition in &topic.partitions {
            shard.error_answer(
                frame.api_key,
                format_args!("{name}-{}", partition.partition_index),
                partition.error_code,
            );
        }
    }
    let body = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id((frame.api_version >= 2).then(|| str_bytes(&cluster_id(shard))))
        .with_controller_id(controller_id(shard))
        .with_topics(topics);
    respond(&frame, &body)
}

/// The cluster's id, as agreed in the metadata log (every node the same).
fn cluster_id(shard: &Shard) -> String {
    shard
        .controller
        .metadata()
        .cluster_id
        .clone()
        .unwrap_or_else(|| shard.settings.cluster_id.clone())
}

/// What clients are told is the controller: this node, as a KRaft broker
/// names an alive broker. Clients send admin requests (CreateTopics, ...)
/// there, and every node hands them to the metadata log's leader itself;
/// naming the Raft leader instead left librdkafka's admin client retrying a
/// dead leader after it was killed, while another was already elected.
fn controller_id(shard: &Shard) -> BrokerId {
    BrokerId(shard.settings.node_id)
}

/// The cluster's nodes that serve (id, host, port), in id order; this node
/// alone until it has registered.
pub fn cluster_nodes(shard: &Shard) -> Vec<(i32, String, i32)> {
    let cluster = shard.controller.metadata();
    let nodes: Vec<(i32, String, i32)> = cluster
        .nodes
        .values()
        .filter(|n| !n.fenced)
        .map(|n| (n.info.id, n.info.kafka_host.clone(), n.info.kafka_port))
        .collect();
    if nodes.is_empty() {
        let settings = &shard.settings;
        return vec![(
            settings.node_id,
            settings.advertised_host.clone(),
            settings.advertised_port,
        )];
    }
    nodes
}

fn topic_metadata(topic: &TopicMeta, node: BrokerId, version: i16) -> MetadataResponseTopic {
    let partitions = (0..topic.partition_count())
        .map(|p| {
            let leader = topic.leader(p, node.0).unwrap_or(-1);
            let replicas: Vec<BrokerId> = topic
                .replicas
                .get(p as usize)
                .map_or_else(|| vec![node], |r| r.iter().map(|n| BrokerId(*n)).collect());
            let isr: Vec<BrokerId> = match topic.isr.get(p as usize) {
                Some(isr) => isr.iter().map(|n| BrokerId(*n)).collect(),
                None if leader >= 0 => vec![BrokerId(leader)],
                None => Vec::new(),
            };
            MetadataResponsePartition::default()
                .with_error_code(if leader >= 0 {
                    error_code::NONE
                } else {
                    error_code::LEADER_NOT_AVAILABLE
                })
                .with_partition_index(p)
                .with_leader_id(BrokerId(leader))
                .with_leader_epoch(if version >= 7 {
                    topic.leader_epochs.get(p as usize).copied().unwrap_or(0)
                } else {
                    -1
                })
                .with_replica_nodes(replicas)
                .with_isr_nodes(isr)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_error_code(error_code::NONE)
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_is_internal(topic.name == crate::groups::offsets::OFFSETS_TOPIC)
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

/// The cluster operations a client may perform (Kafka's `AclOperation` codes
/// as bits): with no authorizer, Kafka reports every operation the cluster
/// resource supports.
const CLUSTER_OPERATIONS: &[i32] = &[
    5,  // CREATE
    7,  // ALTER
    8,  // DESCRIBE
    9,  // CLUSTER_ACTION
    10, // DESCRIBE_CONFIGS
    11, // ALTER_CONFIGS
    12, // IDEMPOTENT_WRITE
];
/// "Not asked for" in authorized-operations fields.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// DescribeCluster endpoint types.
const ENDPOINT_TYPE_BROKER: i8 = 1;

/// DescribeCluster (what `AdminClient.describeCluster` asks first): this node
/// lists the cluster's serving nodes and the controller leader. Asking a
/// broker for controllers is MISMATCHED_ENDPOINT_TYPE, as Kafka answers.
pub async fn describe_cluster(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: DescribeClusterRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut body = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&cluster_id(shard)))
        .with_controller_id(controller_id(shard))
        .with_endpoint_type(ENDPOINT_TYPE_BROKER)
        .with_cluster_authorized_operations(if request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS
                .iter()
                .fold(0, |bits, op| bits | (1 << op))
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        });
    if frame.api_version >= 1 && request.endpoint_type != ENDPOINT_TYPE_BROKER {
        shard.error_answer(
            frame.api_key,
            format_args!("endpoint type {}", request.endpoint_type),
            error_code::MISMATCHED_ENDPOINT_TYPE,
        );
        body = body
            .with_error_code(error_code::MISMATCHED_ENDPOINT_TYPE)
            .with_error_message(Some(str_bytes(
                "this endpoint serves brokers: the controllers are not described here",
            )))
            .with_controller_id(BrokerId(-1));
    } else {
        body = body.with_brokers(
            cluster_nodes(shard)
                .into_iter()
                .map(|(id, host, port)| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(id))
                        .with_host(str_bytes(&host))
                        .with_port(port)
                })
                .collect(),
        );
    }
    respond(&frame, &body)
}
