#!/usr/bin/env bash
# The standard benchmark. Measures this machine's limits first (fio: sequential
# O_DIRECT write bandwidth and fdatasync latency; iperf3: loopback TCP), then
# runs every workload of benches/workloads/ with sluice-bench against a fresh
# broker each, and writes the report to target/bench-report/ (report.md, one
# latency plot per workload, machine.json, the raw result files).
#
# usage: scripts/bench.sh [--quick] [WORKLOAD.toml ...]
#   --quick   2 s warm-up + 10 s per workload, a 1 GB backlog (under 3 minutes)
#   default   the durations in the workload files (under 15 minutes)
# env: SLUICE_ARGS   extra flags for the broker (e.g. "--cores 1")
#      BENCH_ARGS    extra flags for sluice-bench run (e.g. "--threads 1")
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
workloads=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) workloads+=("$arg") ;;
    esac
done
[ ${#workloads[@]} -gt 0 ] || workloads=(benches/workloads/*.toml)

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
missing=()
command -v fio >/dev/null || missing+=(fio)
command -v iperf3 >/dev/null || missing+=(iperf3)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt)" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release -p sluice-broker -p sluice-bench
sluice=./target/release/sluice
bench=./target/release/sluice-bench
out=target/bench-report
work=target/bench-work
rm -rf "$work" "$out"
mkdir -p "$work/results" "$out"
started=$(date +%s)

# --- this machine's limits -------------------------------------------------
if [ $quick = 1 ]; then fio_size=1G; sync_size=8M; iperf_s=2; else fio_size=4G; sync_size=64M; iperf_s=5; fi
echo "== machine limits (fio $fio_size sequential O_DIRECT write, fdatasync per 4 KiB write, iperf3 ${iperf_s}s)"
# A limit that cannot be measured is left out of the report, not fatal.
fio --name=seqwrite --filename="$work/fio.data" --rw=write --direct=1 --ioengine=io_uring \
    --bs=1M --iodepth=8 --size=$fio_size --end_fsync=1 --output-format=json >"$work/fio-write.json" ||
    { echo "fio write failed: disk limit not measured" >&2; rm -f "$work/fio-write.json"; }
rm -f "$work/fio.data"
fio --name=fdatasync --filename="$work/fio.data" --rw=write --ioengine=sync --bs=4k \
    --fdatasync=1 --size=$sync_size --output-format=json >"$work/fio-sync.json" ||
    { echo "fio fdatasync failed: sync latency not measured" >&2; rm -f "$work/fio-sync.json"; }
rm -f "$work/fio.data"
iperf_port=5299
# No readiness probe: a probe connection would count as the server's client.
timeout $((iperf_s + 30)) iperf3 -s -p $iperf_port >/dev/null 2>&1 &
iperf_server=$!
rm -f "$work/iperf3.json"
for _ in 1 2 3 4 5; do
    sleep 0.5
    timeout $((iperf_s + 15)) iperf3 -c 127.0.0.1 -p $iperf_port -t $iperf_s -J >"$work/iperf3.json" 2>/dev/null &&
        break
    rm -f "$work/iperf3.json"
done
[ -s "$work/iperf3.json" ] || echo "iperf3 failed: loopback limit not measured" >&2
kill $iperf_server 2>/dev/null || true
wait $iperf_server 2>/dev/null || true

# --- the workloads ---------------------------------------------------------
port=19092
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "bench.sh: port $port is already in use; stop what listens there" >&2
    exit 1
fi
broker=
trap '[ -n "$broker" ] && kill -TERM $broker 2>/dev/null' EXIT
failed=()
for workload in "${workloads[@]}"; do
    name=$(basename "$workload" .toml)
    data="$work/data"
    rm -rf "$data"
    # shellcheck disable=SC2086
    broker_config=$($sluice --data-dir "$data" --listen 127.0.0.1:$port ${SLUICE_ARGS:-} --print-config)
    # Core dumps on for the broker: a crash is kept for gdb (moved next to its log).
    # shellcheck disable=SC2086
    (ulimit -c unlimited 2>/dev/null || true
     exec $sluice --data-dir "$data" --listen 127.0.0.1:$port ${SLUICE_ARGS:-}) \
        >"$work/$name-broker.log" 2>&1 &
    broker=$!
    ready=0
    for _ in $(seq 200); do
        kill -0 $broker 2>/dev/null || break
        if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then ready=1; break; fi
        sleep 0.05
    done
    if [ $ready = 0 ]; then
        echo "bench.sh: the broker did not start for $name (log: $work/$name-broker.log)" >&2
        failed+=("$name")
        kill -TERM $broker 2>/dev/null || true
        wait $broker 2>/dev/null || true
        continue
    fi
    overrides=()
    if [ $quick = 1 ]; then
        if grep -q '^backlog_bytes' "$workload"; then
            overrides=(--backlog-bytes 1000000000 --duration-s 90)
        else
            overrides=(--warmup-s 2 --duration-s 10)
        fi
    fi
    echo
    echo "== $name"
    # shellcheck disable=SC2086
    if ! $bench run --workload "$workload" --bootstrap 127.0.0.1:$port "${overrides[@]}" \
        --json "$work/results/$name.json" ${BENCH_ARGS:-} \
        --broker-info "sluice ${SLUICE_ARGS:-} on $(nproc) cores, Linux $(uname -r); effective config:
$broker_config"; then
        bench_failed=1
    else
        bench_failed=0
    fi
    # The broker exits 0 on SIGTERM; anything else means it died on its own.
    kill -TERM $broker 2>/dev/null || true
    status=0
    wait $broker 2>/dev/null || status=$?
    if [ $status != 0 ]; then
        for core in core "core.$broker"; do
            if [ -f "$core" ]; then mv "$core" "$work/$name-broker.core"; fi
        done
        echo "bench.sh: the broker for $name exited with status $status (log, and core if any: $work/$name-broker.*)" >&2
        failed+=("$name (broker exit $status)")
    elif [ $bench_failed = 1 ]; then
        failed+=("$name")
    fi
    broker=
    rm -rf "$data"
done

# --- the report ------------------------------------------------------------
shopt -s nullglob
results=("$work"/results/*.json)
if [ ${#results[@]} -gt 0 ]; then
    limits=()
    for f in fio-write fio-sync iperf; do
        json="$work/$f.json"
        [ "$f" = iperf ] && json="$work/iperf3.json"
        [ -s "$json" ] && limits+=("--$f" "$json") && cp "$json" "$out/"
    done
    $bench report --out "$out" "${limits[@]}" "${results[@]}" >/dev/null
    cp "${results[@]}" "$out/"
    echo
    cat "$out/report.md"
fi
echo
echo "bench.sh: $(( $(date +%s) - started )) s; report in $out/"
if [ ${#failed[@]} -gt 0 ]; then
    echo "bench.sh: failed workloads: ${failed[*]} (logs in $work/)" >&2
    exit 1
fi
