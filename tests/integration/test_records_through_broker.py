"""Odd records, produced to a real broker, reach SDK workers through a real sidecar unchanged.

tests/component/test_records_passthrough.py proves the same with fake records; here the bytes
go through a Kafka producer, the broker's storage, librdkafka's fetch and the sidecar process.
The documented exceptions (docs/operations.md, "Records pass through unchanged") are checked
as documented: a null value or null header value arrives empty, and a record whose header key
is not UTF-8 (written byte by byte: the Python client cannot) arrives without its headers.

The second test is the documented policy for a record larger than a worker's byte limit: it
goes alone once nothing else is outstanding, nothing joins it until it is settled, and its
partition flows on to the log end.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka.admin import AdminClient

import lowwater
from coordinator.embedded import SidecarProcess
from tests.integration.workload import logs_on_failure, wait_committed_to_end
from tests.support.aio import async_test, until
from tests.support.broker import (
    METADATA_TIMEOUT_S,
    OutRecord,
    TopicFactory,
    produce,
    unique_name,
    wait_until,
)
from tests.support.rawkafka import produce_raw

pytestmark = pytest.mark.timeout(180)

WAIT_S = 60.0
"""Seconds for deliveries (a group join on Tansu takes ~3 s) or commits to arrive."""
QUIET_S = 1.0
"""Seconds during which a delivery that must not come is watched for."""
BIG = 900 * 1024
"""A large record: under the producer's and Kafka's default 1 MB message limit, and near the
sidecar's 1 MiB stream messages."""
ODD_HEADERS: list[tuple[str, bytes | None]] = [
    ("h", b"\x00\xff\xfe not UTF-8 \x80"),
    ("h", b""),  # a repeated key, an empty value
    ("h", b"third"),
    ("", b"an empty key"),
    ("ключ-ü", b"\xc3\x28"),  # a non-ASCII key; an invalid UTF-8 sequence as value
    ("null", None),  # Kafka's null header value
]
TIMESTAMP_MS = 1_700_000_000_123
RECORDS: list[OutRecord] = [
    OutRecord(value=b"", key=b""),  # empty value, empty (not null) key
    OutRecord(value=None, key=None),  # a tombstone: null value, null key
    OutRecord(value=bytes(range(256)) * 4, key=bytes(range(256)), timestamp_ms=TIMESTAMP_MS),
    OutRecord(value=b"v", key=b"k", headers=ODD_HEADERS),
    OutRecord(value=bytes(range(256)) * (BIG // 256), key=b"big"),
]
"""Produced with confluent-kafka to partition 0, at offsets 0 to 4."""
RAW_KEY, RAW_VALUE = b"\x00raw key\xff", b"raw value \xff"
RAW_HEADERS: list[tuple[bytes, bytes | None]] = [(b"fine", b"1"), (b"\xff\xfe", b"bad key")]
"""The record at offset 5, written byte by byte: its second header key is not UTF-8."""

Seen = tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...]]


def expected(record: OutRecord) -> Seen:
    """(key, value, headers) as a worker must see ``record``: null values arrive empty."""
    headers = tuple((k, v or b"") for k, v in record.headers or ())
    return record.key, record.value or b"", headers


def partition_leader(bootstrap: str, topic: str, partition: int) -> str:
    """``host:port`` of the broker leading ``topic[partition]``."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(
        topic, timeout=METADATA_TIMEOUT_S)
    broker = metadata.brokers[metadata.topics[topic].partitions[partition].leader]
    return f"{broker.host}:{broker.port}"


@async_test
async def test_odd_records_reach_the_worker_byte_for_byte(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic, group = new_topic(1), unique_name("g")
    produce(kafka_bootstrap, topic, [r._replace(partition=0) for r in RECORDS])
    raw_offset = produce_raw(partition_leader(kafka_bootstrap, topic, 0), topic, 0,
                             key=RAW_KEY, value=RAW_VALUE, headers=RAW_HEADERS)
    assert raw_offset == len(RECORDS)
    seen: dict[int, list[Seen]] = {}
    timestamps: dict[int, datetime | None] = {}

    async def handle(msg: lowwater.Message) -> None:
        seen.setdefault(msg.offset, []).append((msg.key, msg.value, msg.headers))
        timestamps[msg.offset] = msg.timestamp
        if msg.offset == raw_offset and msg.attempt == 1:
            # "It is redelivered the same way if it comes back": the Kafka client, asked
            # again for headers it could not decode, would crash the sidecar.
            raise lowwater.Retry(delay=timedelta(0))

    sidecar = SidecarProcess(kafka_bootstrap, group, [topic])
    with logs_on_failure(sidecar), sidecar:
        async with lowwater.AsyncWorker(sidecar.target, handle, max_in_flight=10):
            await until(lambda: len(seen.get(raw_offset, [])) == 2 and len(seen) == 6, WAIT_S)
        end = await asyncio.to_thread(wait_committed_to_end, kafka_bootstrap, group, topic)
        assert sidecar.stop() == 0
    assert end == {0: raw_offset + 1}
    for offset, record in enumerate(RECORDS):
        assert seen[offset] == [expected(record)], offset
    assert seen[0][0][0] == b"" and seen[1][0][0] is None  # an empty key is not a null key
    assert len(seen[4][0][1]) == BIG
    assert timestamps[2] == datetime.fromtimestamp(TIMESTAMP_MS / 1000, UTC)
    assert seen[raw_offset] == [(RAW_KEY, RAW_VALUE, ())] * 2  # without headers, twice
    warning = f"{topic}[0]@{raw_offset}: the Kafka client cannot decode its headers"
    assert sidecar.log(200).count(warning) == 1, sidecar.log(200)  # once: then none kept


SMALL = 10_000
"""Value bytes of the records around the large one: six fit the byte limit, with no key."""
BYTE_LIMIT = 64 * 1024
"""The worker's ``max_in_flight_bytes``: far below the large record."""


@async_test
async def test_a_record_over_the_byte_limit_goes_alone_and_its_partition_flows_on(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """Offsets 0-4 are small, 5 is over the worker's byte limit, 6-10 are small. The worker
    holds every record until the test releases it, so what the sidecar sends meanwhile shows."""
    topic, group = new_topic(1), unique_name("g")
    big = 5
    values = [b"s" * SMALL] * big + [b"B" * BIG] + [b"s" * SMALL] * 5
    produce(kafka_bootstrap, topic, [OutRecord(value=v, partition=0) for v in values])
    arrived: list[int] = []
    release = {offset: asyncio.Event() for offset in range(len(values))}
    sizes: dict[int, int] = {}

    async def handle(msg: lowwater.Message) -> None:
        arrived.append(msg.offset)
        sizes[msg.offset] = len(msg.value)
        await release[msg.offset].wait()

    async def nothing_more_within(seconds: float) -> bool:
        count = len(arrived)
        try:
            await until(lambda: len(arrived) > count, seconds)
        except AssertionError:
            return True
        return False

    def release_all(offsets: range) -> None:
        for offset in offsets:
            release[offset].set()

    sidecar = SidecarProcess(kafka_bootstrap, group, [topic])
    with logs_on_failure(sidecar), sidecar:
        async with lowwater.AsyncWorker(sidecar.target, handle, max_in_flight=100,
                                        max_in_flight_bytes=BYTE_LIMIT):
            await until(lambda: len(arrived) >= big, WAIT_S)
            assert sorted(arrived) == list(range(big))  # the large one waits
            # Every record is fetched: only the window keeps the large one back.
            await asyncio.to_thread(
                wait_until, lambda: sidecar.status().partitions[0].pending_count == len(values)
                or None, timeout=WAIT_S, what="every record fetched")
            assert await nothing_more_within(QUIET_S), arrived
            release_all(range(big))
            await until(lambda: len(arrived) > big, WAIT_S)
            assert arrived[big:] == [big]  # alone
            assert await nothing_more_within(QUIET_S), arrived  # nothing joins it
            release[big].set()
            await until(lambda: len(arrived) == len(values), WAIT_S)
            assert sorted(arrived[big + 1:]) == list(range(big + 1, len(values)))
            release_all(range(big + 1, len(values)))
            end = await asyncio.to_thread(wait_committed_to_end, kafka_bootstrap, group, topic)
        assert sidecar.stop() == 0
    assert end == {0: len(values)}
    assert sizes == {offset: len(value) for offset, value in enumerate(values)}
