"""The deploy files: the systemd unit passes `systemd-analyze verify`, the broker
speaks sd_notify to a Type=notify unit, and the example config loads."""

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from confluent_kafka import Producer

from conftest import SLUICE, Broker

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (scripts/setup-test-deps.sh installs systemd)")
    unit = (DEPLOY / "systemd" / "sluice.service").read_text()
    # verify checks that ExecStart's binary exists: point it at the one built here.
    unit = unit.replace("/usr/local/bin/sluice", str(SLUICE))
    path = tmp_path / "sluice.service"
    path.write_text(unit)
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Type=notify" in unit and "LimitMEMLOCK=" in unit and "User=sluice" in unit


def test_the_broker_tells_systemd_when_it_serves_and_when_it_stops(tmp_path):
    notify = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(30)
    os.environ["NOTIFY_SOCKET"] = str(notify)
    try:
        broker = Broker(tmp_path / "data").start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        assert listener.recv(256) == b"READY=1"
        broker.proc.send_signal(signal.SIGTERM)
        assert listener.recv(256) == b"STOPPING=1"
        assert broker.proc.wait(30) == 0
        broker.proc = None
    finally:
        broker.stop()
        listener.close()


def test_the_example_config_loads():
    done = subprocess.run([str(SLUICE), "--config", str(DEPLOY / "sluice.toml"), "--print-config"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert 'metrics_listen = "127.0.0.1:9644"' in done.stdout
    assert "tail_cache_bytes = 67108864" in done.stdout


def test_json_logs_are_one_object_per_line(tmp_path):
    import json
    broker = Broker(tmp_path / "data", extra_args=["--log-format", "json"]).start()
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("json-logs", value=b"v")
    assert producer.flush(30) == 0
    broker.stop()
    lines = [line for line in broker.log_path.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line parses
    messages = [e.get("fields", {}).get("message") for e in events]
    assert "effective configuration" in messages
    assert "sluice is ready" in messages and "stopped cleanly" in messages
    assert all(e.get("level") and e.get("timestamp") for e in events)


def containerfile_runtime():
    """The last stage of deploy/container/Containerfile: its ENV, USER,
    VOLUME, EXPOSE and ENTRYPOINT (no image is built here: no registry)."""
    import json
    import shlex
    text = (DEPLOY / "container" / "Containerfile").read_text()
    stages = text.split("\nFROM ")
    build, runtime = stages[-2], stages[-1]
    joined = runtime.replace("\\\n", " ")
    env, user, volume, expose, entry = {}, None, None, [], None
    for line in joined.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif word == "USER":
            user = rest.strip()
        elif word == "VOLUME":
            volume = rest.strip()
        elif word == "EXPOSE":
            expose = [int(p) for p in rest.split()]
        elif word == "ENTRYPOINT":
            entry = json.loads(rest)
    return build, env, user, volume, expose, entry


def test_the_container_runs_the_broker_as_non_root_from_its_env_alone(tmp_path):
    """What the container's last stage sets up, reproduced without an image: the
    binary started with only the Containerfile's environment, as an unprivileged
    user whose only writable place is the volume, serves Kafka clients at the
    advertised address and /health at the metrics address, and keeps its data
    in the volume across a restart."""
    import json
    import tempfile
    import time
    import urllib.request
    from confluent_kafka import Consumer, TopicPartition
    from conftest import free_port
    if os.geteuid() != 0:
        pytest.skip("running as another user (setpriv, chown) needs root")
    build, env, user, volume, expose, entry = containerfile_runtime()
    assert "cargo build --release -p sluice-broker" in build
    assert "COPY --from=build /src/target/release/sluice /usr/local/bin/sluice" in \
        (DEPLOY / "container" / "Containerfile").read_text()
    meta = json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"],
                                     capture_output=True, text=True, check=True,
                                     cwd=DEPLOY.parent).stdout)
    broker_pkg = next(p for p in meta["packages"] if p["name"] == "sluice-broker")
    assert "sluice" in [t["name"] for t in broker_pkg["targets"] if "bin" in t["kind"]]
    assert user == "sluice" and volume == env["SLUICE_DATA_DIR"] == "/var/lib/sluice"
    assert entry == ["/usr/local/bin/sluice"]
    assert sorted(expose) == [9092, 9644]
    # Ports of this test's own; the rest of the environment as the image sets it.
    port, metrics_port = free_port(), free_port()
    root = Path(tempfile.mkdtemp(prefix="sluice-container-"))
    os.chmod(root, 0o755)
    data = root / "volume"
    data.mkdir()
    os.chown(data, 65534, 65534)  # nobody: the volume belongs to the image's user
    binary = root / "sluice"
    shutil.copy(SLUICE, binary)
    os.chmod(binary, 0o755)
    run_env = {k: v.replace(":9092", f":{port}").replace(":9644", f":{metrics_port}")
               for k, v in env.items()}
    run_env["SLUICE_DATA_DIR"] = str(data)
    run_env["SLUICE_CORES"] = "2"
    run_env["PATH"] = "/usr/bin:/bin"
    assert run_env["SLUICE_LISTEN"] == f"0.0.0.0:{port}"
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(binary)]
    log_path = tmp_path / "container.log"

    def start():
        proc = subprocess.Popen(command, env=run_env, cwd="/", stdout=open(log_path, "ab"),
                                stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/health", timeout=1) as r:
                    if r.status == 200:
                        return proc
            except OSError:
                time.sleep(0.1)
        proc.kill()
        raise AssertionError(f"not serving: {log_path.read_text()[-2000:]}")

    proc = start()
    try:
        producer = Producer({"bootstrap.servers": f"localhost:{port}"})
        for i in range(100):
            producer.produce("boxed", value=b"%d" % i)
        assert producer.flush(30) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert any(p.stat().st_uid == 65534 for p in data.rglob("*"))
        proc = start()
        consumer = Consumer({"bootstrap.servers": f"localhost:{port}", "group.id": "boxed"})
        consumer.assign([TopicPartition("boxed", 0, 0)])
        got = []
        deadline = time.time() + 30
        while len(got) < 100 and time.time() < deadline:
            msg = consumer.poll(1)
            if msg is not None and not msg.error():
                got.append(msg.value())
        consumer.close()
        assert got == [b"%d" % i for i in range(100)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
