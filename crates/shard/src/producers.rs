//! The idempotent producer: producer ids (InitProducerId) and, per partition,
//! the sequence ranges of each producer's last five batches, so a retried
//! batch is answered with its original offsets instead of being written twice.
//!
//! Producer ids come from shard 0, in blocks reserved durably in
//! `<data_dir>/producer_ids` before any id of the block is handed out, so an
//! id is never reused after a restart.
//!
//! Partition state is rebuilt on open from the log (batches carry producer id,
//! epoch and sequence), helped by a snapshot: `producers.snapshot` in the
//! partition directory, written at clean close and by the shard's maintenance
//! timer, records the state up to an offset, so recovery reads only the batches
//! after it. Without a usable snapshot, recovery reads the active segment; a
//! producer last seen before that is unknown and gets UNKNOWN_PRODUCER_ID,
//! which clients answer by re-initialising.
//!
//! Snapshot format (little-endian): `"SLPRODS1" | covered_offset i64 |
//! producer count u32 | per producer: id i64, epoch i16, batch count u8, per
//! batch: first_sequence i32, last_sequence i32, base_offset i64, last_offset
//! i64 | crc32 u32` (crc32fast of everything before it).

use sluice_protocol::record_batch::BatchHeader;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use sluice_protocol::api::error_code::{
    INVALID_PRODUCER_EPOCH, OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID,
};
/// Batches remembered per producer and partition (Kafka's max in-flight).
pub const BATCHES_REMEMBERED: usize = 5;
const ID_BLOCK: i64 = 1000;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default)]
struct Producer {
    epoch: i16,
    batches: VecDeque<SeqBatch>,
}

/// What to do with an idempotent batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Append,
    /// Already stored: answer with these offsets, write nothing.
    Duplicate(SeqBatch),
    Reject(i16),
}

#[derive(Default)]
pub struct PartitionProducers {
    producers: RefCell<HashMap<i64, Producer>>,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"SLPRODS1";
pub const SNAPSHOT_FILE: &str = "producers.snapshot";

/// Kafka's rule: sequences wrap from i32::MAX to 0.
fn increment_sequence(sequence: i32, by: i32) -> i32 {
    ((sequence as i64 + by as i64) % (i32::MAX as i64 + 1)) as i32
}

fn last_sequence(header: &BatchHeader) -> i32 {
    increment_sequence(header.base_sequence, header.last_offset_delta)
}

impl PartitionProducers {
    /// Checks an incoming batch; on `Append` the batch is recorded as pending
    /// (call `confirm` with its offset, or `forget` if the append failed).
    pub fn check(&self, header: &BatchHeader) -> SequenceCheck {
        if header.producer_id < 0 {
            return SequenceCheck::Append;
        }
        let mut producers = self.producers.borrow_mut();
        let first = header.base_sequence;
        let last = last_sequence(header);
        match producers.get_mut(&header.producer_id) {
            None => {
                if first != 0 {
                    return SequenceCheck::Reject(UNKNOWN_PRODUCER_ID);
                }
                producers.insert(
                    header.producer_id,
                    Producer {
                        epoch: header.producer_epoch,
                        batches: VecDeque::new(),
                    },
                );
            }
            Some(p) if header.producer_epoch < p.epoch => {
                return SequenceCheck::Reject(INVALID_PRODUCER_EPOCH)
            }
            Some(p) if header.producer_epoch > p.epoch => {
                if first != 0 {
                    return SequenceCheck::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER);
                }
                p.epoch = header.producer_epoch;
                p.batches.clear();
            }
            Some(p) => {
                if let Some(dup) = p
                    .batches
                    .iter()
                    .find(|b| b.first_sequence == first && b.last_sequence == last)
                {
                    return SequenceCheck::Duplicate(*dup);
                }
                let expected = p
                    .batches
                    .back()
                    .map_or(0, |b| increment_sequence(b.last_sequence, 1));
                if first != expected {
                    return SequenceCheck::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER);
                }
            }
        }
        let p = producers.get_mut(&header.producer_id).unwrap();
        p.batches.push_back(SeqBatch {
            first_sequence: first,
            last_sequence: last,
            base_offset: -1,
            last_offset: -1,
        });
        if p.batches.len() > BATCHES_REMEMBERED {
            p.batches.pop_front();
        }
        SequenceCheck::Append
    }

    /// The pending batch was stored at these offsets.
    pub fn confirm(&self, header: &BatchHeader, base_offset: i64, last_offset: i64) {
        if header.producer_id < 0 {
            return;
        }
        if let Some(p) = self.producers.borrow_mut().get_mut(&header.producer_id) {
            if let Some(b) = p
                .batches
                .iter_mut()
                .find(|b| b.first_sequence == header.base_sequence)
            {
                b.base_offset = base_offset;
                b.last_offset = last_offset;
            }
        }
    }

    /// The pending batch was not stored.
    pub fn forget(&self, header: &BatchHeader) {
        if header.producer_id < 0 {
            return;
        }
        if let Some(p) = self.producers.borrow_mut().get_mut(&header.producer_id) {
            p.batches
                .retain(|b| !(b.first_sequence == header.base_sequence && b.base_offset < 0));
        }
    }

    /// Rebuilds state from a stored batch (recovery).
    /// Forgets every producer (the log was cut: its state is rebuilt).
    pub fn clear(&self) {
        self.producers.borrow_mut().clear();
    }

    pub fn observe_stored(&self, header: &BatchHeader) {
        if header.producer_id < 0 {
            return;
        }
        let mut producers = self.producers.borrow_mut();
        let p = producers.entry(header.producer_id).or_default();
        if header.producer_epoch > p.epoch {
            p.epoch = header.producer_epoch;
            p.batches.clear();
        }
        p.batches.push_back(SeqBatch {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        });
        if p.batches.len() > BATCHES_REMEMBERED {
            p.batches.pop_front();
        }
    }
}

impl PartitionProducers {
    /// The state encoded, or `None` while an append is unconfirmed (its batch
    /// may already be below `covered_offset`).
    pub fn encode_snapshot(&self, covered_offset: i64) -> Option<Vec<u8>> {
        let producers = self.producers.borrow();
        if producers
            .values()
            .any(|p| p.batches.iter().any(|b| b.base_offset < 0))
        {
            return None;
        }
        let mut out = Vec::new();
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&covered_offset.to_le_bytes());
        out.extend_from_slice(&(producers.len() as u32).to_le_bytes());
        for (id, p) in producers.iter() {
            let confirmed: Vec<&SeqBatch> = p
                .batches
                .iter()
                .filter(|b| b.base_offset >= 0 && b.last_offset < covered_offset)
                .collect();
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&p.epoch.to_le_bytes());
            out.push(confirmed.len() as u8);
            for b in confirmed {
                out.extend_from_slice(&b.first_sequence.to_le_bytes());
                out.extend_from_slice(&b.last_sequence.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Some(out)
    }

    /// Loads a snapshot; returns the offset it covers, or `None` if damaged.
    pub fn load_snapshot(&self, bytes: &[u8]) -> Option<i64> {
        let (body, crc) = bytes.split_at(bytes.len().checked_sub(4)?);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?)
            || body.get(..8)? != SNAPSHOT_MAGIC
        {
            return None;
        }
        let mut at = 8;
        let mut take = |n: usize| -> Option<&[u8]> {
            let slice = body.get(at..at + n)?;
            at += n;
            Some(slice)
        };
        let covered = i64::from_le_bytes(take(8)?.try_into().ok()?);
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let mut producers = HashMap::new();
        for _ in 0..count {
            let id = i64::from_le_bytes(take(8)?.try_into().ok()?);
            let epoch = i16::from_le_bytes(take(2)?.try_into().ok()?);
            let batches = take(1)?[0];
            let mut p = Producer {
                epoch,
                batches: VecDeque::new(),
            };
            for _ in 0..batches {
                p.batches.push_back(SeqBatch {
                    first_sequence: i32::from_le_bytes(take(4)?.try_into().ok()?),
                    last_sequence: i32::from_le_bytes(take(4)?.try_into().ok()?),
                    base_offset: i64::from_le_bytes(take(8)?.try_into().ok()?),
                    last_offset: i64::from_le_bytes(take(8)?.try_into().ok()?),
                });
            }
            producers.insert(id, p);
        }
        *self.producers.borrow_mut() = producers;
        Some(covered)
    }
}

/// Hands out producer ids; lives on shard 0. Ids come in blocks that the
/// node takes through the cluster's metadata log (`AllocateProducerIds`), so
/// no two nodes, and no restart, ever hand out the same id.
pub struct ProducerIds {
    /// Ids below this were handed out before the metadata log (the
    /// `producer_ids` file of an older data dir): blocks start above it.
    pub floor: i64,
    next: std::cell::Cell<i64>,
    end: std::cell::Cell<i64>,
}

/// Ids per block taken from the metadata log.
pub const ID_BLOCK_SIZE: i64 = ID_BLOCK;

impl ProducerIds {
    pub fn open(data_dir: &std::path::Path) -> Result<ProducerIds, String> {
        let path = data_dir.join("producer_ids");
        let floor = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(ProducerIds {
            floor,
            next: std::cell::Cell::new(0),
            end: std::cell::Cell::new(0),
        })
    }

    /// The next id of the current block, if it has one left.
    pub fn take(&self) -> Option<i64> {
        let id = self.next.get();
        (id < self.end.get()).then(|| {
            self.next.set(id + 1);
            id
        })
    }

    /// A block the metadata log gave this node.
    pub fn add_block(&self, from: i64, to: i64) {
        self.next.set(from);
        self.end.set(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::record_batch::{build_batch_with_producer, BatchHeader};

    fn header(pid: i64, epoch: i16, seq: i32, records: usize) -> BatchHeader {
        let values: Vec<&[u8]> = (0..records).map(|_| b"x".as_slice()).collect();
        BatchHeader::parse(&build_batch_with_producer(1, &values, pid, epoch, seq)).unwrap()
    }

    #[test]
    fn duplicates_gaps_and_epochs() {
        let state = PartitionProducers::default();
        let first = header(7, 0, 0, 3);
        assert_eq!(state.check(&first), SequenceCheck::Append);
        state.confirm(&first, 100, 102);
        assert_eq!(
            state.check(&first),
            SequenceCheck::Duplicate(SeqBatch {
                first_sequence: 0,
                last_sequence: 2,
                base_offset: 100,
                last_offset: 102
            })
        );
        assert_eq!(
            state.check(&header(7, 0, 5, 1)),
            SequenceCheck::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        let second = header(7, 0, 3, 1);
        assert_eq!(state.check(&second), SequenceCheck::Append);
        state.forget(&second);
        assert_eq!(
            state.check(&second),
            SequenceCheck::Append,
            "a failed append may be retried"
        );
        assert_eq!(
            state.check(&header(8, 0, 4, 1)),
            SequenceCheck::Reject(UNKNOWN_PRODUCER_ID)
        );
        assert_eq!(state.check(&header(7, 1, 0, 1)), SequenceCheck::Append);
        assert_eq!(
            state.check(&header(7, 0, 4, 1)),
            SequenceCheck::Reject(INVALID_PRODUCER_EPOCH)
        );
    }

    #[test]
    fn sequences_wrap_to_zero_as_in_kafka() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        let state = PartitionProducers::default();
        let first = header(3, 0, 0, 1);
        state.check(&first);
        state.confirm(&first, 0, 0);
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let state = PartitionProducers::default();
        let h = header(9, 2, 0, 4);
        state.check(&h);
        state.confirm(&h, 10, 13);
        let bytes = state.encode_snapshot(14).unwrap();
        let loaded = PartitionProducers::default();
        assert_eq!(loaded.load_snapshot(&bytes), Some(14));
        assert!(matches!(
            loaded.check(&h),
            SequenceCheck::Duplicate(SeqBatch {
                base_offset: 10,
                ..
            })
        ));
        let mut bad = bytes.clone();
        bad[12] ^= 1;
        assert_eq!(PartitionProducers::default().load_snapshot(&bad), None);
    }

    #[test]
    fn ids_come_from_the_block_and_a_legacy_file_sets_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("producer_ids"), "3000").unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.floor, 3000);
        assert_eq!(ids.take(), None);
        ids.add_block(3000, 3002);
        assert_eq!(
            (ids.take(), ids.take(), ids.take()),
            (Some(3000), Some(3001), None)
        );
    }
}
