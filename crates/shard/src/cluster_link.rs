//! Where the shards meet the cluster layer: this node's view of the
//! cluster metadata as a topic [`Snapshot`], the bootstrap before the shards
//! start (register this node, import the legacy `metadata.toml`), and the
//! follower that keeps the snapshot and the shards' partitions in step with
//! every change the metadata log applies.

use crate::mesh::ShardMsg;
use crate::metadata::{MetadataStore, Snapshot, TopicMeta};
use crate::settings::BrokerSettings;
use crate::topics::fnv;
use sluice_cluster::{ClusterMetadata, Command, ControllerHandle, NodeInfo};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where this node's metadata log lives.
pub const CONTROLLER_DIR: &str = "controller";

/// Starts this node's controller voter: for now the only one (a cluster of
/// this node), its internal listener on an ephemeral loopback port that no
/// other node dials. Raft ids are Kafka node ids + 1 (openraft's default
/// vote is node 0's).
pub fn start_single_node_controller(
    settings: &BrokerSettings,
) -> Result<(ControllerHandle, String), String> {
    let internal = "127.0.0.1:0".to_string();
    start_controller(
        settings,
        &BTreeMap::from([(settings.node_id, internal.clone())]),
        &internal,
    )
}

/// Starts this node's controller voter among `voters` (node id → internal
/// listener); returns its handle and this node's internal address.
/// A node that is not among `voters` follows the log as a learner, on its
/// own internal listener `internal`.
pub fn start_controller(
    settings: &BrokerSettings,
    voters: &BTreeMap<i32, String>,
    internal: &str,
) -> Result<(ControllerHandle, String), String> {
    let internal = voters
        .get(&settings.node_id)
        .cloned()
        .unwrap_or_else(|| internal.to_string());
    let raft_id = settings.node_id as u64 + 1;
    let voters: BTreeMap<u64, String> = voters
        .iter()
        .map(|(id, addr)| (*id as u64 + 1, addr.clone()))
        .collect();
    let mut config = sluice_cluster::controller::ControllerConfig::new(
        raft_id,
        voters,
        settings.data_dir.join(CONTROLLER_DIR),
    );
    config.listen = internal.clone();
    config.session_timeout_ms = settings.broker_session_timeout_ms;
    config.heartbeat_interval_ms = (settings.broker_session_timeout_ms / 6).clamp(50, 2000);
    Ok((ControllerHandle::start(config, settings.node_id)?, internal))
}

/// The topics of the cluster metadata as this node's shards see them; each
/// partition's shard is `(fnv(topic) + partition) % shard_count`.
pub fn snapshot_of(cluster: &ClusterMetadata, shard_count: usize, node_id: i32) -> Snapshot {
    let topics = cluster
        .topics
        .iter()
        .map(|(name, topic)| {
            let first = fnv(name) as usize % shard_count.max(1);
            let meta = TopicMeta {
                name: name.clone(),
                id: topic.id.to_string(),
                partition_shards: topic
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(p, state)| {
                        if state.replicas.contains(&node_id) {
                            // Offset buckets keep their shard (older data dirs).
                            let start = if name == crate::groups::offsets::OFFSETS_TOPIC {
                                0
                            } else {
                                first
                            };
                            ((start + p) % shard_count.max(1)) as u32
                        } else {
                            crate::metadata::NOT_LOCAL
                        }
                    })
                    .collect(),
                configs: topic.configs.clone(),
                leaders: topic.partitions.iter().map(|p| p.leader).collect(),
                leader_epochs: topic.partitions.iter().map(|p| p.leader_epoch).collect(),
                replicas: topic
                    .partitions
                    .iter()
                    .map(|p| p.replicas.clone())
                    .collect(),
                isr: topic.partitions.iter().map(|p| p.isr.clone()).collect(),
                partition_epochs: topic.partitions.iter().map(|p| p.partition_epoch).collect(),
            };
            (name.clone(), Arc::new(meta))
        })
        .collect();
    Snapshot {
        topics,
        names_by_id: Default::default(),
    }
}

/// Before the shards start: registers this node with the controller (its
/// listeners, unfenced), imports the topics of a legacy `metadata.toml`
/// once, and publishes the first snapshot. Blocks until the metadata log
/// has a leader.
pub fn bootstrap(
    controller: &ControllerHandle,
    store: &MetadataStore,
    settings: &BrokerSettings,
    internal_addr: &str,
    shard_count: usize,
) -> Result<(), String> {
    // Without a quorum of controllers (the other voters still starting)
    // nothing can be appended: wait for one, saying so.
    let propose = |command: Command| -> Result<u64, String> {
        loop {
            match futures_lite::future::block_on(controller.propose(command.clone())) {
                Ok(result) => {
                    return match result.error {
                        None => Ok(result.index),
                        Some(e) => Err(e),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "waiting for a quorum of controller voters"),
            }
        }
    };
    propose(Command::InitCluster {
        id: settings.cluster_id.clone(),
    })?;
    let mut index = propose(Command::RegisterNode(NodeInfo {
        id: settings.node_id,
        kafka_host: settings.advertised_host.clone(),
        kafka_port: settings.advertised_port,
        internal_addr: internal_addr.to_string(),
        cores: shard_count as u32,
    }))?;
    let legacy = store.snapshot();
    if !legacy.topics.is_empty() {
        let known = controller.metadata();
        for topic in legacy.topics.values() {
            if known.topics.contains_key(&topic.name) {
                continue;
            }
            tracing::info!(topic = %topic.name, "importing a topic of metadata.toml into the metadata log");
            index = propose(Command::CreateTopic {
                name: topic.name.clone(),
                id: topic.uuid(),
                replicas: vec![vec![settings.node_id]; topic.partition_shards.len()],
                configs: topic.configs.clone(),
            })?;
        }
        let imported = store.legacy_path().with_extension("toml.imported");
        std::fs::rename(store.legacy_path(), &imported)
            .map_err(|e| format!("{}: {e}", store.legacy_path().display()))?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while controller.metadata().applied < index {
        if std::time::Instant::now() >= deadline {
            return Err("the metadata log did not apply this node's registration".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    store.publish(snapshot_of(
        &controller.metadata(),
        shard_count,
        settings.node_id,
    ));
    store.set_applied_index(controller.metadata().applied);
    Ok(())
}

/// Sends a message to every shard and waits for all.
async fn broadcast(
    peers: &[flume::Sender<ShardMsg>],
    message: impl Fn(flume::Sender<()>) -> ShardMsg,
) {
    let mut answers = Vec::new();
    for peer in peers {
        let (reply, answer) = flume::bounded(1);
        if peer.send_async(message(reply)).await.is_ok() {
            answers.push(answer);
        }
    }
    for answer in answers {
        let _ = answer.recv_async().await;
    }
}

/// Follows the metadata log for as long as the controller runs: after every
/// applied change, publishes the new snapshot, has every shard open the
/// partitions of new (or grown) topics, reconfigure changed ones and drop
/// deleted ones, then marks the index applied (admin requests wait for it).
pub async fn follow(
    controller: ControllerHandle,
    store: Arc<MetadataStore>,
    peers: Vec<flume::Sender<ShardMsg>>,
    node_id: i32,
) {
    let shard_count = peers.len();
    let mut applied = controller.watch_applied();
    loop {
        let index = *applied.borrow_and_update();
        let cluster = controller.metadata();
        let previous = store.snapshot();
        let next = snapshot_of(&cluster, shard_count, node_id);
        if next.topics != previous.topics {
            let mut opened = Vec::new();
            let mut changed = Vec::new();
            let mut moved = Vec::new();
            let mut dropped: Vec<Arc<TopicMeta>> = Vec::new();
            for (name, topic) in &next.topics {
                match previous.topics.get(name) {
                    Some(old) if old.id == topic.id => {
                        if old.partition_shards != topic.partition_shards {
                            opened.push(topic.clone());
                        }
                        if old.configs != topic.configs {
                            changed.push(topic.clone());
                        }
                        if (
                            &old.leaders,
                            &old.leader_epochs,
                            &old.partition_epochs,
                            &old.isr,
                        ) != (
                            &topic.leaders,
                            &topic.leader_epochs,
                            &topic.partition_epochs,
                            &topic.isr,
                        ) {
                            moved.push(topic.clone());
                        }
                    }
                    Some(old) => {
                        dropped.push(old.clone());
                        opened.push(topic.clone());
                    }
                    None => opened.push(topic.clone()),
                }
            }
            dropped.extend(
                previous
                    .topics
                    .iter()
                    .filter(|(name, _)| !next.topics.contains_key(*name))
                    .map(|(_, topic)| topic.clone()),
            );
            store.publish(next);
            for topic in dropped {
                tracing::info!(topic = %topic.name, "topic deleted");
                broadcast(&peers, |reply| ShardMsg::DropTopic {
                    topic: topic.clone(),
                    reply,
                })
                .await;
            }
            for topic in opened {
                tracing::info!(topic = %topic.name, partitions = topic.partition_count(), "topic created or grown");
                broadcast(&peers, |reply| ShardMsg::OpenTopic {
                    topic: topic.clone(),
                    reply,
                })
                .await;
            }
            for topic in changed {
                tracing::info!(topic = %topic.name, configs = ?topic.configs, "topic configs changed");
                broadcast(&peers, |reply| ShardMsg::TopicConfigChanged {
                    topic: topic.clone(),
                    reply,
                })
                .await;
            }
            for topic in moved {
                broadcast(&peers, |reply| ShardMsg::ReplicaStates {
                    topic: topic.clone(),
                    reply,
                })
                .await;
            }
        }
        store.set_applied_index(index.max(cluster.applied));
        if applied.changed().await.is_err() {
            return;
        }
    }
}
