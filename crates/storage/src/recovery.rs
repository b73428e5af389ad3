//! Opening a log (recovery), closing it cleanly, retention and truncation.

use crate::config::LogConfig;
use crate::error::{LogError, LogResult};
use crate::event::Event;
use crate::index::{OffsetIndex, TimeIndex};
use crate::io::{StorageDir, StorageFile};
use crate::log::{now_ms, remove_if_exists, write_whole_file, LogState, PartitionLog};
use crate::segment::{
    align_down, parse_segment_name, scan_batches, segment_file_name, Segment, SegmentIndexes,
    TailWriter, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use sluice_protocol::record_batch::BatchHeader;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Written by a clean close, removed by the next open.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean_shutdown";
/// The log start offset moved by DeleteRecords, when it is past the first
/// segment's base (decimal text; written to a temp file, then renamed).
pub const LOG_START_OFFSET_FILE: &str = "log-start-offset";
const CLEAN_MAGIC: &[u8; 8] = b"SLCLEAN1";
const CLEAN_BYTES: usize = 8 + 5 * 8 + 4;

/// What a clean close knew about the active segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CleanShutdown {
    active_base_offset: i64,
    active_bytes: u64,
    next_offset: i64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
}

impl CleanShutdown {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CLEAN_BYTES);
        out.extend_from_slice(CLEAN_MAGIC);
        out.extend_from_slice(&self.active_base_offset.to_le_bytes());
        out.extend_from_slice(&self.active_bytes.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp.to_le_bytes());
        out.extend_from_slice(&self.offset_of_max_timestamp.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<CleanShutdown> {
        if bytes.len() != CLEAN_BYTES || &bytes[..8] != CLEAN_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[CLEAN_BYTES - 4..].try_into().unwrap());
        if crc32fast::hash(&bytes[..CLEAN_BYTES - 4]) != crc {
            return None;
        }
        let field = |i: usize| i64::from_le_bytes(bytes[8 + i * 8..16 + i * 8].try_into().unwrap());
        Some(CleanShutdown {
            active_base_offset: field(0),
            active_bytes: field(1) as u64,
            next_offset: field(2),
            max_timestamp: field(3),
            offset_of_max_timestamp: field(4),
        })
    }
}

/// A small offset file: `None` if absent; an unreadable one is logged and ignored.
async fn read_offset_file<D: StorageDir>(dir: &D, file: &str, log: &str) -> LogResult<Option<i64>> {
    let Some(bytes) = read_whole(dir, file).await.map_err(io_err)? else {
        return Ok(None);
    };
    let offset = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok());
    if offset.is_none() {
        tracing::warn!(log = %log, file, "offset file unreadable: ignored");
    }
    Ok(offset)
}

fn io_err(e: std::io::Error) -> LogError {
    LogError::io(e)
}

async fn read_whole<D: StorageDir>(dir: &D, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    let file = match dir.open(name, false).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.len().await?;
    let bytes = file.read_at(0, len as usize).await?;
    file.close().await?;
    Ok(Some(bytes.to_vec()))
}

async fn close_file<F: StorageFile>(file: Rc<F>) {
    if let Ok(file) = Rc::try_unwrap(file) {
        let _ = file.close().await;
    }
}

impl<D: StorageDir + 'static> PartitionLog<D> {
    /// Opens (and after a crash, recovers) the log in `dir`.
    ///
    /// Sealed segments are trusted to their size (they were synced and cut
    /// before the next segment was created); their index files are checked and
    /// rebuilt if missing or wrong. The last segment is trusted only if a clean
    /// shutdown marker vouches for it; otherwise it is scanned batch by batch
    /// (length, CRC-32C, offset continuity) and cut at the first bad batch.
    pub async fn open(dir: D, config: LogConfig, name: impl Into<String>) -> LogResult<Rc<Self>> {
        let name = name.into();
        config
            .validate()
            .map_err(|e| LogError::io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let names = dir.list().map_err(io_err)?;
        let marker = match read_whole(&dir, CLEAN_SHUTDOWN_FILE)
            .await
            .map_err(io_err)?
        {
            Some(bytes) => {
                let marker = CleanShutdown::decode(&bytes);
                if marker.is_none() {
                    tracing::warn!(log = %name, "clean shutdown marker unreadable: recovering as after a crash");
                }
                marker
            }
            None => None,
        };
        let mut bases: Vec<i64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        bases.sort_unstable();
        for stray in names.iter().filter(|n| {
            let base = n
                .strip_suffix(INDEX_SUFFIX)
                .or_else(|| n.strip_suffix(TIME_INDEX_SUFFIX));
            base.is_some_and(|b| b.parse::<i64>().map_or(true, |b| !bases.contains(&b)))
        }) {
            tracing::info!(log = %name, file = %stray, "removing index without segment");
            dir.remove(stray).await.map_err(io_err)?;
        }

        for stray in names
            .iter()
            .filter(|n| n.ends_with(crate::compaction::CLEANED_SUFFIX) || n.ends_with(".tmp"))
        {
            tracing::info!(log = %name, file = %stray, "removing a file an interrupted compaction or update left");
            dir.remove(stray).await.map_err(io_err)?;
        }

        let mut segments = BTreeMap::new();
        let mut next_offset = 0;
        if bases.is_empty() {
            segments.insert(0, empty_segment(&dir, 0, &config));
        }
        for (i, &base) in bases.iter().enumerate() {
            let file = Rc::new(
                dir.open(&segment_file_name(base, LOG_SUFFIX), false)
                    .await
                    .map_err(io_err)?,
            );
            let file_bytes = file.len().await.map_err(io_err)?;
            let is_last = i + 1 == bases.len();
            let segment = if !is_last {
                let indexes =
                    load_or_rebuild_indexes(&dir, &file, base, file_bytes, &config, &name, true)
                        .await?;
                Segment {
                    base_offset: base,
                    file: Some(file),
                    indexes,
                    next_offset: bases[i + 1],
                    allocated_bytes: file_bytes,
                    tail: TailWriter::sealed(file_bytes),
                    sealed: true,
                    finalized: true,
                    created_at_ms: now_ms(),
                    cut_before_write: None,
                }
            } else {
                let clean =
                    marker.filter(|m| m.active_base_offset == base && m.active_bytes == file_bytes);
                let (indexes, valid_end, segment_next) = match clean {
                    Some(m) => {
                        let mut indexes = load_or_rebuild_indexes(
                            &dir, &file, base, file_bytes, &config, &name, false,
                        )
                        .await?;
                        indexes.max_timestamp = m.max_timestamp;
                        indexes.offset_of_max_timestamp = m.offset_of_max_timestamp;
                        (indexes, file_bytes, m.next_offset)
                    }
                    None => recover_tail(&dir, &file, base, file_bytes, &config, &name).await?,
                };
                next_offset = segment_next;
                let page_start = align_down(valid_end);
                let page = file
                    .read_at(page_start, (valid_end - page_start) as usize)
                    .await
                    .map_err(io_err)?;
                Segment {
                    base_offset: base,
                    file: Some(file),
                    indexes,
                    next_offset: segment_next,
                    allocated_bytes: valid_end,
                    tail: TailWriter::new(
                        &dir,
                        valid_end,
                        page.to_vec(),
                        config.write_buffer_bytes,
                    ),
                    sealed: false,
                    finalized: false,
                    created_at_ms: now_ms(),
                    cut_before_write: None,
                }
            };
            segments.insert(base, segment);
        }
        if bases.is_empty() {
            next_offset = 0;
        }
        if marker.is_some() || names.iter().any(|n| n == CLEAN_SHUTDOWN_FILE) {
            // From here on a crash must not trust the old marker.
            dir.remove(CLEAN_SHUTDOWN_FILE).await.map_err(io_err)?;
            dir.sync().await.map_err(io_err)?;
        }
        let mut state = LogState::new(segments, next_offset);
        if let Some(start) = read_offset_file(&dir, LOG_START_OFFSET_FILE, &name).await? {
            state.log_start_offset = state.log_start_offset.max(start.min(next_offset));
        }
        state.cleaner_offset =
            read_offset_file(&dir, crate::compaction::CLEANER_OFFSET_FILE, &name).await?;
        tracing::debug!(log = %name, log_start_offset = state.log_start_offset, next_offset, "log opened");
        Ok(Rc::new(PartitionLog {
            dir,
            config: std::cell::Cell::new(config),
            name,
            state: RefCell::new(state),
            flushed: Event::default(),
            cache: RefCell::new(None),
            read_ahead: RefCell::new(None),
        }))
    }

    /// Completes pending appends, writes the active segment's indexes, cuts its
    /// preallocated tail, and leaves the clean-shutdown marker.
    pub async fn close(self: &Rc<Self>) -> LogResult<()> {
        let flushed = self.flush().await;
        let (files, active) = {
            let mut state = self.state.borrow_mut();
            state.closed = true;
            self.cache.borrow_mut().take();
            self.invalidate_positions(&mut state);
            let files: Vec<Rc<D::File>> = state
                .segments
                .values()
                .filter_map(|s| s.file.clone())
                .collect();
            let active = state.segments.values().next_back().and_then(|active| {
                active.file.clone().map(|file| {
                    (
                        file,
                        active.base_offset,
                        active.indexes.clone(),
                        active.durable_bytes(),
                        CleanShutdown {
                            active_base_offset: active.base_offset,
                            active_bytes: active.durable_bytes(),
                            next_offset: active.next_offset,
                            max_timestamp: active.indexes.max_timestamp,
                            offset_of_max_timestamp: active.indexes.offset_of_max_timestamp,
                        },
                    )
                })
            });
            let healthy = flushed.is_ok() && state.poisoned.is_none();
            (files, if healthy { active } else { None })
        };
        if let Some((file, base, indexes, size, marker)) = active {
            self.finalize_segment(&file, base, &indexes, size)
                .await
                .map_err(|e| e.into_log_error())?;
            self.write_whole_file(CLEAN_SHUTDOWN_FILE, &marker.encode())
                .await
                .map_err(|e| e.into_log_error())?;
            self.dir.sync().await.map_err(io_err)?;
        }
        {
            let mut state = self.state.borrow_mut();
            for segment in state.segments.values_mut() {
                segment.file = None;
            }
        }
        for file in files {
            close_file(file).await;
        }
        flushed
    }

    /// Deletes the oldest sealed segments beyond `retention_bytes`, or whose
    /// newest record is older than `retention_ms`, and advances the log start
    /// offset. The active segment is never deleted. Returns segments deleted.
    pub async fn enforce_retention(self: &Rc<Self>, now_ms: u64) -> LogResult<usize> {
        let doomed: Vec<(i64, Option<Rc<D::File>>)> = {
            let mut state = self.state.borrow_mut();
            if state.usable().is_err() {
                return Ok(0);
            }
            let mut total: u64 = state.segments.values().map(|s| s.durable_bytes()).sum();
            let mut doomed = Vec::new();
            let last = *state.segments.keys().next_back().unwrap();
            for (base, segment) in state.segments.iter() {
                if *base == last || !segment.finalized || state.compacting_segment == Some(*base) {
                    break;
                }
                let size = segment.durable_bytes();
                let over_size = self
                    .config()
                    .retention_bytes
                    .is_some_and(|limit| total - size >= limit);
                let expired = self.config().retention_ms.is_some_and(|ms| {
                    segment.indexes.max_timestamp >= 0
                        && (now_ms as i64).saturating_sub(segment.indexes.max_timestamp) > ms as i64
                });
                if !(over_size || expired) {
                    break;
                }
                total -= size;
                doomed.push(*base);
            }
            let doomed: Vec<_> = doomed
                .into_iter()
                .map(|base| (base, state.segments.remove(&base).unwrap().file))
                .collect();
            if !doomed.is_empty() {
                state.log_start_offset = state
                    .log_start_offset
                    .max(*state.segments.keys().next().unwrap());
                self.with_cache(|cache| cache.drop_below(state.log_start_offset));
                self.invalidate_positions(&mut state);
                tracing::info!(log = %self.name, segments = doomed.len(), log_start_offset = state.log_start_offset, "retention deleted segments");
            }
            doomed
        };
        self.remove_segments(doomed).await
    }

    /// Deletes every finalized segment that holds only offsets below `offset`
    /// (for logs whose content is kept elsewhere, e.g. in a snapshot), and
    /// advances the log start offset. The active segment is kept.
    pub async fn delete_segments_before(self: &Rc<Self>, offset: i64) -> LogResult<usize> {
        let doomed: Vec<(i64, Option<Rc<D::File>>)> = {
            let mut state = self.state.borrow_mut();
            state.usable()?;
            let bases: Vec<i64> = state.segments.keys().copied().collect();
            let mut doomed = Vec::new();
            for pair in bases.windows(2) {
                let (base, next_base) = (pair[0], pair[1]);
                if next_base <= offset
                    && state.segments[&base].finalized
                    && state.compacting_segment != Some(base)
                {
                    doomed.push(base);
                } else {
                    break;
                }
            }
            let doomed: Vec<_> = doomed
                .into_iter()
                .map(|b| (b, state.segments.remove(&b).unwrap().file))
                .collect();
            if !doomed.is_empty() {
                state.log_start_offset = state
                    .log_start_offset
                    .max(*state.segments.keys().next().unwrap());
                self.with_cache(|cache| cache.drop_below(state.log_start_offset));
                self.invalidate_positions(&mut state);
            }
            doomed
        };
        self.remove_segments(doomed).await
    }

    /// Moves the log start offset up to `offset` (DeleteRecords): records
    /// below it are no longer served, segments wholly below it are deleted,
    /// and the new start is persisted before it is published, so a crash
    /// never brings hidden records back. `offset` may not pass the high
    /// watermark; an offset at or below the current start changes nothing.
    /// Returns the log start offset after the call.
    pub async fn delete_records_before(self: &Rc<Self>, offset: i64) -> LogResult<i64> {
        loop {
            let target = {
                let state = self.state.borrow();
                state.usable()?;
                if offset > state.high_watermark || offset < 0 {
                    return Err(LogError::OffsetOutOfRange {
                        offset,
                        log_start_offset: state.log_start_offset,
                        high_watermark: state.high_watermark,
                    });
                }
                if offset <= state.log_start_offset {
                    return Ok(state.log_start_offset);
                }
                offset
            };
            self.persist_offset_file(LOG_START_OFFSET_FILE, target)
                .await?;
            let mut state = self.state.borrow_mut();
            if state.log_start_offset <= target {
                state.log_start_offset = target;
                self.with_cache(|cache| cache.drop_below(target));
                tracing::info!(log = %self.name, log_start_offset = target, "log start offset moved (records deleted)");
                break;
            }
            // A concurrent call published a larger start while this one wrote
            // its file, which may have landed last: write it again.
        }
        self.delete_segments_before(offset).await?;
        Ok(self.state.borrow().log_start_offset)
    }

    /// Writes a small offset file (`name`) durably: temp file, rename, directory sync.
    pub(crate) async fn persist_offset_file(&self, name: &str, offset: i64) -> LogResult<()> {
        let temp = format!("{name}.tmp");
        write_whole_file(&self.dir, &temp, format!("{offset}\n").as_bytes())
            .await
            .map_err(|e| e.into_log_error())?;
        self.dir.rename(&temp, name).await.map_err(io_err)?;
        self.dir.sync().await.map_err(io_err)
    }

    /// Closes and deletes segments already taken out of the map; returns how many.
    async fn remove_segments(&self, doomed: Vec<(i64, Option<Rc<D::File>>)>) -> LogResult<usize> {
        let count = doomed.len();
        for (base, file) in doomed {
            if let Some(file) = file {
                close_file(file).await;
            }
            self.remove_segment_files(base).await?;
        }
        if count > 0 {
            self.dir.sync().await.map_err(io_err)?;
        }
        Ok(count)
    }

    async fn remove_segment_files(&self, base: i64) -> LogResult<()> {
        for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            remove_if_exists(&self.dir, &segment_file_name(base, suffix))
                .await
                .map_err(io_err)?;
        }
        Ok(())
    }

    /// Removes every batch from the one that contains `offset` on, so that the
    /// log ends at a batch boundary ≤ `offset` (for replication). Truncating to
    /// or below the log start empties the log and restarts it at `offset`.
    pub async fn truncate_to(self: &Rc<Self>, offset: i64) -> LogResult<()> {
        self.cut(offset, false).await
    }

    /// Empties the log and restarts it at `offset`, which may lie past its
    /// end: a replica too far behind its leader, whose log starts later,
    /// starts over where the leader's log starts.
    pub async fn reset_to(self: &Rc<Self>, offset: i64) -> LogResult<()> {
        self.cut(offset, true).await
    }

    async fn cut(self: &Rc<Self>, offset: i64, restart: bool) -> LogResult<()> {
        self.flush().await?;
        let (doomed, containing) = {
            let mut state = self.state.borrow_mut();
            state.writable()?;
            if state.next_offset != state.high_watermark || state.compacting {
                // An append came in after the flush, or a compaction is
                // rewriting segments: let it finish first.
                return Err(LogError::Busy);
            }
            if offset >= state.high_watermark && !restart {
                return Ok(());
            }
            // Until the replacement segment is in place, appends, reads and
            // retention get Busy instead of a half-truncated log.
            state.truncating = true;
            let full = restart || offset <= state.log_start_offset;
            self.with_cache(|cache| {
                if full {
                    cache.clear()
                } else {
                    cache.drop_from(offset)
                }
            });
            self.invalidate_positions(&mut state);
            let cut_from = if full { i64::MIN } else { offset };
            let doomed_bases: Vec<i64> = state
                .segments
                .range(cut_from.max(0)..)
                .map(|(b, _)| *b)
                .collect();
            let doomed_bases = if full {
                state.segments.keys().copied().collect()
            } else {
                doomed_bases
            };
            let doomed: Vec<(i64, Option<Rc<D::File>>)> = doomed_bases
                .into_iter()
                .map(|b| (b, state.segments.remove(&b).unwrap().file))
                .collect();
            let containing = state.segments.values().next_back().map(|s| {
                (
                    s.base_offset,
                    s.file.clone().expect("segment with data has a file"),
                    s.durable_bytes(),
                )
            });
            (doomed, containing)
        };
        let result = self.truncate_files(offset, doomed, containing).await;
        let mut state = self.state.borrow_mut();
        state.truncating = false;
        match result {
            Ok(segment) => {
                let next = segment.next_offset;
                state.segments.insert(segment.base_offset, segment);
                let first = *state.segments.keys().next().unwrap();
                // A partial truncation keeps a start moved by DeleteRecords.
                state.log_start_offset = if restart || offset <= state.log_start_offset {
                    first
                } else {
                    state.log_start_offset.max(first)
                };
                state.high_watermark = next;
                state.next_offset = next;
                // The cut may have ended below `offset` (a damaged batch).
                self.with_cache(|cache| cache.drop_from(next));
                tracing::info!(log = %self.name, offset, log_end_offset = next, "log truncated");
                Ok(())
            }
            Err(e) => {
                // Files may be half removed: only a reopen knows what is left.
                tracing::error!(log = %self.name, error = %e, "truncation failed: log refuses appends until recovered");
                state.poisoned = Some(e.clone());
                if state.segments.is_empty() {
                    state.closed = true;
                }
                Err(e)
            }
        }
    }

    async fn truncate_files(
        self: &Rc<Self>,
        offset: i64,
        doomed: Vec<(i64, Option<Rc<D::File>>)>,
        containing: Option<(i64, Rc<D::File>, u64)>,
    ) -> LogResult<Segment<D::File>> {
        for (base, file) in doomed {
            if let Some(file) = file {
                close_file(file).await;
            }
            self.remove_segment_files(base).await?;
        }
        let segment = match containing {
            None => {
                let base = offset.max(0);
                let file = self
                    .dir
                    .open(&segment_file_name(base, LOG_SUFFIX), true)
                    .await
                    .map_err(io_err)?;
                let mut segment = empty_segment(&self.dir, base, &self.config());
                segment.file = Some(Rc::new(file));
                segment
            }
            Some((base, file, size)) => {
                let mut indexes = SegmentIndexes::new();
                let scan = scan_batches(
                    &*file,
                    base,
                    0,
                    size,
                    Some(base),
                    true,
                    Some(offset),
                    &mut indexes,
                    self.config().index_interval_bytes,
                )
                .await
                .map_err(io_err)?;
                let end = scan.valid_end;
                file.set_len(end).await.map_err(io_err)?;
                file.sync_data().await.map_err(io_err)?;
                let page_start = align_down(end);
                let page = file
                    .read_at(page_start, (end - page_start) as usize)
                    .await
                    .map_err(io_err)?;
                let next = scan.next_offset.unwrap_or(base);
                Segment {
                    base_offset: base,
                    file: Some(file),
                    indexes,
                    next_offset: next,
                    allocated_bytes: end,
                    tail: TailWriter::new(
                        &self.dir,
                        end,
                        page.to_vec(),
                        self.config().write_buffer_bytes,
                    ),
                    sealed: false,
                    finalized: false,
                    created_at_ms: now_ms(),
                    cut_before_write: None,
                }
            }
        };
        self.dir.sync().await.map_err(io_err)?;
        Ok(segment)
    }
}

fn empty_segment<D: StorageDir>(dir: &D, base: i64, config: &LogConfig) -> Segment<D::File> {
    Segment {
        base_offset: base,
        file: None,
        indexes: SegmentIndexes::new(),
        next_offset: base,
        allocated_bytes: 0,
        tail: TailWriter::new(dir, 0, Vec::new(), config.write_buffer_bytes),
        sealed: false,
        finalized: false,
        created_at_ms: now_ms(),
        cut_before_write: None,
    }
}

/// Scans the last segment of a log that was not closed cleanly, cuts it after
/// the last valid batch, and rebuilds its indexes.
async fn recover_tail<D: StorageDir>(
    dir: &D,
    file: &D::File,
    base: i64,
    file_bytes: u64,
    config: &LogConfig,
    name: &str,
) -> LogResult<(SegmentIndexes, u64, i64)> {
    let mut indexes = SegmentIndexes::new();
    let scan = scan_batches(
        file,
        base,
        0,
        file_bytes,
        Some(base),
        false,
        None,
        &mut indexes,
        config.index_interval_bytes,
    )
    .await
    .map_err(io_err)?;
    if scan.valid_end < file_bytes {
        let tail_is_zero = match file
            .read_at(
                scan.valid_end,
                4096.min((file_bytes - scan.valid_end) as usize),
            )
            .await
        {
            Ok(bytes) => bytes.iter().all(|b| *b == 0),
            Err(_) => false,
        };
        if tail_is_zero {
            tracing::debug!(log = %name, segment = base, valid_bytes = scan.valid_end, "cutting preallocated tail");
        } else {
            tracing::warn!(
                log = %name, segment = base, valid_bytes = scan.valid_end, file_bytes,
                reason = scan.stopped_by.as_deref().unwrap_or("end"),
                "truncating torn or corrupt tail"
            );
        }
        file.set_len(scan.valid_end).await.map_err(io_err)?;
        file.sync_data().await.map_err(io_err)?;
    }
    // Index files of the active segment are rewritten at seal or clean close.
    for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        remove_if_exists(dir, &segment_file_name(base, suffix))
            .await
            .map_err(io_err)?;
    }
    let next = scan.next_offset.unwrap_or(base);
    Ok((indexes, scan.valid_end, next))
}

/// Loads a segment's index files and checks them against the data; rebuilds
/// (and, for sealed segments, rewrites) them when they are missing or wrong.
async fn load_or_rebuild_indexes<D: StorageDir>(
    dir: &D,
    file: &D::File,
    base: i64,
    file_bytes: u64,
    config: &LogConfig,
    name: &str,
    sealed: bool,
) -> LogResult<SegmentIndexes> {
    let offset_index = read_whole(dir, &segment_file_name(base, INDEX_SUFFIX))
        .await
        .map_err(io_err)?
        .and_then(|b| OffsetIndex::decode(&b));
    let time_index = read_whole(dir, &segment_file_name(base, TIME_INDEX_SUFFIX))
        .await
        .map_err(io_err)?
        .and_then(|b| TimeIndex::decode(&b));
    if let (Some(offset_index), Some(time_index)) = (offset_index, time_index) {
        if index_matches(file, base, file_bytes, &offset_index).await {
            let last_position = offset_index.entries.last().map_or(0, |e| e.position as u64);
            let (max_timestamp, offset_of_max_timestamp) =
                time_index.entries.last().map_or((-1, -1), |e| {
                    (e.max_timestamp, base + e.relative_offset as i64)
                });
            return Ok(SegmentIndexes {
                offset_index,
                time_index,
                bytes_since_entry: file_bytes - last_position,
                max_timestamp,
                offset_of_max_timestamp,
            });
        }
    }
    tracing::warn!(log = %name, segment = base, "index missing or does not match data: rebuilding");
    let mut indexes = SegmentIndexes::new();
    let scan = scan_batches(
        file,
        base,
        0,
        file_bytes,
        Some(base),
        true,
        None,
        &mut indexes,
        config.index_interval_bytes,
    )
    .await
    .map_err(io_err)?;
    if let Some(reason) = scan.stopped_by {
        tracing::error!(log = %name, segment = base, position = scan.valid_end, %reason,
            "sealed segment has a bad batch: kept, reads past it fail");
    }
    if sealed {
        indexes.seal(base);
        write_index_files(dir, base, &indexes).await?;
    }
    Ok(indexes)
}

async fn write_index_files<D: StorageDir>(
    dir: &D,
    base: i64,
    indexes: &SegmentIndexes,
) -> LogResult<()> {
    for (suffix, bytes) in [
        (INDEX_SUFFIX, indexes.offset_index.encode()),
        (TIME_INDEX_SUFFIX, indexes.time_index.encode()),
    ] {
        write_whole_file(dir, &segment_file_name(base, suffix), &bytes)
            .await
            .map_err(|e| e.into_log_error())?;
    }
    dir.sync().await.map_err(io_err)
}

/// The last index entry must point at a batch with the offset it claims.
async fn index_matches<F: StorageFile>(
    file: &F,
    base: i64,
    file_bytes: u64,
    index: &OffsetIndex,
) -> bool {
    let Some(last) = index.entries.last() else {
        return true;
    };
    if last.position as u64 >= file_bytes {
        return false;
    }
    match file
        .read_at(
            last.position as u64,
            sluice_protocol::record_batch::HEADER_BYTES,
        )
        .await
    {
        Ok(bytes) => BatchHeader::parse(&bytes).is_ok_and(|h| {
            h.base_offset == base + last.relative_offset as i64
                && last.position as u64 + h.total_bytes() as u64 <= file_bytes
        }),
        Err(_) => false,
    }
}
