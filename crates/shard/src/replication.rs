//! Replication state of one partition replica, and what the leader and the
//! followers do with it (Kafka's protocol: followers pull with Fetch).
//!
//! - The **leader epoch cache** (`leader-epochs` in the partition's
//!   directory): the first offset of every leader epoch in the log. It is
//!   written before any batch of a new epoch is appended, so it never lacks
//!   an epoch the log holds; OffsetForLeaderEpoch and the fetch-time
//!   divergence check answer from it.
//! - On the **leader**: each follower's log end (the offset of its last
//!   fetch: followers fetch again only once what they appended is durable)
//!   and when it was last caught up; the **high watermark** is the smallest
//!   log end over the ISR (and any member being added), never moving back.
//!   Consumers see nothing past it; acks=all answers once a batch is below it.
//! - On a **follower**: the high watermark the leader last reported, capped
//!   by its own log end.
//!
//! The high watermark is checkpointed (`high-watermark` file) by the
//! maintenance task: after a restart a replica starts from the checkpoint,
//! never from its log end (a tail no ISR member confirmed must not become
//! visible just because this replica restarted).

use crate::mesh::FetchOutcome;
use crate::partition::{log_error_code, Partition};
use sluice_protocol::api::error_code;
use sluice_protocol::record_batch::BatchHeader;
use sluice_storage::event::Event;
use sluice_storage::io::StorageDir;
use sluice_storage::LogError;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const EPOCHS_FILE: &str = "leader-epochs";
pub const HIGH_WATERMARK_FILE: &str = "high-watermark";

/// Leader epochs and the offset each started at, ascending in both.
#[derive(Debug, Clone)]
pub struct EpochCache {
    path: PathBuf,
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    /// Loads the cache of a log ending at `log_end`: entries starting at or
    /// past the end (their batches were lost in a crash) are dropped.
    pub fn load(dir: &Path, log_end: i64) -> EpochCache {
        let path = dir.join(EPOCHS_FILE);
        let entries = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (epoch, start) = line.split_once(' ')?;
                Some((epoch.parse().ok()?, start.parse().ok()?))
            })
            .collect();
        let mut cache = EpochCache { path, entries };
        cache.truncate_from_end(log_end);
        cache
    }

    pub fn latest_epoch(&self) -> i32 {
        self.entries.last().map_or(-1, |e| e.0)
    }

    /// The first offset of `epoch`, if the log has it.
    pub fn start_of(&self, epoch: i32) -> Option<i64> {
        self.entries.iter().find(|e| e.0 == epoch).map(|e| e.1)
    }

    /// Epoch `epoch` starts at `start`: entries of later offsets are
    /// superseded (Kafka's `assign`). An epoch the cache already ends with
    /// keeps its start (a leader re-opened at the same epoch after a restart).
    pub fn assign(&mut self, epoch: i32, start: i64) {
        if epoch <= self.latest_epoch() {
            return;
        }
        self.entries.retain(|e| e.0 < epoch && e.1 < start);
        self.entries.push((epoch, start));
        self.persist();
    }

    /// Kafka's `endOffsetFor`: the largest epoch ≤ `requested` this log has,
    /// and the offset where the epoch after it starts (`log_end` for the
    /// latest); (-1, -1) when `requested` is past every epoch known or
    /// undefined.
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        if requested < 0 {
            return (-1, -1);
        }
        if requested == self.latest_epoch() {
            return (requested, log_end);
        }
        let Some(higher) = self.entries.iter().position(|e| e.0 > requested) else {
            return (-1, -1);
        };
        let end = self.entries[higher].1;
        match higher.checked_sub(1) {
            Some(floor) => (self.entries[floor].0, end),
            None => (requested, end),
        }
    }

    /// The log was cut at `end`: epochs starting there or later are gone.
    pub fn truncate_from_end(&mut self, end: i64) {
        let before = self.entries.len();
        self.entries.retain(|e| e.1 < end);
        if self.entries.len() != before {
            self.persist();
        }
    }

    /// Written whole (temp file, fsync, rename): rare, at epoch changes.
    fn persist(&self) {
        let text: String = self
            .entries
            .iter()
            .map(|(epoch, start)| format!("{epoch} {start}\n"))
            .collect();
        if let Err(e) = crate::storage_dir::write_durably(&self.path, text.as_bytes()) {
            tracing::error!(path = %self.path.display(), error = %e, "writing the leader epoch cache failed");
        }
    }
}

/// The last high watermark checkpointed in `dir` (0 without one).
pub fn load_high_watermark(dir: &Path) -> i64 {
    std::fs::read_to_string(dir.join(HIGH_WATERMARK_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// A follower as its leader sees it.
#[derive(Debug, Clone, Copy)]
pub struct FollowerProgress {
    /// Its log end (the offset of its last fetch); -1 before its first fetch
    /// in this leader epoch.
    pub log_end: i64,
    /// The last time its log end reached the leader's.
    pub caught_up_at: Instant,
    pub last_fetch_at: Instant,
    /// The leader's log end when it last fetched.
    pub leader_end_at_last_fetch: i64,
}

/// This replica's part in the partition's replication, from the metadata.
pub struct ReplicaState {
    pub node_id: i32,
    pub leader: Cell<i32>,
    pub leader_epoch: Cell<i32>,
    /// The partition epoch of the metadata last applied (ISR proposals name it).
    pub partition_epoch: Cell<i32>,
    /// The pending ISR proposal's outcome is unknown (the controller did not
    /// answer): it is sent again, still against the same partition epoch.
    pub resend_isr: Cell<bool>,
    pub replicas: RefCell<Vec<i32>>,
    /// As committed in the metadata log.
    pub isr: RefCell<Vec<i32>>,
    /// An ISR change proposed by this leader and not applied yet; while it is
    /// pending, its members count for the high watermark too.
    pub proposed_isr: RefCell<Option<Vec<i32>>>,
    high_watermark: Cell<i64>,
    pub followers: RefCell<BTreeMap<i32, FollowerProgress>>,
    /// Notified when the high watermark moves or leadership changes
    /// (acks=all produces wait on it).
    pub changed: Event,
    pub epochs: RefCell<EpochCache>,
    /// The high watermark written to the checkpoint file last.
    pub checkpointed: Cell<i64>,
}

impl ReplicaState {
    /// A replica that leads itself alone (until the metadata says otherwise).
    pub fn new(node_id: i32, dir: &Path, log_end: i64) -> ReplicaState {
        let checkpoint = load_high_watermark(dir).min(log_end);
        ReplicaState {
            node_id,
            leader: Cell::new(node_id),
            leader_epoch: Cell::new(-1),
            partition_epoch: Cell::new(-1),
            resend_isr: Cell::new(false),
            replicas: RefCell::new(vec![node_id]),
            isr: RefCell::new(vec![node_id]),
            proposed_isr: RefCell::new(None),
            high_watermark: Cell::new(checkpoint),
            followers: RefCell::new(BTreeMap::new()),
            changed: Event::default(),
            epochs: RefCell::new(EpochCache::load(dir, log_end)),
            checkpointed: Cell::new(checkpoint),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.get() == self.node_id
    }

    fn single(&self) -> bool {
        self.replicas.borrow().len() <= 1
    }
}

/// What a metadata change did to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    BecameLeader,
    /// Follows `leader` (a new one, or a new epoch of the same).
    BecameFollower {
        leader: i32,
        epoch: i32,
    },
    /// No live leader: nothing to follow.
    Leaderless,
}

/// What a follower's fetch told the leader.
pub struct ReplicaFetch {
    pub outcome: FetchOutcome,
    /// (epoch, end offset) the follower diverged at: it truncates, then fetches.
    pub diverging: Option<(i32, i64)>,
    /// The follower caught up: the ISR to propose.
    pub expand_isr: Option<Vec<i32>>,
}

impl<D: StorageDir + 'static> Partition<D> {
    /// What consumers may read up to. A partition with one replica has its
    /// log's durable end as high watermark.
    pub fn high_watermark(&self) -> i64 {
        if self.replica.single() {
            self.log.high_watermark()
        } else {
            self.replica.high_watermark.get()
        }
    }

    /// Applies the partition's state from the metadata log.
    pub fn apply_replica_state(
        &self,
        leader: i32,
        epoch: i32,
        partition_epoch: i32,
        replicas: &[i32],
        isr: &[i32],
    ) -> Transition {
        let r = &self.replica;
        let was_leader = r.is_leader();
        let epoch_changed = epoch != r.leader_epoch.get() || leader != r.leader.get();
        *r.replicas.borrow_mut() = replicas.to_vec();
        let isr_changed = *r.isr.borrow() != isr;
        *r.isr.borrow_mut() = isr.to_vec();
        if epoch_changed || partition_epoch != r.partition_epoch.get() {
            // A pending proposal was applied, or can no longer apply (it
            // named the older partition epoch): either way it is decided.
            *r.proposed_isr.borrow_mut() = None;
            r.resend_isr.set(false);
        }
        r.partition_epoch.set(partition_epoch);
        if epoch_changed {
            r.leader.set(leader);
            r.leader_epoch.set(epoch);
        }
        // Batches still being appended (a follower's last fetch) count: the
        // new epoch starts after them.
        let log_end = self.log.log_end_offset();
        let transition = if !epoch_changed {
            Transition::Unchanged
        } else if leader == r.node_id {
            // Kafka: a new leader's epoch starts at its log end; every
            // follower counts as caught up now and reports its end at its
            // next fetch.
            r.epochs.borrow_mut().assign(epoch, log_end);
            let now = Instant::now();
            *r.followers.borrow_mut() = replicas
                .iter()
                .filter(|n| **n != r.node_id)
                .map(|n| {
                    (
                        *n,
                        FollowerProgress {
                            log_end: -1,
                            caught_up_at: now,
                            last_fetch_at: now,
                            leader_end_at_last_fetch: log_end,
                        },
                    )
                })
                .collect();
            Transition::BecameLeader
        } else {
            r.followers.borrow_mut().clear();
            if leader < 0 {
                Transition::Leaderless
            } else {
                Transition::BecameFollower { leader, epoch }
            }
        };
        if was_leader || isr_changed || epoch_changed {
            self.update_high_watermark();
            r.changed.notify();
        }
        transition
    }

    /// Leader: recomputes the high watermark from the ISR's log ends (with
    /// members being added). True if it moved.
    pub fn update_high_watermark(&self) -> bool {
        let r = &self.replica;
        if r.single() || !r.is_leader() {
            return false;
        }
        let own = self.log.high_watermark();
        let followers = r.followers.borrow();
        let isr = r.isr.borrow();
        let proposed = r.proposed_isr.borrow();
        let members = isr.iter().chain(proposed.iter().flatten());
        let mut lowest = own;
        for member in members {
            if *member == r.node_id {
                continue;
            }
            let end = followers.get(member).map_or(-1, |f| f.log_end);
            lowest = lowest.min(end);
        }
        if lowest > r.high_watermark.get() {
            r.high_watermark.set(lowest);
            r.changed.notify();
            return true;
        }
        false
    }

    /// Leader: waits until the high watermark reaches `target` (every
    /// in-sync replica has the offsets below it). Err(NOT_LEADER_OR_FOLLOWER)
    /// if leadership moved away from `epoch` first, Err(REQUEST_TIMED_OUT)
    /// after `timeout`.
    pub async fn wait_replicated(
        &self,
        target: i64,
        epoch: i32,
        timeout: std::time::Duration,
    ) -> Result<(), i16> {
        let r = &self.replica;
        let deadline = Instant::now() + timeout;
        loop {
            let changed = r.changed.listen();
            if !r.is_leader() || r.leader_epoch.get() != epoch {
                return Err(error_code::NOT_LEADER_OR_FOLLOWER);
            }
            if self.high_watermark() >= target {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(error_code::REQUEST_TIMED_OUT);
            }
            futures_lite::future::or(changed, glommio::timer::sleep(deadline - now)).await;
        }
    }

    /// The leader epoch check of a request carrying the client's view of it
    /// (-1: none): NONE, FENCED_LEADER_EPOCH (the client's is older) or
    /// UNKNOWN_LEADER_EPOCH (newer than this replica knows yet).
    pub fn check_leader_epoch(&self, current_leader_epoch: i32) -> i16 {
        let ours = self.replica.leader_epoch.get();
        if current_leader_epoch < 0 || current_leader_epoch == ours {
            error_code::NONE
        } else if current_leader_epoch < ours {
            error_code::FENCED_LEADER_EPOCH
        } else {
            error_code::UNKNOWN_LEADER_EPOCH
        }
    }

    /// Leader: a follower fetches from `offset` having last appended a batch
    /// of `last_fetched_epoch`. Records its progress, moves the high
    /// watermark, and returns what it may append (up to the durable end, not
    /// just the high watermark), or where it diverged.
    pub async fn replica_fetch(
        &self,
        replica: i32,
        offset: i64,
        last_fetched_epoch: i32,
        current_leader_epoch: i32,
        max_bytes: usize,
    ) -> ReplicaFetch {
        let r = &self.replica;
        let refuse = |code: i16| ReplicaFetch {
            outcome: FetchOutcome {
                error_code: code,
                high_watermark: self.high_watermark(),
                log_start_offset: self.log.log_start_offset(),
                ..Default::default()
            },
            diverging: None,
            expand_isr: None,
        };
        if !r.is_leader() || !r.replicas.borrow().contains(&replica) {
            return refuse(error_code::NOT_LEADER_OR_FOLLOWER);
        }
        let code = self.check_leader_epoch(current_leader_epoch);
        if code != error_code::NONE {
            return refuse(code);
        }
        let log_end = self.log.high_watermark();
        let diverged = if last_fetched_epoch >= 0 {
            let (epoch, end) = r
                .epochs
                .borrow()
                .end_offset_for(last_fetched_epoch, log_end);
            (epoch != last_fetched_epoch || end < offset).then_some((epoch, end))
        } else if offset > log_end {
            Some((r.epochs.borrow().latest_epoch(), log_end))
        } else {
            None
        };
        if let Some(point) = diverged {
            let mut answer = refuse(error_code::NONE);
            answer.diverging = Some(point);
            return answer;
        }
        if offset < self.log.log_start_offset() {
            return refuse(error_code::OFFSET_OUT_OF_RANGE);
        }
        let now = Instant::now();
        if let Some(progress) = r.followers.borrow_mut().get_mut(&replica) {
            if offset >= log_end {
                progress.caught_up_at = now;
            } else if offset >= progress.leader_end_at_last_fetch {
                progress.caught_up_at = progress.last_fetch_at;
            }
            progress.log_end = offset;
            progress.last_fetch_at = now;
            progress.leader_end_at_last_fetch = log_end;
        }
        self.update_high_watermark();
        let expand_isr = self.isr_with(replica, offset);
        let outcome = match self.log.read(offset, max_bytes.max(1)).await {
            Ok(read) => FetchOutcome {
                error_code: error_code::NONE,
                high_watermark: self.high_watermark(),
                log_start_offset: read.log_start_offset,
                records: read.records,
                oversized: false,
                diverging: None,
            },
            Err(e) => FetchOutcome {
                error_code: log_error_code(&e),
                high_watermark: self.high_watermark(),
                log_start_offset: self.log.log_start_offset(),
                ..Default::default()
            },
        };
        ReplicaFetch {
            outcome,
            diverging: None,
            expand_isr,
        }
    }

    /// The ISR with `replica` added, if it just caught up (its log end
    /// reached the high watermark and this leader's epoch) and no change is
    /// pending.
    fn isr_with(&self, replica: i32, log_end: i64) -> Option<Vec<i32>> {
        let r = &self.replica;
        if r.isr.borrow().contains(&replica) || r.proposed_isr.borrow().is_some() {
            return None;
        }
        let epoch_start = r
            .epochs
            .borrow()
            .start_of(r.leader_epoch.get())
            .unwrap_or(0);
        if log_end < self.high_watermark() || log_end < epoch_start {
            return None;
        }
        let mut isr = r.isr.borrow().clone();
        isr.push(replica);
        *r.proposed_isr.borrow_mut() = Some(isr.clone());
        Some(isr)
    }

    /// Leader: the ISR without the followers not caught up for `lag_max`,
    /// if any fell behind and no change is pending.
    pub fn isr_without_laggards(&self, lag_max: std::time::Duration) -> Option<Vec<i32>> {
        let r = &self.replica;
        if !r.is_leader() || r.single() || r.proposed_isr.borrow().is_some() {
            return None;
        }
        let now = Instant::now();
        let followers = r.followers.borrow();
        let isr = r.isr.borrow().clone();
        let kept: Vec<i32> = isr
            .iter()
            .copied()
            .filter(|n| {
                *n == r.node_id
                    || followers
                        .get(n)
                        .is_some_and(|f| now.duration_since(f.caught_up_at) <= lag_max)
            })
            .collect();
        if kept.len() == isr.len() {
            return None;
        }
        *r.proposed_isr.borrow_mut() = Some(kept.clone());
        Some(kept)
    }

    /// An ISR proposal was refused: it is no longer pending.
    pub fn isr_proposal_refused(&self, proposed: &[i32]) {
        let mut pending = self.replica.proposed_isr.borrow_mut();
        if pending.as_deref() == Some(proposed) {
            *pending = None;
            self.replica.resend_isr.set(false);
        }
    }

    /// The pending ISR proposal to send again (its outcome was unknown).
    pub fn isr_to_resend(&self) -> Option<Vec<i32>> {
        let r = &self.replica;
        if !r.is_leader() || !r.resend_isr.replace(false) {
            return None;
        }
        r.proposed_isr.borrow().clone()
    }

    /// Follower: appends batches fetched from the leader (as the leader
    /// stored them), waits until they are durable, and takes the leader's
    /// high watermark as far as this log reaches.
    pub async fn append_replicated(
        &self,
        records: &bytes::Bytes,
        leader_high_watermark: i64,
    ) -> Result<(), LogError> {
        let mut appends = Vec::new();
        let mut headers = Vec::new();
        let mut at = 0;
        while at < records.len() {
            let header = match BatchHeader::parse(&records[at..]) {
                Ok(h) if at + h.total_bytes() <= records.len() => h,
                // A fetch may end in a partial batch: the rest comes next time.
                _ => break,
            };
            let batch = records.slice(at..at + header.total_bytes());
            at += header.total_bytes();
            if header.last_offset() < self.log.high_watermark() {
                continue; // already here (a retried fetch)
            }
            if header.partition_leader_epoch > self.replica.epochs.borrow().latest_epoch() {
                self.replica
                    .epochs
                    .borrow_mut()
                    .assign(header.partition_leader_epoch, header.base_offset);
            }
            let log = self.log.clone();
            // Each append stages its batch when first polled: in order.
            appends.push(async move { log.append_replica(&batch).await });
            headers.push(header);
        }
        let results = sluice_storage::event::join_all(appends).await;
        for (header, result) in headers.iter().zip(results) {
            result?;
            self.producers.observe_stored(header);
        }
        self.follower_high_watermark(leader_high_watermark);
        Ok(())
    }

    /// Follower: the leader's high watermark, as far as this log reaches.
    pub fn follower_high_watermark(&self, leader_high_watermark: i64) {
        let r = &self.replica;
        let hw = leader_high_watermark.min(self.log.high_watermark());
        if hw > r.high_watermark.get() {
            r.high_watermark.set(hw);
            r.changed.notify();
        }
    }

    /// Follower: where to cut the log given that the leader's log has epoch
    /// `epoch` (its largest ≤ what was asked) up to `end` (Kafka's KIP-279
    /// rule: the smaller of the leader's end for that epoch and ours). An
    /// undefined answer (-1) cuts to the high watermark.
    pub fn divergence_point(&self, epoch: i32, end: i64) -> i64 {
        let log_end = self.log.high_watermark();
        if epoch < 0 || end < 0 {
            return self.replica.high_watermark.get().min(log_end);
        }
        let (ours, our_end) = self.replica.epochs.borrow().end_offset_for(epoch, log_end);
        if ours < 0 {
            return end.min(log_end);
        }
        end.min(our_end).min(log_end)
    }

    /// True while this replica follows at leader epoch `epoch`: a
    /// follower's step decided before an await must not run once it leads.
    pub fn follows_at(&self, epoch: i32) -> bool {
        !self.replica.is_leader() && self.replica.leader_epoch.get() == epoch
    }

    /// Follower at `epoch`: cuts the log at `offset` (a batch boundary at or
    /// below it), with the epoch cache, the high watermark and the producer
    /// state. Does nothing once the replica no longer follows at `epoch`.
    pub async fn truncate(&self, offset: i64, epoch: i32) -> Result<(), LogError> {
        if offset >= self.log.high_watermark() {
            return Ok(());
        }
        self.cut(
            epoch,
            false,
            |log| async move { log.truncate_to(offset).await },
        )
        .await
    }

    /// Follower at `epoch`: starts the log over at the leader's log start
    /// (it lies past this log's end), with an empty epoch cache.
    pub async fn restart_at(&self, offset: i64, epoch: i32) -> Result<(), LogError> {
        self.cut(epoch, true, |log| async move { log.reset_to(offset).await })
            .await
    }

    async fn cut<F, Fut>(&self, epoch: i32, restart: bool, how: F) -> Result<(), LogError>
    where
        F: Fn(std::rc::Rc<sluice_storage::PartitionLog<D>>) -> Fut,
        Fut: std::future::Future<Output = Result<(), LogError>>,
    {
        loop {
            if !self.follows_at(epoch) {
                return Ok(());
            }
            match how(self.log.clone()).await {
                Err(LogError::Busy) => {
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        let end = self.log.high_watermark();
        // A log started over keeps no epoch from before its new start.
        let kept_below = if restart { i64::MIN } else { end };
        self.replica
            .epochs
            .borrow_mut()
            .truncate_from_end(kept_below);
        let r = &self.replica;
        if r.high_watermark.get() > end {
            r.high_watermark.set(end);
        }
        // Producer state: rebuilt from the log as it now is.
        let snapshot = self.dir.join(crate::producers::SNAPSHOT_FILE);
        let _ = std::fs::remove_file(&snapshot);
        self.producers_snapshot_at.set(-1);
        self.producers.clear();
        crate::partition::rebuild_producers(&self.log, &self.producers, &snapshot)
            .await
            .map_err(|e| LogError::io(std::io::Error::other(e)))?;
        Ok(())
    }

    /// OffsetForLeaderEpoch: (error, epoch, end offset) for `requested`.
    pub fn offset_for_leader_epoch(
        &self,
        current_leader_epoch: i32,
        requested: i32,
    ) -> (i16, i32, i64) {
        if !self.replica.is_leader() {
            return (error_code::NOT_LEADER_OR_FOLLOWER, -1, -1);
        }
        let code = self.check_leader_epoch(current_leader_epoch);
        if code != error_code::NONE {
            return (code, -1, -1);
        }
        let (epoch, end) = self
            .replica
            .epochs
            .borrow()
            .end_offset_for(requested, self.log.high_watermark());
        (error_code::NONE, epoch, end)
    }

    /// The high watermark to checkpoint, if it moved since the last one.
    pub fn prepare_high_watermark_checkpoint(&self) -> Option<(PathBuf, i64)> {
        let hw = self.high_watermark();
        if self.replica.single() || self.replica.checkpointed.get() == hw {
            return None;
        }
        self.replica.checkpointed.set(hw);
        Some((self.dir.join(HIGH_WATERMARK_FILE), hw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_cache_answers_like_kafka() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = EpochCache::load(dir.path(), 0);
        assert_eq!(cache.end_offset_for(0, 0), (-1, -1));
        cache.assign(0, 0);
        cache.assign(2, 10);
        cache.assign(5, 30);
        let end = 42;
        assert_eq!(cache.end_offset_for(5, end), (5, 42));
        assert_eq!(cache.end_offset_for(2, end), (2, 30));
        // Epochs this log never had: the largest below, ending where the next starts.
        assert_eq!(cache.end_offset_for(3, end), (2, 30));
        assert_eq!(cache.end_offset_for(1, end), (0, 10));
        // Past every epoch known: undefined.
        assert_eq!(cache.end_offset_for(6, end), (-1, -1));
        // Survives a reload; entries past the log end are dropped.
        let reloaded = EpochCache::load(dir.path(), 30);
        assert_eq!(reloaded.entries, vec![(0, 0), (2, 10)]);
        // The same epoch again (a restarted leader) keeps its start.
        cache.assign(5, 42);
        assert_eq!(cache.entries, vec![(0, 0), (2, 10), (5, 30)]);
        // A new epoch at an offset an older entry starts at supersedes it.
        cache.assign(6, 30);
        assert_eq!(cache.entries, vec![(0, 0), (2, 10), (6, 30)]);
        cache.truncate_from_end(10);
        assert_eq!(cache.entries, vec![(0, 0)]);
    }
}
