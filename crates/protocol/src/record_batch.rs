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

/// Validates that `bytes` is exactly one complete v2 record batch: header, length,
/// CRC-32C, and record count against last offset delta.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = validate_batch_prefix(bytes)?;
    if header.total_bytes() != bytes.len() {
        // Trailing bytes after the announced batch: treat as a length mismatch.
        return Err(BatchError::LengthInvalid {
            batch_length: header.batch_length,
        });
    }
    Ok(header)
}

/// Validates the complete v2 record batch at the start of `bytes` (more may follow).
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
        || header.records_count as i64 != header.last_offset_delta as i64 + 1
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
        let mut body = Vec::new();
        body.push(0); // record attributes
        put_varlong(&mut body, 0); // timestamp delta
        put_varlong(&mut body, index as i64); // offset delta
        put_varlong(&mut body, -1); // key length: null
        put_varlong(&mut body, value.len() as i64);
        body.extend_from_slice(value);
        put_varlong(&mut body, 0); // header count
        put_varlong(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let mut batch = Vec::with_capacity(HEADER_BYTES + records.len());
    batch.extend_from_slice(&0i64.to_be_bytes());
    let batch_length = (HEADER_BYTES - LOG_OVERHEAD_BYTES + records.len()) as i32;
    batch.extend_from_slice(&batch_length.to_be_bytes());
    batch.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    batch.push(MAGIC_V2 as u8);
    batch.extend_from_slice(&0u32.to_be_bytes()); // crc, filled below
    batch.extend_from_slice(&0i16.to_be_bytes()); // attributes
    batch.extend_from_slice(&(values.len() as i32 - 1).to_be_bytes());
    batch.extend_from_slice(&base_timestamp.to_be_bytes());
    batch.extend_from_slice(&base_timestamp.to_be_bytes()); // max timestamp
    batch.extend_from_slice(&producer_id.to_be_bytes());
    batch.extend_from_slice(&producer_epoch.to_be_bytes());
    batch.extend_from_slice(&base_sequence.to_be_bytes());
    batch.extend_from_slice(&(values.len() as i32).to_be_bytes());
    debug_assert_eq!(batch.len(), HEADER_BYTES);
    batch.extend_from_slice(&records);
    let crc = compute_crc(&batch);
    batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    batch
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
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    Some(((value >> 1) as i64) ^ -((value & 1) as i64))
}

/// For an uncompressed batch, the (offset delta, timestamp) of each record, read
/// from the record varints. `None` for compressed batches or malformed records.
pub fn record_timestamps(batch: &[u8]) -> Option<Vec<(i32, i64)>> {
    let header = BatchHeader::parse(batch).ok()?;
    if header.compression() != 0 || batch.len() < header.total_bytes() {
        return None;
    }
    let mut out = Vec::with_capacity(header.records_count.max(0) as usize);
    let mut at = HEADER_BYTES;
    let end = header.total_bytes();
    for _ in 0..header.records_count {
        let length = get_varlong(batch, &mut at)?;
        let record_start = at;
        let mut cursor = at + 1; // attributes
        let timestamp_delta = get_varlong(batch, &mut cursor)?;
        let offset_delta = get_varlong(batch, &mut cursor)?;
        out.push((offset_delta as i32, header.base_timestamp + timestamp_delta));
        at = record_start.checked_add(usize::try_from(length).ok()?)?;
        if at > end {
            return None;
        }
    }
    Some(out)
}

/// For an uncompressed batch, each record's value (`None` for a null value is
/// skipped), read from the record varints. Empty for compressed or malformed batches.
pub fn record_values(batch: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let Ok(header) = BatchHeader::parse(batch) else {
        return out;
    };
    if header.compression() != 0 || batch.len() < header.total_bytes() {
        return out;
    }
    let end = header.total_bytes();
    let mut at = HEADER_BYTES;
    for _ in 0..header.records_count {
        let Some(length) = get_varlong(batch, &mut at) else {
            break;
        };
        let Some(record_end) = usize::try_from(length).ok().and_then(|l| at.checked_add(l)) else {
            break;
        };
        let mut cursor = at + 1; // attributes
        let parsed = (|| {
            get_varlong(batch, &mut cursor)?; // timestamp delta
            get_varlong(batch, &mut cursor)?; // offset delta
            let key_len = get_varlong(batch, &mut cursor)?;
            if key_len > 0 {
                cursor = cursor.checked_add(key_len as usize)?;
            }
            get_varlong(batch, &mut cursor)
        })();
        if let Some(value_len) = parsed {
            if value_len >= 0 && cursor + value_len as usize <= end.min(record_end) {
                out.push(&batch[cursor..cursor + value_len as usize]);
            }
        }
        at = record_end;
        if at > end {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn record_timestamps_of_uncompressed_batch() {
        let batch = build_batch(1000, &[b"a", b"b"]);
        assert_eq!(
            record_timestamps(&batch).unwrap(),
            vec![(0, 1000), (1, 1000)]
        );
    }
}
