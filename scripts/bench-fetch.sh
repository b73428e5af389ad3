#!/usr/bin/env bash
# The fetch path, before and after, in one run (issue: egress). Measures fio's
# sequential O_DIRECT read and iperf3's loopback figure, then for each broker
# build runs, against a fresh broker and data directory each:
#   drain-disk    a backlog larger than the tail cache, drained by 2 consumers
#                 from offset 0 (workload 6): MB/s, against fio's read figure
#   drain-memory  an 800 MB backlog within the tail cache (tail_cache_bytes
#                 1 GiB per core for this run), drained the same way: what
#                 consumers at the tail get, against iperf3's loopback figure
#   w2            workload 2 (200 MB/s, consumers keeping up): e2e p99 against
#                 publish p99, and whether the broker read the disk at all
#   w3            workload 3 (1000 partitions): e2e p99
# For every run: the broker's CPU seconds (utime + stime from /proc/PID/stat)
# and disk reads (read_bytes from /proc/PID/io) over the drain or the run, and
# CPU seconds per GB delivered to consumers.
#
# Builds: "before" is BEFORE_REV (default: the last commit without the tail
# cache, zero-copy egress and fetch sessions), built in a worktree under
# target/; "after" is the working tree; "after-zc" is the working tree with
# send_zc_threshold_bytes = 65536 (drains only).
#
# usage: scripts/bench-fetch.sh [--quick]
#   --quick   1 GB disk backlog, 10 s for w2 and w3 (about 8 minutes with builds)
#   default   4 GB disk backlog, the workload files' durations
# env: BEFORE_REV   git revision of the "before" build (empty: skip it)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument $arg" >&2; exit 2 ;;
    esac
done
before_rev=${BEFORE_REV-9a5c633}

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
missing=()
for tool in fio iperf3 jq; do command -v $tool >/dev/null || missing+=($tool); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt)" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release -p sluice-broker -p sluice-bench
bench=./target/release/sluice-bench
work=target/bench-fetch
rm -rf "$work"
mkdir -p "$work/results"
started=$(date +%s)
declare -A binary
binary[after]=./target/release/sluice
builds=()
if [ -n "$before_rev" ]; then
    binary[before]=$(scripts/build-at.sh "$before_rev")
    builds+=(before)
fi
builds+=(after after-zc)
binary[after-zc]=${binary[after]}
printf 'send_zc_threshold_bytes = 65536\n' >"$work/after-zc.toml"
printf 'tail_cache_bytes = 1073741824\n' >"$work/after-memory.toml"
printf 'tail_cache_bytes = 1073741824\nsend_zc_threshold_bytes = 65536\n' >"$work/after-zc-memory.toml"

# --- this machine's limits -------------------------------------------------
if [ $quick = 1 ]; then disk_backlog=1000000000; fio_size=2G; else disk_backlog=4000000000; fio_size=4G; fi
echo "== fio: sequential O_DIRECT read ($fio_size, 1 MiB blocks, iodepth 8), after laying the file out"
fio --name=layout --filename="$work/fio.data" --rw=write --direct=1 --ioengine=io_uring \
    --bs=1M --iodepth=8 --size=$fio_size --end_fsync=1 --output-format=json >/dev/null
fio --name=seqread --filename="$work/fio.data" --rw=read --direct=1 --ioengine=io_uring \
    --bs=1M --iodepth=8 --size=$fio_size --output-format=json >"$work/fio-read.json"
rm -f "$work/fio.data"
fio_read=$(jq '.jobs[0].read.bw_bytes / 1e6' "$work/fio-read.json")
iperf_port=5299
timeout 40 iperf3 -s -p $iperf_port >/dev/null 2>&1 &
iperf_server=$!
loopback=0
for _ in 1 2 3 4 5; do
    sleep 0.5
    if timeout 20 iperf3 -c 127.0.0.1 -p $iperf_port -t 5 -J >"$work/iperf3.json" 2>/dev/null; then
        loopback=$(jq '.end.sum_received.bits_per_second / 8e6' "$work/iperf3.json")
        break
    fi
done
kill $iperf_server 2>/dev/null || true
wait $iperf_server 2>/dev/null || true
echo "fio sequential read: $fio_read MB/s; loopback TCP (iperf3): $loopback MB/s"

# --- the runs ----------------------------------------------------------------
port=19192
ticks=$(getconf CLK_TCK)
# "CPU ticks, read bytes" of a process.
snapshot() {
    local stat
    read -r -a stat <"/proc/$1/stat"
    echo "$((stat[13] + stat[14])) $(awk '/^read_bytes/ {print $2}' "/proc/$1/io")"
}
broker=
trap '[ -n "$broker" ] && kill -TERM $broker 2>/dev/null' EXIT
summary="$work/summary.tsv"
printf 'build\trun\tMB/s\tGB to consumers\tbroker CPU s\tCPU s per GB\tbroker disk reads MB\tpublish p99 ms\te2e p99 ms\n' >"$summary"

run() { # build name workload [bench flags...]
    local build=$1 name=$2 workload=$3
    shift 3
    local data="$work/data" config=()
    # The builds' settings ("before" knows none of these keys).
    for file in "$work/$build.toml" "$work/$build-${name#drain-}.toml"; do
        [ -f "$file" ] && config=(--config "$file")
    done
    rm -rf "$data"
    "${binary[$build]}" --data-dir "$data" --listen 127.0.0.1:$port "${config[@]}" \
        >"$work/$build-$name-broker.log" 2>&1 &
    broker=$!
    for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
        sleep 0.05
    done
    echo
    echo "== $build: $name"
    local start end
    start=$(snapshot $broker)
    # A backlog run is measured from the drain's start (the line the bench
    # prints then); any other run as a whole.
    $bench run --workload "$workload" --bootstrap 127.0.0.1:$port "$@" \
        --json "$work/results/$build-$name.json" --broker-info "$build" 2>&1 |
        while IFS= read -r line; do
            echo "$line"
            case "$line" in *"backlog built"*) snapshot $broker >"$work/drain-start" ;; esac
        done
    end=$(snapshot $broker)
    [ -s "$work/drain-start" ] && start=$(cat "$work/drain-start") && rm -f "$work/drain-start"
    kill -TERM $broker 2>/dev/null || true
    wait $broker 2>/dev/null || true
    broker=
    rm -rf "$data"
    local result="$work/results/$build-$name.json"
    read -r cpu0 io0 <<<"$start"
    read -r cpu1 io1 <<<"$end"
    jq -r --arg build "$build" --arg name "$name" \
        --argjson cpu "$(awk -v a="$cpu1" -v b="$cpu0" -v t="$ticks" 'BEGIN { print (a - b) / t }')" \
        --argjson io "$(( (io1 - io0) / 1000000 ))" '
        (if .drain then {mb: (.drain.backlog_bytes / .drain.seconds / 1e6), gb: (.drain.backlog_bytes / 1e9)}
         else {mb: .consume.mb_per_s, gb: (.consume.bytes / 1e9)} end) as $t
        | [$build, $name, ($t.mb * 10 | round / 10), ($t.gb * 100 | round / 100),
           ($cpu * 100 | round / 100), (if $t.gb > 0 then ($cpu / $t.gb * 100 | round / 100) else "-" end),
           $io, (.publish_latency_us.p99 / 10 | round / 100), (.e2e_latency_us.p99 / 10 | round / 100)]
        | @tsv' "$result" >>"$summary"
}

w=benches/workloads
for build in "${builds[@]}"; do
    run "$build" drain-disk $w/6-catch-up-read.toml --backlog-bytes $disk_backlog
    run "$build" drain-memory $w/6-catch-up-read.toml --backlog-bytes 800000000
    [ "$build" = after-zc ] && continue
    if [ $quick = 1 ]; then short=(--warmup-s 2 --duration-s 10); else short=(); fi
    run "$build" w2 $w/2-latency-fixed-rate.toml "${short[@]}"
    run "$build" w3 $w/3-many-partitions.toml "${short[@]}"
done

echo
echo "fio sequential O_DIRECT read: $fio_read MB/s; loopback TCP (iperf3): $loopback MB/s"
column -t -s $'\t' "$summary"
echo
echo "bench-fetch.sh: $(( $(date +%s) - started )) s; results in $work/"
