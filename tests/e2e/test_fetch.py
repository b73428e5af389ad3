"""Fetch semantics: long polls woken by appends, OFFSET_OUT_OF_RANGE, max bytes."""

import socket
import struct
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, TopicPartition as KTopicPartition
from kafka.errors import OffsetOutOfRangeError
from kafka_wire import read_response, request


def test_long_poll_is_woken_by_an_append(broker):
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("poll", value=b"first")
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 20_000, "fetch.min.bytes": 1})
    consumer.assign([TopicPartition("poll", 0, 1)])
    # Let the consumer's first (empty) long poll park on the broker.
    assert consumer.poll(1.0) is None
    def later():
        time.sleep(0.5)
        producer.produce("poll", value=b"second")
        producer.flush(30)
    threading.Thread(target=later).start()
    start = time.time()
    msg = consumer.poll(15)
    waited = time.time() - start
    consumer.close()
    assert msg is not None and msg.value() == b"second"
    # Woken by the append, not by the 20 s max wait expiring.
    assert waited < 10, waited


def test_offset_out_of_range(broker):
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        producer.produce("oor", value=b"%d" % i)
    assert producer.flush(30) == 0
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="none", enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    tp = KTopicPartition("oor", 0)
    consumer.assign([tp])
    consumer.seek(tp, 50)
    try:
        consumer.poll(timeout_ms=5000)
        raised = False
    except OffsetOutOfRangeError:
        raised = True
    consumer.close()
    assert raised


def test_small_max_bytes_still_makes_progress(broker):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50, "batch.size": 1_000_000})
    for i in range(2000):
        producer.produce("big", value=b"x" * 500)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False,
                         "fetch.max.bytes": 1024, "max.partition.fetch.bytes": 1024, "message.max.bytes": 1000,
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition("big", 0, 0)])
    count = 0
    while True:
        msg = consumer.poll(10)
        assert msg is not None
        if msg.error():
            assert msg.error().code() == KafkaError._PARTITION_EOF
            break
        count += 1
    consumer.close()
    assert count == 2000


def raw_fetch(bootstrap: str, topic: str, partitions: int, max_bytes: int, partition_max_bytes: int) -> list:
    """Fetch v4 of every partition from offset 0; returns, per partition in
    request order, (error code, high watermark, the batch sizes returned)."""
    name = topic.encode()
    body = struct.pack(">iiiib", -1, 0, 1, max_bytes, 0)  # replica, max wait, min bytes, max bytes, isolation
    body += struct.pack(">ih", 1, len(name)) + name + struct.pack(">i", partitions)
    for p in range(partitions):
        body += struct.pack(">iqi", p, 0, partition_max_bytes)
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request(1, 4, 7, body))
        data = read_response(sock)
    at = 4 + 4  # correlation id, throttle time
    (topics,) = struct.unpack_from(">i", data, at)
    at += 4
    assert topics == 1
    (n,) = struct.unpack_from(">h", data, at)
    at += 2 + n
    (count,) = struct.unpack_from(">i", data, at)
    at += 4
    result = []
    for _ in range(count):
        _partition, error, high_watermark, _lso, aborted = struct.unpack_from(">ihqqi", data, at)
        at += 4 + 2 + 8 + 8 + 4 + max(aborted, 0) * 16
        (size,) = struct.unpack_from(">i", data, at)
        at += 4
        records = data[at:at + max(size, 0)]
        at += max(size, 0)
        batches, pos = [], 0
        while pos < len(records):
            (length,) = struct.unpack_from(">i", records, pos + 8)
            batches.append(12 + length)
            pos += 12 + length
        assert pos == len(records), "records must end on a whole batch"
        result.append((error, high_watermark, batches))
    return result


def test_fetch_of_many_partitions_spends_max_bytes_in_request_order(broker):
    # Partitions live on both cores; the broker reads them concurrently but must
    # fill the response as Kafka does: in request order, whole batches, within
    # max_bytes, the first partition with data allowed one batch over the limit.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("spread", num_partitions=4, replication_factor=1)])["spread"].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    for _ in range(5):  # one batch per partition per flush
        for p in range(4):
            producer.produce("spread", value=b"v" * 1000, partition=p)
        assert producer.flush(30) == 0

    everything = raw_fetch(broker.bootstrap, "spread", 4, 10_000_000, 1_000_000)
    assert [(e, hw) for e, hw, _ in everything] == [(0, 5)] * 4
    sizes = [b for _, _, b in everything]
    assert all(len(b) == 5 for b in sizes), sizes

    # Room for partition 0 and two batches of partition 1, not a third.
    budget = sum(sizes[0]) + sum(sizes[1][:2]) + sizes[1][2] - 1
    got = raw_fetch(broker.bootstrap, "spread", 4, budget, 1_000_000)
    assert [b for _, _, b in got] == [sizes[0], sizes[1][:2], [], []]
    assert [hw for _, hw, _ in got] == [5] * 4

    # A per-partition limit of two batches applies to every partition.
    two = sum(sizes[0][:2])
    got = raw_fetch(broker.bootstrap, "spread", 4, 10_000_000, two)
    assert [len(b) for _, _, b in got] == [2, 2, 2, 2]

    # max_bytes below one batch: the first partition still gets one whole batch.
    got = raw_fetch(broker.bootstrap, "spread", 4, 10, 10)
    assert [len(b) for _, _, b in got] == [1, 0, 0, 0]


def test_list_offsets_v8_on_the_wire(broker):
    """ListOffsets v8 (flexible): earliest (-2), latest (-1), max timestamp (-3),
    earliest local (-4, KIP-405: the earliest here, no tiered storage)."""
    import struct

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("lo8", 1, 1)])["lo8"].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    for i in range(5):
        producer.produce("lo8", value=b"v%d" % i, timestamp=1_700_000_000_000 + (7 if i == 3 else i))
        producer.flush(10)

    def list_offsets(timestamp):
        name = b"lo8"
        body = (struct.pack(">ib", -1, 0) + bytes([2, len(name) + 1]) + name + bytes([2])
                + struct.pack(">iiq", 0, -1, timestamp) + b"\0\0\0")
        client_id = b"raw"
        frame = struct.pack(">hhih", 2, 8, 3, len(client_id)) + client_id + b"\0" + body
        with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
            s.sendall(struct.pack(">i", len(frame)) + frame)
            response = read_response(s)
        # correlation id, tags, throttle, topics[1], name, partitions[1], then the partition.
        at = 4 + 1 + 4 + 1 + 1 + len(name) + 1
        index, error, ts, offset, epoch = struct.unpack(">ihqqi", response[at:at + 26])
        assert (index, error) == (0, 0)
        return offset, ts

    assert list_offsets(-2) == (0, -1)
    assert list_offsets(-4) == (0, -1)
    assert list_offsets(-1) == (5, -1)
    assert list_offsets(-3) == (3, 1_700_000_000_007)


def test_fetch_sessions_on_the_wire(broker):
    """KIP-227 as Kafka answers it: a full fetch at epoch 0 opens a session; incremental
    fetches name only what changed and get only partitions with news; a wrong epoch is
    INVALID_FETCH_SESSION_EPOCH, an unknown or closed session FETCH_SESSION_ID_NOT_FOUND."""
    from kafka_wire import fetch_v7
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("sessions", 3, 1)])["sessions"].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for p in range(3):
        producer.produce("sessions", value=b"v%d" % p, partition=p)
    assert producer.flush(30) == 0
    with socket.create_connection((broker.host, broker.port)) as sock:
        sock.settimeout(10)
        everything = [("sessions", p, 0) for p in range(3)]
        # Epoch 0: a full fetch, answered for every partition, opens a session.
        error, session, answered = fetch_v7(sock, 0, 0, everything)
        assert error == 0 and session != 0, (error, session)
        assert {k: v[:2] for k, v in answered.items()} == {("sessions", p): (0, 1) for p in range(3)}
        assert all(size > 0 for _, _, size in answered.values())
        # Epoch 1: the consumer moved on in all three; nothing new: an empty answer.
        error, same, answered = fetch_v7(sock, session, 1, [("sessions", p, 1) for p in range(3)],
                                         max_wait_ms=50)
        assert (error, same, answered) == (0, session, {})
        # Records for partition 1 only: the next fetch names nothing and gets partition 1.
        producer.produce("sessions", value=b"more", partition=1)
        assert producer.flush(30) == 0
        error, _, answered = fetch_v7(sock, session, 2, [], max_wait_ms=2000)
        assert error == 0 and list(answered) == [("sessions", 1)], answered
        assert answered[("sessions", 1)][:2] == (0, 2) and answered[("sessions", 1)][2] > 0
        # Forgotten partitions leave the session: news there is not answered.
        error, _, answered = fetch_v7(sock, session, 3, [("sessions", 1, 2)],
                                      forgotten=[("sessions", 0)], max_wait_ms=50)
        assert (error, answered) == (0, {})
        producer.produce("sessions", value=b"unseen", partition=0)
        assert producer.flush(30) == 0
        error, _, answered = fetch_v7(sock, session, 4, [], max_wait_ms=200)
        assert (error, answered) == (0, {})
        # A stale or skipped epoch, then an unknown id.
        for wrong in (4, 6):
            error, answered_id, answered = fetch_v7(sock, session, wrong, [])
            assert (error, answered_id, answered) == (71, 0, {}), wrong  # INVALID_FETCH_SESSION_EPOCH
        error, answered_id, _ = fetch_v7(sock, session + 1, 1, [])
        assert (error, answered_id) == (70, 0)  # FETCH_SESSION_ID_NOT_FOUND
        # The final epoch closes the session and fetches without one.
        error, answered_id, answered = fetch_v7(sock, session, -1, [("sessions", 0, 1)])
        assert (error, answered_id) == (0, 0) and answered[("sessions", 0)][:2] == (0, 2)
        error, _, _ = fetch_v7(sock, session, 5, [])
        assert error == 70


def test_fetch_responses_sent_with_send_zc_carry_the_same_bytes(tmp_path):
    """With send_zc_threshold_bytes low, every stored batch of a fetch response goes out
    with io_uring SEND_ZC (the rest with sendmsg): consumers of two client libraries read
    back exactly what was produced, in order, across many fetches."""
    from conftest import Broker
    config = tmp_path / "zc.toml"
    config.write_text("send_zc_threshold_bytes = 4096\n")
    broker = Broker(tmp_path / "data", extra_args=["--config", str(config)]).start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("zc", 4, 1)])["zc"].result(30)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                             "batch.size": 65536})
        sent = {p: [] for p in range(4)}
        for i in range(4000):
            value = (b"%06d:" % i) + bytes([i % 251]) * (500 + i % 700)
            producer.produce("zc", value=value, partition=i % 4)
            sent[i % 4].append(value)
        assert producer.flush(30) == 0
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "zc",
                             "enable.auto.commit": False, "fetch.max.bytes": 300000, "message.max.bytes": 200000,
                             "max.partition.fetch.bytes": 100000})
        consumer.assign([TopicPartition("zc", p, 0) for p in range(4)])
        got = {p: [] for p in range(4)}
        deadline = time.time() + 60
        while sum(map(len, got.values())) < 4000 and time.time() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                got[msg.partition()].append(msg.value())
        consumer.close()
        assert got == sent
        kconsumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                                  consumer_timeout_ms=5000, max_partition_fetch_bytes=100000)
        kconsumer.assign([KTopicPartition("zc", 2)])
        kconsumer.seek_to_beginning()
        values = [m.value for m in kconsumer]
        kconsumer.close()
        assert values == sent[2]
    finally:
        broker.stop()
    log = broker.log_path.read_text(errors="replace")
    assert log.count("send_zc on for response buffers of at least 4096 bytes") == 2, "both shards"
