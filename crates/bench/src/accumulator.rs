//! A producer's open batches, one per partition, like a Kafka producer's
//! record accumulator: a batch is sealed when the next message would not fit
//! in `batch_bytes`, when its first message is `linger` old, or when all open
//! batches together pass the buffer cap (oldest first).

use crate::records::BatchBuilder;
use sluice_protocol::record_batch::HEADER_BYTES;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A batch being filled.
pub struct Open {
    pub builder: BatchBuilder,
    /// When each message was added (publish latency runs from here).
    pub sent_at: Vec<Instant>,
    pub opened: Instant,
    pub last_timestamp_ms: i64,
    id: u64,
}

pub struct Accumulator {
    open: Vec<Option<Open>>,
    /// Open batches in the order they were opened, by (partition, batch id);
    /// entries of batches sealed since (by size) are skipped when met.
    order: VecDeque<(usize, u64)>,
    next_id: u64,
    /// Records-section bytes of all open batches.
    bytes: usize,
    /// A batch whose section reaches this is full: the next record could
    /// push the whole batch (header included) over `batch_bytes`.
    full_at: usize,
    buffer_max: usize,
    linger: Duration,
}

impl Accumulator {
    /// `record_bytes_max`: the most one record can take in a section.
    pub fn new(
        partitions: usize,
        batch_bytes: usize,
        record_bytes_max: usize,
        linger: Duration,
    ) -> Accumulator {
        Accumulator {
            open: (0..partitions).map(|_| None).collect(),
            order: VecDeque::new(),
            next_id: 0,
            bytes: 0,
            full_at: batch_bytes
                .saturating_sub(HEADER_BYTES + record_bytes_max)
                .max(1),
            buffer_max: (4 * batch_bytes).max(1 << 20),
            linger,
        }
    }

    /// Messages a batch holds when sealed by size (at least 1).
    pub fn messages_per_batch(&self, record_bytes: usize) -> usize {
        (self.full_at.div_ceil(record_bytes.max(1))).max(1)
    }

    /// Adds a message; returns its batch if that is now full.
    pub fn push(
        &mut self,
        partition: usize,
        now: Instant,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Option<Open> {
        let slot = match &mut self.open[partition] {
            Some(slot) => slot,
            empty => {
                let id = self.next_id;
                self.next_id += 1;
                self.order.push_back((partition, id));
                empty.insert(Open {
                    builder: BatchBuilder::with_capacity(self.full_at),
                    sent_at: Vec::new(),
                    opened: now,
                    last_timestamp_ms: timestamp_ms,
                    id,
                })
            }
        };
        let before = slot.builder.bytes();
        slot.builder.push(timestamp_ms, key, value);
        slot.sent_at.push(now);
        slot.last_timestamp_ms = timestamp_ms;
        let after = slot.builder.bytes();
        self.bytes += after - before;
        if after >= self.full_at {
            self.bytes -= after;
            return self.open[partition].take();
        }
        None
    }

    /// The oldest open batch that must go now: its linger has passed, the
    /// buffer is over its cap, or `all` (stopping).
    pub fn pop_due(&mut self, now: Instant, all: bool) -> Option<(usize, Open)> {
        let (partition, opened) = self.oldest()?;
        let due = all
            || now.saturating_duration_since(opened) >= self.linger
            || self.bytes > self.buffer_max;
        if !due {
            return None;
        }
        self.order.pop_front();
        let batch = self.open[partition].take().expect("oldest() checked it");
        self.bytes -= batch.builder.bytes();
        Some((partition, batch))
    }

    /// When the oldest open batch lingers out.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.oldest().map(|(_, opened)| opened + self.linger)
    }

    pub fn is_empty(&mut self) -> bool {
        self.oldest().is_none()
    }

    /// The oldest live batch, dropping entries of batches already sealed.
    fn oldest(&mut self) -> Option<(usize, Instant)> {
        while let Some(&(partition, id)) = self.order.front() {
            match &self.open[partition] {
                Some(open) if open.id == id => return Some((partition, open.opened)),
                _ => {
                    self.order.pop_front();
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_batch_is_sealed_before_it_would_pass_batch_bytes() {
        // 100-byte values take 106 bytes as records; 1000-byte batches.
        let mut acc = Accumulator::new(1, 1000, 106, MS);
        let t = Instant::now();
        let mut sealed = None;
        let mut pushed = 0;
        while sealed.is_none() {
            sealed = acc.push(0, t, 0, None, &[7u8; 100]);
            pushed += 1;
        }
        let batch = sealed.unwrap();
        assert_eq!(batch.sent_at.len(), pushed);
        let mut wire = Vec::new();
        let mut builder = batch.builder;
        builder
            .finish_into(&mut wire, crate::workload::Compression::None, 0)
            .unwrap();
        assert!(wire.len() <= 1000, "{} bytes", wire.len());
        assert!(
            wire.len() + 106 > 1000,
            "room for one more: {} bytes",
            wire.len()
        );
        assert_eq!(acc.messages_per_batch(106), pushed);
        assert!(acc.is_empty());
    }

    #[test]
    fn linger_seals_the_oldest_first_even_after_size_seals() {
        let mut acc = Accumulator::new(2, 1000, 106, MS);
        let t0 = Instant::now();
        // Partition 0 opens first, fills and is sealed by size, then reopens later.
        acc.push(0, t0, 0, None, &[1u8; 100]);
        acc.push(1, t0 + MS / 2, 0, None, &[1u8; 100]);
        let mut sealed = None;
        while sealed.is_none() {
            sealed = acc.push(0, t0 + MS / 2, 0, None, &[1u8; 100]);
        }
        acc.push(0, t0 + 2 * MS, 0, None, &[1u8; 100]);
        // Partition 1's batch (opened at 0.5 ms) is the oldest live one.
        assert_eq!(acc.next_deadline(), Some(t0 + MS / 2 + MS));
        assert!(acc.pop_due(t0 + MS, false).is_none());
        let (partition, batch) = acc.pop_due(t0 + 2 * MS, false).unwrap();
        assert_eq!((partition, batch.sent_at.len()), (1, 1));
        assert!(
            acc.pop_due(t0 + 2 * MS, false).is_none(),
            "partition 0's new batch is young"
        );
        let (partition, _) = acc.pop_due(t0 + 2 * MS, true).unwrap();
        assert_eq!(partition, 0);
        assert!(acc.is_empty());
        assert_eq!(acc.next_deadline(), None);
    }

    #[test]
    fn over_the_buffer_cap_the_oldest_goes_without_waiting() {
        // Cap = max(4 × 4000, 1 MiB) = 1 MiB; 600 partitions × ~2 KB passes it.
        let mut acc = Accumulator::new(600, 4000, 1031, Duration::from_secs(60));
        let t = Instant::now();
        for p in 0..600 {
            for _ in 0..2 {
                assert!(acc.push(p, t, 0, None, &[0u8; 1024]).is_none());
            }
        }
        assert!(acc.bytes > acc.buffer_max);
        let (first, _) = acc.pop_due(t, false).unwrap();
        assert_eq!(first, 0);
        let mut popped = 1;
        while acc.pop_due(t, false).is_some() {
            popped += 1;
        }
        assert!(
            acc.bytes <= acc.buffer_max && popped < 600,
            "popped {popped}"
        );
    }
}
