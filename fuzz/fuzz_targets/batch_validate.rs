//! A produced record batch: record-level validation (and through it every
//! codec's bounded decompression), and the record walker that timestamp
//! lookups use. Never a panic; a batch that validates walks to its count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::compression::{decompress, Codec};
use sluice_protocol::record_batch::{record_timestamps, records, HEADER_BYTES};
use sluice_protocol::validate::validate_produced_batch;

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    if let Ok((header, _)) = validate_produced_batch(data, &mut scratch, 1 << 20) {
        if header.compression() == 0 {
            let section = &data[HEADER_BYTES..];
            // Validated records must all be walkable (paired checks).
            assert_eq!(
                records(section, header.records_count).count(),
                header.records_count as usize
            );
            assert!(record_timestamps(data).is_some());
        }
    }
    // The raw payload under every codec, with a small bound.
    if let Some((&selector, payload)) = data.split_first() {
        if let Some(codec) = Codec::from_id((selector % 5) as i16) {
            if let Ok(length) = decompress(codec, payload, 1 << 16, &mut scratch) {
                assert!(length <= 1 << 16 && length <= scratch.len());
            }
        }
    }
});
