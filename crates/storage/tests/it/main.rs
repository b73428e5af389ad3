//! Storage tests: one binary (compiled once), run inside glommio executors.

mod compaction;
mod dma;
mod faults;
mod model;

use glommio::{LocalExecutorBuilder, Placement};
use sluice_protocol::record_batch::{build_batch, validate_batch, BatchHeader};
use sluice_storage::{FlushPolicy, LogConfig};
use std::future::Future;

/// Runs `body` on a fresh single-core executor, as a shard would.
pub fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 << 10)
        .spawn(body)
        .expect("executor starts")
        .join()
        .expect("test body finished");
}

/// Small segments so tests roll often.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        segment_ms: None,
        index_interval_bytes: 1024,
        retention_bytes: None,
        retention_ms: None,
        flush: FlushPolicy::Always,
        preallocate_bytes: 8 * 1024,
        write_buffer_bytes: 4096,
    }
}

/// A batch of `count` records of `value_bytes` each, values derived from `seed`.
pub fn batch(seed: u64, count: usize, value_bytes: usize, timestamp: i64) -> Vec<u8> {
    let values: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            (0..value_bytes)
                .map(|j| (seed as usize * 31 + i * 7 + j) as u8)
                .collect()
        })
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    build_batch(timestamp, &refs)
}

/// Splits concatenated batches into (header, bytes) pairs, checking each.
pub fn split_batches(bytes: &[u8]) -> Vec<(BatchHeader, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = BatchHeader::parse(&bytes[at..]).unwrap();
        let whole = &bytes[at..at + header.total_bytes()];
        validate_batch(whole).unwrap();
        out.push((header, whole.to_vec()));
        at += header.total_bytes();
    }
    out
}

/// The bytes a batch has once stored at `base_offset` (epoch 0).
pub fn stored_form(batch: &[u8], base_offset: i64) -> Vec<u8> {
    let mut stored = batch.to_vec();
    sluice_protocol::record_batch::set_base_offset(&mut stored, base_offset);
    sluice_protocol::record_batch::set_partition_leader_epoch(&mut stored, 0);
    stored
}
