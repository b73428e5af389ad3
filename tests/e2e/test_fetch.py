"""Fetch semantics: long polls woken by appends, OFFSET_OUT_OF_RANGE, max bytes."""

import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from kafka import KafkaConsumer, TopicPartition as KTopicPartition
from kafka.errors import OffsetOutOfRangeError


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
