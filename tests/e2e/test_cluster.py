"""A 3-node cluster on this host: metadata agreed through the controllers'
Raft log, partitions spread over the nodes, clients routed to leaders and
group coordinators on every node, the controller leader killed, a node
restarted. Each node runs on one core (the machine's CPUs shared round-robin)."""

import os
import re
import signal
import socket
import struct
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition

from conftest import Broker, free_port
from kafka_wire import fetch_v9_error, offset_for_leader_epoch_v2, read_response, request

SESSION_TIMEOUT_MS = 2000


def three_nodes(tmp_path):
    """Three nodes, all controller voters, not started."""
    internal = {n: free_port() for n in (1, 2, 3)}
    controllers = ",".join(f"{n}@127.0.0.1:{p}" for n, p in internal.items())
    # A silent node is fenced after 2 s here (Kafka's default: 9 s).
    settings = tmp_path / "cluster.toml"
    settings.write_text(f"broker_session_timeout_ms = {SESSION_TIMEOUT_MS}\n")
    # One core each, spread over the machine's CPUs ("C-C": a CPU list).
    cpus = os.cpu_count() or 1
    return {n: Broker(tmp_path / f"node-{n}", cores=f"{(n - 1) % cpus}-{(n - 1) % cpus}",
                      extra_args=["--config", str(settings), "--node-id", str(n), "--controllers", controllers])
            for n in (1, 2, 3)}


@pytest.fixture
def cluster(tmp_path):
    nodes = three_nodes(tmp_path)
    for node in nodes.values():
        node.launch()
    for node in nodes.values():
        node.wait_ready()
    yield nodes
    for node in nodes.values():
        if node.proc is not None:
            node.stop(signal.SIGKILL)


def test_the_offsets_topic_waits_for_every_voter_before_it_is_created(tmp_path):
    """A group's first FindCoordinator creates __consumer_offsets. With two
    of three voters up (a quorum: topics can be made), it must not be made
    with two replicas for good: coordinators are not available until the
    third node is up, and then every bucket has three replicas."""
    nodes = three_nodes(tmp_path)
    try:
        for n in (1, 2):
            nodes[n].launch()
        for n in (1, 2):
            nodes[n].wait_ready()
        create_topic(nodes[1], "early", 1)  # the two nodes form a working cluster
        consumer = Consumer({"bootstrap.servers": nodes[1].bootstrap, "group.id": "early-group",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe(["early"])
        deadline = time.time() + 4
        while time.time() < deadline:
            consumer.poll(0.2)
        assert consumer.assignment() == [], "a coordinator before every voter was up"
        assert "__consumer_offsets" not in admin(nodes[1]).list_topics(timeout=10).topics
        nodes[3].start()
        deadline = time.time() + 30
        while not consumer.assignment():
            assert time.time() < deadline, "no assignment once the third node is up"
            consumer.poll(0.2)
        consumer.close()
        offsets = admin(nodes[1]).list_topics("__consumer_offsets", timeout=10).topics["__consumer_offsets"]
        assert len(offsets.partitions) == 16
        assert all(sorted(p.replicas) == [1, 2, 3] for p in offsets.partitions.values()), \
            {p.id: p.replicas for p in offsets.partitions.values()}
    finally:
        for node in nodes.values():
            if node.proc is not None:
                node.stop(signal.SIGKILL)


def bucket_of(group):
    """A group's offsets bucket (FNV-1a 64 of the id, mod 16): the partition
    of __consumer_offsets whose leader coordinates the group."""
    h = 0xcbf29ce484222325
    for b in group.encode():
        h = ((h ^ b) * 0x100000001b3) % (1 << 64)
    return h % 16


def coordinator_of(node, group):
    """The node leading the group's offsets bucket, as `node` reports it."""
    return leaders(node, "__consumer_offsets")[bucket_of(group)]


def controller_leader(nodes):
    """The metadata log's leader as the nodes last logged it."""
    latest = None
    for node in nodes:
        for line in node.log_path.read_text(errors="replace").splitlines():
            plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
            found = re.search(r"controller leader leader=(-?\d+)", plain)
            if found and (latest is None or plain.split()[0] > latest[0]):
                latest = (plain.split()[0], int(found.group(1)))
    assert latest is not None, "no node logged a controller leader"
    return latest[1]


def poll_records(consumer, count):
    """The next `count` records (partition, offset) a subscribed consumer
    polls, each within 10 s."""
    seen = []
    while len(seen) < count:
        msg = consumer.poll(10)
        assert msg is not None, f"nothing more after {len(seen)} records"
        if not msg.error():
            seen.append((msg.partition(), msg.offset()))
    return seen


def read_to_end(node, topic, starts, group="reader"):
    """Every record from `starts` (partition → offset) to the end, through `node`."""
    consumer = Consumer({"bootstrap.servers": node.bootstrap, "group.id": group,
                         "enable.partition.eof": True, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
    got, eof = [], set()
    deadline = time.time() + 30
    while len(eof) < len(starts):
        assert time.time() < deadline, f"partitions at their end: {sorted(eof)}"
        msg = consumer.poll(5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                eof.add(msg.partition())
            continue
        got.append((msg.partition(), msg.offset(), msg.value()))
    consumer.close()
    return got


def admin(node):
    return AdminClient({"bootstrap.servers": node.bootstrap})


def leaders(node, topic):
    """partition → leader node id, as `node` describes it."""
    client = admin(node)
    metadata = client.list_topics(topic, timeout=10)
    return {p.id: p.leader for p in metadata.topics[topic].partitions.values()}


def create_topic(node, name, partitions, replication_factor=1):
    client = admin(node)
    client.create_topics([NewTopic(name, partitions, replication_factor)])[name].result(timeout=30)


def produce(node, topic, count, start=0):
    producer = Producer({"bootstrap.servers": node.bootstrap, "linger.ms": 5, "acks": "all"})
    acked = []

    def on_delivery(err, msg):
        assert err is None, err
        acked.append((msg.partition(), msg.offset(), msg.value()))

    for i in range(start, start + count):
        producer.produce(topic, key=b"k%d" % i, value=b"v%06d" % i, on_delivery=on_delivery)
    assert producer.flush(60) == 0
    return acked


def test_three_nodes_share_metadata_partitions_and_groups(cluster):
    nodes = cluster
    # A topic created through node 2 is visible from every node within a second.
    create_topic(nodes[2], "spread", 12)
    deadline = time.time() + 1.0
    seen = {}
    while time.time() < deadline and len(seen) < 3:
        for n, node in nodes.items():
            found = admin(node).list_topics(timeout=5).topics.get("spread")
            if found is not None and len(found.partitions) == 12:
                seen[n] = leaders(node, "spread")
    assert len(seen) == 3, f"visible from nodes {sorted(seen)} only"
    assert seen[1] == seen[2] == seen[3]
    assert set(seen[1].values()) == {1, 2, 3}, seen[1]
    assert sorted(list(seen[1].values()).count(n) for n in (1, 2, 3)) == [4, 4, 4]
    # Every node lists the three brokers and reports the same cluster id.
    ids = set()
    for node in nodes.values():
        metadata = admin(node).list_topics(timeout=5)
        assert sorted(metadata.brokers) == [1, 2, 3]
        ids.add(metadata.cluster_id)
    assert len(ids) == 1 and None not in ids, ids

    # confluent-kafka produces through node 1 to every partition; kafka-python
    # reads everything back through node 3.
    acked = produce(nodes[1], "spread", 1200)
    assert {p for p, _, _ in acked} == set(range(12))
    consumer = KafkaConsumer(bootstrap_servers=nodes[3].bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=10_000)
    consumer.assign([KTopicPartition("spread", p) for p in range(12)])
    consumer.seek_to_beginning()
    got = []
    while len(got) < 1200:
        batch = consumer.poll(timeout_ms=5000)
        assert batch, f"timed out after {len(got)} records"
        for records in batch.values():
            got.extend((r.partition, r.offset, r.value) for r in records)
    consumer.close()
    assert sorted(got) == sorted(acked)

    # And the other way round: kafka-python produces through node 2 to every
    # partition, confluent-kafka reads those back through node 1.
    producer = KafkaProducer(bootstrap_servers=nodes[2].bootstrap, acks="all")
    futures = [producer.send("spread", value=b"kp%04d" % i, partition=i % 12) for i in range(240)]
    sent = {(f.get(timeout=30).partition, f.get(timeout=30).offset) for f in futures}
    producer.close()
    assert {p for p, _ in sent} == set(range(12))
    first = {p: min(o for q, o in sent if q == p) for p in range(12)}
    assert {(p, o) for p, o, _ in read_to_end(nodes[1], "spread", first)} == sent

    # Groups coordinated on different nodes commit, and a new member resumes there.
    groups = [f"g{i}" for i in range(12)]
    for group in groups:
        c = Consumer({"bootstrap.servers": nodes[1].bootstrap, "group.id": group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe(["spread"])
        poll_records(c, 100)
        c.commit(asynchronous=False)
        committed = c.committed([TopicPartition("spread", p) for p in range(12)], timeout=10)
        assert sum(max(tp.offset, 0) for tp in committed) >= 100
        c.close()
        resumed = Consumer({"bootstrap.servers": nodes[2].bootstrap, "group.id": group,
                            "enable.auto.commit": False})
        again = resumed.committed([TopicPartition("spread", p) for p in range(12)], timeout=10)
        assert [tp.offset for tp in again] == [tp.offset for tp in committed]
        resumed.close()
    # The first FindCoordinator created __consumer_offsets: 16 buckets, three
    # replicas each, led by every node; these groups are coordinated on all three.
    offsets_topic = admin(nodes[1]).list_topics(timeout=5).topics["__consumer_offsets"]
    assert len(offsets_topic.partitions) == 16
    assert all(len(p.replicas) == 3 for p in offsets_topic.partitions.values())
    assert {coordinator_of(nodes[1], g) for g in groups} == {1, 2, 3}


def test_killing_the_controller_leader_keeps_the_others_serving_and_it_rejoins(cluster):
    nodes = cluster
    create_topic(nodes[1], "survive", 6)
    acked = produce(nodes[1], "survive", 600)
    layout = leaders(nodes[1], "survive")
    # The node that leads the metadata log (each node logs who does) is killed.
    victim = controller_leader(nodes.values())
    assert victim in (1, 2, 3)
    others = [n for n in (1, 2, 3) if n != victim]
    assert nodes[victim].stop(signal.SIGKILL) == -signal.SIGKILL
    # Topics can be created again within a few seconds (a new controller
    # leader if node 1 led), through a surviving node.
    started = time.time()
    while True:
        try:
            create_topic(nodes[others[0]], "after", 3)
            break
        except Exception:
            assert time.time() - started < 15, "no topic creation within 15 s of the kill"
            time.sleep(0.2)
    print(f"topic creation worked again {time.time() - started:.2f} s after killing the controller leader")
    assert controller_leader(nodes[n] for n in others) in others
    # Once fenced (the session timeout), the dead node leads nothing and
    # Metadata no longer lists it; new partitions go to the live nodes only.
    deadline = time.time() + SESSION_TIMEOUT_MS / 1000 + 10
    while sorted(admin(nodes[others[0]]).list_topics(timeout=5).brokers) != others:
        assert time.time() < deadline, "the dead node was not fenced"
        time.sleep(0.2)
    fenced = leaders(nodes[others[1]], "survive")
    assert all(fenced[p] == -1 for p, leader in layout.items() if leader == victim), fenced
    create_topic(nodes[others[1]], "placed", 6)
    assert set(leaders(nodes[others[0]], "placed").values()) == set(others)
    # Partitions led by the survivors stay readable and writable.
    survivors = [p for p, leader in layout.items() if leader != victim]
    assert survivors
    producer = Producer({"bootstrap.servers": nodes[others[0]].bootstrap, "linger.ms": 1,
                         "message.timeout.ms": 10_000})
    errors = []
    for p in survivors:
        producer.produce("survive", partition=p, value=b"after-kill",
                         on_delivery=lambda err, msg: errors.append(err))
    producer.flush(30)
    assert errors == [None] * len(survivors)

    # The node restarts, rejoins, and serves its partitions again: nothing lost.
    nodes[victim].start()
    got = read_to_end(nodes[others[1]], "survive", {p: 0 for p in range(6)})
    before = [r for r in got if r[2] != b"after-kill"]
    assert sorted(before) == sorted(acked)
    assert len(got) - len(before) == len(survivors)


def init_producer_id(node):
    """InitProducerId v0 (no transactional id) sent to `node`: the id."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(request(22, 0, 7, struct.pack(">hi", -1, 60000)))
        correlation, _throttle, error, producer_id, epoch = struct.unpack(">iihqh", read_response(s))
    assert (correlation, error, epoch) == (7, 0, 0)
    return producer_id


def test_committed_offsets_survive_the_loss_of_their_coordinator(cluster):
    """A group's committed offsets live in a replicated partition of
    __consumer_offsets: kill -9 the node coordinating the group, and another
    node coordinates it with the same offsets; a new member resumes there."""
    nodes = cluster
    create_topic(nodes[1], "orders", 3, replication_factor=3)
    acked = produce(nodes[1], "orders", 300)
    group = "survivor"
    first = Consumer({"bootstrap.servers": nodes[1].bootstrap, "group.id": group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
    first.subscribe(["orders"])
    poll_records(first, 150)
    first.commit(asynchronous=False)
    partitions = [TopicPartition("orders", p) for p in range(3)]
    committed = [tp.offset for tp in first.committed(partitions, timeout=10)]
    first.close()
    assert sum(max(o, 0) for o in committed) >= 150
    victim = coordinator_of(nodes[1], group)
    survivors = [n for n in (1, 2, 3) if n != victim]
    nodes[victim].stop(signal.SIGKILL)
    # Another node takes the bucket over once the victim is fenced.
    deadline = time.time() + 20
    while coordinator_of(nodes[survivors[0]], group) == victim:
        assert time.time() < deadline, "no new coordinator for the group"
        time.sleep(0.2)
    resumed = Consumer({"bootstrap.servers": nodes[survivors[0]].bootstrap, "group.id": group,
                        "auto.offset.reset": "earliest", "enable.auto.commit": False})
    again = None
    while again is None:
        assert time.time() < deadline + 20, "committed offsets not served by the new coordinator"
        try:
            again = [tp.offset for tp in resumed.committed(partitions, timeout=5)]
        except KafkaException:
            time.sleep(0.2)
    assert again == committed
    # A member of the group resumes from the committed offsets, not from the start.
    resumed.subscribe(["orders"])
    starts = [max(o, 0) for o in committed]  # a partition never committed: from the start
    seen = poll_records(resumed, len(acked) - sum(starts))
    resumed.close()
    assert sorted(seen) == sorted((p, o) for p, o, _ in acked if o >= starts[p])
    nodes[victim].start()


@pytest.mark.parametrize("membership", ["dynamic", "static"])
def test_a_stable_group_survives_its_coordinators_loss_and_return_without_a_rebalance(cluster, membership):
    """A group's metadata (members, generation, assignments) is stored in
    its offsets bucket like its offsets: kill -9 the coordinator of a stable
    group of two consumers, and the node that takes the bucket over knows
    both members, so their heartbeats go on with the same generation and
    assignments (no revoke, no assign, the same member ids in
    DescribeGroups); restart it, it takes the bucket back, and again no
    rebalance. Messages produced meanwhile are all consumed. Static members
    (group.instance.id) keep their place the same way."""
    nodes = cluster
    create_topic(nodes[1], "steady", 4, replication_factor=3)
    group = "steady-group"
    everywhere = ",".join(n.bootstrap for n in nodes.values())
    events = []  # (consumer, "assign" | "revoke" | "lost", partitions)
    consumers = []
    for name in ("a", "b"):
        config = {"bootstrap.servers": everywhere, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 15000, "heartbeat.interval.ms": 300}
        if membership == "static":
            config["group.instance.id"] = f"instance-{name}"
        consumer = Consumer(config)

        def on_assign(c, partitions, name=name):
            events.append((name, "assign", sorted(p.partition for p in partitions)))

        def on_revoke(c, partitions, name=name):
            events.append((name, "revoke", sorted(p.partition for p in partitions)))

        def on_lost(c, partitions, name=name):
            events.append((name, "lost", sorted(p.partition for p in partitions)))

        consumer.subscribe(["steady"], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        consumers.append(consumer)
    seen = []

    def poll_for(seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            for consumer in consumers:
                msg = consumer.poll(0.05)
                if msg is not None and msg.error() is None:
                    seen.append((msg.partition(), msg.offset()))

    def described(node):
        """(state, member id → assigned partitions) as `node`'s AdminClient describes the group."""
        client = admin(node)  # kept alive until the answer is in
        answer = client.describe_consumer_groups([group])[group].result(timeout=10)
        return answer.state.name, {(m.member_id, m.group_instance_id):
                                   sorted(tp.partition for tp in m.assignment.topic_partitions)
                                   for m in answer.members}

    # Both members stable, each with two partitions.
    deadline = time.time() + 30
    while not (len(consumers[0].assignment()) == 2 and len(consumers[1].assignment()) == 2):
        assert time.time() < deadline, f"no stable assignment of 4 partitions to 2 members: {events}"
        poll_for(0.5)
    poll_for(1)
    stable = described(nodes[1])
    assert stable[0] == "STABLE" and len(stable[1]) == 2, stable
    instances = {"instance-a", "instance-b"} if membership == "static" else {None}
    assert {instance for _, instance in stable[1]} == instances, stable
    settled = len(events)
    acked = produce(nodes[1], "steady", 200)

    victim = coordinator_of(nodes[1], group)
    survivors = [n for n in (1, 2, 3) if n != victim]
    nodes[victim].stop(signal.SIGKILL)
    deadline = time.time() + 20
    while coordinator_of(nodes[survivors[0]], group) in (victim, -1):
        assert time.time() < deadline, "no new coordinator for the group"
        poll_for(0.2)
    acked += produce(nodes[survivors[0]], "steady", 200, start=200)
    poll_for(5)  # heartbeats to the new coordinator, and consumption
    assert described(nodes[survivors[0]]) == stable, "the new coordinator knows the members and assignments"
    assert events[settled:] == [], f"a rebalance after the coordinator's loss: {events[settled:]}"

    nodes[victim].start()
    deadline = time.time() + 30
    while coordinator_of(nodes[survivors[0]], group) != victim:
        assert time.time() < deadline, "the restarted node did not take its offsets bucket back"
        poll_for(0.2)
    acked += produce(nodes[survivors[0]], "steady", 200, start=400)
    poll_for(5)
    assert described(nodes[victim]) == stable
    assert events[settled:] == [], f"a rebalance after the coordinator's return: {events[settled:]}"
    deadline = time.time() + 20
    while len(set(seen)) < len(acked):
        assert time.time() < deadline, f"{len(set(seen))} of {len(acked)} records consumed"
        poll_for(0.5)
    assert sorted(set(seen)) == sorted((p, o) for p, o, _ in acked)
    for consumer in consumers:
        consumer.close()


def partition_state(node, topic, partition=0):
    """(leader, isr) of a partition as `node` describes it."""
    p = admin(node).list_topics(topic, timeout=10).topics[topic].partitions[partition]
    return p.leader, sorted(p.isrs)


def wait_for(condition, timeout, what):
    deadline = time.time() + timeout
    while True:
        try:
            found = condition()
            if found:
                return found
        except KafkaException:
            pass
        assert time.time() < deadline, what
        time.sleep(0.2)


def test_leader_epochs_fence_old_requests_and_offset_for_leader_epoch_follows_kip_101(cluster):
    """Leader epochs on the wire, as Kafka defines them: OffsetForLeaderEpoch
    answers where each epoch of the log ends, a request naming an older epoch
    than the leader's gets FENCED_LEADER_EPOCH and a newer one
    UNKNOWN_LEADER_EPOCH, and the epochs survive a failover and the old
    leader's return."""
    nodes = cluster
    create_topic(nodes[1], "epochs", 1, replication_factor=3)
    produce(nodes[1], "epochs", 10)
    first, _ = partition_state(nodes[1], "epochs")

    def ask(node, current, epoch):
        with socket.create_connection(("127.0.0.1", nodes[node].port), timeout=10) as s:
            return offset_for_leader_epoch_v2(s, "epochs", 0, current, epoch)

    def fetch_error(node, current):
        with socket.create_connection(("127.0.0.1", nodes[node].port), timeout=10) as s:
            return fetch_v9_error(s, "epochs", 0, 0, current)

    assert ask(first, 0, 0) == (0, 0, 10)
    assert ask(first, 7, 0)[0] == 75  # UNKNOWN_LEADER_EPOCH
    assert fetch_error(first, 0) == 0
    # The leader dies: an in-sync follower leads at epoch 1, where epoch 0 ended at 10.
    nodes[first].stop(signal.SIGKILL)
    survivor = next(n for n in (1, 2, 3) if n != first)
    second = wait_for(lambda: next((l for l, _ in [partition_state(nodes[survivor], "epochs")]
                                    if l not in (first, -1)), None), 15, "a new leader")
    assert ask(second, 1, 0) == (0, 0, 10)
    assert fetch_error(second, 0) == 74  # FENCED_LEADER_EPOCH: the client's epoch is older
    assert fetch_error(second, 1) == 0
    produce(nodes[second], "epochs", 5, start=10)
    assert ask(second, 1, 1) == (0, 1, 15)
    # Epochs this log never had: the largest below, ending where the next starts.
    assert ask(second, 1, 5) == (0, -1, -1)
    # The old leader returns, catches up and (preferred) leads again at epoch 2.
    nodes[first].start()
    wait_for(lambda: partition_state(nodes[survivor], "epochs") == (first, [1, 2, 3]), 30,
             "the old leader back in sync and leading")
    assert ask(first, 2, 1) == (0, 1, 15)
    assert ask(first, 2, 2) == (0, 2, 15)
    assert fetch_error(first, 1) == 74


def test_producer_ids_are_unique_across_the_nodes(cluster):
    """Each node hands out ids from blocks taken through the metadata log:
    ids from different nodes never collide, before or after a restart."""
    ids = [init_producer_id(node) for _ in range(5) for node in cluster.values()]
    cluster[2].restart()
    ids += [init_producer_id(node) for _ in range(5) for node in cluster.values()]
    assert len(set(ids)) == len(ids), sorted(ids)


def test_the_metadata_log_survives_kill_9_of_every_node(cluster):
    nodes = cluster
    create_topic(nodes[3], "kept", 5)
    layout = leaders(nodes[1], "kept")
    for node in nodes.values():
        node.stop(signal.SIGKILL)
    for node in nodes.values():
        node.launch()
    for node in nodes.values():
        node.wait_ready()
    for node in nodes.values():
        assert leaders(node, "kept") == layout


def test_a_node_that_is_not_a_controller_voter_follows_the_log_and_serves(tmp_path):
    """Three controller voters and a fourth node that only follows the
    metadata log (a Raft learner, on its own internal listener): it knows
    every topic, leads its share of partitions, and serves them."""
    internal = {n: free_port() for n in (1, 2, 3)}
    controllers = ",".join(f"{n}@127.0.0.1:{p}" for n, p in internal.items())
    cpus = os.cpu_count() or 1
    nodes = {}
    for n in (1, 2, 3, 4):
        extra = ["--node-id", str(n), "--controllers", controllers]
        if n == 4:
            extra += ["--internal-listener", f"127.0.0.1:{free_port()}"]
        nodes[n] = Broker(tmp_path / f"node-{n}", cores=f"{(n - 1) % cpus}-{(n - 1) % cpus}", extra_args=extra)
    try:
        for node in nodes.values():
            node.launch()
        for node in nodes.values():
            node.wait_ready()
        create_topic(nodes[4], "wide", 8)
        layout = leaders(nodes[4], "wide")
        assert set(layout.values()) == {1, 2, 3, 4}, layout
        assert leaders(nodes[1], "wide") == layout
        acked = produce(nodes[4], "wide", 400)
        assert {p for p, _, _ in acked} == set(range(8))
        assert sorted(read_to_end(nodes[1], "wide", {p: 0 for p in range(8)})) == sorted(acked)
    finally:
        for node in nodes.values():
            if node.proc is not None:
                node.stop(signal.SIGKILL)
