//! A shard's background work on its partitions: retention, producer
//! snapshots, offset expiry, interval flushes, compaction, and closing
//! everything at shutdown.

use crate::shard::{PartitionEntry, Shard};
use crate::storage_dir::Log;
use std::rc::Rc;
use std::time::Duration;

/// Producer snapshots written per call to the blocking thread (and per hold of
/// `snapshot_lock`): other blocking work of the shard (truncating a finished
/// segment, creating a directory) and topic deletion wait at most this many.
const SNAPSHOTS_PER_BLOCKING_CALL: usize = 16;

impl Shard {
    /// One compaction pass over this shard's compacted logs, one log at a
    /// time (each run bounds its own memory), from the background task queue.
    pub async fn compact_logs(&self) {
        let entries: Vec<Rc<PartitionEntry>> = self
            .partitions
            .borrow()
            .values()
            .filter(|e| e.config.get().compact)
            .cloned()
            .collect();
        for entry in entries {
            if self.stopping.get() {
                return;
            }
            let config = entry.config.get();
            if !config.compact {
                continue;
            }
            let now = sluice_storage::now_ms() as i64;
            if let Err(e) = entry.log.compact(&config.compaction, now).await {
                tracing::error!(partition = entry.log.name(), error = %e, "compaction failed; the log is served as it was");
            }
        }
    }

    /// Expires group sessions (called often) .
    pub fn expire_group_sessions(&self) {
        if let Some(c) = self.coordinator.borrow().as_ref() {
            c.expire_sessions();
        }
    }

    /// Applies retention (and relaxed-flush syncs) on this shard's logs.
    pub async fn maintain(&self) {
        let coordinator = self.coordinator.borrow().clone();
        if let Some(c) = coordinator {
            c.expire_offsets(self.settings.offsets_retention_ms).await;
        }
        // Snapshot files are written with blocking fsyncs: on glommio's
        // blocking thread, a few at a time, so the shard keeps serving (500
        // partitions' snapshots took the shard away for up to a second). Each
        // chunk is prepared and written under the lock, from partitions still
        // open: none is being deleted meanwhile, and deletion waits one chunk.
        let listed = self.open_partitions();
        for chunk in listed.chunks(SNAPSHOTS_PER_BLOCKING_CALL) {
            let _permit = self.snapshot_lock.acquire_permit(1).await;
            let pending: Vec<(std::path::PathBuf, Vec<u8>)> = chunk
                .iter()
                .filter(|(key, entry)| {
                    self.partitions
                        .borrow()
                        .get(key)
                        .is_some_and(|open| Rc::ptr_eq(open, entry))
                })
                .filter_map(|(_, entry)| entry.prepare_producer_snapshot())
                .collect();
            if pending.is_empty() {
                continue;
            }
            glommio::executor()
                .spawn_blocking(move || {
                    for (dir, bytes) in pending {
                        crate::partition::write_producer_snapshot_file(&dir, &bytes);
                    }
                })
                .await;
        }
        let logs: Vec<Rc<Log>> = listed.iter().map(|(_, e)| e.log.clone()).collect();
        let now = sluice_storage::now_ms();
        for log in logs {
            if let Err(e) = log.enforce_retention(now).await {
                tracing::error!(partition = log.name(), error = %e, "retention failed");
            }
        }
        self.flush_due_logs().await;
    }

    /// Under `flush = unsafe_interval_ms=N`: syncs every log written since its
    /// last sync, if N ms have passed. Runs on its own N-ms timer, apart from
    /// [`Shard::maintain`], whose snapshot writes (blocking fsyncs) would
    /// otherwise stall the shard every N ms.
    pub async fn flush_due_logs(&self) {
        let logs: Vec<Rc<Log>> = self
            .partitions
            .borrow()
            .values()
            .map(|e| e.log.clone())
            .collect();
        for log in logs {
            if let Err(e) = log.flush_if_due().await {
                tracing::error!(partition = log.name(), error = %e, "flush failed");
            }
        }
    }

    /// Closes every log cleanly (flush, indexes, clean-shutdown marker).
    pub async fn close_all(&self) {
        self.closing.set(true);
        self.stop_fetchers();
        // Wait for any open in progress, so no log is opened behind our back.
        let _permit = self.open_lock.acquire_permit(1).await;
        drop(self.coordinator.borrow_mut().take());
        let entries: Vec<Rc<PartitionEntry>> = self
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, e)| e)
            .collect();
        for entry in entries {
            let _ = entry.log.flush().await;
            if let Some((dir, bytes)) = entry.prepare_producer_snapshot() {
                crate::partition::write_producer_snapshot_file(&dir, &bytes);
            }
            if let Err(e) = entry.log.close().await {
                tracing::error!(partition = entry.log.name(), error = %e, "closing partition failed");
            }
        }
    }

    /// Waits until no request is being handled on this shard, at most `limit`.
    pub async fn drain_requests(&self, limit: Duration) {
        let wait = async {
            while self.requests_in_flight.get() > 0 {
                self.requests_idle.listen().await;
            }
        };
        futures_lite::future::or(wait, glommio::timer::sleep(limit)).await;
    }
}
