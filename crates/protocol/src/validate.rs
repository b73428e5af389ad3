//! Record-level validation of a produced batch, as Kafka's `LogValidator`
//! does before anything is appended: the header (length, magic, CRC-32C,
//! count against last offset delta), the attributes a producer may set, the
//! codec, and then every record of the (decompressed) records section in one
//! pass without an allocation per record: varint lengths inside the record,
//! offset deltas 0, 1, 2, … , headers well formed, each record ending exactly
//! where its length says, exactly `records_count` records and no bytes after
//! them.
//!
//! Only produce requests go through here. Reads check the CRC again (storage)
//! but trust the records: what was stored was validated.

use crate::api::error_code;
use crate::compression::{decompress, Codec, DecompressError, DECOMPRESSED_BYTES_MAX};
use crate::record_batch::{
    get_unsigned_varint, validate_batch, zigzag_decode, BatchError, BatchHeader, HEADER_BYTES,
    VARINT_BYTES_MAX, VARLONG_BYTES_MAX,
};
use std::fmt;

/// Why a produced batch is refused; each maps to the Kafka error code a
/// Kafka broker answers (`error_code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidBatch {
    /// Header, length, CRC-32C or record count (the batch as a whole).
    Batch(BatchError),
    /// Compression ids 5..7 (no such codec).
    CodecUnknown {
        id: i16,
    },
    Decompress(DecompressError),
    /// A control batch: only a transaction coordinator writes those.
    Control,
    /// The transactional bit from a producer that is not in a transaction
    /// (Sluice has no transactions yet, so: any producer).
    Transactional,
    /// A record that does not parse, or the section around the records.
    Record {
        index: i32,
        fault: RecordFault,
    },
}

/// What is wrong inside the records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFault {
    /// A varint that runs past its record or is longer than 5 (10) bytes.
    VarintInvalid,
    /// The record length is negative or runs past the section.
    LengthInvalid,
    /// The offset delta is not the record's index.
    OffsetDeltaInvalid { offset_delta: i32 },
    /// A key, value or header length below -1 or past the record's end.
    FieldLengthInvalid,
    /// A negative header count, or a header key that is null.
    HeaderInvalid,
    /// The fields end before or after the record's length says.
    SizeMismatch,
    /// Fewer records than records_count.
    RecordsMissing,
    /// Bytes left after records_count records.
    TrailingBytes,
    /// A record without a key where keys are required (a compacted topic).
    KeyMissing,
}

impl fmt::Display for RecordFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordFault::VarintInvalid => {
                write!(f, "a varint is malformed or runs past the record")
            }
            RecordFault::LengthInvalid => write!(f, "the record length is invalid"),
            RecordFault::OffsetDeltaInvalid { offset_delta } => {
                write!(
                    f,
                    "offset delta {offset_delta} is not the record's position"
                )
            }
            RecordFault::FieldLengthInvalid => write!(f, "a key or value length is invalid"),
            RecordFault::HeaderInvalid => write!(f, "a record header is malformed"),
            RecordFault::SizeMismatch => write!(f, "the record's fields do not fill its length"),
            RecordFault::RecordsMissing => write!(f, "fewer records than records_count"),
            RecordFault::TrailingBytes => write!(f, "bytes after the last record"),
            RecordFault::KeyMissing => {
                write!(f, "a compacted topic cannot accept a record without a key")
            }
        }
    }
}

impl fmt::Display for InvalidBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidBatch::Batch(e) => write!(f, "{e}"),
            InvalidBatch::CodecUnknown { id } => write!(f, "unknown compression codec id {id}"),
            InvalidBatch::Decompress(e) => write!(f, "{e}"),
            InvalidBatch::Control => write!(f, "clients may not write control batches"),
            InvalidBatch::Transactional => write!(
                f,
                "transactional batch from a producer that is not in a transaction (transactions are not supported)"
            ),
            InvalidBatch::Record { index, fault } => write!(f, "record {index}: {fault}"),
        }
    }
}

impl std::error::Error for InvalidBatch {}

impl InvalidBatch {
    /// The code a Kafka broker answers for this (`CorruptRecordException` for
    /// a bad CRC or size, `InvalidRecordException` for bad records).
    pub fn error_code(&self) -> i16 {
        match self {
            InvalidBatch::Batch(BatchError::MagicUnsupported { .. }) => {
                error_code::UNSUPPORTED_FOR_MESSAGE_FORMAT
            }
            InvalidBatch::Batch(_) => error_code::CORRUPT_MESSAGE,
            InvalidBatch::Decompress(DecompressError::TooLarge { .. }) => {
                error_code::MESSAGE_TOO_LARGE
            }
            InvalidBatch::Transactional => error_code::INVALID_TXN_STATE,
            InvalidBatch::CodecUnknown { .. }
            | InvalidBatch::Decompress(DecompressError::Corrupt { .. })
            | InvalidBatch::Control
            | InvalidBatch::Record { .. } => error_code::INVALID_RECORD,
        }
    }
}

/// Validates one whole produced batch (exactly `batch`, nothing after it).
/// `scratch` holds the decompressed section of a compressed batch; reuse it.
/// A compressed section may decompress to at most `decompressed_bytes_max`
/// (and never more than [`DECOMPRESSED_BYTES_MAX`]). Returns the header and
/// the bytes of the (decompressed) records section.
pub fn validate_produced_batch(
    batch: &[u8],
    scratch: &mut Vec<u8>,
    decompressed_bytes_max: usize,
) -> Result<(BatchHeader, usize), InvalidBatch> {
    validate_produced_batch_with(batch, scratch, decompressed_bytes_max, false)
}

/// As [`validate_produced_batch`]; with `keys_required` (topics with
/// `cleanup.policy=compact`) a record without a key is refused too.
pub fn validate_produced_batch_with(
    batch: &[u8],
    scratch: &mut Vec<u8>,
    decompressed_bytes_max: usize,
    keys_required: bool,
) -> Result<(BatchHeader, usize), InvalidBatch> {
    let header = validate_batch(batch).map_err(InvalidBatch::Batch)?;
    if header.is_control() {
        return Err(InvalidBatch::Control);
    }
    if header.is_transactional() {
        return Err(InvalidBatch::Transactional);
    }
    let codec = Codec::from_id(header.compression()).ok_or(InvalidBatch::CodecUnknown {
        id: header.compression(),
    })?;
    let section = &batch[HEADER_BYTES..];
    let (result, records_bytes) = if codec == Codec::None {
        (
            check_records_with(section, header.records_count, keys_required),
            section.len(),
        )
    } else {
        let length = decompress(
            codec,
            section,
            decompressed_bytes_max.min(DECOMPRESSED_BYTES_MAX),
            scratch,
        )
        .map_err(InvalidBatch::Decompress)?;
        let result = check_records_with(&scratch[..length], header.records_count, keys_required);
        // One huge batch should not pin its size on this thread forever.
        if scratch.capacity() > SCRATCH_BYTES_KEPT {
            *scratch = Vec::new();
        }
        (result, length)
    };
    result.map_err(|(index, fault)| InvalidBatch::Record { index, fault })?;
    Ok((header, records_bytes))
}

/// A decompression buffer above this is freed after use. Above an LZ4
/// frame's largest block maximum (4 MiB) plus its decompressed data, so the
/// common case keeps its scratch: at 8 MiB, batches of LZ4 frames declaring
/// 4 MiB blocks freed and re-zeroed it every time (a third of the broker's CPU
/// in page faults under workload 1 with lz4).
const SCRATCH_BYTES_KEPT: usize = 16 << 20;

/// Walks `count` records of an uncompressed section; on a fault, the index of
/// the record where it was found.
pub fn check_records(section: &[u8], count: i32) -> Result<(), (i32, RecordFault)> {
    check_records_with(section, count, false)
}

fn check_records_with(
    section: &[u8],
    count: i32,
    keys_required: bool,
) -> Result<(), (i32, RecordFault)> {
    let mut at = 0usize;
    let mut index = 0i32;
    while index < count {
        if at >= section.len() {
            return Err((index, RecordFault::RecordsMissing));
        }
        check_record(section, &mut at, index, keys_required).map_err(|fault| (index, fault))?;
        index += 1;
    }
    if at != section.len() {
        return Err((count, RecordFault::TrailingBytes));
    }
    Ok(())
}

/// One record at `*at`: `length varint | attributes i8 | timestamp_delta varlong
/// | offset_delta varint | key_length varint | key | value_length varint |
/// value | header_count varint | headers (key_length varint, key,
/// value_length varint, value)`.
fn check_record(
    section: &[u8],
    at: &mut usize,
    index: i32,
    keys_required: bool,
) -> Result<(), RecordFault> {
    let length = get_varint(section, at, section.len())?;
    if length < 0 {
        return Err(RecordFault::LengthInvalid);
    }
    let end = at
        .checked_add(length as usize)
        .filter(|end| *end <= section.len())
        .ok_or(RecordFault::LengthInvalid)?;
    let mut cursor = *at;
    if cursor >= end {
        return Err(RecordFault::SizeMismatch);
    }
    cursor += 1; // attributes: unused by Kafka, any value
    get_varlong(section, &mut cursor, end)?; // timestamp delta
    let offset_delta = get_varint(section, &mut cursor, end)?;
    if offset_delta != index {
        return Err(RecordFault::OffsetDeltaInvalid { offset_delta });
    }
    if keys_required && get_varint(section, &mut cursor.clone(), end)? == -1 {
        return Err(RecordFault::KeyMissing);
    }
    skip_bytes(section, &mut cursor, end, true)?; // key
    skip_bytes(section, &mut cursor, end, true)?; // value
    let headers = get_varint(section, &mut cursor, end)?;
    if headers < 0 {
        return Err(RecordFault::HeaderInvalid);
    }
    for _ in 0..headers {
        // Each header takes at least two bytes: a fault, not a long loop, on a huge count.
        if cursor >= end {
            return Err(RecordFault::HeaderInvalid);
        }
        let key_length = get_varint(section, &mut cursor, end)?;
        if key_length < 0 {
            return Err(RecordFault::HeaderInvalid);
        }
        cursor = cursor
            .checked_add(key_length as usize)
            .filter(|c| *c <= end)
            .ok_or(RecordFault::HeaderInvalid)?;
        skip_bytes(section, &mut cursor, end, true)?; // header value
    }
    if cursor != end {
        return Err(RecordFault::SizeMismatch);
    }
    *at = end;
    Ok(())
}

/// Skips a `length varint | bytes` field; -1 is null when `nullable`.
fn skip_bytes(
    section: &[u8],
    cursor: &mut usize,
    end: usize,
    nullable: bool,
) -> Result<(), RecordFault> {
    let length = get_varint(section, cursor, end)?;
    if length == -1 && nullable {
        return Ok(());
    }
    if length < 0 {
        return Err(RecordFault::FieldLengthInvalid);
    }
    *cursor = cursor
        .checked_add(length as usize)
        .filter(|c| *c <= end)
        .ok_or(RecordFault::FieldLengthInvalid)?;
    Ok(())
}

/// A zigzag varint of at most 5 bytes (Kafka's `ByteUtils.readVarint`), read before `end`.
fn get_varint(bytes: &[u8], at: &mut usize, end: usize) -> Result<i32, RecordFault> {
    get_unsigned_varint(bytes, at, end, VARINT_BYTES_MAX)
        .filter(|value| *value <= u32::MAX as u64)
        .map(|value| zigzag_decode(value) as i32)
        .ok_or(RecordFault::VarintInvalid)
}

/// A zigzag varlong of at most 10 bytes, read before `end`.
fn get_varlong(bytes: &[u8], at: &mut usize, end: usize) -> Result<i64, RecordFault> {
    get_unsigned_varint(bytes, at, end, VARLONG_BYTES_MAX)
        .map(zigzag_decode)
        .ok_or(RecordFault::VarintInvalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::compress;
    use crate::record_batch::{
        assemble_batch, build_batch, compute_crc, put_record, BatchFields, ATTRIBUTE_CONTROL,
        ATTRIBUTE_TRANSACTIONAL,
    };

    fn section(values: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            put_record(&mut out, i as i64, i as i32, Some(b"key"), v);
        }
        out
    }

    fn batch_of(section: &[u8], count: i32, attributes: i16) -> Vec<u8> {
        let fields = BatchFields {
            attributes,
            records_count: count,
            base_timestamp: 1_000,
            max_timestamp: 1_000,
            ..BatchFields::default()
        };
        let mut out = Vec::new();
        assemble_batch(&mut out, &fields, section);
        out
    }

    fn check(batch: &[u8]) -> Result<BatchHeader, InvalidBatch> {
        validate_produced_batch(batch, &mut Vec::new(), DECOMPRESSED_BYTES_MAX).map(|(h, _)| h)
    }

    #[test]
    fn good_batches_of_every_codec_pass() {
        let values: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("value {i}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let plain = section(&refs);
        for id in 0..=4 {
            let codec = Codec::from_id(id).unwrap();
            let batch = batch_of(&compress(codec, &plain), 300, id);
            let header = check(&batch).unwrap();
            assert_eq!(header.records_count, 300);
        }
        assert!(check(&build_batch(5, &[b"a", b"b"])).is_ok());
    }

    #[test]
    fn records_with_headers_and_null_fields_pass() {
        let mut s = Vec::new();
        // length, attributes, ts delta, offset delta, key -1 (null), value -1 (null),
        // 2 headers: ("h", null), ("", "v")
        let body: Vec<u8> = vec![0, 0, 0, 1, 1, 4, 2, b'h', 1, 0, 2, b'v'];
        s.push((body.len() as u8) << 1);
        s.extend_from_slice(&body);
        assert_eq!(check_records(&s, 1), Ok(()));
    }

    #[test]
    fn fewer_records_than_counted_is_invalid_record() {
        let s = section(&[b"a", b"b"]);
        // records_count and last_offset_delta agree (5), the section has 2 records.
        let batch = batch_of(&s, 5, 0);
        let error = check(&batch).unwrap_err();
        assert_eq!(
            error,
            InvalidBatch::Record {
                index: 2,
                fault: RecordFault::RecordsMissing
            }
        );
        assert_eq!(error.error_code(), error_code::INVALID_RECORD);
        // The offset-space burner: 2^31 - 1 records claimed, one present.
        let batch = batch_of(&section(&[b"x"]), i32::MAX, 0);
        assert_eq!(
            check(&batch).unwrap_err().error_code(),
            error_code::INVALID_RECORD
        );
    }

    #[test]
    fn garbage_records_and_trailing_bytes_are_refused() {
        let batch = batch_of(&[0xffu8; 40], 1, 0);
        assert_eq!(
            check(&batch).unwrap_err().error_code(),
            error_code::INVALID_RECORD
        );
        let mut s = section(&[b"a"]);
        s.push(0);
        assert_eq!(
            check(&batch_of(&s, 1, 0)).unwrap_err(),
            InvalidBatch::Record {
                index: 1,
                fault: RecordFault::TrailingBytes
            }
        );
    }

    #[test]
    fn offset_deltas_must_count_from_zero() {
        let mut s = Vec::new();
        put_record(&mut s, 0, 0, None, b"a");
        put_record(&mut s, 0, 2, None, b"b");
        assert_eq!(
            check_records(&s, 2),
            Err((1, RecordFault::OffsetDeltaInvalid { offset_delta: 2 }))
        );
    }

    #[test]
    fn every_truncation_of_a_record_is_a_fault_not_a_panic() {
        let s = section(&[b"hello", b"world"]);
        for cut in 0..s.len() {
            assert!(check_records(&s[..cut], 2).is_err(), "cut at {cut}");
        }
        // And every single-byte change is caught or still parses: never a panic.
        for at in 0..s.len() {
            for value in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut changed = s.clone();
                changed[at] = value;
                let _ = check_records(&changed, 2);
            }
        }
    }

    #[test]
    fn control_transactional_and_unknown_codec_are_refused() {
        let s = section(&[b"a"]);
        assert_eq!(
            check(&batch_of(&s, 1, ATTRIBUTE_CONTROL)).unwrap_err(),
            InvalidBatch::Control
        );
        let error = check(&batch_of(&s, 1, ATTRIBUTE_TRANSACTIONAL)).unwrap_err();
        assert_eq!(error.error_code(), error_code::INVALID_TXN_STATE);
        for id in 5..=7 {
            let error = check(&batch_of(&s, 1, id)).unwrap_err();
            assert_eq!(error, InvalidBatch::CodecUnknown { id });
            assert_eq!(error.error_code(), error_code::INVALID_RECORD);
        }
    }

    #[test]
    fn compressed_garbage_and_compressed_bad_records_are_refused() {
        for id in 1..=4 {
            let garbage = batch_of(b"this is not compressed data at all", 1, id);
            assert_eq!(
                check(&garbage).unwrap_err().error_code(),
                error_code::INVALID_RECORD,
                "codec {id}"
            );
            // Decompresses fine, to garbage records.
            let codec = Codec::from_id(id).unwrap();
            let bad = batch_of(&compress(codec, &[0xffu8; 100]), 1, id);
            assert!(
                matches!(check(&bad).unwrap_err(), InvalidBatch::Record { .. }),
                "codec {id}"
            );
        }
    }

    #[test]
    fn a_bad_crc_is_still_corrupt_message() {
        let mut batch = build_batch(5, &[b"a"]);
        let last = batch.len() - 1;
        batch[last] ^= 1;
        assert_eq!(
            check(&batch).unwrap_err().error_code(),
            error_code::CORRUPT_MESSAGE
        );
        // Recomputing the CRC makes it a record problem instead.
        let crc = compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(check(&batch).is_err());
    }

    #[test]
    fn varints_are_bounded() {
        let mut at = 0;
        assert_eq!(
            get_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &mut at, 6),
            Err(RecordFault::VarintInvalid)
        );
        let mut at = 0;
        assert_eq!(
            get_varint(&[0xfe, 0xff, 0xff, 0xff, 0x0f], &mut at, 5),
            Ok(i32::MAX)
        );
        let mut at = 0;
        assert_eq!(get_varint(&[0x01], &mut at, 1), Ok(-1));
        let mut at = 0;
        assert_eq!(
            get_varint(&[0x80], &mut at, 1),
            Err(RecordFault::VarintInvalid)
        );
    }
}
