"""The same workload gives the same answers on one shard and on two (requests
split across shards, forwarded, merged, responses in order)."""

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def run(broker):
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic("spread", 8, 1)])["spread"].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 1,
                         "max.in.flight.requests.per.connection": 5, "enable.idempotence": False})
    for i in range(4000):
        producer.produce("spread", value=b"%d" % i, partition=i % 8)
    assert producer.flush(60) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition("spread", p, 0) for p in range(8)])
    got, eof = {}, set()
    while len(eof) < 8:
        msg = consumer.poll(10)
        assert msg is not None
        if msg.error():
            eof.add(msg.partition())
            continue
        got.setdefault(msg.partition(), []).append(int(msg.value()))
    consumer.close()
    return got


def test_one_and_two_shards_agree(make_broker):
    one = run(make_broker(cores=1))
    two = run(make_broker(cores=2))
    expected = {p: list(range(p, 4000, 8)) for p in range(8)}
    # Per partition, messages keep the order they were produced in.
    assert one == expected
    assert two == expected
