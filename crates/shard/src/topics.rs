//! Topic metadata changes (CreateTopics, DeleteTopics, CreatePartitions,
//! config changes): checked on shard 0, appended to the cluster's metadata
//! log by the controller, and answered once this node has applied them; the
//! follower (`cluster_link::follow`) then tells every shard, which opens,
//! drops or reconfigures the partitions it owns.

use crate::mesh::{AdminOp, AdminReply, ShardMsg};
use crate::metadata::{validate_topic_name, TopicMeta};
use crate::shard::{PartitionEntry, Shard};
use crate::topic_config::effective;
use sluice_cluster::Command;
use sluice_protocol::api::error_code;
use std::rc::Rc;

impl Shard {
    /// Sends a metadata change to the writer (shard 0) and waits for it.
    pub async fn admin(&self, op: AdminOp) -> AdminReply {
        if self.id == 0 {
            return self.execute_admin(op).await;
        }
        let (reply, answer) = flume::bounded(1);
        if self.peers[0]
            .send_async(ShardMsg::Admin { op, reply })
            .await
            .is_err()
        {
            return AdminReply {
                error_code: error_code::UNKNOWN_SERVER_ERROR,
                error_message: Some("shard 0 is gone".into()),
            };
        }
        answer.recv_async().await.unwrap_or_default()
    }

    /// Validates a change against this node's view, turns it into a
    /// metadata command, has the controller append it, and answers once
    /// this node has applied it and every shard has acted on it (opened,
    /// dropped or reconfigured partitions: see `cluster_link::follow`).
    pub(crate) async fn execute_admin(&self, op: AdminOp) -> AdminReply {
        assert_eq!(self.id, 0, "metadata changes go through shard 0");
        let _permit = self.admin_lock.acquire_permit(1).await;
        let snapshot = self.snapshot();
        let error = |code: i16, message: String| AdminReply {
            error_code: code,
            error_message: Some(message),
        };
        let cluster = self.controller.metadata();
        let live = cluster.live_nodes();
        let place = |partitions: usize, replication_factor: usize, name: &str| {
            let mut counts = cluster.replica_counts();
            sluice_cluster::place(
                &live,
                &mut counts,
                partitions,
                replication_factor,
                fnv(name) as usize,
            )
        };
        let command = match op {
            AdminOp::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                validate_only,
            } => {
                if let Err(e) = validate_topic_name(&name) {
                    return error(error_code::INVALID_TOPIC_EXCEPTION, e);
                }
                if snapshot.topics.contains_key(&name) {
                    return error(
                        error_code::TOPIC_ALREADY_EXISTS,
                        format!("topic `{name}` already exists"),
                    );
                }
                let internal = name == crate::groups::offsets::OFFSETS_TOPIC;
                if partitions < 1
                    || (partitions > self.settings.max_partitions_per_topic && !internal)
                {
                    return error(
                        error_code::INVALID_PARTITIONS,
                        format!(
                            "number of partitions must be 1..={}, got {partitions}",
                            self.settings.max_partitions_per_topic
                        ),
                    );
                }
                let replication_factor = if replication_factor == -1 {
                    // Auto-created and defaulted topics: as many copies as the
                    // default asks for and there are live nodes.
                    self.settings
                        .default_replication_factor
                        .min(live.len().max(1) as i32)
                } else {
                    replication_factor
                };
                if replication_factor < 1 || replication_factor as usize > live.len().max(1) {
                    return error(
                        error_code::INVALID_REPLICATION_FACTOR,
                        format!(
                            "Replication factor: {replication_factor} larger than available brokers: {}.",
                            live.len()
                        ),
                    );
                }
                if validate_only {
                    return AdminReply::default();
                }
                let Some(replicas) = place(partitions as usize, replication_factor as usize, &name)
                else {
                    return error(
                        error_code::BROKER_NOT_AVAILABLE,
                        "no live node to place the partitions on".into(),
                    );
                };
                Command::CreateTopic {
                    name,
                    id: uuid::Uuid::new_v4(),
                    replicas,
                    configs,
                }
            }
            AdminOp::DeleteTopic { name } => {
                if !snapshot.topics.contains_key(&name) {
                    return error(
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic `{name}` does not exist"),
                    );
                }
                Command::DeleteTopic { name }
            }
            AdminOp::CreatePartitions {
                name,
                count,
                validate_only,
            } => {
                let Some(topic) = snapshot.topics.get(&name) else {
                    return error(
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic `{name}` does not exist"),
                    );
                };
                if count > self.settings.max_partitions_per_topic {
                    return error(
                        error_code::INVALID_PARTITIONS,
                        format!(
                            "at most {} partitions per topic, asked for {count}",
                            self.settings.max_partitions_per_topic
                        ),
                    );
                }
                if count <= topic.partition_count() {
                    return error(
                        error_code::INVALID_PARTITIONS,
                        format!("topic `{name}` has {} partitions; the new count {count} must be larger", topic.partition_count()),
                    );
                }
                if validate_only {
                    return AdminReply::default();
                }
                let added = (count - topic.partition_count()) as usize;
                let replication_factor = topic.replicas.first().map_or(1, |r| r.len());
                let Some(replicas) = place(added, replication_factor, &name) else {
                    return error(
                        error_code::BROKER_NOT_AVAILABLE,
                        "no live node to place the partitions on".into(),
                    );
                };
                Command::CreatePartitions { name, replicas }
            }
            AdminOp::AlterTopicConfigs { name, configs } => {
                if !snapshot.topics.contains_key(&name) {
                    return error(
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic `{name}` does not exist"),
                    );
                }
                Command::AlterTopicConfigs { name, configs }
            }
        };
        let result = match self.controller.propose(command).await {
            Ok(result) => result,
            Err(e) => {
                tracing::warn!(error = %e, "metadata change not made");
                return error(error_code::REQUEST_TIMED_OUT, e);
            }
        };
        if let Some(refused) = result.error {
            let code = if refused.contains("already exists") {
                error_code::TOPIC_ALREADY_EXISTS
            } else if refused.contains("does not exist") {
                error_code::UNKNOWN_TOPIC_OR_PARTITION
            } else {
                error_code::INVALID_REQUEST
            };
            return error(code, refused);
        }
        // Answered once this node has applied the change and its shards acted on it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.metadata.applied_index() < result.index {
            if std::time::Instant::now() >= deadline {
                return error(
                    error_code::REQUEST_TIMED_OUT,
                    "the change was made but this node has not applied it yet".into(),
                );
            }
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        AdminReply::default()
    }

    pub(crate) async fn drop_topic(&self, topic: &TopicMeta) {
        let _permit = self.snapshot_lock.acquire_permit(1).await;
        let doomed: Vec<(i32, Rc<PartitionEntry>)> = {
            let mut partitions = self.partitions.borrow_mut();
            (0..topic.partition_count())
                .filter_map(|p| partitions.remove(&(topic.name.clone(), p)).map(|e| (p, e)))
                .collect()
        };
        for (partition, _) in &doomed {
            self.unfollow(&(topic.name.clone(), *partition));
        }
        for (_, entry) in &doomed {
            let _ = entry.log.close().await;
        }
        for partition in 0..topic.partition_count() {
            if topic.shard_of(partition, self.shard_count) == Some(self.id) {
                let path = self.settings.partition_dir(&topic.name, partition);
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::error!(path = %path.display(), error = %e, "removing a deleted partition failed");
                    }
                }
            }
        }
    }

    /// Gives this shard's open partitions of `topic` its new configs.
    pub(crate) fn apply_topic_config(&self, topic: &TopicMeta) {
        let config = effective(&self.settings, &topic.configs);
        for partition in 0..topic.partition_count() {
            let entry = self
                .partitions
                .borrow()
                .get(&(topic.name.clone(), partition))
                .cloned();
            if let Some(entry) = entry {
                entry.apply_config(config);
            }
        }
    }
}

pub(crate) fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
