//! One producer: its rate schedule, partitioner, per-partition batches (batch
//! bytes and linger), and pipelined Produce requests (up to `max_in_flight`
//! per broker connection), like a Kafka client producer instance.

use crate::accumulator::{Accumulator, Open};
use crate::client::{kafka_error, Conn};
use crate::cluster::{Cluster, NO_LEADER};
use crate::rate::RateLimiter;
use crate::records::{filler, now_us, stamp};
use crate::retry::{self, CANNOT_CONNECT, CONNECTION_LOST};
use crate::stats::record_us;
use crate::worker::Worker;
use crate::workload::KeyDistribution;
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A producer sleeps at least this long between turns: each timer costs an
/// io_uring submission, and at 100k messages/s one per message would make the
/// bench the bottleneck. Messages due in between go out together; their
/// lateness shows as publish delay.
const WAKE_INTERVAL_MIN: Duration = Duration::from_micros(200);
/// Messages generated per loop turn at most (then batches are sealed and sent).
const TURN_MESSAGES_MAX: u64 = 4096;
/// How often queued batches are checked against their delivery deadline.
const EXPIRY_SCAN_INTERVAL: Duration = Duration::from_millis(100);

/// A sealed batch waiting for (or in) a request, or back for a retry.
struct Sealed {
    /// Seal order: retries go back in this order.
    id: u64,
    partition: usize,
    /// The v2 batch, sent as is on every try.
    bytes: Bytes,
    sent_at: Vec<Instant>,
    payload_bytes: u64,
    /// Retries so far.
    retries: u32,
    /// The retry budget ends here (the first message's add time + delivery_timeout_ms).
    deadline: Instant,
    /// Not sent again before this (the backoff).
    ready_at: Instant,
    /// Why the last try failed, for the loss message.
    last_error: String,
}

/// What response tasks hand back to the producer's loop.
#[derive(Default)]
struct Returned {
    retries: RefCell<Vec<Sealed>>,
    /// A response said the leaders are stale.
    stale: Cell<bool>,
    /// Produce requests awaiting their response.
    in_flight: Cell<usize>,
}

pub async fn run(
    worker: Rc<Worker>,
    producer_id: u32,
    rate: f64,
    bootstrap: String,
) -> Result<(), String> {
    let w = &worker.workload;
    let topology = &worker.topology;
    let mut sender = Sender::new(worker.clone(), &bootstrap);
    sender.connect().await;
    let partitions = topology.partitions.len();
    let linger = Duration::from_millis(w.linger_ms);
    // A record's bytes at most: the payload, a 16-byte key and the varints.
    let record_bytes_max = w.message_size + 16 + 32;
    let mut batches = Accumulator::new(partitions, w.batch_bytes, record_bytes_max, linger);
    let mut payload = filler(w.message_size, producer_id as u64 + 1);
    let mut limiter = RateLimiter::new(rate);
    let mut sticky = producer_id as usize % partitions;
    let mut key_counter = producer_id as u64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((producer_id as u64 + 1) << 17);
    let mut sequence = 0u32;
    let control = &worker.control;
    let start = control.wait_for_go().await;
    // One batch's worth per turn (so a turn seals at most about one batch by size).
    let per_turn = (batches.messages_per_batch(w.message_size + 8) as u64).min(TURN_MESSAGES_MAX);
    let record_delay = !limiter.is_unlimited();

    loop {
        let stopping = control.stop_producing.load(Ordering::Relaxed) || control.backlog_full();
        let now = Instant::now();
        if !stopping {
            let due = limiter.take_due(now.saturating_duration_since(start), per_turn);
            if !due.is_empty() {
                let send_us = now_us();
                let timestamp_ms = (send_us / 1000) as i64;
                let mut stats = worker.stats.borrow_mut();
                for index in due {
                    if record_delay {
                        let intended = start + limiter.intended(index);
                        record_us(
                            &mut stats.publish_delay,
                            now.saturating_duration_since(intended).as_micros() as u64,
                        );
                    }
                    let mut key_bytes = [0u8; 16];
                    let (partition, key) = match w.key_distribution {
                        KeyDistribution::None => (sticky, None),
                        KeyDistribution::RoundRobin => {
                            key_counter += 1;
                            let key = format_key(&mut key_bytes, key_counter);
                            ((key_counter % partitions as u64) as usize, Some(key))
                        }
                        KeyDistribution::Random => {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let key = format_key(&mut key_bytes, rng);
                            ((fnv1a(key) % partitions as u64) as usize, Some(key))
                        }
                    };
                    stamp(&mut payload, send_us, producer_id, sequence);
                    sequence = sequence.wrapping_add(1);
                    if let Some(full) =
                        batches.push(partition, now, timestamp_ms, key.map(|k| &k[..]), &payload)
                    {
                        sender.seal(partition, full)?;
                        if partition == sticky {
                            sticky = (sticky + 1) % partitions;
                        }
                    }
                }
            }
        }
        // Linger expired, buffer over its cap, or stopping: seal the oldest.
        while let Some((partition, batch)) = batches.pop_due(now, stopping) {
            sender.seal(partition, batch)?;
            if partition == sticky {
                sticky = (sticky + 1) % partitions;
            }
        }
        // Retries and metadata, then what is sealed: one request per broker,
        // one batch per partition.
        sender.service();
        sender.send().await?;
        if stopping && batches.is_empty() && sender.is_idle() {
            break;
        }
        // Sleep until the next message is due, the oldest batch lingers out,
        // a retry's backoff ends, or (stopping) a response may have come.
        let mut wake = if stopping && batches.is_empty() && !sender.can_send() {
            now + WAKE_INTERVAL_MIN
        } else if limiter.is_unlimited() || stopping {
            now
        } else {
            start + limiter.next_due()
        };
        if let Some(deadline) = batches.next_deadline() {
            wake = wake.min(deadline);
        }
        if let Some(at) = sender.next_wake() {
            wake = wake.min(at);
        }
        let now = Instant::now();
        if wake > now {
            glommio::timer::sleep((wake - now).max(WAKE_INTERVAL_MIN)).await;
        } else {
            futures_lite::future::yield_now().await;
        }
    }
    Ok(())
}

/// Sealed batches on their way: queued by leader, in flight, or back for a
/// retry after a retriable error (with a metadata refresh first when the
/// error says the leader moved), until acknowledged or out of budget.
struct Sender {
    worker: Rc<Worker>,
    cluster: Cluster,
    /// By the node the batches go to; [`NO_LEADER`]: waiting for metadata.
    queue: BTreeMap<i32, Vec<Sealed>>,
    returned: Rc<Returned>,
    next_id: u64,
    next_expiry_scan: Instant,
}

impl Sender {
    fn new(worker: Rc<Worker>, bootstrap: &str) -> Sender {
        let cluster = Cluster::new(&worker, bootstrap, worker.workload.max_in_flight);
        Sender {
            worker,
            cluster,
            queue: BTreeMap::new(),
            returned: Rc::default(),
            next_id: 0,
            next_expiry_scan: Instant::now(),
        }
    }

    /// Connects to every leader ahead of the first send (a failure here is
    /// retried when sending).
    async fn connect(&mut self) {
        let mut nodes = self.cluster.leaders.clone();
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            if let Err(e) = self.cluster.link(node).await {
                tracing::debug!("producer: {e}");
            }
        }
    }

    fn seal(&mut self, partition: usize, mut slot: Open) -> Result<(), String> {
        let worker = &self.worker;
        let payload_bytes = slot.sent_at.len() as u64 * worker.workload.message_size as u64;
        let mut bytes = Vec::with_capacity(slot.builder.bytes() + 64);
        slot.builder.finish_into(
            &mut bytes,
            worker.workload.compression,
            slot.last_timestamp_ms,
        )?;
        worker
            .control
            .sent_bytes
            .fetch_add(payload_bytes, Ordering::Relaxed);
        let now = Instant::now();
        let first = slot.sent_at.first().copied().unwrap_or(now);
        self.next_id += 1;
        self.enqueue(Sealed {
            id: self.next_id,
            partition,
            bytes: Bytes::from(bytes),
            sent_at: slot.sent_at,
            payload_bytes,
            retries: 0,
            deadline: first + worker.workload.delivery_timeout(),
            ready_at: now,
            last_error: String::new(),
        });
        Ok(())
    }

    fn enqueue(&mut self, batch: Sealed) {
        let node = self.cluster.leaders[batch.partition];
        self.queue.entry(node).or_default().push(batch);
    }

    /// Refreshes metadata when a response asked for it (and the backoff
    /// allows), re-queues batches whose backoff is over, and drops batches
    /// past their delivery deadline as lost.
    fn service(&mut self) {
        if self.returned.stale.take() {
            self.cluster.mark_stale();
        }
        if self.cluster.poll_refresh(Instant::now()) {
            // Leaders may have moved: queue every batch under its leader now.
            let mut all: Vec<Sealed> = std::mem::take(&mut self.queue)
                .into_values()
                .flatten()
                .collect();
            all.sort_by_key(|b| b.id);
            for batch in all {
                self.enqueue(batch);
            }
        }
        let now = Instant::now();
        let ready: Vec<Sealed> = {
            let mut retries = self.returned.retries.borrow_mut();
            if retries.iter().any(|b| b.ready_at <= now) {
                let (ready, waiting) = std::mem::take(&mut *retries)
                    .into_iter()
                    .partition(|b| b.ready_at <= now);
                *retries = waiting;
                ready
            } else {
                Vec::new()
            }
        };
        if !ready.is_empty() {
            let mut nodes = Vec::new();
            for batch in ready {
                if now >= batch.deadline {
                    lose(&self.worker, &batch);
                    continue;
                }
                nodes.push(self.cluster.leaders[batch.partition]);
                self.enqueue(batch);
            }
            // A retried batch goes before later batches of its partition.
            for node in nodes {
                if let Some(queue) = self.queue.get_mut(&node) {
                    queue.sort_by_key(|b| b.id);
                }
            }
        }
        if now >= self.next_expiry_scan {
            self.next_expiry_scan = now + EXPIRY_SCAN_INTERVAL;
            for queue in self.queue.values_mut() {
                if queue.iter().any(|b| now >= b.deadline) {
                    for batch in queue.extract_if(.., |b| now >= b.deadline) {
                        lose(&self.worker, &batch);
                    }
                }
            }
            self.queue.retain(|_, q| !q.is_empty());
        }
    }

    /// Sends what is queued for known leaders: per node one request with at
    /// most one batch per partition, oldest first, within the in-flight cap.
    async fn send(&mut self) -> Result<(), String> {
        let nodes: Vec<i32> = self
            .queue
            .keys()
            .copied()
            .filter(|&n| n != NO_LEADER)
            .collect();
        let acks = self.worker.workload.acks;
        for node in nodes {
            // A node that refused a connect: its batches wait in the queue
            // (until their delivery deadline), as in a Kafka producer's
            // accumulator, and it is tried again after its backoff.
            if self.cluster.next_try(node).is_some() {
                continue;
            }
            let (conn, in_flight) = match self.cluster.link(node).await {
                Ok(link) => (link.conn.clone(), link.in_flight.clone()),
                Err(e) => {
                    tracing::debug!("producer: {e}");
                    self.worker.note_retry(CANNOT_CONNECT);
                    self.cluster.mark_stale();
                    continue;
                }
            };
            let permit = in_flight
                .acquire_static_permit(1)
                .await
                .map_err(|e| format!("in-flight semaphore: {e}"))?;
            let Some(queue) = self.queue.get_mut(&node) else {
                continue;
            };
            let batches = take_request(queue);
            if queue.is_empty() {
                self.queue.remove(&node);
            }
            let request = build_request(&self.worker, acks, &batches);
            if acks == 0 {
                let sent = conn.send_only(ApiKey::Produce, &request);
                let now = Instant::now();
                for batch in batches {
                    match sent {
                        Ok(()) => acknowledge(&self.worker, &batch, now),
                        Err(_) => retry_or_lose(
                            &self.worker,
                            &self.returned,
                            batch,
                            CONNECTION_LOST,
                            true,
                            now,
                        ),
                    }
                }
                drop(permit);
                // acks=0 has no response to pace it: let the writer drain.
                conn.wait_queue_below(self.worker.workload.max_in_flight as usize)
                    .await;
                continue;
            }
            let worker = self.worker.clone();
            let returned = self.returned.clone();
            returned.in_flight.set(returned.in_flight.get() + 1);
            glommio::spawn_local(async move {
                let _permit = permit;
                let response: Result<ProduceResponse, String> =
                    conn.call(ApiKey::Produce, &request).await;
                settle(&worker, &returned, &conn, response, batches);
                returned.in_flight.set(returned.in_flight.get() - 1);
            })
            .detach();
        }
        Ok(())
    }

    /// Anything queued for a known leader that may be connected to now?
    fn can_send(&self) -> bool {
        self.queue
            .keys()
            .any(|&n| n != NO_LEADER && self.cluster.next_try(n).is_none())
    }

    /// Nothing queued, in flight or waiting for a retry.
    fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.returned.in_flight.get() == 0
            && self.returned.retries.borrow().is_empty()
    }

    /// When the next retry's backoff ends, metadata may be refreshed, or a
    /// node with queued batches may be connected to again.
    fn next_wake(&self) -> Option<Instant> {
        let retries = self.returned.retries.borrow();
        let reconnects = self.queue.keys().filter_map(|&n| self.cluster.next_try(n));
        retries
            .iter()
            .map(|b| b.ready_at)
            .chain(reconnects)
            .chain(self.cluster.refresh_at())
            .min()
    }
}

/// Acknowledges, retries or fails each batch of a request by its outcome.
fn settle(
    worker: &Worker,
    returned: &Returned,
    conn: &Conn,
    response: Result<ProduceResponse, String>,
    batches: Vec<Sealed>,
) {
    let now = Instant::now();
    let response = match response {
        Ok(response) => response,
        // The broker may or may not have appended them: sent again, as a
        // Kafka client does (without idempotence a retry may duplicate).
        Err(_) if conn.is_closed() => {
            for batch in batches {
                retry_or_lose(worker, returned, batch, conn.lost_kind(), true, now);
            }
            return;
        }
        Err(e) => {
            worker.note_error("produce request failed", &e);
            for batch in &batches {
                fail(worker, batch);
            }
            return;
        }
    };
    let errors = partition_errors(&response);
    for batch in batches {
        let p = &worker.topology.partitions[batch.partition];
        let code = errors
            .get(&(worker.topology.topics[p.topic].as_str(), p.partition))
            .copied()
            .unwrap_or(-1);
        if code == 0 {
            acknowledge(worker, &batch, now);
        } else if retry::is_retriable(code) {
            let kind = retry::name(code);
            retry_or_lose(
                worker,
                returned,
                batch,
                &kind,
                retry::is_stale_metadata(code),
                now,
            );
        } else {
            worker.note_error(
                &format!("produce failed: {}", kafka_error(code)),
                &format!("{}/{}", worker.topology.topics[p.topic], p.partition),
            );
            fail(worker, &batch);
        }
    }
}

/// After a retriable failure: back to the queue after a backoff (and a
/// metadata refresh if `stale`), or lost if the budget ends before that.
fn retry_or_lose(
    worker: &Worker,
    returned: &Returned,
    mut batch: Sealed,
    kind: &str,
    stale: bool,
    now: Instant,
) {
    batch.last_error = kind.to_string();
    let ready_at = now + retry::backoff(batch.retries + 1);
    // A retry that could not go out within the budget is not made.
    if ready_at >= batch.deadline {
        lose(worker, &batch);
        return;
    }
    worker.note_retry(kind);
    batch.retries += 1;
    batch.ready_at = ready_at;
    returned.retries.borrow_mut().push(batch);
    if stale {
        returned.stale.set(true);
    }
}

/// Takes at most one batch per partition from the queue, oldest first.
fn take_request(queue: &mut Vec<Sealed>) -> Vec<Sealed> {
    let mut seen = std::collections::HashSet::new();
    let mut taken = Vec::new();
    let mut rest = Vec::new();
    for batch in queue.drain(..) {
        if seen.insert(batch.partition) {
            taken.push(batch);
        } else {
            rest.push(batch);
        }
    }
    *queue = rest;
    taken
}

fn build_request(worker: &Worker, acks: i16, batches: &[Sealed]) -> ProduceRequest {
    let mut by_topic: BTreeMap<usize, Vec<PartitionProduceData>> = BTreeMap::new();
    for batch in batches {
        let p = &worker.topology.partitions[batch.partition];
        by_topic.entry(p.topic).or_default().push(
            PartitionProduceData::default()
                .with_index(p.partition)
                .with_records(Some(batch.bytes.clone())),
        );
    }
    ProduceRequest::default()
        .with_acks(acks)
        // As the Java client: the broker's wait for acks is the request timeout.
        .with_timeout_ms(worker.workload.request_timeout_ms as i32)
        .with_topic_data(
            by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    TopicProduceData::default()
                        .with_name(worker.topology.topic_name(topic))
                        .with_partition_data(partitions)
                })
                .collect(),
        )
}

fn partition_errors(response: &ProduceResponse) -> HashMap<(&str, i32), i16> {
    let mut out = HashMap::new();
    for topic in &response.responses {
        for p in &topic.partition_responses {
            out.insert((topic.name.0.as_str(), p.index), p.error_code);
        }
    }
    out
}

fn acknowledge(worker: &Worker, batch: &Sealed, acked: Instant) {
    let messages = batch.sent_at.len() as u64;
    let mut stats = worker.stats.borrow_mut();
    stats.produced += messages;
    stats.produced_bytes += batch.payload_bytes;
    for sent in &batch.sent_at {
        record_us(
            &mut stats.publish_latency,
            acked.saturating_duration_since(*sent).as_micros() as u64,
        );
    }
    worker
        .control
        .acked_messages
        .fetch_add(messages, Ordering::Relaxed);
}

/// A batch refused for good (a non-retriable error).
fn fail(worker: &Worker, batch: &Sealed) {
    worker.stats.borrow_mut().produce_errors += batch.sent_at.len() as u64;
}

/// A batch whose retry budget ran out.
fn lose(worker: &Worker, batch: &Sealed) {
    let p = &worker.topology.partitions[batch.partition];
    let why = if batch.last_error.is_empty() {
        "queued, never sent"
    } else {
        &batch.last_error
    };
    worker.note_error(
        &format!("produce failed, retry budget spent: {why}"),
        &format!(
            "{}/{}: {} retries in delivery_timeout_ms = {}",
            worker.topology.topics[p.topic],
            p.partition,
            batch.retries,
            worker.workload.delivery_timeout_ms
        ),
    );
    let mut stats = worker.stats.borrow_mut();
    stats.produce_errors += batch.sent_at.len() as u64;
    stats.produce_lost += batch.sent_at.len() as u64;
}

fn format_key(out: &mut [u8; 16], value: u64) -> &[u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = HEX[((value >> ((15 - i) * 4)) & 0xf) as usize];
    }
    out
}

/// FNV-1a: a stable hash for key -> partition.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hex_and_spread_over_partitions() {
        let mut buf = [0u8; 16];
        assert_eq!(format_key(&mut buf, 0xab), b"00000000000000ab");
        let mut counts = [0u32; 10];
        for i in 0..10_000u64 {
            let mut b = [0u8; 16];
            counts[(fnv1a(format_key(&mut b, i.wrapping_mul(0x9E37_79B9))) % 10) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
