//! The per-core tail cache: the batches a core's logs made durable most
//! recently, in their stored form, so that reads at or near the head of a log
//! (consumers that keep up, followers) are answered from memory.
//!
//! One cache per core, shared by that core's logs (`Rc`, single-threaded),
//! bounded in bytes and evicting the oldest insertions first across all of
//! them. Invariants that make a hit byte-identical to a disk read:
//! - a batch enters only once durable (the flush round that wrote it
//!   promoted it), with exactly the bytes that went to the file;
//! - a log's entries are always one contiguous run of its batches: inserts
//!   come in log order, eviction and retention remove from the front,
//!   truncation from the back, and a batch that cannot be cached (larger than
//!   the whole cache) empties that log's run;
//! - whatever rewrites a log's bytes (truncation, compaction, reset) drops the
//!   entries it touches before the log serves reads again.

use crate::records::Records;
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

/// Counters, read by the broker's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from memory, and their bytes.
    pub hits: u64,
    pub hit_bytes: u64,
    /// Reads that went to the disk, and their bytes.
    pub misses: u64,
    pub miss_bytes: u64,
    pub inserted_bytes: u64,
    pub evicted_bytes: u64,
    /// Bytes held now, and the bound.
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    /// Bytes of disk reads served from a window read ahead of the consumer.
    pub read_ahead_bytes: u64,
    /// Read-ahead windows held now (at most half the capacity).
    pub read_ahead_held_bytes: u64,
}

struct Entry {
    bytes: Bytes,
    last_offset: i64,
    seq: u64,
}

#[derive(Default)]
struct Inner {
    capacity: usize,
    used: usize,
    next_log: u64,
    next_seq: u64,
    logs: HashMap<u64, BTreeMap<i64, Entry>>,
    /// Insertion order: (seq, log, base offset). Entries dropped out of
    /// order stay here until reached (their seq no longer matches).
    order: VecDeque<(u64, u64, i64)>,
    /// Entries held now, over all logs.
    live: usize,
    read_ahead_held: usize,
    stats: CacheStats,
}

pub struct TailCache {
    inner: RefCell<Inner>,
}

impl TailCache {
    /// A cache of at most `capacity` bytes (0: nothing is cached).
    pub fn new(capacity: usize) -> Rc<TailCache> {
        Rc::new(TailCache {
            inner: RefCell::new(Inner {
                capacity,
                ..Inner::default()
            }),
        })
    }

    /// A handle for one log; its entries go when the handle is dropped.
    pub fn register(self: &Rc<Self>) -> CacheSlot {
        let mut inner = self.inner.borrow_mut();
        inner.next_log += 1;
        CacheSlot {
            cache: self.clone(),
            log: inner.next_log,
        }
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.borrow();
        CacheStats {
            used_bytes: inner.used as u64,
            capacity_bytes: inner.capacity as u64,
            read_ahead_held_bytes: inner.read_ahead_held as u64,
            ..inner.stats
        }
    }
}

/// One log's view of its core's cache.
pub struct CacheSlot {
    cache: Rc<TailCache>,
    log: u64,
}

impl CacheSlot {
    /// Whether a batch of `len` bytes would be kept.
    pub fn takes(&self, len: usize) -> bool {
        len <= self.cache.inner.borrow().capacity
    }

    /// A durable batch; `log_end_before` is where the log ended before it
    /// (its base offset, unless compaction or a leader's compaction left a
    /// gap). It extends the cached run only if the run ends there too;
    /// otherwise the run starts over with it.
    pub fn insert(&self, log_end_before: i64, base_offset: i64, last_offset: i64, bytes: Bytes) {
        let mut inner = self.cache.inner.borrow_mut();
        let inner = &mut *inner;
        if inner.capacity == 0 {
            return;
        }
        let len = bytes.len();
        let log = inner.logs.entry(self.log).or_default();
        let follows = log
            .last_key_value()
            .is_none_or(|(_, last)| last.last_offset + 1 == log_end_before);
        if !follows || len > inner.capacity {
            // The run would have a hole (or go backwards): start it over.
            let dropped = std::mem::take(log);
            inner.live -= dropped.len();
            inner.used -= dropped.values().map(|e| e.bytes.len()).sum::<usize>();
            if len > inner.capacity {
                return;
            }
        }
        inner.next_seq += 1;
        let seq = inner.next_seq;
        inner.logs.entry(self.log).or_default().insert(
            base_offset,
            Entry {
                bytes,
                last_offset,
                seq,
            },
        );
        inner.order.push_back((seq, self.log, base_offset));
        inner.live += 1;
        inner.used += len;
        inner.stats.inserted_bytes += len as u64;
        while inner.used > inner.capacity {
            let Some((seq, log, base)) = inner.order.pop_front() else {
                break;
            };
            let Some(entries) = inner.logs.get_mut(&log) else {
                continue;
            };
            if entries.get(&base).is_some_and(|e| e.seq == seq) {
                // The oldest of its log: the run stays contiguous.
                let first = *entries.keys().next().expect("not empty");
                let drop_to = base;
                let doomed: Vec<i64> = entries.range(first..=drop_to).map(|(b, _)| *b).collect();
                for b in doomed {
                    let entry = entries.remove(&b).expect("listed");
                    inner.live -= 1;
                    inner.used -= entry.bytes.len();
                    inner.stats.evicted_bytes += entry.bytes.len() as u64;
                }
            }
        }
        // Stale order records (entries dropped by truncation) are bounded too.
        if inner.order.len() > 2 * inner.live + 1024 {
            let logs = &inner.logs;
            inner.order.retain(|(seq, log, base)| {
                logs.get(log)
                    .and_then(|entries| entries.get(base))
                    .is_some_and(|e| e.seq == *seq)
            });
        }
    }

    /// Whole batches from the one holding `offset` (or the first after it, in
    /// a compacted run), up to `max_bytes` but at least one, none from `end`
    /// on; `None` when `offset` is not within the cached run.
    pub fn read(&self, offset: i64, max_bytes: usize, end: i64) -> Option<(Records, i64)> {
        let mut inner = self.cache.inner.borrow_mut();
        let inner = &mut *inner;
        let entries = inner.logs.get(&self.log)?;
        let (first, _) = entries.first_key_value()?;
        let (_, last) = entries.last_key_value()?;
        if offset < *first || offset > last.last_offset {
            return None;
        }
        let start = entries
            .range(..=offset)
            .next_back()
            .filter(|(_, e)| e.last_offset >= offset)
            .map_or(offset, |(b, _)| *b);
        let mut records = Records::new();
        let mut next = offset;
        for (_, entry) in entries.range(start..end.max(start)) {
            if !records.is_empty() && records.len() + entry.bytes.len() > max_bytes {
                break;
            }
            records.push(entry.bytes.clone());
            next = entry.last_offset + 1;
            if records.len() >= max_bytes {
                break;
            }
        }
        if records.is_empty() {
            return None;
        }
        inner.stats.hits += 1;
        inner.stats.hit_bytes += records.len() as u64;
        Some((records, next))
    }

    /// Whether a read at `offset` would be a hit.
    pub fn covers(&self, offset: i64) -> bool {
        let inner = self.cache.inner.borrow();
        inner.logs.get(&self.log).is_some_and(|entries| {
            entries
                .first_key_value()
                .is_some_and(|(first, _)| offset >= *first)
        })
    }

    /// Room for a read-ahead window of `len` bytes: the core's windows
    /// together stay within half the cache's capacity.
    pub fn read_ahead_permit(&self, len: usize) -> Option<ReadAheadPermit> {
        let mut inner = self.cache.inner.borrow_mut();
        if inner.read_ahead_held + len > inner.capacity / 2 {
            return None;
        }
        inner.read_ahead_held += len;
        Some(ReadAheadPermit {
            cache: self.cache.clone(),
            len,
        })
    }

    pub fn count_read_ahead(&self, bytes: usize) {
        self.cache.inner.borrow_mut().stats.read_ahead_bytes += bytes as u64;
    }

    /// Counts a read the cache could not answer.
    pub fn count_miss(&self, bytes: usize) {
        let mut inner = self.cache.inner.borrow_mut();
        inner.stats.misses += 1;
        inner.stats.miss_bytes += bytes as u64;
    }

    /// Drops the batches that hold `offset` or come after it (truncation).
    pub fn drop_from(&self, offset: i64) {
        self.retain(|_, last| last < offset);
    }

    /// Drops the batches that start below `offset` (retention, DeleteRecords,
    /// a compacted segment's range).
    pub fn drop_below(&self, offset: i64) {
        self.retain(|base, _| base >= offset);
    }

    /// Drops all of this log's batches.
    pub fn clear(&self) {
        self.retain(|_, _| false);
    }

    fn retain(&self, keep: impl Fn(i64, i64) -> bool) {
        let mut inner = self.cache.inner.borrow_mut();
        let inner = &mut *inner;
        let Some(entries) = inner.logs.get_mut(&self.log) else {
            return;
        };
        let (mut dropped, mut count) = (0, 0);
        entries.retain(|base, entry| {
            let kept = keep(*base, entry.last_offset);
            if !kept {
                dropped += entry.bytes.len();
                count += 1;
            }
            kept
        });
        inner.used -= dropped;
        inner.live -= count;
    }
}

/// A read-ahead window's share of the core's allowance.
pub struct ReadAheadPermit {
    cache: Rc<TailCache>,
    len: usize,
}

impl Drop for ReadAheadPermit {
    fn drop(&mut self) {
        self.cache.inner.borrow_mut().read_ahead_held -= self.len;
    }
}

impl Drop for CacheSlot {
    fn drop(&mut self) {
        let mut inner = self.cache.inner.borrow_mut();
        if let Some(entries) = inner.logs.remove(&self.log) {
            inner.live -= entries.len();
            inner.used -= entries.values().map(|e| e.bytes.len()).sum::<usize>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    #[test]
    fn evicts_the_oldest_across_logs_and_keeps_each_run_contiguous() {
        let cache = TailCache::new(300);
        let a = cache.register();
        let b = cache.register();
        a.insert(0, 0, 9, batch(100, 1));
        b.insert(0, 0, 4, batch(100, 2));
        a.insert(10, 10, 19, batch(100, 3));
        b.insert(5, 5, 9, batch(100, 4)); // evicts a's first
        assert!(a.read(0, 1000, i64::MAX).is_none());
        let (records, next) = a.read(10, 1000, i64::MAX).unwrap();
        assert_eq!((records.len(), next), (100, 20));
        let (records, next) = b.read(0, 1000, i64::MAX).unwrap();
        assert_eq!((records.parts().len(), next), (2, 10));
        assert_eq!(cache.stats().used_bytes, 300);
        assert_eq!(cache.stats().evicted_bytes, 100);
    }

    #[test]
    fn reads_are_bounded_but_return_one_batch_at_least() {
        let cache = TailCache::new(1000);
        let a = cache.register();
        a.insert(0, 0, 0, batch(100, 1));
        a.insert(1, 1, 1, batch(100, 2));
        assert_eq!(a.read(0, 10, i64::MAX).unwrap().1, 1);
        assert_eq!(a.read(0, 200, i64::MAX).unwrap().1, 2);
        assert_eq!(a.read(1, 10, i64::MAX).unwrap().1, 2);
        assert!(a.read(2, 10, i64::MAX).is_none());
    }

    #[test]
    fn a_gap_or_an_oversized_batch_restarts_the_run() {
        let cache = TailCache::new(150);
        let a = cache.register();
        a.insert(0, 0, 0, batch(100, 1));
        a.insert(1, 1, 1, batch(200, 2)); // too big: the run is emptied
        assert!(a.read(0, 1000, i64::MAX).is_none());
        assert_eq!(cache.stats().used_bytes, 0);
        drop(a);
        let cache = TailCache::new(1000);
        let a = cache.register();
        a.insert(2, 2, 2, batch(100, 3));
        a.insert(4, 5, 5, batch(100, 4)); // batch 3 never came: a new run
        assert!(a.read(2, 1000, i64::MAX).is_none());
        assert_eq!(a.read(5, 1000, i64::MAX).unwrap().1, 6);
        a.insert(6, 8, 9, batch(100, 5)); // a compaction gap: same run
        assert_eq!(a.read(6, 1000, i64::MAX).unwrap().1, 10);
        a.drop_from(5);
        assert_eq!(cache.stats().used_bytes, 0);
        drop(a);
        assert_eq!(cache.stats().used_bytes, 0);
    }
}
