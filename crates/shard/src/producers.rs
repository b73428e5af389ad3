//! The idempotent producer: producer ids (InitProducerId) and, per partition,
//! the sequence ranges of each producer's last five batches, so a retried
//! batch is answered with its original offsets instead of being written twice.
//!
//! Producer ids come from shard 0, in blocks reserved durably in
//! `<data_dir>/producer_ids` before any id of the block is handed out, so an
//! id is never reused after a restart. Partition state is rebuilt on open from
//! the batches of the active segment (they carry producer id, epoch and
//! sequence); a producer last seen in an older segment is unknown after a
//! restart and gets UNKNOWN_PRODUCER_ID, which clients answer by re-initialising.

use sluice_protocol::record_batch::BatchHeader;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;

pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const UNKNOWN_PRODUCER_ID: i16 = 59;
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

fn last_sequence(header: &BatchHeader) -> i32 {
    header.base_sequence.wrapping_add(header.last_offset_delta)
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
                producers.insert(header.producer_id, Producer { epoch: header.producer_epoch, batches: VecDeque::new() });
            }
            Some(p) if header.producer_epoch < p.epoch => return SequenceCheck::Reject(INVALID_PRODUCER_EPOCH),
            Some(p) if header.producer_epoch > p.epoch => {
                if first != 0 {
                    return SequenceCheck::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER);
                }
                p.epoch = header.producer_epoch;
                p.batches.clear();
            }
            Some(p) => {
                if let Some(dup) = p.batches.iter().find(|b| b.first_sequence == first && b.last_sequence == last) {
                    return SequenceCheck::Duplicate(*dup);
                }
                let expected = p.batches.back().map_or(0, |b| b.last_sequence.wrapping_add(1));
                if first != expected {
                    return SequenceCheck::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER);
                }
            }
        }
        let p = producers.get_mut(&header.producer_id).unwrap();
        p.batches.push_back(SeqBatch { first_sequence: first, last_sequence: last, base_offset: -1, last_offset: -1 });
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
            if let Some(b) = p.batches.iter_mut().find(|b| b.first_sequence == header.base_sequence) {
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
            p.batches.retain(|b| !(b.first_sequence == header.base_sequence && b.base_offset < 0));
        }
    }

    /// Rebuilds state from a stored batch (recovery).
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

/// Hands out producer ids; lives on shard 0.
pub struct ProducerIds {
    path: PathBuf,
    next: RefCell<i64>,
    reserved_until: RefCell<i64>,
}

impl ProducerIds {
    pub fn open(data_dir: &std::path::Path) -> Result<ProducerIds, String> {
        let path = data_dir.join("producer_ids");
        let start = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<i64>().map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(ProducerIds { path, next: RefCell::new(start), reserved_until: RefCell::new(start) })
    }

    /// A fresh producer id, never handed out before (even across restarts).
    pub fn allocate(&self) -> std::io::Result<i64> {
        let id = *self.next.borrow();
        if id >= *self.reserved_until.borrow() {
            let until = id + ID_BLOCK;
            let temp = self.path.with_extension("tmp");
            {
                let mut file = std::fs::File::create(&temp)?;
                file.write_all(until.to_string().as_bytes())?;
                file.sync_all()?;
            }
            std::fs::rename(&temp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            *self.reserved_until.borrow_mut() = until;
        }
        *self.next.borrow_mut() = id + 1;
        Ok(id)
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
        assert_eq!(state.check(&first), SequenceCheck::Duplicate(SeqBatch { first_sequence: 0, last_sequence: 2, base_offset: 100, last_offset: 102 }));
        assert_eq!(state.check(&header(7, 0, 5, 1)), SequenceCheck::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER));
        let second = header(7, 0, 3, 1);
        assert_eq!(state.check(&second), SequenceCheck::Append);
        state.forget(&second);
        assert_eq!(state.check(&second), SequenceCheck::Append, "a failed append may be retried");
        assert_eq!(state.check(&header(8, 0, 4, 1)), SequenceCheck::Reject(UNKNOWN_PRODUCER_ID));
        assert_eq!(state.check(&header(7, 1, 0, 1)), SequenceCheck::Append);
        assert_eq!(state.check(&header(7, 0, 4, 1)), SequenceCheck::Reject(INVALID_PRODUCER_EPOCH));
    }

    #[test]
    fn producer_ids_are_never_reused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        let a = ids.allocate().unwrap();
        let b = ids.allocate().unwrap();
        assert_ne!(a, b);
        let again = ProducerIds::open(dir.path()).unwrap();
        let c = again.allocate().unwrap();
        assert!(c > b);
    }
}
