"""Deliveries are packed into stream messages within the size limits, in either form.

A stream opened with ``delivery_batches`` gets DeliveryBatch messages, any other one Delivery
per record; both are cut the same way: messages of at most ``max_send_message_bytes`` (and
of the packing size below it), and a record too big to send at all is answered RETRY for the
worker instead of breaking the stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.model import TopicPartition
from coordinator.runtime.engine import DELIVERY_BATCH, MAX_DELIVERY_BATCH, delivery_batch
from coordinator.service.limits import Limits
from lowwater.message import Batch
from lowwater.v1 import coordinator_pb2 as pb
from tests.support.aio import async_test, until

from .harness import Harness, harness

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
"""Seconds a test waits for a condition before failing."""
LIMIT = 300_000
"""max_send_message_bytes here: two records of RECORD bytes fit a message, three do not."""
RECORD = 100_000
TOO_BIG = 2 * LIMIT
"""Offset 5 is this big: no message can carry it."""


def offsets_and_ids(resp: pb.StreamResponse) -> list[tuple[int, int]]:
    """(offset, msg_id) of each delivery in ``resp``, whichever form it has."""
    out = [(d.offset, d.msg_id) for d in resp.deliveries]
    for b in resp.batches:  # read as the SDK reads them (consecutive offsets are implied)
        out += [(o, b.first_msg_id + i) for i, o in enumerate(Batch.of_batch(b).offsets)]
    return out


@pytest.mark.parametrize("batches", [False, True], ids=["deliveries", "batches"])
@async_test
async def test_messages_stay_within_the_limit_and_a_record_over_it_is_retried(
        batches: bool) -> None:
    async with harness(limits=Limits(max_send_message_bytes=LIMIT)) as h:
        h.assign("t", 1)
        h.feed("t", 0, [0, 1, 2, 3, 4], _value=b"v" * RECORD)
        h.feed("t", 0, [5], _value=b"B" * TOO_BIG)
        h.feed("t", 0, [6, 7], _value=b"v" * RECORD)
        call = h.coordinator.Stream()
        await call.write(pb.StreamRequest(open=pb.OpenStream(
            worker_id="w", flow_control=pb.FlowControl(max_in_flight_messages=100),
            delivery_batches=batches)))
        assert (await call.read()).HasField("opened")
        got: list[int] = []
        sizes: list[int] = []
        while len(got) < 7:
            resp = await asyncio.wait_for(call.read(), WAIT)
            assert resp is not grpc.aio.EOF
            assert not (resp.deliveries and resp.batches)
            assert bool(resp.batches) == batches or not (resp.deliveries or resp.batches)
            sizes.append(resp.ByteSize())
            delivered = offsets_and_ids(resp)
            got += [offset for offset, _ in delivered]
            await call.write(pb.StreamRequest(ack_msg_ids=[m for _, m in delivered]))
        assert got == [0, 1, 2, 3, 4, 6, 7]  # in order, once each, without the big one
        assert max(sizes) <= LIMIT
        assert len(sizes) >= 4  # two records at most per message
        assert h.service.refused["max_send_message_bytes"] >= 1
        part = h.engine.ledger.partitions[TopicPartition("t", 0)]
        # The last ACKs were written, maybe not applied yet: the sidecar reads them on a task of
        # its own. Wait until every record but the big one is finished.
        await until(lambda: list(part.records) == [5])
        assert part.offsets.commit_offset == 5  # held pending: retried, never lost
        assert part.records[5].attempt >= 1
        call.cancel()


async def open_stream(h: Harness, worker: str, max_in_flight: int) -> Any:
    call = h.coordinator.Stream()
    await call.write(pb.StreamRequest(open=pb.OpenStream(
        worker_id=worker, flow_control=pb.FlowControl(max_in_flight_messages=max_in_flight),
        delivery_batches=True)))
    assert (await call.read()).HasField("opened")
    return call


async def answers(call: Any, request: pb.StreamRequest) -> list[tuple[int, int]]:
    """Sends ``request`` then a sentinel ack of an id never issued: the answers before the
    sentinel's are the request's (the stream answers in order)."""
    sentinel = 2**64 - 1
    await call.write(request)
    await call.write(pb.StreamRequest(ack_msg_ids=[sentinel]))
    out: list[tuple[int, int]] = []
    while True:
        resp = await asyncio.wait_for(call.read(), WAIT)
        for r in resp.rejected:
            if r.msg_id == sentinel:
                return out
            out.append((r.msg_id, r.status))


@async_test
async def test_ranges_settle_a_streams_own_batch_and_answer_every_other_id() -> None:
    async with harness() as h:
        h.assign("t", 1)
        a = await open_stream(h, "a", 10)
        h.feed("t", 0, list(range(10)))
        (batch,) = (await asyncio.wait_for(a.read(), WAIT)).batches
        first = batch.first_msg_id
        assert list(Batch.of_batch(batch).offsets) == list(range(10))
        assert not batch.offsets and not batch.attempts  # consecutive, first deliveries
        b = await open_stream(h, "b", 10)
        theirs = pb.StreamRequest(ack_ranges=[pb.MsgIdRange(first_msg_id=first, count=3)])
        assert await answers(b, theirs) == [
            (m, pb.SETTLE_STATUS_NOT_OWNER) for m in range(first, first + 3)]
        (holder,) = [x for x in h.engine.ledger.holders.values() if x.worker_id == "a"]
        assert h.engine.ledger.holder_msg_ids(holder) == list(range(first, first + 10))
        mine = pb.StreamRequest(ack_ranges=[
            pb.MsgIdRange(first_msg_id=first + 2, count=8),  # the end of the batch first
            pb.MsgIdRange(first_msg_id=first, count=4),  # 2 and 3 again: already settled
            pb.MsgIdRange(first_msg_id=first + 1000, count=2),  # never issued
        ])
        assert await answers(a, mine) == [
            (first + 2, pb.SETTLE_STATUS_ALREADY_SETTLED),
            (first + 3, pb.SETTLE_STATUS_ALREADY_SETTLED),
            (first + 1000, pb.SETTLE_STATUS_UNKNOWN), (first + 1001, pb.SETTLE_STATUS_UNKNOWN)]
        part = h.engine.ledger.partitions[TopicPartition("t", 0)]
        assert part.offsets.commit_offset == 10 and part.in_flight == 0
        a.cancel()
        b.cancel()


@given(st.integers(min_value=1, max_value=10**7), st.integers(min_value=1, max_value=10**7))
def test_a_wider_window_never_gets_smaller_messages(a: int, b: int) -> None:
    small, large = sorted((a, b))
    assert DELIVERY_BATCH <= delivery_batch(small) <= delivery_batch(large) <= MAX_DELIVERY_BATCH
    assert delivery_batch(large) == min(MAX_DELIVERY_BATCH, max(DELIVERY_BATCH, large // 4))


@pytest.mark.parametrize(("window", "per_message"), [
    (100, 100), (2000, DELIVERY_BATCH), (4000, 1000), (8000, MAX_DELIVERY_BATCH)])
@async_test
async def test_a_window_is_filled_in_messages_of_a_quarter_of_it(window: int,
                                                                 per_message: int) -> None:
    async with harness(limits=Limits(max_leases_per_stream=window)) as h:
        h.assign("t", 1)
        h.feed("t", 0, list(range(window + 1)))  # one run, more than the window
        call = await open_stream(h, "w", window)
        sizes: list[int] = []
        while sum(sizes) < window:
            resp = await asyncio.wait_for(call.read(), WAIT)
            sizes += [len(b.values) for b in resp.batches]
        assert sum(sizes) == window  # and not one more: the window is full
        assert sizes == [per_message] * (window // per_message)
        call.cancel()
