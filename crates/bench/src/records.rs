//! Messages on the wire: the payload layout, batch building with compression,
//! and reading fetched batches back.
//!
//! Payload: bytes 0..8 the send time (µs since the Unix epoch, big-endian),
//! 8..16 the producer number and sequence, then filler text (letters, so
//! lz4/zstd compress it about as well as typical log lines).

use crate::workload::Compression;
use sluice_protocol::record_batch::{
    assemble_batch, put_record, records, validate_batch_prefix, BatchFields, BatchHeader,
    HEADER_BYTES,
};
use std::io::{Read, Write};

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Filler for payloads: pseudo-random lowercase words, the same for a seed.
pub fn filler(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = 2 + (state % 7) as usize;
        for i in 0..word {
            out.push(b'a' + ((state >> (8 + i * 5)) % 26) as u8);
        }
        out.push(b' ');
    }
    out.truncate(size);
    out
}

/// Writes the send time and identity into a payload's first 16 bytes.
pub fn stamp(payload: &mut [u8], send_us: u64, producer: u32, sequence: u32) {
    payload[..8].copy_from_slice(&send_us.to_be_bytes());
    payload[8..12].copy_from_slice(&producer.to_be_bytes());
    payload[12..16].copy_from_slice(&sequence.to_be_bytes());
}

pub fn send_time_us(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// A partition's batch being filled: its uncompressed records section.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    section: Vec<u8>,
    count: i32,
    first_timestamp_ms: i64,
}

impl BatchBuilder {
    pub fn with_capacity(bytes: usize) -> BatchBuilder {
        BatchBuilder {
            section: Vec::with_capacity(bytes),
            ..BatchBuilder::default()
        }
    }

    /// Bytes of the records section so far (before compression).
    pub fn bytes(&self) -> usize {
        self.section.len()
    }

    pub fn push(&mut self, timestamp_ms: i64, key: Option<&[u8]>, value: &[u8]) {
        if self.count == 0 {
            self.first_timestamp_ms = timestamp_ms;
        }
        put_record(
            &mut self.section,
            timestamp_ms - self.first_timestamp_ms,
            self.count,
            key,
            value,
        );
        self.count += 1;
    }

    /// Appends the finished batch (compressed as asked) to `out` and empties
    /// the builder.
    pub fn finish_into(
        &mut self,
        out: &mut Vec<u8>,
        compression: Compression,
        last_timestamp_ms: i64,
    ) -> Result<(), String> {
        let fields = BatchFields {
            attributes: compression.codec_id(),
            base_timestamp: self.first_timestamp_ms,
            max_timestamp: last_timestamp_ms.max(self.first_timestamp_ms),
            records_count: self.count,
            ..BatchFields::default()
        };
        match compression {
            Compression::None => assemble_batch(out, &fields, &self.section),
            codec => assemble_batch(out, &fields, &compress(codec, &self.section)?),
        }
        self.section.clear();
        self.count = 0;
        Ok(())
    }
}

pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, String> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(data.len()));
            encoder.write_all(data).map_err(|e| format!("lz4: {e}"))?;
            encoder.finish().map_err(|e| format!("lz4: {e}"))
        }
        Compression::Zstd => zstd::bulk::compress(data, 1).map_err(|e| format!("zstd: {e}")),
    }
}

/// Largest decompressed records section accepted from a broker.
const DECOMPRESSED_BYTES_MAX: u64 = 256 << 20;

pub fn decompress(codec: i16, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match codec {
        3 => lz4_flex::frame::FrameDecoder::new(data)
            .take(DECOMPRESSED_BYTES_MAX)
            .read_to_end(&mut out)
            .map_err(|e| format!("lz4: {e}"))?,
        4 => zstd::stream::Decoder::new(data)
            .map_err(|e| format!("zstd: {e}"))?
            .take(DECOMPRESSED_BYTES_MAX)
            .read_to_end(&mut out)
            .map_err(|e| format!("zstd: {e}"))?,
        other => {
            return Err(format!(
                "compression codec {other} is not supported by sluice-bench"
            ))
        }
    };
    Ok(out)
}

/// What one fetched partition's records held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Consumed {
    pub messages: u64,
    pub bytes: u64,
    /// Offset to fetch next (unchanged if nothing whole was returned).
    pub next_offset: i64,
}

/// Walks the batches of a fetched partition, skipping records before
/// `fetch_offset` (a batch may start earlier) and a partial batch at the end;
/// calls `on_value(send_time_us)` per message.
pub fn consume_batches(
    mut data: &[u8],
    fetch_offset: i64,
    mut on_value: impl FnMut(Option<u64>),
) -> Result<Consumed, String> {
    let mut consumed = Consumed {
        next_offset: fetch_offset,
        ..Consumed::default()
    };
    while data.len() >= HEADER_BYTES {
        let header = BatchHeader::parse(data).map_err(|e| format!("bad batch: {e}"))?;
        let total = header.total_bytes();
        if data.len() < total {
            break; // partial batch at the end of a fetch
        }
        // As Kafka consumers' check.crcs: a corrupt batch is an error, not a gap.
        validate_batch_prefix(data)
            .map_err(|e| format!("batch at offset {}: {e}", header.base_offset))?;
        let body = &data[HEADER_BYTES..total];
        let decompressed;
        let section = match header.compression() {
            0 => body,
            codec => {
                decompressed = decompress(codec, body)
                    .map_err(|e| format!("batch at offset {}: {e}", header.base_offset))?;
                &decompressed[..]
            }
        };
        if !header.is_control() {
            let mut read = 0;
            for record in records(section, header.records_count) {
                read += 1;
                if header.base_offset + (record.offset_delta as i64) < fetch_offset {
                    continue;
                }
                let value = record.value.unwrap_or_default();
                consumed.messages += 1;
                consumed.bytes += value.len() as u64;
                on_value(send_time_us(value));
            }
            if read != header.records_count {
                return Err(format!(
                    "batch at offset {}: only {read} of {} records are readable",
                    header.base_offset, header.records_count
                ));
            }
        }
        consumed.next_offset = consumed.next_offset.max(header.last_offset() + 1);
        data = &data[total..];
    }
    Ok(consumed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::record_batch::{set_base_offset, validate_batch};

    fn batch(codec: Compression, base_offset: i64, values: &[Vec<u8>]) -> Vec<u8> {
        let mut b = BatchBuilder::default();
        for v in values {
            b.push(1_000, Some(b"key"), v);
        }
        let mut out = Vec::new();
        b.finish_into(&mut out, codec, 1_000).unwrap();
        assert_eq!(b.bytes(), 0);
        set_base_offset(&mut out, base_offset);
        out
    }

    #[test]
    fn every_codec_round_trips_and_keeps_send_times() {
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let values: Vec<Vec<u8>> = (0..20u64)
                .map(|i| {
                    let mut v = filler(100, 7);
                    stamp(&mut v, 1_000_000 + i, 1, i as u32);
                    v
                })
                .collect();
            let wire = batch(codec, 40, &values);
            let header = validate_batch(&wire).unwrap();
            assert_eq!(header.compression(), codec.codec_id());
            if codec != Compression::None {
                assert!(
                    wire.len() < 20 * 100,
                    "{codec:?} did not compress: {}",
                    wire.len()
                );
            }
            let mut times = Vec::new();
            let got = consume_batches(&wire, 40, |t| times.push(t.unwrap())).unwrap();
            assert_eq!(
                got,
                Consumed {
                    messages: 20,
                    bytes: 2000,
                    next_offset: 60
                }
            );
            assert_eq!(times, (0..20).map(|i| 1_000_000 + i).collect::<Vec<_>>());
        }
    }

    #[test]
    fn records_before_the_fetch_offset_and_a_partial_tail_are_skipped() {
        let values: Vec<Vec<u8>> = (0..5).map(|_| filler(16, 1)).collect();
        let mut wire = batch(Compression::None, 10, &values); // offsets 10..15
        let second = batch(Compression::None, 15, &values); // offsets 15..20
        wire.extend_from_slice(&second[..second.len() - 3]);
        let got = consume_batches(&wire, 12, |_| {}).unwrap();
        assert_eq!(got.messages, 3);
        assert_eq!(got.next_offset, 15);
    }

    #[test]
    fn a_flipped_bit_is_an_error_not_a_gap() {
        let mut wire = batch(Compression::None, 0, &[filler(64, 3), filler(64, 4)]);
        let n = wire.len();
        wire[n - 10] ^= 0x01;
        let e = consume_batches(&wire, 0, |_| {}).unwrap_err();
        assert!(e.contains("CRC") || e.contains("crc"), "{e}");
    }

    #[test]
    fn control_batches_advance_the_offset_but_are_not_messages() {
        let mut wire = batch(Compression::None, 7, &[filler(16, 1)]);
        // Set the control attribute (bit 5) and fix the CRC.
        wire[22] |= 0x20;
        let crc = sluice_protocol::record_batch::compute_crc(&wire);
        wire[17..21].copy_from_slice(&crc.to_be_bytes());
        let got =
            consume_batches(&wire, 7, |_| panic!("a control record is not a message")).unwrap();
        assert_eq!((got.messages, got.next_offset), (0, 8));
    }

    #[test]
    fn a_compressed_batch_starting_before_the_fetch_offset_yields_only_the_rest() {
        let values: Vec<Vec<u8>> = (0..10u64)
            .map(|i| {
                let mut v = filler(32, 9);
                stamp(&mut v, i, 0, i as u32);
                v
            })
            .collect();
        let wire = batch(Compression::Zstd, 100, &values); // offsets 100..110
        let mut times = Vec::new();
        let got = consume_batches(&wire, 104, |t| times.push(t.unwrap())).unwrap();
        assert_eq!((got.messages, got.next_offset), (6, 110));
        assert_eq!(times, vec![4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn corrupt_compressed_data_is_an_error() {
        let mut wire = batch(Compression::Lz4, 0, &[filler(64, 3)]);
        let n = wire.len();
        wire[n - 8..].fill(0xff);
        let crc = sluice_protocol::record_batch::compute_crc(&wire);
        wire[17..21].copy_from_slice(&crc.to_be_bytes());
        let e = consume_batches(&wire, 0, |_| {}).unwrap_err();
        assert!(e.contains("lz4"), "{e}");
    }

    #[test]
    fn filler_is_letters_and_deterministic() {
        let a = filler(1000, 42);
        assert_eq!(a, filler(1000, 42));
        assert!(a.iter().all(|&c| c == b' ' || c.is_ascii_lowercase()));
    }
}
