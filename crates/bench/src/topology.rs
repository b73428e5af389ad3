//! The run's topics: created fresh for each run, then read back from Metadata
//! until every partition has a leader. Partitions are flattened into one list;
//! producers and consumers refer to them by index.

use crate::client::{kafka_error, Conn};
use crate::retry::{self, Attempts, Counts};
use crate::workload::Workload;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::api::error_code::{TOPIC_ALREADY_EXISTS, UNKNOWN_TOPIC_OR_PARTITION};
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
}

pub fn topic_names(workload: &Workload, run_id: &str) -> Vec<String> {
    (0..workload.topics)
        .map(|i| format!("{}-{run_id}-{i}", workload.topic_prefix))
        .collect()
}

/// How long the topics get to show a leader for every partition.
const READY_MAX: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(100);

/// Creates the topics (retrying CreateTopics on retriable errors) and waits
/// until Metadata shows a leader for every partition: a fresh Kafka topic has
/// none for a moment (LEADER_NOT_AVAILABLE, or UNKNOWN_TOPIC_OR_PARTITION on
/// a broker that has not heard of it yet). Each such answer is counted in
/// `retries` under its error name.
pub async fn create(
    conn: &Conn,
    workload: &Workload,
    run_id: &str,
    retries: &Counts,
) -> Result<Topology, String> {
    let topics = topic_names(workload, run_id);
    let mut attempts = Attempts::new(workload.delivery_timeout());
    let mut pending: Vec<&String> = topics.iter().collect();
    while !pending.is_empty() {
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(
                pending
                    .iter()
                    .map(|name| {
                        CreatableTopic::default()
                            .with_name(TopicName(StrBytes::from_string(name.to_string())))
                            .with_num_partitions(workload.partitions_per_topic as i32)
                            .with_replication_factor(workload.replication_factor)
                    })
                    .collect(),
            );
        let response: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, &request).await?;
        let mut retry = None;
        for topic in &response.topics {
            let code = topic.error_code;
            if code == 0 || code == TOPIC_ALREADY_EXISTS {
                pending.retain(|name| name.as_str() != topic.name.0.as_str());
            } else if retry::is_retriable(code) {
                retry = Some(code);
            } else {
                return Err(format!(
                    "cannot create topic {}: error {}{}",
                    topic.name.0,
                    kafka_error(code),
                    topic
                        .error_message
                        .as_ref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(code) = retry {
            attempts
                .retry(retries, "CreateTopics", &retry::name(code))
                .await?;
        } else if !pending.is_empty() {
            return Err(format!("CreateTopics did not answer for {pending:?}"));
        }
    }
    let deadline = Instant::now() + READY_MAX;
    loop {
        let snapshot = metadata(conn, &topics).await?;
        let waiting = match snapshot.topology(&topics, workload.partitions_per_topic) {
            Ok(topology) => return Ok(topology),
            Err(waiting) => waiting,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "the topics were created but not every partition has a leader after {} s: {}",
                READY_MAX.as_secs(),
                waiting.what
            ));
        }
        if let Some(code) = waiting.code {
            retries.note(&retry::name(code));
        }
        glommio::timer::sleep(READY_POLL).await;
    }
}

/// Why the topics are not ready yet.
#[derive(Debug)]
pub struct Waiting {
    pub what: String,
    /// The error the broker gave, if any (counted as a retry).
    pub code: Option<i16>,
}

/// What one Metadata response said about the run's topics.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// node id -> "host:port"
    pub brokers: BTreeMap<i32, String>,
    /// Per topic, in the order asked: its error code
    /// (UNKNOWN_TOPIC_OR_PARTITION if missing) and its partitions.
    pub topics: Vec<(i16, Vec<PartitionState>)>,
}

/// One partition in a Metadata response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionState {
    pub index: i32,
    pub leader: i32,
    pub error_code: i16,
}

impl Snapshot {
    /// The leader of a topic's partition; -1 if it has none or is not shown.
    pub fn leader(&self, topic: usize, partition: i32) -> i32 {
        self.topics
            .get(topic)
            .and_then(|(_, parts)| parts.iter().find(|p| p.index == partition))
            .filter(|p| p.error_code == 0)
            .map_or(crate::cluster::NO_LEADER, |p| p.leader)
    }

    /// The topology if every partition of every topic has a leader.
    pub fn topology(&self, topics: &[String], partitions: u32) -> Result<Topology, Waiting> {
        let mut flat = Vec::new();
        for (index, name) in topics.iter().enumerate() {
            let (code, parts) = &self.topics[index];
            if *code != 0 {
                return Err(Waiting {
                    what: format!("topic {name}: {}", kafka_error(*code)),
                    code: Some(*code),
                });
            }
            if parts.len() != partitions as usize {
                return Err(Waiting {
                    what: format!(
                        "topic {name} shows {} partitions, want {partitions}",
                        parts.len()
                    ),
                    code: None,
                });
            }
            let mut parts = parts.clone();
            parts.sort();
            for PartitionState {
                index: partition,
                leader,
                error_code: code,
            } in parts
            {
                if code != 0 || leader < 0 {
                    return Err(Waiting {
                        what: format!(
                            "{name}/{partition} has no leader yet{}",
                            if code != 0 {
                                format!(" ({})", kafka_error(code))
                            } else {
                                String::new()
                            }
                        ),
                        code: (code != 0).then_some(code),
                    });
                }
                flat.push(PartitionRef {
                    topic: index,
                    partition,
                    leader,
                });
            }
        }
        Ok(Topology {
            topics: topics.to_vec(),
            partitions: flat,
            brokers: self.brokers.clone(),
        })
    }
}

/// Asks for the metadata of `topics`.
pub async fn metadata(conn: &Conn, topics: &[String]) -> Result<Snapshot, String> {
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
    let topics = topics
        .iter()
        .map(|name| {
            match response
                .topics
                .iter()
                .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name))
            {
                None => (UNKNOWN_TOPIC_OR_PARTITION, Vec::new()),
                Some(topic) => (
                    topic.error_code,
                    topic
                        .partitions
                        .iter()
                        .map(|p| PartitionState {
                            index: p.partition_index,
                            leader: p.leader_id.0,
                            error_code: p.error_code,
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    Ok(Snapshot { brokers, topics })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(index: i32, leader: i32, error_code: i16) -> PartitionState {
        PartitionState {
            index,
            leader,
            error_code,
        }
    }

    #[test]
    fn a_fresh_topic_waits_until_every_partition_has_a_leader() {
        let topics = vec!["a".to_string(), "b".to_string()];
        let mut snapshot = Snapshot {
            brokers: [(1, "h:1".to_string())].into(),
            topics: vec![
                (0, vec![part(1, 1, 0), part(0, 1, 0)]),
                (UNKNOWN_TOPIC_OR_PARTITION, Vec::new()),
            ],
        };
        let waiting = snapshot.topology(&topics, 2).unwrap_err();
        assert_eq!(waiting.code, Some(UNKNOWN_TOPIC_OR_PARTITION));
        assert!(waiting.what.contains("topic b"), "{}", waiting.what);

        snapshot.topics[1] = (0, vec![part(0, 1, 0)]);
        let waiting = snapshot.topology(&topics, 2).unwrap_err();
        assert_eq!(waiting.code, None);
        assert!(waiting.what.contains("shows 1 partitions, want 2"));

        snapshot.topics[1] = (0, vec![part(0, 1, 0), part(1, -1, 5)]);
        let waiting = snapshot.topology(&topics, 2).unwrap_err();
        assert_eq!(waiting.code, Some(5));
        assert_eq!(
            waiting.what,
            "b/1 has no leader yet (LEADER_NOT_AVAILABLE (5))"
        );
        assert_eq!(snapshot.leader(1, 1), crate::cluster::NO_LEADER);
        assert_eq!(snapshot.leader(1, 0), 1);
        assert_eq!(snapshot.leader(1, 7), crate::cluster::NO_LEADER);

        snapshot.topics[1].1[1] = part(1, 1, 0);
        let topology = snapshot.topology(&topics, 2).unwrap();
        let flat: Vec<(usize, i32)> = topology
            .partitions
            .iter()
            .map(|p| (p.topic, p.partition))
            .collect();
        assert_eq!(flat, [(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert_eq!(topology.brokers[&1], "h:1");
    }
}
