#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora from real client traffic.

Starts a sluice broker (target/release/sluice), puts a recording proxy in
front of it, and runs what real clients do through the proxy: librdkafka
(confluent-kafka: admin, produce with every codec, idempotence, a group
consumer with commits) and kafka-python. Every request frame is kept:

- corpus/request_decode: each request frame (the bytes after the size field);
- corpus/handlers: each connection's frames in order, up to 8 per seed (the
  handlers target splits an input the same way), plus every frame alone;
- corpus/batch_validate: each record batch of every produce request, plus
  hand-built batches for every codec.

Run by scripts/fuzz.sh --seeds (with the test venv: scripts/setup-test-deps.sh).
"""

import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from kafka_wire import batch, crc32c, record  # noqa: E402

CORPUS = HERE / "corpus"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class Proxy:
    """Forwards client connections to the broker and records each request frame."""

    def __init__(self, broker_port):
        self.broker_port = broker_port
        self.port = free_port()
        self.connections = []  # list of lists of frames
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            frames = []
            self.connections.append(frames)
            threading.Thread(target=self.requests, args=(client, upstream, frames), daemon=True).start()
            threading.Thread(target=self.responses, args=(upstream, client), daemon=True).start()

    def requests(self, client, upstream, frames):
        try:
            while True:
                size = recv_exact(client, 4)
                if size is None:
                    break
                body = recv_exact(client, struct.unpack(">i", size)[0])
                if body is None:
                    break
                frames.append(body)
                upstream.sendall(size + body)
        except OSError:
            pass
        upstream.close()

    @staticmethod
    def responses(upstream, client):
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        client.close()


def drive_clients(bootstrap):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("seeds", 2, 1, config={"retention.ms": "3600000"})])["seeds"].result(30)
    admin.create_partitions([NewPartitions("seeds", 3)])["seeds"].result(30)
    admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "seeds")])
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                             "enable.idempotence": codec in ("none", "zstd"), "linger.ms": 5})
        for i in range(20):
            producer.produce("seeds", key=f"k{i % 3}".encode(), value=f"{codec} value {i}".encode(),
                             headers=[("h", b"v")] if i % 2 else None)
        producer.flush(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "seeds-group",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["seeds"])
    got = 0
    deadline = time.time() + 20
    while got < 100 and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got += 1
            if got % 25 == 0:
                consumer.commit(message, asynchronous=False)
    consumer.close()
    admin.delete_topics(["seeds"])["seeds"].result(30)

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip")
    for i in range(10):
        producer.send("seeds-kp", key=b"k", value=f"kafka-python {i}".encode(), timestamp_ms=1_700_000_000_000 + i)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)
    tp = TopicPartition("seeds-kp", 0)
    consumer.assign([tp])
    consumer.offsets_for_times({tp: 1_700_000_000_005})
    consumer.end_offsets([tp])
    for _ in consumer:
        pass
    consumer.close()


def produce_batches(frame):
    """Record batches inside a Produce request frame: every place where a v2
    batch header with a matching CRC-32C starts (no need to walk each version's layout)."""
    api_key = struct.unpack(">h", frame[:2])[0]
    if api_key != 0:
        return []
    out = []
    for at in range(len(frame) - 61):
        if frame[at + 16] != 2:
            continue
        length = struct.unpack(">i", frame[at + 8:at + 12])[0]
        end = at + 12 + length
        if length < 49 or end > len(frame):
            continue
        if struct.unpack(">I", frame[at + 17:at + 21])[0] == crc32c(frame[at + 21:end]):
            out.append(frame[at:end])
    return out


def hand_built_batches():
    import gzip

    import cramjam
    import lz4.frame

    section = b"".join(record(i, f"value {i}".encode(), key=b"k") for i in range(5))
    compress = {1: gzip.compress, 2: lambda d: bytes(cramjam.snappy.compress_raw(d)),
                3: lz4.frame.compress, 4: lambda d: bytes(cramjam.zstd.compress(d))}
    out = [batch(section, 5)]
    for codec, fn in compress.items():
        out.append(batch(fn(section), 5, attributes=codec))
    return out


def write(directory, items):
    directory.mkdir(parents=True, exist_ok=True)
    for item in items:
        name = hashlib.sha1(item).hexdigest()[:16]
        (directory / f"seed-{name}").write_bytes(item)


def main():
    sluice = ROOT / "target" / "release" / "sluice"
    work = Path(tempfile.mkdtemp(prefix="sluice-seeds-"))
    port = free_port()
    # Clients come back through the proxy after Metadata: the broker
    # advertises the proxy's port.
    proxy = Proxy(port)
    proc = subprocess.Popen([str(sluice), "--data-dir", str(work / "data"), "--listen", f"127.0.0.1:{port}",
                             "--advertised-listener", f"127.0.0.1:{proxy.port}", "--cores", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        drive_clients(f"127.0.0.1:{proxy.port}")
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    connections = [frames for frames in proxy.connections if frames]
    frames = [f for c in connections for f in c]
    for target in ["request_decode", "handlers", "batch_validate"]:
        shutil.rmtree(CORPUS / target, ignore_errors=True)
    write(CORPUS / "request_decode", frames)
    sequences = []
    for c in connections:
        for start in range(0, len(c), 8):
            sequences.append(b"".join(struct.pack(">I", len(f)) + f for f in c[start:start + 8]))
    write(CORPUS / "handlers", sequences + [struct.pack(">I", len(f)) + f for f in frames])
    batches = [b for f in frames for b in produce_batches(f)]
    write(CORPUS / "batch_validate", batches + hand_built_batches())
    for target in ["request_decode", "handlers", "batch_validate"]:
        print(f"{target}: {len(os.listdir(CORPUS / target))} seeds")


if __name__ == "__main__":
    main()
