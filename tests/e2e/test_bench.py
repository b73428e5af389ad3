"""sluice-bench against the real broker: a short workload, its result file and
report, and what it wrote read back by a client nobody here wrote."""

import json
import os
import signal
import struct
import subprocess
import time
import xml.dom.minidom
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from fault_proxy import FETCH, FIND_COORDINATOR, HEARTBEAT, JOIN_GROUP, OFFSET_FETCH, PRODUCE, FaultProxy

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(os.environ.get("SLUICE_BENCH_BIN", ROOT / "target" / "release" / "sluice-bench"))


def bench(*args, timeout=120):
    return subprocess.run([str(BENCH), *args], capture_output=True, text=True, timeout=timeout)


def test_a_five_second_workload_consumes_what_it_produced_and_reports(broker, tmp_path):
    workload = tmp_path / "short.toml"
    workload.write_text(
        'name = "short"\n'
        'description = "e2e: 5 s at a fixed rate with a consumer group"\n'
        "partitions_per_topic = 4\n"
        "message_size = 512\n"
        "producers = 2\n"
        "consumers = 2\n"
        "consumer_group = true\n"
        "producer_rate = 20000\n"
        'key_distribution = "round-robin"\n'
        "warmup_s = 1\n"
        "duration_s = 5\n"
    )
    result_path = tmp_path / "short.json"
    run = bench("run", "--workload", str(workload), "--bootstrap", broker.bootstrap, "--json", str(result_path),
                "--status-every-s", "1")
    assert run.returncode == 0, run.stderr
    # The live status line and the summary table.
    assert "produce" in run.stderr and "msg/s" in run.stderr
    assert "publish latency" in run.stdout and "end-to-end" in run.stdout

    result = json.loads(result_path.read_text())
    totals = result["totals"]
    assert totals["produce_errors"] == 0
    # 20000 msg/s for ~6 s, warm-up included.
    assert totals["produced"] > 60_000
    assert totals["consumed"] == totals["produced"]
    assert result["workload"]["name"] == "short" and result["workload"]["producer_rate"] == 20000
    # The measured window is the 5 s after warm-up, at the asked rate.
    assert 4.0 <= result["measured_s"] <= 6.5
    assert 18_600 <= result["produce"]["msgs_per_s"] <= 21_000
    assert result["produce"]["mb_per_s"] == pytest.approx(result["produce"]["msgs_per_s"] * 512 / 1e6, rel=1e-6)
    for name in ("publish_latency_us", "publish_delay_us", "e2e_latency_us"):
        p = result[name]
        assert p["count"] > 0, name
        assert p["p50"] <= p["p99"] <= p["p999"] <= p["max"], (name, p)
    # Latencies on loopback at 20k msg/s: well above a microsecond, well below a second.
    assert 50 <= result["publish_latency_us"]["p50"] <= 500_000
    assert result["e2e_latency_us"]["p50"] >= result["publish_latency_us"]["p50"] / 10
    assert result["errors"] == {}
    assert result["publish_latency_us"]["count"] == result["produce"]["messages"]
    assert 0 in [key for key, _, _ in result["broker_api_versions"]]  # Produce

    out = tmp_path / "report"
    report = bench("report", "--out", str(out), str(result_path))
    assert report.returncode == 0, report.stderr
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| short")]
    assert len(rows) == 1, md
    assert f"{result['produce']['mb_per_s']:.1f}" in rows[0]
    svg = xml.dom.minidom.parse(str(out / "short-latency.svg"))
    assert svg.documentElement.tagName == "svg"
    assert len(svg.getElementsByTagName("polyline")) == 3
    assert json.loads((out / "machine.json").read_text()) is not None


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_batches_are_read_back_by_librdkafka(broker, tmp_path, codec):
    prefix = f"bench-{codec}"
    run = bench("run", "--bootstrap", broker.bootstrap, "--topic-prefix", prefix, "--compression", codec,
                "--partitions-per-topic", "2", "--producers", "1", "--consumers", "1", "--consumer-group", "false",
                "--producer-rate", "5000", "--message-size", "300", "--warmup-s", "0", "--duration-s", "2",
                "--json", str(tmp_path / "r.json"))
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    produced = result["totals"]["produced"]
    assert produced > 5000 and result["totals"]["consumed"] == produced

    topics = [t for t in AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
              if t.startswith(prefix)]
    assert len(topics) == 1
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"check-{codec}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topics[0], p, 0) for p in range(2)])
    values = []
    deadline = time.time() + 30
    while len(values) < produced and time.time() < deadline:
        for m in consumer.consume(num_messages=1000, timeout=1):
            assert m.error() is None, m.error()
            values.append(m.value())
    consumer.close()
    assert len(values) == produced
    now_us = time.time() * 1e6
    for v in values[:100]:
        assert len(v) == 300
        sent_us, _producer, _sequence = struct.unpack(">QII", v[:16])
        assert now_us - 120e6 < sent_us <= now_us
        assert v[16:].replace(b" ", b"").isalpha()


def test_a_bad_workload_file_is_refused_with_the_setting_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("acks = 3\n")
    run = bench("run", "--workload", str(bad), "--bootstrap", "127.0.0.1:1")
    assert run.returncode == 1
    assert "acks 3" in run.stderr and str(bad) in run.stderr

    bad.write_text("partitons = 3\n")
    run = bench("run", "--workload", str(bad), "--bootstrap", "127.0.0.1:1")
    assert run.returncode == 1 and "unknown field `partitons`" in run.stderr


def test_an_unreachable_broker_is_a_clear_error():
    run = bench("run", "--bootstrap", "127.0.0.1:1", "--duration-s", "1", timeout=60)
    assert run.returncode == 1
    assert "cannot connect to 127.0.0.1:1" in run.stderr


# --- retriable errors, as a real Kafka cluster gives them ------------------
# Sluice itself rarely answers these, so a proxy between sluice-bench and the
# broker injects them (fault_proxy.py).

NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, MESSAGE_TOO_LARGE = 6, 5, 10
COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR = 14, 15, 16


def proxied_run(proxy, tmp_path, *flags):
    result_path = tmp_path / "r.json"
    run = bench("run", "--bootstrap", proxy.bootstrap, "--json", str(result_path), "--status-every-s", "1",
                "--warmup-s", "0", "--message-size", "200", "--threads", "2", *flags, timeout=60)
    assert result_path.exists(), run.stderr
    return run, json.loads(result_path.read_text())


def test_retriable_errors_are_retried_like_a_kafka_client_and_nothing_is_lost(broker, tmp_path):
    with FaultProxy(
        broker.bootstrap,
        answers={
            PRODUCE: [NOT_LEADER_OR_FOLLOWER] * 3,
            FETCH: [NOT_LEADER_OR_FOLLOWER] * 2,
            FIND_COORDINATOR: [COORDINATOR_NOT_AVAILABLE] * 2,
            JOIN_GROUP: [NOT_COORDINATOR] * 2,
            OFFSET_FETCH: [COORDINATOR_LOAD_IN_PROGRESS],
            HEARTBEAT: [NOT_COORDINATOR],
        },
        # The 8th Produce request finds its connection closed, the 12th no
        # answer (neither is forwarded: their retries cannot duplicate them).
        close_at=[(PRODUCE, 8)],
        hold_at=[(PRODUCE, 12)],
        # A fresh topic shows no leaders for a moment.
        leaderless_metadata=2,
    ) as proxy:
        run, result = proxied_run(proxy, tmp_path, "--partitions-per-topic", "3", "--producers", "1",
                                  "--consumers", "2", "--consumer-group", "true", "--producer-rate", "2000",
                                  "--duration-s", "3", "--request-timeout-ms", "2000")
    assert run.returncode == 0, run.stderr
    totals = result["totals"]
    assert totals["produce_errors"] == 0 and totals["lost_after_retries"] == 0, result["errors"]
    assert totals["produced"] >= 5000
    assert totals["consumed"] == totals["produced"]
    assert result["errors"] == {}
    injected = proxy.injected
    assert injected["closed"] == 1 and injected["held"] == 1 and injected["leaderless metadata"] == 2
    retries = result["retries"]
    # One retry per batch re-sent (every partition of an injected answer) and per fetch repeated.
    assert retries["NOT_LEADER_OR_FOLLOWER"] == injected["produce partitions"] + 2, retries
    assert retries["LEADER_NOT_AVAILABLE"] == 2, retries
    assert retries["COORDINATOR_NOT_AVAILABLE"] == 2, retries
    assert retries["NOT_COORDINATOR"] == 3, retries  # two JoinGroups, one heartbeat
    assert retries["COORDINATOR_LOAD_IN_PROGRESS"] == 1, retries
    assert retries["connection lost"] >= 1, retries
    assert retries["request timeout"] >= 1, retries
    assert set(retries) == {"NOT_LEADER_OR_FOLLOWER", "LEADER_NOT_AVAILABLE", "COORDINATOR_NOT_AVAILABLE",
                            "NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "connection lost",
                            "request timeout"}, retries
    summary = [line for line in run.stdout.splitlines() if line.startswith("retries: ")]
    assert len(summary) == 1 and "NOT_LEADER_OR_FOLLOWER" in summary[0], run.stdout
    assert "| retries " in run.stderr


def test_a_spent_retry_budget_loses_messages_and_other_errors_fail_at_once(broker, tmp_path):
    with FaultProxy(broker.bootstrap,
                    answers={PRODUCE: [MESSAGE_TOO_LARGE] + [NOT_LEADER_OR_FOLLOWER] * 100_000}) as proxy:
        run, result = proxied_run(proxy, tmp_path, "--partitions-per-topic", "1", "--producers", "1",
                                  "--consumers", "0", "--producer-rate", "200", "--linger-ms", "20",
                                  "--duration-s", "2", "--delivery-timeout-ms", "1500")
    assert run.returncode == 1
    assert "not acknowledged" in run.stderr
    totals = result["totals"]
    assert totals["produced"] == 0
    # The first batch was refused for good; every later one retried until its budget was spent.
    assert 0 < totals["lost_after_retries"] < totals["produce_errors"]
    assert result["workload"]["delivery_timeout_ms"] == 1500
    assert result["errors"]["produce failed: MESSAGE_TOO_LARGE (10)"] == 1, result["errors"]
    # (On a slow machine a batch may also expire before its first send.)
    assert set(result["errors"]) - {"produce failed, retry budget spent: queued, never sent"} == {
        "produce failed: MESSAGE_TOO_LARGE (10)",
        "produce failed, retry budget spent: NOT_LEADER_OR_FOLLOWER"}, result["errors"]
    # 100, 200, 400 ms (± 20 %) and the next 800 ms would end after the 1.5 s: 3 retries a batch, or 4.
    retried = result["retries"]["NOT_LEADER_OR_FOLLOWER"]
    batches = result["errors"]["produce failed, retry budget spent: NOT_LEADER_OR_FOLLOWER"]
    assert 3 * batches <= retried <= 4 * batches, (retried, batches)
    assert f"lost after retries: {totals['lost_after_retries']} messages" in run.stdout


def test_a_broker_killed_and_restarted_mid_run_is_ridden_out(broker, tmp_path):
    """A real failure, no proxy: the broker dies (SIGKILL) and comes back on
    the same port while producers and a consumer group run."""
    result_path = tmp_path / "r.json"
    run = subprocess.Popen(
        [str(BENCH), "run", "--bootstrap", broker.bootstrap, "--json", str(result_path), "--warmup-s", "0",
         "--duration-s", "6", "--message-size", "200", "--partitions-per-topic", "4", "--producers", "2",
         "--consumers", "2", "--producer-rate", "5000", "--threads", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    broker.restart(signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    result = json.loads(result_path.read_text())
    totals = result["totals"]
    assert totals["produce_errors"] == 0 and totals["lost_after_retries"] == 0, result["errors"]
    assert totals["produced"] >= 20_000
    # A batch in flight when the broker died may have been written before it
    # was acknowledged: its retry (no idempotence) is then read twice.
    assert totals["consumed"] >= totals["produced"]
    assert result["errors"] == {}, result["errors"]
    retries = result["retries"]
    assert retries.get("connection lost", 0) + retries.get("cannot connect", 0) > 0, retries
    # The restarted coordinator has forgotten the group: the consumers rejoin.
    assert set(retries) <= {"connection lost", "cannot connect", "UNKNOWN_MEMBER_ID", "NOT_COORDINATOR",
                            "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS"}, retries
    assert "retries: " in stdout
