"""Consumer groups against the real broker: assignment, rebalance on leave,
commit and resume, restarts, eviction after a session timeout."""

import signal
import subprocess
import sys
import textwrap
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(broker, name, partitions):
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def produce(broker, topic, count, partitions):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": False})
    for i in range(count):
        producer.produce(topic, value=b"%d" % i, partition=i % partitions)
    assert producer.flush(30) == 0


def consumer(broker, group, **extra):
    config = {"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
              "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
    config.update(extra)
    return Consumer(config)


def wait_for_assignment(consumers, total, timeout=30):
    """Polls every consumer until their assignments cover `total` partitions."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for c in consumers:
            c.poll(0.2)
        assigned = [set(tp.partition for tp in c.assignment()) for c in consumers]
        if sum(len(a) for a in assigned) == total and len(set().union(*assigned)) == total:
            return assigned
    raise AssertionError(f"assignments never settled: {[c.assignment() for c in consumers]}")


import pytest


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_two_consumers_split_then_one_takes_over(broker, strategy):
    create(broker, "shared", 4)
    a = consumer(broker, "split", **{"partition.assignment.strategy": strategy})
    b = consumer(broker, "split", **{"partition.assignment.strategy": strategy})
    a.subscribe(["shared"])
    b.subscribe(["shared"])
    assigned = wait_for_assignment([a, b], 4)
    assert all(assigned), f"both consumers get partitions: {assigned}"
    assert assigned[0].isdisjoint(assigned[1])
    assert assigned[0] | assigned[1] == {0, 1, 2, 3}
    b.close()  # LeaveGroup
    assert wait_for_assignment([a], 4) == [{0, 1, 2, 3}]
    a.close()


def test_commit_close_and_resume_exactly_after(broker):
    create(broker, "resume", 3)
    produce(broker, "resume", 300, 3)
    first = consumer(broker, "resumers")
    first.subscribe(["resume"])
    seen = []
    while len(seen) < 120:
        msg = first.poll(10)
        assert msg is not None
        if not msg.error():
            seen.append((msg.partition(), msg.offset()))
    first.commit(asynchronous=False)
    first.close()
    second = consumer(broker, "resumers")
    second.subscribe(["resume"])
    rest = []
    deadline = time.time() + 30
    while len(seen) + len(rest) < 300 and time.time() < deadline:
        msg = second.poll(1)
        if msg is not None and not msg.error():
            rest.append((msg.partition(), msg.offset()))
    second.close()
    everything = seen + rest
    assert len(everything) == 300, "none re-delivered, none skipped"
    assert len(set(everything)) == 300
    for p in range(3):
        assert sorted(o for q, o in everything if q == p) == list(range(100))


def test_committed_offsets_survive_restarts(broker):
    create(broker, "kept", 2)
    c = consumer(broker, "keepers")
    c.assign([TopicPartition("kept", 0), TopicPartition("kept", 1)])
    c.commit(offsets=[TopicPartition("kept", 0, 11), TopicPartition("kept", 1, 22)], asynchronous=False)
    c.close()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        broker.restart(sig)
        # Commits are records of the internal, compacted __consumer_offsets
        # topic, whose partitions are the offset buckets' directories (a
        # segment file may be preallocated: look for the group's records).
        written = [f for f in (broker.data_dir / "offsets").glob("bucket-*/*.log")
                   if b"keepers" in f.read_bytes()]
        assert written, "no offsets partition holds the commits"
        c = consumer(broker, "keepers")
        committed = c.committed([TopicPartition("kept", 0), TopicPartition("kept", 1)], timeout=20)
        c.close()
        assert [(tp.partition, tp.offset) for tp in committed] == [(0, 11), (1, 22)], sig


def test_a_member_that_dies_is_evicted_after_its_session_timeout(broker):
    create(broker, "evict", 2)
    script = textwrap.dedent(f"""
        import time
        from confluent_kafka import Consumer
        c = Consumer({{"bootstrap.servers": "{broker.bootstrap}", "group.id": "evictors",
                       "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "enable.auto.commit": False}})
        c.subscribe(["evict"])
        while True:
            c.poll(0.2)
            if c.assignment():
                print("assigned", flush=True)
    """)
    doomed = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    survivor = consumer(broker, "evictors")
    survivor.subscribe(["evict"])
    assigned = wait_for_assignment([survivor], 1, timeout=30)
    assert doomed.stdout.readline().strip() == b"assigned"
    assert len(assigned[0]) == 1, "each member holds one partition"
    doomed.send_signal(signal.SIGKILL)  # no LeaveGroup
    doomed.wait()
    start = time.time()
    assert wait_for_assignment([survivor], 2, timeout=40) == [{0, 1}]
    assert time.time() - start > 3, "taken over only after the session timeout"
    survivor.close()


def test_kafka_python_group_consumer_reads_everything_once(broker):
    from kafka import KafkaConsumer
    create(broker, "kpg", 3)
    produce(broker, "kpg", 150, 3)
    c = KafkaConsumer("kpg", bootstrap_servers=broker.bootstrap, group_id="kp-group", auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=15000)
    got = []
    for msg in c:
        got.append((msg.partition, msg.offset))
        if len(got) == 150:
            break
    c.commit()
    c.close()
    assert len(set(got)) == 150


def test_aiokafka_group_consumer_reads_everything_once(broker):
    import asyncio
    from aiokafka import AIOKafkaConsumer
    create(broker, "aiog", 2)
    produce(broker, "aiog", 100, 2)

    async def main():
        c = AIOKafkaConsumer("aiog", bootstrap_servers=broker.bootstrap, group_id="aio-group",
                             auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        got = set()
        try:
            deadline = time.time() + 30
            while len(got) < 100 and time.time() < deadline:
                batch = await c.getmany(timeout_ms=1000)
                for tp, messages in batch.items():
                    got.update((tp.partition, m.offset) for m in messages)
            await c.commit()
        finally:
            await c.stop()
        return got

    assert len(asyncio.run(main())) == 100


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_commits_in_the_revoke_callback_hand_over_without_duplicates_or_gaps(broker, strategy):
    """A member that commits what it processed when its partitions are revoked
    (during the rebalance, as Java, librdkafka and the Python clients do) hands
    them over exactly: the other member starts where it stopped. Kafka accepts
    such a commit while the group prepares the rebalance."""
    topic, total = f"handover-{strategy}", 2000
    create(broker, topic, 4)
    produce(broker, topic, total // 2, 4)
    seen = {}  # (partition, offset) -> consumer name
    duplicates = []
    commit_errors = []

    def make(name):
        c = consumer(broker, f"handover-{strategy}", **{"partition.assignment.strategy": strategy})
        processed = {}  # partition -> next offset to process

        def on_revoke(c, partitions):
            offsets = [TopicPartition(topic, p.partition, processed[p.partition])
                       for p in partitions if p.partition in processed]
            if offsets:
                try:
                    c.commit(offsets=offsets, asynchronous=False)
                except Exception as e:  # noqa: BLE001 - what a user would see
                    commit_errors.append((name, e))
            for p in partitions:
                processed.pop(p.partition, None)

        def on_assign(c, partitions):
            if strategy == "cooperative-sticky":
                c.incremental_assign(partitions)
            else:
                c.assign(partitions)

        c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)

        def poll():
            for message in c.consume(500, 0.05):
                if message.error():
                    continue
                key = (message.partition(), message.offset())
                if key in seen:
                    duplicates.append((name, key, seen[key]))
                seen[key] = name
                processed[message.partition()] = message.offset() + 1
        return c, poll

    a, poll_a = make("a")
    deadline = time.time() + 30
    while len(seen) < total // 2 and time.time() < deadline:
        poll_a()
    # b joins: a's partitions (some or all) are revoked, a commits what it
    # processed in its revoke callback, and b resumes there.
    b, poll_b = make("b")
    deadline = time.time() + 30
    while not (a.assignment() and b.assignment()) and time.time() < deadline:
        poll_a()
        poll_b()
    produce(broker, topic, total // 2, 4)
    deadline = time.time() + 60
    while len(seen) < total and time.time() < deadline:
        poll_a()
        poll_b()
    for _ in range(20):  # nothing more may come
        poll_a()
        poll_b()
    assert commit_errors == []
    assert duplicates == []
    assert len(seen) == total, f"gaps: {total - len(seen)} messages never delivered"
    assert {name for name in seen.values()} == {"a", "b"}, "b took over some partitions"
    a.close()
    b.close()


def test_a_group_whose_record_is_too_large_to_keep_still_settles(broker):
    """A group's metadata record (members, subscriptions, assignments) goes
    to __consumer_offsets before SyncGroup answers. One larger than the
    topic's max.message.bytes (lowered here to 1000 bytes; at the default, a
    group of many members with large subscriptions) is not kept: the group
    still becomes stable and consumes, where Kafka fails every round with
    UNKNOWN_SERVER_ERROR, and the broker says why."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    topic = "t" * 200  # each member's subscription and assignment carry it
    create(broker, topic, 2)
    probe = consumer(broker, "probe")
    deadline = time.time() + 30
    while True:  # the first FindCoordinator creates __consumer_offsets
        try:
            probe.committed([TopicPartition(topic, 0)], timeout=5)
            break
        except Exception:
            assert time.time() < deadline, "no group coordinator"
            time.sleep(0.2)
    probe.close()
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    resource = ConfigResource("topic", "__consumer_offsets", incremental_configs=[
        ConfigEntry("max.message.bytes", "1000", incremental_operation=AlterConfigOpType.SET)])
    client.incremental_alter_configs([resource])[resource].result(timeout=30)
    members = [consumer(broker, "large") for _ in range(2)]
    for member in members:
        member.subscribe([topic])
    assigned = wait_for_assignment(members, 2)
    assert all(assigned), assigned
    assert "larger than max.message.bytes of __consumer_offsets" in broker.log_path.read_text(errors="replace")
    produce(broker, topic, 10, 2)
    seen = []
    deadline = time.time() + 30
    while len(seen) < 10:
        assert time.time() < deadline, f"{len(seen)} of 10 records consumed"
        for member in members:
            msg = member.poll(0.2)
            if msg is not None and msg.error() is None:
                seen.append(int(msg.value()))
    assert sorted(seen) == list(range(10))
    for member in members:
        member.close()
