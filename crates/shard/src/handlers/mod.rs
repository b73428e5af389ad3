//! Kafka API handlers: one module per API family. Each decodes the body of a
//! request, does the work (here or on the owning shards), and encodes the
//! response frame. `Ok(None)` means no response (produce with acks=0);
//! `Err` closes the connection with the message logged.

mod admin;
mod api_versions;
mod fetch;
mod groups;
mod leader_epoch;
mod list_offsets;
mod metadata;
mod produce;

use crate::memory::ConnectionMemory;
use crate::shard::Shard;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Encodable, StrBytes};
use sluice_protocol::api::supported_versions;
use sluice_protocol::frame::{encode_response, RequestFrame, ResponseFrame};
use sluice_protocol::kafka_protocol;
use std::rc::Rc;

pub type HandlerResult = Result<Option<ResponseFrame>, String>;

/// `connection` is the memory the request's connection holds in responses
/// not yet written (a fetch sizes its response from the core's budget).
pub async fn handle(
    shard: &Rc<Shard>,
    connection: &Rc<ConnectionMemory>,
    frame: RequestFrame,
) -> HandlerResult {
    let api_key = frame.api_key;
    let version = frame.api_version;
    if api_key == ApiKey::ApiVersions as i16 {
        return api_versions::handle(shard, frame);
    }
    let Some((key, min, max)) = supported_versions(api_key) else {
        return Err(format!("unsupported API key {api_key} (v{version})"));
    };
    if version < min || version > max {
        return Err(format!(
            "unsupported version {version} of {key:?} (supported {min}..={max})"
        ));
    }
    // A group's requests run on its coordinator node and, there, shard.
    match groups::route(shard, &frame)? {
        groups::Route::Here => handle_here(shard, connection, frame).await,
        groups::Route::Shard(owner) => shard.forward(owner, frame).await,
        groups::Route::OtherNode => groups::not_coordinator(&frame),
    }
}

/// Handles a request on this shard (after any forwarding decision).
pub async fn handle_here(
    shard: &Rc<Shard>,
    connection: &Rc<ConnectionMemory>,
    frame: RequestFrame,
) -> HandlerResult {
    let key = ApiKey::try_from(frame.api_key)
        .map_err(|_| format!("unsupported API key {}", frame.api_key))?;
    // The group's offsets bucket may be loading here, or led elsewhere now.
    if let Some(code) = groups::refusal(shard, &frame)? {
        return groups::refuse(&frame, code);
    }
    match key {
        ApiKey::FindCoordinator => groups::find_coordinator(shard, frame).await,
        ApiKey::JoinGroup => groups::join_group(shard, frame).await,
        ApiKey::SyncGroup => groups::sync_group(shard, frame).await,
        ApiKey::Heartbeat => groups::heartbeat(shard, frame).await,
        ApiKey::LeaveGroup => groups::leave_group(shard, frame).await,
        ApiKey::OffsetCommit => groups::offset_commit(shard, frame).await,
        ApiKey::OffsetFetch => groups::offset_fetch(shard, frame).await,
        ApiKey::ListGroups => groups::list_groups(shard, frame).await,
        ApiKey::DescribeGroups => groups::describe_groups(shard, frame).await,
        ApiKey::DeleteGroups => groups::delete_groups(shard, frame).await,
        ApiKey::InitProducerId => produce::init_producer_id(shard, frame).await,
        ApiKey::Produce => produce::handle(shard, frame).await,
        ApiKey::Fetch => fetch::handle(shard, connection, frame).await,
        ApiKey::ListOffsets => list_offsets::handle(shard, frame).await,
        ApiKey::OffsetForLeaderEpoch => leader_epoch::handle(shard, frame).await,
        ApiKey::Metadata => metadata::handle(shard, frame).await,
        ApiKey::DescribeCluster => metadata::describe_cluster(shard, frame).await,
        ApiKey::CreateTopics => admin::create_topics(shard, frame).await,
        ApiKey::DeleteTopics => admin::delete_topics(shard, frame).await,
        ApiKey::CreatePartitions => admin::create_partitions(shard, frame).await,
        ApiKey::DescribeConfigs => admin::describe_configs(shard, frame).await,
        ApiKey::AlterConfigs => admin::alter_configs(shard, frame).await,
        ApiKey::IncrementalAlterConfigs => admin::incremental_alter_configs(shard, frame).await,
        ApiKey::DeleteRecords => admin::delete_records(shard, frame).await,
        other => Err(format!("no handler for {other:?}")),
    }
}

/// Encodes `body` as the response to `frame`, with the right header version.
pub fn respond<T: Encodable>(frame: &RequestFrame, body: &T) -> HandlerResult {
    let key = ApiKey::try_from(frame.api_key).map_err(|_| "unknown api key".to_string())?;
    let header_version = key.response_header_version(frame.api_version);
    encode_response(
        frame.correlation_id,
        header_version,
        body,
        frame.api_version,
    )
    .map(|frame| Some(frame.into()))
}

pub fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}
