//! One producer: its rate schedule, partitioner, per-partition batches (batch
//! bytes and linger), and pipelined Produce requests (up to `max_in_flight`
//! per broker connection), like a Kafka client producer instance.

use crate::accumulator::{Accumulator, Open};
use crate::client::{kafka_error, Conn};
use crate::rate::RateLimiter;
use crate::records::{filler, now_us, stamp};
use crate::stats::record_us;
use crate::worker::Worker;
use crate::workload::KeyDistribution;
use bytes::Bytes;
use glommio::sync::Semaphore;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// A producer sleeps at least this long between turns: each timer costs an
/// io_uring submission, and at 100k messages/s one per message would make the
/// bench the bottleneck. Messages due in between go out together; their
/// lateness shows as publish delay.
const WAKE_INTERVAL_MIN: Duration = Duration::from_micros(200);
/// Messages generated per loop turn at most (then batches are sealed and sent).
const TURN_MESSAGES_MAX: u64 = 4096;

/// A sealed batch waiting for (or in) a request.
struct Sealed {
    partition: usize,
    bytes: Vec<u8>,
    sent_at: Vec<Instant>,
    payload_bytes: u64,
}

struct NodeLink {
    conn: Rc<Conn>,
    in_flight: Rc<Semaphore>,
}

pub async fn run(worker: Rc<Worker>, producer_id: u32, rate: f64) -> Result<(), String> {
    let w = &worker.workload;
    let topology = &worker.topology;
    let mut links: HashMap<i32, NodeLink> = HashMap::new();
    for p in &topology.partitions {
        if let std::collections::hash_map::Entry::Vacant(e) = links.entry(p.leader) {
            let conn = Conn::connect(topology.address(p.leader)?).await?;
            e.insert(NodeLink {
                conn,
                in_flight: Rc::new(Semaphore::new(w.max_in_flight as u64)),
            });
        }
    }
    let partitions = topology.partitions.len();
    let linger = Duration::from_millis(w.linger_ms);
    // A record's bytes at most: the payload, a 16-byte key and the varints.
    let record_bytes_max = w.message_size + 16 + 32;
    let mut batches = Accumulator::new(partitions, w.batch_bytes, record_bytes_max, linger);
    let mut sealed: BTreeMap<i32, Vec<Sealed>> = BTreeMap::new();
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
                        seal(&worker, partition, full, &mut sealed)?;
                        if partition == sticky {
                            sticky = (sticky + 1) % partitions;
                        }
                    }
                }
            }
        }
        // Linger expired, buffer over its cap, or stopping: seal the oldest.
        while let Some((partition, batch)) = batches.pop_due(now, stopping) {
            seal(&worker, partition, batch, &mut sealed)?;
            if partition == sticky {
                sticky = (sticky + 1) % partitions;
            }
        }
        // Send what is sealed, one request per broker, one batch per partition.
        let nodes: Vec<i32> = sealed.keys().copied().collect();
        for node in nodes {
            let link = &links[&node];
            let permit = link
                .in_flight
                .acquire_static_permit(1)
                .await
                .map_err(|e| format!("in-flight semaphore: {e}"))?;
            let mut batches = take_request(sealed.get_mut(&node).expect("listed"));
            if sealed[&node].is_empty() {
                sealed.remove(&node);
            }
            let request = build_request(&worker, w.acks, &mut batches);
            if w.acks == 0 {
                link.conn.send_only(ApiKey::Produce, &request)?;
                let acked = Instant::now();
                {
                    let mut stats = worker.stats.borrow_mut();
                    for batch in &batches {
                        acknowledge(&worker, &mut stats, batch, acked, true);
                    }
                }
                drop(permit);
                // acks=0 has no response to pace it: let the writer drain.
                link.conn.wait_queue_below(w.max_in_flight as usize).await;
                continue;
            }
            let conn = link.conn.clone();
            let worker = worker.clone();
            glommio::spawn_local(async move {
                let _permit = permit;
                let response: Result<ProduceResponse, String> =
                    conn.call(ApiKey::Produce, &request).await;
                let acked = Instant::now();
                let mut stats = worker.stats.borrow_mut();
                match response {
                    Ok(response) => {
                        let errors = partition_errors(&response);
                        for batch in &batches {
                            let p = &worker.topology.partitions[batch.partition];
                            let code = errors
                                .get(&(worker.topology.topics[p.topic].as_str(), p.partition))
                                .copied()
                                .unwrap_or(-1);
                            if code != 0 {
                                worker.note_error(
                                    &format!("produce failed: {}", kafka_error(code)),
                                    &format!("{}/{}", worker.topology.topics[p.topic], p.partition),
                                );
                            }
                            acknowledge(&worker, &mut stats, batch, acked, code == 0);
                        }
                    }
                    Err(e) => {
                        worker.note_error("produce request failed", &e);
                        for batch in &batches {
                            acknowledge(&worker, &mut stats, batch, acked, false);
                        }
                    }
                }
            })
            .detach();
        }
        if stopping && batches.is_empty() && sealed.is_empty() {
            break;
        }
        // Sleep until the next message is due or the oldest batch lingers out.
        let mut wake = if limiter.is_unlimited() || stopping {
            now
        } else {
            start + limiter.next_due()
        };
        if let Some(deadline) = batches.next_deadline() {
            wake = wake.min(deadline);
        }
        let now = Instant::now();
        if wake > now {
            glommio::timer::sleep((wake - now).max(WAKE_INTERVAL_MIN)).await;
        } else {
            futures_lite::future::yield_now().await;
        }
    }
    // Wait for every request in flight to be answered.
    for link in links.values() {
        let _ = link
            .in_flight
            .acquire_permit(worker.workload.max_in_flight as u64)
            .await;
    }
    Ok(())
}

fn seal(
    worker: &Worker,
    partition: usize,
    mut slot: Open,
    sealed: &mut BTreeMap<i32, Vec<Sealed>>,
) -> Result<(), String> {
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
    let node = worker.topology.partitions[partition].leader;
    sealed.entry(node).or_default().push(Sealed {
        partition,
        bytes,
        sent_at: slot.sent_at,
        payload_bytes,
    });
    Ok(())
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

fn build_request(worker: &Worker, acks: i16, batches: &mut [Sealed]) -> ProduceRequest {
    let mut by_topic: BTreeMap<usize, Vec<PartitionProduceData>> = BTreeMap::new();
    for batch in batches.iter_mut() {
        let p = &worker.topology.partitions[batch.partition];
        by_topic.entry(p.topic).or_default().push(
            PartitionProduceData::default()
                .with_index(p.partition)
                .with_records(Some(Bytes::from(std::mem::take(&mut batch.bytes)))),
        );
    }
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(PRODUCE_TIMEOUT_MS)
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

fn acknowledge(
    worker: &Worker,
    stats: &mut crate::stats::Stats,
    batch: &Sealed,
    acked: Instant,
    ok: bool,
) {
    let messages = batch.sent_at.len() as u64;
    if ok {
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
    } else {
        stats.produce_errors += messages;
    }
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
