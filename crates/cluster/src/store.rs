//! Durable storage of the metadata log for openraft: the log entries, the
//! vote, and the state machine's snapshots, as files in one directory.
//!
//! - `raft.log`: records `len u32 | crc32 u32 | JSON`, each an entry or (first)
//!   the id of the last purged entry. Appends are written and fdatasync'd
//!   before openraft is told they are durable; a torn last record (a crash
//!   mid-append) fails its CRC and is cut at open. Truncation (a conflicting
//!   suffix) and purging (entries a snapshot covers) rewrite the file: temp
//!   file, fsync, rename, directory fsync. The metadata log stays small: it
//!   is purged behind snapshots.
//! - `vote.json`: the vote, replaced the same way before openraft goes on.
//! - `snapshot.json`: the last snapshot (the whole [`ClusterMetadata`], its last
//!   log id and membership). The state machine is not persisted on its own:
//!   at start it is the snapshot, and openraft re-applies the committed
//!   entries after it.
//!
//! The files are small and written rarely (metadata changes): plain blocking
//! `std::fs` calls on the controller's own thread.

use crate::metadata::ClusterMetadata;
use crate::raft::{CommandResult, Entry, LogId, RaftNodeId, StorageError, TypeConfig};
use arc_swap::ArcSwap;
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "vote.json";
const SNAPSHOT_FILE: &str = "snapshot.json";

/// Writes `bytes` to `dir/name` durably: temp file, fsync, rename, directory fsync.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temp = dir.join(format!("{name}.tmp"));
    {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[derive(Serialize, Deserialize)]
enum LogRecord {
    Purged(LogId),
    Entry(Entry),
}

fn encode_record(record: &LogRecord, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(record).expect("log records serialize");
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.extend_from_slice(&json);
}

/// The records of a log file up to the first damaged one, and the length of
/// that valid prefix.
fn decode_records(bytes: &[u8]) -> (Vec<LogRecord>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let Some(json) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(json) != crc {
            break;
        }
        let Ok(record) = serde_json::from_slice(json) else {
            break;
        };
        records.push(record);
        at += 8 + len;
    }
    (records, at)
}

struct LogInner {
    dir: PathBuf,
    file: std::fs::File,
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote<RaftNodeId>>,
}

impl LogInner {
    /// Rewrites the log file from memory (after truncate or purge).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        if let Some(purged) = self.last_purged {
            encode_record(&LogRecord::Purged(purged), &mut bytes);
        }
        for entry in self.entries.values() {
            encode_record(&LogRecord::Entry(entry.clone()), &mut bytes);
        }
        replace_file(&self.dir, LOG_FILE, &bytes)?;
        self.file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join(LOG_FILE))?;
        Ok(())
    }
}

/// The metadata log and vote. Clones share the same log (openraft takes one
/// as the storage and others as readers).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

fn io_error<E: std::error::Error + 'static>(e: &E) -> StorageError {
    StorageError::from(StorageIOError::write_logs(openraft::AnyError::new(e)))
}

impl LogStore {
    /// Opens the log in `dir` (created if missing), cutting a torn tail.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (records, valid) = decode_records(&bytes);
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), valid, len = bytes.len(), "metadata log: cutting a torn or damaged tail");
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        for record in records {
            match record {
                LogRecord::Purged(id) => last_purged = Some(id),
                LogRecord::Entry(entry) => {
                    entries.insert(entry.log_id.index, entry);
                }
            }
        }
        let vote = match std::fs::read(dir.join(VOTE_FILE)) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(std::io::Error::other)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_path_buf(),
                file,
                entries,
                last_purged,
                vote,
            })),
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock().unwrap();
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().unwrap();
        let bytes = serde_json::to_vec(vote).expect("a vote serializes");
        replace_file(&inner.dir, VOTE_FILE, &bytes).map_err(|e| {
            StorageError::from(StorageIOError::write_vote(openraft::AnyError::new(&e)))
        })?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftNodeId>>, StorageError> {
        Ok(self.inner.lock().unwrap().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().unwrap();
        let mut bytes = Vec::new();
        let entries: Vec<Entry> = entries.into_iter().collect();
        for entry in &entries {
            encode_record(&LogRecord::Entry(entry.clone()), &mut bytes);
        }
        let written = inner
            .file
            .write_all(&bytes)
            .and_then(|_| inner.file.sync_data());
        match written {
            Ok(()) => {
                for entry in entries {
                    inner.entries.insert(entry.log_id.index, entry);
                }
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = io_error(&e);
                callback.log_io_completed(Err(e));
                Err(error)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().unwrap();
        inner.entries.split_off(&log_id.index);
        inner.rewrite().map_err(|e| io_error(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().unwrap();
        let keep = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = keep;
        inner.last_purged = Some(log_id);
        inner.rewrite().map_err(|e| io_error(&e))
    }
}

/// What a snapshot holds: the metadata and where the log stood.
#[derive(Clone, Default, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Option<SnapshotMeta<RaftNodeId, BasicNode>>,
    last_applied: Option<LogId>,
    membership: StoredMembership<RaftNodeId, BasicNode>,
    metadata: ClusterMetadata,
}

/// The state machine: the cluster metadata as of the last applied entry,
/// published to readers (the shards) after every apply.
pub struct StateMachine {
    dir: PathBuf,
    state: StoredSnapshot,
    /// The last snapshot taken or installed, as stored.
    snapshot: Option<Vec<u8>>,
    published: Arc<ArcSwap<ClusterMetadata>>,
    /// The index of the last applied entry, for those who wait for a change.
    applied: Arc<tokio::sync::watch::Sender<u64>>,
}

impl StateMachine {
    /// Opens the state machine in `dir`: the last snapshot, if any.
    pub fn open(dir: &Path) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let (state, snapshot) = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => (
                serde_json::from_slice::<StoredSnapshot>(&bytes).map_err(std::io::Error::other)?,
                Some(bytes),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (StoredSnapshot::default(), None),
            Err(e) => return Err(e),
        };
        let published = Arc::new(ArcSwap::from_pointee(state.metadata.clone()));
        let applied = Arc::new(tokio::sync::watch::Sender::new(
            state.last_applied.map_or(0, |id| id.index),
        ));
        Ok(StateMachine {
            dir: dir.to_path_buf(),
            state,
            snapshot,
            published,
            applied,
        })
    }

    /// The metadata as of the last applied entry; readers never lock.
    pub fn metadata(&self) -> Arc<ArcSwap<ClusterMetadata>> {
        self.published.clone()
    }

    /// Changes to the last applied index (the metadata is published first).
    pub fn applied(&self) -> Arc<tokio::sync::watch::Sender<u64>> {
        self.applied.clone()
    }

    // openraft's error type is what the trait methods return; boxing it here would only unbox it again.
    #[allow(clippy::result_large_err)]
    fn store_snapshot(&mut self, stored: &StoredSnapshot) -> Result<Vec<u8>, StorageError> {
        let bytes = serde_json::to_vec(stored).expect("a snapshot serializes");
        replace_file(&self.dir, SNAPSHOT_FILE, &bytes).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(
                None,
                openraft::AnyError::new(&e),
            ))
        })?;
        self.snapshot = Some(bytes.clone());
        Ok(bytes)
    }
}

/// Builds a snapshot from a copy of the state machine.
pub struct SnapshotBuilder {
    dir: PathBuf,
    state: StoredSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let last = self.state.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.state.membership.clone(),
            snapshot_id: match last {
                Some(id) => format!("{}-{}", id.leader_id, id.index),
                None => "empty".to_string(),
            },
        };
        let mut stored = self.state.clone();
        stored.meta = Some(meta.clone());
        let bytes = serde_json::to_vec(&stored).expect("a snapshot serializes");
        replace_file(&self.dir, SNAPSHOT_FILE, &bytes).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(
                None,
                openraft::AnyError::new(&e),
            ))
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<RaftNodeId, BasicNode>), StorageError> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::default(),
                EntryPayload::Normal(command) => CommandResult {
                    error: self
                        .state
                        .metadata
                        .apply(entry.log_id.index, &command)
                        .err(),
                    index: entry.log_id.index,
                },
                EntryPayload::Membership(membership) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResult::default()
                }
            };
            results.push(result);
        }
        self.published.store(Arc::new(self.state.metadata.clone()));
        if let Some(id) = self.state.last_applied {
            self.applied.send_replace(id.index);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            state: self.state.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftNodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let mut stored: StoredSnapshot =
            serde_json::from_slice(snapshot.get_ref()).map_err(|e| {
                StorageError::from(StorageIOError::read_snapshot(
                    None,
                    openraft::AnyError::new(&e),
                ))
            })?;
        stored.meta = Some(meta.clone());
        stored.last_applied = meta.last_log_id;
        stored.membership = meta.last_membership.clone();
        self.store_snapshot(&stored)?;
        self.state = stored;
        self.published.store(Arc::new(self.state.metadata.clone()));
        if let Some(id) = self.state.last_applied {
            self.applied.send_replace(id.index);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(bytes) = self
            .snapshot
            .clone()
            .or_else(|| std::fs::read(self.dir.join(SNAPSHOT_FILE)).ok())
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                None,
                openraft::AnyError::new(&e),
            ))
        })?;
        Ok(stored.meta.map(|meta| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().unwrap();
            let log = LogStore::open(&dir.path().join("log")).unwrap();
            let sm = StateMachine::open(&dir.path().join("sm")).unwrap();
            Ok((dir, log, sm))
        }
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(crate::Command::AllocateProducerIds {
                from: (index as i64 - 1) * 1000,
                to: index as i64 * 1000,
            }),
        }
    }

    /// What was appended and voted survives a reopen; a torn last record is
    /// cut, never read as an entry.
    #[test]
    fn the_log_and_vote_survive_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut log = LogStore::open(dir.path()).unwrap();
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            // Appended as `append` writes them (its flush callback is openraft's to make).
            for index in 1..=3 {
                let mut inner = log.inner.lock().unwrap();
                let mut bytes = Vec::new();
                encode_record(&LogRecord::Entry(entry(1, index)), &mut bytes);
                inner.file.write_all(&bytes).unwrap();
                inner.entries.insert(index, entry(1, index));
            }
            log.purge(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                1,
            ))
            .await
            .unwrap();
            drop(log);
            // A crash mid-append: half a record at the end.
            let mut half = Vec::new();
            encode_record(&LogRecord::Entry(entry(1, 4)), &mut half);
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join(LOG_FILE))
                .unwrap();
            file.write_all(&half[..half.len() / 2]).unwrap();
            drop(file);
            let mut log = LogStore::open(dir.path()).unwrap();
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(1));
            assert_eq!(state.last_log_id.map(|id| id.index), Some(3));
            let entries = log.try_get_log_entries(0..10).await.unwrap();
            assert_eq!(
                entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
                vec![2, 3]
            );
        });
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
