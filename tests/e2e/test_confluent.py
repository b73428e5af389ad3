"""confluent-kafka (librdkafka 2.x): admin, keyed produce with headers and lz4,
consume by assignment, checking every byte and offset."""

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create(broker, name, partitions=1, replication=1, config=None):
    client = admin(broker)  # kept alive until the future resolves
    futures = client.create_topics([NewTopic(name, partitions, replication, config=config or {})])
    futures[name].result(timeout=30)


def test_twenty_thousand_keyed_lz4_messages_with_headers(broker):
    create(broker, "orders", partitions=6)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": "lz4", "linger.ms": 5,
                         "acks": "all", "enable.idempotence": False})
    sent = {}
    delivered = []

    def on_delivery(err, msg):
        assert err is None, err
        delivered.append((msg.partition(), msg.offset(), msg.key(), msg.value()))

    for i in range(20_000):
        key = f"customer-{i % 97}".encode()
        value = f"order {i} ".encode() * (1 + i % 5)
        producer.produce("orders", key=key, value=value, headers=[("seq", str(i).encode()), ("kind", b"order")],
                         on_delivery=on_delivery)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert len(delivered) == 20_000
    for partition, offset, key, value in delivered:
        sent[(partition, offset)] = (key, value)
    # Keys hash to a stable partition: every key lives in exactly one.
    by_key = {}
    for partition, _, key, _ in delivered:
        by_key.setdefault(key, set()).add(partition)
    assert all(len(p) == 1 for p in by_key.values())
    assert len({p for p, _, _, _ in delivered}) > 1

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False})
    consumer.assign([TopicPartition("orders", p, 0) for p in range(6)])
    received = {}
    headers_seen = 0
    eof = set()
    while len(received) < 20_000:
        msg = consumer.poll(10)
        assert msg is not None, f"timed out with {len(received)} messages"
        if msg.error():
            assert msg.error().code() == KafkaError._PARTITION_EOF
            continue
        received[(msg.partition(), msg.offset())] = (msg.key(), msg.value())
        headers = dict(msg.headers())
        assert headers["kind"] == b"order"
        headers_seen += 1
    consumer.close()
    assert received == sent
    assert headers_seen == 20_000
    # Offsets of each partition are dense from 0.
    for p in range(6):
        offsets = sorted(o for (q, o) in received if q == p)
        assert offsets == list(range(len(offsets)))


def test_admin_errors(broker):
    create(broker, "dup")
    client = admin(broker)
    with pytest.raises(Exception) as e:
        client.create_topics([NewTopic("dup", 1, 1)])["dup"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    # An existing topic is TOPIC_ALREADY_EXISTS whatever the configs asked for
    # (Kafka Connect re-creates its topics with cleanup.policy=compact at every start).
    with pytest.raises(Exception) as e:
        client.create_topics([NewTopic("dup", 1, 1, config={"cleanup.policy": "compact"})])["dup"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    with pytest.raises(Exception) as e:
        client.create_topics([NewTopic("rf3", 1, 3)])["rf3"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR
    with pytest.raises(Exception) as e:
        client.create_topics([NewTopic("badcfg", 1, 1, config={"retention.ms": "soon"})])["badcfg"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG
    with pytest.raises(Exception) as e:
        client.create_topics([NewTopic("unknowncfg", 1, 1, config={"no.such.config": "1"})])["unknowncfg"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG
    with pytest.raises(Exception) as e:
        client.create_topics([NewTopic("bad name!", 1, 1)])["bad name!"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.TOPIC_EXCEPTION
    # validate_only creates nothing.
    client.create_topics([NewTopic("dry", 3, 1)], validate_only=True)["dry"].result(timeout=30)
    assert "dry" not in client.list_topics(timeout=10).topics


def test_describe_configs_and_create_partitions(broker):
    create(broker, "cfg", partitions=2, config={"retention.ms": "123456", "message.timestamp.type": "LogAppendTime"})
    client = admin(broker)
    resource = ConfigResource(ConfigResource.Type.TOPIC, "cfg")
    configs = client.describe_configs([resource])[resource].result(timeout=30)
    assert configs["retention.ms"].value == "123456"
    assert not configs["retention.ms"].is_default
    assert configs["message.timestamp.type"].value == "LogAppendTime"
    assert configs["segment.bytes"].is_default
    client.create_partitions([NewPartitions("cfg", 5)])["cfg"].result(timeout=30)
    assert len(client.list_topics("cfg", timeout=10).topics["cfg"].partitions) == 5
    with pytest.raises(Exception) as e:
        client.create_partitions([NewPartitions("cfg", 3)])["cfg"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    # The new partitions take data.
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("cfg", value=b"in partition four", partition=4)
    assert producer.flush(30) == 0


def test_log_append_time_is_reported(broker):
    create(broker, "lat", config={"message.timestamp.type": "LogAppendTime"})
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("lat", value=b"x", timestamp=1000)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False})
    consumer.assign([TopicPartition("lat", 0, 0)])
    msg = consumer.poll(10)
    consumer.close()
    kind, ts = msg.timestamp()
    assert kind == 2  # TIMESTAMP_LOG_APPEND_TIME
    assert ts > 1_600_000_000_000


def test_a_transactional_producer_fails_fast(broker):
    """No transactions yet: init_transactions fails at once with a fatal,
    clear error instead of retrying a retriable one until its timeout."""
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "eos-app"})
    started = time.time()
    with pytest.raises(Exception) as e:
        producer.init_transactions(30)
    assert time.time() - started < 10
    error = e.value.args[0]
    assert error.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, error


def test_describe_cluster(broker):
    """AdminClient.describe_cluster as librdkafka does it (through Metadata),
    and DescribeCluster (API 60, what the Java AdminClient sends) on the wire."""
    import socket
    import struct

    from kafka_wire import read_response

    client = admin(broker)
    cluster = client.describe_cluster().result(timeout=30)
    host, port = broker.bootstrap.split(":")
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == [(0, host, int(port))]
    assert cluster.controller.id == 0
    cluster_id = (broker.data_dir / "cluster_id").read_text().strip()
    assert cluster.cluster_id == cluster_id

    def describe(version, body):
        client_id = b"raw"
        header = struct.pack(">hhih", 60, version, 9, len(client_id)) + client_id + b"\0"
        frame = header + body
        with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
            s.sendall(struct.pack(">i", len(frame)) + frame)
            return read_response(s)

    def compact_string(data, at):
        n = data[at] - 1  # every length here fits one varint byte
        return data[at + 1:at + 1 + n].decode(), at + 1 + n

    # v0: include_cluster_authorized_operations = true.
    response = describe(0, b"\1\0")
    assert struct.unpack(">i", response[:4])[0] == 9 and response[4] == 0  # correlation id, no tags
    throttle, error = struct.unpack(">ih", response[5:11])
    assert (throttle, error) == (0, 0)
    assert response[11] == 0  # null error message
    got_cluster_id, at = compact_string(response, 12)
    assert got_cluster_id == cluster_id
    controller, brokers = struct.unpack(">i", response[at:at + 4])[0], response[at + 4] - 1
    assert (controller, brokers) == (0, 1)
    at += 5
    broker_id = struct.unpack(">i", response[at:at + 4])[0]
    got_host, at = compact_string(response, at + 4)
    got_port = struct.unpack(">i", response[at:at + 4])[0]
    assert (broker_id, got_host, got_port) == (0, host, int(port))
    at += 4 + 1 + 1  # null rack, no tags
    operations = struct.unpack(">i", response[at:at + 4])[0]
    for op in (5, 7, 8, 9, 10, 11, 12):  # CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE/ALTER_CONFIGS, IDEMPOTENT_WRITE
        assert operations & (1 << op), op
    # v1 asking a broker for its controllers: MISMATCHED_ENDPOINT_TYPE, as Kafka answers.
    response = describe(1, b"\0\2\0")
    assert struct.unpack(">h", response[9:11])[0] == 114
