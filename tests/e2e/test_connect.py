"""Kafka Connect 4.3.0 in distributed mode against the real broker.

A real worker (org.apache.kafka.connect.cli.ConnectDistributed) keeps its
connector configs, source offsets and statuses in three compacted topics on
Sluice, runs a FileStreamSource connector created through its REST API, is
stopped, and a second worker process with the same group and topics carries on
from what the first one stored. scripts/setup-test-deps.sh sets up the JVM, the
jars and the stand-in of tests/e2e/connect/README.md in .venv/connect/; without
that this test fails (it never skips).
"""

import hashlib
import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource

from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".venv" / "connect"
HERE = Path(__file__).resolve().parent / "connect"
SETUP = "run scripts/setup-test-deps.sh"

GROUP = "sluice-connect"
CONFIG_TOPIC, OFFSET_TOPIC, STATUS_TOPIC = "connect-configs", "connect-offsets", "connect-status"
OFFSET_PARTITIONS, STATUS_PARTITIONS = 2, 1
CONNECTOR = "file-source"
TOPIC = "file-lines"


@pytest.fixture(scope="session")
def connect_runtime():
    """(java, classpath) as scripts/setup-test-deps.sh left them; anything missing
    or stale is a failure, not a skip."""
    for name in ("classes", "classpath", "java", "sources.sha256"):
        if not (BUILD / name).exists():
            pytest.fail(f"{BUILD / name} is missing: Kafka Connect is not set up ({SETUP})")
    sources = sorted((HERE / "jetty-security-shim").rglob("*.java"), key=lambda p: str(p).encode())
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    if digest != (BUILD / "sources.sha256").read_text().strip():
        pytest.fail(f"{BUILD} was compiled from other sources than {HERE}/jetty-security-shim ({SETUP})")
    java = (BUILD / "java").read_text().strip()
    jars = (BUILD / "classpath").read_text().strip().split(":")
    for path in [java, *jars]:
        if not Path(path).is_file():
            pytest.fail(f"{path} is missing ({SETUP})")
    return java, ":".join([str(BUILD / "classes"), *jars])


class Worker:
    """One Connect worker process: its properties file and log in the test's tmp_path."""

    def __init__(self, runtime, broker, tmp_path: Path, name: str):
        self.java, self.classpath = runtime
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker_id = f"127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"{name}.log"
        self.properties = tmp_path / f"{name}.properties"
        self.properties.write_text("".join(f"{k}={v}\n" for k, v in {
            "bootstrap.servers": broker.bootstrap,
            "group.id": GROUP,
            "config.storage.topic": CONFIG_TOPIC,
            "offset.storage.topic": OFFSET_TOPIC,
            "status.storage.topic": STATUS_TOPIC,
            "config.storage.replication.factor": 1,
            "offset.storage.replication.factor": 1,
            "status.storage.replication.factor": 1,
            "offset.storage.partitions": OFFSET_PARTITIONS,
            "status.storage.partitions": STATUS_PARTITIONS,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "true",
            "value.converter.schemas.enable": "true",
            "listeners": self.url,
            # Connect's own plugins (connect-file is on the classpath) by their
            # META-INF/services files: no seconds of class scanning at start.
            "plugin.discovery": "service_load",
            "offset.flush.interval.ms": 1000,
            "scheduled.rebalance.max.delay.ms": 0,
        }.items()))
        self.proc = None

    def start(self):
        command = [self.java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m",
                   f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
                   "-cp", self.classpath, "org.apache.kafka.connect.cli.ConnectDistributed", str(self.properties)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        return self

    def rest(self, method, path, body=None, timeout=10):
        """(HTTP status, decoded JSON body) of one REST call."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def wait_until(self, what, check, timeout=30):
        """Polls check() (a value, or None to go on) until it answers; fails after timeout."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} while waiting for {what}")
            try:
                answer = check()
            except OSError as e:  # not listening yet, connection reset
                answer, last = None, e
            else:
                if answer is not None:
                    return answer
            time.sleep(0.2)
        pytest.fail(f"{self.name}: no {what} after {timeout} s (last error: {last})")

    def wait_ready(self):
        """GET / answers (the REST server), then GET /connectors (the herder has
        read the config topic and joined the group: it answers 409 until then)."""
        def root():
            status, body = self.rest("GET", "/", timeout=2)
            return body if status == 200 and isinstance(body, dict) and "version" in body else None
        info = self.wait_until("answer to GET /", root)
        assert info["version"] == "4.3.0", info
        self.wait_until("answer to GET /connectors", lambda: self.rest("GET", "/connectors", timeout=2)[0] == 200 or None)
        return info

    def wait_running(self, connector):
        """The connector's status once the connector and its one task run on this worker."""
        def running():
            status, body = self.rest("GET", f"/connectors/{connector}/status", timeout=2)
            if status != 200 or body["connector"]["state"] != "RUNNING" or body["connector"]["worker_id"] != self.worker_id:
                return None
            tasks = body["tasks"]
            if len(tasks) != 1 or tasks[0]["state"] != "RUNNING" or tasks[0]["worker_id"] != self.worker_id:
                return None
            return body
        return self.wait_until(f"RUNNING status of {connector} on this worker", running)

    def stop(self, timeout=20):
        """SIGTERM and wait: Connect stops its tasks, commits their offsets, leaves the group."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.name} still running {timeout} s after SIGTERM")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def error_lines(self):
        return [line for line in self.log().splitlines() if re.match(r"^\S+ ERROR ", line)]


def read_records(broker, topic, partition, count, timeout=20):
    """The first `count` records of one partition, read from its beginning."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "connect-test-reader",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        records = []
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            assert message.error() is None, message.error()
            records.append(message)
        return records
    finally:
        consumer.close()


def end_offset(broker, topic, partition):
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "connect-test-reader"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    finally:
        consumer.close()


def value_record(line):
    """What JsonConverter with schemas makes of a FileStreamSource line (a STRING value)."""
    return {"schema": {"type": "string", "optional": False}, "payload": line}


def assert_topic_lines(broker, expected, timeout=20):
    """The connector's topic holds exactly `expected`, in order: keyless JSON records."""
    # The task's producer creates the topic (auto-creation, one partition) with its first record.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    deadline = time.monotonic() + timeout
    while TOPIC not in (topics := admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, f"no topic {TOPIC}"
        time.sleep(0.2)
    assert len(topics[TOPIC].partitions) == 1, "one partition: the records in the order of the lines"
    records = read_records(broker, TOPIC, 0, len(expected), timeout)
    got = [(r.key(), json.loads(r.value())) for r in records]
    assert got == [(None, value_record(line)) for line in expected], "the topic's records"
    assert [r.offset() for r in records] == list(range(len(expected)))
    assert end_offset(broker, TOPIC, 0) == len(expected), "no more records than the lines written"


def assert_internal_topics(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    metadata = admin.list_topics(timeout=10)
    partitions = {name: len(metadata.topics[name].partitions) if name in metadata.topics else None
                  for name in (CONFIG_TOPIC, OFFSET_TOPIC, STATUS_TOPIC)}
    # The config topic always has one partition (Connect refuses more).
    assert partitions == {CONFIG_TOPIC: 1, OFFSET_TOPIC: OFFSET_PARTITIONS, STATUS_TOPIC: STATUS_PARTITIONS}
    for name in partitions:
        for p in metadata.topics[name].partitions.values():
            assert len(p.replicas) == 1, (name, p)
    resources = [ConfigResource("topic", name) for name in partitions]
    for resource, future in admin.describe_configs(resources).items():
        entry = future.result(timeout=10)["cleanup.policy"]
        assert entry.value == "compact", (resource.name, entry)
        assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, (resource.name, entry)


def stored_offsets(broker, source_file):
    """The values of the connector's source offsets in the offset topic, oldest first."""
    key = [CONNECTOR, {"filename": str(source_file)}]
    found = []
    for partition in range(OFFSET_PARTITIONS):
        end = end_offset(broker, OFFSET_TOPIC, partition)
        for record in read_records(broker, OFFSET_TOPIC, partition, end, timeout=10):
            if json.loads(record.key()) == key:
                found.append(json.loads(record.value()))
    return found


def append(path: Path, lines):
    with open(path, "a", encoding="ascii") as f:
        f.write("".join(line + "\n" for line in lines))


def test_distributed_worker_keeps_connectors_and_offsets_in_compacted_topics_across_a_restart(
        broker, connect_runtime, tmp_path):
    # ASCII only: FileStreamSource stores its position in characters but skips bytes on restart.
    lines = [f'line {i}: "quoted", back\\slash, {{"not": "json"}} {"x" * i}' for i in range(1, 10)]
    source_file = tmp_path / "source.txt"
    append(source_file, lines[:3])  # before the connector exists: read from the file's start
    connector_config = {"connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
                        "tasks.max": "1", "file": str(source_file), "topic": TOPIC}
    workers = []
    try:
        first = Worker(connect_runtime, broker, tmp_path, "worker-1").start()
        workers.append(first)
        first.wait_ready()
        # Connect created its internal topics (it refuses to start unless they are compacted).
        assert_internal_topics(broker)

        def create():
            status, body = first.rest("POST", "/connectors", {"name": CONNECTOR, "config": connector_config})
            if status == 409:  # a rebalance in progress: try again
                return None
            assert status == 201, (status, body)
            return body
        created = first.wait_until("connector creation", create)
        assert created["name"] == CONNECTOR and created["type"] == "source", created
        first.wait_running(CONNECTOR)
        append(source_file, lines[3:5])  # while the task runs
        assert_topic_lines(broker, lines[:5])

        # The task's position after line 5 reaches the offset topic (flushed every second).
        position = len("".join(line + "\n" for line in lines[:5]))
        deadline = time.monotonic() + 15
        while (offsets := stored_offsets(broker, source_file))[-1:] != [{"position": position}]:
            assert time.monotonic() < deadline, f"offset topic: {offsets}, expected position {position} last"
            time.sleep(0.3)

        first.stop()
        append(source_file, lines[5:7])  # while no worker runs

        # Same group and topics: the topics exist now (CreateTopics answers
        # TOPIC_ALREADY_EXISTS), the connector comes from the config topic and the
        # task resumes at the position in the offset topic.
        second = Worker(connect_runtime, broker, tmp_path, "worker-2").start()
        workers.append(second)
        second.wait_ready()
        assert second.rest("GET", "/connectors") == (200, [CONNECTOR])
        assert second.rest("GET", f"/connectors/{CONNECTOR}/config") == (200, {**connector_config, "name": CONNECTOR})
        second.wait_running(CONNECTOR)
        append(source_file, lines[7:])  # while the second worker's task runs
        assert_topic_lines(broker, lines)
        assert_internal_topics(broker)

        first_log, second_log = first.log(), second.log()
        for topic in (CONFIG_TOPIC, OFFSET_TOPIC, STATUS_TOPIC):
            assert re.search(rf"TopicAdmin: Created topic \(name={topic},", first_log), f"worker-1 created {topic}"
            assert f"Found existing topic '{topic}'" in second_log, f"worker-2 found {topic} existing"
            assert f"Found cleanup.policy=compact for topic '{topic}'" in second_log
        assert "TopicAdmin: Created topic" not in second_log
        assert f"skip to file offset {position}" in second_log, "worker-2's task resumed at the stored position"
        for worker in workers:
            assert worker.error_lines() == [], f"{worker.name} logged errors"
        second.stop()
    except BaseException:
        for worker in workers:
            print(f"===== {worker.name} ({worker.log_path}), last 150 lines =====")
            print("\n".join(worker.log().splitlines()[-150:]))
            errors = worker.error_lines()
            if errors:
                print(f"===== {worker.name}: {len(errors)} ERROR lines =====")
                print("\n".join(errors[:30]))
        print("===== broker log (end) =====")
        print(broker.log())
        raise
    finally:
        for worker in workers:
            worker.kill()
