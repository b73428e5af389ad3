"""kafka-python 3.x: gzip produce, assign/seek, beginning/end offsets,
offsets_for_times, delete topic."""

import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic


def test_gzip_seek_offsets_and_times(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("kp", num_partitions=2, replication_factor=1)])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type="gzip", acks="all",
                             enable_idempotence=False, linger_ms=0)
    base_ts = int(time.time() * 1000) - 100_000
    for i in range(100):
        producer.send("kp", key=b"k%d" % i, value=b"v%d" % i, partition=i % 2, timestamp_ms=base_ts + i * 1000).get(timeout=30)
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=10_000)
    tps = [TopicPartition("kp", 0), TopicPartition("kp", 1)]
    consumer.assign(tps)
    assert consumer.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
    assert consumer.end_offsets(tps) == {tps[0]: 50, tps[1]: 50}
    consumer.seek(tps[1], 20)
    consumer.seek(tps[0], 45)
    got = {}
    for msg in consumer:
        got[(msg.partition, msg.offset)] = msg.value
        if len(got) == 35:
            break
    assert got[(1, 20)] == b"v41"
    assert got[(0, 49)] == b"v98"
    assert min(o for p, o in got if p == 1) == 20
    # offsets_for_times: record i has timestamp base_ts + i*1000; partition 1 holds odd i.
    found = consumer.offsets_for_times({tps[1]: base_ts + 41_000, tps[0]: base_ts + 10_500})
    assert found[tps[1]].offset == 20 and found[tps[1]].timestamp == base_ts + 41_000
    assert found[tps[0]].offset == 6  # i = 12 is the first even record at or after 10.5 s
    assert consumer.offsets_for_times({tps[0]: base_ts + 10_000_000})[tps[0]] is None
    consumer.close()

    admin.delete_topics(["kp"])
    assert "kp" not in admin.list_topics()
    admin.close()
    partition_dirs = list((broker.data_dir / "topics").glob("kp-*"))
    assert partition_dirs == []


def test_offsets_for_times_is_record_exact_inside_compressed_batches(broker):
    """Batches of hundreds of records in every codec (built by librdkafka):
    the answer is the first record at or after the time, not its batch's start."""
    from confluent_kafka import Producer

    base_ts = int(time.time() * 1000) - 1_000_000
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    for codec in ["gzip", "snappy", "lz4", "zstd"]:
        topic = f"times-{codec}"
        producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec,
                             "linger.ms": 200, "batch.num.messages": 10_000})
        for i in range(500):
            producer.produce(topic, value=b"v%d" % i, partition=0, timestamp=base_ts + i * 10)
        assert producer.flush(30) == 0
        tp = TopicPartition(topic, 0)
        found = consumer.offsets_for_times({tp: base_ts + 2_505})[tp]
        assert (found.offset, found.timestamp) == (251, base_ts + 2_510), codec
        found = consumer.offsets_for_times({tp: base_ts})[tp]
        assert (found.offset, found.timestamp) == (0, base_ts), codec
        assert consumer.offsets_for_times({tp: base_ts + 5_000})[tp] is None
    consumer.close()
