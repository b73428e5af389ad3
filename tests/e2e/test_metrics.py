"""/metrics and /health: the broker's Prometheus endpoint, scraped while real clients
produce and consume, and its health answer across start-up and shutdown."""

import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def scrape(broker) -> dict:
    """{(name, frozenset of labels): value} from the broker's /metrics."""
    with urllib.request.urlopen(f"http://{broker.host}:{broker.metrics_port}/metrics", timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = LINE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def total(samples, name, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def health(broker):
    try:
        with urllib.request.urlopen(f"http://{broker.host}:{broker.metrics_port}/health", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def read_all(broker, group, topic, partitions, count) -> Consumer:
    """A consumer of `group` that has read `count` messages of `topic`'s
    partitions from the start (nothing committed yet)."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = 0
    deadline = time.time() + 30
    while seen < count and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and not msg.error():
            seen += 1
    assert seen == count
    return consumer


def test_counters_move_by_what_clients_produce_and_consume(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("metered", 4, 1)])["metered"].result(30)
    before = scrape(broker)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(2000):
        producer.produce("metered", value=b"%099d" % i, partition=i % 4)
    assert producer.flush(30) == 0
    after_produce = scrape(broker)
    produced = total(after_produce, "sluice_produced_messages_total", topic="metered") - \
        total(before, "sluice_produced_messages_total", topic="metered")
    assert produced == 2000
    produced_bytes = total(after_produce, "sluice_produced_bytes_total", topic="metered")
    assert 2000 * 100 < produced_bytes < 2000 * 200, produced_bytes
    assert total(after_produce, "sluice_request_duration_seconds_count", api="Produce") >= 1
    assert total(after_produce, "sluice_log_size_bytes", topic="metered") >= produced_bytes
    assert total(after_produce, "sluice_high_watermark", topic="metered") == 2000
    assert total(after_produce, "sluice_partition_leaders") >= 4
    # Durable appends: group-commit rounds wrote at least the batches, each round synced.
    assert total(after_produce, "sluice_flush_written_bytes_total") >= produced_bytes
    rounds = total(after_produce, "sluice_flush_rounds_total")
    assert 1 <= rounds <= 2000
    assert total(after_produce, "sluice_fdatasync_duration_seconds_count") >= rounds

    consumer = read_all(broker, "metered-group", "metered", 4, 2000)
    # Lag: what the group has not committed, against the high watermarks.
    consumer.commit(offsets=[TopicPartition("metered", p, 250) for p in range(4)], asynchronous=False)
    halfway = scrape(broker)
    lag = total(halfway, "sluice_consumer_group_lag", group="metered-group", topic="metered")
    assert lag == 4 * 250, lag
    consumer.commit(offsets=[TopicPartition("metered", p, 500) for p in range(4)], asynchronous=False)
    consumer.close()
    done = scrape(broker)
    assert total(done, "sluice_consumer_group_lag", group="metered-group", topic="metered") == 0
    for p in range(4):
        assert total(done, "sluice_consumer_group_committed_offset", group="metered-group",
                     topic="metered", partition=str(p)) == 500
    assert total(done, "sluice_fetched_messages_total", topic="metered") == 2000
    assert total(done, "sluice_fetched_bytes_total", topic="metered") == produced_bytes
    assert total(done, "sluice_request_duration_seconds_count", api="Fetch") >= 1
    assert total(done, "sluice_request_duration_seconds_count", api="OffsetCommit") >= 2
    # The consumer read at the head: from the tail cache, not the disk.
    assert total(done, "sluice_tail_cache_hit_bytes_total") >= produced_bytes
    assert total(done, "sluice_connections") >= 1


def test_health_is_503_while_starting_and_stopping_and_200_in_between(tmp_path):
    broker = Broker(tmp_path / "data").start()
    # Enough partitions that opening and closing them takes a while.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("many", 64, 1)])["many"].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(6400):
        producer.produce("many", value=b"x" * 100, partition=i % 64)
    assert producer.flush(30) == 0
    assert health(broker) == 200
    answers = []
    broker.proc.send_signal(signal.SIGTERM)
    while broker.proc.poll() is None:
        answers.append(health(broker))
    broker.proc = None
    assert 503 in answers, f"no 503 while stopping: {answers[:20]}"
    assert 200 not in answers[answers.index(503):], "200 again after stopping began"

    log = open(broker.log_path, "ab")
    broker.proc = subprocess.Popen(broker.command(), stdout=log, stderr=subprocess.STDOUT)
    answers = []
    deadline = time.time() + 30
    while time.time() < deadline and 200 not in answers:
        answer = health(broker)
        if answer is not None:
            answers.append(answer)
    try:
        assert answers and answers[0] == 503, f"start-up answers: {answers[:20]}"
        assert answers[-1] == 200
    finally:
        broker.stop()


def test_every_metric_of_the_grafana_dashboard_is_exported(broker):
    import json
    import socket
    from pathlib import Path
    from kafka_wire import fetch_v4, read_response
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana" /
                            "sluice-dashboard.json").read_text())
    names = {n for panel in dashboard["panels"] for target in panel["targets"]
             for n in re.findall(r"sluice_\w+", target["expr"])}
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("dash", value=b"v")
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "dash",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition("dash", 0, 0)])
    assert consumer.poll(10) is not None
    consumer.commit(asynchronous=False)
    consumer.close()
    # An error answer: a fetch far past the end (OFFSET_OUT_OF_RANGE).
    with socket.create_connection((broker.host, broker.port)) as sock:
        sock.sendall(fetch_v4("dash", 0, 10**9, 1024))
        read_response(sock)
    # Another: a topic created twice (TOPIC_ALREADY_EXISTS), counted by API and code.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    try:
        admin.create_topics([NewTopic("dash", 1, 1)])["dash"].result(30)
    except Exception:
        pass
    samples = scrape(broker)
    assert total(samples, "sluice_error_answers_total", api="CreateTopics", code="TOPIC_ALREADY_EXISTS") == 1
    assert total(samples, "sluice_error_answers_total", api="Fetch", code="OFFSET_OUT_OF_RANGE") >= 1
    exported = {name for name, _ in samples}
    missing = sorted(n for n in names if n not in exported)
    assert not missing, f"the dashboard uses metrics /metrics does not export: {missing}"
    assert len(names) >= 12
    # The README's table names exactly the families exported.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = {name for row in readme.splitlines() if row.startswith("| `sluice_")
             for name in re.findall(r"`(sluice_\w+)`", row.split("|")[1])}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count"))
                and "duration_seconds" in n else n for n in exported}
    assert families == table, (f"exported, not in the README's table: {sorted(families - table)}; "
                               f"in the table, not exported: {sorted(table - families)}")


def test_error_answers_of_every_api_family_are_counted_and_logged_rate_limited(broker):
    """Config, record-deletion, offset, leader-epoch and group-deletion errors are
    counted by API and code, and logged with their subject at most about once a
    second per core however many a client causes."""
    import socket
    import struct
    from confluent_kafka import TopicPartition as TP
    from confluent_kafka.admin import ConfigResource, ConfigEntry, AlterConfigOpType, ResourceType
    from kafka_wire import offset_for_leader_epoch_v2, read_response, request
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("errs", 1, 1)])["errs"].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("errs", value=b"v", partition=0)
    assert producer.flush(30) == 0

    # DescribeConfigs of a missing topic, many times: counted each time, logged rarely.
    started = time.time()
    for _ in range(200):
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, "no-such-topic")])
        try:
            list(futures.values())[0].result(30)
        except Exception:
            pass
    elapsed = time.time() - started
    # IncrementalAlterConfigs with a config no topic has: INVALID_CONFIG.
    bad = ConfigResource(ResourceType.TOPIC, "errs", incremental_configs=[
        ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)])
    try:
        list(admin.incremental_alter_configs([bad]).values())[0].result(30)
    except Exception:
        pass
    # DeleteRecords past the high watermark: OFFSET_OUT_OF_RANGE.
    try:
        list(admin.delete_records([TP("errs", 0, 1000)]).values())[0].result(30)
    except Exception:
        pass
    # DeleteGroups of a group that never existed: GROUP_ID_NOT_FOUND.
    try:
        list(admin.delete_consumer_groups(["never-was"]).values())[0].result(30)
    except Exception:
        pass
    with socket.create_connection((broker.host, broker.port)) as sock:
        # OffsetForLeaderEpoch with a leader epoch from the future: UNKNOWN_LEADER_EPOCH.
        code, _, _ = offset_for_leader_epoch_v2(sock, "errs", 0, current_leader_epoch=99, leader_epoch=0)
        assert code == 75
        # ListOffsets v1 of a partition the topic does not have: UNKNOWN_TOPIC_OR_PARTITION.
        name = b"errs"
        body = (struct.pack(">ii", -1, 1) + struct.pack(">h", len(name)) + name
                + struct.pack(">i", 1) + struct.pack(">iq", 7, -1))
        sock.sendall(request(2, 1, 2, body=body))
        response = read_response(sock)
        assert struct.unpack(">h", response[4 + 4 + 2 + len(name) + 4 + 4:][:2])[0] == 3

    samples = scrape(broker)
    def errors(api, code):
        return total(samples, "sluice_error_answers_total", api=api, code=code)
    assert errors("DescribeConfigs", "UNKNOWN_TOPIC_OR_PARTITION") == 200
    assert errors("IncrementalAlterConfigs", "INVALID_CONFIG") == 1
    assert errors("DeleteRecords", "OFFSET_OUT_OF_RANGE") == 1
    assert errors("DeleteGroups", "GROUP_ID_NOT_FOUND") == 1
    assert errors("OffsetForLeaderEpoch", "UNKNOWN_LEADER_EPOCH") == 1
    assert errors("ListOffsets", "UNKNOWN_TOPIC_OR_PARTITION") == 1

    log = broker.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines() if "answered with an error" in line]
    described = [line for line in lines if "DescribeConfigs" in line]
    assert described and "no-such-topic" in described[0] and "UNKNOWN_TOPIC_OR_PARTITION" in described[0]
    # Two cores, at most one line a second each (and the first at once).
    assert len(described) <= 2 * (elapsed + 2), (len(described), elapsed)
    # The next line after a burst says how many were left out (the same
    # connection, so the same core's limiter).
    time.sleep(1.1)
    try:
        list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, "no-such-topic")]).values())[0].result(30)
    except Exception:
        pass
    time.sleep(0.2)
    log = broker.log_path.read_text(errors="replace")
    left_out = [int(n) for n in re.findall(r"\((\d+) more error answers not logged", log)]
    assert sum(left_out) >= 100, left_out


def test_write_buffers_and_io_memory_are_exported(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("buffered", 4, 1)])["buffered"].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(4000):
        producer.produce("buffered", value=b"x" * 1000, partition=i % 4)
    assert producer.flush(30) == 0
    samples = scrape(broker)
    # Each open partition's tail holds at least one 4 KiB page.
    assert total(samples, "sluice_write_buffer_bytes") >= 4 * 4096
    # Flushed buffers came back: none left in flight when nothing is produced.
    assert total(samples, "sluice_io_write_in_flight_bytes") == 0
    assert total(samples, "sluice_write_pending_bytes") == 0
    # Every core says what its reuse pool holds (a flight's last, cut chunk is
    # not pooled, so what it holds depends on the flights' sizes).
    for name in ("sluice_io_buffer_pool_bytes", "sluice_io_write_in_flight_bytes",
                 "sluice_write_buffer_bytes"):
        shards = {dict(labels).get("shard") for n, labels in samples if n == name}
        assert shards == {"0", "1"}, (name, shards)


def test_prometheus_lints_the_exposition_and_every_dashboard_query_answers(broker, tmp_path):
    """Debian's Prometheus scrapes the broker: `promtool check metrics` finds
    nothing against the naming conventions, and every query of the Grafana
    dashboard returns series, the cluster-wide lag one the records left."""
    import json
    import shutil
    import socket
    from pathlib import Path
    from urllib.parse import quote
    from conftest import free_port
    from kafka_wire import fetch_v4, read_response
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert prometheus and promtool, "prometheus is missing (scripts/setup-test-deps.sh installs it)"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("watched", 2, 1)])["watched"].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(200):
        producer.produce("watched", value=b"%d" % i, partition=i % 2)
    assert producer.flush(30) == 0
    consumer = read_all(broker, "watchers", "watched", 2, 200)
    consumer.commit(offsets=[TopicPartition("watched", 0, 40), TopicPartition("watched", 1, 70)],
                    asynchronous=False)
    consumer.close()
    with socket.create_connection((broker.host, broker.port)) as sock:
        sock.sendall(fetch_v4("watched", 0, 10**9, 1024))  # OFFSET_OUT_OF_RANGE, counted
        read_response(sock)

    with urllib.request.urlopen(f"http://{broker.host}:{broker.metrics_port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        text = r.read()
    # promtool lints with the older text format's parser, where a counter's
    # HELP names the sample (`x_total`); in OpenMetrics it names the family
    # (`x`). That difference, and nothing else, is allowed.
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    problems = (lint.stdout + lint.stderr).decode().splitlines()
    helped = set(re.findall(r"^# HELP (\S+)", text.decode(), re.M))
    problems = [p for p in problems if not (
        p.endswith(" no help text") and p.split()[0].endswith("_total")
        and p.split()[0][:-len("_total")] in helped)]
    assert not problems, problems

    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: sluice\n    static_configs:\n"
        f"      - targets: ['{broker.host}:{broker.metrics_port}']\n")
    server = subprocess.Popen([prometheus, f"--config.file={config}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT)

    def query(expr):
        url = f"http://127.0.0.1:{port}/api/v1/query?query={quote(expr)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    try:
        # Until the rates have two scrapes of every series to work from.
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if query('count_over_time(up{job="sluice"}[1m])') and \
                        float(query('count_over_time(up{job="sluice"}[1m])')[0]["value"][1]) >= 4:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert query('up{job="sluice"}')[0]["value"][1] == "1", (tmp_path / "prometheus.log").read_text()
        # Prometheus read the families' types and units as meant.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/metadata", timeout=5) as r:
            metadata = {name: entries[0] for name, entries in json.loads(r.read())["data"].items()}
        assert metadata["sluice_produced_bytes"]["type"] == "counter"
        assert metadata["sluice_produced_bytes"]["unit"] == "bytes"
        assert metadata["sluice_request_duration_seconds"]["type"] == "histogram"
        assert metadata["sluice_request_duration_seconds"]["unit"] == "seconds"
        assert metadata["sluice_consumer_group_lag"]["type"] == "gauge"
        untyped = sorted(n for n, m in metadata.items() if n.startswith("sluice_") and m["type"] == "unknown")
        assert not untyped, untyped
        dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana" /
                                "sluice-dashboard.json").read_text())
        empty = []
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                if not query(target["expr"]):
                    empty.append((panel["title"], target["expr"]))
        assert not empty, f"dashboard queries with no series: {empty}"
        lag = next(t["expr"] for p in dashboard["panels"] for t in p["targets"]
                   if "committed_offset" in t["expr"])
        by_group = {(s["metric"]["group"], s["metric"]["topic"]): float(s["value"][1])
                    for s in query(lag)}
        assert by_group[("watchers", "watched")] == (100 - 40) + (100 - 70)
    finally:
        server.terminate()
        server.wait(30)


def test_a_silent_client_does_not_hold_up_health(broker):
    """Requests to the metrics listener are served side by side: clients that
    connect and send nothing (each held up to the 2 s read timeout) do not
    delay a health probe; past the 4 serving threads, /health is still
    answered and /metrics gets an immediate 503, not a wait."""
    import socket
    silent = [socket.create_connection((broker.host, broker.metrics_port)) for _ in range(3)]
    try:
        time.sleep(0.2)  # handed to serving threads, which wait for a request line
        started = time.time()
        assert health(broker) == 200
        assert time.time() - started < 1.0, "health waited behind silent clients"
        time.sleep(0.1)  # the thread that answered is waiting again
        silent.append(socket.create_connection((broker.host, broker.metrics_port)))
        time.sleep(0.2)
        # Held by the fourth serving thread (the acceptor would have answered it 503).
        silent[-1].setblocking(False)
        try:
            assert silent[-1].recv(64) == b"", "the fourth silent client was answered"
        except BlockingIOError:
            pass
        started = time.time()
        assert health(broker) == 200  # every serving thread is taken: answered by the acceptor
        try:
            urllib.request.urlopen(f"http://{broker.host}:{broker.metrics_port}/metrics", timeout=5)
            raise AssertionError("a scrape was served with every serving thread taken")
        except urllib.error.HTTPError as e:
            assert e.code == 503 and e.read() == b"busy\n"
        assert time.time() - started < 1.0
    finally:
        for sock in silent:
            sock.close()
    time.sleep(0.2)
    assert health(broker) == 200


def test_trickling_clients_get_no_more_time_than_silent_ones(broker):
    """Clients that send a request one byte at a time hold a serving thread
    for the same 2 s as a silent one, not for as long as they keep trickling:
    with all four taken that way, /health is answered throughout and a scrape
    is served again once their time is up."""
    import socket
    import threading
    stop = threading.Event()
    cut = []  # trickling clients whose connection the broker closed

    def trickle():
        # 235 bytes, one each 40 ms: about 9.4 s if nobody cuts it short.
        with socket.create_connection((broker.host, broker.metrics_port)) as sock:
            for byte in b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"x" * 200:
                if stop.is_set():
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    cut.append(sock)
                    return
                time.sleep(0.04)

    threads = [threading.Thread(target=trickle) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        assert health(broker) == 200
        deadline = time.time() + 6
        status = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(
                        f"http://{broker.host}:{broker.metrics_port}/metrics", timeout=5) as r:
                    status = r.status
                    break
            except urllib.error.HTTPError as e:
                status = e.code  # 503 busy while the trickling clients hold every thread
            time.sleep(0.25)
        assert status == 200, status
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert len(cut) == 4, f"{len(cut)} of the 4 trickling clients were cut off"

