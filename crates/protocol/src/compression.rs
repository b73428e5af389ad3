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

thread_local! {
    /// This thread's zstd decompression context (a shard's core: reused by every batch).
    static ZSTD_CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The largest zstd window a streamed frame may ask for (2^25 = 32 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 25;
/// Snappy cannot expand more than ~21x (a 64-byte copy in a 3-byte tag); a
/// block declaring more is corrupt, and is refused before anything is sized by it.
const SNAPPY_EXPANSION_MAX: usize = 32;

/// snappy-java's stream header: magic, then version and compatible version (i32 each).
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// Decompresses `input` into `out`, at most `limit` bytes; returns the
/// decompressed length: the data is `out[..length]`, and anything after it is
/// scratch. `out` keeps its capacity (and LZ4 its zeroed scratch) between
/// calls, so a caller that reuses it does not allocate per batch.
pub fn decompress(
    codec: Codec,
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<usize, DecompressError> {
    if codec == Codec::Lz4 {
        // Decoded in place over the scratch left by earlier calls.
        return lz4_frames(input, limit, out).map_err(|e| match e {
            Lz4Fail::TooLarge => DecompressError::TooLarge { codec, limit },
            Lz4Fail::Corrupt(detail) => DecompressError::Corrupt {
                codec,
                detail: detail.to_string(),
            },
        });
    }
    out.clear();
    decompress_appending(codec, input, limit, out)?;
    Ok(out.len())
}

fn decompress_appending(
    codec: Codec,
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecompressError> {
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
        Codec::Lz4 => unreachable!("decoded in place by `decompress`"),
        Codec::Zstd => {
            // One shot into a buffer of the frame's declared size, with this
            // thread's reused context: 60 -> 49 us per 128 KiB batch against
            // streaming with a fresh context (benches/src/bin/validate.rs). Frames that
            // do not declare their size (Java's zstd-jni streams), and several
            // frames in a row, take the bounded stream.
            if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(input) {
                if size > limit as u64 {
                    return Err(DecompressError::TooLarge { codec, limit });
                }
                out.reserve(size as usize);
                let done = ZSTD_CONTEXT.with(|context| {
                    let mut context = context.borrow_mut();
                    let context = match context.as_mut() {
                        Some(context) => context,
                        None => context.insert(
                            zstd::bulk::Decompressor::new().map_err(|e| corrupt(e.to_string()))?,
                        ),
                    };
                    Ok::<bool, DecompressError>(context.decompress_to_buffer(input, out).is_ok())
                })?;
                // The context writes into all of `out`'s capacity: a second
                // frame after the declared one may pass the size, so the
                // bound is checked again.
                if done && out.len() <= limit {
                    return Ok(());
                }
                if done {
                    return Err(DecompressError::TooLarge { codec, limit });
                }
                out.clear();
            }
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| corrupt(e.to_string()))?;
            // A tiny frame may declare a 128 MiB window (libzstd's default
            // limit) and have the decoder allocate it; 32 MiB covers every
            // level up to 19 and the small batches of level 20+.
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
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
    if length > block.len().saturating_mul(SNAPPY_EXPANSION_MAX) + 64 {
        return Err(SnappyFail::Corrupt(format!(
            "a block of {} bytes declares {length} bytes",
            block.len()
        )));
    }
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

enum Lz4Fail {
    TooLarge,
    Corrupt(&'static str),
}

const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;
/// How far back an LZ4 block of a linked frame may reach into earlier blocks.
const LZ4_WINDOW_BYTES: usize = 64 << 10;

/// LZ4 frames (what Kafka clients write: the Java client's
/// KafkaLZ4BlockOutputStream, librdkafka's LZ4F) decoded block by block with
/// lz4_flex straight into `out`. lz4_flex's streaming FrameDecoder set up its
/// buffers per batch and copied every block once more: workload 1 with lz4
/// lost 39% of its throughput to it; this way, with the scratch kept (see
/// `validate.rs`), nothing measurable (benches/RESULTS.md).
/// Checksums are not verified (the batch's CRC-32C covers the payload).
/// Returns the decompressed length; `out` may be longer: bytes past the
/// length are scratch, zeroed once when first grown and reused by later calls
/// (a 4 MiB block maximum must not cost a 4 MiB memset per batch).
fn lz4_frames(mut input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<usize, Lz4Fail> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], Lz4Fail> {
        if input.len() < n {
            return Err(Lz4Fail::Corrupt("LZ4 frame cut short"));
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Ok(head)
    }
    if input.is_empty() {
        return Err(Lz4Fail::Corrupt("empty LZ4 payload"));
    }
    let mut end = 0;
    while !input.is_empty() {
        let magic = u32::from_le_bytes(take(&mut input, 4)?.try_into().unwrap());
        if magic != LZ4_FRAME_MAGIC {
            return Err(Lz4Fail::Corrupt("not an LZ4 frame"));
        }
        let descriptor = take(&mut input, 2)?;
        let (flags, block_descriptor) = (descriptor[0], descriptor[1]);
        if flags >> 6 != 1 {
            return Err(Lz4Fail::Corrupt("unknown LZ4 frame version"));
        }
        let linked = flags & 0x20 == 0;
        let block_checksums = flags & 0x10 != 0;
        let content_size = flags & 0x08 != 0;
        let content_checksum = flags & 0x04 != 0;
        let dictionary = flags & 0x01 != 0;
        let block_max = match (block_descriptor >> 4) & 0x07 {
            4 => 64 << 10,
            5 => 256 << 10,
            6 => 1 << 20,
            7 => 4 << 20,
            _ => return Err(Lz4Fail::Corrupt("invalid LZ4 block size")),
        };
        take(
            &mut input,
            if content_size { 8 } else { 0 } + if dictionary { 4 } else { 0 } + 1,
        )?; // content size, dictionary id, header checksum
        let frame_start = end;
        loop {
            let word = u32::from_le_bytes(take(&mut input, 4)?.try_into().unwrap());
            if word == 0 {
                break; // end mark
            }
            let stored = word & 0x8000_0000 != 0;
            let block = take(&mut input, (word & 0x7FFF_FFFF) as usize)?;
            if block_checksums {
                take(&mut input, 4)?;
            }
            if stored {
                if block.len() > block_max {
                    return Err(Lz4Fail::Corrupt("LZ4 block over its frame's maximum"));
                }
                if end + block.len() > limit {
                    return Err(Lz4Fail::TooLarge);
                }
                if out.len() < end + block.len() {
                    out.resize(end + block.len(), 0);
                }
                out[end..end + block.len()].copy_from_slice(block);
                end += block.len();
                continue;
            }
            let room = block_max.min(limit - end);
            if out.len() < end + room {
                out.resize(end + room, 0);
            }
            let (before, after) = out.split_at_mut(end);
            let window = if linked {
                &before[frame_start.max(end.saturating_sub(LZ4_WINDOW_BYTES))..]
            } else {
                &[]
            };
            match lz4_flex::block::decompress_into_with_dict(block, &mut after[..room], window) {
                Ok(written) => end += written,
                Err(_) if room < block_max => return Err(Lz4Fail::TooLarge),
                Err(_) => return Err(Lz4Fail::Corrupt("LZ4 block does not decompress")),
            }
        }
        if content_checksum {
            take(&mut input, 4)?;
        }
    }
    Ok(end)
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
            let n = decompress(codec, &packed, DECOMPRESSED_BYTES_MAX, &mut out).unwrap();
            assert_eq!(&out[..n], &text[..], "{}", codec.name());
            // Exactly at the limit is fine; one byte less is not.
            assert_eq!(
                decompress(codec, &packed, text.len(), &mut out),
                Ok(text.len())
            );
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
    fn lz4_frames_of_every_block_size_and_mode_are_read() {
        use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
        use std::io::Write;
        // Repetitive across blocks, so linked blocks really reach back.
        let text: Vec<u8> = (0..300_000u32)
            .map(|i| b"abcdefghij"[(i % 7) as usize] ^ (i / 70_000) as u8)
            .collect();
        let mut out = Vec::new();
        for size in [
            BlockSize::Max64KB,
            BlockSize::Max256KB,
            BlockSize::Max1MB,
            BlockSize::Max4MB,
        ] {
            for mode in [BlockMode::Independent, BlockMode::Linked] {
                for checksums in [false, true] {
                    let info = FrameInfo::new()
                        .block_size(size)
                        .block_mode(mode)
                        .block_checksums(checksums)
                        .content_checksum(checksums)
                        .content_size(checksums.then_some(text.len() as u64));
                    let mut encoder = FrameEncoder::with_frame_info(info, Vec::new());
                    encoder.write_all(&text).unwrap();
                    let packed = encoder.finish().unwrap();
                    let n = decompress(Codec::Lz4, &packed, 1 << 20, &mut out).unwrap();
                    assert_eq!(
                        &out[..n],
                        &text[..],
                        "{size:?} {mode:?} checksums {checksums}"
                    );
                    // Two frames in a row are read as one payload.
                    let twice = [packed.clone(), packed.clone()].concat();
                    let n = decompress(Codec::Lz4, &twice, 1 << 20, &mut out).unwrap();
                    assert_eq!(&out[..n], &[&text[..], &text[..]].concat()[..]);
                    // Every cut is an error, never a panic.
                    for cut in [1, 5, 7, 11, packed.len() / 2, packed.len() - 1] {
                        assert!(decompress(Codec::Lz4, &packed[..cut], 1 << 20, &mut out).is_err());
                    }
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
        let n = decompress(Codec::Snappy, &framed, 1 << 20, &mut out).unwrap();
        assert_eq!(&out[..n], b"hello, snappy-java");
        // A block length past the end is corrupt, not a panic.
        let mut cut = framed.clone();
        cut.truncate(framed.len() - 3);
        assert!(matches!(
            decompress(Codec::Snappy, &cut, 1 << 20, &mut out),
            Err(DecompressError::Corrupt { .. })
        ));
    }
}
