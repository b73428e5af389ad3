#!/usr/bin/env bash
# Produce/consume throughput of the broker with kcat (librdkafka), 1 KiB
# messages, acks=all, for --cores 1 and --cores 2 (the cost of cross-shard
# forwarding shows in the difference).
# usage: scripts/bench-broker.sh [MESSAGES]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-1000000}
command -v kcat >/dev/null || scripts/setup-test-deps.sh
cargo build --release -p sluice-broker >/dev/null 2>&1 || cargo build --release -p sluice-broker

work=target/bench-broker
rm -rf "$work"; mkdir -p "$work"
python3 - "$messages" >"$work/messages.txt" <<'PY'
import sys
n = int(sys.argv[1])
line = ("x" * 1023) + "\n"
sys.stdout.write(line * n)
PY
bytes=$((messages * 1024))

echo "date: $(date -u +%Y-%m-%dT%H:%MZ); machine: $(nproc) cores, $(uname -r); $messages messages of 1 KiB; topic of 4 partitions"
for cores in 1 2; do
    port=$((19500 + cores))
    ./target/release/sluice --data-dir "$work/data-$cores" --listen 127.0.0.1:$port --cores $cores \
        --default-partitions 4 >"$work/broker-$cores.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do kcat -b 127.0.0.1:$port -L >/dev/null 2>&1 && break; sleep 0.1; done
    start=$(date +%s.%N)
    kcat -b 127.0.0.1:$port -t bench -P -X acks=all -X linger.ms=5 -X batch.size=1000000 \
        -X queue.buffering.max.kbytes=1048576 -X enable.idempotence=false -l "$work/messages.txt"
    mid=$(date +%s.%N)
    got=$(kcat -b 127.0.0.1:$port -t bench -C -e -q -o beginning -X fetch.wait.max.ms=10 | wc -l)
    end=$(date +%s.%N)
    kill -TERM $pid; wait $pid || true
    python3 - "$cores" "$messages" "$bytes" "$start" "$mid" "$end" "$got" <<'PY'
import sys
cores, n, b, start, mid, end, got = sys.argv[1:]
n, b, got = int(n), int(b), int(got)
produce, consume = float(mid) - float(start), float(end) - float(mid)
print(f"--cores {cores}: produce {n/produce:,.0f} msg/s {b/produce/1e6:,.0f} MB/s (acks=all); "
      f"consume {got/consume:,.0f} msg/s {got*1024/consume/1e6:,.0f} MB/s; consumed {got} of {n}")
PY
done
