"""The official Java Kafka client (kafka-clients 4.3.0) against the real broker.

tests/e2e/java/SluiceClientCheck.java runs a scenario (one JVM a test) and
prints what the client saw as JSON lines; the assertions are here.
scripts/setup-test-deps.sh installs the JDK and the jars and compiles it into
.venv/java/; without that these tests fail (they never skip).
"""

import hashlib
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from conftest import Broker

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".venv" / "java"
SOURCES = Path(__file__).resolve().parent / "java"
SETUP = "run scripts/setup-test-deps.sh"


class JavaClient:
    def __init__(self, java: str, classpath: str):
        self.java = java
        self.classpath = classpath

    def run(self, scenario, broker, *args, timeout=60) -> list:
        """Runs a scenario against `broker`; its stdout as a list of JSON objects."""
        command = [self.java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m",
                   f"-Dlog4j2.configurationFile={SOURCES / 'log4j2.properties'}",
                   "-cp", self.classpath, "SluiceClientCheck", scenario, broker.bootstrap, *map(str, args)]
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"Java scenario {scenario} still running after {timeout} s\nstdout (end):\n"
                        f"{(e.stdout or b'').decode(errors='replace')[-3000:]}\nstderr (end):\n"
                        f"{(e.stderr or b'').decode(errors='replace')[-6000:]}\nbroker log:\n{broker.log()}")
        stdout = done.stdout.decode(errors="replace")
        stderr = done.stderr.decode(errors="replace")
        if done.returncode != 0:
            pytest.fail(f"Java scenario {scenario} exited with {done.returncode}\nstderr (end):\n{stderr[-6000:]}\n"
                        f"stdout (end):\n{stdout[-3000:]}\nbroker log:\n{broker.log()}")
        self.last_stderr = stderr  # the client's WARN lines, for assertion messages
        return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def java_client():
    """The compiled Java program and its classpath, as scripts/setup-test-deps.sh left them.
    Anything missing or stale is a failure, not a skip."""
    for name in ("classes", "classpath", "java", "sources.sha256"):
        if not (BUILD / name).exists():
            pytest.fail(f"{BUILD / name} is missing: the Java client is not set up ({SETUP})")
    sources = sorted(SOURCES.glob("*.java"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    if digest != (BUILD / "sources.sha256").read_text().strip():
        pytest.fail(f"{BUILD} was compiled from other sources than {SOURCES}/*.java ({SETUP})")
    java = (BUILD / "java").read_text().strip()
    jars = (BUILD / "classpath").read_text().strip().split(":")
    for path in [java, *jars]:
        if not Path(path).is_file():
            pytest.fail(f"{path} is missing ({SETUP})")
    return JavaClient(java, ":".join([str(BUILD / "classes"), *jars]))


def only(lines, **match):
    """The lines that have all of `match`'s key/value pairs."""
    return [line for line in lines if all(line.get(k) == v for k, v in match.items())]


def value_of(lines, key):
    """The value of `key` in the one line that has it."""
    found = [line[key] for line in lines if key in line]
    assert len(found) == 1, f"expected one line with {key!r}, got {found}"
    return found[0]


def one(lines, **match):
    found = only(lines, **match)
    assert len(found) == 1, f"expected one line with {match}, got {found}"
    return found[0]


def test_admin_client_topics_cluster_and_configs(broker, java_client):
    out = java_client.run("admin", broker, "java-admin")

    created = one(out, step="create")
    assert (created["partitions"], created["replication_factor"]) == (3, 1)
    assert "java-admin" in one(out, step="list")["topics"]

    cluster = one(out, step="describe_cluster")
    assert len(cluster["nodes"]) == 1, cluster
    node = cluster["nodes"][0]
    assert (node["host"], node["port"]) == ("127.0.0.1", broker.port), "the advertised listener"
    assert cluster["controller"] == node["id"]
    assert cluster["cluster_id"]

    topic = one(out, step="describe_topic")
    assert topic["name"] == "java-admin" and topic["internal"] is False
    # Metadata v10+ names the topic by the id CreateTopics v7 gave it (Java's zero id is AAAA…).
    created_id = one(out, step="create")["topic_id"]
    assert topic["topic_id"] == created_id and created_id != "AAAAAAAAAAAAAAAAAAAAAA", (topic, created_id)
    assert [p["partition"] for p in topic["partitions"]] == [0, 1, 2]
    for p in topic["partitions"]:
        assert (p["leader"], p["replicas"], p["isr"]) == (node["id"], [node["id"]], [node["id"]]), p

    again = one(out, step="create_again")
    assert again["error"] == "org.apache.kafka.common.errors.TopicExistsException", again

    configs = {line["name"]: line for line in only(out, step="config")}
    for name, value in (("retention.ms", "3600000"), ("max.message.bytes", "2000000")):
        assert name in configs, f"DescribeConfigs left out {name}: {sorted(configs)}"
        entry = configs[name]
        assert entry["value"] == value, entry
        assert (entry["source"], entry["default"]) == ("DYNAMIC_TOPIC_CONFIG", False), entry


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_idempotent_producer_acks_every_record_once_in_order(broker, java_client, compression):
    count, partitions = 3000, 4
    out = java_client.run("idempotent", broker, f"idem-{compression}", partitions, count, compression)

    acks = [line for line in out if "ack" in line]
    errors = [a for a in acks if "error" in a]
    assert errors == [], f"sends failed: {errors[:5]}\n{java_client.last_stderr[-3000:]}"
    assert sorted(a["ack"] for a in acks) == list(range(count)), "every send acknowledged once"
    acked = {(a["p"], a["o"]): a["ack"] for a in acks}
    assert len(acked) == count, "no two records acknowledged at the same offset"
    for p in range(partitions):
        offsets = sorted(o for q, o in acked if q == p)
        assert offsets == list(range(len(offsets))), f"partition {p}: acknowledged offsets not contiguous from 0"
        order = [acked[(p, o)] for o in offsets]
        assert order == sorted(order), f"partition {p}: records out of send order"
    assert all(any(q == p for q, _ in acked) for p in range(partitions)), "keys spread over all partitions"

    records = [line for line in out if "k" in line]
    read = Counter((r["p"], r["o"]) for r in records)
    assert [k for k, n in read.items() if n > 1] == [], "duplicates read back"
    assert set(read) == set(acked), "read back exactly what was acknowledged"
    for r in records:
        i = acked[(r["p"], r["o"])]
        assert (r["k"], r["v"]) == (f"key-{i}", f"value-{i}"), r
    ends = value_of(out, "end_offsets")
    assert ends == {str(p): sum(1 for q, _ in acked if q == p) for p in range(partitions)}


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_group_commits_in_the_revoke_callback_hand_over_without_duplicates_or_gaps(broker, java_client, strategy):
    """Consumer a processes part of the first half, b joins the group (eager
    RangeAssignor: everything revoked and reassigned; CooperativeStickyAssignor:
    only what moves), the second half is produced, both poll until all is read.
    Offsets are committed only in onPartitionsRevoked (also called on close)."""
    total, partitions = 2000, 4
    out = java_client.run("group", broker, f"handover-{strategy}", f"java-{strategy}", partitions, total, strategy)

    assert only(out, event="commit_error") == [], java_client.last_stderr[-3000:]
    assert only(out, event="lost") == [], "partitions lost instead of revoked"
    settled = one(out, event="settled")
    assert settled["a"] and settled["b"], f"both members got partitions: {settled}"
    assert sorted(settled["a"] + settled["b"]) == list(range(partitions)), settled

    records = [line for line in out if "c" in line and "o" in line]
    seen = Counter((r["p"], r["o"]) for r in records)
    duplicates = {k: n for k, n in seen.items() if n > 1}
    assert duplicates == {}, f"{len(duplicates)} records delivered twice, e.g. {list(duplicates)[:5]}"
    for p in range(partitions):
        offsets = sorted(o for q, o in seen if q == p)
        missing = sorted(set(range(total // partitions)) - set(offsets))
        assert missing == [], f"partition {p}: gaps, never delivered: {missing[:10]}"
        assert len(offsets) == total // partitions, f"partition {p}: {offsets[-5:]}"
    for r in records:
        assert r["v"] == str(r["o"] * partitions + r["p"]), r
    assert {r["c"] for r in records} == {"a", "b"}, "b took over some partitions"
    # b resumed each partition it took over exactly where a's revoke-time commit left it
    # (a had processed part of every partition when b joined).
    a_commits = only(out, event="commit", c="a")
    for p in settled["b"]:
        commits = [c["offsets"][str(p)] for c in a_commits if str(p) in c["offsets"]]
        assert commits and commits[0] > 0, f"a committed partition {p} when it was revoked: {a_commits}"
        first_of_b = min(r["o"] for r in records if r["c"] == "b" and r["p"] == p)
        assert first_of_b == commits[0], f"partition {p}: a committed {commits}, b started at {first_of_b}"

    committed = value_of(out, "committed")
    assert committed == {str(p): total // partitions for p in range(partitions)}, "the group's committed offsets"


def test_offsets_for_times_are_record_exact_in_compressed_batches(broker, java_client):
    count = 1000
    deltas = [-1000, 0, 1, 124, 125, 126, 537, 998, 999, 1000, 5000]
    out = java_client.run("timestamps", broker, "times", count, "gzip", ",".join(map(str, deltas)))

    base = value_of(out, "base")
    metrics = value_of(out, "metrics")
    assert metrics["records-per-request-avg"] >= 50, f"batches of many records: {metrics}"
    acks = [line for line in out if "ack" in line]
    assert [a for a in acks if "error" in a] == []
    assert sorted((a["ack"], a["o"], a["ts"]) for a in acks) == [(i, i, base + i) for i in range(count)]

    queries = {line["query"]: (line["offset"], line["timestamp"]) for line in out if "query" in line}
    for delta in deltas:
        if delta < 0:
            expected = (0, base)  # the first record at or after the time
        elif delta < count:
            expected = (delta, base + delta)  # the record itself, not its batch's first
        else:
            expected = (None, None)  # after the last record: none
        assert queries[delta] == expected, f"offsetsForTimes(base{delta:+d})"

    listed = {line["list_offsets"]: (line["offset"], line["timestamp"]) for line in out if "list_offsets" in line}
    assert listed["earliest"][0] == 0
    assert listed["latest"][0] == count
    assert listed["max_timestamp"] == (count - 1, base + count - 1)

    records = [line for line in out if "type" in line]
    assert [(r["o"], r["ts"], r["type"]) for r in records] == [(i, base + i, "CreateTime") for i in range(count)]
    assert all(r["v"].startswith(f"value-{r['o']} ") for r in records)


def test_admin_offsets_of_several_groups_delete_records_and_alter_configs(broker, java_client):
    """What tools and Kafka Streams ask of the admin client: one listConsumerGroupOffsets
    for several groups (OffsetFetch v8+), deleteRecords, incrementalAlterConfigs."""
    groups = ["streams-a", "streams-b", "streams-c"]
    lines = java_client.run("offsets", broker, "java-offsets", ",".join(groups))
    committed = {(l["group"], l["partition"]): (l["offset"], l["metadata"]) for l in only(lines, step="committed")}
    assert committed == {(g, p): ((10 if p == 0 else 20) + i, f"g{i}" if p == 0 else "")
                         for i, g in enumerate(groups) for p in (0, 1)}
    deleted = one(lines, step="deleted")
    assert (deleted["result"], deleted["earliest"]) == (30, 30)
    altered = one(lines, step="altered")
    assert (altered["cleanup.policy"], altered["source"]) == ("compact", "DYNAMIC_TOPIC_CONFIG")


def test_a_consumer_of_many_partitions_fetches_incrementally_and_reads_everything_once(
        tmp_path, java_client, monkeypatch):
    """KIP-227 with the Java client (incremental fetch sessions are its default): it opens
    a session holding all 48 partitions, then fetches incrementally, and the responses
    carry only the partitions with news, while every record arrives once, in order."""
    monkeypatch.setenv("RUST_LOG", "info,sluice_shard::handlers::fetch=debug")
    broker = Broker(tmp_path / "data").start()
    try:
        lines = java_client.run("sessions", broker, "sessions", 48, 960)
    finally:
        broker.stop()
    done = one(lines, event="done")
    assert done["seen"] == done["produced"] == 960 + 6 * 20, done
    records = [line for line in lines if "p" in line]
    values = sorted(int(r["v"]) for r in records)
    assert values == list(range(done["produced"])), "every record once"
    offsets = {}
    for r in records:
        offsets.setdefault(r["p"], []).append(r["o"])
    for partition, seen in offsets.items():
        assert seen == list(range(len(seen))), f"partition {partition} in offset order"
    log = re.sub(r"\x1b\[[0-9;]*m", "", broker.log_path.read_text(errors="replace"))
    opened = [int(n) for n in re.findall(r"fetch session opened.*?partitions=(\d+)", log)]
    assert 48 in opened, f"a session of the 48 partitions was opened: {opened}"
    incremental = [(int(p), int(a)) for p, a in
                   re.findall(r"incremental fetch.*?partitions=(\d+) answered=(\d+)", log)]
    assert len(incremental) >= 6, f"incremental fetches: {incremental[:20]}"
    assert all(p == 48 for p, _ in incremental), "the session keeps all 48"
    assert any(0 < a < 48 for _, a in incremental), "responses carry only partitions with news"
