"""Deliveries are packed into stream messages within the size limits, in either form.

A stream opened with ``delivery_batches`` gets DeliveryBatch messages, any other one Delivery
per record; both are cut the same way: messages of at most ``max_send_message_bytes`` (and
of the packing size below it), and a record too big to send at all is answered RETRY for the
worker instead of breaking the stream.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from coordinator.core.model import TopicPartition
from coordinator.service.limits import Limits
from lowwater.v1 import coordinator_pb2 as pb
from tests.support.aio import async_test

from .harness import harness

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
    for b in resp.batches:
        out += [(o, b.first_msg_id + i) for i, o in enumerate(b.offsets)]
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
        assert part.offsets.commit_offset == 5  # held pending: retried, never lost
        assert part.records[5].attempt >= 1
        call.cancel()
