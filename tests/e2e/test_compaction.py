"""Log compaction with real clients: 100k records over 1000 keys, compacted
in the background while the broker serves; a consumer from offset 0 then
sees exactly the last value of each live key, at its original offset."""

import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

KEYS = 1000
RECORDS = 100_000


def compacting_broker(make_broker, tmp_path):
    config = tmp_path / "sluice.toml"
    config.write_text("log_cleaner_backoff_ms = 200\n")
    return make_broker(extra_args=["--config", str(config)])


def read_from_zero(broker, topic):
    """Every record from offset 0: [(offset, key, value)]."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "reader",
                         "enable.partition.eof": True, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen = []
    while True:
        msg = consumer.poll(10)
        assert msg is not None, f"timed out after {len(seen)} records"
        if msg.error():
            assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
            break
        seen.append((msg.offset(), msg.key(), msg.value()))
    consumer.close()
    return seen


def test_100k_records_over_1000_keys_compact_to_the_last_value_of_each_live_key(make_broker, tmp_path):
    broker = compacting_broker(make_broker, tmp_path)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    config = {"cleanup.policy": "compact", "segment.bytes": str(256 * 1024),
              "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "0", "segment.ms": "500"}
    admin.create_topics([NewTopic("table", 1, 1, config=config)])["table"].result(timeout=30)
    # What Kafka Connect checks before it uses a topic for its configs.
    resource = ConfigResource("topic", "table")
    assert admin.describe_configs([resource])[resource].result(timeout=30)["cleanup.policy"].value == "compact"

    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                         "compression.type": "gzip", "enable.idempotence": True})
    latest = {}
    offsets = {}

    def on_delivery(err, msg):
        assert err is None, err
        offsets[msg.key()] = msg.offset()

    for i in range(RECORDS):
        key = f"key-{(i * 7919) % KEYS:04d}".encode()
        # The last 100 writes delete 100 keys (tombstones).
        value = None if i >= RECORDS - 100 else f"value-{i}".encode()
        latest[key] = value
        producer.produce("table", key=key, value=value, on_delivery=on_delivery)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    # One more record after segment.ms rolls the segment holding the last
    # writes: everything before it becomes compactable.
    time.sleep(0.6)
    producer.produce("table", key=b"roll", value=b"marker", on_delivery=on_delivery)
    assert producer.flush(30) == 0
    live = {k: v for k, v in latest.items() if v is not None}
    assert len(live) == KEYS - 100

    deadline = time.time() + 60
    while True:
        seen = read_from_zero(broker, "table")
        keys = [k for _, k, _ in seen]
        if len(seen) == len(live) + 1 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert len(keys) == len(set(keys)), "a key seen twice"
    got = {k: v for _, k, v in seen if k != b"roll"}
    assert got == live, f"{len(got)} keys seen, {len(live)} expected"
    # Each survivor keeps its original offset; the offsets now have gaps.
    for offset, key, _ in seen:
        assert offsets[key] == offset
    assert seen[-1][1:] == (b"roll", b"marker")
    assert seen[-1][0] == RECORDS

    # The consumer that starts in the middle of a removed range is not stuck.
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "mid",
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition("table", 0, RECORDS // 2)])
    tail = []
    while True:
        msg = consumer.poll(10)
        assert msg is not None
        if msg.error():
            break
        tail.append(msg.offset())
    consumer.close()
    assert tail == [o for o, _, _ in seen if o >= RECORDS // 2]

    # A restart serves the same compacted log.
    broker.restart()
    assert read_from_zero(broker, "table") == seen
