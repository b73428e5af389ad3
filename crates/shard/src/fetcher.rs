//! Followers pull from their leaders, as Kafka's replica fetchers do: each
//! shard runs one fetcher per leader node it follows partitions of, over one
//! persistent connection to that node's Kafka listener. A fetcher first asks
//! the leader where each newly followed partition's log diverges
//! (OffsetForLeaderEpoch, KIP-101/279) and truncates there; then it sends
//! Fetch v12 requests (replica id = this node, the leader epoch it follows,
//! the epoch of its last batch) for all of them, appends what comes back
//! through the same storage engine, waits until it is durable, and fetches
//! again: the offset of a fetch is what the leader counts as durable here.
//! One request is in flight per fetcher (flow control: a follower never has
//! more unacknowledged data than one response). A diverging epoch in a
//! response truncates again.

use crate::shard::{PartitionEntry, PartitionKey};
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_protocol::api::error_code;
use sluice_protocol::frame::{decode_response, encode_request};
use sluice_protocol::kafka_protocol;
use sluice_storage::event::{join_all, Event};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

const FETCH_VERSION: i16 = 12;
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;
/// A follower's long poll at the leader.
const FETCH_MAX_WAIT_MS: i32 = 500;
const FETCH_MAX_BYTES: i32 = 16 << 20;
const PARTITION_MAX_BYTES: i32 = 4 << 20;
/// Longer than any answer takes: the long poll plus a slow disk.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// After an error naming the partition (not the leader, an epoch the leader
/// does not know yet): wait for the metadata to settle.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

struct Follow {
    entry: Rc<PartitionEntry>,
    epoch: i32,
    /// The divergence with the leader's log was resolved (OffsetForLeaderEpoch).
    truncated: bool,
    paused_until: Option<Instant>,
}

/// The partitions one shard follows from one leader node.
pub struct Fetcher {
    node_id: i32,
    leader: i32,
    partitions: RefCell<BTreeMap<PartitionKey, Follow>>,
    wake: Event,
    stopped: Cell<bool>,
}

impl Fetcher {
    /// Starts the fetcher task for `leader`; it runs until stopped.
    pub fn start(
        node_id: i32,
        leader: i32,
        controller: sluice_cluster::ControllerHandle,
    ) -> Rc<Fetcher> {
        let fetcher = Rc::new(Fetcher {
            node_id,
            leader,
            partitions: RefCell::new(BTreeMap::new()),
            wake: Event::default(),
            stopped: Cell::new(false),
        });
        let task = fetcher.clone();
        glommio::spawn_local(async move { task.run(controller).await }).detach();
        fetcher
    }

    pub fn add(&self, key: PartitionKey, entry: Rc<PartitionEntry>, epoch: i32) {
        self.partitions.borrow_mut().insert(
            key,
            Follow {
                entry,
                epoch,
                truncated: false,
                paused_until: None,
            },
        );
        self.wake.notify();
    }

    pub fn remove(&self, key: &PartitionKey) {
        self.partitions.borrow_mut().remove(key);
    }

    pub fn stop(&self) {
        self.stopped.set(true);
        self.wake.notify();
    }

    async fn run(self: Rc<Self>, controller: sluice_cluster::ControllerHandle) {
        let mut conn: Option<Conn> = None;
        let mut logged_failure = false;
        while !self.stopped.get() {
            let now = Instant::now();
            let ready = self
                .partitions
                .borrow()
                .values()
                .any(|f| f.paused_until.is_none_or(|t| t <= now));
            if !ready {
                let listen = self.wake.listen();
                futures_lite::future::or(listen, glommio::timer::sleep(PAUSE_AFTER_ERROR)).await;
                continue;
            }
            if conn.is_none() {
                let address = controller
                    .metadata()
                    .nodes
                    .get(&self.leader)
                    .map(|n| format!("{}:{}", n.info.kafka_host, n.info.kafka_port));
                let Some(address) = address else {
                    glommio::timer::sleep(RECONNECT_BACKOFF).await;
                    continue;
                };
                match Conn::connect(&address, self.node_id).await {
                    Ok(c) => {
                        tracing::info!(leader = self.leader, %address, "replica fetcher connected");
                        logged_failure = false;
                        conn = Some(c);
                    }
                    Err(e) => {
                        if !logged_failure {
                            tracing::warn!(leader = self.leader, %address, error = %e, "replica fetcher cannot connect; retrying");
                            logged_failure = true;
                        }
                        glommio::timer::sleep(RECONNECT_BACKOFF).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected");
            let result = match self.truncate_diverged(c).await {
                Ok(()) => self.fetch_once(c).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(leader = self.leader, error = %e, "replica fetch failed; reconnecting");
                conn = None;
                glommio::timer::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }

    /// (key, follow state) of the partitions to ask about now.
    fn due(&self, truncated: bool) -> Vec<(PartitionKey, Rc<PartitionEntry>, i32)> {
        let now = Instant::now();
        self.partitions
            .borrow()
            .iter()
            .filter(|(_, f)| f.truncated == truncated && f.paused_until.is_none_or(|t| t <= now))
            .map(|(k, f)| (k.clone(), f.entry.clone(), f.epoch))
            .collect()
    }

    fn update(&self, key: &PartitionKey, epoch: i32, change: impl FnOnce(&mut Follow)) {
        if let Some(follow) = self.partitions.borrow_mut().get_mut(key) {
            // Only if it still follows the same epoch (not re-added meanwhile).
            if follow.epoch == epoch {
                change(follow);
            }
        }
    }

    fn pause(&self, key: &PartitionKey, epoch: i32) {
        self.update(key, epoch, |f| {
            f.paused_until = Some(Instant::now() + PAUSE_AFTER_ERROR)
        });
    }

    /// OffsetForLeaderEpoch for newly followed partitions, then truncation.
    async fn truncate_diverged(&self, conn: &mut Conn) -> Result<(), String> {
        let due = self.due(false);
        if due.is_empty() {
            return Ok(());
        }
        let mut topics: BTreeMap<String, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
        for ((topic, partition), entry, epoch) in &due {
            topics.entry(topic.clone()).or_default().push(
                OffsetForLeaderPartition::default()
                    .with_partition(*partition)
                    .with_current_leader_epoch(*epoch)
                    .with_leader_epoch(entry.replica.epochs.borrow().latest_epoch()),
            );
        }
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(self.node_id))
            .with_topics(named(topics, |name, partitions| {
                OffsetForLeaderTopic::default()
                    .with_topic(name)
                    .with_partitions(partitions)
            }));
        let response: OffsetForLeaderEpochResponse = conn
            .call(
                ApiKey::OffsetForLeaderEpoch,
                OFFSET_FOR_LEADER_EPOCH_VERSION,
                &request,
            )
            .await?;
        for topic in response.topics {
            for answer in topic.partitions {
                let key = (topic.topic.0.to_string(), answer.partition);
                let Some((_, entry, epoch)) = due.iter().find(|(k, _, _)| *k == key) else {
                    continue;
                };
                if answer.error_code != error_code::NONE {
                    self.pause(&key, *epoch);
                    continue;
                }
                let point = entry.divergence_point(answer.leader_epoch, answer.end_offset);
                match entry.truncate(point, *epoch).await {
                    Ok(()) => self.update(&key, *epoch, |f| f.truncated = true),
                    Err(e) => {
                        tracing::error!(partition = entry.log.name(), error = %e, "truncating a follower failed");
                        self.pause(&key, *epoch);
                    }
                }
            }
        }
        Ok(())
    }

    /// One Fetch for every partition ready to fetch, and what comes of it.
    async fn fetch_once(&self, conn: &mut Conn) -> Result<(), String> {
        let due = self.due(true);
        if due.is_empty() {
            return Ok(());
        }
        let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
        let mut asked = BTreeMap::new();
        for ((topic, partition), entry, epoch) in &due {
            let offset = entry.log.high_watermark();
            asked.insert((topic.clone(), *partition), offset);
            topics.entry(topic.clone()).or_default().push(
                FetchPartition::default()
                    .with_partition(*partition)
                    .with_current_leader_epoch(*epoch)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(entry.replica.epochs.borrow().latest_epoch())
                    .with_log_start_offset(entry.log.log_start_offset())
                    .with_partition_max_bytes(PARTITION_MAX_BYTES),
            );
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(self.node_id))
            .with_max_wait_ms(FETCH_MAX_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_session_epoch(-1)
            .with_topics(named(topics, |name, partitions| {
                FetchTopic::default()
                    .with_topic(name)
                    .with_partitions(partitions)
            }));
        let response: FetchResponse = conn.call(ApiKey::Fetch, FETCH_VERSION, &request).await?;
        if response.error_code != error_code::NONE {
            return Err(format!(
                "fetch refused: {}",
                error_code::name(response.error_code)
            ));
        }
        let mut work = Vec::new();
        for topic in response.responses {
            let name = topic.topic.0.to_string();
            for data in topic.partitions {
                let key = (name.clone(), data.partition_index);
                let Some((_, entry, epoch)) = due.iter().find(|(k, _, _)| *k == key) else {
                    continue;
                };
                let offset = asked[&key];
                work.push(self.apply(key, entry.clone(), *epoch, offset, data));
            }
        }
        join_all(work).await;
        Ok(())
    }

    /// Applies one partition's part of a fetch response.
    async fn apply(
        &self,
        key: PartitionKey,
        entry: Rc<PartitionEntry>,
        epoch: i32,
        offset: i64,
        data: kafka_protocol::messages::fetch_response::PartitionData,
    ) {
        let still_following = self
            .partitions
            .borrow()
            .get(&key)
            .is_some_and(|f| f.epoch == epoch);
        if !still_following {
            return; // it leads now, or follows another epoch
        }
        match data.error_code {
            error_code::NONE if data.diverging_epoch.epoch >= 0 => {
                let point = entry
                    .divergence_point(data.diverging_epoch.epoch, data.diverging_epoch.end_offset);
                tracing::info!(
                    partition = entry.log.name(),
                    epoch = data.diverging_epoch.epoch,
                    end_offset = data.diverging_epoch.end_offset,
                    truncate_to = point,
                    "follower log diverged from the leader's"
                );
                if let Err(e) = entry.truncate(point, epoch).await {
                    tracing::error!(partition = entry.log.name(), error = %e, "truncating a follower failed");
                    self.pause(&key, epoch);
                }
            }
            error_code::NONE => {
                let records = data.records.unwrap_or_default();
                if entry.log.high_watermark() != offset {
                    return; // cut meanwhile: the next fetch asks again
                }
                if let Err(e) = entry.append_replicated(&records, data.high_watermark).await {
                    tracing::error!(partition = entry.log.name(), error = %e, "appending fetched batches failed");
                    self.pause(&key, epoch);
                    return;
                }
                // DeleteRecords and retention on the leader move the log start here too.
                let start = data.log_start_offset.min(entry.log.high_watermark());
                if start > entry.log.log_start_offset() {
                    if let Err(e) = entry.log.delete_records_before(start).await {
                        tracing::warn!(partition = entry.log.name(), error = %e, "following the leader's log start failed");
                    }
                }
            }
            error_code::OFFSET_OUT_OF_RANGE if offset < data.log_start_offset => {
                // The leader deleted what this replica lacks: start over where it starts.
                tracing::warn!(
                    partition = entry.log.name(),
                    offset,
                    leader_log_start = data.log_start_offset,
                    "follower is behind its leader's log start: restarting its log there"
                );
                if let Err(e) = entry.restart_at(data.log_start_offset, epoch).await {
                    tracing::error!(partition = entry.log.name(), error = %e, "restarting a follower's log failed");
                    self.pause(&key, epoch);
                }
            }
            error_code::OFFSET_OUT_OF_RANGE => {
                self.update(&key, epoch, |f| f.truncated = false);
            }
            _ => self.pause(&key, epoch),
        }
    }
}

/// A request's topics, from the partitions gathered by topic name.
fn named<P, T>(topics: BTreeMap<String, Vec<P>>, topic: impl Fn(TopicName, Vec<P>) -> T) -> Vec<T> {
    topics
        .into_iter()
        .map(|(name, partitions)| topic(TopicName(StrBytes::from_string(name)), partitions))
        .collect()
}

/// One connection to a leader's Kafka listener; one request at a time.
struct Conn {
    stream: TcpStream,
    client_id: String,
    correlation_id: i32,
}

impl Conn {
    async fn connect(address: &str, node_id: i32) -> Result<Conn, String> {
        let connect = TcpStream::connect(address);
        let stream =
            futures_lite::future::or(async { connect.await.map_err(|e| e.to_string()) }, async {
                glommio::timer::sleep(Duration::from_secs(2)).await;
                Err("connect timed out".to_string())
            })
            .await?;
        stream.set_nodelay(true).ok();
        Ok(Conn {
            stream,
            client_id: format!("sluice-replica-{node_id}"),
            correlation_id: 0,
        })
    }

    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, String> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let frame = encode_request(key, version, self.correlation_id, &self.client_id, request)?;
        let exchange = async {
            self.stream
                .write_all(&frame)
                .await
                .map_err(|e| e.to_string())?;
            let mut size = [0u8; 4];
            self.stream
                .read_exact(&mut size)
                .await
                .map_err(|e| e.to_string())?;
            let size = i32::from_be_bytes(size);
            if size < 4 || size as usize > RESPONSE_BYTES_MAX {
                return Err(format!("response frame of {size} bytes"));
            }
            let mut body = BytesMut::zeroed(size as usize);
            self.stream
                .read_exact(&mut body)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<Bytes, String>(body.freeze())
        };
        let body = futures_lite::future::or(exchange, async {
            glommio::timer::sleep(RESPONSE_TIMEOUT).await;
            Err(format!("no answer to {key:?} in {RESPONSE_TIMEOUT:?}"))
        })
        .await?;
        decode_response(body, key, version)
    }
}
