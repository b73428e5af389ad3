//! The partition log: append with group commit, read, lookups.
//!
//! Lives on one core (`Rc`, `RefCell`); no borrow of the state is held across
//! an `.await`. Every mutation happens in a synchronous step; I/O happens
//! between steps, driven by one flusher task per log.

use crate::cache::CacheSlot;
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{LogError, LogResult};
use crate::event::Event;
use crate::io::{StorageDir, StorageFile};
use crate::records::Records;
use crate::segment::{
    align_up, segment_file_name, ChunkWrite, Segment, SegmentIndexes, TailWriter, INDEX_SUFFIX,
    LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use bytes::Bytes;
use sluice_protocol::record_batch::{
    self, record_timestamps, validate_batch, validate_batch_prefix, BatchHeader, HEADER_BYTES,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Not;
use std::rc::Rc;

/// How an append should rewrite the batch (fields a broker owns).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppendOptions {
    /// Set for topics with `message.timestamp.type=LogAppendTime`.
    pub log_append_time_ms: Option<i64>,
    pub partition_leader_epoch: i32,
}

/// What an append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub log_append_time_ms: Option<i64>,
    pub log_start_offset: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

/// Whole batches read from the log.
#[derive(Debug, Clone)]
pub struct ReadBatches {
    /// Whole batches, byte for byte as stored. Empty at the end of the log.
    pub records: Records,
    /// One past the last offset in `records` (the offset to read next).
    pub next_offset: i64,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// A point in time of the log, for metrics and ListOffsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start_offset: i64,
    /// One past the last durable offset: what consumers may read up to.
    pub high_watermark: i64,
    pub size_bytes: u64,
    pub segment_count: usize,
}

struct PendingBatch {
    segment_base: i64,
    position: u64,
    header: BatchHeader,
    /// The batch as stored, for the tail cache once it is durable.
    stored: Option<Bytes>,
}

struct Failure {
    /// Failure number; appends made before it carry `epoch - 1`.
    epoch: u64,
    /// Appends whose last offset is below this survived the failure.
    high_watermark: i64,
    error: LogError,
}

pub(crate) struct LogState<F: StorageFile> {
    pub(crate) segments: BTreeMap<i64, Segment<F>>,
    pub(crate) log_start_offset: i64,
    pub(crate) high_watermark: i64,
    /// Next offset to assign, pending appends included.
    pub(crate) next_offset: i64,
    pending: VecDeque<PendingBatch>,
    flight_batches: usize,
    flusher_running: bool,
    failure_epoch: u64,
    failures: VecDeque<Failure>,
    pub(crate) poisoned: Option<LogError>,
    pub(crate) closed: bool,
    /// `truncate_to` is between its steps: appends and reads wait it out (Busy).
    pub(crate) truncating: bool,
    last_sync_ms: u64,
    unsynced_files: Vec<i64>,
    /// The first offset compaction has not covered (`None`: never compacted).
    pub(crate) cleaner_offset: Option<i64>,
    /// A compaction run is under way (one at a time).
    pub(crate) compacting: bool,
    /// The segment whose files compaction is swapping: retention and
    /// DeleteRecords stop before it.
    pub(crate) compacting_segment: Option<i64>,
    /// Raised whenever bytes at a known file position may change or a file
    /// goes (truncation, compaction swap, retention, close): a read-ahead
    /// window from an older generation is never armed or used.
    pub(crate) generation: u64,
}

impl<F: StorageFile> LogState<F> {
    pub(crate) fn new(segments: BTreeMap<i64, Segment<F>>, next_offset: i64) -> LogState<F> {
        let log_start_offset = *segments.keys().next().expect("a log has a segment");
        LogState {
            segments,
            log_start_offset,
            high_watermark: next_offset,
            next_offset,
            pending: VecDeque::new(),
            flight_batches: 0,
            flusher_running: false,
            failure_epoch: 0,
            failures: VecDeque::new(),
            poisoned: None,
            closed: false,
            truncating: false,
            last_sync_ms: now_ms(),
            unsynced_files: Vec::new(),
            cleaner_offset: None,
            compacting: false,
            compacting_segment: None,
            generation: 0,
        }
    }

    /// Closed and mid-truncation logs serve nothing.
    pub(crate) fn usable(&self) -> LogResult<()> {
        if self.closed {
            return Err(LogError::Closed);
        }
        if self.truncating {
            return Err(LogError::Busy);
        }
        Ok(())
    }

    /// Usable, and not refusing appends after a failed sync or truncation.
    pub(crate) fn writable(&self) -> LogResult<()> {
        self.usable()?;
        match &self.poisoned {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    pub(crate) fn active(&mut self) -> &mut Segment<F> {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log has a segment")
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A partition's log. Single-core: create, use and drop it on one executor.
pub struct PartitionLog<D: StorageDir> {
    pub(crate) dir: D,
    pub(crate) config: std::cell::Cell<LogConfig>,
    pub(crate) name: String,
    pub(crate) state: RefCell<LogState<D::File>>,
    /// Notified after every flush round (durable data may have grown).
    pub(crate) flushed: Event,
    /// This log's share of its core's tail cache.
    pub(crate) cache: RefCell<Option<CacheSlot>>,
    /// The next window of a segment, read ahead of a consumer catching up.
    pub(crate) read_ahead: RefCell<Option<ReadAhead<D::File>>>,
}

/// A read issued ahead of a catch-up consumer: the window that starts where
/// its last read from disk ended. Dropping it cancels the read.
pub(crate) struct ReadAhead<F: StorageFile> {
    file: Rc<F>,
    segment_base: i64,
    position: u64,
    /// The offset the next read starts at (the batch at `position`).
    offset: i64,
    generation: u64,
    task: glommio::Task<std::io::Result<Bytes>>,
    /// Counts against the core's read-ahead allowance until dropped.
    _permit: crate::cache::ReadAheadPermit,
}

/// Everything a flush round does to one segment.
struct SegmentFlight<F: StorageFile> {
    base_offset: i64,
    file: Option<Rc<F>>,
    allocated_bytes: u64,
    flight: Option<(Vec<ChunkWrite<F::Buf>>, u64)>,
    /// Cut the file here before writing: bytes of a failed round may be on disk.
    cut_to: Option<u64>,
    /// Set when the segment is sealed: its final indexes and size.
    finalize: Option<(SegmentIndexes, u64)>,
}

/// Which kind of step an I/O error came from: a failed write leaves the log
/// usable, a failed sync does not.
#[derive(Debug)]
pub(crate) enum IoStep {
    Write(std::io::Error),
    Sync(std::io::Error),
}

impl IoStep {
    pub(crate) fn into_log_error(self) -> LogError {
        match self {
            IoStep::Write(e) => LogError::io(e),
            IoStep::Sync(e) => LogError::SyncFailed(e.into()),
        }
    }
}

enum FlightOutcome {
    Done,
    WriteFailed(LogError),
    SyncFailed(LogError),
}

struct RoundResult<F: StorageFile> {
    /// Base offsets of the segments in this round, in order.
    planned: Vec<i64>,
    /// Those of them that were sealed and finalized in this round.
    finalizing: Vec<i64>,
    created: Vec<(i64, Rc<F>)>,
    allocated: Vec<(i64, u64)>,
    /// Segments (in order) whose flight fully completed.
    completed: usize,
    outcome: FlightOutcome,
}

impl<D: StorageDir + 'static> PartitionLog<D> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> LogConfig {
        self.config.get()
    }

    /// Serves reads of recently written batches from the core's tail cache
    /// from now on (batches made durable from here on enter it).
    pub fn set_cache(&self, slot: CacheSlot) {
        *self.cache.borrow_mut() = Some(slot);
    }

    /// Files or bytes at known positions are about to change: no read-ahead
    /// window from before survives, and none started before is armed.
    pub(crate) fn invalidate_positions(&self, state: &mut LogState<D::File>) {
        state.generation += 1;
        self.read_ahead.borrow_mut().take();
    }

    /// Stops serving reads from the cache (its batches stay until the slot
    /// is dropped or given back with `set_cache`).
    pub fn take_cache(&self) -> Option<CacheSlot> {
        self.cache.borrow_mut().take()
    }

    /// Runs `f` on the cache slot, if the log has one.
    pub(crate) fn with_cache(&self, f: impl FnOnce(&CacheSlot)) {
        if let Some(slot) = self.cache.borrow().as_ref() {
            f(slot)
        }
    }

    fn caching(&self, len: usize) -> bool {
        self.cache.borrow().as_ref().is_some_and(|s| s.takes(len))
    }

    /// Applies changed topic settings (retention, segment size and age, index
    /// interval, compaction) from the next append, retention check or
    /// compaction on. How the log writes (flush policy, buffers) stays as opened.
    pub fn set_config(&self, next: LogConfig) -> Result<(), String> {
        let current = self.config.get();
        let next = LogConfig {
            flush: current.flush,
            preallocate_bytes: current.preallocate_bytes,
            write_buffer_bytes: current.write_buffer_bytes,
            ..next
        };
        next.validate()?;
        self.config.set(next);
        Ok(())
    }

    pub fn offsets(&self) -> LogOffsets {
        let state = self.state.borrow();
        LogOffsets {
            log_start_offset: state.log_start_offset,
            high_watermark: state.high_watermark,
            size_bytes: state.segments.values().map(|s| s.durable_bytes()).sum(),
            segment_count: state.segments.len(),
        }
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.state.borrow().segments.keys().copied().collect()
    }

    /// Completes at the next flush round: the high watermark may have moved.
    /// Long-poll fetches wait on this instead of polling a timer.
    pub async fn wait_for_flush(&self) {
        self.flushed.listen().await
    }

    /// Validates `batch`, assigns its offsets, and completes once it is durable
    /// (per the flush policy). A bad batch is rejected with nothing written.
    pub async fn append(
        self: &Rc<Self>,
        batch: &[u8],
        options: AppendOptions,
    ) -> LogResult<AppendInfo> {
        let mut header = validate_batch(batch)?;
        let batch_bytes = self.fits_segment(batch)?;
        let (info, target, epoch) = {
            let mut state = self.state.borrow_mut();
            state.writable()?;
            let base_offset = state.next_offset;
            self.maybe_roll(&mut state, &header, batch_bytes);
            let copy;
            let stored = match options.log_append_time_ms {
                Some(time) => {
                    let mut bytes = batch.to_vec();
                    record_batch::set_log_append_time(&mut bytes, time);
                    header.max_timestamp = time;
                    header.attributes |= record_batch::ATTRIBUTE_LOG_APPEND_TIME;
                    copy = bytes;
                    &copy[..]
                }
                None => batch,
            };
            header.base_offset = base_offset;
            header.partition_leader_epoch = options.partition_leader_epoch;
            let info = self.stage(&mut state, stored, header, true);
            (
                AppendInfo {
                    log_append_time_ms: options.log_append_time_ms,
                    ..info
                },
                state.next_offset,
                state.failure_epoch,
            )
        };
        self.start_flusher();
        self.wait_durable(target, epoch).await?;
        Ok(info)
    }

    /// Appends a batch copied from the partition's leader exactly as the
    /// leader stored it: its base offset (at or past this log's end; the
    /// leader's compaction leaves gaps) and leader epoch stay. Completes once
    /// durable. A compacted batch may hold fewer records than its offset span,
    /// so only the header, length and CRC are checked.
    pub async fn append_replica(self: &Rc<Self>, batch: &[u8]) -> LogResult<AppendInfo> {
        let header = validate_batch_prefix(batch)?;
        if header.total_bytes() != batch.len() {
            return Err(LogError::InvalidBatch(
                record_batch::BatchError::LengthInvalid {
                    batch_length: header.batch_length,
                },
            ));
        }
        let batch_bytes = self.fits_segment(batch)?;
        let (info, target, epoch) = {
            let mut state = self.state.borrow_mut();
            state.writable()?;
            if header.base_offset < state.next_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset: header.base_offset,
                    log_start_offset: state.log_start_offset,
                    high_watermark: state.next_offset,
                });
            }
            state.next_offset = header.base_offset;
            self.maybe_roll(&mut state, &header, batch_bytes);
            let info = self.stage(&mut state, batch, header, false);
            (info, state.next_offset, state.failure_epoch)
        };
        self.start_flusher();
        self.wait_durable(target, epoch).await?;
        Ok(info)
    }

    /// Puts a batch whose offsets are decided into the active segment's tail
    /// (`patch`: write the header's base offset and leader epoch into it).
    fn stage(
        &self,
        state: &mut LogState<D::File>,
        batch: &[u8],
        header: BatchHeader,
        patch: bool,
    ) -> AppendInfo {
        let stored = self.caching(batch.len()).then(|| {
            let mut bytes = bytes::BytesMut::from(batch);
            if patch {
                bytes[0..8].copy_from_slice(&header.base_offset.to_be_bytes());
                bytes[12..16].copy_from_slice(&header.partition_leader_epoch.to_be_bytes());
            }
            bytes.freeze()
        });
        let active = state.active();
        let position = active.tail.append(&self.dir, batch);
        if patch {
            active
                .tail
                .patch(position, 0, &header.base_offset.to_be_bytes());
            active
                .tail
                .patch(position, 12, &header.partition_leader_epoch.to_be_bytes());
        }
        let segment_base = active.base_offset;
        state.pending.push_back(PendingBatch {
            segment_base,
            position,
            header,
            stored,
        });
        state.next_offset = header.last_offset() + 1;
        AppendInfo {
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
            log_append_time_ms: None,
            log_start_offset: state.log_start_offset,
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
            records_count: header.records_count,
        }
    }

    /// The batch's size, if a segment can hold it.
    fn fits_segment(&self, batch: &[u8]) -> LogResult<u64> {
        let batch_bytes = batch.len() as u64;
        let segment_bytes = self.config().segment_bytes;
        if batch_bytes > segment_bytes {
            return Err(LogError::BatchTooLarge {
                batch_bytes,
                segment_bytes,
            });
        }
        Ok(batch_bytes)
    }

    /// Seals the active segment and starts a new one when the batch does not
    /// fit, the segment is too old, or offsets would overflow its index.
    fn maybe_roll(&self, state: &mut LogState<D::File>, header: &BatchHeader, batch_bytes: u64) {
        let next_offset = state.next_offset;
        let config = self.config();
        let active = state.active();
        let used = active.tail.pending_end();
        let offset_span = next_offset + header.last_offset_delta as i64 - active.base_offset;
        let too_old = config
            .segment_ms
            .is_some_and(|ms| used > 0 && now_ms().saturating_sub(active.created_at_ms) >= ms);
        let roll = active.sealed
            || (used > 0 && used + batch_bytes > config.segment_bytes)
            || (used > 0 && offset_span > u32::MAX as i64 / 2)
            || too_old;
        if !roll {
            return;
        }
        active.sealed = true;
        let segment = Segment {
            base_offset: next_offset,
            file: None,
            indexes: SegmentIndexes::new(),
            next_offset,
            allocated_bytes: 0,
            tail: TailWriter::new(&self.dir, 0, Vec::new(), config.write_buffer_bytes),
            sealed: false,
            finalized: false,
            created_at_ms: now_ms(),
            cut_before_write: None,
        };
        let previous = state.segments.insert(next_offset, segment);
        assert!(previous.is_none(), "segment {next_offset} rolled twice");
    }

    fn start_flusher(self: &Rc<Self>) {
        {
            let mut state = self.state.borrow_mut();
            if state.flusher_running {
                return;
            }
            state.flusher_running = true;
        }
        let log = self.clone();
        glommio::spawn_local(async move { log.flush_rounds().await }).detach();
    }

    async fn wait_durable(&self, target: i64, epoch: u64) -> LogResult<()> {
        loop {
            let listen = {
                let state = self.state.borrow();
                if state.failure_epoch != epoch {
                    // The first failure after this append decides it.
                    return match state.failures.iter().find(|f| f.epoch == epoch + 1) {
                        Some(failure) if target <= failure.high_watermark => Ok(()),
                        Some(failure) => Err(failure.error.clone()),
                        None => Err(LogError::io(std::io::Error::other("append outcome lost"))),
                    };
                }
                if state.high_watermark >= target {
                    return Ok(());
                }
                self.flushed.listen()
            };
            listen.await;
        }
    }

    async fn flush_rounds(self: Rc<Self>) {
        loop {
            // Let every append of this tick join the round (group commit).
            futures_lite::future::yield_now().await;
            let flights = {
                let mut state = self.state.borrow_mut();
                let flights = self.plan_round(&mut state);
                if flights.is_empty() {
                    state.flusher_running = false;
                    break;
                }
                flights
            };
            let result = self.execute_round(flights).await;
            let failed = !matches!(result.outcome, FlightOutcome::Done);
            self.apply_round(result).await;
            if failed {
                // No retry loop on a failing device: the next append starts a
                // new flusher (and retries a pending seal).
                self.state.borrow_mut().flusher_running = false;
                break;
            }
            self.flushed.notify();
        }
        self.flushed.notify();
    }

    fn plan_round(&self, state: &mut LogState<D::File>) -> Vec<SegmentFlight<D::File>> {
        assert_eq!(state.flight_batches, 0);
        let Some(&last_base) = state.segments.keys().next_back() else {
            return Vec::new(); // mid-truncation: nothing pending
        };
        let mut flights = Vec::new();
        let pending = &state.pending;
        for (base, segment) in state.segments.iter_mut() {
            let has_pending = segment.tail.pending_end() > segment.tail.durable_end;
            let finalize = segment.sealed && !segment.finalized && *base != last_base;
            if !has_pending && !finalize {
                continue;
            }
            let flight = segment.tail.take_flight(&self.dir);
            let finalize = finalize.then(|| {
                let mut indexes = segment.indexes.clone();
                for batch in pending.iter().filter(|b| b.segment_base == *base) {
                    indexes.observe_batch(
                        *base,
                        batch.position,
                        &batch.header,
                        self.config().index_interval_bytes,
                    );
                }
                indexes.seal(*base);
                (indexes, segment.tail.pending_end())
            });
            let cut_to = segment.cut_before_write.take();
            flights.push(SegmentFlight {
                cut_to,
                base_offset: *base,
                file: segment.file.clone(),
                allocated_bytes: segment.allocated_bytes,
                flight,
                finalize,
            });
        }
        state.flight_batches = state.pending.len();
        flights
    }

    async fn execute_round(&self, flights: Vec<SegmentFlight<D::File>>) -> RoundResult<D::File> {
        let mut result = RoundResult {
            planned: flights.iter().map(|f| f.base_offset).collect(),
            finalizing: flights
                .iter()
                .filter(|f| f.finalize.is_some())
                .map(|f| f.base_offset)
                .collect(),
            created: Vec::new(),
            allocated: Vec::new(),
            completed: 0,
            outcome: FlightOutcome::Done,
        };
        crate::stats::record_round();
        let sync_now = match self.config().flush {
            FlushPolicy::Always => true,
            FlushPolicy::UnsafeIntervalMs(ms) => {
                now_ms().saturating_sub(self.state.borrow().last_sync_ms) >= ms
            }
        };
        for flight in flights {
            match self.execute_segment(flight, sync_now, &mut result).await {
                FlightOutcome::Done => result.completed += 1,
                failed => {
                    result.outcome = failed;
                    break;
                }
            }
        }
        if sync_now && matches!(result.outcome, FlightOutcome::Done) {
            // Under the relaxed policy, files written in earlier rounds are due too.
            let earlier: Vec<Rc<D::File>> = {
                let mut state = self.state.borrow_mut();
                state.last_sync_ms = now_ms();
                let bases = std::mem::take(&mut state.unsynced_files);
                bases
                    .iter()
                    .filter_map(|b| state.segments.get(b).and_then(|s| s.file.clone()))
                    .collect()
            };
            for file in earlier {
                if let Err(e) = file.sync_data().await {
                    result.outcome = FlightOutcome::SyncFailed(LogError::SyncFailed(e.into()));
                    break;
                }
            }
        }
        result
    }

    async fn execute_segment(
        &self,
        flight: SegmentFlight<D::File>,
        sync_now: bool,
        result: &mut RoundResult<D::File>,
    ) -> FlightOutcome {
        let base = flight.base_offset;
        // The buffers left the tail (`take_flight`): counted in flight from
        // here, through the segment's creation and preallocation, to the
        // end of the writes.
        let flight_bytes = flight.flight.as_ref().map_or(0, |(writes, _)| {
            writes
                .iter()
                .map(|(_, buf)| crate::io::IoBuf::as_bytes(&**buf).len() as u64)
                .sum()
        });
        let in_flight = crate::stats::InFlight::new(flight_bytes);
        let file = match flight.file {
            Some(file) => file,
            None => {
                let file = match self
                    .dir
                    .open(&segment_file_name(base, LOG_SUFFIX), true)
                    .await
                {
                    Ok(file) => Rc::new(file),
                    Err(e) => {
                        return FlightOutcome::WriteFailed(self.io_failure("create segment", e))
                    }
                };
                result.created.push((base, file.clone()));
                // A failed directory fsync is a failed fsync: no silent retry.
                if let Err(e) = self.dir.sync().await {
                    tracing::error!(log = %self.name, segment = base, error = %e, "directory fsync failed: log refuses appends until recovered");
                    return FlightOutcome::SyncFailed(LogError::SyncFailed(e.into()));
                }
                file
            }
        };
        if let Some(len) = flight.cut_to {
            if let Err(e) = file.set_len(len).await {
                return FlightOutcome::WriteFailed(self.io_failure("cut after a failed write", e));
            }
        }
        if let Some((writes, end)) = flight.flight {
            let write_end = align_up(end);
            if write_end > flight.allocated_bytes && self.config().preallocate_bytes > 0 {
                let step = self.config().preallocate_bytes;
                let target = write_end.div_ceil(step) * step;
                let target = target
                    .min(align_up(self.config().segment_bytes))
                    .max(write_end);
                match file.allocate(target).await {
                    Ok(()) => result.allocated.push((base, target)),
                    // Not fatal: a full disk may still take this write; if not,
                    // the write itself fails with ENOSPC below.
                    Err(e) => tracing::debug!(log = %self.name, error = %e, "preallocation failed"),
                }
            }
            crate::stats::record_written(flight_bytes);
            // All chunks in flight at once; the first error wins.
            let results = crate::event::join_all(
                writes
                    .iter()
                    .map(|(position, buf)| file.write_at(buf.clone(), *position))
                    .collect(),
            )
            .await;
            drop(in_flight);
            for (_, buf) in writes {
                if let Ok(buf) = Rc::try_unwrap(buf) {
                    self.dir.recycle_buf(buf);
                }
            }
            if let Some(e) = results.into_iter().find_map(|r| r.err()) {
                return FlightOutcome::WriteFailed(self.io_failure("write", e));
            }
        }
        if let Some((indexes, size)) = flight.finalize {
            match self.finalize_segment(&file, base, &indexes, size).await {
                Ok(()) => {}
                Err(IoStep::Write(e)) => {
                    return FlightOutcome::WriteFailed(self.io_failure("seal segment", e))
                }
                Err(IoStep::Sync(e)) => {
                    tracing::error!(log = %self.name, segment = base, error = %e, "fdatasync failed while sealing: log refuses appends until recovered");
                    return FlightOutcome::SyncFailed(LogError::SyncFailed(e.into()));
                }
            }
        }
        if sync_now {
            let started = std::time::Instant::now();
            let synced = file.sync_data().await;
            crate::stats::record_sync(started.elapsed());
            if let Err(e) = synced {
                tracing::error!(log = %self.name, segment = base, error = %e, "fdatasync failed: log refuses appends until recovered");
                return FlightOutcome::SyncFailed(LogError::SyncFailed(e.into()));
            }
        } else {
            let mut state = self.state.borrow_mut();
            if !state.unsynced_files.contains(&base) {
                state.unsynced_files.push(base);
            }
        }
        FlightOutcome::Done
    }

    fn io_failure(&self, what: &str, error: std::io::Error) -> LogError {
        let error = LogError::io(error);
        if error.is_disk_full() {
            tracing::error!(log = %self.name, "{what}: disk full (ENOSPC); appends fail until space is freed");
        } else {
            tracing::error!(log = %self.name, error = %error, "{what} failed");
        }
        error
    }

    /// Cuts the preallocated tail, writes both index files, syncs.
    pub(crate) async fn finalize_segment(
        &self,
        file: &D::File,
        base: i64,
        indexes: &SegmentIndexes,
        size: u64,
    ) -> Result<(), IoStep> {
        file.set_len(size).await.map_err(IoStep::Write)?;
        self.write_whole_file(
            &segment_file_name(base, INDEX_SUFFIX),
            &indexes.offset_index.encode(),
        )
        .await?;
        self.write_whole_file(
            &segment_file_name(base, TIME_INDEX_SUFFIX),
            &indexes.time_index.encode(),
        )
        .await?;
        file.sync_data().await.map_err(IoStep::Sync)?;
        self.dir.sync().await.map_err(IoStep::Sync)
    }

    pub(crate) async fn write_whole_file(&self, name: &str, bytes: &[u8]) -> Result<(), IoStep> {
        write_whole_file(&self.dir, name, bytes).await
    }

    async fn apply_round(&self, result: RoundResult<D::File>) {
        let mut removed_files = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            for (base, file) in result.created {
                if let Some(segment) = state.segments.get_mut(&base) {
                    segment.file = Some(file);
                }
            }
            for (base, allocated) in result.allocated {
                if let Some(segment) = state.segments.get_mut(&base) {
                    segment.allocated_bytes = allocated;
                }
            }
            // The first `completed` planned segments made it.
            let completed: Vec<i64> = result
                .planned
                .iter()
                .take(result.completed)
                .copied()
                .collect();
            for base in &completed {
                let segment = state.segments.get_mut(base).unwrap();
                segment.tail.complete_flight();
                if result.finalizing.contains(base) {
                    segment.finalized = true;
                }
            }
            let flight_batches = std::mem::replace(&mut state.flight_batches, 0);
            let mut promoted = 0;
            while promoted < flight_batches {
                let batch = &state.pending[0];
                if !completed.contains(&batch.segment_base) {
                    break;
                }
                let batch = state.pending.pop_front().unwrap();
                let segment = state.segments.get_mut(&batch.segment_base).unwrap();
                segment.indexes.observe_batch(
                    batch.segment_base,
                    batch.position,
                    &batch.header,
                    self.config().index_interval_bytes,
                );
                let log_end_before = state.high_watermark;
                segment.next_offset = batch.header.last_offset() + 1;
                state.high_watermark = segment.next_offset;
                if let Some(stored) = batch.stored {
                    self.with_cache(|cache| {
                        cache.insert(
                            log_end_before,
                            batch.header.base_offset,
                            batch.header.last_offset(),
                            stored,
                        )
                    });
                }
                promoted += 1;
            }
            let error = match result.outcome {
                FlightOutcome::Done => None,
                FlightOutcome::WriteFailed(e) => Some(e),
                FlightOutcome::SyncFailed(e) => {
                    state.poisoned = Some(e.clone());
                    Some(e)
                }
            };
            if let Some(error) = error {
                // Back to the durable state: fail every append not yet durable.
                state.failure_epoch += 1;
                state.failures.push_back(Failure {
                    epoch: state.failure_epoch,
                    high_watermark: state.high_watermark,
                    error,
                });
                if state.failures.len() > 64 {
                    state.failures.pop_front();
                }
                state.pending.clear();
                state.next_offset = state.high_watermark;
                let high_watermark = state.high_watermark;
                let doomed: Vec<i64> = state
                    .segments
                    .range(high_watermark + 1..)
                    .map(|(b, _)| *b)
                    .collect();
                for base in doomed {
                    let segment = state.segments.remove(&base).unwrap();
                    if let Some(file) = segment.file {
                        removed_files.push((base, file));
                    }
                }
                for segment in state.segments.values_mut() {
                    if segment.tail.pending_end() > segment.tail.durable_end
                        || segment.tail.flight_end > segment.tail.durable_end
                    {
                        segment.tail.flight_end = segment.tail.durable_end;
                        segment.tail.roll_back(&self.dir);
                        // Some of the failed round may have reached the file: a
                        // retried batch written over it later must not make
                        // stale batches behind it look valid after a crash.
                        segment.cut_before_write = Some(segment.tail.durable_end);
                        segment.allocated_bytes =
                            segment.allocated_bytes.min(segment.tail.durable_end);
                    }
                }
                let active = state.active();
                if active.sealed && !active.finalized {
                    active.sealed = false;
                }
            }
        }
        for (base, file) in removed_files {
            drop(file);
            let _ = self.dir.remove(&segment_file_name(base, LOG_SUFFIX)).await;
        }
    }

    /// Under `UnsafeIntervalMs`, syncs files written since the last sync if the
    /// interval has passed. The shard calls this from a timer.
    pub async fn flush_if_due(self: &Rc<Self>) -> LogResult<()> {
        let FlushPolicy::UnsafeIntervalMs(ms) = self.config().flush else {
            return Ok(());
        };
        let files: Vec<Rc<D::File>> = {
            let mut state = self.state.borrow_mut();
            if state.flusher_running || now_ms().saturating_sub(state.last_sync_ms) < ms {
                return Ok(());
            }
            state.last_sync_ms = now_ms();
            let bases = std::mem::take(&mut state.unsynced_files);
            bases
                .iter()
                .filter_map(|b| state.segments.get(b).and_then(|s| s.file.clone()))
                .collect()
        };
        for file in files {
            if let Err(e) = file.sync_data().await {
                let error = LogError::SyncFailed(e.into());
                self.state.borrow_mut().poisoned = Some(error.clone());
                return Err(error);
            }
        }
        Ok(())
    }

    /// Waits until every append made so far has completed (or failed).
    pub async fn flush(self: &Rc<Self>) -> LogResult<()> {
        let (target, epoch) = {
            let state = self.state.borrow();
            (state.next_offset, state.failure_epoch)
        };
        self.start_flusher();
        self.wait_durable(target, epoch).await?;
        loop {
            let listen = {
                let state = self.state.borrow();
                if !state.flusher_running {
                    return Ok(());
                }
                self.flushed.listen()
            };
            listen.await;
        }
    }

    /// Reads whole batches starting with the one that contains `offset`, up to
    /// `max_bytes` (at least one batch). Every batch is CRC-checked before it is
    /// returned. `offset == high_watermark` gives an empty read.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> LogResult<ReadBatches> {
        let generation = {
            let state = self.state.borrow();
            state.usable()?;
            // Only within the range a disk read would serve (DeleteRecords may
            // have moved the start past cached batches).
            let cached = (offset >= state.log_start_offset && offset < state.high_watermark)
                .then(|| {
                    let cache = self.cache.borrow();
                    cache
                        .as_ref()?
                        .read(offset, max_bytes, state.high_watermark)
                })
                .flatten();
            if let Some((records, next_offset)) = cached {
                return Ok(ReadBatches {
                    records,
                    next_offset,
                    high_watermark: state.high_watermark,
                    log_start_offset: state.log_start_offset,
                });
            }
            state.generation
        };
        let mut records = Records::new();
        let mut next = offset;
        let mut from_disk = None;
        loop {
            let located = {
                let state = self.state.borrow();
                state.usable()?;
                if offset < state.log_start_offset || offset > state.high_watermark {
                    return Err(LogError::OffsetOutOfRange {
                        offset,
                        log_start_offset: state.log_start_offset,
                        high_watermark: state.high_watermark,
                    });
                }
                if next >= state.high_watermark {
                    None
                } else {
                    let (base, segment) = state
                        .segments
                        .range(..=next)
                        .next_back()
                        .expect("segment for offset");
                    let relative = u32::try_from(next - base).expect("offset within segment");
                    let entry = segment.indexes.offset_index.lookup(relative);
                    let file = segment
                        .file
                        .clone()
                        .expect("a segment with durable data has a file");
                    Some((*base, file, entry.position as u64, segment.durable_bytes()))
                }
            };
            let Some((base, file, mut position, end)) = located else {
                break;
            };
            // A window read ahead from exactly here starts at this batch
            // (the index would point at an earlier one).
            if let Some(ahead) = self.read_ahead.borrow().as_ref() {
                if ahead.segment_base == base
                    && ahead.offset == next
                    && ahead.generation == generation
                    && ahead.position < end
                    && Rc::ptr_eq(&ahead.file, &file)
                {
                    position = ahead.position;
                }
            }
            let budget = max_bytes.saturating_sub(records.len());
            let first = records.is_empty();
            let chunk = self
                .read_batches_from(&file, base, position, end, next, budget, first)
                .await?;
            if chunk.records.is_empty() {
                // Nothing at `next` in this segment although it is below the high
                // watermark: a gap between segments (a lost tail of a sealed
                // segment). Continue at the next segment rather than leave the
                // consumer stuck below the high watermark forever.
                let (gap_end, budget_left) = {
                    let state = self.state.borrow();
                    let after = state.segments.range(next + 1..).next().map(|(b, _)| *b);
                    (
                        after.filter(|_| {
                            next < state.high_watermark && chunk.budget_exhausted.not()
                        }),
                        budget > 0,
                    )
                };
                match gap_end {
                    Some(after) if records.is_empty() && budget_left => {
                        if self.state.borrow().cleaner_offset.is_some() {
                            // Compaction removed the segment's last batches.
                            tracing::debug!(log = %self.name, from = next, to = after, "compacted away: skipped");
                        } else {
                            tracing::error!(log = %self.name, from = next, to = after, "offsets missing between segments: skipped");
                        }
                        next = after;
                        continue;
                    }
                    _ => break,
                }
            }
            from_disk = Some((base, file.clone(), chunk.end_position, end));
            next = chunk.next_offset;
            records.push(chunk.records);
            // Continue into the next segment only if this one was used up.
            if next < chunk.segment_next_offset_hint || chunk.budget_exhausted {
                break;
            }
        }
        if !records.is_empty() {
            self.with_cache(|cache| cache.count_miss(records.len()));
            if let Some((base, file, end_position, end)) = from_disk {
                if end_position < end {
                    let window = (base, file, end_position, end);
                    self.start_read_ahead(window, max_bytes, next, generation);
                }
            }
        }
        let state = self.state.borrow();
        Ok(ReadBatches {
            records,
            next_offset: next,
            high_watermark: state.high_watermark,
            log_start_offset: state.log_start_offset,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_batches_from(
        &self,
        file: &D::File,
        base: i64,
        mut position: u64,
        end: u64,
        offset: i64,
        budget: usize,
        first: bool,
    ) -> LogResult<SegmentRead> {
        let window = (budget.max(HEADER_BYTES) as u64)
            .saturating_add(self.config().index_interval_bytes + HEADER_BYTES as u64)
            .min(end - position);
        let mut chunk = match self.take_read_ahead(file, base, position, end).await {
            Some(bytes) => bytes,
            None => {
                self.read_checked(file, base, position, (end - position).min(window))
                    .await?
            }
        };
        let mut at = 0usize;
        // Skip batches that end before `offset`.
        loop {
            if at >= chunk.len() {
                position += at as u64;
                if position >= end {
                    return Ok(SegmentRead::empty(offset));
                }
                chunk = self
                    .read_checked(file, base, position, (end - position).min(window))
                    .await?;
                at = 0;
                continue;
            }
            let header = self.header_at(&chunk, at, base, position)?;
            // Header fields outside the CRC are checked against the file.
            if position + (at + header.total_bytes()) as u64 > end {
                return Err(self.corrupt(
                    base,
                    position + at as u64,
                    "batch length runs past the segment end".into(),
                ));
            }
            if header.total_bytes() > chunk.len() - at {
                position += at as u64;
                let want = (header.total_bytes() as u64)
                    .max(window)
                    .min(end - position);
                chunk = self.read_checked(file, base, position, want).await?;
                at = 0;
                continue;
            }
            if header.last_offset() >= offset {
                break;
            }
            at += header.total_bytes();
        }
        // Collect whole batches within the budget (at least one when first).
        let start = at;
        let mut next_offset = offset;
        let mut budget_exhausted = false;
        loop {
            if at >= chunk.len() {
                break;
            }
            let header = match BatchHeader::parse(&chunk[at..]) {
                Ok(h) => h,
                Err(_) => break,
            };
            let total = header.total_bytes();
            if at + total > chunk.len() {
                if at == start {
                    // The first batch is larger than the window: read it whole.
                    let batch = self
                        .read_checked(file, base, position + at as u64, total as u64)
                        .await?;
                    self.check_batch(&batch, base, position + at as u64)?;
                    return Ok(SegmentRead {
                        end_position: position + (at + total) as u64,
                        segment_next_offset_hint: header.last_offset() + 1,
                        next_offset: header.last_offset() + 1,
                        records: batch,
                        budget_exhausted: total >= budget,
                    });
                }
                budget_exhausted = (at - start) + total > budget;
                break;
            }
            if at > start && (at - start) + total > budget {
                budget_exhausted = true;
                break;
            }
            if !first && at == start && total > budget {
                budget_exhausted = true;
                break;
            }
            self.check_batch(&chunk[at..at + total], base, position + at as u64)?;
            // Offsets only grow; a compacted segment may skip some.
            if at > start && header.base_offset < next_offset {
                return Err(self.corrupt(
                    base,
                    position + at as u64,
                    format!(
                        "batch base offset {} where {next_offset} was expected",
                        header.base_offset
                    ),
                ));
            }
            next_offset = header.last_offset() + 1;
            at += total;
        }
        let consumed_segment = position + at as u64 >= end;
        Ok(SegmentRead {
            end_position: position + at as u64,
            records: chunk.slice(start..at),
            next_offset,
            segment_next_offset_hint: if consumed_segment {
                next_offset
            } else {
                i64::MAX
            },
            budget_exhausted,
        })
    }

    /// Reads the window after a catch-up consumer's last disk read while the
    /// consumer handles this one, so its next fetch finds it in memory. Not
    /// for a consumer about to reach the cached tail, and only within the
    /// core's read-ahead allowance.
    fn start_read_ahead(
        &self,
        (base, file, from, end): (i64, Rc<D::File>, u64, u64),
        max_bytes: usize,
        next_offset: i64,
        generation: u64,
    ) {
        {
            // Truncated, compacted, retained or closed while this read ran.
            let state = self.state.borrow();
            if state.usable().is_err() || state.generation != generation {
                return;
            }
        }
        let permit = {
            let cache = self.cache.borrow();
            let Some(cache) = cache.as_ref() else { return };
            if cache.covers(next_offset) {
                self.read_ahead.borrow_mut().take();
                return;
            }
            let len = (max_bytes.max(HEADER_BYTES) as u64)
                .saturating_add(self.config().index_interval_bytes + HEADER_BYTES as u64)
                .min(end - from) as usize;
            match cache.read_ahead_permit(len) {
                Some(permit) => (permit, len),
                None => return,
            }
        };
        let (permit, len) = permit;
        let reader = file.clone();
        let task = glommio::spawn_local(async move { reader.read_at(from, len).await });
        *self.read_ahead.borrow_mut() = Some(ReadAhead {
            file,
            segment_base: base,
            position: from,
            offset: next_offset,
            generation,
            task,
            _permit: permit,
        });
    }

    /// The read-ahead window at `position` of this segment file, if one was
    /// issued there (any other is dropped), cut to the durable `end`.
    async fn take_read_ahead(
        &self,
        file: &D::File,
        base: i64,
        position: u64,
        end: u64,
    ) -> Option<Bytes> {
        let ahead = self.read_ahead.borrow_mut().take()?;
        if ahead.segment_base != base
            || ahead.generation != self.state.borrow().generation
            || ahead.position != position
            || position >= end
            || !std::ptr::eq(Rc::as_ptr(&ahead.file), file)
        {
            return None;
        }
        let bytes = ahead.task.await.ok()?;
        let usable = (end - position).min(bytes.len() as u64) as usize;
        if usable < HEADER_BYTES.min((end - position) as usize) {
            return None;
        }
        self.with_cache(|cache| cache.count_read_ahead(usable));
        Some(bytes.slice(..usable))
    }

    async fn read_checked(
        &self,
        file: &D::File,
        base: i64,
        position: u64,
        len: u64,
    ) -> LogResult<Bytes> {
        let bytes = file.read_at(position, len as usize).await.map_err(|e| {
            tracing::error!(log = %self.name, segment = base, error = %e, "read failed");
            LogError::io(e)
        })?;
        if (bytes.len() as u64) < len.min(HEADER_BYTES as u64) {
            return Err(self.corrupt(
                base,
                position,
                format!("short read: {} of {len} bytes", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    fn header_at(
        &self,
        chunk: &[u8],
        at: usize,
        base: i64,
        position: u64,
    ) -> LogResult<BatchHeader> {
        BatchHeader::parse(&chunk[at..])
            .map_err(|e| self.corrupt(base, position + at as u64, e.to_string()))
    }

    /// The paired check: a batch's CRC was validated on append and is validated
    /// again here, before any byte of it is served.
    fn check_batch(&self, batch: &[u8], base: i64, position: u64) -> LogResult<()> {
        validate_batch_prefix(batch)
            .map(|_| ())
            .map_err(|e| self.corrupt(base, position, e.to_string()))
    }

    fn corrupt(&self, base: i64, position: u64, detail: String) -> LogError {
        tracing::error!(log = %self.name, segment = base, position, %detail, "corrupt batch not served");
        LogError::Corrupt {
            segment_base_offset: base,
            position,
            detail,
        }
    }

    /// Bytes appended and not yet written to the files (the tails' pending
    /// and in-flight chunks), for metrics.
    pub fn pending_bytes(&self) -> u64 {
        let state = self.state.borrow();
        state
            .segments
            .values()
            .map(|s| s.tail.pending_end().saturating_sub(s.tail.durable_end))
            .sum()
    }

    /// Bytes of the write buffers the tails hold (appended data not yet
    /// handed to a write, and room for more), for metrics.
    pub fn write_buffer_bytes(&self) -> u64 {
        let state = self.state.borrow();
        state
            .segments
            .values()
            .map(|s| s.tail.buffer_bytes() as u64)
            .sum()
    }

    /// One past the last offset appended, pending appends included.
    pub fn log_end_offset(&self) -> i64 {
        self.state.borrow().next_offset
    }

    pub fn log_start_offset(&self) -> i64 {
        self.state.borrow().log_start_offset
    }

    pub fn high_watermark(&self) -> i64 {
        self.state.borrow().high_watermark
    }

    /// The offset and timestamp of the record with the largest timestamp
    /// (ListOffsets MAX_TIMESTAMP). For a batch, Kafka's answer is its last offset.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let state = self.state.borrow();
        state
            .segments
            .values()
            .filter(|s| s.indexes.max_timestamp >= 0)
            // The earliest segment on a tie, as Kafka keeps the first record.
            .rev()
            .max_by_key(|s| s.indexes.max_timestamp)
            .map(|s| (s.indexes.offset_of_max_timestamp, s.indexes.max_timestamp))
    }

    /// The first offset whose record timestamp is ≥ `timestamp`, with that
    /// timestamp; `None` if every record is older. Record-exact in every
    /// codec (compressed batches are decompressed to walk their records); a
    /// batch whose records cannot be walked answers its base offset (a
    /// consumer starting there misses nothing).
    pub async fn offset_for_timestamp(&self, timestamp: i64) -> LogResult<Option<(i64, i64)>> {
        let candidates: Vec<(i64, i64)> = {
            let state = self.state.borrow();
            state.usable()?;
            state
                .segments
                .iter()
                .filter(|(_, s)| s.indexes.max_timestamp >= timestamp && s.durable_bytes() > 0)
                .map(|(b, s)| (*b, *b + s.indexes.time_index.scan_start(timestamp) as i64))
                .collect()
        };
        for (_base, start_offset) in candidates {
            let mut offset = start_offset.max(self.log_start_offset());
            loop {
                let read = match self.read(offset, 256 * 1024).await {
                    Ok(read) => read,
                    Err(LogError::OffsetOutOfRange { .. }) => break,
                    Err(e) => return Err(e),
                };
                if read.records.is_empty() {
                    break;
                }
                let records = read.records.to_bytes();
                let mut at = 0;
                while at < records.len() {
                    let header = BatchHeader::parse(&records[at..]).expect("checked on read");
                    let batch = &records[at..at + header.total_bytes()];
                    at += header.total_bytes();
                    if header.max_timestamp < timestamp || header.last_offset() < offset {
                        continue;
                    }
                    if header.is_log_append_time() {
                        return Ok(Some((header.base_offset.max(offset), header.max_timestamp)));
                    }
                    match record_timestamps(batch) {
                        Some(records) => {
                            if let Some((delta, ts)) = records.iter().find(|(d, ts)| {
                                *ts >= timestamp && header.base_offset + *d as i64 >= offset
                            }) {
                                return Ok(Some((header.base_offset + *delta as i64, *ts)));
                            }
                        }
                        None => {
                            return Ok(Some((header.base_offset.max(offset), header.max_timestamp)))
                        }
                    }
                }
                offset = read.next_offset;
            }
        }
        Ok(None)
    }
}

struct SegmentRead {
    records: Bytes,
    /// The file position just past the last batch in `records`.
    end_position: u64,
    next_offset: i64,
    /// `next_offset` if the read reached the segment's end, else i64::MAX.
    segment_next_offset_hint: i64,
    budget_exhausted: bool,
}

impl SegmentRead {
    fn empty(offset: i64) -> SegmentRead {
        SegmentRead {
            records: Bytes::new(),
            end_position: 0,
            next_offset: offset,
            segment_next_offset_hint: offset,
            budget_exhausted: false,
        }
    }
}

/// Writes a small file whole with O_DIRECT (padded to pages, then cut to its
/// exact length) and syncs it.
pub(crate) async fn write_whole_file<D: StorageDir>(
    dir: &D,
    name: &str,
    bytes: &[u8],
) -> Result<(), IoStep> {
    let file = dir.open(name, true).await.map_err(IoStep::Write)?;
    let padded = align_up(bytes.len() as u64).max(crate::io::PAGE_BYTES) as usize;
    let mut buf = dir.alloc_buf(padded);
    crate::io::IoBuf::as_bytes_mut(&mut buf)[..bytes.len()].copy_from_slice(bytes);
    crate::io::IoBuf::as_bytes_mut(&mut buf)[bytes.len()..].fill(0);
    file.write_at(Rc::new(buf), 0)
        .await
        .map_err(IoStep::Write)?;
    file.set_len(bytes.len() as u64)
        .await
        .map_err(IoStep::Write)?;
    file.sync_data().await.map_err(IoStep::Sync)?;
    file.close().await.map_err(IoStep::Write)
}

/// Removes a file; one that is already gone is fine.
pub(crate) async fn remove_if_exists<D: StorageDir>(dir: &D, name: &str) -> std::io::Result<()> {
    match dir.remove(name).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
