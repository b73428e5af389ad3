#!/usr/bin/env bash
# A 3-node Sluice cluster on this host, for trying clusters out and for
# development: Kafka listeners 127.0.0.1:19092-19094, controller (internal)
# listeners 127.0.0.1:19192-19194, data under ./sluice-cluster/node-N, one
# core per node where there are enough (cores are split between the nodes).
#
#   scripts/cluster.sh start    # build (release) if needed, start the 3 nodes, wait until they serve
#   scripts/cluster.sh status   # which nodes run, and the brokers the cluster reports
#   scripts/cluster.sh stop     # SIGTERM every node, wait for them
#
# Clients bootstrap from any node: kcat -b 127.0.0.1:19092 -L
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${SLUICE_CLUSTER_DIR:-./sluice-cluster}
BIN=${SLUICE_BIN:-target/release/sluice}
NODES=(1 2 3)
CONTROLLERS="1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194"
CPUS=$(nproc)

kafka_port() { echo $((19091 + $1)); }
metrics_port() { echo $((9643 + $1)); }

running() { [ -f "$ROOT/node-$1.pid" ] && kill -0 "$(cat "$ROOT/node-$1.pid")" 2>/dev/null; }

start() {
    [ -x "$BIN" ] || cargo build --release -p sluice-broker
    mkdir -p "$ROOT"
    for n in "${NODES[@]}"; do
        if running "$n"; then echo "node $n already runs"; continue; fi
        cpu=$(( (n - 1) % CPUS ))
        "$BIN" --node-id "$n" --controllers "$CONTROLLERS" \
            --listen "127.0.0.1:$(kafka_port "$n")" --metrics-listen "127.0.0.1:$(metrics_port "$n")" \
            --data-dir "$ROOT/node-$n/data" --cores "$cpu-$cpu" \
            >>"$ROOT/node-$n.log" 2>&1 &
        echo $! >"$ROOT/node-$n.pid"
    done
    for n in "${NODES[@]}"; do
        for _ in $(seq 1 300); do
            grep -q "sluice is ready" "$ROOT/node-$n.log" 2>/dev/null && break
            running "$n" || { echo "node $n exited: see $ROOT/node-$n.log" >&2; exit 1; }
            sleep 0.1
        done
        echo "node $n serves 127.0.0.1:$(kafka_port "$n") (log $ROOT/node-$n.log)"
    done
}

stop() {
    for n in "${NODES[@]}"; do
        if running "$n"; then kill -TERM "$(cat "$ROOT/node-$n.pid")"; fi
    done
    for n in "${NODES[@]}"; do
        while running "$n"; do sleep 0.1; done
        rm -f "$ROOT/node-$n.pid"
    done
    echo "stopped"
}

status() {
    for n in "${NODES[@]}"; do
        if running "$n"; then echo "node $n: running (pid $(cat "$ROOT/node-$n.pid"), 127.0.0.1:$(kafka_port "$n"))"
        else echo "node $n: stopped"; fi
    done
    if command -v kcat >/dev/null; then
        for n in "${NODES[@]}"; do
            if running "$n"; then kcat -b "127.0.0.1:$(kafka_port "$n")" -L -m 5 2>/dev/null | sed -n '1,5p'; break; fi
        done
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
