//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3, v7), earliest
//! local (-4, v8: the earliest, without tiered storage), or the first offset
//! with a timestamp at or after the given one (the time index).

use super::{respond, HandlerResult};
use crate::mesh::{ListOffsetsOutcome, PartitionOp, PartitionReply};
use crate::shard::Shard;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use sluice_protocol::api::error_code;
use sluice_protocol::frame::{decode_body, RequestFrame};
use sluice_protocol::kafka_protocol;
use std::rc::Rc;

pub async fn handle(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: ListOffsetsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut topics = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::new();
        for partition in &topic.partitions {
            let op = PartitionOp::ListOffsets {
                timestamp: partition.timestamp,
                current_leader_epoch: partition.current_leader_epoch,
            };
            let outcome = match shard.call(&name, partition.partition_index, op).await {
                PartitionReply::ListOffsets(outcome) => outcome,
                _ => ListOffsetsOutcome {
                    error_code: error_code::KAFKA_STORAGE_ERROR,
                    offset: -1,
                    timestamp: -1,
                    leader_epoch: -1,
                },
            };
            shard.error_answer(
                frame.api_key,
                format_args!("{name}-{}", partition.partition_index),
                outcome.error_code,
            );
            partitions.push(
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(partition.partition_index)
                    .with_error_code(outcome.error_code)
                    .with_timestamp(outcome.timestamp)
                    .with_offset(outcome.offset)
                    .with_leader_epoch(if frame.api_version >= 4 {
                        outcome.leader_epoch
                    } else {
                        -1
                    }),
            );
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    respond(&frame, &ListOffsetsResponse::default().with_topics(topics))
}
