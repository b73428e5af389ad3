#!/usr/bin/env bash
# Replication's cost on this host: the same sluice-bench workloads with
# replication_factor=1 and =3 on one local 3-node cluster (scripts/cluster.sh),
# in one run, alternating (rf1, rf3, rf1, rf3) so disk drift hits both alike.
# Workloads: max-rate durable produce (acks=all) and a fixed-rate latency run
# (acks=all, publish p50/p99). Each run gets a fresh cluster (a max-rate run
# at RF=3 writes tens of GB: this disk is shared with /tmp). Prints one line
# per run and writes the result JSON files under target/bench-replication/.
#
#   scripts/bench-replication.sh [DURATION_S]   (default 20; warm-up 5 s)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20}
work=target/bench-replication
cargo build --release -p sluice-broker -p sluice-bench >/dev/null 2>&1 \
    || cargo build --release -p sluice-broker -p sluice-bench
rm -rf "$work"; mkdir -p "$work"
export SLUICE_CLUSTER_DIR=$work/cluster
trap 'scripts/cluster.sh stop >/dev/null 2>&1 || true; rm -rf "$work/cluster"' EXIT
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); machine: $(nproc) cores, $(uname -r); 3 nodes on this host, one core each where there are enough"

run() { # name rf workload [extra flags...]
    local name=$1 rf=$2 workload=$3; shift 3
    scripts/cluster.sh stop >/dev/null 2>&1 || true
    rm -rf "$work/cluster"
    scripts/cluster.sh start >/dev/null
    ./target/release/sluice-bench run --workload "benches/workloads/$workload" \
        --bootstrap 127.0.0.1:19092 --replication-factor "$rf" --topic-prefix "$name" \
        --warmup-s 5 --duration-s "$duration" --threads 1 --status-every-s 1000 \
        --broker-info "3-node cluster (scripts/cluster.sh), replication_factor=$rf" \
        --json "$work/$name.json" "$@" >"$work/$name.log" 2>&1
    scripts/cluster.sh stop >/dev/null 2>&1 || true
    rm -rf "$work/cluster"
    python3 - "$work/$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p, lat, t = r["produce"], r["publish_latency_us"], r["totals"]
print(f"{sys.argv[2]:>12}: {p['mb_per_s']:8.1f} MB/s {p['msgs_per_s']:10.0f} msg/s   "
      f"publish p50 {lat['p50'] / 1000:7.2f} ms  p99 {lat['p99'] / 1000:7.2f} ms  "
      f"errors {t['produce_errors']} lost {t['lost_after_retries']}")
PY
}

for round in 1 2; do
    for rf in 1 3; do
        run "max-rf$rf-r$round" "$rf" 1-max-rate-durable.toml --partitions-per-topic 6
    done
done
for round in 1 2; do
    for rf in 1 3; do
        run "lat-rf$rf-r$round" "$rf" 2-latency-fixed-rate.toml --partitions-per-topic 6 \
            --producer-rate 50000 --consumers 0
    done
done
