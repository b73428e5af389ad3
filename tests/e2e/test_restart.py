"""Every acknowledged message survives a SIGTERM restart and a SIGKILL restart."""

import signal

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def produce(broker, topic, start, count):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 2, "enable.idempotence": False})
    acked = []

    def on_delivery(err, msg):
        if err is None:
            acked.append((msg.partition(), msg.offset(), msg.value()))

    for i in range(start, start + count):
        producer.produce(topic, key=b"%d" % i, value=b"message-%06d" % i, on_delivery=on_delivery)
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return acked


def consume_all(broker, topic, partitions):
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got, eof = [], set()
    while len(eof) < partitions:
        msg = consumer.poll(10)
        assert msg is not None, "timed out"
        if msg.error():
            eof.add(msg.partition())
            continue
        got.append((msg.partition(), msg.offset(), msg.value()))
    consumer.close()
    return sorted(got)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_acknowledged_messages_survive_restart(broker, sig):
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic("durable", 4, 1)])["durable"].result(30)
    acked = produce(broker, "durable", 0, 5000)
    assert len(acked) == 5000
    code = broker.restart(sig)
    if sig == signal.SIGTERM:
        assert code == 0, broker.log()
    assert consume_all(broker, "durable", 4) == sorted(acked)
    # And the log goes on at the right offsets.
    more = produce(broker, "durable", 5000, 1000)
    assert consume_all(broker, "durable", 4) == sorted(acked + more)
    if sig == signal.SIGTERM:
        assert (broker.data_dir / "topics" / "durable-0" / "clean_shutdown").exists() is False  # consumed on start


def test_topics_of_a_data_dir_from_before_the_metadata_log_are_imported(broker):
    """A data directory written before topics lived in the metadata log has
    them in metadata.toml: the first start imports them (same id, partitions
    and configs), the data stays readable, and the file is set aside."""
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic("legacy", 3, 1, config={"retention.ms": "3600000"})])["legacy"].result(30)
    acked = produce(broker, "legacy", 0, 300)
    assert broker.stop() == 0
    # What the previous version kept: metadata.toml, and no metadata log.
    import shutil
    import uuid
    shutil.rmtree(broker.data_dir / "controller")
    legacy_id = str(uuid.uuid4())
    (broker.data_dir / "metadata.toml").write_text(
        '[[topic]]\nname = "legacy"\nid = "%s"\npartition_shards = [1, 0, 1]\n\n'
        '[topic.configs]\n"retention.ms" = "3600000"\n' % legacy_id)
    broker.start()
    assert consume_all(broker, "legacy", 3) == sorted(acked)
    from confluent_kafka.admin import ConfigResource
    resource = ConfigResource("topic", "legacy")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # kept alive until the future resolves
    configs = admin.describe_configs([resource])[resource].result(30)
    assert len(admin.list_topics(timeout=10).topics["legacy"].partitions) == 3
    assert configs["retention.ms"].value == "3600000"
    assert not (broker.data_dir / "metadata.toml").exists()
    assert (broker.data_dir / "metadata.toml.imported").exists()
    # And a restart serves it from the metadata log alone.
    broker.restart()
    assert consume_all(broker, "legacy", 3) == sorted(acked)
