//! Fetch: reads stored batches as they are. `max_bytes` is honoured across the
//! response and `partition_max_bytes` per partition, except that the first
//! partition with data always gets at least one whole batch. If fewer than
//! `min_bytes` are ready, the fetch waits, woken by appends on the owning
//! shards, until `max_wait_ms`. Incremental fetch sessions (KIP-227) are
//! kept per core (`fetch_sessions.rs`). The response is encoded as a list of
//! buffers holding the read batches as they are (`fetch_response`).

use super::HandlerResult;
use crate::fetch_sessions::{self, Context, Sent, Wanted};
use crate::memory::{Charge, ConnectionMemory};
use crate::mesh::{FetchOutcome, PartitionOp, PartitionReply, WaitFor};
use crate::shard::Shard;
use kafka_protocol::messages::{FetchRequest, TopicName};
use sluice_protocol::api::error_code;
use sluice_protocol::fetch_response::{self, PartitionOut, TopicOut};
use sluice_protocol::frame::{decode_body, RequestFrame, ResponseFrame};
use sluice_protocol::kafka_protocol;
use sluice_storage::event::join_all;
use sluice_storage::Records;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Upper bound on a long poll, whatever the client asks.
const MAX_WAIT_MS_MAX: i32 = 30_000;

pub async fn handle(
    shard: &Rc<Shard>,
    connection: &Rc<ConnectionMemory>,
    frame: RequestFrame,
) -> HandlerResult {
    let request: FetchRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let version = frame.api_version;
    // From v13 topics are named by id: resolve them to names once, here (an
    // unknown id leaves the name empty: UNKNOWN_TOPIC_ID).
    let snapshot = shard.snapshot();
    let name_of = |name: &TopicName, id: &uuid::Uuid| -> String {
        if version >= 13 {
            snapshot
                .topic_by_id(*id)
                .map(|meta| meta.name.clone())
                .unwrap_or_default()
        } else {
            name.0.to_string()
        }
    };
    let listed: Vec<Wanted> = request
        .topics
        .iter()
        .flat_map(|topic| {
            let name = name_of(&topic.topic, &topic.topic_id);
            let id = *topic.topic_id.as_bytes();
            topic.partitions.iter().map(move |p| Wanted {
                topic: name.clone(),
                topic_id: id,
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                partition_max_bytes: p.partition_max_bytes.max(0) as usize,
                current_leader_epoch: p.current_leader_epoch,
                last_fetched_epoch: p.last_fetched_epoch,
            })
        })
        .collect();
    let context = if version >= 7 {
        let forgotten: Vec<_> = request
            .forgotten_topics_data
            .iter()
            .flat_map(|topic| {
                let name = name_of(&topic.topic, &topic.topic_id);
                let id = *topic.topic_id.as_bytes();
                topic
                    .partitions
                    .iter()
                    .map(move |p| fetch_sessions::key(id, &name, *p))
            })
            .collect();
        shard.fetch_sessions.borrow_mut().begin(
            request.session_id,
            request.session_epoch,
            &listed,
            &forgotten,
            Instant::now(),
        )
    } else {
        Context::Sessionless
    };
    let wanted = match context {
        Context::Refused(code) => {
            shard.error_answer(
                frame.api_key,
                format_args!(
                    "fetch session {} epoch {}",
                    request.session_id, request.session_epoch
                ),
                code,
            );
            let parts = fetch_response::encode(version, frame.correlation_id, code, 0, &[]);
            return Ok(Some(ResponseFrame { parts }));
        }
        Context::Incremental(_, ref wanted) => {
            let mut wanted = wanted.clone();
            if version >= 13 {
                // Sessions know topics by id: names as of this request.
                for want in &mut wanted {
                    want.topic = snapshot
                        .topic_by_id(uuid::Uuid::from_bytes(want.topic_id))
                        .map(|meta| meta.name.clone())
                        .unwrap_or_default();
                }
            }
            wanted
        }
        Context::Sessionless | Context::Opening(_) => listed,
    };
    let deadline = Instant::now()
        + Duration::from_millis(request.max_wait_ms.clamp(0, MAX_WAIT_MS_MAX) as u64);
    let max_bytes = if request.max_bytes <= 0 {
        i32::MAX as usize
    } else {
        request.max_bytes as usize
    };
    let min_bytes = request.min_bytes.max(0) as usize;
    // A follower's fetch (Kafka: replica id ≥ 0; v15+ in the replica state).
    let replica = if version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    let mut outcomes;
    // Held until the response is built; the connection then charges its real size.
    let mut held: Option<Charge>;
    loop {
        // Bytes from the core's budget, taken per read (not across a long
        // poll); with none to be had, wait for some until the deadline.
        let grant = budget_grant(shard, connection, max_bytes, deadline).await;
        let allowed = records_allowed(&grant);
        held = Some(grant);
        outcomes = read_all(shard, &wanted, allowed, replica).await;
        let ready: usize = outcomes.iter().map(|o| o.records.len()).sum();
        // A follower told where it diverged is answered at once.
        let errored = outcomes
            .iter()
            .any(|o| o.error_code != error_code::NONE || o.diverging.is_some());
        if ready >= min_bytes.max(1)
            || errored
            || allowed == 0
            || Instant::now() >= deadline
            || shard.stopping.get()
        {
            break;
        }
        drop(held.take()); // not held across the long poll
                           // Wait for the high watermark to pass what this read saw, so a fetch
                           // whose min_bytes is not met yet sleeps instead of re-reading in a loop.
        let waiting = wanted
            .iter()
            .zip(&outcomes)
            .map(|(want, seen)| WaitFor {
                topic: want.topic.clone(),
                partition: want.partition,
                // A follower waits for the log to grow past its offset.
                offset: if replica >= 0 {
                    want.fetch_offset
                } else {
                    seen.high_watermark.max(want.fetch_offset)
                },
                replica: replica >= 0,
            })
            .collect();
        shard.wait_for_data(waiting, deadline).await;
        if Instant::now() >= deadline {
            let grant = budget_grant(shard, connection, max_bytes, deadline).await;
            outcomes = read_all(shard, &wanted, records_allowed(&grant), replica).await;
            held = Some(grant);
            break;
        }
    }
    let mut session_id = match context {
        Context::Opening(id) | Context::Incremental(id, _) => id,
        _ => 0,
    };
    let mut topics: Vec<TopicOut> = Vec::new();
    let mut opened = Vec::new();
    {
        let mut sessions = shard.fetch_sessions.borrow_mut();
        for (want, outcome) in wanted.iter().zip(outcomes) {
            let error_code = if want.topic.is_empty() {
                error_code::UNKNOWN_TOPIC_ID
            } else {
                outcome.error_code
            };
            let sent = Sent {
                high_watermark: outcome.high_watermark,
                log_start_offset: outcome.log_start_offset,
            };
            shard.error_answer(
                frame.api_key,
                format_args!("{}-{}", want.topic, want.partition),
                error_code,
            );
            shard
                .counters
                .fetched(&want.topic, &outcome.records, replica >= 0);
            match context {
                // Only partitions with news go into an incremental response.
                Context::Incremental(id, _) => {
                    let news = outcome.diverging.is_some();
                    let records = !outcome.records.is_empty();
                    let error = error_code != error_code::NONE;
                    if !sessions.respond(id, want, sent, news, records, error) && !records {
                        continue;
                    }
                }
                Context::Opening(_) => opened.push((want.clone(), sent)),
                _ => {}
            }
            let partition = PartitionOut {
                partition: want.partition,
                error_code,
                high_watermark: outcome.high_watermark,
                last_stable_offset: outcome.high_watermark,
                log_start_offset: outcome.log_start_offset,
                diverging_epoch: outcome.diverging,
                records: outcome.records.into_parts(),
            };
            match topics.last_mut() {
                Some(topic) if topic.name == want.topic && topic.topic_id == want.topic_id => {
                    topic.partitions.push(partition)
                }
                _ => topics.push(TopicOut {
                    name: want.topic.clone(),
                    topic_id: want.topic_id,
                    partitions: vec![partition],
                }),
            }
        }
        match context {
            Context::Opening(id) => {
                if sessions.open(id, &opened, Instant::now()) {
                    tracing::debug!(
                        session = id,
                        partitions = opened.len(),
                        "fetch session opened"
                    );
                } else {
                    // Sessions opened while this fetch waited took the room.
                    session_id = 0;
                }
            }
            Context::Incremental(id, _) => tracing::debug!(
                session = id,
                epoch = request.session_epoch,
                partitions = wanted.len(),
                answered = topics.iter().map(|t| t.partitions.len()).sum::<usize>(),
                "incremental fetch"
            ),
            _ => {}
        }
    }
    let parts = fetch_response::encode(
        version,
        frame.correlation_id,
        error_code::NONE,
        session_id,
        &topics,
    );
    drop(held);
    Ok(Some(ResponseFrame { parts }))
}

/// The records a grant pays for: the response frame holds the read buffers
/// themselves (no copy into a frame), so a grant covers as many bytes of
/// records; once built, the connection charges the frame's real size instead.
fn records_allowed(grant: &Charge) -> usize {
    grant.bytes()
}

/// `wanted` bytes of the core's memory budget for this response (see `records_allowed`). When
/// none can be had (slow connections hold the budget), waits for a release
/// until `deadline`; a grant of 0 then means an answer without records.
async fn budget_grant(
    shard: &Rc<Shard>,
    connection: &Rc<ConnectionMemory>,
    wanted: usize,
    deadline: Instant,
) -> Charge {
    loop {
        let grant = shard.memory.grant_response(wanted, connection);
        if grant.bytes() > 0 || Instant::now() >= deadline || shard.stopping.get() {
            return grant;
        }
        drop(grant);
        futures_lite::future::or(shard.memory.released(), async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await
        })
        .await;
    }
}

/// Bytes a wave of reads may plan even when less budget is left: with a
/// little budget left, partitions are still read many at a time.
const WAVE_MIN_BYTES: usize = 4 << 20;

/// Reads every partition of the request, concurrently: a fetch of many
/// partitions costs about one partition's latency, not their sum (each read
/// may wait on another shard's queue and on the disk). Reads go out in waves
/// whose per-partition limits add up to at most the bytes still allowed (or
/// `WAVE_MIN_BYTES`), each read strictly within its limit; the results are
/// then taken in request order against the budget, exactly as one-by-one reads
/// would be. A first batch over its limit comes back flagged `oversized`; if no
/// partition before it had data, it is read again without the limit (Kafka
/// returns that one batch, so the consumer makes progress).
async fn read_all(
    shard: &Rc<Shard>,
    wanted: &[Wanted],
    max_bytes: usize,
    replica: i32,
) -> Vec<FetchOutcome> {
    let mut budget = Budget::new(max_bytes);
    let mut outcomes = Vec::with_capacity(wanted.len());
    let mut next = 0;
    while next < wanted.len() {
        // At least WAVE_MIN_BYTES, but never more than the memory grant allows.
        let wave_bytes = budget.remaining.max(WAVE_MIN_BYTES.min(max_bytes));
        let mut planned = 0usize;
        let mut reads = Vec::new();
        while next < wanted.len() {
            let want = &wanted[next];
            let limit = want.partition_max_bytes.min(budget.remaining);
            if !reads.is_empty() && planned + limit > wave_bytes {
                break;
            }
            planned += limit;
            reads.push(read_partition(shard, want, limit, true, replica));
            next += 1;
        }
        let first = outcomes.len();
        for (k, mut outcome) in join_all(reads).await.into_iter().enumerate() {
            let want = &wanted[first + k];
            let limit = want.partition_max_bytes.min(budget.remaining);
            if outcome.oversized && !budget.any_data && limit > 0 {
                outcome = read_partition(shard, want, limit, false, replica).await;
            }
            outcome.records = budget.take(outcome.records, want.partition_max_bytes);
            outcomes.push(outcome);
        }
    }
    outcomes
}

async fn read_partition(
    shard: &Rc<Shard>,
    want: &Wanted,
    max_bytes: usize,
    strict_max_bytes: bool,
    replica: i32,
) -> FetchOutcome {
    let op = PartitionOp::Fetch {
        offset: want.fetch_offset,
        max_bytes,
        strict_max_bytes,
        replica,
        current_leader_epoch: want.current_leader_epoch,
        last_fetched_epoch: want.last_fetched_epoch,
    };
    match shard.call(&want.topic, want.partition, op).await {
        PartitionReply::Fetch(outcome) => outcome,
        _ => FetchOutcome {
            error_code: error_code::KAFKA_STORAGE_ERROR,
            ..Default::default()
        },
    }
}

/// The response's byte budget, spent in request order. The first partition
/// with data keeps at least one whole batch even over the limits (so a batch
/// larger than max_bytes still makes progress); later partitions keep the
/// whole batches that fit within their limit and what is left.
struct Budget {
    remaining: usize,
    any_data: bool,
}

impl Budget {
    fn new(max_bytes: usize) -> Budget {
        Budget {
            remaining: max_bytes,
            any_data: false,
        }
    }

    fn take(&mut self, records: Records, partition_max: usize) -> Records {
        if records.is_empty() {
            return records;
        }
        let limit = partition_max.min(self.remaining);
        let kept = if records.len() <= limit {
            records
        } else {
            let within = records.clone().prefix_while(|_, end| end <= limit);
            if within.is_empty() && !self.any_data {
                records.first_batch()
            } else {
                within
            }
        };
        if !kept.is_empty() {
            self.any_data = true;
            self.remaining = self.remaining.saturating_sub(kept.len());
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A fake stored batch: only the header fields the walk reads matter.
    fn batch(total: usize) -> Vec<u8> {
        let mut b = vec![0u8; total];
        b[8..12].copy_from_slice(&((total - 12) as i32).to_be_bytes());
        b[16] = 2; // magic
        b
    }

    fn batches(sizes: &[usize]) -> Records {
        Records::from(Bytes::from(
            sizes.iter().flat_map(|&s| batch(s)).collect::<Vec<u8>>(),
        ))
    }

    /// The same batches in one part per batch (as the tail cache serves them).
    fn parts(sizes: &[usize]) -> Records {
        let mut records = Records::new();
        for &size in sizes {
            records.push(Bytes::from(batch(size)));
        }
        records
    }

    #[test]
    fn whole_batches_stop_at_the_limit() {
        for records in [batches(&[100, 200, 300]), parts(&[100, 200, 300])] {
            let within = |limit| records.clone().prefix_while(|_, end| end <= limit).len();
            assert_eq!(within(0), 0);
            assert_eq!(within(99), 0);
            assert_eq!(within(100), 100);
            assert_eq!(within(299), 100);
            assert_eq!(within(300), 300);
            assert_eq!(within(10_000), 600);
        }
    }

    #[test]
    fn budget_is_spent_in_request_order() {
        let mut budget = Budget::new(500);
        // Nothing in the first partition: the second is the first with data.
        assert_eq!(budget.take(Records::new(), 1000).len(), 0);
        assert_eq!(budget.take(batches(&[100, 200]), 1000).len(), 300);
        // 200 left: of 150 + 150 only the first fits.
        assert_eq!(budget.take(batches(&[150, 150]), 1000).len(), 150);
        // 50 left: nothing fits, and nothing more is taken.
        assert_eq!(budget.take(batches(&[100]), 1000).len(), 0);
        assert_eq!(budget.remaining, 50);
    }

    #[test]
    fn first_partition_with_data_keeps_one_oversized_batch() {
        let mut budget = Budget::new(100);
        let kept = budget.take(batches(&[400, 80]), 100);
        assert_eq!(kept.len(), 400, "one whole batch, not the one after it");
        assert_eq!(budget.remaining, 0);
        // Later partitions are strict.
        assert_eq!(budget.take(batches(&[70]), 100).len(), 0);
    }

    #[test]
    fn partition_limit_applies_after_the_first() {
        let mut budget = Budget::new(10_000);
        assert_eq!(budget.take(batches(&[100, 100, 100]), 250).len(), 200);
        assert_eq!(budget.take(batches(&[100, 100, 100]), 250).len(), 200);
        assert_eq!(budget.remaining, 9_600);
    }
}
