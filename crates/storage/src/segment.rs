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
        SegmentIndexes { max_timestamp: -1, offset_of_max_timestamp: -1, ..Default::default() }
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
            self.time_index.maybe_push(TimeEntry { max_timestamp: self.max_timestamp, relative_offset });
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += header.total_bytes() as u64;
    }

    /// The closing time-index entry written when a segment is sealed.
    pub fn seal(&mut self, base_offset: i64) {
        if self.max_timestamp >= 0 {
            let relative_offset = u32::try_from(self.offset_of_max_timestamp - base_offset)
                .expect("offset within u32 of its segment base");
            let floor = self.time_index.entries.last().map(|e| e.relative_offset).unwrap_or(0);
            self.time_index.maybe_push(TimeEntry {
                max_timestamp: self.max_timestamp,
                relative_offset: relative_offset.max(floor),
            });
        }
    }
}

/// Where a segment's bytes stand. `durable_end ≤ flight_end ≤ pending_end`.
///
/// The write buffer holds file bytes `[buf_start, pending_end)`, `buf_start`
/// page aligned. A flush writes the buffer padded to whole pages; the partial
/// last page is copied to the head of a fresh buffer, so the next flush writes
/// it again together with what follows (one buffer fills while the other is
/// in flight).
pub struct TailWriter<B> {
    /// `None` for a sealed segment opened from disk: it takes no appends.
    buf: Option<B>,
    buf_start: u64,
    filled: usize,
    pub durable_end: u64,
    pub flight_end: u64,
    /// Bytes `[align_down(durable_end), durable_end)`, to rebuild the buffer
    /// after a failed write.
    durable_page: Vec<u8>,
    buffer_bytes: usize,
}

impl<B: IoBuf> TailWriter<B> {
    /// A writer whose file already holds `durable_end` bytes; `durable_page`
    /// is the content of the partial last page.
    pub fn new<D: StorageDir<File = F>, F: StorageFile<Buf = B>>(
        dir: &D,
        durable_end: u64,
        durable_page: Vec<u8>,
        buffer_bytes: u64,
    ) -> TailWriter<B> {
        assert_eq!(durable_page.len() as u64, durable_end - align_down(durable_end));
        let buffer_bytes = buffer_bytes as usize;
        let mut buf = dir.alloc_buf(buffer_bytes);
        buf.as_bytes_mut()[..durable_page.len()].copy_from_slice(&durable_page);
        TailWriter {
            buf: Some(buf),
            buf_start: align_down(durable_end),
            filled: durable_page.len(),
            durable_end,
            flight_end: durable_end,
            durable_page,
            buffer_bytes,
        }
    }

    /// The writer of a sealed segment: everything durable, no buffer.
    pub fn sealed(durable_end: u64) -> TailWriter<B> {
        TailWriter {
            buf: None,
            buf_start: align_down(durable_end),
            filled: (durable_end - align_down(durable_end)) as usize,
            durable_end,
            flight_end: durable_end,
            durable_page: Vec::new(),
            buffer_bytes: 0,
        }
    }

    fn buf_mut(&mut self) -> &mut B {
        self.buf.as_mut().expect("appending to a sealed segment")
    }

    pub fn pending_end(&self) -> u64 {
        self.buf_start + self.filled as u64
    }

    /// Copies `bytes` to the end of the buffer; returns their file position.
    pub fn append<D: StorageDir<File = F>, F: StorageFile<Buf = B>>(
        &mut self,
        dir: &D,
        bytes: &[u8],
    ) -> u64 {
        let position = self.pending_end();
        let needed = self.filled + bytes.len();
        let filled = self.filled;
        let buf = self.buf.as_mut().expect("appending to a sealed segment");
        if needed > buf.as_bytes().len() {
            let capacity = align_up(needed.max(buf.as_bytes().len() * 2) as u64) as usize;
            let mut grown = dir.alloc_buf(capacity);
            grown.as_bytes_mut()[..filled].copy_from_slice(&buf.as_bytes()[..filled]);
            *buf = grown;
        }
        buf.as_bytes_mut()[filled..needed].copy_from_slice(bytes);
        self.filled = needed;
        position
    }

    /// Overwrites bytes of a batch already in the buffer (base offset, epoch).
    pub fn patch(&mut self, position: u64, offset_in_batch: usize, bytes: &[u8]) {
        assert!(position >= self.buf_start && position >= self.flight_end, "patching bytes in flight");
        let at = (position - self.buf_start) as usize + offset_in_batch;
        assert!(at + bytes.len() <= self.filled);
        self.buf_mut().as_bytes_mut()[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Hands out the buffer for writing: `(file position, buffer, end)`. The
    /// buffer covers `[position, end)` padded with zeros to whole pages.
    pub fn take_flight<D: StorageDir<File = F>, F: StorageFile<Buf = B>>(
        &mut self,
        dir: &D,
    ) -> Option<(u64, Rc<B>, u64)> {
        assert_eq!(self.flight_end, self.durable_end, "one flight at a time");
        if self.pending_end() == self.flight_end {
            return None;
        }
        let end = self.pending_end();
        let padded = align_up(self.filled as u64) as usize;
        let keep_from = align_down(self.filled as u64) as usize;
        let capacity = self.buffer_bytes.max(align_up((self.filled - keep_from) as u64 + 1) as usize);
        let mut next = dir.alloc_buf(capacity);
        let filled = self.filled;
        next.as_bytes_mut()[..filled - keep_from]
            .copy_from_slice(&self.buf_mut().as_bytes()[keep_from..filled]);
        let mut flight = std::mem::replace(self.buf_mut(), next);
        flight.as_bytes_mut()[self.filled..padded].fill(0);
        flight.truncate(padded);
        let position = self.buf_start;
        self.buf_start += keep_from as u64;
        self.filled -= keep_from;
        self.flight_end = end;
        Some((position, Rc::new(flight), end))
    }

    /// The flight reached the disk (or, under a relaxed policy, the device).
    pub fn complete_flight(&mut self) {
        self.durable_end = self.flight_end;
        let page_start = align_down(self.durable_end);
        assert!(page_start >= self.buf_start && self.durable_end <= self.pending_end());
        let from = (page_start - self.buf_start) as usize;
        let to = (self.durable_end - self.buf_start) as usize;
        self.durable_page = self.buf.as_ref().expect("flight of a sealed segment").as_bytes()[from..to].to_vec();
    }

    /// Drops everything after `durable_end`: the flight failed.
    pub fn roll_back<D: StorageDir<File = F>, F: StorageFile<Buf = B>>(&mut self, dir: &D) {
        let durable_page = std::mem::take(&mut self.durable_page);
        *self = TailWriter::new(dir, self.durable_end, durable_page, self.buffer_bytes as u64);
    }

    /// The bytes not yet durable, for reads of the in-memory tail.
    pub fn bytes_after(&self, position: u64) -> &[u8] {
        assert!(position >= self.buf_start);
        let buf = self.buf.as_ref().expect("tail of a sealed segment");
        &buf.as_bytes()[(position - self.buf_start) as usize..self.filled]
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
/// if known), and feeds each valid one to `indexes`.
pub async fn scan_batches<F: StorageFile>(
    file: &F,
    base_offset: i64,
    mut position: u64,
    end: u64,
    mut expected_offset: Option<i64>,
    stop_before_offset: Option<i64>,
    indexes: &mut SegmentIndexes,
    index_interval_bytes: u64,
) -> std::io::Result<ScanResult> {
    let reaches = |header: &BatchHeader| stop_before_offset.is_some_and(|o| header.last_offset() >= o);
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
                Err(_) if rest.len() < HEADER_BYTES && (position + chunk.len() as u64) < end => break,
                Err(e) => return Ok(stop(position + at as u64, next_offset, e.to_string())),
            };
            if reaches(&header) {
                return Ok(ScanResult { valid_end: position + at as u64, next_offset, stopped_by: None });
            }
            let total = header.total_bytes();
            if position + (at + total) as u64 > end {
                return Ok(stop(position + at as u64, next_offset, "batch runs past end of file".into()));
            }
            if total > rest.len() {
                if at == 0 {
                    // One batch larger than the chunk: read it whole.
                    let whole = file.read_at(position, total).await?;
                    if let Err(e) = validate_batch_prefix(&whole) {
                        return Ok(stop(position, next_offset, e.to_string()));
                    }
                    if let Some(expected) = expected_offset {
                        if header.base_offset != expected {
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
                if header.base_offset != expected {
                    return Ok(stop(position + at as u64, next_offset, offset_gap(expected, &header)));
                }
            }
            indexes.observe_batch(base_offset, position + at as u64, &header, index_interval_bytes);
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
    Ok(ScanResult { valid_end: position, next_offset, stopped_by: None })
}

fn stop(position: u64, next_offset: Option<i64>, why: String) -> ScanResult {
    ScanResult { valid_end: position, next_offset, stopped_by: Some(why) }
}

fn offset_gap(expected: i64, header: &BatchHeader) -> String {
    format!("batch base offset {} where {expected} was expected", header.base_offset)
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
}

impl<F: StorageFile> Segment<F> {
    pub fn durable_bytes(&self) -> u64 {
        self.tail.durable_end
    }
}
