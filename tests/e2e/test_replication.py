"""Replication under faults: a 3-node cluster, one network namespace per node
(netcluster.py), a topic with replication factor 3 and min.insync.replicas=2,
idempotent acks=all producers and consumers running throughout (checker.py).
A node's leader is killed and restarted, cut off from the other nodes and
healed, a follower is killed, all nodes are killed at once; after each, the
checker asserts that every acknowledged message is where its ack said, once,
in order, that nothing a consumer read was lost, and that the cluster goes
on. Failover times (kill → first ack of a message sent after the kill, per
partition the dead node led) are printed and, with $SLUICE_REPLICATION_REPORT
set, written there as JSON lines.

Needs root (ip netns); skipped otherwise. Bounded for CI (about 3 minutes);
scripts/replication-soak.sh runs the same with 10 kill rounds.

SLUICE_TEST_REPLICATION_FACTOR=1 runs the scenarios on unreplicated topics
(min.insync.replicas=1, no replication settings in the broker config), the
way the harness was developed before the broker replicated: the
replication-only assertions (a new leader while the old one is down,
progress during a cut, the ISR shrinking) are then left out.
"""

import os
import sys
import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from checker import Workload, check, failover_times, final_read, longest_pause, report
from netcluster import CONTROLLER_PORT, KAFKA_PORT, NetCluster, can_connect, netns_unavailable
from test_cluster import controller_leader

REPLICATION_FACTOR = int(os.environ.get("SLUICE_TEST_REPLICATION_FACTOR", "3"))
REPLICATED = REPLICATION_FACTOR > 1
MIN_INSYNC = min(2, REPLICATION_FACTOR)
BROKER_SETTINGS = {"auto_create_topics": False}
if REPLICATED:
    BROKER_SETTINGS |= {"default_replication_factor": 3, "min_insync_replicas": 2,
                        "replica_lag_time_max_ms": 5000}
SESSION_TIMEOUT_S = 2  # broker_session_timeout_ms of netcluster
LAG_TIME_S = 5         # replica_lag_time_max_ms
SOAK_ROUNDS = int(os.environ.get("SLUICE_SOAK_ROUNDS", "2"))
CUT_SECONDS = float(os.environ.get("SLUICE_CUT_SECONDS", "20"))
DOWN_SECONDS = 5
WARMUP_ACKS = 300   # acknowledgements before the fault
PROGRESS_ACKS = 200  # acknowledgements after the heal (e)


@pytest.fixture
def netcluster(tmp_path):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = NetCluster(tmp_path, settings=BROKER_SETTINGS)
    print(f"node logs: {tmp_path}/node-N.log")
    try:
        yield cluster.start()
    finally:
        cluster.close()


def create_topic(cluster, name, partitions=3):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topic = NewTopic(name, num_partitions=partitions, replication_factor=REPLICATION_FACTOR,
                     config={"min.insync.replicas": str(MIN_INSYNC)})
    admin.create_topics([topic])[name].result(timeout=30)
    wait_for_isr(cluster, name, timeout=30)


def states(cluster, topic, node):
    """partition → (leader, epoch, replicas, isr) as node `node` answers Metadata."""
    return cluster.nodes[node].partitions(topic)


def leaders(cluster, topic, node=1):
    return {p: leader for p, (leader, _, _, _) in states(cluster, topic, node).items()}


def wait_for_isr(cluster, topic, timeout, nodes=(1, 2, 3)):
    """Until every node (of `nodes`) reports every partition with a leader and
    all REPLICATION_FACTOR replicas in its ISR; returns the seconds it took."""
    seen = {}

    def full():
        for n in nodes:
            seen[n] = states(cluster, topic, n)
        return all(leader >= 0 and len(replicas) == REPLICATION_FACTOR and sorted(isr) == sorted(replicas)
                   for answer in seen.values() for leader, _, replicas, isr in answer.values())

    return wait_until(full, timeout, lambda: f"every partition of {topic} led with a full ISR "
                                             f"(node → partition → (leader, epoch, replicas, isr): {seen})")


def wait_for_new_leaders(cluster, topic, asked, led, before, timeout):
    """Until node `asked` reports for each partition of `led` a live leader
    other than the one in `before` and a higher leader epoch; returns the
    seconds it took."""
    now = {}

    def moved():
        now.update(states(cluster, topic, asked))
        return all(now[p][0] not in (before[p][0], -1) and now[p][1] > before[p][1] for p in led)

    def state(answer):
        return {p: f"leader {answer[p][0]} epoch {answer[p][1]} isr {answer[p][3]}" for p in led if p in answer}

    return wait_until(moved, timeout, lambda: f"new leaders with higher epochs for partitions {led} "
                                              f"(node {asked} says): before {state(before)}, now {state(now)}")


def wait_until(condition, timeout, what):
    """Polls condition() (failed requests count as False) until true; returns
    the seconds it took. `what` (or what() when it is a function) names the
    awaited state in the failure."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (OSError, RuntimeError, KafkaException):
            pass
        if time.monotonic() - started >= timeout:
            try:
                awaited = what() if callable(what) else what
            except (OSError, RuntimeError) as error:
                awaited = f"(the state could not be read: {error})"
            raise AssertionError(f"{awaited}: not within {timeout:.1f} s")
        time.sleep(0.1)


def finish(cluster, workload, topic, partitions, healed_at):
    """Progress after the heal, then stop the clients, read everything back
    and check the history."""
    workload.wait_for_acks(PROGRESS_ACKS, after=healed_at, timeout=60, what="acknowledgements after the heal")
    history = workload.stop()
    final = final_read(cluster.bootstrap, topic, partitions)
    print(history.summary())
    check(history, final, healed_at=healed_at, min_acks_after_heal=PROGRESS_ACKS)
    return history


def test_a_cut_blocks_node_to_node_traffic_both_ways_but_not_clients(tmp_path):
    """The harness itself: after cut(1), node 1 cannot open a connection to
    nodes 2 and 3 nor they to it, 2 and 3 still talk, and the root namespace
    (where clients run) still reaches all three; heal(1) restores it all."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = NetCluster(tmp_path)
    started = time.monotonic()
    cluster.setup_network()
    setup_seconds = time.monotonic() - started
    listeners = []
    try:
        assert setup_seconds < 1, f"network setup took {setup_seconds:.2f} s"
        for i in (1, 2, 3):  # a plain TCP listener on each node's Kafka port
            code = (f"import socket, time\ns = socket.create_server(({cluster.address(i)!r}, {KAFKA_PORT}))\n"
                    "time.sleep(120)\n")
            listeners.append(cluster.spawn(i, [sys.executable, "-c", code]))
        wait_until(lambda: all(can_connect(None, cluster.address(i), KAFKA_PORT) for i in (1, 2, 3)),
                   10, "listeners up")

        def reachable():
            """(from, to) → connects; from 0 is the root namespace."""
            pairs = [(a, b) for a in (0, 1, 2, 3) for b in (1, 2, 3) if a != b]
            return {(a, b): can_connect(cluster.namespace(a) if a else None, cluster.address(b), KAFKA_PORT)
                    for a, b in pairs}

        assert all(reachable().values()), reachable()
        cluster.cut(1)
        cut = reachable()
        assert {pair for pair, ok in cut.items() if not ok} == {(1, 2), (1, 3), (2, 1), (3, 1)}, cut
        cluster.heal(1)
        assert all(reachable().values()), reachable()
    finally:
        for process in listeners:
            process.kill()
            process.wait()
        cluster.close()


def test_cutting_the_controller_leader_moves_the_controller(netcluster):
    """The harness on real nodes: the node that leads the metadata log, cut
    off from the others, loses that role to one of them (they log the new
    leader), is fenced in their Metadata, and after the heal is back in it."""
    cluster = netcluster
    wait_until(lambda: controller_leader(cluster.nodes.values()) in (1, 2, 3), 10, "a controller leader")
    victim = controller_leader(cluster.nodes.values())
    others = [n for n in (1, 2, 3) if n != victim]
    cluster.cut(victim)
    took = wait_until(lambda: controller_leader(cluster.nodes[n] for n in others) in others, 15,
                      "a new controller leader among the majority")
    print(f"controller leader {victim} cut off: node {controller_leader(cluster.nodes[n] for n in others)} "
          f"leads after {took:.2f} s")
    for n in others:
        assert can_connect(cluster.namespace(n), cluster.address(victim), CONTROLLER_PORT) is False
    assert can_connect(None, cluster.address(victim), KAFKA_PORT)
    majority = cluster.nodes[others[0]]
    wait_until(lambda: majority.brokers() == others, SESSION_TIMEOUT_S + 10,
               lambda: f"the cut node fenced (node {others[0]} lists {majority.brokers()})")
    cluster.heal(victim)
    wait_until(lambda: majority.brokers() == [1, 2, 3], 20,
               lambda: f"the healed node back (node {others[0]} lists {majority.brokers()})")


def test_replication_factor_is_checked_and_replicas_and_isr_are_in_metadata(netcluster):
    """RF 4 on 3 nodes is INVALID_REPLICATION_FACTOR; an RF 3 topic lists
    three replicas, all in sync, on every node; without a factor a topic
    gets default_replication_factor (3)."""
    if not REPLICATED:
        pytest.skip("SLUICE_TEST_REPLICATION_FACTOR=1: the brokers run without replication settings")
    cluster = netcluster
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    with pytest.raises(KafkaException) as refused:
        admin.create_topics([NewTopic("too-wide", num_partitions=3, replication_factor=4)])["too-wide"].result(30)
    assert refused.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR, refused.value
    admin.create_topics([NewTopic("rf3", num_partitions=3, replication_factor=3,
                                  config={"min.insync.replicas": "2"})])["rf3"].result(30)
    admin.create_topics([NewTopic("default-rf", num_partitions=3)])["default-rf"].result(30)
    for topic in ("rf3", "default-rf"):
        for p in admin.list_topics(topic, timeout=10).topics[topic].partitions.values():
            assert sorted(p.replicas) == [1, 2, 3] and sorted(p.isrs) == [1, 2, 3], (topic, p.id, p.replicas, p.isrs)
            assert p.leader in p.replicas
        wait_for_isr(cluster, topic, timeout=10)  # and every node says the same


def test_kill_9_of_the_busiest_partitions_leader_loses_nothing(netcluster):
    """kill -9 the leader of the busiest partition under load (not the node
    killed in the round before), restart it 5 s later; SLUICE_SOAK_ROUNDS
    rounds (2 here). While it is down the
    others elect new leaders (higher epoch) for its partitions and
    acknowledge again; it comes back into every ISR; nothing acknowledged is
    lost, duplicated or reordered."""
    cluster = netcluster
    topic, partitions = "kill-leader", 3
    create_topic(cluster, topic, partitions)
    rounds, victim = [], None
    with Workload(cluster.bootstrap, topic, partitions) as workload:
        workload.wait_for_acks(WARMUP_ACKS, what="acknowledgements before the first kill")
        for round_ in range(SOAK_ROUNDS):
            before = states(cluster, topic, 1)
            candidates = {p for p, (leader, _, _, _) in before.items() if leader != victim}
            busiest = workload.history.busiest_partition(among=candidates)
            victim = before[busiest][0]
            led = [p for p, (leader, _, _, _) in before.items() if leader == victim]
            survivor = next(n for n in (1, 2, 3) if n != victim)
            killed_at = cluster.kill(victim)

            def down_left():
                return killed_at + DOWN_SECONDS - time.monotonic()

            if REPLICATED:
                wait_for_new_leaders(cluster, topic, survivor, led, before, down_left())
                wait_until(lambda: None not in failover_times(workload.history, killed_at, led).values(), down_left(),
                           f"round {round_}: an ack on each of {led} while their leader {victim} is down")
            time.sleep(max(0.0, down_left()))
            cluster.start_node(victim)
            rejoined = wait_for_isr(cluster, topic, timeout=30)
            workload.wait_for_acks(1, partitions=set(led), sent_after=killed_at)
            times = failover_times(workload.history, killed_at, led)
            rounds.append(times)
            print(f"round {round_}: killed node {victim} (led {led}), failover "
                  f"{ {p: round(t, 3) for p, t in times.items()} } s, "
                  f"back in every ISR {rejoined:.1f} s after the restart")
        finish(cluster, workload, topic, partitions, healed_at=time.monotonic())
    report("kill-9 leader", rounds, replication_factor=REPLICATION_FACTOR)


@pytest.mark.parametrize("role", ["controller leader", "partition leader"])
def test_a_leader_cut_off_from_the_other_nodes_stops_acknowledging_and_rejoins(netcluster, role):
    """A node leading a partition is cut off from the other two nodes
    (clients still reach it) for 20 s (SLUICE_CUT_SECONDS), then healed:
    once the node that also leads the metadata log (a new controller must be
    elected first), once another one. The majority elects new partition
    leaders (higher epochs) and goes on acknowledging; the old leader must
    not acknowledge on its own: anything it did acknowledge would be lost
    when it truncates to the new leader, which the checker reports (every
    acknowledged message in the end, once, in order). After the heal it is
    back in the ISR of every partition on every node."""
    cluster = netcluster
    topic, partitions = "cut-leader", 3
    create_topic(cluster, topic, partitions)
    with Workload(cluster.bootstrap, topic, partitions) as workload:
        workload.wait_for_acks(WARMUP_ACKS, what="acknowledgements before the cut")
        controller = controller_leader(cluster.nodes.values())
        layout = leaders(cluster, topic)
        if role == "controller leader":
            victim = controller
        else:
            victim = next(leader for _, leader in sorted(layout.items()) if leader != controller)
        others = [n for n in (1, 2, 3) if n != victim]
        before = states(cluster, topic, others[0])
        led = [p for p, (leader, _, _, _) in before.items() if leader == victim]
        assert led, f"the {role} {victim} leads no partition: {before}"
        cut_at = cluster.cut(victim)

        def cut_left():
            return cut_at + CUT_SECONDS - time.monotonic()

        wait_until(lambda: controller_leader(cluster.nodes[n] for n in others) in others, cut_left(),
                   "a controller leader among the majority")
        if REPLICATED:
            wait_for_new_leaders(cluster, topic, others[0], led, before, cut_left())
            elected = time.monotonic() - cut_at
            workload.wait_for_acks(20, partitions=set(led), sent_after=cut_at, timeout=cut_left(),
                                   what=f"acks on {led} from the majority during the cut")
            print(f"cut node {victim} (led {led}): new leaders after {elected:.2f} s, failover "
                  f"{ {p: round(t, 3) for p, t in failover_times(workload.history, cut_at, led).items()} } s")
        time.sleep(max(0.0, cut_left()))
        during = workload.history.acks(after=cut_at, before=time.monotonic())
        healed_at = cluster.heal(victim)
        print(f"{len(during)} acknowledgements during the {CUT_SECONDS:.0f} s cut")
        rejoined = wait_for_isr(cluster, topic, timeout=30)
        print(f"node {victim} back in every ISR {rejoined:.1f} s after the heal")
        finish(cluster, workload, topic, partitions, healed_at)
    report(f"cut {role}", [failover_times(workload.history, cut_at, led)], replication_factor=REPLICATION_FACTOR)


def test_kill_9_of_a_follower_keeps_acks_flowing_and_it_catches_up(netcluster):
    """A node that is not the controller leader is killed for 8 s under load:
    the partitions it only follows go on being acknowledged (min.insync=2 of
    3), it drops out of their ISR, and after the restart it catches up and
    is back in every ISR within 30 s."""
    cluster = netcluster
    topic, partitions = "kill-follower", 3
    create_topic(cluster, topic, partitions)
    with Workload(cluster.bootstrap, topic, partitions) as workload:
        workload.wait_for_acks(WARMUP_ACKS, what="acknowledgements before the kill")
        victim = next(n for n in (3, 2, 1) if n != controller_leader(cluster.nodes.values()))
        survivor = next(n for n in (1, 2, 3) if n != victim)
        followed = {p for p, leader in leaders(cluster, topic, survivor).items() if leader != victim}
        killed_at = cluster.kill(victim)
        workload.wait_for_acks(50, partitions=followed, sent_after=killed_at, timeout=DOWN_SECONDS,
                               what=f"acks on {sorted(followed)} (node {victim} follows them) while it is down")
        if REPLICATED:
            wait_until(lambda: all(victim not in isr for _, _, _, isr in states(cluster, topic, survivor).values()),
                       killed_at + SESSION_TIMEOUT_S + LAG_TIME_S + 10 - time.monotonic(),
                       f"node {victim} out of every ISR")
            print(f"node {victim} left every ISR within {time.monotonic() - killed_at:.1f} s of the kill")
        time.sleep(max(0.0, 8 - (time.monotonic() - killed_at)))
        restarted_at = cluster.start_node(victim)
        during = workload.history.acks(after=killed_at, before=restarted_at, partitions=followed,
                                       sent_after=killed_at)
        assert len(during) > 0
        rejoined = wait_for_isr(cluster, topic, timeout=30)
        pause = longest_pause(workload.history, killed_at, restarted_at, followed)
        print(f"{len(during)} acks on followed partitions while node {victim} was down "
              f"({restarted_at - killed_at:.1f} s; longest pause between acks {pause:.2f} s); "
              f"back in every ISR {rejoined:.1f} s after the restart")
        finish(cluster, workload, topic, partitions, healed_at=restarted_at)


def test_kill_9_of_every_node_keeps_every_acknowledged_message(netcluster):
    """All three nodes are killed at once under load and started again:
    every acknowledged message is there, and producers go on."""
    cluster = netcluster
    topic, partitions = "kill-all", 3
    create_topic(cluster, topic, partitions)
    with Workload(cluster.bootstrap, topic, partitions) as workload:
        workload.wait_for_acks(WARMUP_ACKS, what="acknowledgements before the kill")
        killed_at = cluster.kill_all()
        time.sleep(1)
        restarted_at = cluster.start_all()
        rejoined = wait_for_isr(cluster, topic, timeout=60)
        workload.wait_for_acks(1, sent_after=killed_at, what="acknowledgements after the restart")
        first = min(t for _, _, _, t in workload.history.acks(sent_after=killed_at))
        print(f"all nodes killed: full ISRs {rejoined:.1f} s after the restart, first ack "
              f"{first - killed_at:.2f} s after the kill")
        finish(cluster, workload, topic, partitions, healed_at=restarted_at)
