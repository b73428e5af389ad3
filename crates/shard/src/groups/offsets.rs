//! Committed offsets of the groups this shard coordinates, kept in the
//! replicated internal topic `__consumer_offsets` (as in Kafka): its
//! partitions are the offset buckets (a group's bucket is a hash of its id),
//! replicated like any partition, and the coordinator of a group is the
//! leader of its bucket, on the shard that holds the bucket
//! (`bucket % shard_count`). A commit is appended to the bucket through the
//! leader and answered once every in-sync replica has it (as acks=all); when
//! a node becomes a bucket's leader it loads the bucket's offsets by reading
//! the partition, and when it stops leading it forgets them. The partitions
//! are compacted (`cleanup.policy=compact`): an offset record is keyed by
//! (group, topic, partition), and deleting a group writes tombstones.
//! Each group's metadata (members, generation, leader, protocol and the
//! leader's assignment: Kafka's GroupMetadata record) is a record of the same
//! partition, keyed by the group, written when a rebalance completes and when
//! the group empties, so a new coordinator takes its groups over without a
//! rebalance.
//!
//! Group record value: `3 | group u16+bytes | generation i32 | protocol_type
//! | protocol | leader (each i16 len, -1 null, + bytes) | members i32 |
//! per member: id u16+bytes, instance id (i16, -1 null), client id u16+bytes,
//! client host u16+bytes, session timeout i32, rebalance timeout i32,
//! subscription i32+bytes, assignment i32+bytes | crc32 u32`; key `3 | group
//! u16+bytes`.
//!
//! Offset record value (big-endian): `kind u8 (1 commit, 2 delete group) | group u16+bytes |
//! topic u16+bytes | partition i32 | offset i64 | leader_epoch i32 |
//! metadata i16 len (-1 null) + bytes | commit_ms i64 | crc32 u32` (crc32fast
//! of everything before it). A record whose checksum fails is dropped on
//! replay, never a valid one. Key: `1 | group u16+bytes | topic u16+bytes |
//! partition i32`.
//!
//! Older data dirs kept each bucket as a local log under
//! `<data_dir>/offsets/bucket-NN/` (unkeyed records) with an rkyv snapshot
//! `bucket-NN.snapshot`; those directories are the offsets partitions now, and
//! a snapshot left there is imported once when its bucket is first loaded:
//! its offsets are written again as keyed records, then it is removed.

use super::state::{StoredGroup, StoredMember};
use crate::log_limit::LogLimiter;
use crate::settings::BrokerSettings;
use crate::shard::PartitionEntry;
use sluice_protocol::api::error_code;
use sluice_protocol::record_batch::{build_keyed_batch, record_keys_values, BatchHeader};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

pub const OFFSET_BUCKETS: u32 = 16;
/// The internal topic whose partitions are the offset buckets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
const SNAPSHOT_MAGIC: &[u8; 8] = b"SLOFFSN1";
/// Keyed records per batch when a legacy snapshot is written back.
const IMPORT_BATCH_RECORDS: usize = 500;
/// How long a commit waits for the in-sync replicas.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct SnapshotEntry {
    group: String,
    topic: String,
    partition: i32,
    offset: i64,
    leader_epoch: i32,
    metadata: Option<String>,
    commit_ms: i64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct OffsetSnapshot {
    /// Every record below this log offset is reflected in `entries`.
    next_log_offset: i64,
    entries: Vec<SnapshotEntry>,
}

#[cfg(test)]
fn encode_snapshot(snapshot: &OffsetSnapshot) -> Vec<u8> {
    let archived = rkyv::to_bytes::<rkyv::rancor::Error>(snapshot).expect("snapshot serializes");
    let mut out = Vec::with_capacity(20 + archived.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&crc32fast::hash(&archived).to_le_bytes());
    out.extend_from_slice(&(archived.len() as u64).to_le_bytes());
    out.extend_from_slice(&archived);
    out
}

/// Checks and reads a snapshot file in place; `None` if it is damaged.
/// (group, topic, partition, committed)
type CommitEntry = (String, String, i32, Committed);

fn decode_snapshot(bytes: &[u8]) -> Option<(i64, Vec<CommitEntry>)> {
    if bytes.len() < 20 || &bytes[..8] != SNAPSHOT_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let payload = bytes.get(20..20 + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(len);
    aligned.extend_from_slice(payload);
    let archived = rkyv::access::<ArchivedOffsetSnapshot, rkyv::rancor::Error>(&aligned).ok()?;
    let entries = archived
        .entries
        .iter()
        .map(|e| {
            (
                e.group.to_string(),
                e.topic.to_string(),
                e.partition.to_native(),
                Committed {
                    offset: e.offset.to_native(),
                    leader_epoch: e.leader_epoch.to_native(),
                    metadata: e.metadata.as_ref().map(|m| m.to_string()),
                    commit_ms: e.commit_ms.to_native(),
                },
            )
        })
        .collect();
    Some((archived.next_log_offset.to_native(), entries))
}
const KIND_COMMIT: u8 = 1;
const KIND_DELETE_GROUP: u8 = 2;
const KIND_GROUP: u8 = 3;

pub fn bucket_of(group: &str) -> u32 {
    let hash = group.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    (hash % OFFSET_BUCKETS as u64) as u32
}

pub fn coordinator_shard(group: &str, shard_count: usize) -> usize {
    bucket_of(group) as usize % shard_count
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

pub type GroupOffsets = BTreeMap<(String, i32), Committed>;

pub struct OffsetStore {
    /// The buckets this shard leads, loaded: their groups are served here.
    buckets: RefCell<HashMap<u32, Rc<PartitionEntry>>>,
    /// Buckets being loaded (their groups get COORDINATOR_LOAD_IN_PROGRESS).
    loading: RefCell<HashSet<u32>>,
    offsets: RefCell<HashMap<String, GroupOffsets>>,
    /// Groups whose metadata record is in a bucket served here (not
    /// tombstoned): forgetting one writes a tombstone.
    stored_groups: RefCell<HashSet<String>>,
    /// The latest attach of each bucket being loaded (its token).
    attaching: RefCell<HashMap<u32, u64>>,
    next_attach: Cell<u64>,
    /// One "not written" line a second (a refused or failed write).
    refusals: LogLimiter,
    /// Where older data dirs kept bucket snapshots.
    snapshot_dir: std::path::PathBuf,
    /// The shard's long-poll wake-up: followers fetching a bucket wait on it.
    data_arrived: Rc<sluice_storage::event::Event>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode(kind: u8, group: &str, topic: &str, partition: i32, c: &Committed) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + group.len() + topic.len());
    out.push(kind);
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&c.offset.to_be_bytes());
    out.extend_from_slice(&c.leader_epoch.to_be_bytes());
    match &c.metadata {
        Some(m) => {
            out.extend_from_slice(&(m.len() as i16).to_be_bytes());
            out.extend_from_slice(m.as_bytes());
        }
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
    }
    out.extend_from_slice(&c.commit_ms.to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn put_nstr(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
    out.extend_from_slice(b);
}

/// The compaction key of a group's metadata record.
fn group_key(group: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + group.len());
    out.push(KIND_GROUP);
    put_str(&mut out, group);
    out
}

fn encode_group(g: &StoredGroup) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + g.members.len() * 128);
    out.push(KIND_GROUP);
    put_str(&mut out, &g.id);
    out.extend_from_slice(&g.generation.to_be_bytes());
    put_nstr(&mut out, g.protocol_type.as_deref());
    put_nstr(&mut out, g.protocol.as_deref());
    put_nstr(&mut out, g.leader.as_deref());
    out.extend_from_slice(&(g.members.len() as i32).to_be_bytes());
    for m in &g.members {
        put_str(&mut out, &m.id);
        put_nstr(&mut out, m.instance_id.as_deref());
        put_str(&mut out, &m.client_id);
        put_str(&mut out, &m.client_host);
        out.extend_from_slice(&m.session_timeout_ms.to_be_bytes());
        out.extend_from_slice(&m.rebalance_timeout_ms.to_be_bytes());
        put_bytes(&mut out, &m.subscription);
        put_bytes(&mut out, &m.assignment);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A value's payload if its trailing crc32 matches.
fn checked(value: &[u8]) -> Option<&[u8]> {
    let (payload, crc) = value.split_at(value.len().checked_sub(4)?);
    (crc32fast::hash(payload) == u32::from_be_bytes(crc.try_into().ok()?)).then_some(payload)
}

fn decode_group(value: &[u8]) -> Option<StoredGroup> {
    let mut r = Reader(checked(value)?);
    if r.u8()? != KIND_GROUP {
        return None;
    }
    let id = r.str()?;
    let generation = r.i32()?;
    let protocol_type = r.nstr()?;
    let protocol = r.nstr()?;
    let leader = r.nstr()?;
    let count = r.i32()?;
    let mut members = Vec::new();
    for _ in 0..count {
        members.push(StoredMember {
            id: r.str()?,
            instance_id: r.nstr()?,
            client_id: r.str()?,
            client_host: r.str()?,
            session_timeout_ms: r.i32()?,
            rebalance_timeout_ms: r.i32()?,
            subscription: r.bytes()?,
            assignment: r.bytes()?,
        });
    }
    Some(StoredGroup {
        id,
        generation,
        protocol_type,
        protocol,
        leader,
        members,
    })
}

/// What a record's key names.
#[derive(Debug, PartialEq)]
enum Key {
    Offset(String, String, i32),
    Group(String),
}

/// The compaction key of a committed offset.
fn key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + group.len() + topic.len());
    out.push(KIND_COMMIT);
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.extend_from_slice(&partition.to_be_bytes());
    out
}

fn decode_key(key: &[u8]) -> Option<Key> {
    let mut r = Reader(key);
    match r.u8()? {
        KIND_COMMIT => Some(Key::Offset(r.str()?, r.str()?, r.i32()?)),
        KIND_GROUP => Some(Key::Group(r.str()?)),
        _ => None,
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_be_bytes(b.try_into().unwrap()))
    }
    fn str(&mut self) -> Option<String> {
        let len = self.i16()? as u16 as usize;
        self.take(len)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
    /// A string written by `put_nstr`: `Some(None)` for null.
    fn nstr(&mut self) -> Option<Option<String>> {
        if self.0.get(..2)? == (-1i16).to_be_bytes() {
            self.take(2);
            return Some(None);
        }
        self.str().map(Some)
    }
    fn bytes(&mut self) -> Option<bytes::Bytes> {
        let len = usize::try_from(self.i32()?).ok()?;
        self.take(len).map(bytes::Bytes::copy_from_slice)
    }
}

fn decode(value: &[u8]) -> Option<(u8, String, String, i32, Committed)> {
    let mut r = Reader(checked(value)?);
    let kind = r.u8()?;
    let group = r.str()?;
    let topic = r.str()?;
    let partition = r.i32()?;
    let offset = r.i64()?;
    let leader_epoch = r.i32()?;
    let metadata_len = r.i16()?;
    let metadata = if metadata_len < 0 {
        None
    } else {
        Some(String::from_utf8_lossy(r.take(metadata_len as usize)?).into_owned())
    };
    let commit_ms = r.i64()?;
    Some((
        kind,
        group,
        topic,
        partition,
        Committed {
            offset,
            leader_epoch,
            metadata,
            commit_ms,
        },
    ))
}

/// What a bucket's load read: its groups' offsets and metadata records.
#[derive(Default)]
struct LoadedBucket {
    offsets: HashMap<String, GroupOffsets>,
    groups: HashMap<String, StoredGroup>,
    records: u64,
}

impl LoadedBucket {
    /// One record of the partition, in log order (`None` value: a tombstone).
    fn replay(&mut self, bucket: u32, key: Option<&[u8]>, value: Option<&[u8]>) {
        match value {
            Some(value) if value.first() == Some(&KIND_GROUP) => match decode_group(value) {
                Some(group) => {
                    self.groups.insert(group.id.clone(), group);
                }
                None => tracing::warn!(bucket, "group record with a bad checksum dropped"),
            },
            Some(value) => match decode(value) {
                Some(record) => apply(&mut self.offsets, record),
                None => tracing::warn!(bucket, "offset record with a bad checksum dropped"),
            },
            None => match key.and_then(decode_key) {
                Some(Key::Offset(group, topic, partition)) => {
                    if let Some(group_offsets) = self.offsets.get_mut(&group) {
                        group_offsets.remove(&(topic, partition));
                        if group_offsets.is_empty() {
                            self.offsets.remove(&group);
                        }
                    }
                }
                Some(Key::Group(group)) => {
                    self.groups.remove(&group);
                }
                None => {}
            },
        }
    }
}

/// A failed write of offsets as Kafka's coordinator answers an OffsetCommit
/// (GroupMetadataManager.storeOffsets); coordinator codes pass as they are.
pub fn commit_error(code: i16) -> i16 {
    match code {
        error_code::UNKNOWN_TOPIC_OR_PARTITION
        | error_code::NOT_ENOUGH_REPLICAS
        | error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND => error_code::COORDINATOR_NOT_AVAILABLE,
        error_code::NOT_LEADER_OR_FOLLOWER | error_code::KAFKA_STORAGE_ERROR => {
            error_code::NOT_COORDINATOR
        }
        error_code::MESSAGE_TOO_LARGE
        | error_code::RECORD_LIST_TOO_LARGE
        | error_code::INVALID_FETCH_SIZE => error_code::INVALID_COMMIT_OFFSET_SIZE,
        other => other,
    }
}

/// A failed write of a group's record as Kafka's coordinator answers the
/// leader's SyncGroup (GroupMetadataManager.storeGroup).
pub fn group_error(code: i16) -> i16 {
    match code {
        error_code::REQUEST_TIMED_OUT => error_code::REBALANCE_IN_PROGRESS,
        error_code::MESSAGE_TOO_LARGE
        | error_code::RECORD_LIST_TOO_LARGE
        | error_code::INVALID_FETCH_SIZE => error_code::UNKNOWN_SERVER_ERROR,
        other => commit_error(other),
    }
}

/// An offset record applied to a map of groups' offsets.
fn apply(
    offsets: &mut HashMap<String, GroupOffsets>,
    (kind, group, topic, partition, committed): (u8, String, String, i32, Committed),
) {
    match kind {
        KIND_COMMIT => {
            offsets
                .entry(group)
                .or_default()
                .insert((topic, partition), committed);
        }
        KIND_DELETE_GROUP => {
            offsets.remove(&group);
        }
        _ => {}
    }
}

impl OffsetStore {
    pub fn new(
        settings: &BrokerSettings,
        data_arrived: Rc<sluice_storage::event::Event>,
    ) -> OffsetStore {
        OffsetStore {
            buckets: RefCell::new(HashMap::new()),
            loading: RefCell::new(HashSet::new()),
            offsets: RefCell::new(HashMap::new()),
            stored_groups: RefCell::new(HashSet::new()),
            attaching: RefCell::new(HashMap::new()),
            next_attach: Cell::new(0),
            refusals: LogLimiter::new(Duration::from_secs(1)),
            snapshot_dir: settings.data_dir.join("offsets"),
            data_arrived,
        }
    }

    fn snapshot_path(&self, bucket: u32) -> std::path::PathBuf {
        self.snapshot_dir
            .join(format!("bucket-{bucket:02}.snapshot"))
    }

    /// NONE if this shard serves `group` now, else the code to answer with.
    pub fn serves(&self, group: &str) -> i16 {
        let bucket = bucket_of(group);
        if self.loading.borrow().contains(&bucket) {
            error_code::COORDINATOR_LOAD_IN_PROGRESS
        } else if self.buckets.borrow().contains_key(&bucket) {
            error_code::NONE
        } else {
            error_code::NOT_COORDINATOR
        }
    }

    /// This node became the leader of `bucket`: loads its offsets and group
    /// records from the partition (and imports an older data dir's snapshot
    /// once), retried while it still leads at the same epoch; served only if
    /// it still does, and only by the latest attach of the bucket (a later
    /// attach or a detach supersedes this one: it then changes nothing).
    /// The group records, for the coordinator to take over in this same
    /// step, or `None` if the bucket is not served by this attach.
    pub async fn attach(&self, bucket: u32, entry: Rc<PartitionEntry>) -> Option<Vec<StoredGroup>> {
        let epoch = entry.replica.leader_epoch.get();
        let leads = || entry.replica.is_leader() && entry.replica.leader_epoch.get() == epoch;
        let token = self.next_attach.get() + 1;
        self.next_attach.set(token);
        self.attaching.borrow_mut().insert(bucket, token);
        self.loading.borrow_mut().insert(bucket);
        let current = || self.attaching.borrow().get(&bucket) == Some(&token);
        let started = std::time::Instant::now();
        let loaded = loop {
            let result = self.load(bucket, &entry).await;
            if !current() {
                return None;
            }
            if !leads() {
                break None;
            }
            match result {
                Ok(loaded) => break Some(loaded),
                Err(e) => {
                    tracing::error!(bucket, error = %e, "loading an offsets bucket failed: retrying");
                    glommio::timer::sleep(Duration::from_millis(500)).await;
                    if !current() {
                        return None;
                    }
                }
            }
        };
        // The current attach ends the load, served or not.
        self.attaching.borrow_mut().remove(&bucket);
        self.loading.borrow_mut().remove(&bucket);
        self.forget(bucket);
        let Some(loaded) = loaded else {
            self.buckets.borrow_mut().remove(&bucket);
            return None;
        };
        tracing::info!(
            bucket,
            records = loaded.records,
            groups = loaded.groups.len(),
            ms = started.elapsed().as_millis() as u64,
            "offsets bucket loaded: coordinating its groups"
        );
        self.offsets.borrow_mut().extend(loaded.offsets);
        self.stored_groups
            .borrow_mut()
            .extend(loaded.groups.keys().cloned());
        self.buckets.borrow_mut().insert(bucket, entry);
        Some(loaded.groups.into_values().collect())
    }

    /// This node no longer leads `bucket`: its groups are served elsewhere
    /// (a load still running is superseded).
    pub fn detach(&self, bucket: u32) {
        self.attaching.borrow_mut().remove(&bucket);
        self.loading.borrow_mut().remove(&bucket);
        if self.buckets.borrow_mut().remove(&bucket).is_some() {
            tracing::info!(bucket, "offsets bucket led elsewhere now");
        }
        self.forget(bucket);
    }

    fn forget(&self, bucket: u32) {
        self.offsets
            .borrow_mut()
            .retain(|group, _| bucket_of(group) != bucket);
        self.stored_groups
            .borrow_mut()
            .retain(|group| bucket_of(group) != bucket);
    }

    /// Reads the whole bucket into maps of its own (installed by `attach`).
    async fn load(&self, bucket: u32, entry: &Rc<PartitionEntry>) -> Result<LoadedBucket, String> {
        let log = &entry.log;
        let mut loaded = LoadedBucket::default();
        let mut offset = log.log_start_offset();
        let snapshot_path = self.snapshot_path(bucket);
        let legacy = std::fs::read(&snapshot_path).ok();
        if let Some(bytes) = &legacy {
            match decode_snapshot(bytes) {
                Some((next_log_offset, entries)) => {
                    for (group, topic, partition, committed) in entries {
                        apply(
                            &mut loaded.offsets,
                            (KIND_COMMIT, group, topic, partition, committed),
                        );
                    }
                    offset = offset.max(next_log_offset).min(log.high_watermark());
                }
                None => {
                    tracing::warn!(path = %snapshot_path.display(), "offset snapshot damaged: replaying the whole log")
                }
            }
        }
        loop {
            let read = log
                .read(offset, 1 << 20)
                .await
                .map_err(|e| format!("offsets bucket {bucket}: {e}"))?;
            if read.records.is_empty() {
                break;
            }
            let records = read.records.to_bytes();
            let mut at = 0;
            while at < records.len() {
                let header = BatchHeader::parse(&records[at..]).map_err(|e| e.to_string())?;
                let batch = &records[at..at + header.total_bytes()];
                for (key, value) in record_keys_values(batch) {
                    loaded.records += 1;
                    loaded.replay(bucket, key, value);
                }
                at += header.total_bytes();
            }
            offset = read.next_offset;
        }
        if legacy.is_some() {
            self.import_legacy(&loaded.offsets, entry).await?;
            match std::fs::remove_file(&snapshot_path) {
                // Removed by a superseded load of the same bucket: done too.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("{}: {e}", snapshot_path.display()))
                }
                _ => {}
            }
            tracing::info!(
                bucket,
                "offset snapshot of an older data dir imported into the offsets partition"
            );
        }
        Ok(loaded)
    }

    /// Writes a bucket's offsets as keyed records (an older data dir's
    /// unkeyed records and snapshot are superseded by them).
    async fn import_legacy(
        &self,
        offsets: &HashMap<String, GroupOffsets>,
        entry: &Rc<PartitionEntry>,
    ) -> Result<(), String> {
        let records: Vec<(Vec<u8>, Vec<u8>)> = offsets
            .iter()
            .flat_map(|(group, offsets)| {
                offsets.iter().map(move |((topic, partition), c)| {
                    (
                        key(group, topic, *partition),
                        encode(KIND_COMMIT, group, topic, *partition, c),
                    )
                })
            })
            .collect();
        for chunk in records.chunks(IMPORT_BATCH_RECORDS) {
            let entries: Vec<(&[u8], Option<&[u8]>)> = chunk
                .iter()
                .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
                .collect();
            self.append(entry, &entries)
                .await
                .map_err(|code| format!("writing imported offsets: {}", error_code::name(code)))?;
        }
        Ok(())
    }

    /// The bucket partition of `group`, if this shard serves it.
    fn bucket_entry(&self, group: &str) -> Result<Rc<PartitionEntry>, i16> {
        match self.serves(group) {
            error_code::NONE => Ok(self.buckets.borrow()[&bucket_of(group)].clone()),
            code => Err(code),
        }
    }

    /// Records the commits on every in-sync replica of the group's bucket,
    /// then makes them visible. The error is the Kafka code to answer.
    pub async fn commit(
        &self,
        group: &str,
        commits: Vec<(String, i32, Committed)>,
    ) -> Result<(), i16> {
        if commits.is_empty() {
            return Ok(());
        }
        let entry = self.bucket_entry(group)?;
        let records: Vec<(Vec<u8>, Vec<u8>)> = commits
            .iter()
            .map(|(t, p, c)| (key(group, t, *p), encode(KIND_COMMIT, group, t, *p, c)))
            .collect();
        let entries: Vec<(&[u8], Option<&[u8]>)> = records
            .iter()
            .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
            .collect();
        self.append(&entry, &entries).await.map_err(commit_error)?;
        let mut offsets = self.offsets.borrow_mut();
        for (topic, partition, committed) in commits {
            apply(
                &mut offsets,
                (KIND_COMMIT, group.to_string(), topic, partition, committed),
            );
        }
        Ok(())
    }

    /// Writes the group's metadata record on every in-sync replica of its
    /// bucket. The error is the write's own (MESSAGE_TOO_LARGE,
    /// NOT_ENOUGH_REPLICAS, ...; `group_error` turns it into the answer), or
    /// the coordinator code if the bucket is not served here.
    pub async fn store_group(&self, group: &StoredGroup) -> Result<(), i16> {
        let entry = self.bucket_entry(&group.id)?;
        let (key, value) = (group_key(&group.id), encode_group(group));
        // Counted from the step it is staged in, failed or not: a record
        // whose write failed late may still be in the log, and forgetting the
        // group must then write a tombstone.
        self.stored_groups.borrow_mut().insert(group.id.clone());
        self.append(&entry, &[(key.as_slice(), Some(value.as_slice()))])
            .await
    }

    /// The groups with a metadata record in the buckets served here.
    pub fn stored_groups(&self) -> Vec<String> {
        self.stored_groups.borrow().iter().cloned().collect()
    }

    /// Has the group a metadata record (not tombstoned)?
    pub fn has_stored_group(&self, group: &str) -> bool {
        self.stored_groups.borrow().contains(group)
    }

    /// A tombstone for the group's metadata record, if it has one (a group
    /// forgotten). The error is the write's own.
    pub async fn forget_group(&self, group: &str) -> Result<(), i16> {
        let entry = self.bucket_entry(group)?;
        self.tombstones(&entry, group, Vec::new()).await
    }

    /// Tombstones for every committed offset of the group and its metadata.
    pub async fn delete_group(&self, group: &str) -> Result<(), i16> {
        let entry = self.bucket_entry(group)?;
        let keys: Vec<Vec<u8>> = self
            .offsets
            .borrow()
            .get(group)
            .map(|o| o.keys().map(|(t, p)| key(group, t, *p)).collect())
            .unwrap_or_default();
        self.tombstones(&entry, group, keys)
            .await
            .map_err(commit_error)?;
        self.offsets.borrow_mut().remove(group);
        Ok(())
    }

    /// Writes tombstones for `keys` and for the group's metadata record if
    /// it has one. The record counts as gone from the step the tombstones
    /// are staged in (a record stored after them, a group made again
    /// meanwhile, counts again), and again as there if they fail.
    async fn tombstones(
        &self,
        entry: &Rc<PartitionEntry>,
        group: &str,
        mut keys: Vec<Vec<u8>>,
    ) -> Result<(), i16> {
        let stored = self.stored_groups.borrow_mut().remove(group);
        if stored {
            keys.push(group_key(group));
        }
        if keys.is_empty() {
            return Ok(());
        }
        let entries: Vec<(&[u8], Option<&[u8]>)> =
            keys.iter().map(|k| (k.as_slice(), None)).collect();
        let written = self.append(entry, &entries).await;
        if written.is_err() && stored {
            self.stored_groups.borrow_mut().insert(group.to_string());
        }
        written
    }

    pub fn fetch(&self, group: &str) -> GroupOffsets {
        self.offsets
            .borrow()
            .get(group)
            .cloned()
            .unwrap_or_default()
    }

    pub fn groups_with_offsets(&self) -> Vec<String> {
        self.offsets.borrow().keys().cloned().collect()
    }

    /// Appends keyed records to an offsets partition this node leads and waits
    /// until every in-sync replica has them. As in Kafka (acks=all on
    /// `__consumer_offsets`), fewer in-sync replicas than min.insync.replicas
    /// refuse the write before it (NOT_ENOUGH_REPLICAS) or after it
    /// (NOT_ENOUGH_REPLICAS_AFTER_APPEND). The error is the write's own
    /// code; `commit_error` and `group_error` turn it into the answer.
    async fn append(
        &self,
        entry: &Rc<PartitionEntry>,
        records: &[(&[u8], Option<&[u8]>)],
    ) -> Result<(), i16> {
        let min_insync = entry.config.get().min_insync_replicas.max(1) as usize;
        let too_few = || entry.replica.isr.borrow().len() < min_insync;
        let result = async {
            if too_few() {
                return Err(error_code::NOT_ENOUGH_REPLICAS);
            }
            let batch =
                bytes::Bytes::from(build_keyed_batch(sluice_storage::now_ms() as i64, records));
            let epoch = entry.replica.leader_epoch.get();
            let outcome = entry.produce(batch).await;
            if outcome.error_code != error_code::NONE {
                return Err(outcome.error_code);
            }
            // Followers long-polling this bucket fetch it now.
            self.data_arrived.notify();
            let target = outcome.base_offset + records.len() as i64;
            entry.wait_replicated(target, epoch, COMMIT_TIMEOUT).await?;
            if too_few() {
                return Err(error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND);
            }
            Ok(())
        }
        .await;
        if let Err(code) = result {
            if let Some(left_out) = self.refusals.allow() {
                tracing::warn!(
                    partition = entry.log.name(),
                    error = %error_code::name(code),
                    isr = entry.replica.isr.borrow().len(),
                    min_insync,
                    left_out,
                    "offsets or group metadata not written"
                );
            }
        }
        result
    }

    /// Groups whose newest commit is older than `retention_ms` (for expiry of empty groups).
    pub fn stale_groups(&self, now_ms: i64, retention_ms: i64) -> Vec<String> {
        self.offsets
            .borrow()
            .iter()
            .filter(|(_, offsets)| {
                offsets
                    .values()
                    .map(|c| c.commit_ms)
                    .max()
                    .is_some_and(|t| now_ms - t > retention_ms)
            })
            .map(|(g, _)| g.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::record_batch::{build_batch, record_values};

    /// The bucket's partition of `__consumer_offsets` in `settings.data_dir`.
    async fn open_bucket(settings: &BrokerSettings, bucket: u32) -> Rc<PartitionEntry> {
        let path = settings.partition_dir(OFFSETS_TOPIC, bucket as i32);
        let config = crate::topic_config::effective(settings, &BTreeMap::new());
        let storage = crate::storage_dir::open_dir(&path).unwrap();
        Rc::new(
            crate::partition::Partition::open(storage, config, "o".into(), path, 0)
                .await
                .unwrap(),
        )
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_detected() {
        let snapshot = OffsetSnapshot {
            next_log_offset: 77,
            entries: vec![SnapshotEntry {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                offset: 42,
                leader_epoch: 1,
                metadata: Some("m".into()),
                commit_ms: 5,
            }],
        };
        let bytes = encode_snapshot(&snapshot);
        let (next, entries) = decode_snapshot(&bytes).unwrap();
        assert_eq!(next, 77);
        assert_eq!(entries[0].0, "g");
        assert_eq!(entries[0].3.offset, 42);
        for at in [0, 9, 21, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(decode_snapshot(&bad).is_none(), "flip at {at} accepted");
        }
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn records_round_trip_through_a_batch() {
        let c = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: Some("meta".into()),
            commit_ms: 99,
        };
        let value = encode(KIND_COMMIT, "group-a", "orders", 5, &c);
        let batch = build_batch(1, &[&value, &value]);
        let values = record_values(&batch);
        assert_eq!(values.len(), 2);
        let (kind, group, topic, partition, committed) = decode(values[0]).unwrap();
        assert_eq!(
            (kind, group.as_str(), topic.as_str(), partition),
            (KIND_COMMIT, "group-a", "orders", 5)
        );
        assert_eq!(committed, c);
        assert!(
            decode(&value[..value.len() - 1]).is_none(),
            "a torn record is refused"
        );
    }

    #[test]
    fn keys_round_trip_and_tombstones_carry_them() {
        let k = key("group-a", "orders", 5);
        assert_eq!(
            decode_key(&k),
            Some(Key::Offset("group-a".to_string(), "orders".to_string(), 5))
        );
        assert_eq!(
            decode_key(&group_key("group-a")),
            Some(Key::Group("group-a".to_string()))
        );
        let batch = build_keyed_batch(1, &[(&k, None), (&k, Some(b"v"))]);
        let records = record_keys_values(&batch);
        assert_eq!(records[0], (Some(&k[..]), None));
        assert_eq!(records[1], (Some(&k[..]), Some(&b"v"[..])));
    }

    /// An older data dir's bucket: unkeyed records in the log and an rkyv
    /// snapshot next to it. Loaded as a partition of __consumer_offsets, the
    /// snapshot's offsets and the log after it are served, written back as
    /// keyed records, and the snapshot is removed; loaded again (after a
    /// restart, or on another leader) the partition alone gives the same.
    #[test]
    fn an_older_data_dirs_snapshot_is_imported_once() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let dir = tempfile::tempdir().unwrap();
                let settings = BrokerSettings::for_tests(dir.path().to_path_buf());
                let bucket = bucket_of("legacy");
                let open = || open_bucket(&settings, bucket);
                let committed = |offset: i64| Committed {
                    offset,
                    leader_epoch: 0,
                    metadata: None,
                    commit_ms: 1,
                };
                // The old store: one record below the snapshot, one after it.
                let entry = open().await;
                let old = |c: &Committed| encode(KIND_COMMIT, "legacy", "t", 0, c);
                for c in [committed(5), committed(9)] {
                    let batch = bytes::Bytes::from(build_batch(1, &[&old(&c)]));
                    assert_eq!(entry.produce(batch).await.error_code, error_code::NONE);
                }
                let snapshot = OffsetSnapshot {
                    next_log_offset: 1,
                    entries: vec![
                        SnapshotEntry {
                            group: "legacy".into(),
                            topic: "t".into(),
                            partition: 0,
                            offset: 5,
                            leader_epoch: 0,
                            metadata: None,
                            commit_ms: 1,
                        },
                        SnapshotEntry {
                            group: "legacy".into(),
                            topic: "t".into(),
                            partition: 1,
                            offset: 7,
                            leader_epoch: 0,
                            metadata: None,
                            commit_ms: 1,
                        },
                    ],
                };
                let store = OffsetStore::new(&settings, Rc::default());
                let snapshot_path = store.snapshot_path(bucket);
                std::fs::write(&snapshot_path, encode_snapshot(&snapshot)).unwrap();
                let expected: GroupOffsets = [
                    (("t".to_string(), 0), committed(9)),
                    (("t".to_string(), 1), committed(7)),
                ]
                .into();
                store.attach(bucket, entry.clone()).await;
                assert_eq!(store.serves("legacy"), error_code::NONE);
                assert_eq!(store.fetch("legacy"), expected);
                assert!(!snapshot_path.exists(), "imported once");
                // Reloaded from the partition alone.
                entry.log.close().await.unwrap();
                let again = OffsetStore::new(&settings, Rc::default());
                let entry = open().await;
                again.attach(bucket, entry.clone()).await;
                assert_eq!(again.fetch("legacy"), expected);
                // A deleted group stays deleted (tombstones).
                again.delete_group("legacy").await.unwrap();
                assert!(again.fetch("legacy").is_empty());
                again.detach(bucket);
                assert_eq!(again.serves("legacy"), error_code::NOT_COORDINATOR);
                entry.log.close().await.unwrap();
                let third = OffsetStore::new(&settings, Rc::default());
                third.attach(bucket, open().await).await;
                assert!(third.fetch("legacy").is_empty());
            })
            .unwrap()
            .join()
            .unwrap();
    }

    fn stored_group(id: &str, generation: i32) -> StoredGroup {
        StoredGroup {
            id: id.into(),
            generation,
            protocol_type: Some("consumer".into()),
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            members: vec![
                StoredMember {
                    id: "m-1".into(),
                    instance_id: None,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: 10_000,
                    rebalance_timeout_ms: 30_000,
                    subscription: bytes::Bytes::from_static(b"sub"),
                    assignment: bytes::Bytes::from_static(b"A"),
                },
                StoredMember {
                    id: "m-2".into(),
                    instance_id: Some("static-2".into()),
                    client_id: "".into(),
                    client_host: "/10.0.0.2".into(),
                    session_timeout_ms: 45_000,
                    rebalance_timeout_ms: 300_000,
                    subscription: bytes::Bytes::new(),
                    assignment: bytes::Bytes::from_static(b""),
                },
            ],
        }
    }

    #[test]
    fn group_records_round_trip_and_damage_is_refused() {
        let group = stored_group("g", 7);
        let value = encode_group(&group);
        assert_eq!(decode_group(&value), Some(group.clone()));
        let empty = StoredGroup {
            protocol: None,
            leader: None,
            members: Vec::new(),
            ..group
        };
        assert_eq!(decode_group(&encode_group(&empty)), Some(empty));
        for at in [0, 5, value.len() / 2, value.len() - 1] {
            let mut bad = value.clone();
            bad[at] ^= 1;
            assert_eq!(decode_group(&bad), None, "flip at {at} accepted");
        }
        assert_eq!(decode_group(&value[..value.len() - 1]), None);
    }

    /// Group records are read back by the next leader's load (the newest per
    /// group), a tombstone removes one, and a deleted group's record goes too.
    #[test]
    fn group_records_are_loaded_by_the_next_leader() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let dir = tempfile::tempdir().unwrap();
                let settings = BrokerSettings::for_tests(dir.path().to_path_buf());
                // Three groups of one bucket.
                let kept = "kept";
                let bucket = bucket_of(kept);
                let same: Vec<String> = (0..)
                    .map(|i| format!("g{i}"))
                    .filter(|g| bucket_of(g) == bucket)
                    .take(2)
                    .collect();
                let (forgotten, deleted) = (same[0].as_str(), same[1].as_str());
                let open = || open_bucket(&settings, bucket);
                let entry = open().await;
                let store = OffsetStore::new(&settings, Rc::default());
                assert_eq!(store.attach(bucket, entry.clone()).await, Some(vec![]));
                for (group, generation) in [(kept, 1), (kept, 2), (forgotten, 1), (deleted, 4)] {
                    store
                        .store_group(&stored_group(group, generation))
                        .await
                        .unwrap();
                }
                let committed = Committed {
                    offset: 5,
                    leader_epoch: 0,
                    metadata: None,
                    commit_ms: 1,
                };
                let commit = vec![("t".to_string(), 0, committed)];
                store.commit(deleted, commit.clone()).await.unwrap();
                store.commit(kept, commit).await.unwrap();
                store.forget_group(forgotten).await.unwrap();
                store.delete_group(deleted).await.unwrap();
                assert!(store.has_stored_group(kept) && !store.has_stored_group(deleted));
                entry.log.close().await.unwrap();
                let next = Rc::new(OffsetStore::new(&settings, Rc::default()));
                let entry = open().await;
                // A load superseded (a detach, then another attach, while it
                // runs) changes nothing, served or not.
                let superseded = glommio::spawn_local({
                    let (next, entry) = (next.clone(), entry.clone());
                    async move { next.attach(bucket, entry).await }
                });
                futures_lite::future::yield_now().await;
                assert_eq!(next.serves(kept), error_code::COORDINATOR_LOAD_IN_PROGRESS);
                next.detach(bucket);
                assert_eq!(next.serves(kept), error_code::NOT_COORDINATOR);
                let loaded = next.attach(bucket, entry.clone()).await;
                assert_eq!(superseded.await, None);
                assert_eq!(loaded, Some(vec![stored_group(kept, 2)]));
                assert_eq!(next.serves(kept), error_code::NONE);
                assert_eq!(next.fetch(kept).len(), 1, "the offsets are all there");
                assert!(next.has_stored_group(kept));
                assert!(!next.has_stored_group(forgotten) && !next.has_stored_group(deleted));
                assert!(next.fetch(deleted).is_empty());
                next.detach(bucket);
                assert!(!next.has_stored_group(kept));
                assert_eq!(next.serves(kept), error_code::NOT_COORDINATOR);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn groups_spread_over_buckets_and_shards() {
        let buckets: std::collections::BTreeSet<u32> =
            (0..200).map(|i| bucket_of(&format!("g{i}"))).collect();
        assert!(buckets.len() > 8);
        assert!(coordinator_shard("any", 1) == 0);
    }
}
