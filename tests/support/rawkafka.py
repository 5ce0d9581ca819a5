"""A record written to Kafka byte by byte, for what the Python client cannot produce.

confluent-kafka takes header keys as ``str`` and encodes them as UTF-8, so a header key that
is not UTF-8 (which Kafka stores as bytes, and other clients can write) needs a hand-made
Produce request. This sends one: a record batch (magic 2, uncompressed, no producer id) of one
record, in a Produce request (version 3, the first to carry magic-2 batches, and what every
Kafka and Tansu still take), to a broker that leads the partition: on a single-broker cluster,
the bootstrap broker.

This module must not import pytest.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from typing import Final

PRODUCE_API_KEY: Final = 0
PRODUCE_VERSION: Final = 3
ACKS_ALL: Final = -1
PRODUCE_TIMEOUT_MS: Final = 10_000
"""How long the broker may take to write the record before it answers."""
SOCKET_TIMEOUT_S: Final = 15.0
"""How long to wait for the broker's answer."""
CLIENT_ID: Final = b"lowwater-tests-raw"


class ProduceError(RuntimeError):
    """The broker answered the Produce request with an error code."""


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of a magic-2 record batch."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _varint(value: int) -> bytes:
    """A zigzag varint, as record fields are encoded."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag >= 0x80:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def _field(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def record_batch(key: bytes | None, value: bytes | None,
                 headers: Sequence[tuple[bytes, bytes | None]], timestamp_ms: int) -> bytes:
    """A magic-2 record batch of one record at base offset 0 (the broker assigns offsets)."""
    body = (b"\x00" + _varint(0) + _varint(0)  # attributes, timestamp delta, offset delta
            + _field(key) + _field(value) + _varint(len(headers))
            + b"".join(_field(k) + _field(v) for k, v in headers))
    record = _varint(len(body)) + body
    after_crc = struct.pack(">hiqqqhii", 0, 0, timestamp_ms, timestamp_ms, -1, -1, -1, 1) + record
    after_length = struct.pack(">ibI", -1, 2, crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


def _string(text: bytes) -> bytes:
    return struct.pack(">h", len(text)) + text


def produce_raw(bootstrap: str, topic: str, partition: int, *, key: bytes | None,
                value: bytes | None, headers: Sequence[tuple[bytes, bytes | None]]) -> int:
    """Writes one record as given, byte for byte, to ``topic[partition]``; returns its offset.

    ``bootstrap`` is one ``host:port`` that leads the partition (a single-broker cluster).

    Raises:
        ProduceError: the broker refused the record.
    """
    batch = record_batch(key, value, headers, int(time.time() * 1000))
    request = (struct.pack(">hhi", PRODUCE_API_KEY, PRODUCE_VERSION, 1) + _string(CLIENT_ID)
               + struct.pack(">hhi", -1, ACKS_ALL, PRODUCE_TIMEOUT_MS)  # no transactional id
               + struct.pack(">i", 1) + _string(topic.encode())
               + struct.pack(">iii", 1, partition, len(batch)) + batch)
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S) as conn:
        conn.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _read(conn, 4))
        response = _read(conn, size)
    # correlation id, 1 topic, its name, 1 partition: index, error code, base offset
    name_length = struct.unpack_from(">h", response, 8)[0]
    at = 10 + name_length + 4
    index, error, offset = struct.unpack_from(">ihq", response, at)
    if index != partition or error != 0:
        raise ProduceError(f"{topic}[{index}]: Kafka error code {error}")
    return int(offset)


def _read(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return bytes(data)
