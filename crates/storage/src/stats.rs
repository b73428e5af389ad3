//! Storage counters of this core: group-commit rounds, bytes written and
//! fdatasync latency. A core's logs all live on its thread, so the counters
//! are a thread-local (no atomics); the shard reads them when a scrape asks.

use std::cell::Cell;
use std::time::Duration;

/// Upper bounds (seconds) of every latency histogram of the broker
/// (fdatasync here, requests in the shard's metrics).
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram: per-bucket counts (the last one is +Inf).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
    pub sum_s: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS_S
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.buckets[bucket] += 1;
        self.sum_s += seconds;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum_s += other.sum_s;
        self.count += other.count;
    }

    /// (upper bound, count) per bucket, +Inf last.
    pub fn bounds(&self) -> Vec<(f64, u64)> {
        LATENCY_BUCKETS_S
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StorageStats {
    /// Flush rounds (one group commit each) and segment bytes they wrote
    /// (whole pages: a partial last page is written again by the next round).
    pub flush_rounds: u64,
    pub written_bytes: u64,
    /// fdatasync latency of segment files.
    pub sync: Histogram,
    /// Write buffers handed to the disk and not yet back (a gauge).
    pub write_in_flight_bytes: u64,
    /// Write buffers kept for reuse (a gauge; see `io::dma`).
    pub pooled_buffer_bytes: u64,
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
    update(|s| s.sync.observe(elapsed));
}

/// Write buffers of `bytes` handed to the disk, counted until this is
/// dropped (also when the write's future is).
pub(crate) struct InFlight(u64);

impl InFlight {
    pub(crate) fn new(bytes: u64) -> InFlight {
        update(|s| s.write_in_flight_bytes += bytes);
        InFlight(bytes)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let bytes = self.0;
        update(|s| s.write_in_flight_bytes = s.write_in_flight_bytes.saturating_sub(bytes));
    }
}

/// This core's counters so far.
pub fn snapshot() -> StorageStats {
    let mut stats = STATS.with(|stats| stats.get());
    stats.pooled_buffer_bytes = crate::io::dma::pooled_bytes() as u64;
    stats
}
