//! What a shard counts for `/metrics`: plain cells bumped on the shard's own
//! thread (no shared atomics on the hot path), read only when a scrape asks
//! the shard for a `ShardSnapshot` (a message like any other). The broker's
//! exporter merges the shards' snapshots and writes the Prometheus format.

use sluice_protocol::record_batch::BatchHeader;
use sluice_storage::CacheStats;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

pub use sluice_storage::stats::Histogram;

/// Produced and fetched records of one topic.
#[derive(Debug, Clone, Copy, Default)]
pub struct TopicTraffic {
    pub bytes_in: u64,
    pub messages_in: u64,
    pub bytes_out: u64,
    pub messages_out: u64,
    /// Fetched by followers (replication), not consumers.
    pub bytes_replicated: u64,
}

/// The shard's counters.
#[derive(Default)]
pub struct ShardCounters {
    topics: RefCell<HashMap<String, TopicTraffic>>,
    /// By (api key, api version).
    requests: RefCell<HashMap<(i16, i16), Histogram>>,
    /// Error answers, by (api key, Kafka error code).
    errors: RefCell<HashMap<(i16, i16), u64>>,
    pub connections_open: Cell<u64>,
    pub connections_accepted: Cell<u64>,
    /// ISR changes this shard proposed as a leader.
    pub isr_shrinks: Cell<u64>,
    pub isr_expands: Cell<u64>,
}

impl ShardCounters {
    pub fn request(&self, api_key: i16, api_version: i16, elapsed: Duration) {
        self.requests
            .borrow_mut()
            .entry((api_key, api_version))
            .or_default()
            .observe(elapsed);
    }

    /// An answer carrying `code` (not NONE: `Shard::error_answer` filters).
    pub fn error(&self, api_key: i16, code: i16) {
        *self.errors.borrow_mut().entry((api_key, code)).or_default() += 1;
    }

    /// A batch stored for `topic`.
    pub fn produced(&self, topic: &str, batch: &[u8]) {
        let messages = BatchHeader::parse(batch).map_or(0, |h| h.records_count.max(0) as u64);
        let mut topics = self.topics.borrow_mut();
        let traffic = traffic_of(&mut topics, topic);
        traffic.bytes_in += batch.len() as u64;
        traffic.messages_in += messages;
    }

    /// Batches sent for `topic` in a fetch response.
    pub fn fetched(&self, topic: &str, records: &sluice_storage::Records, replica: bool) {
        if records.is_empty() {
            return;
        }
        let mut topics = self.topics.borrow_mut();
        let traffic = traffic_of(&mut topics, topic);
        if replica {
            traffic.bytes_replicated += records.len() as u64;
        } else {
            traffic.bytes_out += records.len() as u64;
            traffic.messages_out += records
                .headers()
                .map(|h| h.records_count.max(0) as u64)
                .sum::<u64>();
        }
    }

    pub fn snapshot_into(&self, snapshot: &mut ShardSnapshot) {
        snapshot.topics = self
            .topics
            .borrow()
            .iter()
            .map(|(t, v)| (t.clone(), *v))
            .collect();
        snapshot.requests = self
            .requests
            .borrow()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        snapshot.errors = self.errors.borrow().iter().map(|(k, v)| (*k, *v)).collect();
        snapshot.isr_shrinks = self.isr_shrinks.get();
        snapshot.isr_expands = self.isr_expands.get();
        snapshot.connections_open = self.connections_open.get();
        snapshot.connections_accepted = self.connections_accepted.get();
    }
}

/// The topic's entry, allocating its name only the first time.
fn traffic_of<'a>(
    topics: &'a mut HashMap<String, TopicTraffic>,
    topic: &str,
) -> &'a mut TopicTraffic {
    if !topics.contains_key(topic) {
        topics.insert(topic.to_string(), TopicTraffic::default());
    }
    topics.get_mut(topic).expect("inserted")
}

/// One partition open on a shard, at scrape time.
#[derive(Debug, Clone, Default)]
pub struct PartitionGauges {
    pub topic: String,
    pub partition: i32,
    pub leader: bool,
    pub log_bytes: u64,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub replicas: usize,
    pub isr: usize,
}

/// A consumer group's committed offset of a partition, at scrape time.
#[derive(Debug, Clone, Default)]
pub struct CommittedGauge {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What one shard answers to a scrape.
#[derive(Debug, Clone, Default)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub topics: Vec<(String, TopicTraffic)>,
    pub requests: Vec<((i16, i16), Histogram)>,
    pub errors: Vec<((i16, i16), u64)>,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub isr_shrinks: u64,
    pub isr_expands: u64,
    /// The cluster's metadata leader as this node sees it (-1: unknown).
    pub controller_leader: i32,
    /// Record bytes appended but not yet written (the partitions' tails).
    pub write_pending_bytes: u64,
    /// Write buffers the partitions' tails hold (pending data and room).
    pub write_buffer_bytes: u64,
    pub cache: CacheStats,
    pub partitions: Vec<PartitionGauges>,
    pub committed: Vec<CommittedGauge>,
    /// Group commit and fdatasync figures of this core.
    pub storage: sluice_storage::stats::StorageStats,
    /// Request and response bytes held against the shard's memory budget.
    pub memory_held_bytes: u64,
    pub memory_budget_bytes: u64,
}
