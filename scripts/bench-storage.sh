#!/usr/bin/env bash
# Storage benchmark: the disk's own limits (fio), then durable append
# throughput and latency of the partition log (benches/src/bin/storage_append.rs).
# usage: scripts/bench-storage.sh [--seconds N]   (extra flags go to storage-append)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v fio >/dev/null; then
    echo "installing fio (apt)" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq fio >/dev/null
fi

cargo build --release -p sluice-benches --bin storage-append

dir=target/bench-storage
mkdir -p "$dir"
fio_mbps() { # $@: extra fio flags; prints MB/s of the write job
    local out="$dir/fio.json"
    fio --name=seqwrite --filename="$dir/fio.data" --rw=write --direct=1 --ioengine=io_uring \
        --size=2G --output-format=json "$@" >"$out" 2>/dev/null
    rm -f "$dir/fio.data"
    python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["write"]["bw_bytes"]/1e6))' "$out"
}

disk=$(fio_mbps --bs=1M --iodepth=8 --end_fsync=1)
synced_4m=$(fio_mbps --bs=512k --iodepth=8 --fdatasync=8)
synced_512k=$(fio_mbps --bs=16k --iodepth=32 --fdatasync=32 --size=1G)

echo "date: $(date -u +%Y-%m-%dT%H:%MZ); machine: $(nproc) cores, $(uname -r), $(df -h --output=source . | tail -1)"
echo "fio sequential O_DIRECT write, 1 MiB blocks, iodepth 8 (the disk limit): ${disk} MB/s"
echo "fio same, 512 KiB blocks with fdatasync every 4 MiB:                  ${synced_4m} MB/s"
echo "fio same, 16 KiB blocks, iodepth 32, fdatasync every 512 KiB:        ${synced_512k} MB/s"
echo
./target/release/storage-append --dir "$dir" --disk-mbps "$disk" "$@"
