"""Hardening: produced batches are validated record by record (nothing is
appended from a bad one, and the answer is Kafka's error code); slow and
hostile connections cannot take the broker's memory; idle and half-sent
connections are closed."""

import gzip
import socket
import struct
import threading
import time

import cramjam
import lz4.frame
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_wire import batch, closed_by_peer, fetch_v4, produce_v7, read_response, record, request

CORRUPT_MESSAGE = 2
INVALID_TXN_STATE = 48
INVALID_RECORD = 87

GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4
COMPRESS = {
    GZIP: gzip.compress,
    SNAPPY: lambda data: bytes(cramjam.snappy.compress_raw(data)),
    LZ4: lz4.frame.compress,
    ZSTD: lambda data: bytes(cramjam.zstd.compress(data)),
}


def create_topic(bootstrap, name, partitions=1):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def consume_all(bootstrap, topic, expected, timeout=30):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = []
    deadline = time.time() + timeout
    while len(got) < expected and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got.append((message.offset(), message.value()))
    # A little longer: nothing more may come.
    end = time.time() + 1
    while time.time() < end:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            got.append((message.offset(), message.value()))
    consumer.close()
    return got


def section(values, first_delta=0):
    return b"".join(record(first_delta + i, v) for i, v in enumerate(values))


def malformed_batches():
    """(name, batch, expected error code): each case of the issue, CRC correct."""
    two = section([b"a", b"b"])
    cases = [
        # records_count and last_offset_delta agree (5); the section holds 2 records.
        ("fewer records than counted", batch(two, 5), INVALID_RECORD),
        # The offset-space burner: 2^31-1 records claimed, one present.
        ("2^31-1 records claimed", batch(section([b"x"]), 0x7FFFFFFF), INVALID_RECORD),
        ("garbage records", batch(b"\xff" * 40, 1), INVALID_RECORD),
        ("offset deltas not from 0", batch(section([b"a", b"b"], first_delta=1), 2), INVALID_RECORD),
        ("bytes after the last record", batch(two + b"\x00\x00", 2), INVALID_RECORD),
        ("control batch", batch(two, 2, attributes=0x20), INVALID_RECORD),
        ("transactional without a transaction", batch(two, 2, attributes=0x10, producer_id=7,
                                                       producer_epoch=0, base_sequence=0), INVALID_TXN_STATE),
        ("codec id 5", batch(two, 2, attributes=5), INVALID_RECORD),
        ("codec id 7", batch(two, 2, attributes=7), INVALID_RECORD),
    ]
    for codec, compress in COMPRESS.items():
        cases.append((f"codec {codec}: payload does not decompress",
                      batch(b"this is not compressed data, just text", 2, attributes=codec), INVALID_RECORD))
        cases.append((f"codec {codec}: decompresses to garbage",
                      batch(compress(b"\xff" * 200), 2, attributes=codec), INVALID_RECORD))
        cases.append((f"codec {codec}: decompresses to fewer records",
                      batch(compress(two), 3, attributes=codec), INVALID_RECORD))
    bad_crc = bytearray(batch(two, 2))
    bad_crc[-1] ^= 1
    cases.append(("bad CRC", bytes(bad_crc), CORRUPT_MESSAGE))
    return cases


def test_malformed_batches_get_kafka_error_codes_and_append_nothing(broker):
    topic = "validated"
    create_topic(broker.bootstrap, topic)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        assert produce_v7(s, topic, 0, batch(section([b"first", b"second"]), 2)) == (0, 0)
        for n, (name, bad, expected) in enumerate(malformed_batches()):
            error_code, base_offset = produce_v7(s, topic, 0, bad, correlation_id=10 + n)
            assert (error_code, base_offset) == (expected, -1), name
        # Every codec's good batch is accepted, at the log end the bad ones left unchanged.
        offset = 2
        for codec, compress in COMPRESS.items():
            good = batch(compress(section([f"c{codec}-a".encode(), f"c{codec}-b".encode()])), 2, attributes=codec)
            assert produce_v7(s, topic, 0, good) == (0, offset), f"codec {codec}"
            offset += 2
    got = consume_all(broker.bootstrap, topic, expected=offset)
    assert [o for o, _ in got] == list(range(offset))
    assert [v for _, v in got][:2] == [b"first", b"second"]
    assert [v for _, v in got][2:] == [f"c{c}-{x}".encode() for c in COMPRESS for x in "ab"]
    # One rate-limited line names the refusal and its code.
    assert "refused with INVALID_RECORD" in broker.log_path.read_text(errors="replace")


def test_real_clients_compressed_batches_are_accepted(broker):
    """Every codec as librdkafka builds it (snappy as a raw block, lz4 frames) passes validation."""
    topic = "codecs"
    create_topic(broker.bootstrap, topic)
    values = [f"value {i} ".encode() * 20 for i in range(500)]
    for codec in ["gzip", "snappy", "lz4", "zstd"]:
        producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec,
                             "linger.ms": 50, "enable.idempotence": True})
        failures = []
        for v in values:
            producer.produce(topic, value=v, on_delivery=lambda e, m: e and failures.append(e))
        assert producer.flush(30) == 0
        assert failures == [], codec
    got = consume_all(broker.bootstrap, topic, expected=4 * len(values))
    assert [v for _, v in got] == values * 4


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


MIB = 1 << 20
BUDGET = 128 * MIB  # per core, two cores


@pytest.fixture
def budget_broker(make_broker, tmp_path):
    config = tmp_path / "sluice.toml"
    config.write_text(f"memory_budget_bytes = {BUDGET}\nmax_frame_bytes = {64 * MIB}\n")
    return make_broker(cores=2, extra_args=["--config", str(config)])


def test_slow_consumers_and_half_sent_frames_stay_within_the_memory_budget(budget_broker):
    broker = budget_broker
    pid = broker.proc.pid
    topic = "big"
    create_topic(broker.bootstrap, topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "acks": "all"})
    payload = b"x" * (256 * 1024)
    for _ in range(640):  # 160 MiB
        producer.produce(topic, value=payload)
        producer.poll(0)
    assert producer.flush(60) == 0
    time.sleep(3)  # the trimmer's interval: start from the idle size
    idle_rss = rss_bytes(pid)

    attackers = []
    try:
        # 20 consumers that pipeline 50 MB fetches and never read a byte.
        for c in range(20):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", broker.port))
            offset = (c * 7 % 16) * 40  # messages of 256 KiB: spread over the 640
            s.sendall(b"".join(fetch_v4(topic, 0, offset, 50_000_000, correlation_id=k) for k in range(8)))
            attackers.append(s)
        # 40 connections that announce a 60 MiB frame and send 1 MiB of it.
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", broker.port))
            s.sendall(struct.pack(">i", 60 * MIB) + b"\0" * MIB)
            attackers.append(s)

        # Meanwhile a normal client produces and consumes, and RSS is sampled.
        peak = [0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_bytes(pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        normal = "normal"
        create_topic(broker.bootstrap, normal)
        latencies = []
        client = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0})
        for i in range(100):
            sent = time.time()
            client.produce(normal, value=f"m{i}".encode(),
                           on_delivery=lambda e, m, sent=sent: latencies.append((e, time.time() - sent)))
            client.flush(10)
            time.sleep(0.03)
        got = consume_all(broker.bootstrap, normal, expected=100, timeout=20)
        stop.set()
        sampler.join()
        assert [e for e, _ in latencies] == [None] * 100
        assert max(t for _, t in latencies) < 1.0, sorted(t for _, t in latencies)[-5:]
        assert [v for _, v in got] == [f"m{i}".encode() for i in range(100)]
        # The two cores' budgets plus slack for what is outside them (one
        # oversized first batch per fetch, allocator slack). Without the
        # budget this was gigabytes.
        limit = idle_rss + 2 * BUDGET + 96 * MIB
        print(f"idle RSS {idle_rss >> 20} MiB, peak {peak[0] >> 20} MiB, limit {limit >> 20} MiB, "
              f"produce latency max {max(t for _, t in latencies) * 1000:.1f} ms")
        assert peak[0] < limit, f"peak RSS {peak[0] >> 20} MiB over {limit >> 20} MiB (idle {idle_rss >> 20} MiB)"
        assert broker.alive()
    finally:
        for s in attackers:
            s.close()
    # Memory returns once they are gone.
    deadline = time.time() + 20
    while time.time() < deadline and rss_bytes(pid) > idle_rss + 64 * MIB:
        time.sleep(0.5)
    assert rss_bytes(pid) <= idle_rss + 64 * MIB, f"RSS {rss_bytes(pid) >> 20} MiB, idle was {idle_rss >> 20} MiB"
    # And the broker serves big fetches again.
    got = consume_all(broker.bootstrap, topic, expected=640, timeout=60)
    assert len(got) == 640


def test_idle_and_half_sent_connections_are_closed(make_broker, tmp_path):
    config = tmp_path / "timeouts.toml"
    config.write_text("connections_max_idle_ms = 1000\nrequest_timeout_ms = 1500\n")
    broker = make_broker(cores=1, extra_args=["--config", str(config)])
    connect = lambda: socket.create_connection(("127.0.0.1", broker.port), timeout=10)  # noqa: E731
    create_topic(broker.bootstrap, "polled")
    with connect() as idle, connect() as half_sent, connect() as polling:
        started = time.time()
        # Served once, then silent.
        idle.sendall(request(18, 0, 1))
        read_response(idle)
        # Half a frame, then silent.
        half_sent.sendall(struct.pack(">i", 1000) + b"\0\x03")
        # A long poll (3 s) is in flight past the idle limit: not idle.
        polling.sendall(fetch_v4("polled", 0, 0, 1000, max_wait_ms=3000))
        assert closed_by_peer(idle, timeout=5)
        assert time.time() - started < 4
        assert closed_by_peer(half_sent, timeout=5)
        response = read_response(polling)
        assert struct.unpack(">i", response[:4])[0] == 1  # the fetch's correlation id
        assert time.time() - started >= 2.5
    assert "stopped arriving" in broker.log()


def test_at_the_descriptor_limit_accept_failures_are_logged_once_per_interval(tmp_path):
    import resource
    import subprocess

    from conftest import SLUICE, Broker

    class LimitedBroker(Broker):
        """A broker whose process may open only 128 files."""

        def start(self):
            real_popen = subprocess.Popen

            def popen(*args, **kwargs):
                kwargs["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
                return real_popen(*args, **kwargs)

            subprocess.Popen = popen
            try:
                return super().start()
            finally:
                subprocess.Popen = real_popen

    assert SLUICE.exists()
    broker = LimitedBroker(tmp_path / "data", cores=1).start()
    sockets = []
    try:
        # Far more connections than descriptors: the kernel completes them,
        # and the broker's accept fails with EMFILE for those past its limit.
        for _ in range(300):
            try:
                sockets.append(socket.create_connection(("127.0.0.1", broker.port), timeout=2))
            except OSError:
                break
        time.sleep(3)
        assert broker.alive()
        lines = [line for line in broker.log().splitlines() if "accept failed" in line]
        assert 1 <= len(lines) <= 2, lines  # one per 10 s, not hundreds a second
        assert "Too many open files" in lines[0]
    finally:
        for s in sockets:
            s.close()
    # Once they are gone the broker accepts and serves again.
    deadline = time.time() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", broker.port), timeout=2) as s:
                s.settimeout(2)
                s.sendall(request(18, 0, 1))
                read_response(s)
                break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    broker.stop()


def test_large_frames_arriving_together_do_not_starve_each_other(make_broker, tmp_path):
    """Three 30 MiB produce requests sent slowly at once on a core whose
    budget holds two: each is read in turn and answered (MESSAGE_TOO_LARGE:
    the topic's max.message.bytes is 1 MiB), none waits for the others forever."""
    config = tmp_path / "small-budget.toml"
    config.write_text(f"memory_budget_bytes = {64 * MIB}\nmax_frame_bytes = {32 * MIB}\n")
    broker = make_broker(cores=1, extra_args=["--config", str(config)])
    create_topic(broker.bootstrap, "large")
    big = batch(section([b"x" * (30 * MIB)]), 1)
    results = []

    def send():
        name = b"large"
        body = (struct.pack(">hhi", -1, -1, 10_000) + struct.pack(">i", 1)
                + struct.pack(">h", len(name)) + name + struct.pack(">i", 1)
                + struct.pack(">ii", 0, len(big)) + big)
        frame = request(0, 7, 5, body=body)
        with socket.create_connection(("127.0.0.1", broker.port), timeout=60) as s:
            for at in range(0, len(frame), MIB):
                s.sendall(frame[at:at + MIB])
                time.sleep(0.01)
            response = read_response(s)
        at = 4 + 4 + 2 + len(name) + 4 + 4
        results.append(struct.unpack(">h", response[at:at + 2])[0])

    threads = [threading.Thread(target=send) for _ in range(3)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results == [10, 10, 10]  # MESSAGE_TOO_LARGE, for every one of them
    assert time.time() - started < 60
    assert broker.alive()
