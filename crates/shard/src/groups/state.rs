//! The classic consumer-group state machine, without a runtime: every method
//! is a synchronous step taking the current time, so it is unit-tested with
//! plain calls. The coordinator (`coordinator.rs`) awaits between steps.

use bytes::Bytes;
use std::collections::BTreeMap;

/// Kafka error codes, under the short name this module uses.
pub use sluice_protocol::api::error_code as code;

/// Session timeouts a member may ask for (Kafka's broker defaults).
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(&self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub last_seen_ms: u64,
    /// Joined in the current rebalance round.
    pub joined: bool,
}

impl Member {
    /// The member's metadata for `protocol` (empty if it named no such one).
    pub fn metadata_for(&self, protocol: Option<&str>) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| Some(name.as_str()) == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: an unknown member must first get an id.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Join {
    /// Retry with this id (MEMBER_ID_REQUIRED).
    MemberIdRequired(String),
    Error(i16),
    /// Joined as `member_id`; wait for the round to complete.
    Waiting {
        member_id: String,
    },
}

/// What a member gets when the join round completes.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinResult {
    pub error_code: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Sync {
    Error(i16),
    Waiting,
    Done(Bytes),
    /// The leader's assignment: store the group (this record) in
    /// `__consumer_offsets`, then `assignment_stored` or `store_failed`.
    Store(StoredGroup),
}

/// A group as it is kept in `__consumer_offsets` (Kafka's GroupMetadata
/// record): what a new coordinator needs to take the group over without a
/// rebalance (members, generation, leader, protocol, assignments).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredGroup {
    pub id: String,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<StoredMember>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// The member's metadata for the group's protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not joined yet.
    pub pending_member_ids: Vec<String>,
    /// When the current join round ends even if members are missing.
    pub join_deadline_ms: u64,
    /// The round may not end before this, even with everyone joined.
    pub join_gate_ms: u64,
    /// Bumped each time a join round completes.
    pub join_rounds: u64,
    /// The leader's assignment is being stored (CompletingRebalance until
    /// it is durable, as in Kafka).
    storing: bool,
    /// Became Empty and not stored since (written in the background).
    pub unstored: bool,
}

fn new_member_id(client_id: &str) -> String {
    format!("{client_id}-{}", uuid::Uuid::new_v4())
}

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending_member_ids: Vec::new(),
            join_deadline_ms: 0,
            join_gate_ms: 0,
            join_rounds: 0,
            storing: false,
            unstored: false,
        }
    }

    /// The group as a new coordinator loads it: Stable with its stored
    /// members and their assignments (or Empty), every session starting now.
    pub fn restore(stored: StoredGroup, now_ms: u64) -> Group {
        let mut group = Group::new(&stored.id);
        group.generation = stored.generation;
        group.protocol_type = stored.protocol_type;
        group.state = if stored.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        let protocol = stored.protocol.clone().unwrap_or_default();
        for m in stored.members {
            group.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: vec![(protocol.clone(), m.subscription)],
                    assignment: m.assignment,
                    last_seen_ms: now_ms,
                    joined: false,
                },
            );
        }
        if group.state == GroupState::Stable {
            group.protocol = stored.protocol;
            group.leader = stored.leader;
        }
        group
    }

    /// What `restore` takes back.
    pub fn to_stored(&self) -> StoredGroup {
        StoredGroup {
            id: self.id.clone(),
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|m| StoredMember {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    subscription: m.metadata_for(self.protocol.as_deref()),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    fn start_rebalance(&mut self, now_ms: u64, initial_delay_ms: u64) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        let rebalance_timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms.max(0) as u64)
            .max()
            .unwrap_or(0);
        // An empty group waits a little to gather the members starting together
        // (Kafka's group.initial.rebalance.delay.ms), even once all have joined.
        self.join_gate_ms = if self.state == GroupState::Empty {
            now_ms + initial_delay_ms
        } else {
            now_ms
        };
        self.state = GroupState::PreparingRebalance;
        self.storing = false;
        self.join_deadline_ms = now_ms + rebalance_timeout.max(initial_delay_ms);
        for member in self.members.values_mut() {
            member.joined = false;
            member.assignment = Bytes::new();
        }
    }

    pub fn join(&mut self, request: JoinRequest, now_ms: u64, initial_delay_ms: u64) -> Join {
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&request.session_timeout_ms)
        {
            return Join::Error(code::INVALID_SESSION_TIMEOUT);
        }
        if request.protocols.is_empty() || request.protocol_type.is_empty() {
            return Join::Error(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        if self.state == GroupState::Dead {
            return Join::Error(code::UNKNOWN_MEMBER_ID);
        }
        // The protocol type must match, and some protocol must be shared by all.
        if !self.members.is_empty() {
            if self.protocol_type.as_deref() != Some(request.protocol_type.as_str()) {
                return Join::Error(code::INCONSISTENT_GROUP_PROTOCOL);
            }
            let others: Vec<&Member> = self
                .members
                .values()
                .filter(|m| m.id != request.member_id)
                .collect();
            let shared = request.protocols.iter().any(|(name, _)| {
                others
                    .iter()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            });
            if !shared {
                return Join::Error(code::INCONSISTENT_GROUP_PROTOCOL);
            }
        }
        let mut member_id = request.member_id.clone();
        // Static membership: a known instance id takes over its member.
        if let Some(instance) = &request.instance_id {
            let existing = self
                .members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance))
                .map(|m| m.id.clone());
            if let Some(existing) = existing {
                if member_id.is_empty() || member_id == existing {
                    member_id = existing;
                } else if !self.members.contains_key(&member_id) {
                    // A new incarnation of the instance: replace the old member.
                    let old = self.members.remove(&existing).unwrap();
                    let mut renewed = old;
                    renewed.id = member_id.clone();
                    self.members.insert(member_id.clone(), renewed);
                    if self.leader.as_deref() == Some(existing.as_str()) {
                        self.leader = Some(member_id.clone());
                    }
                }
            } else if member_id.is_empty() {
                member_id = new_member_id(&request.client_id);
            }
        }
        if member_id.is_empty() {
            let id = new_member_id(&request.client_id);
            if request.require_known_member_id {
                if self.pending_member_ids.len() >= 1024 {
                    self.pending_member_ids.remove(0);
                }
                self.pending_member_ids.push(id.clone());
                return Join::MemberIdRequired(id);
            }
            member_id = id;
        } else if !self.members.contains_key(&member_id) {
            let pending = self.pending_member_ids.iter().position(|p| *p == member_id);
            match pending {
                Some(index) => {
                    self.pending_member_ids.remove(index);
                }
                None if request.instance_id.is_some() => {}
                None => return Join::Error(code::UNKNOWN_MEMBER_ID),
            }
        }
        let is_new = !self.members.contains_key(&member_id);
        let changed = match self.members.get(&member_id) {
            Some(m) => m.protocols != request.protocols,
            None => true,
        };
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        let member = self
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                id: member_id.clone(),
                instance_id: request.instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                session_timeout_ms: request.session_timeout_ms,
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                protocols: request.protocols.clone(),
                assignment: Bytes::new(),
                last_seen_ms: now_ms,
                joined: false,
            });
        member.protocols = request.protocols;
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms.max(request.session_timeout_ms);
        member.last_seen_ms = now_ms;
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance
                if !is_new && !changed && self.state == GroupState::Stable =>
            {
                // A stable member rejoining unchanged (e.g. after a lost
                // response) still triggers a rebalance, as Kafka does.
                self.start_rebalance(now_ms, initial_delay_ms);
            }
            GroupState::PreparingRebalance => {}
            _ => self.start_rebalance(now_ms, initial_delay_ms),
        }
        self.members.get_mut(&member_id).unwrap().joined = true;
        Join::Waiting { member_id }
    }

    /// Ends the join round when every member has joined or the deadline passed.
    /// Returns true if it completed.
    pub fn try_complete_join(&mut self, now_ms: u64) -> bool {
        if self.state != GroupState::PreparingRebalance {
            return false;
        }
        let all_joined = self.members.values().all(|m| m.joined);
        if now_ms < self.join_deadline_ms && !(all_joined && now_ms >= self.join_gate_ms) {
            return false;
        }
        self.members.retain(|_, m| m.joined);
        // A long round must not expire members who joined early.
        for member in self.members.values_mut() {
            member.last_seen_ms = now_ms;
        }
        self.generation += 1;
        self.join_rounds += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.unstored = true;
            return true;
        }
        // The first protocol of the leader's list that every member supports.
        let leader = match &self.leader {
            Some(l) if self.members.contains_key(l) => l.clone(),
            _ => self.members.keys().next().unwrap().clone(),
        };
        let chosen = self.members[&leader]
            .protocols
            .iter()
            .map(|(n, _)| n.clone())
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            });
        self.protocol = chosen;
        self.leader = Some(leader);
        self.state = GroupState::CompletingRebalance;
        true
    }

    pub fn join_result(&self, member_id: &str) -> JoinResult {
        if !self.members.contains_key(member_id) {
            return JoinResult {
                error_code: code::UNKNOWN_MEMBER_ID,
                generation: -1,
                protocol_type: None,
                protocol_name: None,
                leader: String::new(),
                member_id: member_id.to_string(),
                members: Vec::new(),
            };
        }
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| {
                    let metadata = m.metadata_for(protocol.as_deref());
                    (m.id.clone(), m.instance_id.clone(), metadata)
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error_code: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: protocol,
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    fn check_member(&self, member_id: &str, generation: i32) -> Result<(), i16> {
        if !self.members.contains_key(member_id) {
            return Err(code::UNKNOWN_MEMBER_ID);
        }
        if generation != self.generation {
            return Err(code::ILLEGAL_GENERATION);
        }
        Ok(())
    }

    pub fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now_ms: u64,
    ) -> Sync {
        if let Err(code) = self.check_member(member_id, generation) {
            return Sync::Error(code);
        }
        self.members.get_mut(member_id).unwrap().last_seen_ms = now_ms;
        match self.state {
            GroupState::PreparingRebalance => Sync::Error(code::REBALANCE_IN_PROGRESS),
            GroupState::CompletingRebalance => {
                if self.leader.as_deref() == Some(member_id) && !self.storing {
                    for (member, assignment) in assignments {
                        if let Some(m) = self.members.get_mut(&member) {
                            m.assignment = assignment;
                        }
                    }
                    self.storing = true;
                    Sync::Store(self.to_stored())
                } else {
                    Sync::Waiting
                }
            }
            GroupState::Stable => Sync::Done(self.members[member_id].assignment.clone()),
            GroupState::Empty | GroupState::Dead => Sync::Error(code::UNKNOWN_MEMBER_ID),
        }
    }

    /// The leader's assignment of `generation` is durable: the group is
    /// Stable and every member gets its part. False if the group moved on
    /// meanwhile (a member left or joined: a new round).
    pub fn assignment_stored(&mut self, generation: i32) -> bool {
        if !(self.storing
            && self.generation == generation
            && self.state == GroupState::CompletingRebalance)
        {
            return false;
        }
        self.storing = false;
        self.state = GroupState::Stable;
        true
    }

    /// Storing the assignment of `generation` failed: as in Kafka, the
    /// assignment is dropped and the members rebalance.
    pub fn store_failed(&mut self, generation: i32, now_ms: u64, initial_delay_ms: u64) {
        if self.storing
            && self.generation == generation
            && self.state == GroupState::CompletingRebalance
        {
            self.start_rebalance(now_ms, initial_delay_ms);
        }
    }

    pub fn heartbeat(&mut self, member_id: &str, generation: i32, now_ms: u64) -> i16 {
        if self.state == GroupState::PreparingRebalance && self.members.contains_key(member_id) {
            self.members.get_mut(member_id).unwrap().last_seen_ms = now_ms;
            return code::REBALANCE_IN_PROGRESS;
        }
        if let Err(code) = self.check_member(member_id, generation) {
            return code;
        }
        self.members.get_mut(member_id).unwrap().last_seen_ms = now_ms;
        code::NONE
    }

    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now_ms: u64,
        initial_delay_ms: u64,
    ) -> i16 {
        let id = match (self.members.contains_key(member_id), instance_id) {
            (true, _) => member_id.to_string(),
            (false, Some(instance)) => match self
                .members
                .values()
                .find(|m| m.instance_id.as_deref() == Some(instance))
            {
                Some(m) => m.id.clone(),
                None => return code::UNKNOWN_MEMBER_ID,
            },
            (false, None) => return code::UNKNOWN_MEMBER_ID,
        };
        self.members.remove(&id);
        self.after_removal(now_ms, initial_delay_ms);
        code::NONE
    }

    fn after_removal(&mut self, now_ms: u64, initial_delay_ms: u64) {
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.storing = false;
            self.unstored = true;
            self.generation += 1;
            self.leader = None;
            self.protocol = None;
            self.join_rounds += 1;
        } else if self.state != GroupState::PreparingRebalance {
            self.start_rebalance(now_ms, initial_delay_ms);
        }
    }

    /// Removes members whose session expired; true if any was.
    pub fn expire(&mut self, now_ms: u64, initial_delay_ms: u64) -> bool {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !(self.state == GroupState::PreparingRebalance && m.joined))
            .filter(|m| now_ms.saturating_sub(m.last_seen_ms) > m.session_timeout_ms as u64)
            .map(|m| m.id.clone())
            .collect();
        if expired.is_empty() {
            return false;
        }
        for id in &expired {
            self.members.remove(id);
        }
        self.after_removal(now_ms, initial_delay_ms);
        true
    }

    /// May this member commit offsets for this generation? Generation -1 with
    /// an empty member id is a simple (non-group) commit, allowed when empty.
    pub fn check_commit(&self, member_id: &str, generation: i32) -> Result<(), i16> {
        if generation < 0 && member_id.is_empty() {
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(code::UNKNOWN_MEMBER_ID)
            };
        }
        // Kafka's rule: a member of the current generation may commit while
        // the group prepares a rebalance (clients commit in their revoke
        // callback exactly then); only while the group waits for SyncGroup
        // is a commit refused, so the member finishes joining first.
        if self.state == GroupState::CompletingRebalance {
            return Err(code::REBALANCE_IN_PROGRESS);
        }
        self.check_member(member_id, generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_request(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_string(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(p.to_string())))
                .collect(),
            require_known_member_id: true,
        }
    }

    fn join_new(group: &mut Group, protocols: &[&str], now: u64) -> String {
        let Join::MemberIdRequired(id) = group.join(join_request("", protocols), now, 0) else {
            panic!()
        };
        let Join::Waiting { member_id } = group.join(join_request(&id, protocols), now, 0) else {
            panic!()
        };
        member_id
    }

    /// Two members joined, the round completed: (leader, follower).
    fn two_members_joined(group: &mut Group, now: u64) -> (String, String) {
        let a = join_new(group, &["range"], now);
        let b = join_new(group, &["range"], now);
        assert!(group.try_complete_join(now));
        let leader = group.leader.clone().unwrap();
        let follower = if leader == a { b } else { a };
        (leader, follower)
    }

    /// The leader's SyncGroup, its assignment stored at once.
    fn sync_leader(group: &mut Group, leader: &str, assignments: Vec<(String, Bytes)>) {
        let generation = group.generation;
        assert!(matches!(
            group.sync(leader, generation, assignments, 0),
            Sync::Store(_)
        ));
        assert!(group.assignment_stored(generation));
    }

    #[test]
    fn a_restored_group_goes_on_without_a_rebalance() {
        let mut g = Group::new("g");
        let a = join_new(&mut g, &["range", "roundrobin"], 0);
        let b = join_new(&mut g, &["range"], 0);
        g.try_complete_join(1);
        let leader = g.leader.clone().unwrap();
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ];
        let Sync::Store(stored) = g.sync(&leader, 1, assignments, 2) else {
            panic!()
        };
        // Another coordinator loads the record.
        let mut taken = Group::restore(stored.clone(), 1_000_000);
        assert_eq!(taken.state, GroupState::Stable);
        assert_eq!(taken.to_stored(), stored);
        assert_eq!(taken.heartbeat(&a, 1, 1_000_001), code::NONE);
        assert_eq!(
            taken.sync(&b, 1, vec![], 1_000_001),
            Sync::Done(Bytes::from_static(b"B"))
        );
        assert_eq!(taken.check_commit(&a, 1), Ok(()));
        // Sessions start at the load: nobody expires for their session timeout.
        assert!(!taken.expire(1_000_000 + 9_000, 0));
        // A member joining later must share the chosen protocol.
        assert_eq!(
            taken.join(join_request("", &["roundrobin"]), 1_000_002, 0),
            Join::Error(code::INCONSISTENT_GROUP_PROTOCOL)
        );
        let Join::MemberIdRequired(c) = taken.join(join_request("", &["range"]), 1_000_002, 0)
        else {
            panic!()
        };
        taken.join(join_request(&c, &["range"]), 1_000_002, 0);
        assert_eq!(taken.state, GroupState::PreparingRebalance);
        assert_eq!(
            taken.heartbeat(&a, 1, 1_000_003),
            code::REBALANCE_IN_PROGRESS
        );
        // An empty record restores an empty group at its generation.
        let empty = Group::restore(
            StoredGroup {
                members: Vec::new(),
                ..stored
            },
            0,
        );
        assert_eq!((empty.state, empty.generation), (GroupState::Empty, 1));
    }

    #[test]
    fn a_failed_store_rebalances_and_a_late_one_changes_nothing() {
        let mut g = Group::new("g");
        let (leader, follower) = two_members_joined(&mut g, 1);
        assert!(matches!(g.sync(&leader, 1, vec![], 2), Sync::Store(_)));
        g.store_failed(1, 3, 0);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(
            g.sync(&follower, 1, vec![], 3),
            Sync::Error(code::REBALANCE_IN_PROGRESS)
        );
        assert!(!g.assignment_stored(1));
        // A member leaves while the assignment is being stored: a new round.
        for member in [&leader, &follower] {
            g.join(join_request(member, &["range"]), 4, 0);
        }
        assert!(g.try_complete_join(4));
        let leader = g.leader.clone().unwrap();
        let follower = g.members.keys().find(|m| **m != leader).unwrap().clone();
        assert!(matches!(g.sync(&leader, 2, vec![], 5), Sync::Store(_)));
        assert_eq!(g.leave(&follower, None, 6, 0), code::NONE);
        assert!(!g.assignment_stored(2), "the stored round was superseded");
        assert_eq!(g.state, GroupState::PreparingRebalance);
    }

    #[test]
    fn two_members_join_sync_and_become_stable() {
        let mut g = Group::new("g");
        let a = join_new(&mut g, &["range", "roundrobin"], 0);
        let b = join_new(&mut g, &["roundrobin"], 0);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert!(g.try_complete_join(1));
        assert_eq!(g.state, GroupState::CompletingRebalance);
        assert_eq!(g.generation, 1);
        let leader = g.leader.clone().unwrap();
        let result = g.join_result(&leader);
        assert_eq!(result.members.len(), 2);
        assert_eq!(result.protocol_name.as_deref(), Some("roundrobin"));
        let follower = if leader == a { b.clone() } else { a.clone() };
        assert!(g.join_result(&follower).members.is_empty());
        assert_eq!(g.sync(&follower, 1, vec![], 2), Sync::Waiting);
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ];
        let Sync::Store(stored) = g.sync(&leader, 1, assignments, 2) else {
            panic!("the leader's assignment is stored first")
        };
        assert_eq!((stored.generation, stored.members.len()), (1, 2));
        // Not Stable until it is durable: a retried leader SyncGroup waits.
        assert_eq!(g.state, GroupState::CompletingRebalance);
        assert_eq!(g.sync(&leader, 1, vec![], 2), Sync::Waiting);
        assert!(g.assignment_stored(1));
        assert_eq!(g.state, GroupState::Stable);
        assert_eq!(
            g.sync(&a, 1, vec![], 3),
            Sync::Done(Bytes::from_static(b"A"))
        );
        assert_eq!(g.heartbeat(&a, 1, 4), code::NONE);
        assert_eq!(g.heartbeat(&a, 0, 4), code::ILLEGAL_GENERATION);
        assert_eq!(g.heartbeat("nobody", 1, 4), code::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn a_leaving_member_triggers_a_rebalance_and_stale_commits_are_fenced() {
        let mut g = Group::new("g");
        let (a, b) = two_members_joined(&mut g, 0);
        sync_leader(&mut g, &a, vec![]);
        assert_eq!(g.leave(&b, None, 10, 0), code::NONE);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(g.heartbeat(&a, 1, 11), code::REBALANCE_IN_PROGRESS);
        // Preparing: the current generation's commit (from a revoke callback) goes in.
        assert_eq!(g.check_commit(&a, 1), Ok(()));
        assert_eq!(g.check_commit(&b, 1), Err(code::UNKNOWN_MEMBER_ID));
        g.join(join_request(&a, &["range"]), 12, 0);
        assert!(g.try_complete_join(12));
        assert_eq!(g.generation, 2);
        // Completing (waiting for SyncGroup): refused until the member has synced.
        assert_eq!(g.check_commit(&a, 2), Err(code::REBALANCE_IN_PROGRESS));
        sync_leader(&mut g, &a, vec![(a.clone(), Bytes::from_static(b"A"))]);
        assert_eq!(g.check_commit(&a, 1), Err(code::ILLEGAL_GENERATION));
        assert_eq!(g.check_commit(&a, 2), Ok(()));
        assert_eq!(g.check_commit("", -1), Err(code::UNKNOWN_MEMBER_ID));
    }

    #[test]
    fn expired_sessions_are_removed() {
        let mut g = Group::new("g");
        let a = join_new(&mut g, &["range"], 0);
        g.try_complete_join(0);
        sync_leader(&mut g, &a, vec![]);
        assert!(!g.expire(5_000, 0));
        assert!(g.expire(10_001, 0));
        assert_eq!(g.state, GroupState::Empty);
        assert!(g.unstored, "an emptied group is stored in the background");
        assert!(g.members.is_empty());
        assert_eq!(g.check_commit("", -1), Ok(()));
    }

    #[test]
    fn protocols_must_overlap_and_member_ids_are_required() {
        let mut g = Group::new("g");
        join_new(&mut g, &["range"], 0);
        // As Kafka: the protocol check comes before a member id is handed out.
        assert_eq!(
            g.join(join_request("", &["sticky"]), 0, 0),
            Join::Error(code::INCONSISTENT_GROUP_PROTOCOL)
        );
        assert_eq!(
            g.join(join_request("made-up", &["range"]), 0, 0),
            Join::Error(code::UNKNOWN_MEMBER_ID)
        );
    }

    #[test]
    fn a_missing_member_is_dropped_when_the_round_times_out() {
        let mut g = Group::new("g");
        let a = join_new(&mut g, &["range"], 0);
        let b = join_new(&mut g, &["range"], 0);
        g.try_complete_join(0);
        let leader = g.leader.clone().unwrap();
        sync_leader(&mut g, &leader, vec![]);
        // A third member joins: a and b must rejoin; only a does.
        let c = join_new(&mut g, &["range"], 100);
        g.join(join_request(&a, &["range"]), 100, 0);
        assert!(!g.try_complete_join(200));
        assert!(g.try_complete_join(100 + 30_000));
        assert!(
            g.members.contains_key(&a) && g.members.contains_key(&c) && !g.members.contains_key(&b)
        );
    }
}
