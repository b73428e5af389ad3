//! Kafka record batch (magic 2) header view.
//!
//! Layout (big-endian, as on the wire and as stored on disk byte for byte):
//!
//! | bytes  | field                  | covered by CRC |
//! |--------|------------------------|----------------|
//! | 0..8   | base_offset i64        | no             |
//! | 8..12  | batch_length i32       | no             |
//! | 12..16 | partition_leader_epoch | no             |
//! | 16     | magic i8 (= 2)         | no             |
//! | 17..21 | crc u32 (CRC-32C)      | no             |
//! | 21..23 | attributes i16         | yes            |
//! | 23..27 | last_offset_delta i32  | yes            |
//! | 27..35 | base_timestamp i64     | yes            |
//! | 35..43 | max_timestamp i64      | yes            |
//! | 43..51 | producer_id i64        | yes            |
//! | 51..53 | producer_epoch i16     | yes            |
//! | 53..57 | base_sequence i32      | yes            |
//! | 57..61 | records_count i32      | yes            |
//! | 61..   | records                | yes            |
//!
//! `batch_length` counts the bytes after its own field, so a whole batch is
//! `LOG_OVERHEAD_BYTES + batch_length` bytes.

use crate::compression::{decompress, Codec, DECOMPRESSED_BYTES_MAX};
use std::fmt;

/// base_offset + batch_length: the bytes in front of what `batch_length` counts.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The fixed v2 header, up to and including records_count.
pub const HEADER_BYTES: usize = 61;
pub const MAGIC_V2: i8 = 2;

const OFFSET_BASE_OFFSET: usize = 0;
const OFFSET_BATCH_LENGTH: usize = 8;
const OFFSET_PARTITION_LEADER_EPOCH: usize = 12;
const OFFSET_MAGIC: usize = 16;
const OFFSET_CRC: usize = 17;
const OFFSET_ATTRIBUTES: usize = 21;
const OFFSET_LAST_OFFSET_DELTA: usize = 23;
const OFFSET_BASE_TIMESTAMP: usize = 27;
const OFFSET_MAX_TIMESTAMP: usize = 35;
const OFFSET_PRODUCER_ID: usize = 43;
const OFFSET_PRODUCER_EPOCH: usize = 51;
const OFFSET_BASE_SEQUENCE: usize = 53;
const OFFSET_RECORDS_COUNT: usize = 57;

const _: () = assert!(OFFSET_RECORDS_COUNT + 4 == HEADER_BYTES);
const _: () = assert!(OFFSET_BATCH_LENGTH + 4 == LOG_OVERHEAD_BYTES);

/// attributes bits 0..3: compression codec.
pub const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
/// attributes bit 3: timestamp type (0 = CreateTime, 1 = LogAppendTime).
pub const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
pub const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
pub const ATTRIBUTE_CONTROL: i16 = 0x20;

/// Why a byte range is not a valid v2 record batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the header or than `batch_length` announces.
    Truncated {
        bytes_needed: usize,
        bytes_available: usize,
    },
    /// `batch_length` smaller than the fixed header.
    LengthInvalid {
        batch_length: i32,
    },
    /// magic 0 or 1 (or anything not 2).
    MagicUnsupported {
        magic: i8,
    },
    CrcMismatch {
        crc_stored: u32,
        crc_computed: u32,
    },
    /// records_count must be `last_offset_delta + 1` and at least 1.
    RecordCountInvalid {
        records_count: i32,
        last_offset_delta: i32,
    },
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Truncated { bytes_needed, bytes_available } => write!(
                f,
                "record batch truncated: {bytes_needed} bytes needed, {bytes_available} available"
            ),
            BatchError::LengthInvalid { batch_length } => {
                write!(f, "record batch length {batch_length} is invalid")
            }
            BatchError::MagicUnsupported { magic } => {
                write!(f, "record batch magic {magic} is not supported (only 2)")
            }
            BatchError::CrcMismatch { crc_stored, crc_computed } => write!(
                f,
                "record batch CRC-32C mismatch: stored {crc_stored:#010x}, computed {crc_computed:#010x}"
            ),
            BatchError::RecordCountInvalid { records_count, last_offset_delta } => write!(
                f,
                "record batch count {records_count} disagrees with last offset delta {last_offset_delta}"
            ),
        }
    }
}

impl std::error::Error for BatchError {}

/// The parsed fixed header of one v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

impl BatchHeader {
    /// Parses the fixed header at the start of `bytes`. Checks the length field
    /// and the magic, not the CRC and not that the whole batch is present.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_BYTES {
            // Report the magic first when we can see it: a v0/v1 message set is
            // usually shorter than a v2 header.
            if bytes.len() > OFFSET_MAGIC && bytes[OFFSET_MAGIC] as i8 != MAGIC_V2 {
                return Err(BatchError::MagicUnsupported {
                    magic: bytes[OFFSET_MAGIC] as i8,
                });
            }
            return Err(BatchError::Truncated {
                bytes_needed: HEADER_BYTES,
                bytes_available: bytes.len(),
            });
        }
        let header = BatchHeader {
            base_offset: be_i64(bytes, OFFSET_BASE_OFFSET),
            batch_length: be_i32(bytes, OFFSET_BATCH_LENGTH),
            partition_leader_epoch: be_i32(bytes, OFFSET_PARTITION_LEADER_EPOCH),
            magic: bytes[OFFSET_MAGIC] as i8,
            crc: be_u32(bytes, OFFSET_CRC),
            attributes: be_i16(bytes, OFFSET_ATTRIBUTES),
            last_offset_delta: be_i32(bytes, OFFSET_LAST_OFFSET_DELTA),
            base_timestamp: be_i64(bytes, OFFSET_BASE_TIMESTAMP),
            max_timestamp: be_i64(bytes, OFFSET_MAX_TIMESTAMP),
            producer_id: be_i64(bytes, OFFSET_PRODUCER_ID),
            producer_epoch: be_i16(bytes, OFFSET_PRODUCER_EPOCH),
            base_sequence: be_i32(bytes, OFFSET_BASE_SEQUENCE),
            records_count: be_i32(bytes, OFFSET_RECORDS_COUNT),
        };
        if header.magic != MAGIC_V2 {
            return Err(BatchError::MagicUnsupported {
                magic: header.magic,
            });
        }
        if (header.batch_length as i64) < (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i64 {
            return Err(BatchError::LengthInvalid {
                batch_length: header.batch_length,
            });
        }
        Ok(header)
    }

    /// The whole batch size in bytes, log overhead included.
    pub fn total_bytes(&self) -> usize {
        debug_assert!(self.batch_length >= 0);
        LOG_OVERHEAD_BYTES + self.batch_length as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Compression codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> i16 {
        self.attributes & ATTRIBUTE_COMPRESSION_MASK
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }
}

/// CRC-32C over attributes..end of the batch.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[OFFSET_ATTRIBUTES..])
}

/// Validates that `bytes` is exactly one complete v2 record batch as a
/// producer sends it: header, length, CRC-32C, and a record count of exactly
/// last offset delta + 1.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = validate_batch_prefix(bytes)?;
    if header.total_bytes() != bytes.len() {
        // Trailing bytes after the announced batch: treat as a length mismatch.
        return Err(BatchError::LengthInvalid {
            batch_length: header.batch_length,
        });
    }
    if header.records_count as i64 != header.last_offset_delta as i64 + 1 {
        return Err(BatchError::RecordCountInvalid {
            records_count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Validates the complete v2 record batch at the start of `bytes` (more may
/// follow), as stored: a compacted batch keeps its last offset delta with
/// fewer records, so the count may be below last offset delta + 1.
pub fn validate_batch_prefix(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    let total = header.total_bytes();
    if bytes.len() < total {
        return Err(BatchError::Truncated {
            bytes_needed: total,
            bytes_available: bytes.len(),
        });
    }
    let crc_computed = compute_crc(&bytes[..total]);
    if crc_computed != header.crc {
        return Err(BatchError::CrcMismatch {
            crc_stored: header.crc,
            crc_computed,
        });
    }
    if header.records_count < 1
        || header.last_offset_delta < 0
        || header.records_count as i64 > header.last_offset_delta as i64 + 1
    {
        return Err(BatchError::RecordCountInvalid {
            records_count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Writes the base offset (outside the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[OFFSET_BASE_OFFSET..OFFSET_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes the partition leader epoch (outside the CRC).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[OFFSET_PARTITION_LEADER_EPOCH..OFFSET_PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&epoch.to_be_bytes());
}

/// Marks the batch as LogAppendTime with `timestamp_ms` as its max timestamp and
/// recomputes the CRC (both fields are inside it), as a Kafka broker does for
/// topics with `message.timestamp.type=LogAppendTime`.
pub fn set_log_append_time(batch: &mut [u8], timestamp_ms: i64) {
    let attributes = be_i16(batch, OFFSET_ATTRIBUTES) | ATTRIBUTE_LOG_APPEND_TIME;
    batch[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8]
        .copy_from_slice(&timestamp_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Builds an uncompressed v2 batch holding `values` as records with no keys and
/// no headers. For tests and benchmarks: real producers build their own.
pub fn build_batch(base_timestamp: i64, values: &[&[u8]]) -> Vec<u8> {
    build_batch_with_producer(base_timestamp, values, -1, -1, -1)
}

/// As [`build_batch`], with idempotent-producer fields.
pub fn build_batch_with_producer(
    base_timestamp: i64,
    values: &[&[u8]],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Vec<u8> {
    assert!(
        !values.is_empty(),
        "a record batch holds at least one record"
    );
    let mut records = Vec::new();
    for (index, value) in values.iter().enumerate() {
        put_record(&mut records, 0, index as i32, None, value);
    }
    let fields = BatchFields {
        base_timestamp,
        max_timestamp: base_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        records_count: values.len() as i32,
        ..BatchFields::default()
    };
    let mut batch = Vec::with_capacity(HEADER_BYTES + records.len());
    assemble_batch(&mut batch, &fields, &records);
    batch
}

/// A batch of keyed records (a `None` value is a tombstone), uncompressed.
pub fn build_keyed_batch(base_timestamp: i64, entries: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
    assert!(
        !entries.is_empty(),
        "a record batch holds at least one record"
    );
    let mut records = Vec::new();
    for (index, (key, value)) in entries.iter().enumerate() {
        put_record_with(&mut records, 0, index as i32, Some(key), *value);
    }
    let fields = BatchFields {
        base_timestamp,
        max_timestamp: base_timestamp,
        records_count: entries.len() as i32,
        ..BatchFields::default()
    };
    let mut batch = Vec::with_capacity(HEADER_BYTES + records.len());
    assemble_batch(&mut batch, &fields, &records);
    batch
}

/// The header fields a producer chooses (offsets and epochs are the broker's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchFields {
    /// Compression codec in bits 0..3 (see [`ATTRIBUTE_COMPRESSION_MASK`]).
    pub attributes: i16,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl Default for BatchFields {
    fn default() -> Self {
        BatchFields {
            attributes: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: 0,
        }
    }
}

/// Appends one record (no headers) to a records section: length, attributes,
/// timestamp delta, offset delta, key, value, header count, as varints.
pub fn put_record(
    out: &mut Vec<u8>,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: &[u8],
) {
    put_record_with(out, timestamp_delta, offset_delta, key, Some(value))
}

/// As [`put_record`], where the value may be null (a tombstone).
pub fn put_record_with(
    out: &mut Vec<u8>,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    let key_len = key.map_or(-1, |k| k.len() as i64);
    let value_len = value.map_or(-1, |v| v.len() as i64);
    let body_len = 1
        + varlong_len(timestamp_delta)
        + varlong_len(offset_delta as i64)
        + varlong_len(key_len)
        + key.map_or(0, |k| k.len())
        + varlong_len(value_len)
        + value.map_or(0, |v| v.len())
        + 1;
    out.reserve(body_len + 5);
    put_varlong(out, body_len as i64);
    out.push(0); // record attributes
    put_varlong(out, timestamp_delta);
    put_varlong(out, offset_delta as i64);
    put_varlong(out, key_len);
    if let Some(key) = key {
        out.extend_from_slice(key);
    }
    put_varlong(out, value_len);
    if let Some(value) = value {
        out.extend_from_slice(value);
    }
    put_varlong(out, 0); // header count
}

/// Appends a whole batch to `out`: the v2 header for `fields` (base offset 0,
/// leader epoch 0), then `records` (already compressed if the attributes say
/// so), with the CRC-32C filled in.
pub fn assemble_batch(out: &mut Vec<u8>, fields: &BatchFields, records: &[u8]) {
    let start = out.len();
    out.reserve(HEADER_BYTES + records.len());
    out.extend_from_slice(&0i64.to_be_bytes());
    let batch_length = (HEADER_BYTES - LOG_OVERHEAD_BYTES + records.len()) as i32;
    out.extend_from_slice(&batch_length.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, filled below
    out.extend_from_slice(&fields.attributes.to_be_bytes());
    out.extend_from_slice(&(fields.records_count - 1).to_be_bytes());
    out.extend_from_slice(&fields.base_timestamp.to_be_bytes());
    out.extend_from_slice(&fields.max_timestamp.to_be_bytes());
    out.extend_from_slice(&fields.producer_id.to_be_bytes());
    out.extend_from_slice(&fields.producer_epoch.to_be_bytes());
    out.extend_from_slice(&fields.base_sequence.to_be_bytes());
    out.extend_from_slice(&fields.records_count.to_be_bytes());
    debug_assert_eq!(out.len() - start, HEADER_BYTES);
    out.extend_from_slice(records);
    let crc = compute_crc(&out[start..]);
    out[start + OFFSET_CRC..start + OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// A stored batch with only some of its records (log compaction): the same
/// base offset, last offset delta (so the offsets after it do not move),
/// partition leader epoch, attributes, producer fields and base timestamp;
/// `records` are the kept records as stored (uncompressed, each record's own
/// offset and timestamp deltas unchanged), compressed again with the batch's
/// codec. `max_timestamp` is the largest timestamp among them.
pub fn rebuild_batch(
    header: &BatchHeader,
    records: &[u8],
    count: i32,
    max_timestamp: i64,
) -> Vec<u8> {
    let codec = Codec::from_id(header.compression()).unwrap_or(Codec::None);
    let compressed;
    let section = if codec == Codec::None {
        records
    } else {
        compressed = crate::compression::compress(codec, records);
        &compressed[..]
    };
    let fields = BatchFields {
        attributes: header.attributes,
        base_timestamp: header.base_timestamp,
        max_timestamp,
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        base_sequence: header.base_sequence,
        records_count: count,
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + section.len());
    assemble_batch(&mut out, &fields, section);
    out[OFFSET_LAST_OFFSET_DELTA..OFFSET_LAST_OFFSET_DELTA + 4]
        .copy_from_slice(&header.last_offset_delta.to_be_bytes());
    let crc = compute_crc(&out);
    out[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    set_base_offset(&mut out, header.base_offset);
    set_partition_leader_epoch(&mut out, header.partition_leader_epoch);
    out
}

/// One record of a records section, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The whole record as stored, its length varint included (compaction
    /// copies kept records into a rebuilt batch as they are).
    pub raw: &'a [u8],
}

/// Walks an uncompressed records section (the bytes after the batch header,
/// or a decompressed one). Stops at the first malformed record.
pub fn records(section: &[u8], count: i32) -> Records<'_> {
    Records {
        section,
        at: 0,
        left: count.max(0),
    }
}

pub struct Records<'a> {
    section: &'a [u8],
    at: usize,
    left: i32,
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.left <= 0 {
            return None;
        }
        let record = self.parse();
        if record.is_none() {
            self.left = 0;
        }
        record
    }
}

impl<'a> Records<'a> {
    fn parse(&mut self) -> Option<Record<'a>> {
        let bytes = self.section;
        let start = self.at;
        let length = usize::try_from(get_varlong(bytes, &mut self.at)?).ok()?;
        let end = self.at.checked_add(length)?;
        if end > bytes.len() {
            return None;
        }
        let mut cursor = self.at + 1; // attributes
        let timestamp_delta = get_varlong(bytes, &mut cursor)?;
        let offset_delta = get_varlong(bytes, &mut cursor)? as i32;
        let field = |cursor: &mut usize| -> Option<Option<&'a [u8]>> {
            let len = get_varlong(bytes, cursor)?;
            if len < 0 {
                return Some(None);
            }
            let stop = cursor.checked_add(len as usize)?;
            if stop > end {
                return None;
            }
            let slice = &bytes[*cursor..stop];
            *cursor = stop;
            Some(Some(slice))
        };
        let key = field(&mut cursor)?;
        let value = field(&mut cursor)?;
        self.at = end;
        self.left -= 1;
        Some(Record {
            timestamp_delta,
            offset_delta,
            key,
            value,
            raw: &bytes[start..end],
        })
    }
}

fn varlong_len(value: i64) -> usize {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    (64 - (zigzag | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        if zigzag < 0x80 {
            out.push(zigzag as u8);
            return;
        }
        out.push((zigzag as u8 & 0x7f) | 0x80);
        zigzag >>= 7;
    }
}

fn get_varlong(bytes: &[u8], at: &mut usize) -> Option<i64> {
    get_unsigned_varint(bytes, at, bytes.len(), VARLONG_BYTES_MAX).map(zigzag_decode)
}

/// The longest varint (Kafka's `readVarint`) and varlong (`readVarlong`).
pub(crate) const VARINT_BYTES_MAX: usize = 5;
pub(crate) const VARLONG_BYTES_MAX: usize = 10;

/// An unsigned LEB128 value of at most `bytes_max` bytes, read before `end`;
/// `None` if it runs past `end`, is longer, or overflows 64 bits. The one
/// varint reader of the crate (the record walk and record validation).
pub(crate) fn get_unsigned_varint(
    bytes: &[u8],
    at: &mut usize,
    end: usize,
    bytes_max: usize,
) -> Option<u64> {
    let mut value: u64 = 0;
    for index in 0..bytes_max {
        let byte = *bytes.get(*at).filter(|_| *at < end)?;
        *at += 1;
        let shift = 7 * index as u32;
        if shift == 63 && byte > 0x01 {
            return None;
        }
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

pub(crate) fn zigzag_decode(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// The records section of an uncompressed whole batch, or `None`.
fn uncompressed_section(batch: &[u8]) -> Option<(BatchHeader, &[u8])> {
    let header = BatchHeader::parse(batch).ok()?;
    if header.compression() != 0 || batch.len() < header.total_bytes() {
        return None;
    }
    Some((header, &batch[HEADER_BYTES..header.total_bytes()]))
}

/// The (offset delta, timestamp) of each record of a batch, read from the
/// record varints; a compressed batch is decompressed first (bounded by
/// [`DECOMPRESSED_BYTES_MAX`]), so timestamp lookups are record-exact in
/// every codec, as Kafka's. `None` for an unknown codec, a payload that does
/// not decompress, or malformed records.
pub fn record_timestamps(batch: &[u8]) -> Option<Vec<(i32, i64)>> {
    let header = BatchHeader::parse(batch).ok()?;
    if batch.len() < header.total_bytes() {
        return None;
    }
    let section = &batch[HEADER_BYTES..header.total_bytes()];
    let mut scratch = Vec::new();
    let section = match Codec::from_id(header.compression())? {
        Codec::None => section,
        codec => {
            let length = decompress(codec, section, DECOMPRESSED_BYTES_MAX, &mut scratch).ok()?;
            &scratch[..length]
        }
    };
    let out: Vec<(i32, i64)> = records(section, header.records_count)
        .map(|r| (r.offset_delta, header.base_timestamp + r.timestamp_delta))
        .collect();
    (out.len() == header.records_count.max(0) as usize).then_some(out)
}

/// A record's key and value (`None`: null).
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// For an uncompressed batch, each record's key and value. Empty for
/// compressed batches; stops at the first malformed record.
pub fn record_keys_values(batch: &[u8]) -> Vec<KeyValue<'_>> {
    match uncompressed_section(batch) {
        Some((header, section)) => records(section, header.records_count)
            .map(|r| (r.key, r.value))
            .collect(),
        None => Vec::new(),
    }
}

/// For an uncompressed batch, each record's value (a null value is skipped).
/// Empty for compressed batches; stops at the first malformed record.
pub fn record_values(batch: &[u8]) -> Vec<&[u8]> {
    match uncompressed_section(batch) {
        Some((header, section)) => records(section, header.records_count)
            .filter_map(|r| r.value)
            .collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_keys_and_null_keys() {
        let mut section = Vec::new();
        let big = vec![7u8; 300];
        put_record(&mut section, 0, 0, Some(b"k1"), b"v1");
        put_record(&mut section, 5, 1, None, &big);
        put_record(&mut section, -3, 2, Some(b""), b"");
        let got: Vec<Record> = records(&section, 3).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].key, Some(&b"k1"[..]));
        assert_eq!(got[0].value, Some(&b"v1"[..]));
        assert_eq!(
            (got[1].key, got[1].timestamp_delta, got[1].offset_delta),
            (None, 5, 1)
        );
        assert_eq!(got[1].value.unwrap().len(), 300);
        assert_eq!(
            (got[2].key, got[2].value, got[2].timestamp_delta),
            (Some(&b""[..]), Some(&b""[..]), -3)
        );
        // A truncated section yields the whole records before the cut, then stops.
        assert_eq!(records(&section[..section.len() - 1], 3).count(), 2);
    }

    #[test]
    fn varlong_len_matches_the_encoding() {
        for value in [
            0i64,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            8191,
            8192,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            assert_eq!(varlong_len(value), out.len(), "value {value}");
        }
    }

    #[test]
    fn assembled_compressed_attribute_batch_validates() {
        let mut section = Vec::new();
        put_record(&mut section, 0, 0, None, b"x");
        let fields = BatchFields {
            attributes: 3,
            records_count: 1,
            base_timestamp: 9,
            max_timestamp: 9,
            ..BatchFields::default()
        };
        let mut out = b"prefix".to_vec();
        assemble_batch(&mut out, &fields, &section);
        let header = validate_batch(&out[6..]).unwrap();
        assert_eq!(header.compression(), 3);
        assert_eq!(header.records_count, 1);
    }

    #[test]
    fn built_batch_validates_and_reports_fields() {
        let batch = build_batch(1_700_000_000_000, &[b"a", b"bc", b"def"]);
        let header = validate_batch(&batch).unwrap();
        assert_eq!(header.records_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.total_bytes(), batch.len());
        assert_eq!(header.compression(), 0);
        assert_eq!(header.producer_id, -1);
    }

    #[test]
    fn base_offset_is_outside_the_crc() {
        let mut batch = build_batch(1, &[b"x"]);
        set_base_offset(&mut batch, 42);
        set_partition_leader_epoch(&mut batch, 7);
        let header = validate_batch(&batch).unwrap();
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.last_offset(), 42);
        assert_eq!(header.partition_leader_epoch, 7);
    }

    #[test]
    fn any_flipped_bit_after_the_crc_field_is_detected() {
        let batch = build_batch(5, &[b"hello", b"world"]);
        for at in OFFSET_ATTRIBUTES..batch.len() {
            let mut corrupt = batch.clone();
            corrupt[at] ^= 0x10;
            assert!(
                validate_batch(&corrupt).is_err(),
                "flip at byte {at} not detected"
            );
        }
    }

    #[test]
    fn truncated_and_old_magic_are_typed_errors() {
        let batch = build_batch(5, &[b"hello"]);
        assert!(matches!(
            validate_batch(&batch[..batch.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate_batch(&batch[..20]),
            Err(BatchError::Truncated { .. })
        ));
        let mut old = batch.clone();
        old[OFFSET_MAGIC] = 1;
        assert_eq!(
            validate_batch(&old),
            Err(BatchError::MagicUnsupported { magic: 1 })
        );
        let mut extra = batch.clone();
        extra.push(0);
        assert!(matches!(
            validate_batch(&extra),
            Err(BatchError::LengthInvalid { .. })
        ));
    }

    #[test]
    fn record_count_must_match_last_offset_delta() {
        let mut batch = build_batch(5, &[b"a", b"b"]);
        batch[OFFSET_RECORDS_COUNT..OFFSET_RECORDS_COUNT + 4].copy_from_slice(&5i32.to_be_bytes());
        let crc = compute_crc(&batch);
        batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            validate_batch(&batch),
            Err(BatchError::RecordCountInvalid {
                records_count: 5,
                last_offset_delta: 1
            })
        );
    }

    #[test]
    fn log_append_time_rewrites_and_keeps_crc_valid() {
        let mut batch = build_batch(5, &[b"a"]);
        set_log_append_time(&mut batch, 99);
        let header = validate_batch(&batch).unwrap();
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, 99);
    }

    #[test]
    fn record_values_of_uncompressed_batch() {
        let batch = build_batch(1000, &[b"a", b"bc"]);
        assert_eq!(
            record_values(&batch),
            vec![b"a".as_slice(), b"bc".as_slice()]
        );
    }

    #[test]
    fn record_timestamps_of_compressed_batches_are_exact() {
        use crate::compression::compress;
        let mut section = Vec::new();
        for i in 0..300 {
            put_record(
                &mut section,
                i as i64 * 10,
                i,
                None,
                format!("v{i}").as_bytes(),
            );
        }
        for id in 1..=4 {
            let codec = Codec::from_id(id).unwrap();
            let fields = BatchFields {
                attributes: id,
                records_count: 300,
                base_timestamp: 5_000,
                max_timestamp: 5_000 + 2_990,
                ..BatchFields::default()
            };
            let mut batch = Vec::new();
            assemble_batch(&mut batch, &fields, &compress(codec, &section));
            let timestamps = record_timestamps(&batch).unwrap();
            assert_eq!(timestamps.len(), 300, "{}", codec.name());
            assert_eq!(timestamps[123], (123, 5_000 + 1_230));
        }
    }

    #[test]
    fn record_timestamps_of_uncompressed_batch() {
        let batch = build_batch(1000, &[b"a", b"b"]);
        assert_eq!(
            record_timestamps(&batch).unwrap(),
            vec![(0, 1000), (1, 1000)]
        );
    }
}
