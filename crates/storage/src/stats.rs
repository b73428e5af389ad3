//! Storage counters of this core: group-commit rounds, bytes written and
//! fdatasync latency. A core's logs all live on its thread, so the counters
//! are a thread-local (no atomics); the shard reads them when a scrape asks.

use std::cell::Cell;
use std::time::Duration;

/// Upper bounds (seconds) of the fdatasync latency histogram buckets.
pub const SYNC_BUCKETS_S: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StorageStats {
    /// Flush rounds (one group commit each) and segment bytes they wrote
    /// (whole pages: a partial last page is written again by the next round).
    pub flush_rounds: u64,
    pub written_bytes: u64,
    /// fdatasync latency: per-bucket counts (the last is +Inf), sum, count.
    pub sync_buckets: [u64; SYNC_BUCKETS_S.len() + 1],
    pub sync_sum_s: f64,
    pub syncs: u64,
}

thread_local! {
    static STATS: Cell<StorageStats> = Cell::new(StorageStats::default());
}

fn update(f: impl FnOnce(&mut StorageStats)) {
    STATS.with(|stats| {
        let mut current = stats.get();
        f(&mut current);
        stats.set(current);
    });
}

pub(crate) fn record_round() {
    update(|s| s.flush_rounds += 1);
}

pub(crate) fn record_written(bytes: u64) {
    update(|s| s.written_bytes += bytes);
}

pub(crate) fn record_sync(elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let bucket = SYNC_BUCKETS_S
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(SYNC_BUCKETS_S.len());
    update(|s| {
        s.sync_buckets[bucket] += 1;
        s.sync_sum_s += seconds;
        s.syncs += 1;
    });
}

/// This core's counters so far.
pub fn snapshot() -> StorageStats {
    STATS.with(|stats| stats.get())
}
