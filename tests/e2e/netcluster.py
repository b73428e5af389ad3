"""A 3-node Sluice cluster with one Linux network namespace per node, so
that the network between nodes can be cut and healed (a helper, not a test).

Layout (SUBNET is 10.77.0 unless another run on this host holds it, then
10.77.1, ...):

    root namespace: bridge slbr<pid>, SUBNET.254/24; the clients run here
      ├── veth slv<pid>n1 ── namespace sluice-<pid>-1: eth0 SUBNET.1/24, lo
      ├── veth slv<pid>n2 ── namespace sluice-<pid>-2: eth0 SUBNET.2/24, lo
      └── veth slv<pid>n3 ── namespace sluice-<pid>-3: eth0 SUBNET.3/24, lo

Node i listens for clients on SUBNET.i:9092 and for the other nodes on
SUBNET.i:9093 (its controller address). `cut(i)` adds blackhole routes: in
node i's namespace to every other node, and in every other node's namespace
to node i. Packets between node i and the others are then dropped in both
directions (a new connection fails at once with EINVAL, "Invalid argument";
established ones go silent and time out), while
the root namespace (the clients) still reaches every node. `heal(i)` deletes
those routes.

Only iproute2 is needed (no iptables). Everything is named after this
process's id and removed by `close()`, which the pytest fixture and an atexit
hook both call; leftovers of runs that died (their pid is gone) are removed
when a new cluster is set up.
"""

import atexit
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from conftest import Broker
from fault_proxy import Reader
from kafka_wire import read_response, request

KAFKA_PORT = 9092
CONTROLLER_PORT = 9093


def ip(*args, check=True):
    """Runs `ip ARGS` and returns its output."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def netns_unavailable():
    """Why network namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2 (the ip command) is not installed"
    probe = f"sluice-probe-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def remove_stale():
    """Removes the namespaces (and kills what still runs in them) and bridges
    left by runs that died without cleaning up: their pid is gone, or it is
    this process's (a cluster of this process not closed)."""
    def stale(pid):
        return int(pid) == os.getpid() or not pid_alive(int(pid))

    for name in ip("netns", "list", check=False).split():
        found = re.fullmatch(r"sluice-(\d+)-\d+", name)
        if found and stale(found.group(1)):
            for pid in ip("netns", "pids", name, check=False).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ip("netns", "del", name, check=False)
    for line in ip("-o", "link", "show", "type", "bridge", check=False).splitlines():
        found = re.search(r"^\d+: slbr(\d+)[:@]", line)
        if found and stale(found.group(1)):
            ip("link", "del", f"slbr{found.group(1)}", check=False)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def free_subnet():
    """The first 10.77.N (N = 0, 1, ...) that no route of the root namespace uses."""
    used = ip("-4", "route", "show", check=False)
    for n in range(256):
        if f"10.77.{n}." not in used:
            return f"10.77.{n}"
    raise RuntimeError("no free 10.77.N.0/24 subnet")


def can_connect(namespace, host, port, timeout=1.0):
    """Whether a TCP connection from `namespace` (None: the root namespace) to
    host:port is established within `timeout` seconds."""
    if namespace is None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return True
        except OSError:
            return False
    code = ("import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(({host!r}, {port}), timeout={timeout}).close()\n"
            "except OSError:\n"
            "    sys.exit(1)\n")
    done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code],
                          capture_output=True, timeout=timeout + 10)
    return done.returncode == 0


class NetNode(Broker):
    """One node: a sluice process inside its own network namespace."""

    def __init__(self, data_dir, node_id, namespace, address, cores, extra_args):
        super().__init__(data_dir, cores=cores, extra_args=extra_args)
        self.node_id = node_id
        self.namespace = namespace
        self.host = address
        self.port = KAFKA_PORT
        self.log_path = data_dir.parent / f"node-{node_id}.log"

    def command(self):
        return ["ip", "netns", "exec", self.namespace, *super().command()]

    def partitions(self, topic):
        """partition → (leader, leader epoch, replicas, isr) as this node
        answers Metadata v7 (asked directly, not through a client that might
        pick another node)."""
        return metadata_v7(self.host, self.port, topic)[1]

    def brokers(self):
        """The live (unfenced) node ids this node's Metadata lists."""
        return metadata_v7(self.host, self.port)[0]


class NetCluster:
    """Three (`size`) nodes, each in its own network namespace; see the module docstring."""

    def __init__(self, workdir: Path, size=3, settings=None):
        self.workdir = workdir
        self.size = size
        self.tag = str(os.getpid())
        self.bridge = f"slbr{self.tag}"
        self.subnet = None
        self.settings = {"broker_session_timeout_ms": 2000, **(settings or {})}
        self.nodes = {}
        self.network_up = False
        atexit.register(self.close)

    # --- the network ---------------------------------------------------------

    def address(self, i):
        return f"{self.subnet}.{i}"

    def namespace(self, i):
        return f"sluice-{self.tag}-{i}"

    def setup_network(self):
        """The bridge, one namespace and veth pair per node, loopback up (~30 ms)."""
        remove_stale()
        self.subnet = free_subnet()
        self.network_up = True
        root = [f"link add {self.bridge} type bridge",
                f"addr add {self.subnet}.254/24 dev {self.bridge}",
                f"link set {self.bridge} up"]
        for i in range(1, self.size + 1):
            ns, veth = self.namespace(i), f"slv{self.tag}n{i}"
            root += [f"netns add {ns}",
                     f"link add {veth} type veth peer name eth0 netns {ns}",
                     f"link set {veth} master {self.bridge} up"]
        ip_batch(None, root)
        for i in range(1, self.size + 1):
            ip_batch(self.namespace(i), ["link set lo up",
                                         f"addr add {self.address(i)}/24 dev eth0",
                                         "link set eth0 up"])
        return self

    def cut(self, i):
        """Isolates node i from the other nodes (both directions); clients in
        the root namespace still reach it. Returns the time of the cut."""
        self.cut_routes(i, "add")
        return time.monotonic()

    def heal(self, i):
        """Undoes cut(i). Returns the time of the heal."""
        self.cut_routes(i, "del")
        return time.monotonic()

    def cut_routes(self, i, verb):
        """Blackhole routes: node i to each other node, each other node to node i."""
        others = [j for j in range(1, self.size + 1) if j != i]
        ip_batch(self.namespace(i), [f"route {verb} blackhole {self.address(j)}/32" for j in others])
        for j in others:
            ip_batch(self.namespace(j), [f"route {verb} blackhole {self.address(i)}/32"])

    # --- the nodes ---------------------------------------------------------------

    @property
    def bootstrap(self):
        return ",".join(node.bootstrap for node in self.nodes.values())

    def start(self):
        """Sets up the network and starts every node; returns once all serve."""
        if not self.network_up:
            self.setup_network()
        config = self.workdir / "cluster.toml"
        config.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in self.settings.items()))
        controllers = ",".join(f"{i}@{self.address(i)}:{CONTROLLER_PORT}" for i in range(1, self.size + 1))
        cpus = os.cpu_count() or 1
        for i in range(1, self.size + 1):
            cpu = (i - 1) % cpus
            self.nodes[i] = NetNode(self.workdir / f"node-{i}", i, self.namespace(i), self.address(i),
                                    cores=f"{cpu}-{cpu}",
                                    extra_args=["--node-id", str(i), "--controllers", controllers,
                                                "--config", str(config)])
        self.start_all()
        return self

    def kill(self, i):
        """SIGKILLs node i; returns the time just before the signal."""
        at = time.monotonic()
        self.nodes[i].stop(signal.SIGKILL)
        return at

    def kill_all(self):
        """SIGKILLs every node at once (all signals first, then the waits)."""
        at = time.monotonic()
        running = [node for node in self.nodes.values() if node.proc is not None]
        for node in running:
            node.proc.send_signal(signal.SIGKILL)
        for node in running:
            node.proc.wait(timeout=30)
            node.proc = None
        return at

    def start_node(self, i):
        """Starts node i again (same data dir); returns once it serves."""
        self.nodes[i].start()
        return time.monotonic()

    def start_all(self):
        """Starts every node (together: they wait for a controller quorum);
        returns once all serve."""
        for node in self.nodes.values():
            node.launch()
        for node in self.nodes.values():
            node.wait_ready()
        return time.monotonic()

    def restart(self, i):
        """kill -9 and start again."""
        self.kill(i)
        return self.start_node(i)

    def spawn(self, i, args):
        """Starts `args` inside node i's namespace (a Popen)."""
        return subprocess.Popen(["ip", "netns", "exec", self.namespace(i), *args])

    def close(self):
        """Kills the nodes and removes the namespaces, veths and bridge. Idempotent."""
        for node in self.nodes.values():
            if node.proc is not None:
                node.proc.kill()
                node.proc.wait(timeout=30)
                node.proc = None
        if self.network_up:
            # Deleting a veth end deletes the pair at once (a namespace's
            # interfaces otherwise go a moment after the namespace).
            commands = [f"link del slv{self.tag}n{i}" for i in range(1, self.size + 1)]
            commands += [f"netns del {self.namespace(i)}" for i in range(1, self.size + 1)]
            ip_batch(None, commands + [f"link del {self.bridge}"], check=False)
            self.network_up = False


def ip_batch(namespace, commands, check=True):
    """Runs several `ip` commands in one process (`ip [-n NS] -batch -`);
    with check=False, all of them even if some fail (-force)."""
    args = ["ip"] + (["-n", namespace] if namespace else []) + ([] if check else ["-force"]) + ["-batch", "-"]
    done = subprocess.run(args, input="\n".join(commands) + "\n", capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}\n" + "\n".join(commands))


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- Metadata v7, asked of one node --------------------------------------------

def metadata_v7(host, port, topic=None, timeout=5.0):
    """(broker ids, partitions) as the node at host:port answers a Metadata v7
    request for `topic` (None: no topic); partitions maps each partition of
    the topic to (leader, leader_epoch, replicas, isr)."""
    topics = [topic.encode()] if topic else []
    body = struct.pack(">i", len(topics)) + b"".join(struct.pack(">h", len(t)) + t for t in topics)
    body += b"\x00"  # allow_auto_topic_creation: false
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(request(3, 7, 1, body))
        r = Reader(read_response(s))
    r.take(">ii")  # correlation id, throttle

    def broker():
        node_id = r.take(">i")
        r.string(), r.take(">i"), r.string()  # host, port, rack
        return node_id

    brokers = r.array(broker)
    r.string(), r.take(">i")  # cluster id, controller id
    partitions = {}

    def int32():
        return r.take(">i")

    for _ in range(r.take(">i")):
        error, name, _internal = r.take(">h"), r.string(), r.take(">b")
        if error != 0:
            raise RuntimeError(f"Metadata for {name} from {host}: error {error}")
        for _ in range(r.take(">i")):
            _error, partition, leader, epoch = r.take(">hiii")
            replicas, isr, _offline = r.array(int32), r.array(int32), r.array(int32)
            partitions[partition] = (leader, epoch, replicas, isr)
    return sorted(brokers), partitions
