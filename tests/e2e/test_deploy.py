"""The deploy files: the systemd unit passes `systemd-analyze verify`, the broker
speaks sd_notify to a Type=notify unit, and the example config loads."""

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

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
