//! The record-batch compression codecs (attributes bits 0..3), each with the
//! well-kept crate for it: gzip (flate2), snappy (snap), lz4 (lz4_flex, LZ4
//! frames as Kafka writes them), zstd (zstd). Decompression is always bounded:
//! a few kilobytes of zstd can expand to gigabytes, so every codec stops at
//! `limit` bytes and says so.
//!
//! Snappy comes in two framings: the Java client writes snappy-java's stream
//! format (an 8-byte magic, two i32 versions, then blocks of `i32 length |
//! raw snappy`), librdkafka writes one raw snappy block. Both are read.

use std::io::Read;

/// The largest decompressed records section the broker will look at. A batch
/// is at most `max.message.bytes` (1 MiB by default) compressed; real text
/// compresses 3-10x, so 64 MiB leaves room for very compressible payloads
/// while bounding what one request can make a core allocate.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    /// The codec of attributes bits 0..3; `None` for ids 5..7, which no Kafka version defines.
    pub fn from_id(id: i16) -> Option<Codec> {
        match id {
            0 => Some(Codec::None),
            1 => Some(Codec::Gzip),
            2 => Some(Codec::Snappy),
            3 => Some(Codec::Lz4),
            4 => Some(Codec::Zstd),
            _ => None,
        }
    }

    pub fn id(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecompressError {
    /// The payload is not valid data of its codec.
    Corrupt { codec: Codec, detail: String },
    /// It decompresses to more than the limit.
    TooLarge { codec: Codec, limit: usize },
}

impl std::fmt::Display for DecompressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecompressError::Corrupt { codec, detail } => {
                write!(f, "{} payload does not decompress: {detail}", codec.name())
            }
            DecompressError::TooLarge { codec, limit } => write!(
                f,
                "{} payload decompresses to more than {limit} bytes",
                codec.name()
            ),
        }
    }
}

impl std::error::Error for DecompressError {}

/// snappy-java's stream header: magic, then version and compatible version (i32 each).
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// Decompresses `input` into `out` (cleared first), at most `limit` bytes.
/// `out` keeps its capacity between calls, so a caller that reuses it does
/// not allocate per batch.
pub fn decompress(
    codec: Codec,
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecompressError> {
    out.clear();
    let corrupt = |detail: String| DecompressError::Corrupt { codec, detail };
    match codec {
        Codec::None => {
            if input.len() > limit {
                return Err(DecompressError::TooLarge { codec, limit });
            }
            out.extend_from_slice(input);
            Ok(())
        }
        Codec::Gzip => read_bounded(codec, flate2::read::MultiGzDecoder::new(input), limit, out),
        Codec::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(input), limit, out),
        Codec::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| corrupt(e.to_string()))?;
            read_bounded(codec, decoder, limit, out)
        }
        Codec::Snappy => {
            if input.len() >= XERIAL_HEADER_BYTES && input.starts_with(XERIAL_MAGIC) {
                let mut rest = &input[XERIAL_HEADER_BYTES..];
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err(corrupt("snappy-java block length cut short".into()));
                    }
                    let length = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                    let block = rest.get(4..4 + length).ok_or_else(|| {
                        corrupt(format!("snappy-java block of {length} bytes cut short"))
                    })?;
                    snappy_block(block, limit, out).map_err(|e| match e {
                        SnappyFail::TooLarge => DecompressError::TooLarge { codec, limit },
                        SnappyFail::Corrupt(detail) => corrupt(detail),
                    })?;
                    rest = &rest[4 + length..];
                }
                Ok(())
            } else {
                snappy_block(input, limit, out).map_err(|e| match e {
                    SnappyFail::TooLarge => DecompressError::TooLarge { codec, limit },
                    SnappyFail::Corrupt(detail) => corrupt(detail),
                })
            }
        }
    }
}

enum SnappyFail {
    TooLarge,
    Corrupt(String),
}

/// Appends one raw snappy block to `out`; its decompressed length is in its
/// first varint, so the limit is checked before anything is allocated.
fn snappy_block(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), SnappyFail> {
    let length =
        snap::raw::decompress_len(block).map_err(|e| SnappyFail::Corrupt(e.to_string()))?;
    if out.len() + length > limit {
        return Err(SnappyFail::TooLarge);
    }
    let start = out.len();
    out.resize(start + length, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| SnappyFail::Corrupt(e.to_string()))?;
    out.truncate(start + written);
    Ok(())
}

fn read_bounded(
    codec: Codec,
    reader: impl Read,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecompressError> {
    // One byte past the limit tells "exactly the limit" from "more".
    reader
        .take(limit as u64 + 1)
        .read_to_end(out)
        .map_err(|e| DecompressError::Corrupt {
            codec,
            detail: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge { codec, limit });
    }
    Ok(())
}

/// Compresses `input` with `codec` the way Kafka clients frame it (gzip
/// stream, raw snappy block as librdkafka writes, LZ4 frame, zstd frame).
/// For tests, benchmarks and `sluice-bench`.
pub fn compress(codec: Codec, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match codec {
        Codec::None => input.to_vec(),
        Codec::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(input).expect("writing to a Vec");
            encoder.finish().expect("writing to a Vec")
        }
        Codec::Snappy => snap::raw::Encoder::new()
            .compress_vec(input)
            .expect("snappy compresses any input"),
        Codec::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(input).expect("writing to a Vec");
            encoder.finish().expect("writing to a Vec")
        }
        Codec::Zstd => zstd::bulk::compress(input, 1).expect("zstd compresses any input"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    #[test]
    fn every_codec_round_trips_and_reuses_the_buffer() {
        let text: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut out = Vec::new();
        for codec in ALL {
            assert_eq!(Codec::from_id(codec.id()), Some(codec));
            let packed = compress(codec, &text);
            decompress(codec, &packed, DECOMPRESSED_BYTES_MAX, &mut out).unwrap();
            assert_eq!(out, text, "{}", codec.name());
            // Exactly at the limit is fine; one byte less is not.
            decompress(codec, &packed, text.len(), &mut out).unwrap();
            assert_eq!(
                decompress(codec, &packed, text.len() - 1, &mut out),
                Err(DecompressError::TooLarge {
                    codec,
                    limit: text.len() - 1
                })
            );
        }
        for id in [5, 6, 7, -1] {
            assert_eq!(Codec::from_id(id), None);
        }
    }

    #[test]
    fn a_compression_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 32 << 20];
        let mut out = Vec::new();
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let packed = compress(codec, &zeros);
            assert!(matches!(
                decompress(codec, &packed, 1 << 20, &mut out),
                Err(DecompressError::TooLarge { .. })
            ));
            assert!(
                out.len() <= (1 << 20) + 1,
                "{} read {} bytes",
                codec.name(),
                out.len()
            );
        }
    }

    #[test]
    fn garbage_is_corrupt_for_every_codec() {
        let mut out = Vec::new();
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            for garbage in [
                &b""[..],
                b"\x00",
                b"not compressed at all, just text",
                &[0xff; 64],
            ] {
                let result = decompress(codec, garbage, 1 << 20, &mut out);
                // b"" and b"\x00" are a valid empty raw snappy block (length
                // varint 0) and must only not panic elsewhere; the rest must fail.
                if garbage.len() > 1 {
                    assert!(
                        matches!(result, Err(DecompressError::Corrupt { .. })),
                        "{} accepted {garbage:?}",
                        codec.name()
                    );
                }
            }
        }
    }

    #[test]
    fn snappy_java_framing_is_read() {
        // What the Java client's SnappyOutputStream writes: header, then blocks.
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&1i32.to_be_bytes());
        framed.extend_from_slice(&1i32.to_be_bytes());
        for part in [&b"hello, "[..], b"snappy-java"] {
            let block = snap::raw::Encoder::new().compress_vec(part).unwrap();
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        let mut out = Vec::new();
        decompress(Codec::Snappy, &framed, 1 << 20, &mut out).unwrap();
        assert_eq!(out, b"hello, snappy-java");
        // A block length past the end is corrupt, not a panic.
        let mut cut = framed.clone();
        cut.truncate(framed.len() - 3);
        assert!(matches!(
            decompress(Codec::Snappy, &cut, 1 << 20, &mut out),
            Err(DecompressError::Corrupt { .. })
        ));
    }
}
