//! The group coordinator of one shard: owns the groups whose id hashes here,
//! drives their state machine, and parks JoinGroup/SyncGroup requests until
//! their round completes (woken by `changed`, or by the round's deadline).
//! A group's metadata is stored in its offsets bucket when a rebalance
//! completes (before the members get their assignments) and when it
//! empties, and taken over from there by the bucket's next leader.

use super::offsets::{Committed, GroupOffsets, OffsetStore};
use super::state::{code, Group, GroupState, Join, JoinRequest, JoinResult, Sync};
use crate::shard::PartitionEntry;
use bytes::Bytes;
use sluice_storage::event::Event;
use sluice_storage::now_ms;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Kafka's group.initial.rebalance.delay.ms is 3 s; a shorter wait still
/// gathers consumers that start together.
pub const INITIAL_REBALANCE_DELAY_MS: u64 = 300;
/// How often sessions are checked for expiry.
pub const EXPIRY_CHECK_MS: u64 = 250;

pub struct Coordinator {
    groups: RefCell<HashMap<String, Group>>,
    changed: Event,
    pub offsets: OffsetStore,
}

/// A SyncGroup's answer while its group's bucket loads: Kafka's coordinator
/// answers REBALANCE_IN_PROGRESS (the Java client takes
/// COORDINATOR_LOAD_IN_PROGRESS on SyncGroup as a fatal error).
pub fn loading_as_rebalance(code: i16) -> i16 {
    match code {
        code::COORDINATOR_LOAD_IN_PROGRESS => code::REBALANCE_IN_PROGRESS,
        other => other,
    }
}

/// Sends a group whose assignment was being stored into a new round when
/// the storing request is dropped before it applied the outcome.
struct StoreGuard<'a> {
    coordinator: &'a Coordinator,
    group_id: &'a str,
    generation: i32,
    armed: bool,
}

impl Drop for StoreGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(mut groups) = self.coordinator.groups.try_borrow_mut() {
            if let Some(group) = groups.get_mut(self.group_id) {
                group.store_failed(self.generation, now_ms(), INITIAL_REBALANCE_DELAY_MS);
            }
        }
        self.coordinator.changed.notify();
    }
}

pub struct GroupSummary {
    pub group_id: String,
    pub protocol_type: String,
    pub state: String,
}

pub struct GroupDescription {
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

async fn wait_until(changed: &Event, deadline_ms: u64) {
    let wait = deadline_ms.saturating_sub(now_ms()).clamp(1, 1000);
    futures_lite::future::or(
        changed.listen(),
        glommio::timer::sleep(Duration::from_millis(wait)),
    )
    .await;
}

impl Coordinator {
    pub fn new(offsets: OffsetStore) -> Coordinator {
        Coordinator {
            groups: RefCell::new(HashMap::new()),
            changed: Event::default(),
            offsets,
        }
    }

    pub async fn join(&self, group_id: &str, request: JoinRequest) -> JoinResult {
        let asked_member = request.member_id.clone();
        let (outcome, round) = {
            let mut groups = self.groups.borrow_mut();
            let group = groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id));
            let outcome = group.join(request, now_ms(), INITIAL_REBALANCE_DELAY_MS);
            (outcome, group.join_rounds)
        };
        self.changed.notify();
        let failed = |error_code: i16, member_id: String| JoinResult {
            error_code,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id,
            members: Vec::new(),
        };
        let member_id = match outcome {
            Join::MemberIdRequired(id) => return failed(code::MEMBER_ID_REQUIRED, id),
            Join::Error(error_code) => return failed(error_code, asked_member),
            Join::Waiting { member_id } => member_id,
        };
        loop {
            let deadline = {
                let mut groups = self.groups.borrow_mut();
                let Some(group) = groups.get_mut(group_id) else {
                    return failed(self.gone(group_id), member_id);
                };
                if group.join_rounds > round {
                    return group.join_result(&member_id);
                }
                if group.try_complete_join(now_ms()) {
                    let result = group.join_result(&member_id);
                    drop(groups);
                    self.changed.notify();
                    return result;
                }
                group
                    .join_deadline_ms
                    .min(group.join_gate_ms.max(now_ms() + 1))
            };
            wait_until(&self.changed, deadline).await;
        }
    }

    pub async fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> (i16, Bytes) {
        let mut assignments = Some(assignments);
        loop {
            let outcome = {
                let mut groups = self.groups.borrow_mut();
                let Some(group) = groups.get_mut(group_id) else {
                    return (self.gone_sync(group_id), Bytes::new());
                };
                group.sync(
                    member_id,
                    generation,
                    assignments.take().unwrap_or_default(),
                    now_ms(),
                )
            };
            match outcome {
                Sync::Done(assignment) => {
                    self.changed.notify();
                    return (code::NONE, assignment);
                }
                Sync::Error(error_code) => return (error_code, Bytes::new()),
                Sync::Waiting => wait_until(&self.changed, now_ms() + 1000).await,
                Sync::Store(stored) => {
                    return self.store_assignment(group_id, member_id, stored).await
                }
            }
        }
    }

    /// The code for a parked request whose group is gone: the bucket led
    /// elsewhere now (NOT_COORDINATOR: the member keeps its id and finds the
    /// group's new coordinator, which took it over), else UNKNOWN_MEMBER_ID.
    fn gone(&self, group_id: &str) -> i16 {
        match self.offsets.serves(group_id) {
            code::NONE => code::UNKNOWN_MEMBER_ID,
            elsewhere => elsewhere,
        }
    }

    /// `gone` for a SyncGroup: a bucket loading again is REBALANCE_IN_PROGRESS.
    fn gone_sync(&self, group_id: &str) -> i16 {
        loading_as_rebalance(self.gone(group_id))
    }

    /// The leader's SyncGroup: the group with its assignment is written to
    /// its offsets bucket (every in-sync replica), and only then is it
    /// Stable and the members get their parts, as in Kafka; a failed write
    /// sends the members into a new round. A record too large for the
    /// topic (a very large group) is not kept: the group's old record is
    /// tombstoned and the group goes on (a coordinator change makes its
    /// members join again, as before group records), where Kafka would
    /// fail every round with UNKNOWN_SERVER_ERROR.
    async fn store_assignment(
        &self,
        group_id: &str,
        leader: &str,
        stored: super::state::StoredGroup,
    ) -> (i16, Bytes) {
        let generation = stored.generation;
        // If this request is dropped mid-write (its connection went away),
        // the group must not wait in CompletingRebalance for an outcome
        // nobody applies: it rebalances.
        let mut guard = StoreGuard {
            coordinator: self,
            group_id,
            generation,
            armed: true,
        };
        let mut result = self.offsets.store_group(&stored).await;
        if result == Err(code::MESSAGE_TOO_LARGE) {
            tracing::error!(
                group = group_id,
                generation,
                members = stored.members.len(),
                "group record larger than max.message.bytes of __consumer_offsets: not kept; a coordinator change will make its members join again"
            );
            result = self.offsets.forget_group(group_id).await;
        }
        guard.armed = false;
        let reply = {
            let mut groups = self.groups.borrow_mut();
            match (groups.get_mut(group_id), result) {
                (None, _) => (self.gone_sync(group_id), Bytes::new()),
                (Some(group), Ok(())) => {
                    if group.assignment_stored(generation) {
                        (code::NONE, group.members[leader].assignment.clone())
                    } else {
                        (code::REBALANCE_IN_PROGRESS, Bytes::new())
                    }
                }
                (Some(group), Err(error)) => {
                    let answer = super::offsets::group_error(error);
                    tracing::warn!(group = group_id, generation, error = %code::name(error), answer = %code::name(answer), "group assignment not stored: the members rebalance");
                    group.store_failed(generation, now_ms(), INITIAL_REBALANCE_DELAY_MS);
                    (answer, Bytes::new())
                }
            }
        };
        self.changed.notify();
        reply
    }

    pub fn heartbeat(&self, group_id: &str, member_id: &str, generation: i32) -> i16 {
        match self.groups.borrow_mut().get_mut(group_id) {
            Some(group) => group.heartbeat(member_id, generation, now_ms()),
            None => code::UNKNOWN_MEMBER_ID,
        }
    }

    pub fn leave(&self, group_id: &str, member_id: &str, instance_id: Option<&str>) -> i16 {
        let result = match self.groups.borrow_mut().get_mut(group_id) {
            Some(group) => {
                group.leave(member_id, instance_id, now_ms(), INITIAL_REBALANCE_DELAY_MS)
            }
            None => code::UNKNOWN_MEMBER_ID,
        };
        self.changed.notify();
        result
    }

    /// Stores the group's record if its last member just left (before the
    /// LeaveGroup answer: a member that closed cleanly is not brought back
    /// by a coordinator taking the group over right after). A failed write
    /// is tried again by the next session check while the group is Empty.
    pub async fn store_if_emptied(&self, group_id: &str) {
        let stored = {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get_mut(group_id) else {
                return;
            };
            if !std::mem::take(&mut group.unstored) || group.state != GroupState::Empty {
                return;
            }
            group.to_stored()
        };
        if self.offsets.store_group(&stored).await.is_err() {
            if let Some(group) = self.groups.borrow_mut().get_mut(group_id) {
                group.unstored = group.state == GroupState::Empty;
            }
        }
    }

    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), i16> {
        match self.groups.borrow().get(group_id) {
            Some(group) => group.check_commit(member_id, generation),
            None if generation < 0 || member_id.is_empty() => Ok(()),
            None => Err(code::UNKNOWN_MEMBER_ID),
        }
    }

    /// The error is the Kafka code to answer (NOT_COORDINATOR after a
    /// leadership change of the group's offsets bucket, ...).
    pub async fn commit(
        &self,
        group_id: &str,
        commits: Vec<(String, i32, Committed)>,
    ) -> Result<(), i16> {
        self.offsets.commit(group_id, commits).await
    }

    /// This node leads the offsets bucket now: loads its offsets and takes
    /// its groups over as they were last stored (members, generation,
    /// assignments), every member's session starting now, so members of a
    /// stable group go on heartbeating without a rebalance.
    pub async fn attach(&self, bucket: u32, entry: Rc<PartitionEntry>) {
        // Led here again without a detach in between (leadership went
        // elsewhere and back within one metadata update): the groups as held
        // here may be older than the partition's records, and must not expire
        // while it loads. The stored ones are taken over below.
        self.forget_groups(bucket);
        // Taken over in the same step the load completes in: no request of
        // these groups was served in between.
        let Some(loaded) = self.offsets.attach(bucket, entry).await else {
            return;
        };
        let now = now_ms();
        let mut groups = self.groups.borrow_mut();
        let mut members = 0;
        for stored in loaded {
            members += stored.members.len();
            let id = stored.id.clone();
            groups
                .entry(id)
                .or_insert_with(|| Group::restore(stored, now));
        }
        if members > 0 {
            tracing::info!(bucket, members, "groups of the offsets bucket taken over");
        }
    }

    /// This node no longer leads the offsets bucket: its groups (members,
    /// generations, offsets) are served by the new leader; members parked
    /// here are woken and will rediscover the coordinator.
    pub fn detach(&self, bucket: u32) {
        self.offsets.detach(bucket);
        self.forget_groups(bucket);
    }

    /// Drops the groups of `bucket` held here and wakes their parked requests.
    fn forget_groups(&self, bucket: u32) {
        self.groups
            .borrow_mut()
            .retain(|id, _| super::offsets::bucket_of(id) != bucket);
        self.changed.notify();
    }

    pub fn committed(&self, group_id: &str) -> GroupOffsets {
        self.offsets.fetch(group_id)
    }

    /// Removes members whose session expired and wakes parked requests;
    /// forgets groups nobody is in and that hold no offsets; writes what
    /// changed in the stored groups (in the background).
    pub fn expire_sessions(self: &Rc<Self>) {
        let mut any = false;
        for group in self.groups.borrow_mut().values_mut() {
            if group.expire(now_ms(), INITIAL_REBALANCE_DELAY_MS) {
                tracing::info!(group = %group.id, generation = group.generation, "member session expired: rebalancing");
                any = true;
            }
        }
        let offsets = &self.offsets;
        let mut emptied = Vec::new();
        self.groups.borrow_mut().retain(|id, g| {
            let keep = !(g.members.is_empty()
                && g.pending_member_ids.is_empty()
                && offsets.fetch(id).is_empty());
            // Filled again before it was written: its next round stores it.
            g.unstored &= g.state == GroupState::Empty;
            if keep && g.unstored {
                emptied.push(id.clone());
            }
            keep
        });
        // Records of groups no longer held here (forgotten just now, or a
        // tombstone that failed before): tombstoned, retried every check.
        let forgotten: Vec<String> = {
            let groups = self.groups.borrow();
            offsets
                .stored_groups()
                .into_iter()
                .filter(|id| !groups.contains_key(id))
                .collect()
        };
        self.store_changes(emptied, forgotten);
        if any {
            self.changed.notify();
        }
    }

    /// In the background: the record of each emptied group (one that filled
    /// again meanwhile is stored by its next rebalance), and a tombstone for
    /// each forgotten one (unless it was re-created meanwhile).
    fn store_changes(self: &Rc<Self>, emptied: Vec<String>, forgotten: Vec<String>) {
        if emptied.is_empty() && forgotten.is_empty() {
            return;
        }
        let this = self.clone();
        glommio::spawn_local(async move {
            for id in forgotten {
                // Made again meanwhile: its own record stands.
                if this.groups.borrow().contains_key(&id) {
                    continue;
                }
                if let Err(error) = this.offsets.forget_group(&id).await {
                    tracing::debug!(group = %id, error = %code::name(error), "tombstone of a forgotten group not written");
                }
            }
            for id in emptied {
                this.store_if_emptied(&id).await;
            }
        })
        .detach();
    }

    /// Drops the committed offsets of empty groups idle longer than `retention_ms`.
    pub async fn expire_offsets(&self, retention_ms: i64) {
        let stale: Vec<String> = self
            .offsets
            .stale_groups(now_ms() as i64, retention_ms)
            .into_iter()
            .filter(|g| {
                self.groups
                    .borrow()
                    .get(g)
                    .is_none_or(|group| group.members.is_empty())
            })
            .collect();
        for group in stale {
            if self.offsets.delete_group(&group).await.is_ok() {
                // Members may have joined during the await: keep such a group.
                self.groups
                    .borrow_mut()
                    .retain(|id, g| *id != group || !g.members.is_empty());
                tracing::info!(%group, "committed offsets expired");
            }
        }
    }

    pub fn list(&self) -> Vec<GroupSummary> {
        let groups = self.groups.borrow();
        let mut out: Vec<GroupSummary> = groups
            .values()
            .map(|g| GroupSummary {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state.name().to_string(),
            })
            .collect();
        for group in self.offsets.groups_with_offsets() {
            if !groups.contains_key(&group) {
                out.push(GroupSummary {
                    group_id: group,
                    protocol_type: "consumer".into(),
                    state: GroupState::Empty.name().into(),
                });
            }
        }
        out
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let groups = self.groups.borrow();
        let Some(group) = groups.get(group_id) else {
            return (!self.offsets.fetch(group_id).is_empty()).then(|| GroupDescription {
                state: GroupState::Empty.name().into(),
                protocol_type: "consumer".into(),
                protocol: String::new(),
                members: Vec::new(),
            });
        };
        Some(GroupDescription {
            state: group.state.name().to_string(),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol: group.protocol.clone().unwrap_or_default(),
            members: group
                .members
                .values()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        m.metadata_for(group.protocol.as_deref()),
                        m.assignment.clone(),
                    )
                })
                .collect(),
        })
    }

    /// DeleteGroups: only groups without members.
    pub async fn delete(&self, group_id: &str) -> i16 {
        let known = self
            .groups
            .borrow()
            .get(group_id)
            .map(|g| g.members.is_empty());
        let has_offsets = !self.offsets.fetch(group_id).is_empty();
        match known {
            Some(false) => return code::NON_EMPTY_GROUP,
            None if !has_offsets => return code::GROUP_ID_NOT_FOUND,
            _ => {}
        }
        if let Err(code) = self.offsets.delete_group(group_id).await {
            return code;
        }
        self.groups
            .borrow_mut()
            .retain(|id, g| id != group_id || !g.members.is_empty());
        code::NONE
    }
}
