"""Fixtures: a real `sluice` broker process on a free port and a temp data dir."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kafka_wire import read_response, request

ROOT = Path(__file__).resolve().parents[2]
SLUICE = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))


_next_port = None


def free_port() -> int:
    """A port that is free now and that no client socket will take meanwhile.

    Asking the kernel for port 0 hands out one of the ephemeral range, and between
    this check and the broker's bind any outgoing connection (a client, another
    broker) may be given the same port: CI once failed with EADDRINUSE that way.
    So ports come from below the ephemeral range, in sequence from a point set by
    the process id, and each is checked by a bind before it is handed out."""
    global _next_port
    low, _ = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    floor = 10000
    span = max(low - floor, 1000)
    if _next_port is None:
        _next_port = floor + (os.getpid() * 97) % span
    for _ in range(span):
        port = _next_port
        _next_port = floor + (_next_port - floor + 1) % span
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


class Broker:
    """One sluice process; can be stopped (SIGTERM), killed (SIGKILL) and restarted."""

    host = "127.0.0.1"

    def __init__(self, data_dir: Path, cores: int = 2, extra_args=()):
        self.data_dir = data_dir
        self.port = free_port()
        # Brokers of one test run side by side: each serves /metrics on its own port.
        self.metrics_port = free_port()
        self.cores = cores
        self.extra_args = list(extra_args)
        self.proc = None
        self.log_path = data_dir.parent / f"broker-{self.port}.log"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self):
        return self.launch().wait_ready()

    def launch(self):
        """Starts the process without waiting (nodes of a cluster start together)."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        return self

    def command(self) -> list:
        return [str(SLUICE), "--data-dir", str(self.data_dir), "--listen", self.bootstrap,
                "--metrics-listen", f"{self.host}:{self.metrics_port}",
                "--cores", str(self.cores), *self.extra_args]

    def wait_ready(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice exited with {self.proc.returncode}: {self.log()}")
            # A full ApiVersions round trip, not just a TCP connect: right after a
            # SIGKILL the dead process's io_uring may still hold the old listening
            # socket for a moment, accept, and then reset.
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    s.settimeout(2)
                    s.sendall(request(18, 0, 1))
                    read_response(s)
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sluice did not start listening: " + self.log())

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def restart(self, sig=signal.SIGTERM) -> int:
        code = self.stop(sig)
        self.start()
        return code

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "data").start()
    yield b
    if b.proc is not None:
        alive = b.alive()
        code = b.stop()
        assert alive, "broker died during the test:\n" + b.log()
        assert code == 0, f"broker exited with {code} on SIGTERM:\n" + b.log()


@pytest.fixture
def make_broker(tmp_path):
    """Factory for brokers with other settings (cores, flags)."""
    made = []

    def make(cores=2, extra_args=()):
        b = Broker(tmp_path / f"data-{len(made)}", cores=cores, extra_args=extra_args).start()
        made.append(b)
        return b

    yield make
    for b in made:
        if b.proc is not None:
            b.stop()
