//! Topic metadata changes: executed by the metadata writer (shard 0) for
//! CreateTopics, DeleteTopics, CreatePartitions and config changes, persisted
//! and published as a new snapshot, then told to every shard, which opens,
//! drops or reconfigures the partitions it owns.

use crate::mesh::{AdminOp, AdminReply, ShardMsg};
use crate::metadata::{validate_topic_name, TopicMeta};
use crate::shard::{PartitionEntry, Shard};
use crate::topic_config::effective;
use sluice_protocol::api::error_code;
use std::rc::Rc;
use std::sync::Arc;

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

    pub(crate) async fn execute_admin(&self, op: AdminOp) -> AdminReply {
        assert_eq!(self.id, 0, "metadata has one writer: shard 0");
        let _permit = self.admin_lock.acquire_permit(1).await;
        let snapshot = self.snapshot();
        let error = |code: i16, message: String| AdminReply {
            error_code: code,
            error_message: Some(message),
        };
        let mut changed = None;
        let (next, opened, dropped) = match op {
            AdminOp::CreateTopic {
                name,
                partitions,
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
                if partitions < 1 || partitions > self.settings.max_partitions_per_topic {
                    return error(
                        error_code::INVALID_PARTITIONS,
                        format!(
                            "number of partitions must be 1..={}, got {partitions}",
                            self.settings.max_partitions_per_topic
                        ),
                    );
                }
                if validate_only {
                    return AdminReply::default();
                }
                let first = fnv(&name) as usize % self.shard_count;
                let topic = TopicMeta {
                    name: name.clone(),
                    id: uuid::Uuid::new_v4().to_string(),
                    partition_shards: (0..partitions as usize)
                        .map(|p| ((first + p) % self.shard_count) as u32)
                        .collect(),
                    configs,
                };
                let topic = Arc::new(topic);
                let mut next = (*snapshot).clone();
                next.topics.insert(name.clone(), topic.clone());
                tracing::info!(topic = %name, partitions, "topic created");
                (next, Some(topic), None)
            }
            AdminOp::DeleteTopic { name } => {
                let Some(topic) = snapshot.topics.get(&name) else {
                    return error(
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic `{name}` does not exist"),
                    );
                };
                let mut next = (*snapshot).clone();
                next.topics.remove(&name);
                tracing::info!(topic = %name, "topic deleted");
                (next, None, Some(topic.clone()))
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
                let mut grown = (**topic).clone();
                let first = fnv(&name) as usize % self.shard_count;
                for p in topic.partition_count() as usize..count as usize {
                    grown
                        .partition_shards
                        .push(((first + p) % self.shard_count) as u32);
                }
                let grown = Arc::new(grown);
                let mut next = (*snapshot).clone();
                next.topics.insert(name.clone(), grown.clone());
                tracing::info!(topic = %name, partitions = count, "partitions added");
                (next, Some(grown), None)
            }
            AdminOp::AlterTopicConfigs { name, configs } => {
                let Some(topic) = snapshot.topics.get(&name) else {
                    return error(
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic `{name}` does not exist"),
                    );
                };
                let mut altered = (**topic).clone();
                tracing::info!(topic = %name, from = ?altered.configs, to = ?configs, "topic configs changed");
                altered.configs = configs;
                let altered = Arc::new(altered);
                let mut next = (*snapshot).clone();
                next.topics.insert(name.clone(), altered.clone());
                changed = Some(altered);
                (next, None, None)
            }
        };
        if let Err(e) = self.metadata.replace(next) {
            tracing::error!(error = %e, "writing topic metadata failed");
            return error(
                error_code::KAFKA_STORAGE_ERROR,
                format!("writing topic metadata failed: {e}"),
            );
        }
        if let Some(topic) = opened {
            self.broadcast(|reply| ShardMsg::OpenTopic {
                topic: topic.clone(),
                reply,
            })
            .await;
        }
        if let Some(topic) = changed {
            self.broadcast(|reply| ShardMsg::TopicConfigChanged {
                topic: topic.clone(),
                reply,
            })
            .await;
        }
        if let Some(topic) = dropped {
            self.broadcast(|reply| ShardMsg::DropTopic {
                topic: topic.clone(),
                reply,
            })
            .await;
        }
        AdminReply::default()
    }

    /// Sends a message to every shard (this one included) and waits for all.
    async fn broadcast(&self, message: impl Fn(flume::Sender<()>) -> ShardMsg) {
        let mut answers = Vec::new();
        for peer in &self.peers {
            let (reply, answer) = flume::bounded(1);
            if peer.send_async(message(reply)).await.is_ok() {
                answers.push(answer);
            }
        }
        for answer in answers {
            let _ = answer.recv_async().await;
        }
    }

    pub(crate) async fn drop_topic(&self, topic: &TopicMeta) {
        let _permit = self.snapshot_lock.acquire_permit(1).await;
        let doomed: Vec<(i32, Rc<PartitionEntry>)> = {
            let mut partitions = self.partitions.borrow_mut();
            (0..topic.partition_count())
                .filter_map(|p| partitions.remove(&(topic.name.clone(), p)).map(|e| (p, e)))
                .collect()
        };
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

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
