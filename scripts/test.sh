#!/usr/bin/env bash
# The whole test suite. Installs what it needs; works on a fresh Debian machine
# with only Rust installed.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --all-targets
