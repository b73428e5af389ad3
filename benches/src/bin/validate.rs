//! Record-level validation throughput: `validate_produced_batch` on 128 KiB
//! batches of 1 KiB records (like sluice-bench's payload: a header, then words),
//! uncompressed and in every codec, on one core. Prints MB/s of uncompressed
//! records validated and the cost per batch.
//!
//! usage: validate [SECONDS_PER_CODEC]   (default 2)

use sluice_protocol::compression::{compress, Codec, DECOMPRESSED_BYTES_MAX};
use sluice_protocol::record_batch::{assemble_batch, put_record, BatchFields};
use sluice_protocol::validate::validate_produced_batch;
use std::time::{Duration, Instant};

const RECORD_BYTES: usize = 1024;
const RECORDS_PER_BATCH: usize = 128;

/// Like sluice-bench's payloads: 8 bytes of header, then lowercase words
/// (compressible like text, 2-3x with lz4).
fn payload(seed: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(RECORD_BYTES);
    value.extend_from_slice(&seed.to_be_bytes());
    let mut state = seed | 1;
    while value.len() < RECORD_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for i in 0..2 + (state % 7) as usize {
            value.push(b'a' + ((state >> (8 + i * 5)) % 26) as u8);
        }
        value.push(b' ');
    }
    value.truncate(RECORD_BYTES);
    value
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut section = Vec::new();
    for i in 0..RECORDS_PER_BATCH {
        put_record(&mut section, i as i64, i as i32, None, &payload(i as u64));
    }
    println!("codec   batch_bytes  records_MB_per_s  us_per_batch");
    for codec in [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ] {
        let packed = compress(codec, &section);
        let fields = BatchFields {
            attributes: codec.id(),
            records_count: RECORDS_PER_BATCH as i32,
            ..BatchFields::default()
        };
        let mut batch = Vec::new();
        assemble_batch(&mut batch, &fields, &packed);
        let mut scratch = Vec::new();
        let started = Instant::now();
        let mut batches = 0u64;
        while started.elapsed() < Duration::from_secs(seconds) {
            for _ in 0..16 {
                validate_produced_batch(&batch, &mut scratch, DECOMPRESSED_BYTES_MAX)
                    .expect("a valid batch");
            }
            batches += 16;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{:<7} {:>11}  {:>16.0}  {:>12.1}",
            codec.name(),
            batch.len(),
            (batches as f64 * section.len() as f64) / elapsed / 1e6,
            elapsed * 1e6 / batches as f64
        );
    }
}
