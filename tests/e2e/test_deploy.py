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
