"""A Kafka proxy that injects the errors of a real cluster in trouble between
a client and one `sluice` broker: it answers chosen requests itself with an
error code (NOT_LEADER_OR_FOLLOWER, NOT_COORDINATOR, ...), shows partitions
without a leader in Metadata, or closes a connection, and forwards the rest.

Metadata and FindCoordinator answers name the proxy instead of the broker, so
every connection the client opens goes through it. The ApiVersions answer caps
the versions of the APIs the proxy reads or writes at simple (non-flexible)
ones, so it needs no full protocol codec.
"""

import asyncio
import collections
import socket
import struct
import threading

PRODUCE, FETCH, METADATA, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP, HEARTBEAT, API_VERSIONS = (
    0, 1, 3, 9, 10, 11, 12, 18)

# The highest version of each API the proxy parses; the client is told no more.
VERSION_CAPS = {PRODUCE: 3, FETCH: 4, METADATA: 1, OFFSET_FETCH: 2, FIND_COORDINATOR: 1,
                JOIN_GROUP: 4, HEARTBEAT: 1}

CLOSE = "close"
HOLD = "hold"


class Reader:
    """Big-endian Kafka primitives from a bytes object."""

    def __init__(self, data: bytes, at: int = 0):
        self.data, self.at = data, at

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.at:self.at + n].decode()
        self.at += n
        return s

    def skip_bytes(self):
        n = self.take(">i")
        self.at += max(n, 0)

    def array(self, item):
        return [item() for _ in range(self.take(">i"))]


def string(s) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def array(items, encode) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(encode(i) for i in items)


def request_body(frame: bytes) -> Reader:
    """The body of a non-flexible request (header v1: key, version, correlation id, client id)."""
    r = Reader(frame, 8)
    r.string()
    return r


def produce_partitions(frame: bytes):
    """(acks, [(topic, [partition, ...]), ...]) of a Produce v3 request."""
    r = request_body(frame)
    r.string()  # transactional id
    acks, _timeout = r.take(">hi")

    def topic():
        name = r.string()

        def partition():
            index = r.take(">i")
            r.skip_bytes()
            return index
        return name, r.array(partition)
    return acks, r.array(topic)


def fetch_partitions(frame: bytes):
    """[(topic, [partition, ...]), ...] of a Fetch v4 request."""
    r = request_body(frame)
    r.take(">iiiib")

    def topic():
        name = r.string()

        def partition():
            index, _offset, _max = r.take(">iqi")
            return index
        return name, r.array(partition)
    return r.array(topic)


def error_response(api_key: int, frame: bytes, code: int) -> bytes:
    """The proxy's own answer (body, no header) to a request: `code` everywhere."""
    if api_key == PRODUCE:
        _acks, topics = produce_partitions(frame)
        return array(topics, lambda t: string(t[0]) + array(
            t[1], lambda p: struct.pack(">ihqq", p, code, -1, -1))) + struct.pack(">i", 0)
    if api_key == FETCH:
        return struct.pack(">i", 0) + array(fetch_partitions(frame), lambda t: string(t[0]) + array(
            t[1], lambda p: struct.pack(">ihqqii", p, code, -1, -1, -1, -1)))
    if api_key == FIND_COORDINATOR:
        return struct.pack(">ih", 0, code) + string(None) + struct.pack(">i", -1) + string("") + \
            struct.pack(">i", -1)
    if api_key == JOIN_GROUP:
        return struct.pack(">ihi", 0, code, -1) + string("") + string("") + string("") + \
            struct.pack(">i", 0)
    if api_key == HEARTBEAT:
        return struct.pack(">ih", 0, code)
    if api_key == OFFSET_FETCH:
        return struct.pack(">ih", 0, code)  # no topics, the group's error
    raise ValueError(f"the proxy cannot answer API {api_key}")


def cap_versions(body: bytes) -> bytes:
    """ApiVersions v0-2: error code, [key, min, max], (v1+) throttle."""
    r = Reader(body)
    error = r.take(">h")
    keys = r.array(lambda: r.take(">hhh"))
    capped = [(k, lo, min(hi, VERSION_CAPS.get(k, hi))) for k, lo, hi in keys]
    return struct.pack(">h", error) + array(capped, lambda k: struct.pack(">hhh", *k)) + body[r.at:]


def rewrite_metadata(body: bytes, host: str, port: int, leaderless: bool) -> bytes:
    """Metadata v1: every broker becomes the proxy; `leaderless`: every
    partition LEADER_NOT_AVAILABLE with leader -1, as a fresh Kafka topic shows."""
    r = Reader(body)

    def broker():
        node = r.take(">i")
        r.string()
        r.take(">i")
        rack = r.string()
        return struct.pack(">i", node) + string(host) + struct.pack(">i", port) + string(rack)
    brokers = r.array(broker)
    controller = r.take(">i")

    def topic():
        error = r.take(">h")
        name = r.string()
        internal = r.take(">b")

        def partition():
            p_error, index, leader = r.take(">hii")
            replicas = r.array(lambda: r.take(">i"))
            isr = r.array(lambda: r.take(">i"))
            if leaderless:
                p_error, leader = 5, -1
            return struct.pack(">hii", p_error, index, leader) + \
                array(replicas, lambda n: struct.pack(">i", n)) + array(isr, lambda n: struct.pack(">i", n))
        parts = r.array(partition)
        return struct.pack(">h", error) + string(name) + struct.pack(">b", internal) + \
            struct.pack(">i", len(parts)) + b"".join(parts)
    topics = r.array(topic)
    return struct.pack(">i", len(brokers)) + b"".join(brokers) + struct.pack(">i", controller) + \
        struct.pack(">i", len(topics)) + b"".join(topics)


def rewrite_find_coordinator(body: bytes, host: str, port: int) -> bytes:
    """FindCoordinator v1: throttle, error, message, node, host, port."""
    r = Reader(body)
    throttle, error = r.take(">ih")
    message = r.string()
    node = r.take(">i")
    if error != 0:
        return body
    return struct.pack(">ih", throttle, error) + string(message) + struct.pack(">i", node) + \
        string(host) + struct.pack(">i", port)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


class FaultProxy:
    """`answers[api_key]`: error codes the proxy answers the next requests of
    that API with, one per request, in order (then it forwards); `close_at`:
    (api_key, n): the n-th request of that API (1-based) closes the client's
    connection unforwarded, after the answers to its earlier requests;
    `hold_at`: (api_key, n): the n-th request of that API gets no answer and
    the connection stays open, forwarding nothing more (a hung broker);
    `leaderless_metadata`: so many Metadata answers show no leaders.
    `injected` counts what was done."""

    def __init__(self, upstream: str, answers=None, close_at=(), hold_at=(), leaderless_metadata=0):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.answers = {k: collections.deque(v) for k, v in (answers or {}).items()}
        self.close_at = set(close_at)
        self.hold_at = set(hold_at)
        self.leaderless_metadata = leaderless_metadata
        self.seen = collections.Counter()
        self.injected = collections.Counter()
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None
        self.port = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]

        async def serve():
            return await asyncio.start_server(self.connection, sock=sock)
        self.server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    def __exit__(self, *exc):
        async def shutdown():
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def action(self, api_key: int):
        """What to do with the next request of `api_key`: CLOSE, an error code, or None (forward)."""
        with self.lock:
            self.seen[api_key] += 1
            if (api_key, self.seen[api_key]) in self.close_at:
                self.injected["closed"] += 1
                return CLOSE
            if (api_key, self.seen[api_key]) in self.hold_at:
                self.injected["held"] += 1
                return HOLD
            pending = self.answers.get(api_key)
            if pending:
                return pending.popleft()
            return None

    async def connection(self, client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        replies = asyncio.Queue()  # futures of the answers in request order, then CLOSE
        waiting = {}  # correlation id -> (future, api key, version)

        async def from_client():
            try:
                while True:
                    frame = await read_frame(client_reader)
                    api_key, version, correlation_id = struct.unpack_from(">hhi", frame)
                    action = self.action(api_key)
                    if action == CLOSE:
                        return
                    if action == HOLD:
                        # Nothing more is answered on this connection: swallow the rest.
                        replies.put_nowait(self.loop.create_future())
                        while True:
                            await read_frame(client_reader)
                    future = self.loop.create_future()
                    if action is not None:
                        with self.lock:
                            self.injected[(api_key, action)] += 1
                            if api_key == PRODUCE:
                                self.injected["produce partitions"] += sum(
                                    len(p) for _, p in produce_partitions(frame)[1])
                        future.set_result(struct.pack(">i", correlation_id)
                                          + error_response(api_key, frame, action))
                        replies.put_nowait(future)
                        continue
                    if not (api_key == PRODUCE and produce_partitions(frame)[0] == 0):  # acks=0: no answer
                        waiting[correlation_id] = (future, api_key, version)
                        replies.put_nowait(future)
                    upstream_writer.write(struct.pack(">i", len(frame)) + frame)
                    await upstream_writer.drain()
            finally:
                # The client's answers so far are written, then the connection closes.
                replies.put_nowait(CLOSE)

        async def from_upstream():
            try:
                while True:
                    frame = await read_frame(upstream_reader)
                    correlation_id = struct.unpack_from(">i", frame)[0]
                    future, api_key, version = waiting.pop(correlation_id)
                    future.set_result(frame[:4] + self.rewrite(api_key, version, frame[4:]))
            finally:
                for future, _, _ in waiting.values():
                    if not future.done():
                        future.set_exception(ConnectionError("the broker closed the connection"))
                replies.put_nowait(CLOSE)

        async def to_client():
            while True:
                reply = await replies.get()
                if reply == CLOSE:
                    return
                frame = await reply
                client_writer.write(struct.pack(">i", len(frame)) + frame)
                await client_writer.drain()

        readers = [asyncio.ensure_future(t()) for t in (from_client, from_upstream)]
        try:
            await to_client()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for task in readers:
                task.cancel()
            for writer in (client_writer, upstream_writer):
                writer.close()

    def rewrite(self, api_key: int, version: int, body: bytes) -> bytes:
        if api_key == API_VERSIONS and version <= 2:
            return cap_versions(body)
        if api_key == METADATA and version == 1:
            leaderless = False
            with self.lock:
                if self.leaderless_metadata > 0:
                    self.leaderless_metadata -= 1
                    self.injected["leaderless metadata"] += 1
                    leaderless = True
            return rewrite_metadata(body, "127.0.0.1", self.port, leaderless)
        if api_key == FIND_COORDINATOR and version == 1:
            return rewrite_find_coordinator(body, "127.0.0.1", self.port)
        return body
