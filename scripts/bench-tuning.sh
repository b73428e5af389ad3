#!/usr/bin/env bash
# The per-core settings, one at a time, on sluice-bench workload 1 (max-rate
# durable produce) and workload 2 (200 MB/s with consumers), plus what
# /metrics costs: every run against a fresh broker, in one run, so the
# figures compare with each other (not with another day's). Prints a table;
# docs/TUNING.md quotes it.
#
# usage: scripts/bench-tuning.sh [SECONDS]   (measured seconds per run, default 15)
# env: METRICS_BEFORE_REV  a build without the metrics counters for the
#      metrics-cost rows (default b6f9a37; empty: skip those rows)
#      ONLY=metrics        only the metrics-cost rows
#      ROUNDS=N            metrics-cost rounds (default 3), each build once a round
#      METRICS_TMPFS=1     the metrics-cost rows keep their data on /dev/shm
#                          (small segments, retention every second), so the
#                          disk's swings do not hide what the broker's CPU does
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
before_rev=${METRICS_BEFORE_REV-b6f9a37}
rounds=${ROUNDS:-3}
command -v jq >/dev/null || { sudo="" ; [ "$(id -u)" = 0 ] || sudo=sudo;
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq jq >/dev/null; }
cargo build --release -p sluice-broker -p sluice-bench
sluice=./target/release/sluice
bench=./target/release/sluice-bench
work=target/bench-tuning
rm -rf "$work"
mkdir -p "$work"
before=
if [ -n "$before_rev" ]; then
    before=$(scripts/build-at.sh "$before_rev")
fi
port=19792
metrics_port=19793
broker=
scraper=
data=$work/data
trap '[ -n "$broker" ] && kill -TERM $broker 2>/dev/null; [ -n "$scraper" ] && kill $scraper 2>/dev/null; rm -rf /dev/shm/sluice-bench-tuning' EXIT
printf 'workload\tsetting\tMB/s\tpublish p50 ms\tpublish p99 ms\te2e p99 ms\tbroker CPU s per GB\n' >"$work/summary.tsv"
ticks=$(getconf CLK_TCK)
cpu_ticks() { local stat; read -r -a stat <"/proc/$1/stat"; echo $((stat[13] + stat[14])); }

# run LABEL WORKLOAD BINARY SCRAPE [broker flags...]
run() {
    local label=$1 workload=$2 binary=$3 scrape=$4
    shift 4
    rm -rf "$data"
    "$binary" --data-dir "$data" --listen 127.0.0.1:$port "$@" >"$work/broker.log" 2>&1 &
    broker=$!
    for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
        sleep 0.05
    done
    if [ "$scrape" = scrape ]; then
        # Scraped every second (Prometheus' default is every 15 s).
        (while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$metrics_port/metrics" || true; done) &
        scraper=$!
    fi
    local name cpu0 cpu1
    name=$(basename "$workload" .toml)
    cpu0=$(cpu_ticks $broker)
    $bench run --workload "$workload" --bootstrap 127.0.0.1:$port --warmup-s 3 \
        --duration-s "$seconds" --json "$work/result.json" >/dev/null 2>&1 || echo "bench failed: $label" >&2
    cpu1=$(cpu_ticks $broker)
    [ -n "$scraper" ] && kill $scraper 2>/dev/null && wait $scraper 2>/dev/null || true
    if [ -n "$scraper" ]; then
        # What the counters cost: the requests and produced batches they
        # counted (workload 1 has no consumers: no fetched batches), at the
        # per-call costs of benches/metrics_cost.rs, and the CPU of the
        # thread that serves the scrapes, against the broker's CPU.
        local task scrape_ticks=0 text requests produce_requests
        for task in /proc/$broker/task/*; do
            case "$(cat "$task/comm" 2>/dev/null)" in
                metrics*) scrape_ticks=$((scrape_ticks + $(cpu_ticks "$broker/task/${task##*/}"))) ;;
            esac
        done
        text=$(curl -s "http://127.0.0.1:$metrics_port/metrics")
        requests=$(awk '/^sluice_request_duration_seconds_count/ { n += $2 } END { print n + 0 }' <<<"$text")
        produce_requests=$(awk '/^sluice_request_duration_seconds_count\{.*api="Produce"/ { n += $2 } END { print n + 0 }' <<<"$text")
        awk -v label="$label" -v req="$requests" -v preq="$produce_requests" -v parts=16 \
            -v ns_req="$ns_request" -v ns_batch="$ns_batch" -v cpu="$(( cpu1 - cpu0 ))" \
            -v scrape="$scrape_ticks" -v t="$ticks" 'BEGIN {
                hot = (req * ns_req + preq * parts * ns_batch) / 1e9;
                printf "%s\t%d\t%d\t%.3f\t%.3f%%\t%.3f\t%.3f%%\n", label, req, preq * parts, hot,
                    100 * hot / (cpu / t), scrape / t, 100 * (scrape / t) / (cpu / t) }' \
            | tee -a "$work/metrics-cost.tsv"
    fi
    scraper=
    kill -TERM $broker 2>/dev/null || true
    wait $broker 2>/dev/null || true
    broker=
    jq -r --arg name "$name" --arg setting "$label" \
        --argjson cpu "$(awk -v a="$cpu1" -v b="$cpu0" -v t="$ticks" 'BEGIN { print (a - b) / t }')" '[$name, $setting,
        (.produce.mb_per_s * 10 | round / 10),
        (.publish_latency_us.p50 / 10 | round / 100), (.publish_latency_us.p99 / 10 | round / 100),
        (if .e2e_latency_us.count > 0 then (.e2e_latency_us.p99 / 10 | round / 100) else "-" end),
        ($cpu / ((.totals.produced * .workload.message_size + .totals.consumed * .workload.message_size) / 1e9) * 100 | round / 100)] | @tsv' \
        "$work/result.json" | tee -a "$work/summary.tsv"
    rm -rf "$data"
}

config() { # a TOML file with these lines; prints its path
    local file
    file="$work/$(echo "$*" | tr -c 'a-z0-9' '_').toml"
    printf '%s\n' "$@" >"$file"
    echo "$file"
}

w1=benches/workloads/1-max-rate-durable.toml
w2=benches/workloads/2-latency-fixed-rate.toml
off=(--metrics-listen "")
on=(--metrics-listen 127.0.0.1:$metrics_port)

# The counters' cost per call, measured apart (ns).
costs=$(cargo bench -q -p sluice-shard --bench metrics_cost 2>/dev/null)
echo "$costs"
ns_request=$(awk '/two clock reads/ { print $(NF-3) }' <<<"$costs")
ns_batch=$(awk '/produced batch/ { print $(NF-3) }' <<<"$costs")
printf 'run\trequests counted\tbatches counted (at most)\thot-path CPU s\tof broker CPU\tscrape thread CPU s\tof broker CPU\n' >"$work/metrics-cost.tsv"

# What /metrics costs: a build without the counters against this one scraped
# every second, three times each, alternating which goes first (the disk
# state one run leaves behind weighs on the next).
if [ -n "$before" ]; then
    where=()
    if [ "${METRICS_TMPFS:-}" = 1 ]; then
        data=/dev/shm/sluice-bench-tuning
        where=(--config "$(config 'segment_bytes = 33554432' 'retention_bytes = 67108864' 'retention_check_ms = 1000')")
    fi
    for round in $(seq "$rounds"); do
        if [ $((round % 2)) = 1 ]; then
            run "no metrics ($before_rev), round $round" $w1 "$before" none "${where[@]}"
            run "metrics, scraped every 1 s, round $round" $w1 "$sluice" scrape "${on[@]}" "${where[@]}"
        else
            run "metrics, scraped every 1 s, round $round" $w1 "$sluice" scrape "${on[@]}" "${where[@]}"
            run "no metrics ($before_rev), round $round" $w1 "$before" none "${where[@]}"
        fi
    done
    data=$work/data
fi
[ "${ONLY:-}" = metrics ] && { echo; column -t -s $'\t' "$work/summary.tsv";
    echo; column -t -s $'\t' "$work/metrics-cost.tsv"; exit 0; }

for workload in $w1 $w2; do
    run "defaults" $workload "$sluice" none "${off[@]}"
    run "io_depth = 32" $workload "$sluice" none "${off[@]}" --config "$(config 'io_depth = 32')"
    run "io_depth = 512" $workload "$sluice" none "${off[@]}" --config "$(config 'io_depth = 512')"
    run "io_memory_bytes = 256 KiB" $workload "$sluice" none "${off[@]}" --config "$(config 'io_memory_bytes = 262144')"
    run "io_memory_bytes = 4 MiB" $workload "$sluice" none "${off[@]}" --config "$(config 'io_memory_bytes = 4194304')"
    run "write_buffer_bytes = 128 KiB" $workload "$sluice" none "${off[@]}" --config "$(config 'write_buffer_bytes = 131072')"
    run "write_buffer_bytes = 2 MiB" $workload "$sluice" none "${off[@]}" --config "$(config 'write_buffer_bytes = 2097152')"
    run "segment_bytes = 64 MiB" $workload "$sluice" none "${off[@]}" --config "$(config 'segment_bytes = 67108864')"
    run "flush = unsafe_interval_ms=100" $workload "$sluice" none "${off[@]}" --config "$(config 'flush = "unsafe_interval_ms=100"')"
    run "cores = 1 (the other left to clients)" $workload "$sluice" none "${off[@]}" --cores 1
done

echo
column -t -s $'\t' "$work/summary.tsv"
