//! One core's world. A `Shard` lives on one executor (it is `!Send`): it owns
//! the partition logs assigned to its core, serves connections accepted on
//! its core, and reaches other shards only through flume messages.

use crate::groups::coordinator::Coordinator;
use crate::groups::offsets::{bucket_of, coordinator_shard, OffsetStore, OFFSETS_TOPIC};
use crate::log_limit::LogLimiter;
use crate::memory::MemoryBudget;
use crate::mesh::{
    FetchOutcome, GroupInfo, ListOffsetsOutcome, PartitionOp, PartitionReply, ProduceOutcome,
    ShardMsg, WaitFor,
};
use crate::metadata::{MetadataStore, Snapshot, TopicMeta};
use crate::partition::Partition;
use crate::producers::ProducerIds;
use crate::settings::BrokerSettings;
use crate::storage_dir::{open_dir, Dir};
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

pub(crate) type PartitionKey = (String, i32);

pub struct Shard {
    pub id: usize,
    pub shard_count: usize,
    pub settings: Arc<BrokerSettings>,
    pub metadata: Arc<MetadataStore>,
    pub(crate) peers: Vec<flume::Sender<ShardMsg>>,
    pub(crate) partitions: RefCell<HashMap<PartitionKey, Rc<PartitionEntry>>>,
    /// Serializes opening logs (and, on shard 0, metadata changes).
    pub(crate) open_lock: glommio::sync::Semaphore,
    pub(crate) admin_lock: glommio::sync::Semaphore,
    /// Held while producer snapshots are written off the shard thread, and by
    /// topic deletion: no snapshot lands in a deleted (or recreated) directory.
    pub(crate) snapshot_lock: glommio::sync::Semaphore,
    /// Notified after every successful append on this shard (long-poll fetches).
    /// Shared with the offset store, which appends to its buckets directly.
    pub data_arrived: Rc<Event>,
    pub stopping: Cell<bool>,
    /// Requests being handled on this shard's connections.
    pub requests_in_flight: Cell<usize>,
    pub requests_idle: Event,
    /// The group coordinator of this shard (set once its offset store is open).
    pub(crate) coordinator: RefCell<Option<Rc<Coordinator>>>,
    /// Shard 0 only: the producer id allocator.
    pub(crate) producer_ids: RefCell<Option<ProducerIds>>,
    /// One block request at a time.
    producer_ids_lock: glommio::sync::Semaphore,
    /// Set by `close_all`: no partition is opened any more.
    pub(crate) closing: Cell<bool>,
    /// Decompression buffer of produce validation (borrowed only in a synchronous step).
    pub validation_scratch: RefCell<Vec<u8>>,
    /// Log lines about bad client input: at most one per interval.
    pub bad_input_log: LogLimiter,
    /// Lines about answers carrying an error code: at most one per
    /// interval, with the count of those left out.
    pub error_answer_log: LogLimiter,
    /// Request bytes being read and response bytes waiting to be written on this core.
    pub memory: Rc<MemoryBudget>,
    /// The cluster's metadata log: topic changes are proposed to it.
    pub controller: sluice_cluster::ControllerHandle,
    /// Replica fetchers of this shard, by the leader node they fetch from.
    pub(crate) fetchers: RefCell<HashMap<i32, Rc<crate::fetcher::Fetcher>>>,
    /// The batches this core's logs wrote last, for fetches at their heads.
    pub tail_cache: Rc<sluice_storage::TailCache>,
    /// Incremental fetch sessions of the connections on this core.
    pub fetch_sessions: RefCell<crate::fetch_sessions::FetchSessions>,
    /// SEND_ZC for large response buffers, with its threshold (None: off).
    pub zero_copy: Option<(Rc<crate::zero_copy::ZeroCopy>, usize)>,
    /// What `/metrics` reports of this shard (see `metrics.rs`).
    pub counters: crate::metrics::ShardCounters,
}

impl Shard {
    pub fn new(
        id: usize,
        settings: Arc<BrokerSettings>,
        metadata: Arc<MetadataStore>,
        peers: Vec<flume::Sender<ShardMsg>>,
        controller: sluice_cluster::ControllerHandle,
    ) -> Shard {
        let memory = MemoryBudget::new(settings.memory_budget_bytes(id));
        let settings_tail_cache = settings.tail_cache_bytes(id);
        let fetch_session_slots = settings.fetch_session_cache_slots;
        let settings_zc_threshold = settings.send_zc_threshold_bytes(id);
        let shard_count = peers.len();
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
            data_arrived: Rc::new(Event::default()),
            stopping: Cell::new(false),
            requests_in_flight: Cell::new(0),
            requests_idle: Event::default(),
            coordinator: RefCell::new(None),
            producer_ids: RefCell::new(None),
            producer_ids_lock: glommio::sync::Semaphore::new(1),
            closing: Cell::new(false),
            validation_scratch: RefCell::new(Vec::new()),
            bad_input_log: LogLimiter::new(Duration::from_secs(1)),
            error_answer_log: LogLimiter::new(Duration::from_secs(1)),
            memory,
            controller,
            fetchers: RefCell::new(HashMap::new()),
            tail_cache: sluice_storage::TailCache::new(settings_tail_cache),
            fetch_sessions: RefCell::new(crate::fetch_sessions::FetchSessions::new(
                fetch_session_slots,
                id,
                shard_count,
            )),
            zero_copy: match settings_zc_threshold {
                0 => None,
                min => crate::zero_copy::ZeroCopy::start(id, min).map(|zc| (zc, min)),
            },
            counters: crate::metrics::ShardCounters::default(),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.metadata.snapshot()
    }

    /// Counts and logs (rate-limited) an answer carrying a Kafka error code
    /// for `subject` (a partition, topic, group, config resource, ...);
    /// NONE is neither.
    pub fn error_answer(&self, api_key: i16, subject: std::fmt::Arguments, code: i16) {
        if code == error_code::NONE {
            return;
        }
        self.counters.error(api_key, code);
        if let Some(suppressed) = self.error_answer_log.allow() {
            let api = sluice_protocol::api::api_name(api_key);
            tracing::info!(
                shard = self.id,
                api,
                subject = %subject,
                code = %error_code::name(code),
                "answered with an error ({suppressed} more error answers not logged since the last)"
            );
        }
    }

    /// This shard's figures for a scrape of `/metrics`.
    pub fn metrics_snapshot(&self) -> crate::metrics::ShardSnapshot {
        let mut snapshot = crate::metrics::ShardSnapshot {
            shard: self.id,
            cache: self.tail_cache.stats(),
            storage: sluice_storage::stats::snapshot(),
            controller_leader: self.controller.leader().unwrap_or(-1),
            memory_held_bytes: self.memory.used() as u64,
            memory_budget_bytes: self.memory.capacity() as u64,
            ..Default::default()
        };
        self.counters.snapshot_into(&mut snapshot);
        for ((topic, partition), entry) in self.open_partitions() {
            let offsets = entry.log.offsets();
            snapshot.write_pending_bytes += entry.log.pending_bytes();
            snapshot.write_buffer_bytes += entry.log.write_buffer_bytes();
            let replica = &entry.replica;
            snapshot.partitions.push(crate::metrics::PartitionGauges {
                topic,
                partition,
                leader: replica.leader.get() == self.settings.node_id,
                log_bytes: offsets.size_bytes,
                log_start_offset: offsets.log_start_offset,
                high_watermark: entry.high_watermark(),
                replicas: replica.replicas.borrow().len(),
                isr: replica.isr.borrow().len(),
            });
        }
        if let Ok(coordinator) = self.coordinator() {
            for group in coordinator.offsets.groups_with_offsets() {
                for ((topic, partition), committed) in coordinator.offsets.fetch(&group) {
                    snapshot.committed.push(crate::metrics::CommittedGauge {
                        group: group.clone(),
                        topic,
                        partition,
                        offset: committed.offset,
                    });
                }
            }
        }
        snapshot
    }

    /// Opens the offset store of the groups this shard coordinates.
    pub async fn open_coordinator(&self) -> Result<(), String> {
        let offsets = OffsetStore::new(&self.settings, self.data_arrived.clone());
        *self.coordinator.borrow_mut() = Some(Rc::new(Coordinator::new(offsets)));
        if self.id == 0 {
            *self.producer_ids.borrow_mut() = Some(ProducerIds::open(&self.settings.data_dir)?);
        }
        Ok(())
    }

    /// A new producer id, from shard 0.
    /// A producer id unique in the cluster, from the block of ids shard 0
    /// took through the metadata log (a new block when it runs out).
    pub async fn allocate_producer_id(&self) -> Result<i64, String> {
        if self.id == 0 {
            let _permit = self.producer_ids_lock.acquire_permit(1).await;
            loop {
                let floor = {
                    let ids = self.producer_ids.borrow();
                    let ids = ids.as_ref().ok_or("producer ids are not open")?;
                    if let Some(id) = ids.take() {
                        return Ok(id);
                    }
                    ids.floor
                };
                let from = self.controller.metadata().next_producer_id.max(floor);
                let to = from + crate::producers::ID_BLOCK_SIZE;
                let result = self
                    .controller
                    .propose(sluice_cluster::Command::AllocateProducerIds { from, to })
                    .await?;
                if result.error.is_none() {
                    if let Some(ids) = self.producer_ids.borrow().as_ref() {
                        ids.add_block(from, to);
                    }
                    continue;
                }
                // Another node took that block first: wait until this node
                // has applied it, then ask for the next one.
                while self.controller.metadata().applied < result.index {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            }
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
    async fn ask<T>(
        &self,
        owner: usize,
        message: impl FnOnce(flume::Sender<T>) -> ShardMsg,
    ) -> Option<T> {
        let (reply, answer) = flume::bounded(1);
        self.peers[owner].send_async(message(reply)).await.ok()?;
        answer.recv_async().await.ok()
    }

    /// Sends a request to the shard that coordinates its group and returns its answer.
    pub async fn forward(
        &self,
        owner: usize,
        frame: sluice_protocol::frame::RequestFrame,
    ) -> crate::handlers::HandlerResult {
        self.ask(owner, |reply| ShardMsg::Forward { frame, reply })
            .await
            .unwrap_or_else(|| Err("the coordinator shard did not answer".to_string()))
    }

    /// The node coordinating `group` (id, host, port): the leader of the
    /// group's bucket, a partition of the replicated `__consumer_offsets`
    /// topic (as in Kafka). `None` while that topic does not exist or the
    /// bucket has no leader.
    pub fn coordinator_node(&self, group: &str) -> Option<(i32, String, i32)> {
        let snapshot = self.snapshot();
        let topic = snapshot.topics.get(OFFSETS_TOPIC)?;
        let leader = topic.leader(bucket_of(group) as i32, self.settings.node_id)?;
        if leader == self.settings.node_id {
            return Some((
                leader,
                self.settings.advertised_host.clone(),
                self.settings.advertised_port,
            ));
        }
        let cluster = self.controller.metadata();
        let node = &cluster.nodes.get(&leader)?.info;
        Some((node.id, node.kafka_host.clone(), node.kafka_port))
    }

    /// Creates `__consumer_offsets` if it does not exist yet (the first
    /// FindCoordinator of the cluster): one partition per offset bucket,
    /// compacted, with `offsets_topic_replication_factor` replicas (at most
    /// the live nodes).
    pub async fn ensure_offsets_topic(&self) {
        if self.snapshot().topics.contains_key(OFFSETS_TOPIC) {
            return;
        }
        let cluster = self.controller.metadata();
        let live = cluster.live_nodes().len().max(1) as i32;
        // As Kafka: not with fewer replicas than asked while known nodes are
        // down (FindCoordinator answers COORDINATOR_NOT_AVAILABLE meanwhile);
        // a cluster smaller than the setting gets one replica per node. The
        // cluster has at least its controller voters, registered or not: the
        // first FindCoordinator of a cluster whose nodes are still starting
        // must not make the topic with fewer replicas for good.
        let known = cluster
            .nodes
            .len()
            .max(self.settings.controller_voters)
            .max(1);
        let wanted = self
            .settings
            .offsets_topic_replication_factor
            .min(known as i32);
        if live < wanted {
            return;
        }
        let op = crate::mesh::AdminOp::CreateTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions: crate::groups::offsets::OFFSET_BUCKETS as i32,
            replication_factor: self.settings.offsets_topic_replication_factor.min(live),
            configs: [
                ("cleanup.policy".to_string(), "compact".to_string()),
                ("segment.bytes".to_string(), (16u64 << 20).to_string()),
            ]
            .into(),
            validate_only: false,
        };
        let reply = self.admin(op).await;
        if reply.error_code != error_code::NONE
            && reply.error_code != error_code::TOPIC_ALREADY_EXISTS
        {
            tracing::warn!(error = ?reply.error_message, "creating the offsets topic failed");
        }
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

    pub(crate) fn local_groups(&self) -> Vec<(String, String, String)> {
        match self.coordinator.borrow().as_ref() {
            Some(c) => c
                .list()
                .into_iter()
                .map(|g| (g.group_id, g.protocol_type, g.state))
                .collect(),
            None => Vec::new(),
        }
    }

    pub(crate) fn local_describe(&self, group: &str) -> Option<GroupInfo> {
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

    pub(crate) async fn open_topic(&self, topic: &TopicMeta) -> Result<(), String> {
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
        let mut config = effective(&self.settings, &topic.configs);
        if topic.name == OFFSETS_TOPIC {
            // Small records, 16 buckets: don't reserve the default's 16 MiB each.
            config.log.preallocate_bytes = config.log.preallocate_bytes.min(1 << 20);
        }
        let path = self.settings.partition_dir(&topic.name, partition);
        let dir = open_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = format!("{}-{partition}", topic.name);
        let entry =
            Rc::new(Partition::open(dir, config, name.clone(), path, self.settings.node_id).await?);
        entry.log.set_cache(self.tail_cache.register());
        let offsets = entry.log.offsets();
        tracing::info!(shard = self.id, partition = %name, log_start_offset = offsets.log_start_offset,
            log_end_offset = offsets.high_watermark, segments = offsets.segment_count, "partition opened");
        self.partitions.borrow_mut().insert(key, entry.clone());
        // Its role as the latest metadata has it (the snapshot may be newer than `topic`).
        let latest = self.snapshot();
        let current = latest.topics.get(&topic.name).map_or(topic, |t| &**t);
        self.apply_replica_state(current, partition, &entry);
        Ok(entry)
    }

    /// The partition's entry if this shard owns it (opening it if needed).
    pub(crate) async fn local_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Option<Rc<PartitionEntry>> {
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

    /// The partitions open on this shard, listed (to visit them across awaits).
    pub(crate) fn open_partitions(&self) -> Vec<(PartitionKey, Rc<PartitionEntry>)> {
        self.partitions
            .borrow()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Runs `op` on the shard that owns the partition: here, or by message.
    /// Without an `.await` before the hand-off, so ops issued in order by one
    /// task reach each partition in that order.
    pub async fn call(&self, topic: &str, partition: i32, op: PartitionOp) -> PartitionReply {
        let snapshot = self.snapshot();
        let meta = snapshot.topics.get(topic);
        let owner = meta.and_then(|t| t.shard_of(partition, self.shard_count));
        let node = self.settings.node_id;
        match owner {
            // Another node leads it: the client refreshes its metadata and goes there.
            _ if meta.is_some_and(|t| t.leader(partition, node).is_some_and(|l| l != node)) => {
                partition_error_reply(&op, error_code::NOT_LEADER_OR_FOLLOWER)
            }
            None if meta.is_some_and(|t| t.leader(partition, node).is_some()) => {
                partition_error_reply(&op, error_code::NOT_LEADER_OR_FOLLOWER)
            }
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

    pub(crate) async fn execute(
        &self,
        topic: &str,
        partition: i32,
        op: PartitionOp,
    ) -> PartitionReply {
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
        // The metadata may have moved leadership a moment before this op arrived.
        if !entry.replica.is_leader() {
            return partition_error_reply(&op, error_code::NOT_LEADER_OR_FOLLOWER);
        }
        // A client's view of the leader epoch (a follower's is checked with its fetch).
        if let Some(current) = op.client_leader_epoch() {
            let code = entry.check_leader_epoch(current);
            if code != error_code::NONE {
                return partition_error_reply(&op, code);
            }
        }
        match op {
            PartitionOp::Produce {
                records,
                acks,
                timeout_ms,
            } => PartitionReply::Produce(self.produce(&entry, records, acks, timeout_ms).await),
            PartitionOp::Fetch {
                offset,
                max_bytes,
                replica,
                current_leader_epoch,
                last_fetched_epoch,
                ..
            } if replica >= 0 => {
                let before = entry.high_watermark();
                let fetch = entry
                    .replica_fetch(
                        replica,
                        offset,
                        last_fetched_epoch,
                        current_leader_epoch,
                        max_bytes,
                    )
                    .await;
                if let Some(isr) = fetch.expand_isr {
                    self.propose_isr(topic, partition, &entry, isr);
                }
                if entry.high_watermark() != before {
                    self.data_arrived.notify();
                }
                PartitionReply::Fetch(FetchOutcome {
                    diverging: fetch.diverging,
                    ..fetch.outcome
                })
            }
            PartitionOp::Fetch {
                offset,
                max_bytes,
                strict_max_bytes,
                ..
            } => PartitionReply::Fetch(entry.fetch(offset, max_bytes, strict_max_bytes).await),
            PartitionOp::ListOffsets { timestamp, .. } => {
                let mut outcome = entry.list_offsets(timestamp).await;
                if outcome.error_code == error_code::NONE {
                    outcome.leader_epoch = entry.replica.leader_epoch.get().max(0);
                }
                PartitionReply::ListOffsets(outcome)
            }
            PartitionOp::DeleteRecords { before } => {
                PartitionReply::DeleteRecords(entry.delete_records(before).await)
            }
            PartitionOp::OffsetForLeaderEpoch {
                current_leader_epoch,
                leader_epoch,
            } => PartitionReply::OffsetForLeaderEpoch(
                entry.offset_for_leader_epoch(current_leader_epoch, leader_epoch),
            ),
        }
    }

    /// A produce on the leader: refused with NOT_ENOUGH_REPLICAS when acks=-1
    /// and the ISR is smaller than min.insync.replicas; appended (durable
    /// here) otherwise; with acks=-1 answered once the high watermark passes
    /// it, i.e. every in-sync replica has it durable (or the leader is
    /// deposed, or the request times out).
    async fn produce(
        &self,
        entry: &Rc<PartitionEntry>,
        records: bytes::Bytes,
        acks: i16,
        timeout_ms: i32,
    ) -> ProduceOutcome {
        let min_insync = entry.config.get().min_insync_replicas.max(1) as usize;
        let refuse = |code: i16, message: String| ProduceOutcome {
            error_code: code,
            error_message: Some(message),
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: entry.log.log_start_offset(),
        };
        let isr_size = || entry.replica.isr.borrow().len();
        if acks == -1 && isr_size() < min_insync {
            return refuse(
                error_code::NOT_ENOUGH_REPLICAS,
                format!(
                    "{} in-sync replicas, min.insync.replicas is {min_insync}",
                    isr_size()
                ),
            );
        }
        let last_offset_delta = sluice_protocol::record_batch::BatchHeader::parse(&records)
            .map_or(0, |h| h.last_offset_delta as i64);
        let epoch = entry.replica.leader_epoch.get();
        let outcome = entry.produce(records).await;
        if outcome.error_code != error_code::NONE {
            return outcome;
        }
        self.data_arrived.notify();
        if acks != -1 {
            return outcome;
        }
        let target = outcome.base_offset + last_offset_delta + 1;
        let timeout = Duration::from_millis(if timeout_ms > 0 {
            timeout_ms as u64
        } else {
            30_000
        });
        match entry.wait_replicated(target, epoch, timeout).await {
            Ok(()) => {}
            Err(error_code::NOT_LEADER_OR_FOLLOWER) => {
                return refuse(
                    error_code::NOT_LEADER_OR_FOLLOWER,
                    "leadership moved before the in-sync replicas had the batch".into(),
                )
            }
            Err(code) => {
                return refuse(
                    code,
                    format!("the in-sync replicas did not confirm the batch in {timeout:?}"),
                )
            }
        }
        if isr_size() < min_insync {
            return refuse(
                error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                format!(
                    "written, but only {} in-sync replicas remain (min.insync.replicas {min_insync})",
                    isr_size()
                ),
            );
        }
        outcome
    }

    /// Completes when any of the partitions has data past its offset, or at the deadline.
    pub async fn wait_for_data(&self, parts: Vec<WaitFor>, deadline: Instant) {
        let mut by_owner: HashMap<usize, Vec<WaitFor>> = HashMap::new();
        let snapshot = self.snapshot();
        for part in parts {
            if let Some(owner) = snapshot
                .topics
                .get(&part.topic)
                .and_then(|t| t.shard_of(part.partition, self.shard_count))
            {
                by_owner.entry(owner).or_default().push(part);
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

    pub(crate) async fn wait_local(&self, parts: &[WaitFor], deadline: Instant) {
        let ready = || {
            let partitions = self.partitions.borrow();
            parts.iter().any(|part| {
                // `offset` is the end the fetch last saw: wait for more.
                partitions
                    .get(&(part.topic.clone(), part.partition))
                    .is_some_and(|e| {
                        let end = if part.replica {
                            e.log.high_watermark()
                        } else {
                            e.high_watermark()
                        };
                        end > part.offset
                    })
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
}

fn unknown_partition_reply(op: &PartitionOp) -> PartitionReply {
    partition_error_reply(op, error_code::UNKNOWN_TOPIC_OR_PARTITION)
}

fn partition_error_reply(op: &PartitionOp, code: i16) -> PartitionReply {
    match op {
        PartitionOp::Produce { .. } => PartitionReply::Produce(ProduceOutcome {
            error_code: code,
            error_message: Some(error_code::name(code)),
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
            leader_epoch: -1,
        }),
        PartitionOp::DeleteRecords { .. } => PartitionReply::DeleteRecords((code, -1)),
        PartitionOp::OffsetForLeaderEpoch { .. } => {
            PartitionReply::OffsetForLeaderEpoch((code, -1, -1))
        }
    }
}

fn storage_error_reply() -> PartitionReply {
    PartitionReply::Fetch(FetchOutcome {
        error_code: error_code::KAFKA_STORAGE_ERROR,
        ..Default::default()
    })
}
