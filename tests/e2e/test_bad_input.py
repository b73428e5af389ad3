"""Bad input never takes the broker down: each case gets an error response or
a closed connection, and another client is served afterwards."""

import socket
import struct
import subprocess

from kafka_wire import batch, closed_by_peer, read_response, record, request

API_VERSIONS = 18
METADATA = 3


def still_served(broker):
    out = subprocess.run(["kcat", "-b", broker.bootstrap, "-L"], capture_output=True, timeout=30, check=True)
    assert b"1 brokers" in out.stdout


def connect(broker):
    return socket.create_connection(("127.0.0.1", broker.port), timeout=10)


def test_api_versions_of_an_unknown_version_answers_unsupported_with_the_list(broker):
    with connect(broker) as s:
        s.sendall(request(API_VERSIONS, 99, 7))
        response = read_response(s)
    correlation_id, error_code, count = struct.unpack(">ihi", response[:10])
    assert correlation_id == 7
    assert error_code == 35  # UNSUPPORTED_VERSION
    keys = {struct.unpack(">hhh", response[10 + 6 * i: 16 + 6 * i])[0] for i in range(count)}
    assert {0, 1, 2, 3, 18, 19, 20, 32, 37} <= keys
    still_served(broker)


def test_api_versions_v0_lists_supported_apis(broker):
    with connect(broker) as s:
        s.sendall(request(API_VERSIONS, 0, 1))
        response = read_response(s)
    correlation_id, error_code, count = struct.unpack(">ihi", response[:10])
    assert (correlation_id, error_code) == (1, 0)
    versions = {}
    for i in range(count):
        key, low, high = struct.unpack(">hhh", response[10 + 6 * i: 16 + 6 * i])
        versions[key] = (low, high)
    assert versions[0] == (3, 9)  # Produce
    assert versions[1] == (4, 16)  # Fetch (13+: topics by id)
    assert versions[3] == (1, 12)  # Metadata
    assert versions[9] == (1, 9)  # OffsetFetch (8+: several groups)
    assert versions[21] == (0, 2)  # DeleteRecords
    assert versions[33] == (0, 2)  # AlterConfigs
    assert versions[44] == (0, 1)  # IncrementalAlterConfigs
    # Not implemented, so not advertised: transactions (AddPartitionsToTxn 24, EndTxn 26).
    assert 24 not in versions and 26 not in versions


def test_oversized_frame_closes_the_connection(broker):
    with connect(broker) as s:
        s.sendall(struct.pack(">i", 200 * 1024 * 1024) + b"\0" * 64)
        assert closed_by_peer(s)
    still_served(broker)
    assert "over max_frame_bytes" in broker.log()


def test_garbage_bytes(broker):
    with connect(broker) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_by_peer(s)
    still_served(broker)


def test_unknown_api_key(broker):
    with connect(broker) as s:
        s.sendall(request(9999, 0, 3))
        assert closed_by_peer(s)
    still_served(broker)
    assert "unsupported API key 9999" in broker.log()


def test_version_out_of_range(broker):
    with connect(broker) as s:
        s.sendall(request(METADATA, 0, 4, body=struct.pack(">i", 0)))
        assert closed_by_peer(s)
    still_served(broker)


def test_truncated_request_body(broker):
    with connect(broker) as s:
        # Metadata v1 announcing one topic name of 100 bytes, then nothing.
        s.sendall(request(METADATA, 1, 5, body=struct.pack(">ih", 1, 100)))
        assert closed_by_peer(s)
    with connect(broker) as s:
        # A size prefix promising more than is ever sent, then the client leaves.
        s.sendall(struct.pack(">i", 1000) + b"\0\x03")
    still_served(broker)


def test_produce_with_invalid_acks_and_corrupt_batch(broker):
    from confluent_kafka import Producer, KafkaError
    # A well-formed client cannot send acks=7 or a bad CRC; build the produce by hand.
    topic = b"raw-topic"
    subprocess.run(["kcat", "-b", broker.bootstrap, "-t", "raw-topic", "-P"], input=b"seed\n", check=True, timeout=30)
    batch = bytearray(valid_batch())
    def produce_body(acks, records):
        return (struct.pack(">h", -1) + struct.pack(">hi", acks, 5000) + struct.pack(">i", 1)
                + struct.pack(">h", len(topic)) + topic + struct.pack(">i", 1)
                + struct.pack(">i", 0) + struct.pack(">i", len(records)) + bytes(records))
    def produce_error(acks, records):
        with connect(broker) as s:
            s.sendall(request(0, 3, 9, body=produce_body(acks, records)))
            response = read_response(s)
        # correlation id, topics[1], name, partitions[1], index, error_code
        at = 4 + 4 + 2 + len(topic) + 4 + 4
        return struct.unpack(">h", response[at:at + 2])[0]
    assert produce_error(7, batch) == 21  # INVALID_REQUIRED_ACKS
    corrupt = bytearray(batch)
    corrupt[-1] ^= 0xFF
    assert produce_error(-1, corrupt) == 2  # CORRUPT_MESSAGE
    old = bytearray(batch)
    old[16] = 1
    assert produce_error(-1, old) == 43  # UNSUPPORTED_FOR_MESSAGE_FORMAT
    assert produce_error(-1, batch) == 0
    still_served(broker)


def valid_batch() -> bytes:
    """One uncompressed v2 batch with one record (value b"hello")."""
    return batch(record(0, b"hello"), 1, timestamp=1000)


def test_an_array_count_of_two_billion_is_refused_not_allocated(broker):
    with connect(broker) as s:
        # Metadata v1 declaring 2^31-1 topics and sending none.
        s.sendall(request(METADATA, 1, 6, body=struct.pack(">i", 0x7FFFFFFF)))
        assert closed_by_peer(s)
    assert broker.alive()
    still_served(broker)


def test_absurd_partition_counts_are_refused(broker):
    from confluent_kafka.admin import AdminClient, NewTopic, NewPartitions
    from confluent_kafka import KafkaError
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    try:
        client.create_topics([NewTopic("huge", 50_000, 1)])["huge"].result(30)
        raise AssertionError("created")
    except Exception as e:
        assert e.args[0].code() == KafkaError.INVALID_PARTITIONS
    client.create_topics([NewTopic("small", 1, 1)])["small"].result(30)
    try:
        client.create_partitions([NewPartitions("small", 50_000)])["small"].result(30)
        raise AssertionError("grown")
    except Exception as e:
        assert e.args[0].code() == KafkaError.INVALID_PARTITIONS
    still_served(broker)
