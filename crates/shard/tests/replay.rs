//! Regression test of the fuzzers' findings: every committed seed and crash
//! reproducer (fuzz/corpus, fuzz/regressions) replayed through the real
//! handlers on O_DIRECT files, the decoder and the batch validator. The
//! fuzzers themselves run with scripts/fuzz.sh.

use sluice_shard::replay::World;
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).unwrap();
            out.push((entry.path(), bytes));
        }
    }
    out.sort();
    out
}

#[test]
fn handler_and_decoder_corpus_replays_without_a_panic() {
    let sequences = inputs("handlers");
    let requests = inputs("request_decode");
    assert!(
        sequences.len() >= 10 && requests.len() >= 10,
        "the corpora are committed"
    );
    let world = World::new("regression");
    let mut answered = 0;
    for (path, bytes) in &sequences {
        eprintln!("{}", path.display());
        answered += world.run(bytes);
    }
    // The decoder's inputs are single frames without their size field.
    for (path, bytes) in &requests {
        eprintln!("{}", path.display());
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        answered += world.run(&framed);
    }
    assert!(
        answered >= 50,
        "real clients' requests are answered ({answered})"
    );
}

#[test]
fn validator_corpus_replays_without_a_panic() {
    let mut scratch = Vec::new();
    let mut valid = 0;
    for (_, bytes) in inputs("batch_validate") {
        valid += sluice_protocol::validate::validate_produced_batch(
            &bytes,
            &mut scratch,
            sluice_protocol::compression::DECOMPRESSED_BYTES_MAX,
        )
        .is_ok() as usize;
    }
    assert!(valid >= 5, "real clients' batches in the corpus validate");
}
