#!/usr/bin/env bash
# The whole test suite: Rust unit/integration tests, then end-to-end tests that
# start the real `sluice` binary and drive it with real Kafka clients.
# Installs what it needs (kcat from apt, a Python venv with pinned clients);
# works on a fresh Debian machine with only Rust installed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-deps.sh

cargo build --release -p sluice-broker -p sluice-bench
cargo test --workspace --all-targets

.venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e "$@"
