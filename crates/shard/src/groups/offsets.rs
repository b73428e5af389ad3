//! The core-local offset store: committed offsets of the groups this shard
//! coordinates. Commits are appended as record batches to a partition log of
//! the storage engine (`<data_dir>/offsets/bucket-NN/`), so they share its
//! group commit, CRCs and crash recovery; a commit is acknowledged once durable.
//! Groups hash to one of `OFFSET_BUCKETS` buckets, and bucket b lives on shard
//! `b % shard_count`, so offsets survive a change of core count.
//!
//! Record value (big-endian): `kind u8 (1 commit, 2 delete group) | group u16+bytes |
//! topic u16+bytes | partition i32 | offset i64 | leader_epoch i32 |
//! metadata i16 len (-1 null) + bytes | commit_ms i64 | crc32 u32` (crc32fast
//! of everything before it). A delete has empty topic and zeros after it. A
//! record whose checksum fails is dropped on replay, never a valid one.
//!
//! Snapshots: every so often (and at close) the map of a bucket is written with
//! rkyv to `<data_dir>/offsets/bucket-NN.snapshot` (temp file, fsync, rename):
//! `"SLOFFSN1" | crc32 u32 | length u64 | rkyv bytes`, holding the map and the
//! log offset it covers. A restart reads the archive in place (no parsing
//! step), then replays only the log after that offset; log segments wholly
//! below it are deleted.

use crate::settings::BrokerSettings;
use crate::storage_dir::open_dir;
use crate::storage_dir::Log;
use sluice_protocol::record_batch::{build_batch, record_values, BatchHeader};
use sluice_storage::{AppendOptions, LogError, PartitionLog};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

pub const OFFSET_BUCKETS: u32 = 16;
/// Snapshot a bucket once this many records were written since the last one.
pub const SNAPSHOT_EVERY_RECORDS: u64 = 10_000;
const SNAPSHOT_MAGIC: &[u8; 8] = b"SLOFFSN1";

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
    logs: RefCell<HashMap<u32, Rc<Log>>>,
    offsets: RefCell<HashMap<String, GroupOffsets>>,
    snapshot_dir: std::path::PathBuf,
    /// Per bucket: commits whose append has not returned yet.
    pending: RefCell<HashMap<u32, usize>>,
    /// Per bucket: records written since the last snapshot.
    since_snapshot: RefCell<HashMap<u32, u64>>,
    /// Buckets whose snapshot must be rewritten right after open.
    rewrite_snapshot: RefCell<Vec<u32>>,
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
}

fn decode(value: &[u8]) -> Option<(u8, String, String, i32, Committed)> {
    let (payload, crc) = value.split_at(value.len().checked_sub(4)?);
    if crc32fast::hash(payload) != u32::from_be_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut r = Reader(payload);
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

impl OffsetStore {
    /// Opens (and replays) the buckets this shard owns.
    pub async fn open(
        settings: &BrokerSettings,
        shard: usize,
        shard_count: usize,
    ) -> Result<OffsetStore, String> {
        let snapshot_dir = settings.data_dir.join("offsets");
        let store = OffsetStore {
            logs: RefCell::new(HashMap::new()),
            offsets: RefCell::new(HashMap::new()),
            snapshot_dir,
            pending: RefCell::new(HashMap::new()),
            since_snapshot: RefCell::new(HashMap::new()),
            rewrite_snapshot: RefCell::new(Vec::new()),
        };
        for bucket in (0..OFFSET_BUCKETS).filter(|b| *b as usize % shard_count == shard) {
            let path = settings
                .data_dir
                .join("offsets")
                .join(format!("bucket-{bucket:02}"));
            let dir = open_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let config = sluice_storage::LogConfig {
                segment_bytes: 4 << 20,
                retention_ms: None,
                retention_bytes: None,
                preallocate_bytes: 1 << 20,
                ..settings.log
            };
            let log = PartitionLog::open(dir, config, format!("offsets-{bucket:02}"))
                .await
                .map_err(|e| format!("offset store bucket {bucket}: {e}"))?;
            let mut offset = log.log_start_offset();
            let snapshot_path = store.snapshot_path(bucket);
            if let Ok(bytes) = std::fs::read(&snapshot_path) {
                match decode_snapshot(&bytes) {
                    Some((next_log_offset, entries)) => {
                        for (group, topic, partition, committed) in entries {
                            store.apply((KIND_COMMIT, group, topic, partition, committed));
                        }
                        if next_log_offset > log.high_watermark() {
                            // The log lost its tail (a relaxed flush policy and a power
                            // cut): new commits will reuse those offsets, so the
                            // snapshot is rewritten at the current end below.
                            tracing::warn!(
                                bucket,
                                next_log_offset,
                                high_watermark = log.high_watermark(),
                                "offset snapshot is ahead of the log: rewriting it"
                            );
                            store.rewrite_snapshot.borrow_mut().push(bucket);
                        }
                        offset = offset.max(next_log_offset).min(log.high_watermark());
                    }
                    None => {
                        tracing::warn!(path = %snapshot_path.display(), "offset snapshot damaged: replaying the whole log")
                    }
                }
            }
            let mut replayed = 0u64;
            loop {
                let read = log
                    .read(offset, 1 << 20)
                    .await
                    .map_err(|e| format!("offset store bucket {bucket}: {e}"))?;
                if read.records.is_empty() {
                    break;
                }
                let mut at = 0;
                while at < read.records.len() {
                    let header =
                        BatchHeader::parse(&read.records[at..]).map_err(|e| e.to_string())?;
                    for value in record_values(&read.records[at..at + header.total_bytes()]) {
                        match decode(value) {
                            Some(record) => store.apply(record),
                            None => {
                                tracing::warn!(bucket, "offset record with a bad checksum dropped")
                            }
                        }
                        replayed += 1;
                    }
                    at += header.total_bytes();
                }
                offset = read.next_offset;
            }
            store.logs.borrow_mut().insert(bucket, log);
            store.since_snapshot.borrow_mut().insert(bucket, replayed);
        }
        let rewrite = std::mem::take(&mut *store.rewrite_snapshot.borrow_mut());
        if !rewrite.is_empty() {
            for bucket in rewrite {
                store.since_snapshot.borrow_mut().insert(bucket, 1);
            }
            store.snapshot(true).await;
        }
        Ok(store)
    }

    fn snapshot_path(&self, bucket: u32) -> std::path::PathBuf {
        self.snapshot_dir
            .join(format!("bucket-{bucket:02}.snapshot"))
    }

    /// Writes a snapshot of each bucket that has enough new records (or of
    /// all, with `force`) and no commit in flight, then drops covered segments.
    pub async fn snapshot(&self, force: bool) {
        let buckets: Vec<(u32, Rc<Log>)> = self
            .logs
            .borrow()
            .iter()
            .map(|(b, l)| (*b, l.clone()))
            .collect();
        for (bucket, log) in buckets {
            let since = self
                .since_snapshot
                .borrow()
                .get(&bucket)
                .copied()
                .unwrap_or(0);
            let busy = self.pending.borrow().get(&bucket).copied().unwrap_or(0) > 0;
            if busy || since == 0 || (!force && since < SNAPSHOT_EVERY_RECORDS) {
                continue;
            }
            // No commit in flight: the map holds exactly the records below the high watermark.
            let next_log_offset = log.high_watermark();
            let entries = self
                .offsets
                .borrow()
                .iter()
                .filter(|(group, _)| bucket_of(group) == bucket)
                .flat_map(|(group, offsets)| {
                    offsets
                        .iter()
                        .map(move |((topic, partition), c)| SnapshotEntry {
                            group: group.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                            offset: c.offset,
                            leader_epoch: c.leader_epoch,
                            metadata: c.metadata.clone(),
                            commit_ms: c.commit_ms,
                        })
                })
                .collect();
            let bytes = encode_snapshot(&OffsetSnapshot {
                next_log_offset,
                entries,
            });
            let path = self.snapshot_path(bucket);
            if let Err(e) = write_durably(&path, &bytes) {
                tracing::error!(path = %path.display(), error = %e, "writing offset snapshot failed");
                continue;
            }
            self.since_snapshot.borrow_mut().insert(bucket, 0);
            if let Err(e) = log.delete_segments_before(next_log_offset).await {
                tracing::warn!(bucket, error = %e, "trimming the offset log failed");
            }
        }
    }

    fn apply(
        &self,
        (kind, group, topic, partition, committed): (u8, String, String, i32, Committed),
    ) {
        let mut offsets = self.offsets.borrow_mut();
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

    /// Durably records the commits, then makes them visible.
    pub async fn commit(
        &self,
        group: &str,
        commits: Vec<(String, i32, Committed)>,
    ) -> Result<(), LogError> {
        if commits.is_empty() {
            return Ok(());
        }
        let values: Vec<Vec<u8>> = commits
            .iter()
            .map(|(t, p, c)| encode(KIND_COMMIT, group, t, *p, c))
            .collect();
        self.append(group, values).await?;
        for (topic, partition, committed) in commits {
            self.apply((KIND_COMMIT, group.to_string(), topic, partition, committed));
        }
        Ok(())
    }

    pub async fn delete_group(&self, group: &str) -> Result<(), LogError> {
        let none = Committed {
            offset: 0,
            leader_epoch: 0,
            metadata: None,
            commit_ms: 0,
        };
        self.append(group, vec![encode(KIND_DELETE_GROUP, group, "", 0, &none)])
            .await?;
        self.offsets.borrow_mut().remove(group);
        Ok(())
    }

    async fn append(&self, group: &str, values: Vec<Vec<u8>>) -> Result<(), LogError> {
        let bucket = bucket_of(group);
        let log = self
            .logs
            .borrow()
            .get(&bucket)
            .cloned()
            .ok_or(LogError::Closed)?;
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let batch = build_batch(sluice_storage::now_ms() as i64, &refs);
        *self.pending.borrow_mut().entry(bucket).or_default() += 1;
        let result = log
            .append(&batch, AppendOptions::default())
            .await
            .map(|_| ());
        *self.pending.borrow_mut().entry(bucket).or_default() -= 1;
        *self.since_snapshot.borrow_mut().entry(bucket).or_default() += values.len() as u64;
        result
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

    pub async fn close(&self) {
        self.snapshot(true).await;
        let logs: Vec<Rc<Log>> = self.logs.borrow_mut().drain().map(|(_, l)| l).collect();
        for log in logs {
            let _ = log.close().await;
        }
    }
}

fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("snapshot.tmp");
    {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn groups_spread_over_buckets_and_shards() {
        let buckets: std::collections::BTreeSet<u32> =
            (0..200).map(|i| bucket_of(&format!("g{i}"))).collect();
        assert!(buckets.len() > 8);
        assert!(coordinator_shard("any", 1) == 0);
    }
}
