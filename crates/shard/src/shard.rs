//! One core's world. A `Shard` lives on one executor (it is `!Send`): it owns
//! the partition logs assigned to its core, serves connections accepted on
//! its core, and reaches other shards only through flume messages.

use crate::groups::coordinator::Coordinator;
use crate::groups::offsets::{coordinator_shard, OffsetStore};
use crate::log_limit::LogLimiter;
use crate::memory::MemoryBudget;
use crate::mesh::{
    AdminOp, AdminReply, FetchOutcome, GroupInfo, ListOffsetsOutcome, PartitionOp, PartitionReply,
    ProduceOutcome, ShardMsg,
};
use crate::metadata::{validate_topic_name, MetadataStore, Snapshot, TopicMeta};
use crate::producers::ProducerIds;
use crate::settings::BrokerSettings;
use crate::partition::Partition;
use crate::storage_dir::{open_dir, Dir, Log};
use crate::topic_config::effective;
use sluice_protocol::api::error_code;
use sluice_storage::event::Event;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A partition this shard owns, on the broker's storage backend.
pub type PartitionEntry = Partition<Dir>;

type PartitionKey = (String, i32);

pub struct Shard {
    pub id: usize,
    pub shard_count: usize,
    pub settings: Arc<BrokerSettings>,
    pub metadata: Arc<MetadataStore>,
    peers: Vec<flume::Sender<ShardMsg>>,
    partitions: RefCell<HashMap<PartitionKey, Rc<PartitionEntry>>>,
    /// Serializes opening logs (and, on shard 0, metadata changes).
    open_lock: glommio::sync::Semaphore,
    admin_lock: glommio::sync::Semaphore,
    /// Held while producer snapshots are written off the shard thread, and by
    /// topic deletion: no snapshot lands in a deleted (or recreated) directory.
    snapshot_lock: glommio::sync::Semaphore,
    /// Notified after every successful append on this shard (long-poll fetches).
    pub data_arrived: Event,
    pub stopping: Cell<bool>,
    /// Requests being handled on this shard's connections.
    pub requests_in_flight: Cell<usize>,
    pub requests_idle: Event,
    /// The group coordinator of this shard (set once its offset store is open).
    coordinator: RefCell<Option<Rc<Coordinator>>>,
    /// Shard 0 only: the producer id allocator.
    producer_ids: RefCell<Option<ProducerIds>>,
    /// Set by `close_all`: no partition is opened any more.
    closing: Cell<bool>,
    /// Decompression buffer of produce validation (borrowed only in a synchronous step).
    pub validation_scratch: RefCell<Vec<u8>>,
    /// Log lines about bad client input: at most one per interval.
    pub bad_input_log: LogLimiter,
    /// Request bytes being read and response bytes waiting to be written on this core.
    pub memory: Rc<MemoryBudget>,
}

impl Shard {
    pub fn new(
        id: usize,
        settings: Arc<BrokerSettings>,
        metadata: Arc<MetadataStore>,
        peers: Vec<flume::Sender<ShardMsg>>,
    ) -> Shard {
        let memory = MemoryBudget::new(settings.memory_budget_bytes(id));
        Shard {
            id,
            shard_count: peers.len(),
            settings,
            metadata,
            peers,
            partitions: RefCell::new(HashMap::new()),
            open_lock: glommio::sync::Semaphore::new(1),
            admin_lock: glommio::sync::Semaphore::new(1),
            snapshot_lock: glommio::sync::Semaphore::new(1),
            data_arrived: Event::default(),
            stopping: Cell::new(false),
            requests_in_flight: Cell::new(0),
            requests_idle: Event::default(),
            coordinator: RefCell::new(None),
            producer_ids: RefCell::new(None),
            closing: Cell::new(false),
            validation_scratch: RefCell::new(Vec::new()),
            bad_input_log: LogLimiter::new(Duration::from_secs(1)),
            memory,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.metadata.snapshot()
    }

    /// Opens the offset store of the groups this shard coordinates.
    pub async fn open_coordinator(&self) -> Result<(), String> {
        let offsets = OffsetStore::open(&self.settings, self.id, self.shard_count).await?;
        *self.coordinator.borrow_mut() = Some(Rc::new(Coordinator::new(offsets)));
        if self.id == 0 {
            *self.producer_ids.borrow_mut() = Some(ProducerIds::open(&self.settings.data_dir)?);
        }
        Ok(())
    }

    /// A new producer id, from shard 0.
    pub async fn allocate_producer_id(&self) -> Result<i64, String> {
        if self.id == 0 {
            let ids = self.producer_ids.borrow();
            let ids = ids.as_ref().ok_or("producer ids are not open")?;
            return ids
                .allocate()
                .map_err(|e| format!("reserving producer ids: {e}"));
        }
        let (reply, answer) = flume::bounded(1);
        self.peers[0]
            .send_async(ShardMsg::AllocateProducerId { reply })
            .await
            .map_err(|_| "shard 0 is gone".to_string())?;
        answer
            .recv_async()
            .await
            .map_err(|_| "shard 0 dropped the request".to_string())?
    }

    pub fn coordinator(&self) -> Result<Rc<Coordinator>, String> {
        self.coordinator
            .borrow()
            .clone()
            .ok_or_else(|| "the group coordinator is not open".to_string())
    }

    /// Sends `message` (built around a reply channel) to shard `owner` and
    /// waits for the answer; `None` if that shard is gone or dropped it.
    async fn ask<T>(&self, owner: usize, message: impl FnOnce(flume::Sender<T>) -> ShardMsg) -> Option<T> {
        let (reply, answer) = flume::bounded(1);
        self.peers[owner].send_async(message(reply)).await.ok()?;
        answer.recv_async().await.ok()
    }

    /// Sends a request to the shard that coordinates its group and returns its answer.
    pub async fn forward(
        &self,
        owner: usize,
        frame: sluice_protocol::frame::RequestFrame,
    ) -> Result<Option<bytes::Bytes>, String> {
        self.ask(owner, |reply| ShardMsg::Forward { frame, reply })
            .await
            .unwrap_or_else(|| Err("the coordinator shard did not answer".to_string()))
    }

    /// A group's committed offsets, from its coordinator shard.
    pub async fn committed_offsets(
        &self,
        group: &str,
    ) -> Result<crate::groups::offsets::GroupOffsets, String> {
        let owner = coordinator_shard(group, self.shard_count);
        if owner == self.id {
            return Ok(self.coordinator()?.committed(group));
        }
        let group = group.to_string();
        self.ask(owner, |reply| ShardMsg::CommittedOffsets { group, reply })
            .await
            .unwrap_or_else(|| Err("the coordinator shard did not answer".to_string()))
    }

    /// Every group of every shard.
    pub async fn all_groups(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for peer in &self.peers {
            let (reply, answer) = flume::bounded(1);
            if peer
                .send_async(ShardMsg::ListGroups { reply })
                .await
                .is_ok()
            {
                out.extend(answer.recv_async().await.unwrap_or_default());
            }
        }
        out.sort();
        out
    }

    fn local_groups(&self) -> Vec<(String, String, String)> {
        match self.coordinator.borrow().as_ref() {
            Some(c) => c
                .list()
                .into_iter()
                .map(|g| (g.group_id, g.protocol_type, g.state))
                .collect(),
            None => Vec::new(),
        }
    }

    fn local_describe(&self, group: &str) -> Option<GroupInfo> {
        let coordinator = self.coordinator.borrow().clone()?;
        coordinator.describe(group).map(|d| GroupInfo {
            state: d.state,
            protocol_type: d.protocol_type,
            protocol: d.protocol,
            members: d.members,
        })
    }

    pub async fn describe_group(&self, group: &str) -> Option<GroupInfo> {
        let owner = coordinator_shard(group, self.shard_count);
        if owner == self.id {
            return self.local_describe(group);
        }
        let group = group.to_string();
        self.ask(owner, |reply| ShardMsg::DescribeGroup { group, reply })
            .await
            .flatten()
    }

    pub async fn delete_group(&self, group: &str) -> i16 {
        let owner = coordinator_shard(group, self.shard_count);
        if owner == self.id {
            return match self.coordinator() {
                Ok(c) => c.delete(group).await,
                Err(_) => error_code::UNKNOWN_SERVER_ERROR,
            };
        }
        let group = group.to_string();
        self.ask(owner, |reply| ShardMsg::DeleteGroup { group, reply })
            .await
            .unwrap_or(error_code::UNKNOWN_SERVER_ERROR)
    }

    /// Opens (and recovers) every partition this shard owns.
    pub async fn open_owned_partitions(&self) -> Result<(), String> {
        let snapshot = self.snapshot();
        for topic in snapshot.topics.values() {
            self.open_topic(topic).await?;
        }
        Ok(())
    }

    async fn open_topic(&self, topic: &TopicMeta) -> Result<(), String> {
        for partition in 0..topic.partition_count() {
            if topic.shard_of(partition, self.shard_count) == Some(self.id) {
                self.open_partition(topic, partition).await?;
            }
        }
        Ok(())
    }

    async fn open_partition(
        &self,
        topic: &TopicMeta,
        partition: i32,
    ) -> Result<Rc<PartitionEntry>, String> {
        let _permit = self.open_lock.acquire_permit(1).await;
        if self.closing.get() {
            return Err(format!(
                "shard {} is stopping: not opening {}-{partition}",
                self.id, topic.name
            ));
        }
        let key = (topic.name.clone(), partition);
        if let Some(entry) = self.partitions.borrow().get(&key) {
            return Ok(entry.clone());
        }
        let config = effective(&self.settings, &topic.configs);
        let path = self.settings.partition_dir(&topic.name, partition);
        let dir = open_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = format!("{}-{partition}", topic.name);
        let entry = Rc::new(Partition::open(dir, config, name.clone(), path).await?);
        let offsets = entry.log.offsets();
        tracing::info!(shard = self.id, partition = %name, log_start_offset = offsets.log_start_offset,
            high_watermark = offsets.high_watermark, segments = offsets.segment_count, "partition opened");
        self.partitions.borrow_mut().insert(key, entry.clone());
        Ok(entry)
    }

    /// The partition's entry if this shard owns it (opening it if needed).
    async fn local_partition(&self, topic: &str, partition: i32) -> Option<Rc<PartitionEntry>> {
        if let Some(entry) = self
            .partitions
            .borrow()
            .get(&(topic.to_string(), partition))
        {
            return Some(entry.clone());
        }
        let snapshot = self.snapshot();
        let meta = snapshot.topics.get(topic)?;
        if meta.shard_of(partition, self.shard_count) != Some(self.id) {
            return None;
        }
        match self.open_partition(meta, partition).await {
            Ok(entry) => Some(entry),
            Err(e) => {
                tracing::error!(shard = self.id, "{e}");
                None
            }
        }
    }

    /// Runs `op` on the shard that owns the partition: here, or by message.
    /// Without an `.await` before the hand-off, so ops issued in order by one
    /// task reach each partition in that order.
    pub async fn call(&self, topic: &str, partition: i32, op: PartitionOp) -> PartitionReply {
        let owner = self
            .snapshot()
            .topics
            .get(topic)
            .and_then(|t| t.shard_of(partition, self.shard_count));
        match owner {
            None => unknown_partition_reply(&op),
            Some(owner) if owner == self.id => self.execute(topic, partition, op).await,
            Some(owner) => {
                let (reply, answer) = flume::bounded(1);
                let message = ShardMsg::Partition {
                    topic: topic.to_string(),
                    partition,
                    op,
                    reply,
                };
                if self.peers[owner].send_async(message).await.is_err() {
                    return storage_error_reply();
                }
                answer
                    .recv_async()
                    .await
                    .unwrap_or_else(|_| storage_error_reply())
            }
        }
    }

    async fn execute(&self, topic: &str, partition: i32, op: PartitionOp) -> PartitionReply {
        let entry = self
            .partitions
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned();
        let entry = match entry {
            Some(entry) => entry,
            None if self.closing.get() => return storage_error_reply(),
            None => match self.local_partition(topic, partition).await {
                Some(entry) => entry,
                None => return unknown_partition_reply(&op),
            },
        };
        match op {
            PartitionOp::Produce { records } => {
                let outcome = entry.produce(records).await;
                if outcome.error_code == error_code::NONE {
                    self.data_arrived.notify();
                }
                PartitionReply::Produce(outcome)
            }
            PartitionOp::Fetch {
                offset,
                max_bytes,
                strict_max_bytes,
            } => PartitionReply::Fetch(entry.fetch(offset, max_bytes, strict_max_bytes).await),
            PartitionOp::ListOffsets { timestamp } => {
                PartitionReply::ListOffsets(entry.list_offsets(timestamp).await)
            }
            PartitionOp::DeleteRecords { before } => {
                PartitionReply::DeleteRecords(entry.delete_records(before).await)
            }
        }
    }

    /// Completes when any of the partitions has data past its offset, or at the deadline.
    pub async fn wait_for_data(&self, parts: Vec<(String, i32, i64)>, deadline: Instant) {
        let mut by_owner: HashMap<usize, Vec<(String, i32, i64)>> = HashMap::new();
        let snapshot = self.snapshot();
        for (topic, partition, offset) in parts {
            if let Some(owner) = snapshot
                .topics
                .get(&topic)
                .and_then(|t| t.shard_of(partition, self.shard_count))
            {
                by_owner
                    .entry(owner)
                    .or_default()
                    .push((topic, partition, offset));
            }
        }
        if by_owner.is_empty() {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            return;
        }
        let (tx, rx) = flume::unbounded();
        let mut local = None;
        for (owner, parts) in by_owner {
            if owner == self.id {
                local = Some(parts);
            } else {
                let message = ShardMsg::WaitForData {
                    parts,
                    deadline,
                    reply: tx.clone(),
                };
                let _ = self.peers[owner].send_async(message).await;
            }
        }
        let remote = async {
            let _ = rx.recv_async().await;
        };
        match local {
            Some(parts) => {
                futures_lite::future::or(self.wait_local(&parts, deadline), remote).await
            }
            None => {
                futures_lite::future::or(
                    remote,
                    glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())),
                )
                .await
            }
        }
    }

    async fn wait_local(&self, parts: &[(String, i32, i64)], deadline: Instant) {
        let ready = || {
            let partitions = self.partitions.borrow();
            parts.iter().any(|(topic, partition, offset)| {
                // `offset` is the high watermark the fetch last saw: wait for more.
                partitions
                    .get(&(topic.clone(), *partition))
                    .is_some_and(|e| e.log.high_watermark() > *offset)
            })
        };
        let wait = async {
            loop {
                let listen = self.data_arrived.listen();
                if ready() {
                    return;
                }
                listen.await;
            }
        };
        futures_lite::future::or(
            wait,
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())),
        )
        .await
    }

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

    async fn execute_admin(&self, op: AdminOp) -> AdminReply {
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

    async fn drop_topic(&self, topic: &TopicMeta) {
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

    /// Handles one message from another shard (spawned as its own task).
    pub async fn handle_message(self: Rc<Self>, message: ShardMsg) {
        match message {
            ShardMsg::Partition {
                topic,
                partition,
                op,
                reply,
            } => {
                let answer = self.execute(&topic, partition, op).await;
                let _ = reply.send_async(answer).await;
            }
            ShardMsg::WaitForData {
                parts,
                deadline,
                reply,
            } => {
                self.wait_local(&parts, deadline).await;
                let _ = reply.send_async(()).await;
            }
            ShardMsg::Admin { op, reply } => {
                let answer = self.execute_admin(op).await;
                let _ = reply.send_async(answer).await;
            }
            ShardMsg::OpenTopic { topic, reply } => {
                if let Err(e) = self.open_topic(&topic).await {
                    tracing::error!(shard = self.id, "{e}");
                }
                let _ = reply.send_async(()).await;
            }
            ShardMsg::TopicConfigChanged { topic, reply } => {
                self.apply_topic_config(&topic);
                let _ = reply.send_async(()).await;
            }
            ShardMsg::DropTopic { topic, reply } => {
                self.drop_topic(&topic).await;
                let _ = reply.send_async(()).await;
            }
            ShardMsg::Forward { frame, reply } => {
                // Group requests only (never a fetch): no connection memory of their own here.
                let connection = Rc::new(crate::memory::ConnectionMemory::default());
                let answer = crate::handlers::handle_here(&self, &connection, frame).await;
                let _ = reply.send_async(answer).await;
            }
            ShardMsg::CommittedOffsets { group, reply } => {
                let answer = self.coordinator().map(|c| c.committed(&group));
                let _ = reply.send_async(answer).await;
            }
            ShardMsg::ListGroups { reply } => {
                let _ = reply.send_async(self.local_groups()).await;
            }
            ShardMsg::DescribeGroup { group, reply } => {
                let _ = reply.send_async(self.local_describe(&group)).await;
            }
            ShardMsg::DeleteGroup { group, reply } => {
                let answer = match self.coordinator() {
                    Ok(c) => c.delete(&group).await,
                    Err(_) => error_code::UNKNOWN_SERVER_ERROR,
                };
                let _ = reply.send_async(answer).await;
            }
            ShardMsg::AllocateProducerId { reply } => {
                let answer = self.allocate_producer_id().await;
                let _ = reply.send_async(answer).await;
            }
            ShardMsg::Shutdown => self.stopping.set(true),
        }
    }

    /// Gives this shard's open partitions of `topic` its new configs.
    fn apply_topic_config(&self, topic: &TopicMeta) {
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

    /// One compaction pass over this shard's compacted logs, one log at a
    /// time (each run bounds its own memory), from the background task queue.
    pub async fn compact_logs(&self) {
        let entries: Vec<Rc<PartitionEntry>> = self
            .partitions
            .borrow()
            .values()
            .filter(|e| e.config.get().compact)
            .cloned()
            .collect();
        for entry in entries {
            if self.stopping.get() {
                return;
            }
            let config = entry.config.get();
            if !config.compact {
                continue;
            }
            let now = sluice_storage::now_ms() as i64;
            if let Err(e) = entry.log.compact(&config.compaction, now).await {
                tracing::error!(partition = entry.log.name(), error = %e, "compaction failed; the log is served as it was");
            }
        }
    }

    /// Expires group sessions (called often) .
    pub fn expire_group_sessions(&self) {
        if let Some(c) = self.coordinator.borrow().as_ref() {
            c.expire_sessions();
        }
    }

    /// Applies retention (and relaxed-flush syncs) on this shard's logs.
    pub async fn maintain(&self) {
        let coordinator = self.coordinator.borrow().clone();
        if let Some(c) = coordinator {
            c.expire_offsets(self.settings.offsets_retention_ms).await;
            c.offsets.snapshot(false).await;
        }
        // Snapshot files are written with blocking fsyncs: on glommio's
        // blocking thread, a few at a time, so the shard keeps serving (500
        // partitions' snapshots took the shard away for up to a second). Each
        // chunk is prepared and written under the lock, from partitions still
        // open: none is being deleted meanwhile, and deletion waits one chunk.
        let listed: Vec<(PartitionKey, Rc<PartitionEntry>)> = self
            .partitions
            .borrow()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        for chunk in listed.chunks(SNAPSHOTS_PER_BLOCKING_CALL) {
            let _permit = self.snapshot_lock.acquire_permit(1).await;
            let pending: Vec<(std::path::PathBuf, Vec<u8>)> = chunk
                .iter()
                .filter(|(key, entry)| {
                    self.partitions
                        .borrow()
                        .get(key)
                        .is_some_and(|open| Rc::ptr_eq(open, entry))
                })
                .filter_map(|(_, entry)| entry.prepare_producer_snapshot())
                .collect();
            if pending.is_empty() {
                continue;
            }
            glommio::executor()
                .spawn_blocking(move || {
                    for (dir, bytes) in pending {
                        crate::partition::write_producer_snapshot_file(&dir, &bytes);
                    }
                })
                .await;
        }
        let logs: Vec<Rc<Log>> = listed.iter().map(|(_, e)| e.log.clone()).collect();
        let now = sluice_storage::now_ms();
        for log in logs {
            if let Err(e) = log.enforce_retention(now).await {
                tracing::error!(partition = log.name(), error = %e, "retention failed");
            }
        }
        self.flush_due_logs().await;
    }

    /// Under `flush = unsafe_interval_ms=N`: syncs every log written since its
    /// last sync, if N ms have passed. Runs on its own N-ms timer, apart from
    /// [`Shard::maintain`], whose snapshot writes (blocking fsyncs) would
    /// otherwise stall the shard every N ms.
    pub async fn flush_due_logs(&self) {
        let logs: Vec<Rc<Log>> = self
            .partitions
            .borrow()
            .values()
            .map(|e| e.log.clone())
            .collect();
        for log in logs {
            if let Err(e) = log.flush_if_due().await {
                tracing::error!(partition = log.name(), error = %e, "flush failed");
            }
        }
    }

    /// Closes every log cleanly (flush, indexes, clean-shutdown marker).
    pub async fn close_all(&self) {
        self.closing.set(true);
        // Wait for any open in progress, so no log is opened behind our back.
        let _permit = self.open_lock.acquire_permit(1).await;
        let coordinator = self.coordinator.borrow_mut().take();
        if let Some(c) = coordinator {
            c.offsets.close().await;
        }
        let entries: Vec<Rc<PartitionEntry>> = self
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, e)| e)
            .collect();
        for entry in entries {
            let _ = entry.log.flush().await;
            if let Some((dir, bytes)) = entry.prepare_producer_snapshot() {
                crate::partition::write_producer_snapshot_file(&dir, &bytes);
            }
            if let Err(e) = entry.log.close().await {
                tracing::error!(partition = entry.log.name(), error = %e, "closing partition failed");
            }
        }
    }

    /// Waits until no request is being handled on this shard, at most `limit`.
    pub async fn drain_requests(&self, limit: Duration) {
        let wait = async {
            while self.requests_in_flight.get() > 0 {
                self.requests_idle.listen().await;
            }
        };
        futures_lite::future::or(wait, glommio::timer::sleep(limit)).await;
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn unknown_partition_reply(op: &PartitionOp) -> PartitionReply {
    let code = error_code::UNKNOWN_TOPIC_OR_PARTITION;
    match op {
        PartitionOp::Produce { .. } => PartitionReply::Produce(ProduceOutcome {
            error_code: code,
            error_message: Some("this topic or partition does not exist".into()),
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }),
        PartitionOp::Fetch { .. } => PartitionReply::Fetch(FetchOutcome {
            error_code: code,
            high_watermark: -1,
            log_start_offset: -1,
            ..Default::default()
        }),
        PartitionOp::ListOffsets { .. } => PartitionReply::ListOffsets(ListOffsetsOutcome {
            error_code: code,
            offset: -1,
            timestamp: -1,
        }),
        PartitionOp::DeleteRecords { .. } => PartitionReply::DeleteRecords((code, -1)),
    }
}

fn storage_error_reply() -> PartitionReply {
    PartitionReply::Fetch(FetchOutcome {
        error_code: error_code::KAFKA_STORAGE_ERROR,
        ..Default::default()
    })
}

/// Producer snapshots written per call to the blocking thread (and per hold of
/// `snapshot_lock`): other blocking work of the shard (truncating a finished
/// segment, creating a directory) and topic deletion wait at most this many.
const SNAPSHOTS_PER_BLOCKING_CALL: usize = 16;

