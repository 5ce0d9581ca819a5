"""Records reach workers unchanged, whatever their bytes, and size never stalls a partition.

Through the real servicer over real gRPC: the SDK's ``AsyncWorker`` for what a worker sees,
raw streams where the flow-control window itself is under test.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest

import lowwater
from coordinator.core.model import TopicPartition
from coordinator.kafka.records import segments
from lowwater.v1 import coordinator_pb2 as pb
from tests.support.aio import async_test

from .harness import FakeMessage, Harness, harness

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
"""Seconds a test waits for a condition before failing."""
GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024
"""gRPC's default receive limit (the SDK lifts it; the sidecar sends up to
``max_send_message_bytes``, 64 MiB by default)."""
ODD_HEADERS: list[tuple[str, bytes | None]] = [
    ("h", b"\xff\xfe\x00not utf-8"),
    ("h", b""),  # a repeated key, an empty value
    ("h", b"third"),
    ("", b"an empty key"),
    ("ключ-ü", b"\x80"),
    ("null", None),  # Kafka's null header value
]
RECORDS: dict[int, dict[str, object]] = {
    0: {"_value": b"", "_key": b""},  # empty value, empty (not null) key
    1: {"_value": None, "_key": None},  # a tombstone: null value, null key
    2: {"_value": bytes(range(256)) * 3, "_key": bytes(range(256))},
    3: {"_value": b"v", "_headers": ODD_HEADERS},
    4: {"_value": bytes(range(256)) * (GRPC_DEFAULT_LIMIT // 256 + 1), "_key": b"big"},
    5: {"_value": b"headers lost", "_key": b"k", "_headers": [("x", b"1")],
        "_undecodable_headers": True},
}
"""Offset -> the fake record's fields."""


def expected(offset: int) -> tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...]]:
    """(key, value, headers) as a worker must see them.

    The proto cannot tell a null value or a null header value from an empty one: both
    arrive empty. Headers the Kafka client cannot decode are dropped (see convert.py).
    """
    fields = RECORDS[offset]
    value = fields.get("_value")
    headers = () if fields.get("_undecodable_headers") else tuple(
        (k, v or b"") for k, v in fields.get("_headers") or [])  # type: ignore[attr-defined]
    return fields.get("_key"), value or b"", headers  # type: ignore[return-value]


@async_test
async def test_odd_records_reach_the_worker_byte_for_byte(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="coordinator.records")
    seen: dict[int, list[tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...]]]] = {}
    done = asyncio.Event()

    async def handle(msg: lowwater.Message) -> None:
        seen.setdefault(msg.offset, []).append((msg.key, msg.value, msg.headers))
        if msg.offset == 5 and msg.attempt == 1:  # redelivered: headers() is called again
            raise lowwater.Retry(delay=timedelta(0))
        if sum(map(len, seen.values())) == len(RECORDS) + 1:
            done.set()

    async with harness() as h:
        h.assign("t", 1)
        h.engine.intake(segments([_fake(o) for o in sorted(RECORDS)]))
        async with lowwater.AsyncWorker(h.target, handle, max_in_flight=10):
            await asyncio.wait_for(done.wait(), WAIT)
        await _until(lambda: h.engine.ledger.partitions[TopicPartition("t", 0)].in_flight == 0)
        assert [p.offset for p in h.commit_points()] == [len(RECORDS)]
    for offset in RECORDS:
        attempts = seen[offset]
        assert attempts[0] == expected(offset), offset
        assert attempts[-1] == expected(offset), offset
    assert len(seen[4][0][1]) > GRPC_DEFAULT_LIMIT
    assert seen[0][0][0] == b"" and seen[1][0][0] is None  # an empty key is not a null key
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "t[0]@5: the Kafka client cannot decode its headers" in warning


def _fake(offset: int) -> FakeMessage:
    return FakeMessage("t", 0, offset, **RECORDS[offset])  # type: ignore[arg-type]


async def _until(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Window:
    """A raw stream with a byte limit; a task collects what arrives."""

    def __init__(self, h: Harness, max_bytes: int) -> None:
        self.call = h.coordinator.Stream()
        self.max_bytes = max_bytes
        self.got: asyncio.Queue[list[pb.Delivery]] = asyncio.Queue()

    async def open(self) -> None:
        await self.call.write(pb.StreamRequest(open=pb.OpenStream(
            worker_id="w", flow_control=pb.FlowControl(
                max_in_flight_messages=100, max_in_flight_bytes=self.max_bytes))))
        assert (await self.call.read()).HasField("opened")
        asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while (resp := await self.call.read()) is not grpc.aio.EOF:
            if resp.deliveries:
                self.got.put_nowait(list(resp.deliveries))

    async def next(self) -> list[pb.Delivery]:
        return await asyncio.wait_for(self.got.get(), WAIT)

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.got.get(), seconds)
        except TimeoutError:
            return True
        return False

    async def ack(self, deliveries: list[pb.Delivery]) -> None:
        await self.call.write(pb.StreamRequest(ack_msg_ids=[d.msg_id for d in deliveries]))


@async_test
async def test_a_record_over_the_byte_limit_goes_alone_and_the_partition_flows_on() -> None:
    """FlowControl: a record larger than ``max_in_flight_bytes`` waits until nothing else is
    outstanding, then goes alone; nothing joins it until it is settled; then the records
    behind it flow within the limit again. Its partition never stalls."""
    limit = 1000
    async with harness() as h:
        h.assign("t", 1)
        h.feed("t", 0, [0, 1], _value=b"s" * 400)
        h.feed("t", 0, [2], _value=b"B" * (limit * 5))
        h.feed("t", 0, [3, 4, 5, 6], _value=b"s" * 400)
        w = Window(h, limit)
        await w.open()
        first = await w.next()
        assert [d.offset for d in first] == [0, 1]  # 800 bytes: the big one does not fit
        assert await w.nothing_within(0.3)
        await w.ack(first)
        alone = await w.next()
        assert [(d.offset, len(d.value)) for d in alone] == [(2, limit * 5)]
        assert await w.nothing_within(0.3)  # nothing joins it: it already exceeds the limit
        await w.ack(alone)
        behind = await w.next()
        assert [d.offset for d in behind] == [3, 4]  # within the limit again
        await w.ack(behind)
        rest = await w.next()
        assert [d.offset for d in rest] == [5, 6]
        await w.ack(rest)
        part = h.engine.ledger.partitions[TopicPartition("t", 0)]
        await _until(lambda: part.in_flight == 0)
        assert part.offsets.commit_offset == 7
        w.call.cancel()


@async_test
async def test_a_big_record_first_in_line_goes_at_once() -> None:
    async with harness() as h:
        h.assign("t", 1)
        h.feed("t", 0, [0], _value=b"B" * 10_000)
        h.feed("t", 0, [1], _value=b"s")
        w = Window(h, 10)
        await w.open()
        assert [d.offset for d in await w.next()] == [0]
        assert await w.nothing_within(0.3)  # the window stays full until it is settled
        w.call.cancel()
        assert h.engine.ledger.partitions[TopicPartition("t", 0)].offsets.commit_offset == 0

