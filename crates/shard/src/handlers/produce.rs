//! Produce: each partition's batch goes to the shard that owns it, as `Bytes`.
//! All partitions are handed off before any is awaited, so requests pipelined
//! on one connection reach every partition in order.

use super::{respond, str_bytes, HandlerResult};
use crate::mesh::{PartitionOp, PartitionReply, ProduceOutcome};
use crate::shard::Shard;
use crate::topic_config::{produce_rules, ProduceRules};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use sluice_protocol::api::error_code;
use sluice_protocol::compression::Codec;
use sluice_protocol::frame::{decode_body, RequestFrame};
use sluice_protocol::kafka_protocol;
use sluice_protocol::record_batch::BatchHeader;
use sluice_protocol::validate::validate_produced_batch_with;

/// A produce request may decompress to at least this much in all ...
const DECOMPRESSED_BYTES_PER_REQUEST_MIN: usize = 64 << 20;
/// ... or this many times its own size, if more.
const DECOMPRESSED_BYTES_PER_REQUEST_RATIO: usize = 8;
use sluice_storage::event::join_all;
use std::rc::Rc;

pub async fn handle(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: ProduceRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let api_key = frame.api_key;
    let acks = request.acks;
    let timeout_ms = request.timeout_ms;
    let refuse = if !matches!(acks, -1..=1) {
        Some((
            error_code::INVALID_REQUIRED_ACKS,
            format!("acks must be -1, 0 or 1, got {acks}"),
        ))
    } else if request.transactional_id.is_some() {
        Some((
            error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "transactions are not supported".to_string(),
        ))
    } else {
        None
    };
    // Sized up front: the futures are large, and growing the Vec moved them all.
    let count: usize = request
        .topic_data
        .iter()
        .map(|t| t.partition_data.len())
        .sum();
    let mut calls = Vec::with_capacity(count);
    let mut shape = Vec::with_capacity(request.topic_data.len());
    // What the whole request may decompress to: a small request of many
    // tiny batches that each expand to the per-batch limit must not keep
    // the core busy for minutes.
    let mut decompressed_left = DECOMPRESSED_BYTES_PER_REQUEST_MIN.max(
        frame
            .body
            .len()
            .saturating_mul(DECOMPRESSED_BYTES_PER_REQUEST_RATIO),
    );
    let snapshot = shard.snapshot();
    for topic in &request.topic_data {
        let name = topic.name.0.to_string();
        // Kafka's order: an unknown topic (not auto-created) or a batch over
        // max.message.bytes is refused by the owner before its records matter.
        let rules = match snapshot.topics.get(&name) {
            Some(meta) => Some(produce_rules(&shard.settings, &meta.configs)),
            None if shard.settings.auto_create_topics => Some(ProduceRules {
                max_message_bytes: shard.settings.max_message_bytes,
                keys_required: false,
            }),
            None => None,
        };
        let mut partitions = Vec::new();
        for partition in &topic.partition_data {
            partitions.push(partition.index);
            let records = partition.records.clone().unwrap_or_default();
            let index = partition.index;
            // Validated here, in the synchronous step before any await, so a
            // bad batch is refused without reaching the owner and request
            // order on the connection is kept.
            let refuse = refuse.clone().or_else(|| match rules {
                // Kafka: with acks=all, fewer in-sync replicas (here: one)
                // than min.insync.replicas refuses the write.
                Some(rules) if records.len() as i64 <= rules.max_message_bytes => validate(
                    shard,
                    &frame,
                    &name,
                    index,
                    &records,
                    rules.keys_required,
                    &mut decompressed_left,
                ),
                _ => None,
            });
            let shard = shard.clone();
            let name = name.clone();
            calls.push(async move {
                if let Some((code, message)) = refuse {
                    shard.error_answer(api_key, format_args!("{name}-{index}"), code);
                    return ProduceOutcome {
                        error_code: code,
                        error_message: Some(message),
                        base_offset: -1,
                        log_append_time_ms: -1,
                        log_start_offset: -1,
                    };
                }
                let stored = records.clone();
                let outcome = match shard
                    .call(
                        &name,
                        index,
                        PartitionOp::Produce {
                            records,
                            acks,
                            timeout_ms,
                        },
                    )
                    .await
                {
                    PartitionReply::Produce(outcome) => outcome,
                    _ => ProduceOutcome {
                        error_code: error_code::KAFKA_STORAGE_ERROR,
                        base_offset: -1,
                        log_append_time_ms: -1,
                        log_start_offset: -1,
                        error_message: None,
                    },
                };
                if outcome.error_code == error_code::NONE {
                    shard.counters.produced(&name, &stored);
                } else {
                    shard.error_answer(api_key, format_args!("{name}-{index}"), outcome.error_code);
                }
                outcome
            });
        }
        shape.push((topic.name.clone(), partitions));
    }
    let mut outcomes = join_all(calls).await.into_iter();
    let version = frame.api_version;
    if acks == 0 {
        return Ok(None);
    }
    let responses = shape
        .into_iter()
        .map(|(name, partitions)| {
            let partition_responses = partitions
                .into_iter()
                .map(|index| {
                    let outcome = outcomes.next().expect("one outcome per partition");
                    PartitionProduceResponse::default()
                        .with_index(index)
                        .with_error_code(outcome.error_code)
                        .with_base_offset(outcome.base_offset)
                        .with_log_append_time_ms(outcome.log_append_time_ms)
                        .with_log_start_offset(if version >= 5 {
                            outcome.log_start_offset
                        } else {
                            -1
                        })
                        .with_error_message(if version >= 8 {
                            outcome.error_message.map(|m| str_bytes(&m))
                        } else {
                            None
                        })
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(partition_responses)
        })
        .collect();
    respond(
        &frame,
        &ProduceResponse::default().with_responses(responses),
    )
}

/// Record-level validation of one partition's batch (Kafka's LogValidator):
/// the refusal to answer, if any, with one rate-limited log line.
fn validate(
    shard: &Shard,
    frame: &RequestFrame,
    topic: &str,
    partition: i32,
    records: &bytes::Bytes,
    keys_required: bool,
    decompressed_left: &mut usize,
) -> Option<(i16, String)> {
    let refusal = if records.is_empty() {
        Some((
            error_code::INVALID_RECORD,
            "a produce request must carry a record batch for every partition".to_string(),
        ))
    } else if BatchHeader::parse(records).is_ok_and(|h| h.total_bytes() < records.len()) {
        Some((
            error_code::INVALID_RECORD,
            "a produce request must carry exactly one record batch per partition".to_string(),
        ))
    } else {
        let mut scratch = shard.validation_scratch.borrow_mut();
        match validate_produced_batch_with(records, &mut scratch, *decompressed_left, keys_required)
        {
            Ok((header, _))
                if header.compression() == Codec::Zstd.id() && frame.api_version < 7 =>
            {
                Some((
                    error_code::UNSUPPORTED_COMPRESSION_TYPE,
                    format!(
                        "zstd batches need Produce v7 or later, got v{}",
                        frame.api_version
                    ),
                ))
            }
            Ok((header, records_bytes)) => {
                if header.compression() != Codec::None.id() {
                    *decompressed_left = decompressed_left.saturating_sub(records_bytes);
                }
                None
            }
            Err(e) => Some((e.error_code(), e.to_string())),
        }
    };
    if let Some((code, message)) = &refusal {
        if let Some(suppressed) = shard.bad_input_log.allow() {
            tracing::warn!(
                shard = shard.id,
                client = frame.client_id.as_deref().unwrap_or(""),
                "produce to {topic}-{partition} refused with {}: {message} ({suppressed} more refusals not logged since the last line)",
                error_code::name(*code)
            );
        }
    }
    refusal
}

/// InitProducerId: a fresh id (epoch 0), or for a known id and epoch (v3+) the
/// same id with the epoch bumped. Transactional ids are refused: no transactions.
pub async fn init_producer_id(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: InitProducerIdRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let fail = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    let body = if request.transactional_id.is_some() {
        fail(error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    } else if request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX - 1
    {
        InitProducerIdResponse::default()
            .with_error_code(error_code::NONE)
            .with_producer_id(request.producer_id)
            .with_producer_epoch(request.producer_epoch + 1)
    } else {
        match shard.allocate_producer_id().await {
            Ok(id) => InitProducerIdResponse::default()
                .with_error_code(error_code::NONE)
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(e) => {
                tracing::error!("{e}");
                fail(error_code::KAFKA_STORAGE_ERROR)
            }
        }
    };
    if body.error_code != error_code::NONE {
        let subject = match &request.transactional_id {
            Some(id) => format!("transactional id {}", id.0),
            None => format!("producer {}", request.producer_id.0),
        };
        shard.error_answer(frame.api_key, format_args!("{subject}"), body.error_code);
    }
    respond(&frame, &body)
}
