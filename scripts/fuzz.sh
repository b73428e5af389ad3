#!/usr/bin/env bash
# Coverage-guided fuzzing of what a client controls (cargo-fuzz, libFuzzer):
#   request_decode  a request frame: header, then the body under every advertised version
#   batch_validate  a produced batch: record-level validation, every codec's decompression
#   handlers        up to 8 frames through one shard's real handlers (in-memory storage)
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   each target for SECONDS (default 60)
#   scripts/fuzz.sh --seeds                 rebuild fuzz/corpus from real client traffic
#
# New inputs go to target/fuzz-corpus/<target> (the committed seeds in
# fuzz/corpus are read, not written); a crash is saved under
# fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ with the fix,
# where crates/shard/tests/replay.rs replays it in the test suite.
# Sanitizer: none by default (safe Rust; throughput), FUZZ_SANITIZER=address
# for ASan (needs the nightly toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--seeds" ]; then
    scripts/setup-test-deps.sh
    cargo build --release -p sluice-broker
    exec .venv/bin/python fuzz/make_seeds.py
fi

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_decode batch_validate handlers)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
sanitizer=${FUZZ_SANITIZER:-none}
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
elif [ "$sanitizer" != none ]; then
    echo "FUZZ_SANITIZER=$sanitizer needs a nightly toolchain" >&2
    exit 2
fi

mkdir -p target
for target in "${targets[@]}"; do
    work="target/fuzz-corpus/$target"
    log="target/fuzz-$target.log"
    mkdir -p "$work"
    echo "fuzzing $target for ${seconds}s (sanitizer $sanitizer, log $log)"
    status=0
    (cd fuzz && cargo "${toolchain[@]}" fuzz run -s "$sanitizer" --debug-assertions "$target" \
        "../$work" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096 -timeout=20 \
        -max_len=1048576) >"$log" 2>&1 || status=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    if [ "$status" -ne 0 ]; then
        echo "$target: FAILED after $runs executions (exit $status); see $log and fuzz/artifacts/$target/" >&2
        exit 1
    fi
    echo "$target: $runs executions in ${seconds}s, no crash"
done
