//! Fetch: reads stored batches as they are. `max_bytes` is honoured across the
//! response and `partition_max_bytes` per partition, except that the first
//! partition with data always gets at least one whole batch. If fewer than
//! `min_bytes` are ready, the fetch waits, woken by appends on the owning
//! shards, until `max_wait_ms`. Fetch sessions are declined (session id 0).

use super::{respond, HandlerResult};
use crate::mesh::{FetchOutcome, PartitionOp, PartitionReply};
use crate::shard::Shard;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use sluice_protocol::api::error_code;
use sluice_protocol::frame::{decode_body, RequestFrame};
use sluice_protocol::kafka_protocol;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Upper bound on a long poll, whatever the client asks.
const MAX_WAIT_MS_MAX: i32 = 30_000;

pub async fn handle(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: FetchRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let deadline = Instant::now()
        + Duration::from_millis(request.max_wait_ms.clamp(0, MAX_WAIT_MS_MAX) as u64);
    let max_bytes = if request.max_bytes <= 0 {
        i32::MAX as usize
    } else {
        request.max_bytes as usize
    };
    let min_bytes = request.min_bytes.max(0) as usize;
    let mut outcomes;
    loop {
        outcomes = read_all(shard, &request, max_bytes).await;
        let ready: usize = outcomes.iter().map(|o| o.records.len()).sum();
        let errored = outcomes.iter().any(|o| o.error_code != error_code::NONE);
        if ready >= min_bytes.max(1)
            || errored
            || Instant::now() >= deadline
            || shard.stopping.get()
        {
            break;
        }
        // Wait for the high watermark to pass what this read saw, so a fetch
        // whose min_bytes is not met yet sleeps instead of re-reading in a loop.
        let mut waiting = Vec::new();
        let mut seen = outcomes.iter();
        for topic in &request.topics {
            for partition in &topic.partitions {
                let observed = seen.next().map_or(-1, |o| o.high_watermark);
                waiting.push((
                    topic.topic.0.to_string(),
                    partition.partition,
                    observed.max(partition.fetch_offset),
                ));
            }
        }
        shard.wait_for_data(waiting, deadline).await;
        if Instant::now() >= deadline {
            outcomes = read_all(shard, &request, max_bytes).await;
            break;
        }
    }
    let mut outcomes = outcomes.into_iter();
    let responses = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let outcome = outcomes.next().expect("one outcome per partition");
                    PartitionData::default()
                        .with_partition_index(partition.partition)
                        .with_error_code(outcome.error_code)
                        .with_high_watermark(outcome.high_watermark)
                        .with_last_stable_offset(outcome.high_watermark)
                        .with_log_start_offset(if frame.api_version >= 5 {
                            outcome.log_start_offset
                        } else {
                            -1
                        })
                        .with_aborted_transactions(Some(Vec::new()))
                        .with_records(Some(outcome.records))
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    let body = FetchResponse::default()
        .with_error_code(error_code::NONE)
        .with_session_id(0)
        .with_responses(responses);
    respond(&frame, &body)
}

async fn read_all(
    shard: &Rc<Shard>,
    request: &FetchRequest,
    max_bytes: usize,
) -> Vec<FetchOutcome> {
    let mut outcomes = Vec::new();
    let mut remaining = max_bytes;
    let mut any_data = false;
    for topic in &request.topics {
        let name = topic.topic.0.to_string();
        for partition in &topic.partitions {
            let partition_max = (partition.partition_max_bytes.max(0) as usize).min(remaining);
            let op = PartitionOp::Fetch {
                offset: partition.fetch_offset,
                max_bytes: partition_max,
                // Only the first partition with data may exceed the limits.
                strict_max_bytes: any_data || partition_max == 0,
            };
            let outcome = match shard.call(&name, partition.partition, op).await {
                PartitionReply::Fetch(outcome) => outcome,
                _ => FetchOutcome {
                    error_code: error_code::KAFKA_STORAGE_ERROR,
                    ..Default::default()
                },
            };
            if !outcome.records.is_empty() {
                any_data = true;
                remaining = remaining.saturating_sub(outcome.records.len());
            }
            outcomes.push(outcome);
        }
    }
    outcomes
}
