//! Consumer-group membership as a Kafka consumer does it (eager protocol):
//! FindCoordinator, JoinGroup (retrying with the member id the coordinator
//! hands out), the leader computes a round-robin assignment, SyncGroup,
//! heartbeats, OffsetFetch/OffsetCommit, LeaveGroup. A coordinator that moved
//! or is loading (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE,
//! COORDINATOR_LOAD_IN_PROGRESS, a lost connection) is found again and the
//! request retried after a backoff; REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID
//! and ILLEGAL_GENERATION make the member rejoin.

use crate::client::{kafka_error, Conn};
use crate::retry::{self, Attempts, GroupError, CANNOT_CONNECT};
use crate::topology::Topology;
use crate::worker::Worker;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_protocol::api::error_code::{
    ILLEGAL_GENERATION, MEMBER_ID_REQUIRED, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID,
};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub const SESSION_TIMEOUT_MS: i32 = 30_000;
pub const REBALANCE_TIMEOUT_MS: i32 = 60_000;
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
const PROTOCOL_TYPE: &str = "consumer";
const ASSIGNOR: &str = "roundrobin";
/// ConsumerProtocol versions written; every broker and client reads these.
const SUBSCRIPTION_VERSION: i16 = 0;
const ASSIGNMENT_VERSION: i16 = 0;

/// What a heartbeat or commit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Ok,
    /// The group is rebalancing (or forgot this member, e.g. after the
    /// coordinator restarted): rejoin.
    Rejoin,
}

pub struct Member {
    worker: Rc<Worker>,
    /// Where FindCoordinator goes.
    bootstrap: String,
    pub group_id: String,
    /// The coordinator's connection; `None` until found (again).
    coordinator: RefCell<Option<Rc<Conn>>>,
    member_id: String,
    generation: i32,
}

fn str(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl Member {
    /// A member that finds its coordinator on its first request.
    pub fn new(worker: Rc<Worker>, bootstrap: &str, group_id: &str) -> Member {
        Member {
            worker,
            bootstrap: bootstrap.to_string(),
            group_id: group_id.to_string(),
            coordinator: RefCell::new(None),
            member_id: String::new(),
            generation: -1,
        }
    }

    /// Counts a retriable failure and waits its backoff; an error once the
    /// budget is spent, or at once when the run is stopping.
    async fn retry(&self, attempts: &mut Attempts, what: &str, kind: &str) -> Result<(), String> {
        if self.worker.control.stop_consuming.load(Ordering::Relaxed) {
            return Err(format!("{what}: {kind} (not retried: stopping)"));
        }
        attempts
            .retry(&self.worker.control.retries, what, kind)
            .await
    }

    /// The coordinator's connection: FindCoordinator (again) through the
    /// bootstrap broker if it is not known or its connection broke.
    async fn coordinator(&self, attempts: &mut Attempts) -> Result<Rc<Conn>, String> {
        let what = format!("FindCoordinator {}", self.group_id);
        loop {
            let known = self.coordinator.borrow().clone();
            if let Some(conn) = known.filter(|c| !c.is_closed()) {
                return Ok(conn);
            }
            let timeout = self.worker.workload.request_timeout();
            let Ok(bootstrap) = Conn::connect(&self.bootstrap, timeout).await else {
                self.retry(attempts, &what, CANNOT_CONNECT).await?;
                continue;
            };
            let request = FindCoordinatorRequest::default().with_key(str(&self.group_id));
            let response: FindCoordinatorResponse =
                match bootstrap.call(ApiKey::FindCoordinator, &request).await {
                    Ok(response) => response,
                    Err(_) if bootstrap.is_closed() => {
                        self.retry(attempts, &what, bootstrap.lost_kind()).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
            match response.error_code {
                0 => {
                    let addr = format!("{}:{}", response.host, response.port);
                    match Conn::connect(&addr, timeout).await {
                        Ok(conn) => {
                            *self.coordinator.borrow_mut() = Some(conn.clone());
                            return Ok(conn);
                        }
                        Err(_) => self.retry(attempts, &what, CANNOT_CONNECT).await?,
                    }
                }
                code if retry::is_retriable(code) => {
                    self.retry(attempts, &what, &retry::name(code)).await?
                }
                code => {
                    return Err(format!(
                        "FindCoordinator for {}: error {}",
                        self.group_id,
                        kafka_error(code)
                    ))
                }
            }
        }
    }

    /// Sends a request to the coordinator, as a Kafka consumer does: on a
    /// lost connection or NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE (the
    /// code `error_of` finds in the response) it finds the coordinator again,
    /// on COORDINATOR_LOAD_IN_PROGRESS it waits, and tries again after a
    /// backoff, for at most `budget`. Other errors are the caller's.
    async fn request<Req: Encodable, Resp: Decodable>(
        &self,
        key: ApiKey,
        request: &Req,
        budget: Duration,
        error_of: impl Fn(&Resp) -> i16,
    ) -> Result<Resp, String> {
        let mut attempts = Attempts::new(budget);
        let what = format!("{key:?} {}", self.group_id);
        loop {
            let conn = self.coordinator(&mut attempts).await?;
            let response: Resp = match conn.call(key, request).await {
                Ok(response) => response,
                Err(_) if conn.is_closed() => {
                    self.coordinator.replace(None);
                    self.retry(&mut attempts, &what, conn.lost_kind()).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let code = error_of(&response);
            match retry::group_error(code) {
                GroupError::Rediscover => {
                    self.coordinator.replace(None);
                    self.retry(&mut attempts, &what, &retry::name(code)).await?;
                }
                GroupError::Retry => self.retry(&mut attempts, &what, &retry::name(code)).await?,
                GroupError::Rejoin | GroupError::Fail => return Ok(response),
            }
        }
    }

    fn budget(&self) -> Duration {
        self.worker.workload.delivery_timeout()
    }

    /// Joins (or rejoins) and returns this member's partitions (indexes into
    /// `topology.partitions`).
    pub async fn join(&mut self, topology: &Topology) -> Result<Vec<usize>, String> {
        let subscription = encode_versioned(
            &ConsumerProtocolSubscription::default()
                .with_topics(topology.topics.iter().map(|t| str(t)).collect()),
            SUBSCRIPTION_VERSION,
        )?;
        loop {
            let request = JoinGroupRequest::default()
                .with_group_id(GroupId(str(&self.group_id)))
                .with_session_timeout_ms(SESSION_TIMEOUT_MS)
                .with_rebalance_timeout_ms(REBALANCE_TIMEOUT_MS)
                .with_member_id(str(&self.member_id))
                .with_protocol_type(str(PROTOCOL_TYPE))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(str(ASSIGNOR))
                    .with_metadata(subscription.clone())]);
            let joined: JoinGroupResponse = self
                .request(
                    ApiKey::JoinGroup,
                    &request,
                    self.budget(),
                    |r: &JoinGroupResponse| r.error_code,
                )
                .await?;
            match joined.error_code {
                0 => {}
                MEMBER_ID_REQUIRED => {
                    self.member_id = joined.member_id.to_string();
                    continue;
                }
                UNKNOWN_MEMBER_ID | ILLEGAL_GENERATION => {
                    self.member_id.clear();
                    continue;
                }
                REBALANCE_IN_PROGRESS => continue,
                code => {
                    return Err(format!(
                        "JoinGroup {}: error {}",
                        self.group_id,
                        kafka_error(code)
                    ))
                }
            }
            self.member_id = joined.member_id.to_string();
            self.generation = joined.generation_id;
            let assignments = if joined.leader.as_str() == self.member_id {
                let members: Vec<String> = joined
                    .members
                    .iter()
                    .map(|m| m.member_id.to_string())
                    .collect();
                assign(topology, &members)?
            } else {
                Vec::new()
            };
            let request = SyncGroupRequest::default()
                .with_group_id(GroupId(str(&self.group_id)))
                .with_generation_id(self.generation)
                .with_member_id(str(&self.member_id))
                .with_protocol_type(Some(str(PROTOCOL_TYPE)))
                .with_protocol_name(Some(str(ASSIGNOR)))
                .with_assignments(assignments);
            let synced: SyncGroupResponse = self
                .request(
                    ApiKey::SyncGroup,
                    &request,
                    self.budget(),
                    |r: &SyncGroupResponse| r.error_code,
                )
                .await?;
            match synced.error_code {
                0 => return decode_assignment(topology, synced.assignment),
                REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => continue,
                UNKNOWN_MEMBER_ID => {
                    self.member_id.clear();
                    continue;
                }
                code => {
                    return Err(format!(
                        "SyncGroup {}: error {}",
                        self.group_id,
                        kafka_error(code)
                    ))
                }
            }
        }
    }

    /// One heartbeat; a coordinator that moved is found again, for at most
    /// a session timeout (after that the group has dropped this member).
    pub async fn heartbeat(&self) -> Result<Standing, String> {
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(str(&self.group_id)))
            .with_generation_id(self.generation)
            .with_member_id(str(&self.member_id));
        let session = Duration::from_millis(SESSION_TIMEOUT_MS as u64);
        let response: HeartbeatResponse = self
            .request(
                ApiKey::Heartbeat,
                &request,
                session,
                |r: &HeartbeatResponse| r.error_code,
            )
            .await?;
        match response.error_code {
            0 => Ok(Standing::Ok),
            REBALANCE_IN_PROGRESS | UNKNOWN_MEMBER_ID | ILLEGAL_GENERATION => Ok(Standing::Rejoin),
            code => Err(format!(
                "Heartbeat {}: error {}",
                self.group_id,
                kafka_error(code)
            )),
        }
    }

    /// Committed offsets of `partitions`; -1 where nothing is committed.
    pub async fn committed(
        &self,
        topology: &Topology,
        partitions: &[usize],
    ) -> Result<Vec<i64>, String> {
        let mut by_topic: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
        for &i in partitions {
            let p = &topology.partitions[i];
            by_topic.entry(p.topic).or_default().push(p.partition);
        }
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(str(&self.group_id)))
            .with_topics(Some(
                by_topic
                    .into_iter()
                    .map(|(t, parts)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(topology.topic_name(t))
                            .with_partition_indexes(parts)
                    })
                    .collect(),
            ));
        // Before v2 a loading coordinator says so per partition.
        let response: OffsetFetchResponse = self
            .request(
                ApiKey::OffsetFetch,
                &request,
                self.budget(),
                |r: &OffsetFetchResponse| {
                    let partitions = r.topics.iter().flat_map(|t| t.partitions.iter());
                    first_error(r.error_code, partitions.map(|p| p.error_code))
                },
            )
            .await?;
        if response.error_code != 0 {
            return Err(format!(
                "OffsetFetch {}: error {}",
                self.group_id,
                kafka_error(response.error_code)
            ));
        }
        Ok(partitions
            .iter()
            .map(|&i| {
                let p = &topology.partitions[i];
                response
                    .topics
                    .iter()
                    .filter(|t| t.name.0.as_str() == topology.topics[p.topic])
                    .flat_map(|t| t.partitions.iter())
                    .find(|r| r.partition_index == p.partition && r.error_code == 0)
                    .map_or(-1, |r| r.committed_offset)
            })
            .collect())
    }

    /// Commits `offsets` (next offset to read) of `partitions`. A group that
    /// fences this member (REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID,
    /// ILLEGAL_GENERATION) makes it rejoin, as a Kafka consumer's failed
    /// commit does; that is counted as a retry under the error's name (the
    /// next commit, after the rejoin, covers these offsets).
    pub async fn commit(
        &self,
        topology: &Topology,
        partitions: &[usize],
        offsets: &[i64],
    ) -> Result<Standing, String> {
        let mut by_topic: BTreeMap<usize, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (&i, &offset) in partitions.iter().zip(offsets) {
            let p = &topology.partitions[i];
            by_topic.entry(p.topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(p.partition)
                    .with_committed_offset(offset),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(str(&self.group_id)))
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(str(&self.member_id))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, parts)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(topology.topic_name(t))
                            .with_partitions(parts)
                    })
                    .collect(),
            );
        let response: OffsetCommitResponse = self
            .request(
                ApiKey::OffsetCommit,
                &request,
                self.budget(),
                |r: &OffsetCommitResponse| {
                    let partitions = r.topics.iter().flat_map(|t| t.partitions.iter());
                    first_error(0, partitions.map(|p| p.error_code))
                },
            )
            .await?;
        for topic in &response.topics {
            for p in &topic.partitions {
                if retry::group_error(p.error_code) == GroupError::Rejoin {
                    self.worker.note_retry(&retry::name(p.error_code));
                    return Ok(Standing::Rejoin);
                }
                if p.error_code != 0 {
                    return Err(format!(
                        "OffsetCommit {}/{}: error {}",
                        topic.name.0,
                        p.partition_index,
                        kafka_error(p.error_code)
                    ));
                }
            }
        }
        Ok(Standing::Ok)
    }

    /// Leaves the group (best effort: no retry, as a consumer closing).
    pub async fn leave(&self) -> Result<(), String> {
        let conn = self
            .coordinator
            .borrow()
            .clone()
            .ok_or("no coordinator known")?;
        let version = conn.version(ApiKey::LeaveGroup)?;
        let mut request = LeaveGroupRequest::default().with_group_id(GroupId(str(&self.group_id)));
        if version >= 3 {
            request.members = vec![MemberIdentity::default().with_member_id(str(&self.member_id))];
        } else {
            request.member_id = str(&self.member_id);
        }
        let _: LeaveGroupResponse = conn.call(ApiKey::LeaveGroup, &request).await?;
        Ok(())
    }
}

/// The top-level error code if set, else the first partition's.
fn first_error(top: i16, partitions: impl Iterator<Item = i16>) -> i16 {
    if top != 0 {
        return top;
    }
    partitions.into_iter().find(|&c| c != 0).unwrap_or(0)
}

fn encode_versioned<T: Encodable>(message: &T, version: i16) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    message
        .encode(&mut buf, version)
        .map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// Round-robin over members sorted by id, partitions in topology order.
fn assign(
    topology: &Topology,
    members: &[String],
) -> Result<Vec<SyncGroupRequestAssignment>, String> {
    if members.is_empty() {
        return Err("JoinGroup made this member leader of a group with no members".into());
    }
    let mut sorted: Vec<&String> = members.iter().collect();
    sorted.sort();
    let mut owned: Vec<BTreeMap<usize, Vec<i32>>> = vec![BTreeMap::new(); sorted.len()];
    for (i, p) in topology.partitions.iter().enumerate() {
        owned[i % sorted.len()]
            .entry(p.topic)
            .or_default()
            .push(p.partition);
    }
    sorted
        .into_iter()
        .zip(owned)
        .map(|(member, topics)| {
            let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
                topics
                    .into_iter()
                    .map(|(t, parts)| {
                        AssignedPartitions::default()
                            .with_topic(topology.topic_name(t))
                            .with_partitions(parts)
                    })
                    .collect(),
            );
            Ok(SyncGroupRequestAssignment::default()
                .with_member_id(str(member))
                .with_assignment(encode_versioned(&assignment, ASSIGNMENT_VERSION)?))
        })
        .collect()
}

fn decode_assignment(topology: &Topology, mut bytes: Bytes) -> Result<Vec<usize>, String> {
    if bytes.len() < 2 {
        return Ok(Vec::new()); // an empty assignment: nothing for this member
    }
    let version = bytes.get_i16();
    let assignment = ConsumerProtocolAssignment::decode(&mut bytes, version.min(3))
        .map_err(|e| format!("bad assignment: {e}"))?;
    let mut out = Vec::new();
    for topic in &assignment.assigned_partitions {
        for &partition in &topic.partitions {
            if let Some(i) = topology.partitions.iter().position(|p| {
                p.partition == partition && topology.topics[p.topic] == topic.topic.0.as_str()
            }) {
                out.push(i);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::PartitionRef;

    fn topology() -> Topology {
        Topology {
            topics: vec!["a".into(), "b".into()],
            partitions: (0..2)
                .flat_map(|t| {
                    (0..3).map(move |p| PartitionRef {
                        topic: t,
                        partition: p,
                        leader: 0,
                    })
                })
                .collect(),
            brokers: [(0, "x:1".to_string())].into(),
        }
    }

    #[test]
    fn assignment_covers_every_partition_once_and_round_trips() {
        let t = topology();
        let members = vec![
            "m2".to_string(),
            "m1".to_string(),
            "m3".to_string(),
            "m4".to_string(),
        ];
        let sync = assign(&t, &members).unwrap();
        let mut all = Vec::new();
        for a in &sync {
            let mine = decode_assignment(&t, a.assignment.clone()).unwrap();
            assert!(mine.len() <= 2 && !mine.is_empty(), "{mine:?}");
            all.extend(mine);
        }
        all.sort();
        assert_eq!(all, (0..6).collect::<Vec<_>>());
        assert_eq!(
            decode_assignment(&t, Bytes::new()).unwrap(),
            Vec::<usize>::new()
        );
    }
}
