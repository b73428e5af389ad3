//! The run's topics: created fresh for each run, then read back from Metadata
//! until every partition has a leader. Partitions are flattened into one list;
//! producers and consumers refer to them by index.

use crate::client::{kafka_error, Conn};
use crate::workload::Workload;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::api::error_code::TOPIC_ALREADY_EXISTS;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PartitionRef {
    pub topic: usize,
    pub partition: i32,
    pub leader: i32,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub topics: Vec<String>,
    pub partitions: Vec<PartitionRef>,
    /// node id -> "host:port"
    pub brokers: BTreeMap<i32, String>,
}

impl Topology {
    pub fn topic_name(&self, topic: usize) -> TopicName {
        TopicName(StrBytes::from_string(self.topics[topic].clone()))
    }

    pub fn address(&self, node: i32) -> Result<&str, String> {
        self.brokers
            .get(&node)
            .map(|s| s.as_str())
            .ok_or_else(|| format!("metadata names leader {node}, which is not among the brokers"))
    }
}

pub fn topic_names(workload: &Workload, run_id: &str) -> Vec<String> {
    (0..workload.topics)
        .map(|i| format!("{}-{run_id}-{i}", workload.topic_prefix))
        .collect()
}

/// Creates the topics and waits (up to 30 s) until Metadata shows a leader for
/// every partition.
pub async fn create(conn: &Conn, workload: &Workload, run_id: &str) -> Result<Topology, String> {
    let topics = topic_names(workload, run_id);
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(
            topics
                .iter()
                .map(|name| {
                    CreatableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name.clone())))
                        .with_num_partitions(workload.partitions_per_topic as i32)
                        .with_replication_factor(workload.replication_factor)
                })
                .collect(),
        );
    let response: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, &request).await?;
    for topic in &response.topics {
        if topic.error_code != 0 && topic.error_code != TOPIC_ALREADY_EXISTS {
            return Err(format!(
                "cannot create topic {}: error {}{}",
                topic.name.0,
                kafka_error(topic.error_code),
                topic
                    .error_message
                    .as_ref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match describe(conn, &topics, workload.partitions_per_topic).await {
            Ok(topology) => return Ok(topology),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("topics not ready after 30 s: {e}"))
            }
            Err(_) => glommio::timer::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn describe(conn: &Conn, topics: &[String], partitions: u32) -> Result<Topology, String> {
    let request = MetadataRequest::default().with_topics(Some(
        topics
            .iter()
            .map(|t| {
                MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
            })
            .collect(),
    ));
    let response: MetadataResponse = conn.call(ApiKey::Metadata, &request).await?;
    let brokers = response
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
        .collect();
    let mut flat = Vec::new();
    for (index, name) in topics.iter().enumerate() {
        let topic = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name))
            .ok_or_else(|| format!("topic {name} missing from metadata"))?;
        if topic.error_code != 0 {
            return Err(format!(
                "topic {name}: error {}",
                kafka_error(topic.error_code)
            ));
        }
        if topic.partitions.len() != partitions as usize {
            return Err(format!(
                "topic {name} has {} partitions, want {partitions}",
                topic.partitions.len()
            ));
        }
        let mut parts: Vec<_> = topic.partitions.iter().collect();
        parts.sort_by_key(|p| p.partition_index);
        for p in parts {
            if p.error_code != 0 || p.leader_id.0 < 0 {
                return Err(format!("{name}/{} has no leader yet", p.partition_index));
            }
            flat.push(PartitionRef {
                topic: index,
                partition: p.partition_index,
                leader: p.leader_id.0,
            });
        }
    }
    Ok(Topology {
        topics: topics.to_vec(),
        partitions: flat,
        brokers,
    })
}
