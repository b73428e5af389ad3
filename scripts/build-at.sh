#!/usr/bin/env bash
# Builds the broker as of git revision REV (in a worktree under target/, its
# own target dir, kept between runs) and prints the binary's path: the
# "before" side of the benchmarks that compare builds in one run.
# usage: scripts/build-at.sh REV
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$(git rev-parse "$1")
src=target/build-at-src
if [ ! -d "$src" ] || [ "$(git -C "$src" rev-parse HEAD 2>/dev/null)" != "$rev" ]; then
    git worktree remove --force "$src" 2>/dev/null || rm -rf "$src"
    git worktree prune
    git worktree add --detach "$src" "$rev" >/dev/null
fi
(cd "$src" && cargo build --release -p sluice-broker --target-dir ../build-at-target) >&2
echo ./target/build-at-target/release/sluice
