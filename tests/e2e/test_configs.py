"""Topic configs as tools see them (confluent-kafka / librdkafka admin):
DescribeConfigs lists Kafka's whole set with sources and synonyms;
IncrementalAlterConfigs and AlterConfigs change what Sluice honours, at once
and durably; what it does not implement is refused by name. DeleteRecords,
min.insync.replicas and the key rule of compacted topics."""

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
)


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create(broker, name, partitions=1, config=None):
    client = admin(broker)
    client.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result(timeout=30)


def describe(broker, name, restype="topic"):
    client = admin(broker)
    resource = ConfigResource(restype, name)
    return client.describe_configs([resource])[resource].result(timeout=30)


def incremental(broker, name, *entries):
    client = admin(broker)
    resource = ConfigResource("topic", name, incremental_configs=list(entries))
    return client.incremental_alter_configs([resource])[resource].result(timeout=30)


def produce(broker, topic, records, **config):
    """Sends (key, value) pairs; returns the delivery errors (None when delivered)."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 2, **config})
    errors = []
    for key, value in records:
        producer.produce(topic, key=key, value=value,
                         on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(30) == 0
    return errors


KAFKA_TOPIC_CONFIGS = {
    "cleanup.policy", "compression.type", "delete.retention.ms", "file.delete.delay.ms",
    "flush.messages", "flush.ms", "follower.replication.throttled.replicas",
    "index.interval.bytes", "leader.replication.throttled.replicas", "local.retention.bytes",
    "local.retention.ms", "max.compaction.lag.ms", "max.message.bytes",
    "message.downconversion.enable", "message.format.version", "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms", "message.timestamp.difference.max.ms",
    "message.timestamp.type", "min.cleanable.dirty.ratio", "min.compaction.lag.ms",
    "min.insync.replicas", "preallocate", "remote.storage.enable", "retention.bytes",
    "retention.ms", "segment.bytes", "segment.index.bytes", "segment.jitter.ms", "segment.ms",
    "unclean.leader.election.enable",
}


def test_describe_configs_reports_kafkas_topic_set_with_sources(broker):
    # What Kafka Connect checks before it uses its config topic.
    create(broker, "connect-configs", config={"cleanup.policy": "compact", "retention.ms": "1000"})
    configs = describe(broker, "connect-configs")
    assert set(configs) == KAFKA_TOPIC_CONFIGS
    policy = configs["cleanup.policy"]
    assert policy.value == "compact"
    assert policy.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert not policy.is_default
    assert [(s.name, s.source) for s in policy.synonyms.values()] == [
        ("cleanup.policy", ConfigSource.DYNAMIC_TOPIC_CONFIG.value),
        ("log.cleanup.policy", ConfigSource.DEFAULT_CONFIG.value),
    ]
    assert configs["retention.ms"].value == "1000"
    for name, default in [("delete.retention.ms", "86400000"), ("min.cleanable.dirty.ratio", "0.5"),
                          ("min.insync.replicas", "1"), ("compression.type", "producer"),
                          ("segment.bytes", "1073741824"), ("message.timestamp.type", "CreateTime"),
                          ("unclean.leader.election.enable", "false")]:
        assert configs[name].value == default, name
        assert configs[name].is_default, name
        assert configs[name].source == ConfigSource.DEFAULT_CONFIG.value, name
        assert not configs[name].is_read_only, name

    broker_configs = describe(broker, "0", restype="broker")
    assert broker_configs["log.cleanup.policy"].value == "delete"
    assert broker_configs["log.retention.ms"].value == "604800000"
    assert broker_configs["message.max.bytes"].value == "1048588"
    assert broker_configs["broker.id"].value == "0"
    assert broker_configs["advertised.listeners"].value == f"PLAINTEXT://{broker.bootstrap}"
    assert all(c.is_read_only for c in broker_configs.values())


def test_unknown_and_unimplemented_configs_are_refused_by_name(broker):
    client = admin(broker)
    for config, named in [({"no.such.config": "1"}, "no.such.config"),
                          ({"remote.storage.enable": "true"}, "remote.storage.enable"),
                          ({"cleanup.policy": "shred"}, "cleanup.policy"),
                          ({"min.cleanable.dirty.ratio": "2"}, "min.cleanable.dirty.ratio")]:
        future = client.create_topics([NewTopic("refused", 1, 1, config=config)])["refused"]
        with pytest.raises(KafkaException) as refused:
            future.result(timeout=30)
        error = refused.value.args[0]
        assert error.code() == KafkaError.INVALID_CONFIG, error
        assert named in error.str()
    # Unimplemented configs may be given their default (tools often send them).
    create(broker, "defaults", config={"preallocate": "false", "compression.type": "producer"})

    create(broker, "altered")
    with pytest.raises(KafkaException) as refused:
        incremental(broker, "altered", ConfigEntry("flush.messages", "1",
                                                   incremental_operation=AlterConfigOpType.SET))
    assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert "flush.messages" in refused.value.args[0].str()
    # Nothing was applied.
    assert describe(broker, "altered")["flush.messages"].is_default


def test_incremental_alter_configs_apply_at_once_and_survive_a_restart(broker):
    create(broker, "live", config={"retention.ms": "3600000"})
    assert produce(broker, "live", [(b"k", b"x" * 5000)]) == [None]

    incremental(broker, "live",
                ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET),
                ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
                ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE))
    configs = describe(broker, "live")
    assert configs["max.message.bytes"].value == "2000"
    assert configs["cleanup.policy"].value == "delete,compact"
    assert configs["retention.ms"].is_default
    # Applied to the open partition at once: the same record is now too large.
    errors = produce(broker, "live", [(b"k", b"x" * 5000)])
    assert errors[0] is not None and errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errors

    incremental(broker, "live",
                ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SUBTRACT))
    broker.restart()
    configs = describe(broker, "live")
    assert configs["max.message.bytes"].value == "2000"
    assert configs["cleanup.policy"].value == "compact"
    assert produce(broker, "live", [(b"k", b"x" * 1000)]) == [None]


def test_alter_configs_replaces_the_whole_set(broker):
    create(broker, "replaced", config={"retention.ms": "1000", "segment.bytes": "1048576"})
    client = admin(broker)
    resource = ConfigResource("topic", "replaced", set_config={"max.message.bytes": "4096"})
    client.alter_configs([resource])[resource].result(timeout=30)
    configs = describe(broker, "replaced")
    assert configs["max.message.bytes"].value == "4096"
    assert not configs["max.message.bytes"].is_default
    assert configs["retention.ms"].is_default
    assert configs["segment.bytes"].is_default


def test_delete_records_moves_the_log_start_durably(broker):
    create(broker, "purged", partitions=2)
    assert produce(broker, "purged", [(str(i).encode(), f"v{i}".encode()) for i in range(100)],
                   partitioner="consistent_random") == [None] * 100
    client = admin(broker)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g"})
    _, high = consumer.get_watermark_offsets(TopicPartition("purged", 0), timeout=10)
    assert high > 40
    futures = client.delete_records([TopicPartition("purged", 0, 40), TopicPartition("purged", 1, -1)])
    results = {tp.partition: f.result(timeout=30) for tp, f in futures.items()}
    assert results[0].low_watermark == 40
    _, high1 = consumer.get_watermark_offsets(TopicPartition("purged", 1), timeout=10)
    assert results[1].low_watermark == high1
    assert consumer.get_watermark_offsets(TopicPartition("purged", 0), timeout=10) == (40, high)
    consumer.close()

    broker.restart()
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g2",
                         "auto.offset.reset": "earliest", "enable.partition.eof": True})
    assert consumer.get_watermark_offsets(TopicPartition("purged", 0), timeout=10) == (40, high)
    consumer.assign([TopicPartition("purged", 0, 0)])  # below the start: reset to earliest
    offsets = []
    while True:
        msg = consumer.poll(10)
        assert msg is not None
        if msg.error():
            assert msg.error().code() == KafkaError._PARTITION_EOF
            break
        offsets.append(msg.offset())
    consumer.close()
    assert offsets == list(range(40, high))

    # Past the high watermark: OFFSET_OUT_OF_RANGE for that partition.
    futures = client.delete_records([TopicPartition("purged", 0, high + 5)])
    with pytest.raises(KafkaException) as refused:
        list(futures.values())[0].result(timeout=30)
    assert refused.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE


def test_min_insync_replicas_above_one_refuses_acks_all(broker):
    create(broker, "durable", config={"min.insync.replicas": "2"})
    errors = produce(broker, "durable", [(b"k", b"v")], acks="all", **{"message.send.max.retries": 0})
    assert errors[0] is not None and errors[0].code() == KafkaError.NOT_ENOUGH_REPLICAS, errors
    assert produce(broker, "durable", [(b"k", b"v")], acks="1") == [None]


def test_a_compacted_topic_refuses_records_without_a_key(broker):
    create(broker, "keyed", config={"cleanup.policy": "compact"})
    errors = produce(broker, "keyed", [(None, b"no key")], **{"message.send.max.retries": 0})
    assert errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD, errors
    assert produce(broker, "keyed", [(b"k", b"with key")]) == [None]


def test_the_topics_kafka_streams_creates_and_purges(broker):
    """What a Kafka Streams app asks at its first rebalance: internal topics with
    its configs (the first run creates them, a restart finds them existing), and
    DeleteRecords on a repartition topic once its records are consumed."""
    streams_topics = {
        "app-KSTREAM-AGGREGATE-STATE-STORE-0000000003-repartition": {
            "cleanup.policy": "delete", "segment.bytes": "52428800", "retention.ms": "-1",
            "message.timestamp.type": "CreateTime", "max.message.bytes": "1048588"},
        "app-KSTREAM-AGGREGATE-STATE-STORE-0000000003-changelog": {
            "cleanup.policy": "compact", "message.timestamp.type": "CreateTime"},
        "app-windowed-changelog": {
            "cleanup.policy": "compact,delete", "retention.ms": "172800000",
            "message.timestamp.type": "CreateTime"},
    }
    client = admin(broker)
    for run in ("first start", "restart"):
        futures = client.create_topics([NewTopic(name, 2, 1, config=config)
                                        for name, config in streams_topics.items()])
        for name, future in futures.items():
            if run == "first start":
                future.result(timeout=30)
            else:
                with pytest.raises(KafkaException) as exists:
                    future.result(timeout=30)
                assert exists.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, name
    for name, config in streams_topics.items():
        described = describe(broker, name)
        for key, value in config.items():
            assert described[key].value == value, (name, key)
    repartition = next(iter(streams_topics))
    assert produce(broker, repartition, [(b"w", b"1")] * 50, partitioner="murmur2") == [None] * 50
    futures = client.delete_records([TopicPartition(repartition, p, -1) for p in range(2)])
    assert sum(f.result(timeout=30).low_watermark for f in futures.values()) == 50
