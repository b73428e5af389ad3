//! Log compaction (`cleanup.policy=compact`): keep the latest record of each
//! key, as Kafka's log cleaner does.
//!
//! One run, on the core that owns the log, between its appends and reads:
//!
//! 1. **Plan.** The cleanable part is the sealed, finalized segments below the
//!    active one. Its *dirty* part starts at the cleaner offset (persisted in
//!    [`CLEANER_OFFSET_FILE`]; the first segment before any run) and stops at
//!    the first segment holding a record younger than `min.compaction.lag.ms`.
//!    A run happens when dirty bytes / cleanable bytes reaches
//!    `min.cleanable.dirty.ratio`, or a dirty segment is older than
//!    `max.compaction.lag.ms`.
//! 2. **Map.** The dirty records' keys are hashed (XXH3-128) into a key →
//!    latest offset map of at most `map_bytes / MAP_ENTRY_BYTES` keys. When it
//!    is full the run covers the log only up to that record (the rest waits
//!    for the next run): memory stays bounded whatever the key count.
//! 3. **Rewrite.** Every cleanable segment below the map's end is rewritten
//!    with only the records that are the latest for their key (or beyond the
//!    map's end); tombstones (null values) older than `delete.retention.ms` are
//!    dropped too, as are records without a key. A batch that keeps all its
//!    records is copied byte for byte; one that keeps some is rebuilt with
//!    the same base offset, last offset delta and producer fields (offsets
//!    keep their gaps); one that keeps none disappears. A segment with nothing
//!    to drop is left alone.
//! 4. **Swap, crash-safely, one segment at a time.** The new data goes to
//!    `<base>.log.cleaned`, is synced, the old segment's index files are
//!    removed (directory synced), `.cleaned` is renamed over `<base>.log`
//!    (directory synced), and new index files are written. A crash before the
//!    rename leaves the old segment (a stray `.cleaned` is removed at open);
//!    after it, the new one (its indexes rebuilt at open if missing). Either is
//!    a valid log: the new segment holds a subset of the old one's records,
//!    never a record twice. Readers in flight keep the old file open.
//! 5. The cleaner offset moves to the map's end, persisted after the swaps.

use crate::error::{LogError, LogResult};
use crate::io::{IoBuf, StorageDir, StorageFile, PAGE_BYTES};
use crate::log::{remove_if_exists, write_whole_file, PartitionLog};
use crate::segment::{
    align_up, segment_file_name, SegmentIndexes, TailWriter, INDEX_SUFFIX, LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
};
use bytes::Bytes;
use sluice_protocol::compression::{decompress, Codec, DECOMPRESSED_BYTES_MAX};
use sluice_protocol::record_batch::{
    rebuild_batch, records, validate_batch_prefix, BatchHeader, HEADER_BYTES,
};
use std::collections::HashMap;
use std::rc::Rc;

/// The first offset not yet compacted (decimal text; temp file, then rename).
pub const CLEANER_OFFSET_FILE: &str = "cleaner-offset";
/// Suffix of a segment being rewritten; removed at open if a crash left it.
pub const CLEANED_SUFFIX: &str = ".log.cleaned";
/// Memory one key takes in the map: a 16-byte hash, an 8-byte offset, and the
/// hash table's control bytes and spare capacity.
pub const MAP_ENTRY_BYTES: usize = 32;
/// Reads and writes of a run go in pieces of this size.
const IO_CHUNK_BYTES: usize = 256 << 10;

/// A topic's compaction settings, as Kafka names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionConfig {
    /// `delete.retention.ms`: how long a tombstone stays readable.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: records younger than this are not compacted.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty segment older than this is compacted
    /// whatever the dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// Memory for the key → offset map of one run.
    pub map_bytes: usize,
    /// Bytes a run may read plus write per second (Kafka's
    /// log.cleaner.io.max.bytes.per.second); `None`: as fast as it can.
    pub io_bytes_per_second: Option<u64>,
}

/// Paces a run's reads and writes to `io_bytes_per_second`: the produce path
/// shares the disk, and its fdatasyncs wait behind compaction I/O.
struct Throttle {
    rate: Option<u64>,
    started: std::time::Instant,
    bytes: u64,
}

impl Throttle {
    fn new(rate: Option<u64>) -> Throttle {
        Throttle {
            rate,
            started: std::time::Instant::now(),
            bytes: 0,
        }
    }

    async fn account(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        let Some(rate) = self.rate.filter(|r| *r > 0) else {
            return;
        };
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed + std::time::Duration::from_millis(1) {
            glommio::timer::sleep(due - elapsed).await;
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactionStats {
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    /// The new cleaner offset: records below it have been compacted.
    pub cleaned_up_to: i64,
    pub dirty_ratio: f64,
}

struct SegmentView<F> {
    base: i64,
    file: Rc<F>,
    size: u64,
    max_timestamp: i64,
}

struct Plan<F> {
    segments: Vec<SegmentView<F>>,
    first_dirty: i64,
    dirty_end: i64,
    dirty_bytes: u64,
    dirty_ratio: f64,
}

/// Clears the log's "compacting" marks however the run ends.
struct RunGuard<'a, D: StorageDir>(&'a PartitionLog<D>);

impl<D: StorageDir> Drop for RunGuard<'_, D> {
    fn drop(&mut self) {
        let mut state = self.0.state.borrow_mut();
        state.compacting = false;
        state.compacting_segment = None;
    }
}

fn key_hash(key: &[u8]) -> u128 {
    twox_hash::XxHash3_128::oneshot(key)
}

/// Whole batches of one segment file, in order, read in pieces.
struct BatchCursor<'a, F> {
    file: &'a F,
    position: u64,
    end: u64,
    chunk: Bytes,
    chunk_start: u64,
}

impl<'a, F: StorageFile> BatchCursor<'a, F> {
    fn new(file: &'a F, end: u64) -> Self {
        BatchCursor {
            file,
            position: 0,
            end,
            chunk: Bytes::new(),
            chunk_start: 0,
        }
    }

    /// The next batch and its position, CRC checked; `None` at the end.
    async fn next(&mut self) -> Result<Option<(u64, Bytes)>, String> {
        if self.position >= self.end {
            return Ok(None);
        }
        let left = (self.end - self.position) as usize;
        let in_chunk = self.position >= self.chunk_start
            && self.position + HEADER_BYTES as u64 <= self.chunk_start + self.chunk.len() as u64;
        if !in_chunk {
            self.load(IO_CHUNK_BYTES.min(left)).await?;
        }
        let at = (self.position - self.chunk_start) as usize;
        let header = BatchHeader::parse(&self.chunk[at..]).map_err(|e| e.to_string())?;
        let total = header.total_bytes();
        if total > left {
            return Err(format!(
                "batch at {} runs past the segment end",
                self.position
            ));
        }
        if at + total > self.chunk.len() {
            self.load(total.max(IO_CHUNK_BYTES).min(left)).await?;
        }
        let at = (self.position - self.chunk_start) as usize;
        validate_batch_prefix(&self.chunk[at..]).map_err(|e| e.to_string())?;
        let batch = self.chunk.slice(at..at + total);
        let position = self.position;
        self.position += total as u64;
        Ok(Some((position, batch)))
    }

    async fn load(&mut self, len: usize) -> Result<(), String> {
        self.chunk = self
            .file
            .read_at(self.position, len)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        self.chunk_start = self.position;
        if self.chunk.len() < len.min(HEADER_BYTES) {
            return Err(format!("short read at {}", self.position));
        }
        Ok(())
    }
}

/// Writes a new segment file sequentially with O_DIRECT, page-aligned.
struct SegmentWriter<D: StorageDir> {
    file: D::File,
    buf: <D::File as StorageFile>::Buf,
    filled: usize,
    written: u64,
}

impl<D: StorageDir> SegmentWriter<D> {
    async fn push(&mut self, dir: &D, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let room = IO_CHUNK_BYTES - self.filled;
            let take = room.min(bytes.len());
            self.buf.as_bytes_mut()[self.filled..self.filled + take]
                .copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == IO_CHUNK_BYTES {
                let full = std::mem::replace(&mut self.buf, dir.alloc_buf(IO_CHUNK_BYTES));
                let full = Rc::new(full);
                self.file.write_at(full.clone(), self.written).await?;
                if let Ok(buf) = Rc::try_unwrap(full) {
                    dir.recycle_buf(buf);
                }
                self.written += IO_CHUNK_BYTES as u64;
                self.filled = 0;
            }
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.written + self.filled as u64
    }

    /// Writes the rest, cuts the file to its exact size and syncs it.
    async fn finish(mut self) -> std::io::Result<(D::File, u64)> {
        let size = self.size();
        if self.filled > 0 {
            let padded = align_up(self.filled as u64).max(PAGE_BYTES) as usize;
            self.buf.as_bytes_mut()[self.filled..padded].fill(0);
            self.buf.truncate(padded);
            self.file.write_at(Rc::new(self.buf), self.written).await?;
        }
        self.file.set_len(size).await?;
        self.file.sync_data().await?;
        Ok((self.file, size))
    }
}

/// Which records a rewrite keeps: the latest of each key in `map` (records
/// from `map_end` on are all kept), minus tombstones older than `horizon`.
struct Keep<'a> {
    map: &'a HashMap<u128, i64>,
    map_end: i64,
    horizon: i64,
}

impl Keep<'_> {
    fn keeps(&self, r: &WalkedRecord) -> bool {
        if r.offset >= self.map_end {
            return true;
        }
        let Some(key) = r.key else {
            return false; // Kafka's cleaner drops records without a key
        };
        if self.map.get(&key).is_some_and(|latest| *latest > r.offset) {
            return false;
        }
        !(r.tombstone && r.timestamp < self.horizon)
    }
}

/// One batch's records as compaction sees them.
struct WalkedRecord {
    offset: i64,
    timestamp: i64,
    key: Option<u128>,
    tombstone: bool,
    raw: std::ops::Range<usize>,
}

/// The records of `batch` (decompressed into `scratch`); `None` if they
/// cannot be walked (such a batch is kept whole and left out of the map).
fn walk(batch: &[u8], header: &BatchHeader, scratch: &mut Vec<u8>) -> Option<Vec<WalkedRecord>> {
    let section = &batch[HEADER_BYTES..header.total_bytes()];
    let codec = Codec::from_id(header.compression())?;
    let section: &[u8] = if codec == Codec::None {
        section
    } else {
        let length = decompress(codec, section, DECOMPRESSED_BYTES_MAX, scratch).ok()?;
        &scratch[..length]
    };
    let base = section.as_ptr() as usize;
    let walked: Vec<WalkedRecord> = records(section, header.records_count)
        .map(|r| {
            let start = r.raw.as_ptr() as usize - base;
            WalkedRecord {
                offset: header.base_offset + r.offset_delta as i64,
                timestamp: if header.is_log_append_time() {
                    header.max_timestamp
                } else {
                    header.base_timestamp + r.timestamp_delta
                },
                key: r.key.map(key_hash),
                tombstone: r.value.is_none(),
                raw: start..start + r.raw.len(),
            }
        })
        .collect();
    (walked.len() == header.records_count as usize).then_some(walked)
}

fn corrupt(base: i64, detail: String) -> LogError {
    LogError::Corrupt {
        segment_base_offset: base,
        position: 0,
        detail: format!("compaction: {detail}"),
    }
}

impl<D: StorageDir + 'static> PartitionLog<D> {
    /// The first offset a compaction has not covered yet (`None` before the first run).
    pub fn cleaner_offset(&self) -> Option<i64> {
        self.state.borrow().cleaner_offset
    }

    /// Runs one compaction if the log needs one (see the module docs).
    /// `Ok(None)`: nothing to do. Safe to call while appends and reads go on.
    pub async fn compact(
        self: &Rc<Self>,
        config: &CompactionConfig,
        now_ms: i64,
    ) -> LogResult<Option<CompactionStats>> {
        let Some(plan) = self.plan_compaction(config, now_ms) else {
            return Ok(None);
        };
        let _guard = RunGuard(self);
        let capacity = (config.map_bytes / MAP_ENTRY_BYTES).max(1);
        // Sized up front (a record takes at least 8 bytes): it never grows past `capacity`.
        let mut map: HashMap<u128, i64> =
            HashMap::with_capacity(capacity.min(plan.dirty_bytes as usize / 8 + 16));
        let mut scratch = Vec::new();
        let mut throttle = Throttle::new(config.io_bytes_per_second);
        // 2. The map, over the dirty segments.
        let mut map_end = plan.dirty_end;
        let segments = &plan.segments;
        'segments: for (i, segment) in segments.iter().enumerate() {
            let next_base = segments.get(i + 1).map_or(i64::MAX, |s| s.base);
            if segment.base >= plan.dirty_end || next_base <= plan.first_dirty {
                continue;
            }
            let mut cursor = BatchCursor::new(&*segment.file, segment.size);
            while let Some((_, batch)) =
                cursor.next().await.map_err(|e| corrupt(segment.base, e))?
            {
                // Decompressing and hashing is CPU work: let requests in between batches.
                glommio::yield_if_needed().await;
                throttle.account(batch.len()).await;
                let header = BatchHeader::parse(&batch).expect("checked by the cursor");
                if header.last_offset() < plan.first_dirty {
                    continue;
                }
                let Some(walked) = walk(&batch, &header, &mut scratch) else {
                    continue;
                };
                for record in walked {
                    if record.offset < plan.first_dirty {
                        continue;
                    }
                    let Some(key) = record.key else { continue };
                    if map.len() >= capacity && !map.contains_key(&key) {
                        map_end = record.offset;
                        break 'segments;
                    }
                    map.insert(key, record.offset);
                }
            }
        }
        if map_end <= plan.first_dirty {
            tracing::warn!(log = %self.name, capacity, "compaction map too small for the first dirty records: nothing compacted");
            return Ok(None);
        }
        // 3 and 4. Rewrite and swap, segment by segment.
        let mut stats = CompactionStats {
            cleaned_up_to: map_end,
            dirty_ratio: plan.dirty_ratio,
            ..Default::default()
        };
        let horizon = now_ms.saturating_sub(config.delete_retention_ms);
        for segment in plan.segments.iter().filter(|s| s.base < map_end) {
            let keep = Keep {
                map: &map,
                map_end,
                horizon,
            };
            self.rewrite_segment(segment, &keep, &mut scratch, &mut throttle, &mut stats)
                .await?;
        }
        drop(map);
        // 5. Everything below map_end is compacted.
        self.persist_offset_file(CLEANER_OFFSET_FILE, map_end)
            .await?;
        self.state.borrow_mut().cleaner_offset = Some(map_end);
        tracing::info!(log = %self.name, segments = stats.segments_rewritten, bytes_before = stats.bytes_before,
            bytes_after = stats.bytes_after, records_removed = stats.records_removed,
            cleaned_up_to = map_end, dirty_ratio = plan.dirty_ratio, "log compacted");
        Ok(Some(stats))
    }

    fn plan_compaction(&self, config: &CompactionConfig, now_ms: i64) -> Option<Plan<D::File>> {
        let mut state = self.state.borrow_mut();
        if state.usable().is_err() || state.poisoned.is_some() || state.compacting {
            return None;
        }
        let active = *state.segments.keys().next_back()?;
        let mut segments = Vec::new();
        for (base, segment) in state.segments.range(..active) {
            if !segment.finalized {
                break;
            }
            segments.push(SegmentView {
                base: *base,
                file: segment.file.clone()?,
                size: segment.durable_bytes(),
                max_timestamp: segment.indexes.max_timestamp,
            });
        }
        let first = segments.first()?.base;
        let first_dirty = state.cleaner_offset.unwrap_or(first).max(first);
        let next_base = |i: usize| segments.get(i + 1).map_or(active, |s| s.base);
        let mut dirty_end = active;
        let mut forced = false;
        let (mut clean_bytes, mut dirty_bytes) = (0u64, 0u64);
        for (i, segment) in segments.iter().enumerate() {
            if next_base(i) <= first_dirty {
                clean_bytes += segment.size;
                continue;
            }
            if segment.max_timestamp > now_ms.saturating_sub(config.min_compaction_lag_ms) {
                dirty_end = segment.base;
                break;
            }
            if segment.max_timestamp >= 0
                && segment.max_timestamp < now_ms.saturating_sub(config.max_compaction_lag_ms)
            {
                forced = true;
            }
            dirty_bytes += segment.size;
        }
        if dirty_bytes == 0 || dirty_end <= first_dirty {
            return None;
        }
        let dirty_ratio = dirty_bytes as f64 / (clean_bytes + dirty_bytes) as f64;
        if dirty_ratio < config.min_cleanable_dirty_ratio && !forced {
            return None;
        }
        state.compacting = true;
        Some(Plan {
            segments,
            first_dirty,
            dirty_end,
            dirty_bytes,
            dirty_ratio,
        })
    }

    async fn rewrite_segment(
        self: &Rc<Self>,
        segment: &SegmentView<D::File>,
        rule: &Keep<'_>,
        scratch: &mut Vec<u8>,
        throttle: &mut Throttle,
        stats: &mut CompactionStats,
    ) -> LogResult<()> {
        let base = segment.base;
        let cleaned = segment_file_name(base, CLEANED_SUFFIX);
        let file = self.dir.open(&cleaned, true).await.map_err(LogError::io)?;
        let mut writer = SegmentWriter::<D> {
            file,
            buf: self.dir.alloc_buf(IO_CHUNK_BYTES),
            filled: 0,
            written: 0,
        };
        let mut indexes = SegmentIndexes::new();
        let index_interval = self.config().index_interval_bytes;
        let mut removed = 0u64;
        let mut kept = Vec::new();
        let mut cursor = BatchCursor::new(&*segment.file, segment.size);
        while let Some((_, batch)) = cursor.next().await.map_err(|e| corrupt(base, e))? {
            glommio::yield_if_needed().await;
            throttle.account(batch.len()).await;
            let header = BatchHeader::parse(&batch).expect("checked by the cursor");
            let keep = |r: &WalkedRecord| rule.keeps(r);
            let output: Option<Vec<u8>> = match walk(&batch, &header, scratch) {
                None => None, // cannot judge its records: keep the batch as it is
                Some(walked) => {
                    let kept_count = walked.iter().filter(|r| keep(r)).count();
                    removed += (walked.len() - kept_count) as u64;
                    if kept_count == walked.len() {
                        None
                    } else if kept_count == 0 {
                        continue;
                    } else {
                        let section: &[u8] = if header.compression() == 0 {
                            &batch[HEADER_BYTES..]
                        } else {
                            scratch
                        };
                        kept.clear();
                        let mut max_timestamp = -1;
                        for r in walked.iter().filter(|r| keep(r)) {
                            kept.extend_from_slice(&section[r.raw.clone()]);
                            max_timestamp = max_timestamp.max(r.timestamp);
                        }
                        if header.is_log_append_time() {
                            max_timestamp = header.max_timestamp;
                        }
                        Some(rebuild_batch(
                            &header,
                            &kept,
                            kept_count as i32,
                            max_timestamp,
                        ))
                    }
                }
            };
            let bytes: &[u8] = output.as_deref().unwrap_or(&batch);
            let out_header = BatchHeader::parse(bytes).expect("a whole batch");
            indexes.observe_batch(base, writer.size(), &out_header, index_interval);
            writer.push(&self.dir, bytes).await.map_err(LogError::io)?;
            throttle.account(bytes.len()).await;
        }
        if removed == 0 {
            // Nothing to drop here: leave the segment as it is.
            drop(writer);
            remove_if_exists(&self.dir, &cleaned)
                .await
                .map_err(LogError::io)?;
            return Ok(());
        }
        let (file, size) = writer.finish().await.map_err(LogError::io)?;
        indexes.seal(base);
        // Only a segment still in the log is swapped; retention and
        // DeleteRecords leave it alone from here until the swap is done.
        let still_there = {
            let mut state = self.state.borrow_mut();
            let there = !state.closed && state.segments.contains_key(&base);
            if there {
                state.compacting_segment = Some(base);
            }
            there
        };
        if !still_there {
            let _ = file.close().await;
            remove_if_exists(&self.dir, &cleaned)
                .await
                .map_err(LogError::io)?;
            return Ok(());
        }
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            remove_if_exists(&self.dir, &segment_file_name(base, suffix))
                .await
                .map_err(LogError::io)?;
        }
        self.dir.sync().await.map_err(LogError::io)?;
        self.dir
            .rename(&cleaned, &segment_file_name(base, LOG_SUFFIX))
            .await
            .map_err(LogError::io)?;
        self.dir.sync().await.map_err(LogError::io)?;
        for (suffix, bytes) in [
            (INDEX_SUFFIX, indexes.offset_index.encode()),
            (TIME_INDEX_SUFFIX, indexes.time_index.encode()),
        ] {
            write_whole_file(&self.dir, &segment_file_name(base, suffix), &bytes)
                .await
                .map_err(|e| e.into_log_error())?;
        }
        self.dir.sync().await.map_err(LogError::io)?;
        {
            let mut state = self.state.borrow_mut();
            // Cached batches of this segment may be gone from its file now.
            self.invalidate_positions(&mut state);
            let segment_end = state.segments.range(base + 1..).next().map(|(b, _)| *b);
            self.with_cache(|cache| match segment_end {
                Some(end) => cache.drop_below(end),
                None => cache.clear(),
            });
            if let Some(current) = state.segments.get_mut(&base) {
                current.file = Some(Rc::new(file));
                current.indexes = indexes;
                current.tail = TailWriter::sealed(size);
                current.allocated_bytes = size;
            }
            state.compacting_segment = None;
        }
        stats.segments_rewritten += 1;
        stats.bytes_before += segment.size;
        stats.bytes_after += size;
        stats.records_removed += removed;
        Ok(())
    }
}
