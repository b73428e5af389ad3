#!/usr/bin/env bash
# The replication scenarios of tests/e2e/test_replication.py, longer: 10
# rounds of kill -9 and restart of the busiest partition's leader (CI runs 2),
# the 20 s cut of a leader, a follower killed, every node killed; then the
# failover report: per scenario, the time from a leader's death (or cut) to
# the first acknowledgement of a message sent after it, per partition it led.
# Needs root (network namespaces); uses target/release/sluice (SLUICE_BIN).
#
#   scripts/replication-soak.sh                 # 10 rounds
#   SLUICE_SOAK_ROUNDS=30 scripts/replication-soak.sh -k busiest   # extra args go to pytest
#
# The report's JSON lines stay in target/replication-soak/failover.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup-test-deps.sh
[ -x "${SLUICE_BIN:-target/release/sluice}" ] || cargo build --release -p sluice-broker

mkdir -p target/replication-soak
report=target/replication-soak/failover.jsonl
: >"$report"
export SLUICE_SOAK_ROUNDS=${SLUICE_SOAK_ROUNDS:-10}
export SLUICE_REPLICATION_REPORT=$PWD/$report

status=0
.venv/bin/python -m pytest -q -s -p no:cacheprovider tests/e2e/test_replication.py "$@" || status=$?

echo
echo "failover report (${SLUICE_SOAK_ROUNDS} kill rounds; $report):"
.venv/bin/python - "$report" <<'PY'
import json
import statistics
import sys

lines = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
if not lines:
    print("  no failover was measured (did the scenarios run?)")
for line in lines:
    times = line["failover_s"]
    spread = (f"min {min(times):.3f} s, median {statistics.median(times):.3f} s, max {max(times):.3f} s"
              if times else "no acknowledgement after the fault")
    print(f"  {line['scenario']} (RF {line.get('replication_factor')}): {len(times)} partition failovers "
          f"over {line['rounds']} rounds: {spread}; without an ack: {line['no_ack']}")
PY
exit $status
