//! The cluster metadata state machine: commands and how they apply.

use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node as it registered: where clients and other nodes reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// The Kafka listener clients are told about (host, port).
    pub kafka_host: String,
    pub kafka_port: i32,
    /// The node-to-node listener.
    pub internal_addr: String,
    pub cores: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub info: NodeInfo,
    /// A fenced node stopped heartbeating: it leads nothing until it is back.
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The nodes holding a copy, the preferred leader first.
    pub replicas: Vec<NodeId>,
    /// -1: no leader (every replica fenced).
    pub leader: NodeId,
    /// Raised at every leader change: fences requests of an old leader.
    pub leader_epoch: i32,
    pub isr: Vec<NodeId>,
    /// Raised at every change of the leader or the ISR: an ISR change is
    /// applied only to the state it was proposed against (Kafka's
    /// partition epoch), so a late or repeated proposal changes nothing.
    #[serde(default)]
    pub partition_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    pub id: uuid::Uuid,
    pub partitions: Vec<PartitionState>,
    pub configs: BTreeMap<String, String>,
}

/// One change to the cluster metadata, as the controller logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A node joins, or comes back (unfenced, with its current listeners).
    RegisterNode(NodeInfo),
    /// A node stopped heartbeating.
    FenceNode {
        id: NodeId,
    },
    CreateTopic {
        name: String,
        id: uuid::Uuid,
        /// Replica lists, by partition (see [`crate::place`]).
        replicas: Vec<Vec<NodeId>>,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Partitions appended to a topic (their replica lists).
    CreatePartitions {
        name: String,
        replicas: Vec<Vec<NodeId>>,
    },
    /// A topic's config overrides become exactly `configs`.
    AlterTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// A node takes the producer ids `from..to` to hand out; `from` must not
    /// be below any id taken before, so blocks never overlap.
    AllocateProducerIds {
        from: i64,
        to: i64,
    },
    /// The cluster's id: the first one proposed (by the first node to start) stays.
    InitCluster {
        id: String,
    },
    /// A partition leader changes its in-sync replica set (a follower fell
    /// behind, or caught up). Applied only while `leader` still leads at
    /// `leader_epoch`, to replicas of the partition that include the leader
    /// and are not fenced: a deposed leader's late proposal changes nothing.
    AlterIsr {
        topic: String,
        partition: i32,
        leader: NodeId,
        leader_epoch: i32,
        /// The partition epoch the leader saw when it proposed this.
        partition_epoch: i32,
        isr: Vec<NodeId>,
    },
}

/// Everything a node knows about the cluster, as of the last applied command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    pub nodes: BTreeMap<NodeId, NodeState>,
    pub topics: BTreeMap<String, TopicState>,
    /// The next producer id not yet handed out in a block.
    pub next_producer_id: i64,
    /// Index of the last command applied (the Raft log index).
    pub applied: u64,
    /// What every node reports as the cluster id (Metadata, DescribeCluster).
    #[serde(default)]
    pub cluster_id: Option<String>,
}

impl ClusterMetadata {
    /// Nodes that may lead partitions, in id order.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| !n.fenced)
            .map(|n| n.info.id)
            .collect()
    }

    /// Partitions each node holds a replica of (placement balances by this).
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for topic in self.topics.values() {
            for partition in &topic.partitions {
                for replica in &partition.replicas {
                    *counts.entry(*replica).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Applies the command at log `index`. An error means the command no
    /// longer fits the metadata and changed nothing (every node reaches the
    /// same verdict, as they apply the same log).
    pub fn apply(&mut self, index: u64, command: &Command) -> Result<(), String> {
        self.applied = self.applied.max(index);
        match command {
            Command::RegisterNode(info) => {
                self.nodes.insert(
                    info.id,
                    NodeState {
                        info: info.clone(),
                        fenced: false,
                    },
                );
                self.elect_leaders();
                Ok(())
            }
            Command::FenceNode { id } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| format!("node {id} is not registered"))?;
                node.fenced = true;
                // A fenced node leaves every ISR it is in, unless it is the
                // last member (its copy may be the only one with every
                // acknowledged record: the partition waits for it).
                for topic in self.topics.values_mut() {
                    for partition in &mut topic.partitions {
                        if partition.isr.len() > 1 {
                            partition.isr.retain(|r| r != id);
                        }
                        // Proposals made before (e.g. adding this node) no longer apply.
                        if partition.replicas.contains(id) {
                            partition.partition_epoch += 1;
                        }
                    }
                }
                self.elect_leaders();
                Ok(())
            }
            Command::CreateTopic {
                name,
                id,
                replicas,
                configs,
            } => {
                if self.topics.contains_key(name) {
                    return Err(format!("topic `{name}` already exists"));
                }
                self.check_replicas(replicas)?;
                let topic = TopicState {
                    id: *id,
                    partitions: replicas.iter().map(|r| self.new_partition(r)).collect(),
                    configs: configs.clone(),
                };
                self.topics.insert(name.clone(), topic);
                Ok(())
            }
            Command::DeleteTopic { name } => self
                .topics
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| format!("topic `{name}` does not exist")),
            Command::CreatePartitions { name, replicas } => {
                self.check_replicas(replicas)?;
                let added: Vec<PartitionState> =
                    replicas.iter().map(|r| self.new_partition(r)).collect();
                let topic = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| format!("topic `{name}` does not exist"))?;
                topic.partitions.extend(added);
                Ok(())
            }
            Command::AlterTopicConfigs { name, configs } => {
                let topic = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| format!("topic `{name}` does not exist"))?;
                topic.configs = configs.clone();
                Ok(())
            }
            Command::InitCluster { id } => {
                self.cluster_id.get_or_insert_with(|| id.clone());
                Ok(())
            }
            Command::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                let live = self.live_nodes();
                let state = self
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.partitions.get_mut(usize::try_from(*partition).ok()?))
                    .ok_or_else(|| format!("partition {topic}-{partition} does not exist"))?;
                if state.leader != *leader || state.leader_epoch != *leader_epoch {
                    return Err(format!(
                        "{topic}-{partition}: node {leader} at epoch {leader_epoch} no longer leads (leader {} epoch {})",
                        state.leader, state.leader_epoch
                    ));
                }
                if state.partition_epoch != *partition_epoch {
                    return Err(format!(
                        "{topic}-{partition}: proposed against partition epoch {partition_epoch}, now {}",
                        state.partition_epoch
                    ));
                }
                if !isr.contains(leader) {
                    return Err(format!("{topic}-{partition}: the ISR must hold its leader"));
                }
                if let Some(bad) = isr
                    .iter()
                    .find(|r| !state.replicas.contains(r) || !live.contains(r))
                {
                    return Err(format!(
                        "{topic}-{partition}: node {bad} is not a live replica"
                    ));
                }
                state.isr = isr.clone();
                state.partition_epoch += 1;
                self.elect_leaders();
                Ok(())
            }
            Command::AllocateProducerIds { from, to } => {
                if *from < self.next_producer_id || to <= from {
                    return Err(format!(
                        "producer ids below {} are already taken (asked for {from}..{to})",
                        self.next_producer_id
                    ));
                }
                self.next_producer_id = *to;
                Ok(())
            }
        }
    }

    fn check_replicas(&self, replicas: &[Vec<NodeId>]) -> Result<(), String> {
        for (p, nodes) in replicas.iter().enumerate() {
            if nodes.is_empty() {
                return Err(format!("partition {p} has no replica"));
            }
            if let Some(unknown) = nodes.iter().find(|n| !self.nodes.contains_key(n)) {
                return Err(format!("partition {p}: node {unknown} is not registered"));
            }
            let mut sorted = nodes.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != nodes.len() {
                return Err(format!("partition {p} names a node twice"));
            }
        }
        Ok(())
    }

    fn is_live(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| !n.fenced)
    }

    fn new_partition(&self, replicas: &[NodeId]) -> PartitionState {
        let leader = replicas
            .iter()
            .copied()
            .find(|r| self.is_live(*r))
            .unwrap_or(-1);
        PartitionState {
            replicas: replicas.to_vec(),
            leader,
            leader_epoch: 0,
            isr: replicas
                .iter()
                .copied()
                .filter(|r| self.is_live(*r))
                .collect(),
            partition_epoch: 0,
        }
    }

    /// After a node is fenced or comes back, or an ISR changed: a partition
    /// keeps its leader while that is live and in sync, unless its preferred
    /// leader (first replica) is live and in sync again, which takes it back
    /// (so leadership returns after a restart, as Kafka's preferred-leader
    /// election does). A partition without a usable leader takes the first
    /// live in-sync replica; with none, it has no leader (-1) until one
    /// returns, unless the topic allows unclean election
    /// (`unclean.leader.election.enable`), which takes any live replica and
    /// makes it the whole ISR (acknowledged records may be lost). Every
    /// leader change raises the leader epoch.
    fn elect_leaders(&mut self) {
        let live: Vec<NodeId> = self.live_nodes();
        for topic in self.topics.values_mut() {
            let unclean = topic
                .configs
                .get("unclean.leader.election.enable")
                .is_some_and(|v| v == "true");
            for partition in &mut topic.partitions {
                if partition.replicas.len() == 1 {
                    partition.isr = partition.replicas.clone();
                }
                let usable = |r: &NodeId| live.contains(r) && partition.isr.contains(r);
                let preferred = partition.replicas[0];
                let mut leader = if usable(&preferred) {
                    preferred
                } else if usable(&partition.leader) {
                    partition.leader
                } else {
                    partition
                        .replicas
                        .iter()
                        .copied()
                        .find(|r| usable(r))
                        .unwrap_or(-1)
                };
                if leader == -1 && unclean {
                    if let Some(any) = partition
                        .replicas
                        .iter()
                        .copied()
                        .find(|r| live.contains(r))
                    {
                        leader = any;
                        partition.isr = vec![any];
                        partition.partition_epoch += 1;
                    }
                }
                if leader != partition.leader {
                    partition.leader = leader;
                    partition.leader_epoch += 1;
                    partition.partition_epoch += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId) -> NodeInfo {
        NodeInfo {
            id,
            kafka_host: "127.0.0.1".into(),
            kafka_port: 9092 + id,
            internal_addr: format!("127.0.0.1:{}", 19092 + id),
            cores: 2,
        }
    }

    fn cluster(ids: &[NodeId]) -> ClusterMetadata {
        let mut metadata = ClusterMetadata::default();
        for (i, id) in ids.iter().enumerate() {
            metadata
                .apply(i as u64 + 1, &Command::RegisterNode(node(*id)))
                .unwrap();
        }
        metadata
    }

    #[test]
    fn the_same_commands_give_the_same_metadata_and_survive_serialization() {
        let commands = [
            Command::RegisterNode(node(1)),
            Command::RegisterNode(node(2)),
            Command::CreateTopic {
                name: "orders".into(),
                id: uuid::Uuid::from_u128(7),
                replicas: vec![vec![1], vec![2], vec![1]],
                configs: [("cleanup.policy".to_string(), "compact".to_string())].into(),
            },
            Command::AllocateProducerIds { from: 0, to: 1000 },
            Command::FenceNode { id: 2 },
        ];
        let mut a = ClusterMetadata::default();
        let mut b = ClusterMetadata::default();
        for (i, command) in commands.iter().enumerate() {
            a.apply(i as u64 + 1, command).unwrap();
            // What the Raft log carries: the command's bytes.
            let bytes = serde_json::to_vec(command).unwrap();
            b.apply(i as u64 + 1, &serde_json::from_slice(&bytes).unwrap())
                .unwrap();
        }
        assert_eq!(a, b);
        assert_eq!(a.applied, 5);
        let snapshot = serde_json::to_vec(&a).unwrap();
        assert_eq!(
            serde_json::from_slice::<ClusterMetadata>(&snapshot).unwrap(),
            a
        );
    }

    #[test]
    fn a_fenced_node_leads_nothing_until_it_registers_again() {
        let mut m = cluster(&[1, 2, 3]);
        m.apply(
            4,
            &Command::CreateTopic {
                name: "t".into(),
                id: uuid::Uuid::from_u128(1),
                replicas: vec![vec![1], vec![2], vec![3]],
                configs: BTreeMap::new(),
            },
        )
        .unwrap();
        let leaders = |m: &ClusterMetadata| -> Vec<(NodeId, i32)> {
            m.topics["t"]
                .partitions
                .iter()
                .map(|p| (p.leader, p.leader_epoch))
                .collect()
        };
        assert_eq!(leaders(&m), vec![(1, 0), (2, 0), (3, 0)]);
        m.apply(5, &Command::FenceNode { id: 2 }).unwrap();
        assert_eq!(leaders(&m), vec![(1, 0), (-1, 1), (3, 0)]);
        assert_eq!(m.live_nodes(), vec![1, 3]);
        m.apply(6, &Command::RegisterNode(node(2))).unwrap();
        assert_eq!(leaders(&m), vec![(1, 0), (2, 2), (3, 0)]);
    }

    #[test]
    fn leaders_come_from_the_isr_and_epochs_fence_stale_isr_changes() {
        let mut m = cluster(&[1, 2, 3]);
        let create = |unclean: bool| Command::CreateTopic {
            name: "t".into(),
            id: uuid::Uuid::from_u128(1),
            replicas: vec![vec![1, 2, 3]],
            configs: if unclean {
                [(
                    "unclean.leader.election.enable".to_string(),
                    "true".to_string(),
                )]
                .into()
            } else {
                BTreeMap::new()
            },
        };
        m.apply(4, &create(false)).unwrap();
        let state = |m: &ClusterMetadata| m.topics["t"].partitions[0].clone();
        assert_eq!(
            (state(&m).leader, state(&m).isr.clone()),
            (1, vec![1, 2, 3])
        );
        // Node 3 falls behind: the leader drops it.
        let alter =
            |m: &ClusterMetadata, leader, leader_epoch, isr: Vec<NodeId>| Command::AlterIsr {
                topic: "t".into(),
                partition: 0,
                leader,
                leader_epoch,
                partition_epoch: m.topics["t"].partitions[0].partition_epoch,
                isr,
            };
        m.apply(5, &alter(&m.clone(), 1, 0, vec![1, 2])).unwrap();
        // The leader dies: node 2 (in sync) leads at a new epoch, never node 3.
        m.apply(6, &Command::FenceNode { id: 1 }).unwrap();
        assert_eq!((state(&m).leader, state(&m).leader_epoch), (2, 1));
        assert_eq!(state(&m).isr, vec![2]);
        // The deposed leader's late proposal changes nothing.
        assert!(m.apply(7, &alter(&m.clone(), 1, 0, vec![1, 2, 3])).is_err());
        // A proposal against an older partition epoch changes nothing either.
        let stale = alter(&m.clone(), 2, 1, vec![2, 3]);
        m.apply(7, &Command::FenceNode { id: 3 }).unwrap();
        m.apply(7, &Command::RegisterNode(node(3))).unwrap();
        assert!(m.apply(7, &stale).unwrap_err().contains("partition epoch"));
        // Node 2 dies too: node 3 is out of sync, so no leader...
        m.apply(8, &Command::FenceNode { id: 2 }).unwrap();
        assert_eq!((state(&m).leader, state(&m).isr.clone()), (-1, vec![2]));
        // ...until node 2 (the last in sync) returns.
        m.apply(9, &Command::RegisterNode(node(2))).unwrap();
        assert_eq!((state(&m).leader, state(&m).leader_epoch), (2, 3));
        // Node 1 returns and catches up: the preferred leader takes over.
        m.apply(10, &Command::RegisterNode(node(1))).unwrap();
        assert_eq!(state(&m).leader, 2);
        m.apply(11, &alter(&m.clone(), 2, 3, vec![2, 1])).unwrap();
        assert_eq!((state(&m).leader, state(&m).leader_epoch), (1, 4));
        // A fenced node may not join an ISR.
        m.apply(12, &Command::FenceNode { id: 3 }).unwrap();
        assert!(m
            .apply(13, &alter(&m.clone(), 1, 4, vec![1, 2, 3]))
            .is_err());

        // Unclean election: an out-of-sync replica may lead when allowed.
        let mut m = cluster(&[1, 2, 3]);
        m.apply(4, &create(true)).unwrap();
        m.apply(5, &alter(&m.clone(), 1, 0, vec![1])).unwrap();
        m.apply(6, &Command::FenceNode { id: 1 }).unwrap();
        assert_eq!((state(&m).leader, state(&m).isr.clone()), (2, vec![2]));
    }

    #[test]
    fn commands_that_no_longer_fit_change_nothing() {
        let mut m = cluster(&[1]);
        let create = Command::CreateTopic {
            name: "t".into(),
            id: uuid::Uuid::from_u128(1),
            replicas: vec![vec![1]],
            configs: BTreeMap::new(),
        };
        m.apply(2, &create).unwrap();
        let before = m.clone();
        assert!(m.apply(3, &create).unwrap_err().contains("already exists"));
        assert!(m
            .apply(
                4,
                &Command::DeleteTopic {
                    name: "nope".into()
                }
            )
            .is_err());
        assert!(m
            .apply(
                5,
                &Command::CreatePartitions {
                    name: "t".into(),
                    replicas: vec![vec![9]]
                }
            )
            .unwrap_err()
            .contains("node 9"));
        assert!(m
            .apply(6, &Command::AllocateProducerIds { from: 0, to: 0 })
            .is_err());
        assert_eq!(m.topics, before.topics);
        assert_eq!(m.applied, 6);
    }
}
