"""A Jepsen-style checker for Kafka topics (a helper, not a test).

While a fault scenario runs, `Workload` keeps idempotent confluent-kafka
producers (acks=all) and consumers busy and records a `History`: every
message sent (value "<producer>-<seq>"), every acknowledgement (partition and
offset), every failed delivery, everything consumers read. After the cluster
is healed, `final_read` reads every partition from offset 0 to its end and
`check` asserts what Kafka promises:

  (a) every acknowledged message is in the final read, at the partition and
      offset its acknowledgement gave;
  (b) no value appears twice in the final read (idempotence), and nothing
      appears that was never sent;
  (c) per partition, offsets strictly increase and each producer's messages
      are in the order it sent them;
  (d) everything a consumer read during the run is in the final read at the
      same place (no consumer saw a message that was later lost);
  (e) progress: enough acknowledgements after the fault healed.

A failed delivery may still be in the log (an error does not mean "not
written"); only acknowledged messages must be. `failover_times` measures, per
partition a killed node led, the time from the kill to the first
acknowledgement of a message sent after the kill; `report` prints those and
appends them as a JSON line to $SLUICE_REPLICATION_REPORT if it is set.
"""

import json
import os
import statistics
import threading
import time
from collections import Counter, defaultdict

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

# Long message timeout: a failover retries messages instead of failing them.
# Broker-side ack timeout of 5 s (request.timeout.ms) and a metadata refresh
# every second, so that a producer stuck on a deposed leader moves to the new
# one within the fault, not after librdkafka's 5-minute default refresh.
PRODUCER_CONFIG = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 60_000,
    "request.timeout.ms": 5_000,
    "retry.backoff.ms": 100,
    "retry.backoff.max.ms": 1_000,
    "topic.metadata.refresh.interval.ms": 1_000,
}
CONSUMER_CONFIG = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 100,
    "topic.metadata.refresh.interval.ms": 1_000,
}
SHOWN = 10  # offending ids listed per violation


class History:
    """What the clients did, with time.monotonic() stamps. Thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}       # value → time produce() took it
        self.acked = {}      # value → (partition, offset, time)
        self.failed = {}     # value → (error, time)
        self.consumed = []   # (partition, offset, value, time)
        self.consumer_errors = Counter()

    def send(self, value, at):
        with self.lock:
            self.sent[value] = at

    def ack(self, value, partition, offset, at):
        with self.lock:
            self.acked[value] = (partition, offset, at)

    def fail(self, value, error, at):
        with self.lock:
            self.failed[value] = (error, at)

    def read(self, partition, offset, value, at):
        with self.lock:
            self.consumed.append((partition, offset, value, at))

    def acks(self, after=float("-inf"), partitions=None, sent_after=float("-inf"), before=float("inf")):
        """(value, partition, offset, time) of the acknowledgements between
        `after` and `before`, on `partitions` (None: all), of messages sent
        after `sent_after`."""
        with self.lock:
            return [(value, p, o, t) for value, (p, o, t) in self.acked.items()
                    if after < t < before and self.sent[value] > sent_after
                    and (partitions is None or p in partitions)]

    def busiest_partition(self, among=None):
        """The partition (of `among`, None: all) with the most acknowledgements."""
        with self.lock:
            counts = Counter(p for p, _, _ in self.acked.values() if among is None or p in among)
        return counts.most_common(1)[0][0]

    def summary(self):
        with self.lock:
            unresolved = len(self.sent) - len(self.acked) - len(self.failed)
            errors = Counter(error for error, _ in self.failed.values())
            failed = f"failed {len(self.failed)}" + (f" {dict(errors)}" if errors else "")
            return (f"sent {len(self.sent)}, acknowledged {len(self.acked)}, {failed}, unresolved {unresolved}, "
                    f"consumed {len(self.consumed)}, consumer errors {dict(self.consumer_errors)}")


class Workload:
    """Producers and consumers on `topic` in threads, recording a History."""

    def __init__(self, bootstrap, topic, partitions, producers=2, consumers=1, rate=150):
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.history = History()
        self.rate = rate  # messages per second per producer
        self.stopping = threading.Event()
        self.consumers_stopping = threading.Event()
        self.producers = [threading.Thread(target=self.produce, args=(f"p{i}",), daemon=True)
                          for i in range(producers)]
        self.consumers = [threading.Thread(target=self.consume, args=(i,), daemon=True)
                          for i in range(consumers)]
        self.aborting = False

    def start(self):
        for thread in self.consumers + self.producers:
            thread.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, failure, *_):
        """Stops the clients if the scenario did not; at once (dropping what
        is queued) if it failed midway: no thread may go on producing into
        the next test's cluster."""
        self.aborting = failure is not None
        self.stop()

    def stop(self):
        """Stops producing, waits for outstanding deliveries (up to the message
        timeout), then stops the consumers."""
        self.stopping.set()
        for thread in self.producers:
            thread.join(timeout=PRODUCER_CONFIG["message.timeout.ms"] / 1000 + 30)
        self.consumers_stopping.set()
        for thread in self.consumers:
            thread.join(timeout=30)
        return self.history

    def produce(self, name):
        history = self.history

        def on_delivery(err, msg):
            now = time.monotonic()
            value = msg.value().decode()
            if err is None:
                history.ack(value, msg.partition(), msg.offset(), now)
            else:
                history.fail(value, err.name(), now)

        producer = Producer({**PRODUCER_CONFIG, "bootstrap.servers": self.bootstrap})
        seq = 0
        due = time.monotonic()
        while not self.stopping.is_set():
            value = f"{name}-{seq}"
            try:
                producer.produce(self.topic, key=str(seq).encode(), value=value.encode(),
                                 on_delivery=on_delivery)
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
                continue
            history.send(value, time.monotonic())
            seq += 1
            due += 1 / self.rate
            producer.poll(max(0.0, due - time.monotonic()))
        if self.aborting:
            producer.purge()
        producer.flush(1 if self.aborting else PRODUCER_CONFIG["message.timeout.ms"] / 1000 + 10)

    def consume(self, index):
        consumer = Consumer({**CONSUMER_CONFIG, "bootstrap.servers": self.bootstrap,
                             "group.id": f"checker-{self.topic}-{index}"})
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(self.partitions)])
        while not self.consumers_stopping.is_set():
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                self.history.consumer_errors[msg.error().name()] += 1
                continue
            self.history.read(msg.partition(), msg.offset(), msg.value().decode(), time.monotonic())
        consumer.close()

    def wait_for_acks(self, count, after=float("-inf"), partitions=None, sent_after=float("-inf"),
                      timeout=30, what="acknowledgements"):
        """Waits until `count` acknowledgements arrived after `after` (for
        `partitions`, of messages sent after `sent_after`); fails otherwise."""
        deadline = time.monotonic() + timeout
        while len(self.history.acks(after, partitions, sent_after)) < count:
            assert time.monotonic() < deadline, (
                f"fewer than {count} {what} within {timeout:.1f} s "
                f"(got {len(self.history.acks(after, partitions, sent_after))}); {self.history.summary()}")
            time.sleep(0.1)


def final_read(bootstrap, topic, partitions, timeout=60):
    """Every record of every partition from offset 0 to the end (the high
    watermark): partition → [(offset, value)] in the order read."""
    consumer = Consumer({**CONSUMER_CONFIG, "bootstrap.servers": bootstrap,
                         "group.id": f"checker-final-{topic}", "enable.partition.eof": True})
    deadline = time.monotonic() + timeout
    ends = {}
    for p in range(partitions):
        while p not in ends:
            try:
                ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            except Exception as error:  # no leader yet: ask again
                assert time.monotonic() < deadline, f"no high watermark for partition {p}: {error}"
                time.sleep(0.2)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records = {p: [] for p in range(partitions)}
    done = set()
    while True:
        while len(done) < partitions:
            assert time.monotonic() < deadline, (
                f"final read unfinished after {timeout} s: partitions at their end {sorted(done)}, "
                f"high watermarks {ends}, records read {[len(records[p]) for p in sorted(records)]}")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF and msg.offset() >= ends[msg.partition()]:
                    done.add(msg.partition())
                continue
            records[msg.partition()].append((msg.offset(), msg.value().decode()))
        # A leader elected just before the read starts from its own high
        # watermark, which may trail the old leader's until its followers
        # fetch again (as in Kafka): read on until the watermarks hold still.
        grown = False
        for p in range(partitions):
            assert time.monotonic() < deadline, f"high watermarks still unknown or moving: {ends}"
            try:
                now = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            except Exception:  # no leader this moment: look again
                grown = True
                time.sleep(0.2)
                continue
            if now > ends[p]:
                ends[p] = now
                done.discard(p)
                grown = True
        if not grown:
            break
    consumer.close()
    return records


# --- the invariants ------------------------------------------------------------

def sequence(value):
    """("p0", 17) from "p0-17"."""
    producer, seq = value.rsplit("-", 1)
    return producer, int(seq)


def lost_acks(history, final):
    """(a) acknowledged messages not at their acknowledged place in the final read."""
    at = {(p, o): v for p, records in final.items() for o, v in records}
    where = defaultdict(list)
    for (p, o), v in at.items():
        where[v].append(f"{p}/{o}")
    return [f"{value} (acknowledged at {p}/{o}; the final read has {at.get((p, o))!r} there"
            f"{' and this value at ' + ', '.join(where[value]) if where[value] else ''})"
            for value, (p, o, _) in sorted(history.acked.items(), key=lambda item: item[1])
            if at.get((p, o)) != value]


def duplicates(history, final):
    """(b) values in the final read more than once, or never sent."""
    places = defaultdict(list)
    for p, records in final.items():
        for o, v in records:
            places[v].append(f"{p}/{o}")
    twice = [f"{v} at {', '.join(at)}" for v, at in places.items() if len(at) > 1]
    unknown = [f"{v} at {', '.join(at)} (never sent)" for v, at in places.items() if v not in history.sent]
    return twice + unknown


def reorderings(final):
    """(c) offsets that do not increase, producers' messages out of order."""
    found = []
    for p, records in sorted(final.items()):
        last_offset, last_seq = None, {}
        for o, v in records:
            if last_offset is not None and o <= last_offset:
                found.append(f"partition {p}: offset {o} read after {last_offset}")
            last_offset = o
            producer, seq = sequence(v)
            if producer in last_seq and seq <= last_seq[producer][0]:
                found.append(f"{v} at {p}/{o} after {producer}-{last_seq[producer][0]} at {p}/{last_seq[producer][1]}")
            last_seq[producer] = (seq, o)
    return found


def lost_reads(history, final):
    """(d) records a consumer read that the final read does not have there."""
    at = {(p, o): v for p, records in final.items() for o, v in records}
    return [f"{v} (read at {p}/{o}; the final read has {at.get((p, o))!r} there)"
            for p, o, v, _ in sorted(set(history.consumed)) if at.get((p, o)) != v]


def check(history, final, healed_at=None, min_acks_after_heal=0):
    """Asserts (a)-(e); the message names every violated invariant with up
    to SHOWN offending ids each, and the history's totals."""
    problems = []

    def report(found, what):
        if found:
            problems.append(f"{len(found)} {what}: " + "; ".join(found[:SHOWN])
                            + (" ..." if len(found) > SHOWN else ""))

    report(lost_acks(history, final), "acknowledged messages lost or moved (a)")
    report(duplicates(history, final), "duplicated or unknown values in the final read (b)")
    report(reorderings(final), "order violations (c)")
    report(lost_reads(history, final), "records consumers read that were later lost (d)")
    if healed_at is not None:
        after = len(history.acks(after=healed_at))
        if after < min_acks_after_heal:
            problems.append(f"no progress: {after} acknowledgements after the heal, "
                            f"expected at least {min_acks_after_heal} (e)")
    total = sum(len(records) for records in final.values())
    assert not problems, "\n".join(problems) + f"\n{history.summary()}; final read {total} records"


# --- failover ------------------------------------------------------------------

def failover_times(history, killed_at, partitions):
    """partition → seconds from `killed_at` to the first acknowledgement of a
    message sent after it (None: none yet). A message sent after the kill
    cannot have been acknowledged by the killed leader."""
    times = {}
    for p in partitions:
        acks = [t for _, _, _, t in history.acks(after=killed_at, partitions={p}, sent_after=killed_at)]
        times[p] = min(acks) - killed_at if acks else None
    return times


def longest_pause(history, start, end, partitions=None):
    """The longest time between `start`, the acknowledgements (on
    `partitions`) that arrived in between, and `end`."""
    times = sorted(t for _, _, _, t in history.acks(after=start, before=end, partitions=partitions))
    points = [start, *times, end]
    return max(b - a for a, b in zip(points, points[1:]))


def report(scenario, rounds, **extra):
    """Prints max/median failover over `rounds` (a list of partition → seconds)
    and appends them as one JSON line to $SLUICE_REPLICATION_REPORT if set."""
    values = [t for times in rounds for t in times.values() if t is not None]
    missing = sum(1 for times in rounds for t in times.values() if t is None)
    line = {"scenario": scenario, "rounds": len(rounds), "partitions": len(values) + missing,
            "failover_s": sorted(round(t, 3) for t in values),
            "max_s": round(max(values), 3) if values else None,
            "median_s": round(statistics.median(values), 3) if values else None,
            "no_ack": missing, **extra}
    print(f"failover [{scenario}]: {len(values)} partition failovers over {len(rounds)} rounds, "
          f"max {line['max_s']} s, median {line['median_s']} s, without an ack {missing}")
    path = os.environ.get("SLUICE_REPLICATION_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")
    return line
