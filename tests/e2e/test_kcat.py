"""kcat (librdkafka, Debian's build) produce/consume round trip with keys."""

import subprocess


def kcat(*args, input=None, timeout=60):
    return subprocess.run(["kcat", *args], input=input, capture_output=True, timeout=timeout, check=True)


def test_round_trip_with_keys(broker):
    lines = [f"key-{i}:value number {i}" for i in range(200)]
    kcat("-b", broker.bootstrap, "-t", "kcat-topic", "-P", "-K:", input="\n".join(lines).encode() + b"\n")
    out = kcat("-b", broker.bootstrap, "-t", "kcat-topic", "-C", "-e", "-f", "%k|%s|%o|%p\n").stdout.decode()
    got = [line.split("|") for line in out.splitlines() if line]
    assert [(k, v) for k, v, _, _ in got] == [tuple(line.split(":", 1)) for line in lines]
    assert [int(o) for _, _, o, _ in got] == list(range(200))


def test_metadata_lists_this_broker_as_leader(broker):
    kcat("-b", broker.bootstrap, "-t", "meta-topic", "-P", input=b"x\n")
    out = kcat("-b", broker.bootstrap, "-L", "-t", "meta-topic").stdout.decode()
    assert f"at {broker.bootstrap}" in out or f"127.0.0.1:{broker.port}" in out
    assert 'topic "meta-topic" with 1 partitions' in out
    assert "leader 0" in out
