//! One consumer: its partitions (from the group or a static split), one fetch
//! in flight per broker (as Kafka consumers do), end-to-end latency from the
//! send time each payload carries; retriable fetch errors are retried after a
//! metadata refresh.

use crate::client::kafka_error;
use crate::cluster::{Cluster, NO_LEADER};
use crate::group::{Member, Standing, HEARTBEAT_INTERVAL_MS};
use crate::records::{consume_batches, now_us};
use crate::retry::{self, Attempts, CANNOT_CONNECT};
use crate::stats::record_us;
use crate::worker::Worker;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse};
use sluice_protocol::api::error_code::OFFSET_OUT_OF_RANGE;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const FETCH_MAX_WAIT_MS: i32 = 100;
const FETCH_MAX_BYTES: i32 = 50 << 20;
/// Kafka's max.partition.fetch.bytes default.
const PARTITION_MAX_BYTES: i32 = 1 << 20;
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(worker: Rc<Worker>, consumer_id: u32, bootstrap: String) -> Result<(), String> {
    let w = &worker.workload;
    let topology = &worker.topology;
    if !w.consumer_group {
        let mine: Vec<usize> = (0..topology.partitions.len())
            .filter(|i| i % w.consumers as usize == consumer_id as usize)
            .collect();
        worker
            .control
            .consumers_ready
            .fetch_add(1, Ordering::SeqCst);
        let mut offsets = vec![0i64; mine.len()];
        let rejoin = Rc::new(Cell::new(false));
        let mut fetcher = Fetcher::new(worker.clone(), &bootstrap);
        while !fetcher.round(&mine, &mut offsets, &rejoin, false).await? {}
        return Ok(());
    }
    let group_id = format!("{}-group", topology.topics[0]);
    let mut member = Member::new(worker.clone(), &bootstrap, &group_id);
    // Leaders and connections learned carry over rebalances.
    let mut fetcher = Fetcher::new(worker.clone(), &bootstrap);
    let mut ready = false;
    loop {
        let mine = member.join(topology).await?;
        let committed = member.committed(topology, &mine).await?;
        let mut offsets: Vec<i64> = committed.iter().map(|&o| o.max(0)).collect();
        if !ready {
            worker
                .control
                .consumers_ready
                .fetch_add(1, Ordering::SeqCst);
            ready = true;
        }
        let rejoin = Rc::new(Cell::new(false));
        let member_rc = Rc::new(member);
        let heartbeat = {
            let member = member_rc.clone();
            let rejoin = rejoin.clone();
            let worker = worker.clone();
            glommio::spawn_local(async move {
                while !rejoin.get() && !worker.control.stop_consuming.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS)).await;
                    match member.heartbeat().await {
                        Ok(Standing::Ok) => {}
                        Ok(Standing::Rejoin) => rejoin.set(true),
                        Err(e) => {
                            worker.note_error("heartbeat failed", &e);
                            rejoin.set(true);
                        }
                    }
                }
            })
        };
        let fetched = {
            let member = member_rc.clone();
            let mine = mine.clone();
            let worker = worker.clone();
            let rejoin = rejoin.clone();
            let fetcher = &mut fetcher;
            async move {
                let mut last_commit = Instant::now();
                loop {
                    let stop = fetcher.round(&mine, &mut offsets, &rejoin, true).await?;
                    let leaving = stop || rejoin.get();
                    if leaving || last_commit.elapsed() >= COMMIT_INTERVAL {
                        // Eager protocol: commit before giving partitions up.
                        match member.commit(&worker.topology, &mine, &offsets).await {
                            Ok(Standing::Ok) => {}
                            Ok(Standing::Rejoin) => rejoin.set(true),
                            Err(e) => worker.note_error("offset commit failed", &e),
                        }
                        last_commit = Instant::now();
                    }
                    if leaving {
                        return Ok::<(), String>(());
                    }
                }
            }
            .await
        };
        rejoin.set(true);
        heartbeat.await;
        member = Rc::try_unwrap(member_rc).map_err(|_| "member still shared".to_string())?;
        fetched?;
        if worker.control.stop_consuming.load(Ordering::Relaxed) {
            member.leave().await.ok();
            return Ok(());
        }
    }
}

/// Fetches for one consumer, as a Kafka consumer does: from each
/// partition's leader, and after NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE,
/// UNKNOWN_TOPIC_OR_PARTITION or a lost connection, a backoff and a metadata
/// refresh before the next fetch. Retriable failures in a row give up once
/// they have lasted `delivery_timeout_ms`.
struct Fetcher {
    worker: Rc<Worker>,
    cluster: Cluster,
    attempts: Attempts,
}

impl Fetcher {
    fn new(worker: Rc<Worker>, bootstrap: &str) -> Fetcher {
        let cluster = Cluster::new(&worker, bootstrap, 1);
        let attempts = Attempts::new(worker.workload.delivery_timeout());
        Fetcher {
            worker,
            cluster,
            attempts,
        }
    }

    /// After a retriable failure: counts it, marks the leaders stale and
    /// waits the backoff; an error once the budget is spent.
    async fn failed(&mut self, kind: &str) -> Result<(), String> {
        self.cluster.mark_stale();
        self.attempts
            .retry(&self.worker.control.retries, "Fetch", kind)
            .await
    }

    /// Runs fetches for a while (about one second); returns true when the
    /// consumer should stop, false to come back (e.g. to commit, or after a
    /// retriable error). Returns early if `rejoin` is set.
    async fn round(
        &mut self,
        mine: &[usize],
        offsets: &mut [i64],
        rejoin: &Rc<Cell<bool>>,
        grouped: bool,
    ) -> Result<bool, String> {
        let worker = self.worker.clone();
        let control = &worker.control;
        // In a backlog run, consumers wait for the drain phase.
        while !control.drain_started.load(Ordering::Relaxed) {
            if control.stop_consuming.load(Ordering::Relaxed) {
                return Ok(true);
            }
            if grouped && rejoin.get() {
                return Ok(false);
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        self.cluster.refresh().await;
        let mut by_node: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (slot, &i) in mine.iter().enumerate() {
            let leader = self.cluster.leaders[i];
            if leader != NO_LEADER {
                by_node.entry(leader).or_default().push(slot);
            }
        }
        if by_node.is_empty() {
            // Nothing assigned (or no leader known yet): idle until stopped,
            // rebalanced or refreshed.
            glommio::timer::sleep(Duration::from_millis(100)).await;
            return Ok(control.stop_consuming.load(Ordering::Relaxed));
        }
        let mut conns = BTreeMap::new();
        for &node in by_node.keys() {
            if let Some(at) = self.cluster.next_try(node) {
                glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
            }
            match self.cluster.link(node).await {
                Ok(link) => {
                    conns.insert(node, link.conn.clone());
                }
                Err(e) => {
                    tracing::debug!("consumer: {e}");
                    self.failed(CANNOT_CONNECT).await?;
                    return Ok(false);
                }
            }
        }
        let round_end = Instant::now() + Duration::from_secs(1);
        // One fetch per node per turn; nodes in turn (a single broker is the usual case).
        loop {
            for (node, slots) in &by_node {
                let conn = &conns[node];
                let request = fetch_request(&worker, mine, slots, offsets);
                let response: FetchResponse = match conn.call(ApiKey::Fetch, &request).await {
                    Ok(response) => response,
                    Err(_) if conn.is_closed() => {
                        self.failed(conn.lost_kind()).await?;
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                };
                if response.error_code != 0 {
                    if retry::is_retriable(response.error_code) {
                        self.failed(&retry::name(response.error_code)).await?;
                        return Ok(false);
                    }
                    worker.note_error(
                        &format!("fetch failed: {}", kafka_error(response.error_code)),
                        &conn.addr,
                    );
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let retriable = consume_response(&worker, &response, mine, slots, offsets)?;
                if let Some(code) = retriable {
                    self.failed(&retry::name(code)).await?;
                    return Ok(false);
                }
                self.attempts.succeeded();
            }
            if control.stop_consuming.load(Ordering::Relaxed) {
                return Ok(true);
            }
            if (grouped && rejoin.get()) || Instant::now() >= round_end {
                return Ok(false);
            }
        }
    }
}

/// Counts what a fetch returned and moves the offsets on; returns a
/// retriable partition error if there was one (the other partitions'
/// records are taken all the same).
fn consume_response(
    worker: &Worker,
    response: &FetchResponse,
    mine: &[usize],
    slots: &[usize],
    offsets: &mut [i64],
) -> Result<Option<i16>, String> {
    let topology = &worker.topology;
    let control = &worker.control;
    let now = now_us();
    let mut index: HashMap<(&str, i32), usize> = HashMap::new();
    for &slot in slots {
        let p = &topology.partitions[mine[slot]];
        index.insert((topology.topics[p.topic].as_str(), p.partition), slot);
    }
    let mut retriable = None;
    let mut stats = worker.stats.borrow_mut();
    let mut consumed_here = 0;
    for topic in &response.responses {
        for data in &topic.partitions {
            let Some(&slot) = index.get(&(topic.topic.0.as_str(), data.partition_index)) else {
                continue;
            };
            if data.error_code == OFFSET_OUT_OF_RANGE {
                worker.note_error(
                    "fetch offset out of range: restarting at the log start",
                    &format!(
                        "{}/{} offset {} (log start {})",
                        topic.topic.0, data.partition_index, offsets[slot], data.log_start_offset
                    ),
                );
                offsets[slot] = data.log_start_offset.max(0);
                continue;
            }
            if retry::is_retriable(data.error_code) {
                retriable = Some(data.error_code);
                continue;
            }
            if data.error_code != 0 {
                worker.note_error(
                    &format!("fetch failed: {}", kafka_error(data.error_code)),
                    &format!("{}/{}", topic.topic.0, data.partition_index),
                );
                continue;
            }
            let Some(records) = &data.records else {
                continue;
            };
            // After a rebalance a partition may be re-read from an older
            // commit: what any consumer already counted is skipped.
            let counted = &control.consumed_upto[mine[slot]];
            let from = offsets[slot].max(counted.load(Ordering::Relaxed));
            let e2e = &mut stats.e2e_latency;
            let got = consume_batches(records, from, |sent| {
                if let Some(sent) = sent {
                    record_us(e2e, now.saturating_sub(sent));
                }
            })
            .map_err(|e| format!("{}/{}: {e}", topic.topic.0, data.partition_index))?;
            offsets[slot] = got.next_offset;
            counted.fetch_max(got.next_offset, Ordering::Relaxed);
            stats.consumed += got.messages;
            stats.consumed_bytes += got.bytes;
            consumed_here += got.messages;
        }
    }
    drop(stats);
    control
        .consumed_messages
        .fetch_add(consumed_here, Ordering::Relaxed);
    Ok(retriable)
}

fn fetch_request(
    worker: &Worker,
    mine: &[usize],
    slots: &[usize],
    offsets: &[i64],
) -> FetchRequest {
    let topology = &worker.topology;
    let mut by_topic: BTreeMap<usize, Vec<FetchPartition>> = BTreeMap::new();
    for &slot in slots {
        let p = &topology.partitions[mine[slot]];
        by_topic.entry(p.topic).or_default().push(
            FetchPartition::default()
                .with_partition(p.partition)
                .with_fetch_offset(offsets[slot])
                .with_partition_max_bytes(PARTITION_MAX_BYTES),
        );
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(FETCH_MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_session_epoch(-1)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, partitions)| {
                    FetchTopic::default()
                        .with_topic(topology.topic_name(t))
                        .with_partitions(partitions)
                })
                .collect(),
        )
}
