//! One segment: a file of record batches, its indexes, and its write buffers.

use crate::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use crate::io::{IoBuf, StorageDir, StorageFile, PAGE_BYTES};
use sluice_protocol::record_batch::{validate_batch_prefix, BatchHeader, HEADER_BYTES};
use std::rc::Rc;

pub const LOG_SUFFIX: &str = ".log";
pub const INDEX_SUFFIX: &str = ".index";
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";

pub fn segment_file_name(base_offset: i64, suffix: &str) -> String {
    debug_assert!(base_offset >= 0);
    format!("{base_offset:020}{suffix}")
}

/// The base offset of a `NNNNNNNNNNNNNNNNNNNN.log` name.
pub fn parse_segment_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(LOG_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn align_down(value: u64) -> u64 {
    value & !(PAGE_BYTES - 1)
}

pub fn align_up(value: u64) -> u64 {
    (value + PAGE_BYTES - 1) & !(PAGE_BYTES - 1)
}

/// The index state that grows with every durable batch of a segment.
#[derive(Debug, Clone, Default)]
pub struct SegmentIndexes {
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Bytes appended since the last offset-index entry.
    pub bytes_since_entry: u64,
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: i64,
}

impl SegmentIndexes {
    pub fn new() -> SegmentIndexes {
        SegmentIndexes {
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            ..Default::default()
        }
    }

    /// Records a batch stored at `position` of a segment based at `base_offset`.
    pub fn observe_batch(
        &mut self,
        base_offset: i64,
        position: u64,
        header: &BatchHeader,
        index_interval_bytes: u64,
    ) {
        let relative_offset = u32::try_from(header.base_offset - base_offset)
            .expect("batch offset within u32 of its segment base");
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.offset_of_max_timestamp = header.last_offset();
        }
        // The first batch is implicitly indexed (lookup falls back to position 0).
        if position > 0 && self.bytes_since_entry >= index_interval_bytes {
            self.offset_index.push(OffsetEntry {
                relative_offset,
                position: u32::try_from(position).expect("segment position within u32"),
            });
            self.time_index.maybe_push(TimeEntry {
                max_timestamp: self.max_timestamp,
                relative_offset,
            });
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += header.total_bytes() as u64;
    }

    /// The closing time-index entry written when a segment is sealed.
    pub fn seal(&mut self, base_offset: i64) {
        if self.max_timestamp >= 0 {
            let relative_offset = u32::try_from(self.offset_of_max_timestamp - base_offset)
                .expect("offset within u32 of its segment base");
            let floor = self
                .time_index
                .entries
                .last()
                .map(|e| e.relative_offset)
                .unwrap_or(0);
            self.time_index.maybe_push(TimeEntry {
                max_timestamp: self.max_timestamp,
                relative_offset: relative_offset.max(floor),
            });
        }
    }
}

/// Where a segment's bytes stand. `durable_end ≤ flight_end ≤ pending_end`.
///
/// Pending bytes sit in a list of page-aligned buffers ("chunks") covering file
/// bytes `[buf_start, pending_end)`: every chunk but the last is full. A flush
/// hands all chunks out to be written at once (several writes in flight, one
/// fdatasync after them); the last chunk is cut to whole pages, zero padded,
/// and its partial last page is copied to the head of a fresh chunk, so the
/// next flush writes that page again together with what follows. New appends
/// fill the fresh chunk while the previous ones are in flight.
pub struct TailWriter<B> {
    /// Empty for a sealed segment opened from disk: it takes no appends.
    chunks: Vec<B>,
    buf_start: u64,
    /// Bytes used in the last chunk.
    last_filled: usize,
    pub durable_end: u64,
    pub flight_end: u64,
    /// Bytes `[align_down(durable_end), durable_end)`, to rebuild the buffer
    /// after a failed write.
    durable_page: Vec<u8>,
    /// Size of a full chunk.
    chunk_bytes: usize,
}

/// One write of a flush: a file position and the whole buffer to write there.
pub type ChunkWrite<B> = (u64, Rc<B>);

impl<B: IoBuf> TailWriter<B> {
    /// A writer whose file already holds `durable_end` bytes; `durable_page`
    /// is the content of the partial last page.
    pub fn new<D: StorageDir<File = F>, F: StorageFile<Buf = B>>(
        dir: &D,
        durable_end: u64,
        durable_page: Vec<u8>,
        chunk_bytes: u64,
    ) -> TailWriter<B> {
        assert_eq!(
            durable_page.len() as u64,
            durable_end - align_down(durable_end)
        );
        assert!(chunk_bytes >= PAGE_BYTES && chunk_bytes.is_power_of_two());
        // The first chunk starts at one page and later ones follow the size of
        // the last flush: a core with a thousand quiet partitions holds a
        // thousand pages, not a thousand chunks.
        let mut first = dir.alloc_buf(PAGE_BYTES as usize);
        first.as_bytes_mut()[..durable_page.len()].copy_from_slice(&durable_page);
        TailWriter {
            chunks: vec![first],
            buf_start: align_down(durable_end),
            last_filled: durable_page.len(),
            durable_end,
            flight_end: durable_end,
            durable_page,
            chunk_bytes: chunk_bytes as usize,
        }
    }

    /// The writer of a sealed segment: everything durable, no buffer.
    pub fn sealed(durable_end: u64) -> TailWriter<B> {
        TailWriter {
            chunks: Vec::new(),
            buf_start: align_down(durable_end),
            last_filled: (durable_end - align_down(durable_end)) as usize,
            durable_end,
            flight_end: durable_end,
            durable_page: Vec::new(),
            chunk_bytes: PAGE_BYTES as usize,
        }
    }

    fn bytes_before_last(&self) -> usize {
        let n = self.chunks.len();
        self.chunks[..n.saturating_sub(1)]
            .iter()
            .map(|c| c.as_bytes().len())
            .sum()
    }

    /// Bytes of the buffers this writer holds.
    pub fn buffer_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.as_bytes().len()).sum()
    }

    pub fn pending_end(&self) -> u64 {
        if self.chunks.is_empty() {
            return self.durable_end;
        }
        self.buf_start + (self.bytes_before_last() + self.last_filled) as u64
    }

    /// Copies `bytes` to the end of the pending data; returns their file position.
    pub fn append<D: StorageDir<File = F>, F: StorageFile<Buf = B>>(
        &mut self,
        dir: &D,
        mut bytes: &[u8],
    ) -> u64 {
        assert!(!self.chunks.is_empty(), "appending to a sealed segment");
        let position = self.pending_end();
        while !bytes.is_empty() {
            let last = self.chunks.last_mut().unwrap();
            let room = last.as_bytes().len() - self.last_filled;
            if room == 0 {
                self.chunks.push(dir.alloc_buf(self.chunk_bytes));
                self.last_filled = 0;
                continue;
            }
            let take = room.min(bytes.len());
            last.as_bytes_mut()[self.last_filled..self.last_filled + take]
                .copy_from_slice(&bytes[..take]);
            self.last_filled += take;
            bytes = &bytes[take..];
        }
        position
    }

    /// Overwrites pending bytes at `position + offset_in_batch` (base offset,
    /// leader epoch of a batch just appended); may straddle two chunks.
    pub fn patch(&mut self, position: u64, offset_in_batch: usize, bytes: &[u8]) {
        let mut at = position + offset_in_batch as u64;
        assert!(
            at >= self.flight_end && at + bytes.len() as u64 <= self.pending_end(),
            "patching bytes not pending"
        );
        let mut chunk_start = self.buf_start;
        let mut rest = bytes;
        for chunk in self.chunks.iter_mut() {
            let len = chunk.as_bytes().len() as u64;
            if at < chunk_start + len && !rest.is_empty() {
                let from = (at - chunk_start) as usize;
                let take = (len as usize - from).min(rest.len());
                chunk.as_bytes_mut()[from..from + take].copy_from_slice(&rest[..take]);
                rest = &rest[take..];
                at += take as u64;
            }
            chunk_start += len;
        }
        assert!(rest.is_empty());
    }

    /// Hands out the pending data for writing: the writes (page aligned,
    /// zero padded) and the end position they cover.
    pub fn take_flight<D: StorageDir<File = F>, F: StorageFile<Buf = B>>(
        &mut self,
        dir: &D,
    ) -> Option<(Vec<ChunkWrite<B>>, u64)> {
        assert_eq!(self.flight_end, self.durable_end, "one flight at a time");
        let end = self.pending_end();
        if end == self.flight_end {
            return None;
        }
        let last_filled = self.last_filled;
        let padded = align_up(last_filled as u64) as usize;
        let keep_from = align_down(last_filled as u64) as usize;
        let flight_bytes = end - self.buf_start;
        // Sized like this flight, as a power of two (few distinct sizes, so
        // recycled buffers fit), at most one chunk.
        let capacity = flight_bytes
            .next_power_of_two()
            .clamp(PAGE_BYTES, self.chunk_bytes as u64) as usize;
        debug_assert!(capacity > last_filled - keep_from);
        let mut next = dir.alloc_buf(capacity);
        let mut chunks = std::mem::take(&mut self.chunks);
        let mut last = chunks.pop().unwrap();
        next.as_bytes_mut()[..last_filled - keep_from]
            .copy_from_slice(&last.as_bytes()[keep_from..last_filled]);
        let mut writes = Vec::with_capacity(chunks.len() + 1);
        let mut position = self.buf_start;
        for chunk in chunks {
            let len = chunk.as_bytes().len() as u64;
            writes.push((position, Rc::new(chunk)));
            position += len;
        }
        if padded > 0 {
            last.as_bytes_mut()[last_filled..padded].fill(0);
            last.truncate(padded);
            writes.push((position, Rc::new(last)));
        }
        self.buf_start = position + keep_from as u64;
        self.last_filled = last_filled - keep_from;
        self.chunks = vec![next];
        self.flight_end = end;
        Some((writes, end))
    }

    /// The flight reached the disk (or, under a relaxed policy, the device).
    pub fn complete_flight(&mut self) {
        self.durable_end = self.flight_end;
        let page_start = align_down(self.durable_end);
        assert_eq!(
            page_start, self.buf_start,
            "the partial page heads the first chunk"
        );
        let len = (self.durable_end - page_start) as usize;
        self.durable_page = self.chunks[0].as_bytes()[..len].to_vec();
    }

    /// Drops everything after `durable_end`: the flight failed.
    pub fn roll_back<D: StorageDir<File = F>, F: StorageFile<Buf = B>>(&mut self, dir: &D) {
        let durable_page = std::mem::take(&mut self.durable_page);
        *self = TailWriter::new(dir, self.durable_end, durable_page, self.chunk_bytes as u64);
    }
}

/// The result of reading a segment's batches one by one from a position.
#[derive(Debug)]
pub struct ScanResult {
    /// Position after the last valid batch.
    pub valid_end: u64,
    /// One past the last offset of the last valid batch (`None` if no batch).
    pub next_offset: Option<i64>,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped_by: Option<String>,
}

/// Reads batches from `position` to `end`, checking length, CRC and offset
/// continuity (`expected_offset` is the base offset the first batch must have,
/// if known), and feeds each valid one to `indexes`. With `stop_before_offset`
/// it stops (cleanly) at the first batch whose last offset reaches it.
#[allow(clippy::too_many_arguments)]
pub async fn scan_batches<F: StorageFile>(
    file: &F,
    base_offset: i64,
    mut position: u64,
    end: u64,
    mut expected_offset: Option<i64>,
    allow_gaps: bool,
    stop_before_offset: Option<i64>,
    indexes: &mut SegmentIndexes,
    index_interval_bytes: u64,
) -> std::io::Result<ScanResult> {
    let reaches =
        |header: &BatchHeader| stop_before_offset.is_some_and(|o| header.last_offset() >= o);
    const CHUNK_BYTES: usize = 1 << 20;
    let mut next_offset = None;
    while position < end {
        let want = ((end - position) as usize).min(CHUNK_BYTES);
        let chunk = file.read_at(position, want).await?;
        let mut at = 0usize;
        let mut progressed = false;
        while at < chunk.len() {
            let rest = &chunk[at..];
            let header = match BatchHeader::parse(rest) {
                Ok(h) => h,
                Err(_) if rest.len() < HEADER_BYTES && (position + chunk.len() as u64) < end => {
                    break
                }
                Err(e) => return Ok(stop(position + at as u64, next_offset, e.to_string())),
            };
            if reaches(&header) {
                return Ok(ScanResult {
                    valid_end: position + at as u64,
                    next_offset,
                    stopped_by: None,
                });
            }
            let total = header.total_bytes();
            if position + (at + total) as u64 > end {
                return Ok(stop(
                    position + at as u64,
                    next_offset,
                    "batch runs past end of file".into(),
                ));
            }
            if total > rest.len() {
                if at == 0 {
                    // One batch larger than the chunk: read it whole.
                    let whole = file.read_at(position, total).await?;
                    if let Err(e) = validate_batch_prefix(&whole) {
                        return Ok(stop(position, next_offset, e.to_string()));
                    }
                    if let Some(expected) = expected_offset {
                        if !offset_follows(expected, &header, allow_gaps) {
                            return Ok(stop(position, next_offset, offset_gap(expected, &header)));
                        }
                    }
                    indexes.observe_batch(base_offset, position, &header, index_interval_bytes);
                    next_offset = Some(header.last_offset() + 1);
                    expected_offset = next_offset;
                    position += total as u64;
                    progressed = true;
                }
                break;
            }
            if let Err(e) = validate_batch_prefix(rest) {
                return Ok(stop(position + at as u64, next_offset, e.to_string()));
            }
            if let Some(expected) = expected_offset {
                if !offset_follows(expected, &header, allow_gaps) {
                    return Ok(stop(
                        position + at as u64,
                        next_offset,
                        offset_gap(expected, &header),
                    ));
                }
            }
            indexes.observe_batch(
                base_offset,
                position + at as u64,
                &header,
                index_interval_bytes,
            );
            next_offset = Some(header.last_offset() + 1);
            expected_offset = next_offset;
            at += total;
            progressed = true;
        }
        if at > 0 {
            position += at as u64;
        } else if !progressed {
            return Ok(stop(position, next_offset, "short read".into()));
        }
    }
    Ok(ScanResult {
        valid_end: position,
        next_offset,
        stopped_by: None,
    })
}

fn stop(position: u64, next_offset: Option<i64>, why: String) -> ScanResult {
    ScanResult {
        valid_end: position,
        next_offset,
        stopped_by: Some(why),
    }
}

/// Batches follow each other offset after offset; in a compacted segment
/// (`allow_gaps`) whole batches may be missing, but offsets still only grow.
fn offset_follows(expected: i64, header: &BatchHeader, allow_gaps: bool) -> bool {
    header.base_offset == expected || (allow_gaps && header.base_offset > expected)
}

fn offset_gap(expected: i64, header: &BatchHeader) -> String {
    format!(
        "batch base offset {} where {expected} was expected",
        header.base_offset
    )
}

/// One segment of a partition log.
pub struct Segment<F: StorageFile> {
    pub base_offset: i64,
    /// `None` until the flusher creates the file (a freshly rolled segment).
    pub file: Option<Rc<F>>,
    /// Durable view: what reads see.
    pub indexes: SegmentIndexes,
    pub next_offset: i64,
    /// Bytes reserved on disk.
    pub allocated_bytes: u64,
    pub tail: TailWriter<F::Buf>,
    /// Accepts no more appends.
    pub sealed: bool,
    /// Truncated to size, indexes written, synced.
    pub finalized: bool,
    pub created_at_ms: u64,
    /// Set after a failed round: cut the file to this length before the next write.
    pub cut_before_write: Option<u64>,
}

impl<F: StorageFile> Segment<F> {
    pub fn durable_bytes(&self) -> u64 {
        self.tail.durable_end
    }
}
