"""Minimal hand-built Kafka frames, for the bad-input tests only (real clients
never send these)."""

import socket
import struct


def request(api_key: int, version: int, correlation_id: int, body: bytes = b"", client_id: bytes = b"raw") -> bytes:
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def read_response(sock: socket.socket) -> bytes:
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    return recv_exact(sock, size)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


# --- v2 record batches, built by hand so that tests can break them ---------

def zigzag(n: int) -> bytes:
    """A Kafka varint/varlong (zigzag, 7 bits a byte)."""
    z = (n << 1) ^ (n >> 63)
    out = b""
    while True:
        if z < 0x80:
            return out + bytes([z])
        out += bytes([(z & 0x7F) | 0x80])
        z >>= 7


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def record(offset_delta: int, value: bytes, key: bytes = None, timestamp_delta: int = 0) -> bytes:
    """One record: length, attributes, timestamp delta, offset delta, key, value, no headers."""
    body = bytes([0]) + zigzag(timestamp_delta) + zigzag(offset_delta)
    body += zigzag(-1) if key is None else zigzag(len(key)) + key
    body += zigzag(len(value)) + value + zigzag(0)
    return zigzag(len(body)) + body


def batch(section: bytes, records_count: int, attributes: int = 0, last_offset_delta: int = None,
          producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
          timestamp: int = 1_700_000_000_000) -> bytes:
    """A v2 batch around a records section (already compressed if the attributes say so), CRC filled in."""
    if last_offset_delta is None:
        last_offset_delta = records_count - 1
    after_crc = struct.pack(">hiqqqhii", attributes, last_offset_delta, timestamp, timestamp,
                            producer_id, producer_epoch, base_sequence, records_count) + section
    return struct.pack(">qiibI", 0, 4 + 1 + 4 + len(after_crc), 0, 2, crc32c(after_crc)) + after_crc


def produce_v7(sock: socket.socket, topic: str, partition: int, records: bytes,
               correlation_id: int = 1, acks: int = -1):
    """Sends one Produce v7 with one partition; returns (error_code, base_offset)."""
    name = topic.encode()
    body = (struct.pack(">hhi", -1, acks, 10_000) + struct.pack(">i", 1)
            + struct.pack(">h", len(name)) + name + struct.pack(">i", 1)
            + struct.pack(">ii", partition, len(records)) + records)
    sock.sendall(request(0, 7, correlation_id, body=body))
    response = read_response(sock)
    at = 4 + 4 + 2 + len(name) + 4 + 4  # correlation id, topics[1], name, partitions[1], index
    error_code, base_offset = struct.unpack(">hq", response[at:at + 10])
    return error_code, base_offset


def fetch_v4(topic: str, partition: int, offset: int, max_bytes: int, correlation_id: int = 1,
             max_wait_ms: int = 0) -> bytes:
    """A whole Fetch v4 request frame for one partition."""
    name = topic.encode()
    body = (struct.pack(">iiiib", -1, max_wait_ms, 1, max_bytes, 0) + struct.pack(">i", 1)
            + struct.pack(">h", len(name)) + name + struct.pack(">i", 1)
            + struct.pack(">iqi", partition, offset, max_bytes))
    return request(1, 4, correlation_id, body=body)


def offset_for_leader_epoch_v2(sock: socket.socket, topic: str, partition: int,
                               current_leader_epoch: int, leader_epoch: int, correlation_id: int = 1):
    """OffsetForLeaderEpoch v2 for one partition; returns (error_code, leader_epoch, end_offset)."""
    name = topic.encode()
    body = (struct.pack(">i", 1) + struct.pack(">h", len(name)) + name + struct.pack(">i", 1)
            + struct.pack(">iii", partition, current_leader_epoch, leader_epoch))
    sock.sendall(request(23, 2, correlation_id, body=body))
    response = read_response(sock)
    at = 4 + 4 + 4 + 2 + len(name) + 4  # correlation id, throttle, topics[1], name, partitions[1]
    error_code, _, epoch, end_offset = struct.unpack(">hiiq", response[at:at + 18])
    return error_code, epoch, end_offset


def fetch_v9_error(sock: socket.socket, topic: str, partition: int, offset: int,
                   current_leader_epoch: int, correlation_id: int = 1) -> int:
    """Fetch v9 (carries the client's leader epoch) for one partition; returns its error code."""
    name = topic.encode()
    body = (struct.pack(">iiiibii", -1, 0, 1, 1 << 20, 0, 0, -1) + struct.pack(">i", 1)
            + struct.pack(">h", len(name)) + name + struct.pack(">i", 1)
            + struct.pack(">iiqqi", partition, current_leader_epoch, offset, -1, 1 << 20)
            + struct.pack(">i", 0))
    sock.sendall(request(1, 9, correlation_id, body=body))
    response = read_response(sock)
    at = 4 + 4 + 2 + 4 + 4 + 2 + len(name) + 4 + 4  # ..., responses[1], name, partitions[1], index
    return struct.unpack(">h", response[at:at + 2])[0]


def fetch_v7(sock: socket.socket, session_id: int, epoch: int, partitions, forgotten=(),
             correlation_id: int = 1, max_wait_ms: int = 0):
    """One Fetch v7 (the first with sessions): `partitions` are (topic, partition, offset),
    `forgotten` (topic, partition). Returns (error_code, session_id, {(topic, partition):
    (error_code, high_watermark, records_bytes)})."""
    def grouped(items):
        topics = {}
        for topic, *rest in items:
            topics.setdefault(topic, []).append(rest)
        return topics
    body = struct.pack(">iiiibii", -1, max_wait_ms, 1, 1 << 20, 0, session_id, epoch)
    topics = grouped(partitions)
    body += struct.pack(">i", len(topics))
    for topic, parts in topics.items():
        name = topic.encode()
        body += struct.pack(">h", len(name)) + name + struct.pack(">i", len(parts))
        for partition, offset in parts:
            body += struct.pack(">iqqi", partition, offset, -1, 1 << 20)
    gone = grouped(forgotten)
    body += struct.pack(">i", len(gone))
    for topic, parts in gone.items():
        name = topic.encode()
        body += struct.pack(">h", len(name)) + name + struct.pack(">i", len(parts))
        body += b"".join(struct.pack(">i", p) for (p,) in parts)
    sock.sendall(request(1, 7, correlation_id, body=body))
    response = read_response(sock)
    _, _, error_code, answered_id, topic_count = struct.unpack(">iihii", response[:18])
    at, answered = 18, {}
    for _ in range(topic_count):
        (length,) = struct.unpack(">h", response[at:at + 2])
        topic = response[at + 2:at + 2 + length].decode()
        at += 2 + length
        (count,) = struct.unpack(">i", response[at:at + 4])
        at += 4
        for _ in range(count):
            partition, perror, hw, _, _, aborted = struct.unpack(">ihqqqi", response[at:at + 34])
            at += 34 + 16 * max(aborted, 0)
            (size,) = struct.unpack(">i", response[at:at + 4])
            at += 4 + max(size, 0)
            answered[(topic, partition)] = (perror, hw, max(size, 0))
    return error_code, answered_id, answered
