"""The idempotent producer: clients with idempotence on, and a produce request
sent twice at the wire level is stored once with the original offsets."""

import socket
import struct
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_wire import crc32c, read_response, request, zigzag


def read_all(broker, topic, partitions=1):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "readers", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got, eof = [], set()
    while len(eof) < partitions:
        msg = c.poll(10)
        assert msg is not None
        if msg.error():
            eof.add(msg.partition())
            continue
        got.append((msg.partition(), msg.offset(), msg.value()))
    c.close()
    return got


def test_confluent_idempotent_producer(broker):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "acks": "all",
                         "max.in.flight.requests.per.connection": 5, "linger.ms": 1})
    for i in range(5000):
        producer.produce("idem", value=b"%d" % i)
    assert producer.flush(60) == 0
    got = read_all(broker, "idem")
    assert [v for _, _, v in got] == [b"%d" % i for i in range(5000)]


def test_kafka_python_default_idempotence(broker):
    from kafka import KafkaProducer
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)  # 3.x: idempotence on by default
    assert producer.config["enable_idempotence"]
    futures = [producer.send("kp-idem", value=b"m%d" % i) for i in range(500)]
    offsets = [f.get(timeout=30).offset for f in futures]
    producer.close()
    assert offsets == list(range(500))
    assert [v for _, _, v in read_all(broker, "kp-idem")] == [b"m%d" % i for i in range(500)]


def idempotent_batch(producer_id, epoch, sequence, value):
    record_body = bytes([0]) + zigzag(0) + zigzag(0) + zigzag(-1) + zigzag(len(value)) + value + zigzag(0)
    records = zigzag(len(record_body)) + record_body
    after_crc = struct.pack(">hiqqqhii", 0, 0, 1000, 1000, producer_id, epoch, sequence, 1) + records
    header = struct.pack(">qiibI", 0, 4 + 1 + 4 + len(after_crc), 0, 2, crc32c(after_crc))
    return header + after_crc


import signal

import pytest


@pytest.mark.parametrize("restart", [None, signal.SIGTERM, signal.SIGKILL], ids=["live", "after-sigterm", "after-sigkill"])
def test_the_same_produce_request_twice_is_stored_once(broker, restart):
    topic = b"wire-idem"
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        # InitProducerId v0 (transactional id null, timeout), then a produce sent twice.
        s.sendall(request(22, 0, 1, body=struct.pack(">hi", -1, 60000)))
        response = read_response(s)
        _, _, error, producer_id, epoch = struct.unpack(">iihqh", response[:20])
        assert error == 0 and producer_id >= 0 and epoch == 0
        # Metadata to create the topic.
        s.sendall(request(3, 1, 2, body=struct.pack(">ih", 1, len(topic)) + topic))
        read_response(s)
        def produce_body(batch):
            return (struct.pack(">h", -1) + struct.pack(">hi", -1, 5000) + struct.pack(">i", 1)
                    + struct.pack(">h", len(topic)) + topic + struct.pack(">i", 1)
                    + struct.pack(">i", 0) + struct.pack(">i", len(batch)) + batch)
        batch = idempotent_batch(producer_id, epoch, 0, b"exactly once")
        body = produce_body(batch)
        def send(sock, correlation):
            sock.sendall(request(0, 3, correlation, body=body))
            response = read_response(sock)
            at = 4 + 4 + 2 + len(topic) + 4 + 4
            return struct.unpack(">hq", response[at:at + 10])
        answers = [send(s, 3)]
        if restart is not None:
            broker.restart(restart)
            s.close()
            s = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
        answers.append(send(s, 4))
        assert answers == [(0, 0), (0, 0)], "the retry gets the original offset"
        # A gap in the sequence is refused.
        gap = idempotent_batch(producer_id, epoch, 5, b"gap")
        body_gap = produce_body(gap)
        s.sendall(request(0, 3, 5, body=body_gap))
        response = read_response(s)
        at = 4 + 4 + 2 + len(topic) + 4 + 4
        assert struct.unpack(">h", response[at:at + 2])[0] == 45  # OUT_OF_ORDER_SEQUENCE_NUMBER
    assert [v for _, _, v in read_all(broker, "wire-idem")] == [b"exactly once"]


def test_producer_snapshots_are_written_while_serving_and_survive_topic_deletion(make_broker, tmp_path):
    # Maintenance writes each partition's producer snapshot off the shard thread;
    # with a 200 ms period, deleting and recreating a topic races with it.
    config = tmp_path / "sluice.toml"
    config.write_text("retention_check_ms = 200\n")
    broker = make_broker(extra_args=["--config", str(config)])
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for round_ in range(3):
        admin.create_topics([NewTopic("snap", num_partitions=4, replication_factor=1)])["snap"].result(30)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        for p in range(4):
            producer.produce("snap", value=b"round %d" % round_, partition=p)
        assert producer.flush(30) == 0
        snapshots = [broker.data_dir / "topics" / f"snap-{p}" / "producers.snapshot" for p in range(4)]
        deadline = time.time() + 10
        while not all(s.exists() for s in snapshots) and time.time() < deadline:
            time.sleep(0.05)
        assert all(s.exists() for s in snapshots), "maintenance wrote no producer snapshot"
        assert sorted(v for _, _, v in read_all(broker, "snap", 4)) == [b"round %d" % round_] * 4
        admin.delete_topics(["snap"])["snap"].result(30)
        # Deletion is done on every shard before the answer; recreate at once.
    log = broker.log()
    assert "removing a deleted partition failed" not in log
    assert "writing producer snapshot failed" not in log
