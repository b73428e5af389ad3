//! FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//! OffsetFetch, ListGroups, DescribeGroups, DeleteGroups. A request about a
//! group runs on the group's coordinator shard; if it arrived elsewhere the
//! whole frame is forwarded there.

use super::{respond, str_bytes, HandlerResult};
use crate::groups::offsets::{coordinator_shard, Committed, GroupOffsets};
use crate::groups::state::{code, JoinRequest};
use crate::shard::Shard;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::api::error_code;
use sluice_protocol::frame::{decode_body, RequestFrame};
use sluice_protocol::kafka_protocol;
use std::rc::Rc;

/// Where a group request must run: `Route::Here`, another shard of this
/// node, or another node (the client is answered NOT_COORDINATOR).
pub enum Route {
    Here,
    Shard(usize),
    OtherNode,
}

pub fn route(shard: &Shard, frame: &RequestFrame) -> Result<Route, String> {
    let Some(group) = group_of(frame)? else {
        return Ok(Route::Here);
    };
    if shard.coordinator_node(&group).map(|c| c.0) != Some(shard.settings.node_id) {
        shard.error_answer(
            frame.api_key,
            format_args!("group {group}"),
            error_code::NOT_COORDINATOR,
        );
        return Ok(Route::OtherNode);
    }
    let owner = coordinator_shard(&group, shard.shard_count);
    Ok(if owner == shard.id {
        Route::Here
    } else {
        Route::Shard(owner)
    })
}

/// The group a group request is about (`None` for other requests).
fn group_of(frame: &RequestFrame) -> Result<Option<String>, String> {
    let key = ApiKey::try_from(frame.api_key).map_err(|_| "unknown api key".to_string())?;
    let body = frame.body.clone();
    let v = frame.api_version;
    let group = match key {
        ApiKey::JoinGroup => decode_body::<JoinGroupRequest>(body, v)?
            .group_id
            .0
            .to_string(),
        ApiKey::SyncGroup => decode_body::<SyncGroupRequest>(body, v)?
            .group_id
            .0
            .to_string(),
        ApiKey::Heartbeat => decode_body::<HeartbeatRequest>(body, v)?
            .group_id
            .0
            .to_string(),
        ApiKey::LeaveGroup => decode_body::<LeaveGroupRequest>(body, v)?
            .group_id
            .0
            .to_string(),
        ApiKey::OffsetCommit => decode_body::<OffsetCommitRequest>(body, v)?
            .group_id
            .0
            .to_string(),
        // From v8 one request may ask about several groups: it fans out from here.
        ApiKey::OffsetFetch if v >= 8 => return Ok(None),
        ApiKey::OffsetFetch => decode_body::<OffsetFetchRequest>(body, v)?
            .group_id
            .0
            .to_string(),
        _ => return Ok(None),
    };
    // Offset records store group ids with a 16-bit length.
    if group.len() > i16::MAX as usize {
        return Err(format!("group id of {} bytes is too long", group.len()));
    }
    Ok(Some(group))
}

/// On the coordinator shard: the code to refuse a group request with while
/// the group's offsets bucket is loading here (COORDINATOR_LOAD_IN_PROGRESS)
/// or is no longer led here (NOT_COORDINATOR); `None` to serve it. While it
/// loads, SyncGroup gets REBALANCE_IN_PROGRESS and Heartbeat NONE, as
/// Kafka's coordinator answers them (the Java client takes
/// COORDINATOR_LOAD_IN_PROGRESS on SyncGroup as a fatal error).
pub fn refusal(shard: &Shard, frame: &RequestFrame) -> Result<Option<i16>, String> {
    let Some(group) = group_of(frame)? else {
        return Ok(None);
    };
    let code = match shard.coordinator()?.offsets.serves(&group) {
        error_code::NONE => return Ok(None),
        code => while_loading(frame.api_key, code),
    };
    shard.error_answer(frame.api_key, format_args!("group {group}"), code);
    Ok(Some(code))
}

/// A group request's answer to `code`, COORDINATOR_LOAD_IN_PROGRESS taken
/// as Kafka's coordinator takes it for that API.
fn while_loading(api_key: i16, code: i16) -> i16 {
    match (ApiKey::try_from(api_key), code) {
        (Ok(ApiKey::SyncGroup), _) => crate::groups::coordinator::loading_as_rebalance(code),
        (Ok(ApiKey::Heartbeat), error_code::COORDINATOR_LOAD_IN_PROGRESS) => error_code::NONE,
        _ => code,
    }
}

/// The answer to a group request that reached a node that does not
/// coordinate the group (after the cluster's nodes changed): NOT_COORDINATOR,
/// so the client asks FindCoordinator again.
pub fn not_coordinator(frame: &RequestFrame) -> HandlerResult {
    refuse(frame, error_code::NOT_COORDINATOR)
}

/// A group request answered with `code` only.
pub fn refuse(frame: &RequestFrame, code: i16) -> HandlerResult {
    let key = ApiKey::try_from(frame.api_key).map_err(|_| "unknown api key".to_string())?;
    let (body, v) = (frame.body.clone(), frame.api_version);
    match key {
        ApiKey::JoinGroup => respond(frame, &JoinGroupResponse::default().with_error_code(code)),
        ApiKey::SyncGroup => respond(frame, &SyncGroupResponse::default().with_error_code(code)),
        ApiKey::Heartbeat => respond(frame, &HeartbeatResponse::default().with_error_code(code)),
        ApiKey::LeaveGroup => respond(frame, &LeaveGroupResponse::default().with_error_code(code)),
        ApiKey::OffsetFetch => {
            respond(frame, &OffsetFetchResponse::default().with_error_code(code))
        }
        ApiKey::OffsetCommit => {
            let request = decode_body::<OffsetCommitRequest>(body, v)?;
            let topics = request
                .topics
                .iter()
                .map(|t| {
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect();
            respond(frame, &OffsetCommitResponse::default().with_topics(topics))
        }
        other => Err(format!("{other:?} is not a group request")),
    }
}

pub async fn find_coordinator(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: FindCoordinatorRequest = decode_body(frame.body.clone(), frame.api_version)?;
    if request.key_type == 0 {
        shard.ensure_offsets_topic().await;
    }
    // The bucket's leader; none yet (no leader, the topic just created): retriable.
    let coordinator = |key: &str| {
        shard
            .coordinator_node(key)
            .ok_or(error_code::COORDINATOR_NOT_AVAILABLE)
    };
    let answer = |key_type: i8| -> (i16, Option<String>) {
        if key_type == 0 {
            (error_code::NONE, None)
        } else {
            // Not COORDINATOR_NOT_AVAILABLE: clients retry that forever, and
            // an exactly-once application hung instead of failing. This code
            // is fatal to a transactional producer (Java, librdkafka).
            (
                error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                Some(
                    "transactions are not supported by this broker (no transaction coordinator)"
                        .into(),
                ),
            )
        }
    };
    let body = if frame.api_version >= 4 {
        let coordinators: Vec<CoordinatorEntry> = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let (mut code, message) = answer(request.key_type);
                let (node, host, port) = match coordinator(key) {
                    Ok(found) => found,
                    Err(missing) => {
                        code = code.max(missing);
                        (-1, String::new(), -1)
                    }
                };
                CoordinatorEntry::default()
                    .with_key(key.clone())
                    .with_node_id(BrokerId(if code == 0 { node } else { -1 }))
                    .with_host(str_bytes(if code == 0 { &host } else { "" }))
                    .with_port(if code == 0 { port } else { -1 })
                    .with_error_code(code)
                    .with_error_message(message.map(|m| str_bytes(&m)))
            })
            .collect();
        for entry in &coordinators {
            shard.error_answer(
                frame.api_key,
                format_args!("key {}", entry.key),
                entry.error_code,
            );
        }
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let (mut code, message) = answer(request.key_type);
        let (node, host, port) = match coordinator(&request.key) {
            Ok(found) => found,
            Err(missing) => {
                code = code.max(missing);
                (-1, String::new(), -1)
            }
        };
        shard.error_answer(frame.api_key, format_args!("key {}", request.key), code);
        let response = FindCoordinatorResponse::default()
            .with_error_code(code)
            .with_node_id(BrokerId(if code == 0 { node } else { -1 }))
            .with_host(str_bytes(if code == 0 { &host } else { "" }))
            .with_port(if code == 0 { port } else { -1 });
        if frame.api_version >= 1 {
            response.with_error_message(message.map(|m| str_bytes(&m)))
        } else {
            response
        }
    };
    respond(&frame, &body)
}

pub async fn join_group(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: JoinGroupRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let v = frame.api_version;
    let coordinator = shard.coordinator()?;
    let group_id = request.group_id.0.to_string();
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: frame.client_id.clone().unwrap_or_default(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if v >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: v >= 4,
    };
    let result = if group_id.is_empty() {
        crate::groups::state::JoinResult {
            error_code: code::INVALID_GROUP_ID,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: join.member_id.clone(),
            members: Vec::new(),
        }
    } else {
        coordinator.join(&group_id, join).await
    };
    let members = result
        .members
        .iter()
        .map(|(id, instance, metadata)| {
            let member = JoinGroupResponseMember::default()
                .with_member_id(str_bytes(id))
                .with_metadata(metadata.clone());
            if v >= 5 {
                member.with_group_instance_id(instance.as_ref().map(|i| str_bytes(i)))
            } else {
                member
            }
        })
        .collect();
    let mut body = JoinGroupResponse::default()
        .with_error_code(result.error_code)
        .with_generation_id(result.generation)
        .with_protocol_name(Some(str_bytes(
            result.protocol_name.as_deref().unwrap_or(""),
        )))
        .with_leader(str_bytes(&result.leader))
        .with_member_id(str_bytes(&result.member_id))
        .with_members(members);
    if v >= 7 {
        body = body
            .with_protocol_type(result.protocol_type.as_ref().map(|t| str_bytes(t)))
            .with_protocol_name(result.protocol_name.as_ref().map(|n| str_bytes(n)));
    }
    shard.error_answer(
        frame.api_key,
        format_args!("group {group_id}"),
        result.error_code,
    );
    respond(&frame, &body)
}

pub async fn sync_group(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: SyncGroupRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let coordinator = shard.coordinator()?;
    let assignments = request
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let (error, assignment) = coordinator
        .sync(
            &request.group_id.0,
            &request.member_id,
            request.generation_id,
            assignments,
        )
        .await;
    shard.error_answer(
        frame.api_key,
        format_args!("group {}", request.group_id.0),
        error,
    );
    let mut body = SyncGroupResponse::default()
        .with_error_code(error)
        .with_assignment(assignment);
    if frame.api_version >= 5 {
        body = body
            .with_protocol_type(request.protocol_type.clone())
            .with_protocol_name(request.protocol_name.clone());
    }
    respond(&frame, &body)
}

pub async fn heartbeat(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: HeartbeatRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let error = shard.coordinator()?.heartbeat(
        &request.group_id.0,
        &request.member_id,
        request.generation_id,
    );
    shard.error_answer(
        frame.api_key,
        format_args!("group {}", request.group_id.0),
        error,
    );
    respond(&frame, &HeartbeatResponse::default().with_error_code(error))
}

pub async fn leave_group(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: LeaveGroupRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let coordinator = shard.coordinator()?;
    let group = request.group_id.0.to_string();
    if frame.api_version < 3 {
        let error = coordinator.leave(&group, &request.member_id, None);
        shard.error_answer(frame.api_key, format_args!("group {group}"), error);
        coordinator.store_if_emptied(&group).await;
        return respond(
            &frame,
            &LeaveGroupResponse::default().with_error_code(error),
        );
    }
    let members: Vec<MemberResponse> = request
        .members
        .iter()
        .map(|m| {
            let error = coordinator.leave(&group, &m.member_id, m.group_instance_id.as_deref());
            shard.error_answer(
                frame.api_key,
                format_args!("group {group} member {}", m.member_id),
                error,
            );
            MemberResponse::default()
                .with_member_id(m.member_id.clone())
                .with_group_instance_id(m.group_instance_id.clone())
                .with_error_code(error)
        })
        .collect();
    coordinator.store_if_emptied(&group).await;
    respond(
        &frame,
        &LeaveGroupResponse::default()
            .with_error_code(code::NONE)
            .with_members(members),
    )
}

pub async fn offset_commit(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: OffsetCommitRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let coordinator = shard.coordinator()?;
    let group = request.group_id.0.to_string();
    let snapshot = shard.snapshot();
    let check = coordinator.check_commit(
        &group,
        &request.member_id,
        request.generation_id_or_member_epoch,
    );
    let now = sluice_storage::now_ms() as i64;
    let mut commits = Vec::new();
    let mut results: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let partitions = snapshot
            .topics
            .get(&name)
            .map(|t| t.partition_count())
            .unwrap_or(0);
        let mut codes = Vec::new();
        for partition in &topic.partitions {
            let error = match check {
                Err(e) => e,
                Ok(())
                    if partition.partition_index < 0 || partition.partition_index >= partitions =>
                {
                    error_code::UNKNOWN_TOPIC_OR_PARTITION
                }
                Ok(())
                    if partition
                        .committed_metadata
                        .as_ref()
                        .is_some_and(|m| m.len() > 4096) =>
                {
                    error_code::OFFSET_METADATA_TOO_LARGE
                }
                Ok(()) => {
                    commits.push((
                        name.clone(),
                        partition.partition_index,
                        Committed {
                            offset: partition.committed_offset,
                            leader_epoch: partition.committed_leader_epoch,
                            metadata: partition.committed_metadata.as_ref().map(|m| m.to_string()),
                            commit_ms: now,
                        },
                    ));
                    code::NONE
                }
            };
            codes.push((partition.partition_index, error));
        }
        results.push((topic.name.clone(), codes));
    }
    if let Err(failed) = coordinator.commit(&group, commits).await {
        tracing::warn!(%group, error = %error_code::name(failed), "offset commit failed");
        for (_, codes) in results.iter_mut() {
            for (_, code) in codes.iter_mut() {
                if *code == code::NONE {
                    *code = failed; // retriable: the client finds the coordinator again
                }
            }
        }
    }
    for (name, codes) in &results {
        for (partition, code) in codes {
            shard.error_answer(
                frame.api_key,
                format_args!("group {} {}-{partition}", request.group_id.0, name.0),
                *code,
            );
        }
    }
    let topics = results
        .into_iter()
        .map(|(name, codes)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    codes
                        .into_iter()
                        .map(|(p, e)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(e)
                        })
                        .collect(),
                )
        })
        .collect();
    respond(&frame, &OffsetCommitResponse::default().with_topics(topics))
}

/// (topic, [(partition, committed offset, leader epoch, metadata)]) for the
/// partitions asked (or, with `None`, every partition the group committed).
type FetchedOffsets = Vec<(TopicName, Vec<(i32, i64, i32, StrBytes)>)>;

fn fetched_offsets(
    committed: &GroupOffsets,
    wanted: Option<Vec<(TopicName, Vec<i32>)>>,
) -> FetchedOffsets {
    let wanted = wanted.unwrap_or_else(|| {
        let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
        for (topic, partition) in committed.keys() {
            by_topic.entry(topic.clone()).or_default().push(*partition);
        }
        by_topic
            .into_iter()
            .map(|(name, partitions)| (TopicName(str_bytes(&name)), partitions))
            .collect()
    });
    wanted
        .into_iter()
        .map(|(name, partitions)| {
            let answers = partitions
                .into_iter()
                .map(|p| {
                    let found = committed.get(&(name.0.to_string(), p));
                    (
                        p,
                        found.map_or(-1, |c| c.offset),
                        found.map_or(-1, |c| c.leader_epoch),
                        str_bytes(found.and_then(|c| c.metadata.as_deref()).unwrap_or("")),
                    )
                })
                .collect();
            (name, answers)
        })
        .collect()
}

/// OffsetFetch. Up to v7 one group (the request runs on its coordinator
/// shard); from v8 several, each asked of its own coordinator shard.
pub async fn offset_fetch(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: OffsetFetchRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let v = frame.api_version;
    if v >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group in &request.groups {
            let committed = shard.committed_offsets(&group.group_id.0).await?;
            let wanted = group.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                    .collect()
            });
            let topics = fetched_offsets(&committed, wanted)
                .into_iter()
                .map(|(name, partitions)| {
                    offset_fetch_response::OffsetFetchResponseTopics::default()
                        .with_name(name)
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, offset, epoch, metadata)| {
                                    offset_fetch_response::OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(epoch)
                                        .with_metadata(Some(metadata))
                                        .with_error_code(code::NONE)
                                })
                                .collect(),
                        )
                })
                .collect();
            groups.push(
                offset_fetch_response::OffsetFetchResponseGroup::default()
                    .with_group_id(group.group_id.clone())
                    .with_topics(topics)
                    .with_error_code(code::NONE),
            );
        }
        return respond(&frame, &OffsetFetchResponse::default().with_groups(groups));
    }
    let committed = shard.coordinator()?.committed(&request.group_id.0);
    let wanted = request.topics.as_ref().map(|topics| {
        topics
            .iter()
            .map(|t| (t.name.clone(), t.partition_indexes.clone()))
            .collect()
    });
    let topics: Vec<OffsetFetchResponseTopic> = fetched_offsets(&committed, wanted)
        .into_iter()
        .map(|(name, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(p, offset, epoch, metadata)| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(if v >= 5 { epoch } else { -1 })
                                .with_metadata(Some(metadata))
                                .with_error_code(code::NONE)
                        })
                        .collect(),
                )
        })
        .collect();
    let mut body = OffsetFetchResponse::default().with_topics(topics);
    if v >= 2 {
        body = body.with_error_code(code::NONE);
    }
    respond(&frame, &body)
}

pub async fn list_groups(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let _request: ListGroupsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let groups = shard.all_groups().await;
    let listed = groups
        .into_iter()
        .map(|(id, protocol_type, state)| {
            let group = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&id)))
                .with_protocol_type(str_bytes(&protocol_type));
            if frame.api_version >= 4 {
                group.with_group_state(str_bytes(&state))
            } else {
                group
            }
        })
        .collect();
    respond(
        &frame,
        &ListGroupsResponse::default()
            .with_error_code(code::NONE)
            .with_groups(listed),
    )
}

pub async fn describe_groups(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: DescribeGroupsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut described = Vec::new();
    for group in &request.groups {
        let id = group.0.to_string();
        let description = shard.describe_group(&id).await;
        let entry = DescribedGroup::default().with_group_id(group.clone());
        described.push(match description {
            None => entry
                .with_error_code(code::NONE)
                .with_group_state(str_bytes("Dead")),
            Some(d) => entry
                .with_error_code(code::NONE)
                .with_group_state(str_bytes(&d.state))
                .with_protocol_type(str_bytes(&d.protocol_type))
                .with_protocol_data(str_bytes(&d.protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(
                            |(member, instance, client_id, host, metadata, assignment)| {
                                let m = DescribedGroupMember::default()
                                    .with_member_id(str_bytes(&member))
                                    .with_client_id(str_bytes(&client_id))
                                    .with_client_host(str_bytes(&host))
                                    .with_member_metadata(metadata)
                                    .with_member_assignment(assignment);
                                if frame.api_version >= 4 {
                                    m.with_group_instance_id(instance.map(|i| str_bytes(&i)))
                                } else {
                                    m
                                }
                            },
                        )
                        .collect(),
                ),
        });
    }
    respond(
        &frame,
        &DescribeGroupsResponse::default().with_groups(described),
    )
}

pub async fn delete_groups(shard: &Rc<Shard>, frame: RequestFrame) -> HandlerResult {
    let request: DeleteGroupsRequest = decode_body(frame.body.clone(), frame.api_version)?;
    let mut results = Vec::new();
    for group in &request.groups_names {
        let error = shard.delete_group(&group.0).await;
        shard.error_answer(frame.api_key, format_args!("group {}", group.0), error);
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group.clone())
                .with_error_code(error),
        );
    }
    respond(
        &frame,
        &DeleteGroupsResponse::default().with_results(results),
    )
}
