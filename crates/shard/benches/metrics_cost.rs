//! What the metrics counters cost on the hot path, per call: a request's
//! latency observation (with the two clock reads that time it), a produced
//! batch, a fetched batch. Prints nanoseconds per call; `scripts/bench-tuning.sh`
//! (ONLY=metrics) multiplies them by a run's request and batch counts to give
//! the share of the broker's CPU.
//!
//! cargo bench -p sluice-shard --bench metrics_cost

use bytes::Bytes;
use sluice_shard::metrics::ShardCounters;
use sluice_storage::Records;
use std::hint::black_box;
use std::time::{Duration, Instant};

const CALLS: u32 = 2_000_000;

/// A record batch header of `records` records in `len` bytes (magic 2).
fn batch(len: usize, records: i32) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    bytes[8..12].copy_from_slice(&((len - 12) as i32).to_be_bytes());
    bytes[16] = 2;
    bytes[57..61].copy_from_slice(&records.to_be_bytes());
    bytes
}

fn per_call(label: &str, mut f: impl FnMut(u32)) {
    for i in 0..CALLS / 10 {
        f(i); // warm up
    }
    let started = Instant::now();
    for i in 0..CALLS {
        f(i);
    }
    let ns = started.elapsed().as_nanos() as f64 / CALLS as f64;
    println!("{label:<58} {ns:>7.1} ns per call");
}

fn main() {
    let counters = ShardCounters::default();
    let topics: Vec<String> = (0..16).map(|i| format!("topic-{i}")).collect();
    let produced = batch(131_072, 120);
    let fetched = Records::from(Bytes::from(batch(131_072, 120)));
    per_call("request: two clock reads and a latency observation", |i| {
        let started = Instant::now();
        black_box(i);
        counters.request(0, 9, black_box(started.elapsed()));
    });
    per_call("request: the latency observation alone", |i| {
        counters.request(0, (i % 3) as i16 + 7, black_box(Duration::from_micros(800)));
    });
    per_call("produced batch (16 topics)", |i| {
        counters.produced(&topics[i as usize % 16], black_box(&produced));
    });
    per_call("fetched batch (16 topics)", |i| {
        counters.fetched(&topics[i as usize % 16], black_box(&fetched), false);
    });
}
