//! OffsetForLeaderEpoch (API 23, KIP-101/279/320): for each partition, the
//! largest leader epoch ≤ the one asked that the leader's log has, and the
//! offset where the next epoch starts (the log end for the current one).
//! Followers ask it before they fetch to find where their log diverges;
//! consumers ask it after a leader change to detect truncation. Requests
//! carrying an older leader epoch get FENCED_LEADER_EPOCH, a newer one
//! UNKNOWN_LEADER_EPOCH.

use super::{respond, HandlerResult};
use crate::mesh::{PartitionOp, PartitionReply};
use crate::shard::Shard;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use sluice_protocol::api::error_code;
use sluice_protocol::frame::{decode_body, RequestFrame};
use sluice_protocol::kafka_protocol;
use std::rc::Rc;

pub async fn handle(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: OffsetForLeaderEpochRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.topic.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let op = PartitionOp::OffsetForLeaderEpoch {
                current_leader_epoch: if frame.api_version >= 2 {
                    partition.current_leader_epoch
                } else {
                    -1
                },
                leader_epoch: partition.leader_epoch,
            };
            let (code, epoch, end) = match shard.call(&name, partition.partition, op).await {
                PartitionReply::OffsetForLeaderEpoch(answer) => answer,
                _ => (error_code::KAFKA_STORAGE_ERROR, -1, -1),
            };
            shard.error_answer(
                frame.api_key,
                format_args!("{name}-{}", partition.partition),
                code,
            );
            partitions.push(
                EpochEndOffset::default()
                    .with_error_code(code)
                    .with_partition(partition.partition)
                    .with_leader_epoch(epoch)
                    .with_end_offset(end),
            );
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    respond(
        &frame,
        &OffsetForLeaderEpochResponse::default().with_topics(topics),
    )
}
