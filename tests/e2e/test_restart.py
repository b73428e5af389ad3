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
