//! Incremental fetch sessions (KIP-227), one cache per core: the core that
//! serves a consumer's connection keeps, per session, the partitions it
//! fetches and what it last told the consumer about each, so that the
//! consumer re-sends only partitions whose position changed and the response
//! carries only partitions with news (records, an error, a moved high
//! watermark or log start).
//!
//! Kafka's rules, from its FetchSession.scala:
//! - epoch -1 (final): close the session named, if any, and fetch without one;
//! - epoch 0 (initial): close the session named, if any, and open a new one
//!   holding every partition of this (full) request, if the cache has room;
//! - epoch n > 0: an incremental fetch of session `id`, which must exist
//!   (else FETCH_SESSION_ID_NOT_FOUND) and expect epoch n (else
//!   INVALID_FETCH_SESSION_EPOCH); listed partitions are added or updated,
//!   forgotten ones removed, and the session then expects n + 1.
//! - A full cache evicts a session idle for `SESSION_EVICTION_AFTER`, else the
//!   smallest session with fewer partitions than the new one, else opens no
//!   session (the consumer goes on with full fetches).
//!
//! Beyond Kafka: a core's sessions hold at most `PARTITIONS_PER_CORE_MAX`
//! partitions between them (Kafka bounds only the number of sessions, so a
//! client adding made-up partitions to sessions could grow them without
//! end). A new session needs room for its partitions too, made by the same
//! single eviction or not at all; one whose room was taken while its fetch
//! waited is not opened (the response carries session id 0); an incremental
//! fetch that grows its session past the bound closes it and is answered
//! FETCH_SESSION_ID_NOT_FOUND, and the consumer starts over with a full
//! fetch (which opens a session if there is room).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Kafka's min.incremental.fetch.session.eviction.ms.
pub const SESSION_EVICTION_AFTER: Duration = Duration::from_secs(120);
/// Kafka's FINAL_EPOCH and INITIAL_EPOCH.
pub const FINAL_EPOCH: i32 = -1;
pub const INITIAL_EPOCH: i32 = 0;
/// Partitions a core's sessions hold between them, at most: about 300 bytes
/// each (the request's entry, its key, its place in the order), so at most
/// some 60 MiB per core however clients behave.
pub const PARTITIONS_PER_CORE_MAX: usize = 200_000;

/// One partition as a fetch asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Empty when the request named the topic by an id this broker does not know.
    pub topic: String,
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub fetch_offset: i64,
    pub partition_max_bytes: usize,
    pub current_leader_epoch: i32,
    pub last_fetched_epoch: i32,
}

/// What the consumer was last told about a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

struct Entry {
    wanted: Wanted,
    sent: Option<Sent>,
    /// Position in the session's order.
    seq: u64,
}

/// A partition in a session: by topic id from Fetch v13 (the name is
/// resolved again on every request, as Kafka does), by name before.
pub type Key = ([u8; 16], String, i32);

pub fn key(topic_id: [u8; 16], topic: &str, partition: i32) -> Key {
    if topic_id == [0; 16] {
        (topic_id, topic.to_string(), partition)
    } else {
        (topic_id, String::new(), partition)
    }
}

fn key_of(wanted: &Wanted) -> Key {
    key(wanted.topic_id, &wanted.topic, wanted.partition)
}

struct Session {
    /// The epoch the next incremental request must carry.
    epoch: i32,
    entries: HashMap<Key, Entry>,
    order: BTreeMap<u64, Key>,
    next_seq: u64,
    last_used: Instant,
}

impl Session {
    fn new(now: Instant) -> Session {
        Session {
            epoch: 1,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            last_used: now,
        }
    }

    fn upsert(&mut self, wanted: Wanted) {
        let key = key_of(&wanted);
        match self.entries.get_mut(&key) {
            Some(entry) => entry.wanted = wanted,
            None => {
                self.next_seq += 1;
                self.order.insert(self.next_seq, key.clone());
                self.entries.insert(
                    key,
                    Entry {
                        wanted,
                        sent: None,
                        seq: self.next_seq,
                    },
                );
            }
        }
    }

    fn forget(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.seq);
        }
    }

    fn wanted(&self) -> Vec<Wanted> {
        self.order
            .values()
            .map(|key| self.entries[key].wanted.clone())
            .collect()
    }
}

/// How a fetch request relates to sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    /// A full fetch outside any session (the response's session id is 0).
    Sessionless,
    /// A full fetch that opens session `id` once answered.
    Opening(i32),
    /// An incremental fetch of session `id`: these partitions, in order
    /// (from v13 their names are as this broker knew them when listed:
    /// resolve them again).
    Incremental(i32, Vec<Wanted>),
    /// Answered with this error code alone.
    Refused(i16),
}

pub struct FetchSessions {
    sessions: HashMap<i32, Session>,
    capacity: usize,
    /// Partitions the sessions hold between them, and the bound on it.
    partitions: usize,
    partitions_max: usize,
    /// Ids are unique per core; the core id in the low bits keeps them
    /// unique per broker.
    shard: u32,
    shards: u32,
    next_id: u32,
}

impl FetchSessions {
    pub fn new(capacity: usize, shard: usize, shards: usize) -> FetchSessions {
        FetchSessions {
            sessions: HashMap::new(),
            capacity,
            partitions: 0,
            partitions_max: PARTITIONS_PER_CORE_MAX,
            shard: shard as u32,
            shards: shards.max(1) as u32,
            next_id: (std::process::id() ^ (shard as u32).rotate_left(16)) % 0x0100_0000,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Partitions held by all sessions.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    fn close(&mut self, id: i32) {
        if let Some(session) = self.sessions.remove(&id) {
            self.partitions -= session.entries.len();
        }
    }

    /// Decides what a request is: `full` are its partitions, `forgotten` its
    /// forgotten partitions (topic id, name, partition).
    pub fn begin(
        &mut self,
        session_id: i32,
        epoch: i32,
        full: &[Wanted],
        forgotten: &[Key],
        now: Instant,
    ) -> Context {
        use sluice_protocol::api::error_code;
        if epoch == FINAL_EPOCH || epoch == INITIAL_EPOCH {
            if session_id != 0 {
                self.close(session_id);
            }
            if epoch == FINAL_EPOCH {
                return Context::Sessionless;
            }
            return match self.make_room(full.len(), now) {
                true => Context::Opening(self.new_id()),
                false => Context::Sessionless,
            };
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Context::Refused(error_code::FETCH_SESSION_ID_NOT_FOUND);
        };
        if session.epoch != epoch {
            return Context::Refused(error_code::INVALID_FETCH_SESSION_EPOCH);
        }
        session.epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
        session.last_used = now;
        let before = session.entries.len();
        for wanted in full {
            session.upsert(wanted.clone());
        }
        for key in forgotten {
            session.forget(key);
        }
        let after = session.entries.len();
        self.partitions = self.partitions + after - before;
        if after == 0 {
            // Nothing left to follow: Kafka closes such a session.
            self.close(session_id);
            return Context::Sessionless;
        }
        // Openings never pass the bound (`make_room`, `open`): only this
        // session's growth can.
        if self.partitions > self.partitions_max {
            self.close(session_id);
            return Context::Refused(error_code::FETCH_SESSION_ID_NOT_FOUND);
        }
        let session = &self.sessions[&session_id];
        Context::Incremental(session_id, session.wanted())
    }

    /// After the response of an opening fetch: the session holds its
    /// partitions and what was sent. False (and no session) if sessions
    /// opened while this fetch waited took the room: the response then
    /// carries session id 0, a fetch without a session.
    pub fn open(&mut self, id: i32, answered: &[(Wanted, Sent)], now: Instant) -> bool {
        if self.partitions + answered.len() > self.partitions_max {
            return false;
        }
        let mut session = Session::new(now);
        for (wanted, sent) in answered {
            session.upsert(wanted.clone());
            if let Some(entry) = session.entries.get_mut(&key_of(wanted)) {
                entry.sent = Some(*sent);
            }
        }
        self.partitions += session.entries.len();
        if let Some(replaced) = self.sessions.insert(id, session) {
            self.partitions -= replaced.entries.len();
        }
        true
    }

    /// Whether an incremental response must carry this partition, given
    /// what it would say (and records/errors, which always go out). Records
    /// move the partition to the end of the session's order, so the next
    /// fetches give the others the first share of the response budget. After
    /// an error nothing counts as sent, so the partition is answered again
    /// once the error clears.
    pub fn respond(
        &mut self,
        id: i32,
        wanted: &Wanted,
        now: Sent,
        news: bool,
        records: bool,
        error: bool,
    ) -> bool {
        let Some(session) = self.sessions.get_mut(&id) else {
            return true;
        };
        let key = key_of(wanted);
        let Some(entry) = session.entries.get_mut(&key) else {
            return true;
        };
        let changed = news || error || entry.sent != Some(now);
        entry.sent = (!error).then_some(now);
        if records {
            session.next_seq += 1;
            let seq = session.next_seq;
            session.order.remove(&entry.seq);
            entry.seq = seq;
            session.order.insert(seq, key);
        }
        changed
    }

    /// Room for a session of `partitions`, evicting at most one session as
    /// Kafka does (the longest idle past the eviction time, else the
    /// smallest one with fewer partitions than the new one), and only if
    /// that makes room for both bounds; false if there is none.
    fn make_room(&mut self, partitions: usize, now: Instant) -> bool {
        let fits = |sessions: usize, held: usize| {
            sessions < self.capacity && held + partitions <= self.partitions_max
        };
        if fits(self.sessions.len(), self.partitions) {
            return true;
        }
        let stale = self
            .sessions
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_used) >= SESSION_EVICTION_AFTER)
            .min_by_key(|(_, s)| s.last_used)
            .map(|(id, _)| *id);
        let victim = stale.or_else(|| {
            self.sessions
                .iter()
                .filter(|(_, s)| s.entries.len() < partitions)
                .min_by_key(|(_, s)| (s.entries.len(), s.last_used))
                .map(|(id, _)| *id)
        });
        let Some(id) = victim else {
            return false;
        };
        let freed = self.sessions[&id].entries.len();
        if !fits(self.sessions.len() - 1, self.partitions - freed) {
            return false;
        }
        self.close(id);
        true
    }

    fn new_id(&mut self) -> i32 {
        loop {
            self.next_id = (self.next_id + 1) % 0x0100_0000;
            let id = ((self.next_id as u64 * self.shards as u64 + self.shard as u64) & 0x7fff_ffff)
                as i32;
            if id != 0 && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::api::error_code;

    fn want(topic: &str, partition: i32, offset: i64) -> Wanted {
        Wanted {
            topic: topic.into(),
            topic_id: [0; 16],
            partition,
            fetch_offset: offset,
            partition_max_bytes: 1 << 20,
            current_leader_epoch: -1,
            last_fetched_epoch: -1,
        }
    }

    fn sent(hw: i64) -> Sent {
        Sent {
            high_watermark: hw,
            log_start_offset: 0,
        }
    }

    #[test]
    fn a_session_opens_and_follows_its_epochs() {
        let now = Instant::now();
        let mut cache = FetchSessions::new(10, 0, 1);
        let all = [want("a", 0, 0), want("a", 1, 0)];
        let Context::Opening(id) = cache.begin(0, 0, &all, &[], now) else {
            panic!("opens")
        };
        cache.open(
            id,
            &[(all[0].clone(), sent(5)), (all[1].clone(), sent(0))],
            now,
        );
        // Epoch 1 with one partition moved on: both are fetched, in order.
        let Context::Incremental(_, wanted) = cache.begin(id, 1, &[want("a", 0, 5)], &[], now)
        else {
            panic!("incremental")
        };
        assert_eq!(wanted, vec![want("a", 0, 5), want("a", 1, 0)]);
        assert_eq!(
            cache.begin(id, 1, &[], &[], now),
            Context::Refused(error_code::INVALID_FETCH_SESSION_EPOCH)
        );
        assert_eq!(
            cache.begin(id + 1, 2, &[], &[], now),
            Context::Refused(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
        // Forgetting a partition; unchanged ones are left out of responses.
        let Context::Incremental(_, wanted) =
            cache.begin(id, 2, &[], &[([0; 16], "a".into(), 0)], now)
        else {
            panic!("incremental")
        };
        assert_eq!(wanted, vec![want("a", 1, 0)]);
        assert!(!cache.respond(id, &wanted[0], sent(0), false, false, false));
        assert!(cache.respond(id, &wanted[0], sent(3), false, false, false));
        // An error goes out, and so does the first answer after it.
        assert!(cache.respond(id, &wanted[0], sent(3), false, false, true));
        assert!(cache.respond(id, &wanted[0], sent(3), false, false, false));
        assert!(!cache.respond(id, &wanted[0], sent(3), false, false, false));
        // The final epoch closes it.
        assert_eq!(
            cache.begin(id, FINAL_EPOCH, &[], &[], now),
            Context::Sessionless
        );
        assert_eq!(
            cache.begin(id, 3, &[], &[], now),
            Context::Refused(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
    }

    #[test]
    fn forgetting_every_partition_closes_the_session_and_ids_key_from_v13() {
        let now = Instant::now();
        let mut cache = FetchSessions::new(10, 3, 4);
        let mut by_id = want("", 0, 0);
        by_id.topic_id = [5; 16];
        let Context::Opening(id) = cache.begin(0, 0, &[by_id.clone()], &[], now) else {
            panic!("opens")
        };
        assert_eq!(id % 4, 3, "the core's number in the id");
        cache.open(id, &[(by_id.clone(), sent(0))], now);
        // Known by id, whatever name it resolved to then or now.
        let renamed = Wanted {
            topic: "now-known".into(),
            ..by_id.clone()
        };
        let Context::Incremental(_, wanted) =
            cache.begin(id, 1, std::slice::from_ref(&renamed), &[], now)
        else {
            panic!("incremental")
        };
        assert_eq!(wanted, vec![renamed]);
        assert_eq!(
            cache.begin(id, 2, &[], &[key([5; 16], "", 0)], now),
            Context::Sessionless
        );
        assert_eq!(
            cache.begin(id, 3, &[], &[], now),
            Context::Refused(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
    }

    #[test]
    fn a_full_cache_evicts_idle_then_smaller_sessions_or_opens_none() {
        let now = Instant::now();
        let mut cache = FetchSessions::new(1, 0, 1);
        let Context::Opening(first) = cache.begin(0, 0, &[want("a", 0, 0)], &[], now) else {
            panic!()
        };
        cache.open(first, &[(want("a", 0, 0), sent(0))], now);
        // Same size, not idle: no room.
        assert_eq!(
            cache.begin(0, 0, &[want("b", 0, 0)], &[], now),
            Context::Sessionless
        );
        // Larger: the smaller one goes.
        let two = [want("b", 0, 0), want("b", 1, 0)];
        let Context::Opening(second) = cache.begin(0, 0, &two, &[], now) else {
            panic!()
        };
        cache.open(
            second,
            &[(two[0].clone(), sent(0)), (two[1].clone(), sent(0))],
            now,
        );
        assert_eq!(cache.len(), 1);
        // Idle for the eviction time: any new session may take its place.
        let later = now + SESSION_EVICTION_AFTER;
        assert!(matches!(
            cache.begin(0, 0, &[want("c", 0, 0)], &[], later),
            Context::Opening(_)
        ));
    }

    #[test]
    fn the_partitions_all_sessions_hold_are_bounded() {
        let now = Instant::now();
        let mut cache = FetchSessions::new(10, 0, 1);
        cache.partitions_max = 4;
        let open = |cache: &mut FetchSessions, wanted: &[Wanted]| {
            let Context::Opening(id) = cache.begin(0, 0, wanted, &[], now) else {
                panic!("opens")
            };
            let answered: Vec<_> = wanted.iter().map(|w| (w.clone(), sent(0))).collect();
            assert!(cache.open(id, &answered, now));
            id
        };
        let first = open(&mut cache, &[want("a", 0, 0), want("a", 1, 0)]);
        let second = open(&mut cache, &[want("b", 0, 0)]);
        assert_eq!(cache.partitions(), 3);
        // Too many for the bound, even with every other session gone.
        let five: Vec<_> = (0..5).map(|p| want("c", p, 0)).collect();
        assert_eq!(cache.begin(0, 0, &five, &[], now), Context::Sessionless);
        // Three partitions do not fit even with the one-partition session
        // evicted (2 + 3 > 4): nothing is evicted for nothing.
        let three: Vec<_> = (0..3).map(|p| want("e", p, 0)).collect();
        assert_eq!(cache.begin(0, 0, &three, &[], now), Context::Sessionless);
        assert_eq!((cache.len(), cache.partitions()), (2, 3));
        // Two fit once the smaller session (one partition) is evicted.
        let third = open(&mut cache, &[want("d", 0, 0), want("d", 1, 0)]);
        assert_eq!(cache.partitions(), 4);
        assert_eq!(
            cache.begin(second, 1, &[], &[], now),
            Context::Refused(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
        // A session growing past the bound is closed and refused.
        assert_eq!(
            cache.begin(first, 1, &[want("x", 9, 0)], &[], now),
            Context::Refused(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
        assert_eq!(cache.partitions(), 2);
        assert_eq!(cache.len(), 1);
        // Updating known partitions does not count them again.
        assert!(matches!(
            cache.begin(third, 1, &[want("d", 0, 7)], &[], now),
            Context::Incremental(_, _)
        ));
        assert_eq!(cache.partitions(), 2);
        // Two openings that each had room when they began: the second, done
        // after the first took the room, opens no session.
        let Context::Opening(a) = cache.begin(0, 0, &[want("f", 0, 0)], &[], now) else {
            panic!("opens")
        };
        let Context::Opening(b) = cache.begin(0, 0, &[want("g", 0, 0)], &[], now) else {
            panic!("opens")
        };
        let one = |t: &str| [(want(t, 0, 0), sent(0)), (want(t, 1, 0), sent(0))];
        assert!(cache.open(a, &one("f"), now));
        assert!(!cache.open(b, &one("g"), now));
        assert_eq!(cache.partitions(), 4);
        // A session that did not grow is not refused for others' room.
        assert!(matches!(
            cache.begin(third, 2, &[], &[], now),
            Context::Incremental(_, _)
        ));
    }
}
