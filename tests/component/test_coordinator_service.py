"""The Coordinator and Admin servicers over real gRPC, with fake records."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from coordinator.core.model import TopicPartition
from lowwater.v1 import admin_pb2
from lowwater.v1 import coordinator_pb2 as pb
from tests.support.aio import async_test, until

from .harness import Harness, harness

READ_TIMEOUT = 5.0
"""Seconds a test waits for a stream message before failing."""


class RawStream:
    """A worker stream driven by hand. A background task reads the responses,
    because cancelling a pending ``read()`` would cancel the whole call."""

    def __init__(self, h: Harness, worker_id: str = "w", max_in_flight: int = 100) -> None:
        self.call = h.coordinator.Stream()
        self.worker_id = worker_id
        self.max_in_flight = max_in_flight
        self.rejected: list[pb.SettleResult] = []
        self._responses: asyncio.Queue[pb.StreamResponse] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> pb.StreamOpened:
        await self.call.write(pb.StreamRequest(open=pb.OpenStream(
            worker_id=self.worker_id,
            flow_control=pb.FlowControl(max_in_flight_messages=self.max_in_flight))))
        self._reader = asyncio.create_task(self._read_all())
        resp = await self.read()
        assert resp.HasField("opened")
        return resp.opened

    async def _read_all(self) -> None:
        async for resp in self.call:
            self._responses.put_nowait(resp)

    async def read(self, timeout: float = READ_TIMEOUT) -> pb.StreamResponse:
        resp = await asyncio.wait_for(self._responses.get(), timeout)
        self.rejected.extend(resp.rejected)
        return resp

    async def deliveries(self, n: int) -> list[pb.Delivery]:
        out: list[pb.Delivery] = []
        while len(out) < n:
            out.extend((await self.read()).deliveries)
        return out

    async def settle(self, ids: list[int], outcome: pb.Outcome.ValueType = pb.OUTCOME_ACK) -> None:
        await self.call.write(pb.StreamRequest(
            settlements=[pb.Settlement(msg_id=i, outcome=outcome) for i in ids]))

    async def quiet(self, seconds: float = 0.3) -> list[pb.Delivery]:
        """Deliveries that arrive within ``seconds`` (expected: none)."""
        try:
            return list((await self.read(seconds)).deliveries)
        except TimeoutError:
            return []

    def cancel(self) -> None:
        self.call.cancel()


@async_test
async def test_out_of_order_acks_commit_the_lowest_pending_offset() -> None:
    async with harness() as h:
        h.assign("t", 1)
        h.feed("t", 0, [0, 1, 2, 5, 9])  # gaps: offsets are not contiguous numbers
        s = RawStream(h)
        await s.open()
        got = await s.deliveries(5)
        by_offset = {d.offset: d.msg_id for d in got}
        await s.settle([by_offset[1], by_offset[2], by_offset[9]])
        await until(lambda: h.engine.ledger.partitions[TopicPartition("t", 0)].in_flight == 2)
        assert [p.offset for p in h.commit_points()] == [0]
        await s.settle([by_offset[0]])
        await until(lambda: h.engine.ledger.partitions[TopicPartition("t", 0)].in_flight == 1)
        assert [p.offset for p in h.commit_points()] == [5]
        await s.settle([by_offset[5]])
        await until(lambda: h.engine.ledger.partitions[TopicPartition("t", 0)].in_flight == 0)
        assert [p.offset for p in h.commit_points()] == [10]


@async_test
async def test_buffered_records_hold_the_commit_back() -> None:
    async with harness() as h:
        h.assign("t", 1)
        h.feed("t", 0, list(range(10)))
        s = RawStream(h, max_in_flight=3)
        await s.open()
        got = await s.deliveries(3)
        assert await s.quiet() == []  # never more than declared
        await s.settle([d.msg_id for d in got])
        more = await s.deliveries(3)
        assert [d.offset for d in more] == [3, 4, 5]
        assert [p.offset for p in h.commit_points()] == [3]


@async_test
async def test_first_request_must_open_the_stream() -> None:
    async with harness() as h:
        call = h.coordinator.Stream()
        await call.write(pb.StreamRequest(settlements=[pb.Settlement(msg_id=1)]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(info.value)
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        assert bad.field_violations[0].field == "open"


D = TypeVar("D", bound=Message)


def only_detail(error: grpc.aio.AioRpcError, kind: type[D]) -> D:
    """The one ``google.rpc.Status`` detail of ``error``, which must be a ``kind``."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details"
    assert status.code == error.code().value[0]
    assert len(status.details) == 1, status.details
    detail = kind()
    assert status.details[0].Unpack(detail), status.details[0].type_url
    return detail


@async_test
async def test_zero_in_flight_is_refused() -> None:
    """As docs/operations.md lists it: INVALID_ARGUMENT, a BadRequest naming the field."""
    async with harness() as h:
        call = h.coordinator.Stream()
        await call.write(pb.StreamRequest(open=pb.OpenStream(worker_id="w")))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_in_flight_messages" in (info.value.details() or "")
        bad = only_detail(info.value, error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == ["open.flow_control"]
        assert "max_in_flight_messages" in bad.field_violations[0].description
        assert h.engine.ledger.holders == {}


@async_test
async def test_an_open_while_draining_is_unavailable() -> None:
    """As docs/operations.md lists it: UNAVAILABLE with an ErrorInfo of reason DRAINING, so
    that a worker retries (on the next sidecar); the stream gets nothing to hold."""
    async with harness() as h:
        h.assign("t", 1)
        h.feed("t", 0, [0])
        assert await asyncio.wait_for(h.engine.drain(5.0), READ_TIMEOUT)  # nothing leased
        call = h.coordinator.Stream()
        await call.write(pb.StreamRequest(open=pb.OpenStream(
            worker_id="late", flow_control=pb.FlowControl(max_in_flight_messages=10))))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "the sidecar is draining"
        error = only_detail(info.value, error_details_pb2.ErrorInfo)
        assert (error.reason, error.domain) == ("DRAINING", "lowwater")
        assert h.engine.ledger.leased == 0


@async_test
async def test_bogus_settlements_get_a_result_each_and_change_nothing() -> None:
    async with harness() as h:
        h.assign("t", 1)
        h.feed("t", 0, [0, 1])
        a, b = RawStream(h, "a", 1), RawStream(h, "b", 1)
        await a.open()
        da = (await a.deliveries(1))[0]
        await b.open()
        db = (await b.deliveries(1))[0]
        await a.settle([db.msg_id])  # foreign
        await a.settle([123456])  # unknown
        await a.call.write(pb.StreamRequest(settlements=[pb.Settlement(msg_id=da.msg_id)]))
        while len(a.rejected) < 3:
            await a.read()
        assert [(r.msg_id, r.status) for r in a.rejected] == [
            (db.msg_id, pb.SETTLE_STATUS_NOT_OWNER),
            (123456, pb.SETTLE_STATUS_UNKNOWN),
            (da.msg_id, pb.SETTLE_STATUS_INVALID),
        ]
        assert h.engine.ledger.partitions[TopicPartition("t", 0)].in_flight == 2
        await a.settle([da.msg_id])
        await a.settle([da.msg_id])  # duplicate
        while len(a.rejected) < 4:
            await a.read()
        assert a.rejected[3].status == pb.SETTLE_STATUS_ALREADY_SETTLED
        assert [p.offset for p in h.commit_points()] == [1]


@async_test
async def test_a_broken_stream_is_redelivered_at_once() -> None:
    async with harness() as h:
        h.assign("t", 1)
        h.feed("t", 0, [0, 1, 2])
        a = RawStream(h, "a")
        await a.open()
        first = await a.deliveries(3)
        b = RawStream(h, "b")
        await b.open()
        a.cancel()
        again = await b.deliveries(3)
        assert sorted(d.offset for d in again) == [0, 1, 2]
        assert {d.attempt for d in again} == {2}
        assert not {d.msg_id for d in again} & {d.msg_id for d in first}


@async_test
async def test_an_expired_lease_is_redelivered_with_the_next_attempt() -> None:
    async with harness(lease=0.2) as h:
        h.assign("t", 1)
        h.feed("t", 0, [7])
        s = RawStream(h)
        await s.open()
        (first,) = await s.deliveries(1)
        (second,) = await s.deliveries(1)  # nobody settled: the lease ran out
        assert (second.offset, second.attempt) == (7, 2)
        assert second.msg_id != first.msg_id
        await s.settle([first.msg_id])  # the late settlement of the old delivery
        await s.settle([second.msg_id])
        while len(s.rejected) < 1:
            await s.read()
        assert s.rejected[0].msg_id == first.msg_id
        await until(lambda: h.engine.ledger.partitions[TopicPartition("t", 0)].in_flight == 0)
        assert [p.offset for p in h.commit_points()] == [8]


@async_test
async def test_extend_keeps_a_lease() -> None:
    async with harness(lease=0.3) as h:
        h.assign("t", 1)
        h.feed("t", 0, [0])
        s = RawStream(h)
        await s.open()
        (d,) = await s.deliveries(1)
        await s.call.write(pb.StreamRequest(
            extend=pb.LeaseExtension(msg_ids=[d.msg_id], extension=Duration(seconds=5))))
        assert await s.quiet(0.6) == []
        assert h.engine.counters["lapsed"] == 0


@async_test
async def test_retry_with_a_delay_comes_back_later() -> None:
    async with harness() as h:
        h.assign("t", 1)
        h.feed("t", 0, [0])
        s = RawStream(h)
        await s.open()
        (d,) = await s.deliveries(1)
        await s.call.write(pb.StreamRequest(settlements=[pb.Settlement(
            msg_id=d.msg_id, outcome=pb.OUTCOME_RETRY, retry_delay=Duration(nanos=200_000_000))]))
        loop = asyncio.get_running_loop()
        start = loop.time()
        (again,) = await s.deliveries(1)
        assert loop.time() - start >= 0.15
        assert again.attempt == 2
        assert [p.offset for p in h.commit_points()] == [0]


@async_test
async def test_revoke_waits_for_in_flight_settlements_then_ignores_late_ones() -> None:
    async with harness(rebalance_timeout=0.5) as h:
        h.assign("t", 2)
        h.feed("t", 0, [0, 1])
        h.feed("t", 1, [0])
        s = RawStream(h)
        await s.open()
        got = await s.deliveries(3)
        p0 = sorted((d.offset, d.msg_id) for d in got if d.partition == 0)
        revoke = asyncio.ensure_future(h.engine.revoke([TopicPartition("t", 0)], lost=False))
        notice = (await s.read()).revoking
        assert sorted(notice.msg_ids) == sorted(m for _, m in p0)
        assert not revoke.done()  # it waits for the leases
        await s.settle([p0[0][1]])  # only offset 0 finishes in time
        final = await asyncio.wait_for(revoke, READ_TIMEOUT)
        assert [(p.tp, p.offset) for p in final] == [(TopicPartition("t", 0), 1)]
        await s.settle([p0[1][1]])  # too late
        while not s.rejected:
            await s.read()
        assert s.rejected[0].status == pb.SETTLE_STATUS_STALE
        assert TopicPartition("t", 1) in h.engine.ledger.partitions


@async_test
async def test_a_settlement_from_a_revoked_generation_never_moves_the_new_one() -> None:
    async with harness(rebalance_timeout=0.0) as h:
        h.assign("t", 1)
        h.feed("t", 0, [0, 1])
        s = RawStream(h)
        await s.open()
        old = await s.deliveries(2)
        final = await h.engine.revoke([TopicPartition("t", 0)], lost=False)
        assert [p.offset for p in final] == [0]  # nothing finished: the fetch start
        h.engine.assigned([(TopicPartition("t", 0), 99, None, None)])
        h.feed("t", 0, [0, 1])
        fresh = await s.deliveries(2)
        await s.settle([d.msg_id for d in old])
        while len(s.rejected) < 2:
            await s.read()
        assert {r.status for r in s.rejected} == {pb.SETTLE_STATUS_STALE}
        assert [p.offset for p in h.commit_points()] == [0]
        await s.settle([d.msg_id for d in fresh])
        await until(lambda: h.engine.ledger.partitions[TopicPartition("t", 0)].in_flight == 0)
        assert [(p.generation, p.offset) for p in h.commit_points()] == [(99, 2)]


@async_test
async def test_drain_tells_the_workers_and_waits_for_their_settlements() -> None:
    async with harness() as h:
        h.assign("t", 1)
        h.feed("t", 0, [0, 1])
        s = RawStream(h)
        await s.open()
        got = await s.deliveries(2)
        drain = asyncio.ensure_future(h.engine.drain(5.0))
        assert (await s.read()).HasField("draining")
        h.feed("t", 0, [2])
        await s.settle([d.msg_id for d in got])
        assert await asyncio.wait_for(drain, READ_TIMEOUT)
        assert await s.quiet() == []  # nothing new while draining
        assert await h.engine.final_commit()
        assert h.sink.committed_offsets() == {TopicPartition("t", 0): 2}


@async_test
async def test_pull_and_acknowledge() -> None:
    async with harness() as h:
        h.assign("t", 1)
        empty = await h.coordinator.Pull(pb.PullRequest(max_messages=5))
        assert list(empty.deliveries) == []
        h.feed("t", 0, [0, 1, 2], _key=b"k", _headers=[("h", b"1")])
        got = await h.coordinator.Pull(pb.PullRequest(max_messages=2, wait=Duration(seconds=1)))
        assert [(d.offset, d.key, d.headers[0].key) for d in got.deliveries] == [
            (0, b"k", "h"), (1, b"k", "h")]
        ids = [d.msg_id for d in got.deliveries]
        resp = await h.coordinator.Acknowledge(pb.AcknowledgeRequest(settlements=[
            pb.Settlement(msg_id=ids[0], outcome=pb.OUTCOME_ACK),
            pb.Settlement(msg_id=ids[0], outcome=pb.OUTCOME_ACK),
            pb.Settlement(msg_id=ids[1], outcome=pb.OUTCOME_DROP),
            pb.Settlement(msg_id=424242, outcome=pb.OUTCOME_ACK),
        ]))
        assert [r.status for r in resp.results] == [
            pb.SETTLE_STATUS_OK, pb.SETTLE_STATUS_ALREADY_SETTLED, pb.SETTLE_STATUS_OK,
            pb.SETTLE_STATUS_UNKNOWN]
        assert [p.offset for p in h.commit_points()] == [2]


@async_test
async def test_pull_waits_for_a_record() -> None:
    async with harness() as h:
        h.assign("t", 1)
        pull = asyncio.ensure_future(
            h.coordinator.Pull(pb.PullRequest(max_messages=5, wait=Duration(seconds=5))))
        await asyncio.sleep(0.1)
        h.feed("t", 0, [0])
        got = await asyncio.wait_for(pull, READ_TIMEOUT)
        assert [d.offset for d in got.deliveries] == [0]


@async_test
async def test_pull_rejects_zero_messages() -> None:
    async with harness() as h:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await h.coordinator.Pull(pb.PullRequest())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@async_test
async def test_pending_cap_pauses_and_resumes_with_hysteresis() -> None:
    async with harness(max_pending=10) as h:
        h.assign("t", 1)
        h.feed("t", 0, list(range(10)))
        assert [(c.points, c.resume) for c in h.sink.pauses] == [
            ([(TopicPartition("t", 0), 1)], False)]
        s = RawStream(h, max_in_flight=10)
        await s.open()
        got = await s.deliveries(10)
        await s.settle([d.msg_id for d in got[:2]])  # 8 pending: not below 80% yet
        await until(lambda: len(h.engine.ledger.partitions[TopicPartition("t", 0)].records) == 8)
        assert len(h.sink.pauses) == 1
        await s.settle([got[2].msg_id])
        await until(lambda: len(h.sink.pauses) == 2)
        assert h.sink.pauses[1].resume


@async_test
async def test_get_status_reports_partitions_and_workers() -> None:
    async with harness() as h:
        h.assign("t", 2, committed=0)
        h.feed("t", 1, [0, 1, 2])
        s = RawStream(h, "worker-7", max_in_flight=2)
        await s.open()
        await s.deliveries(2)
        status = await h.admin.GetStatus(admin_pb2.GetStatusRequest())
        p1 = next(p for p in status.partitions if p.partition == 1)
        assert (p1.pending_count, p1.in_flight_count, p1.lowest_pending_offset,
                p1.committed_offset) == (3, 2, 0, 0)
        assert status.buffered_count == 1
        (w,) = status.workers
        assert (w.worker_id, w.in_flight_count, w.max_in_flight_messages) == ("worker-7", 2, 2)


@async_test
async def test_packed_acks_settle_and_reject_like_settlements() -> None:
    async with harness() as h:
        h.assign("t", 1)
        h.feed("t", 0, [0, 1, 2])
        a, b = RawStream(h, "a", 2), RawStream(h, "b", 1)
        await a.open()
        mine = await a.deliveries(2)
        await b.open()
        (theirs,) = await b.deliveries(1)
        await a.call.write(pb.StreamRequest(
            ack_msg_ids=[mine[1].msg_id, theirs.msg_id, 777, mine[1].msg_id]))
        while len(a.rejected) < 3:
            await a.read()
        assert [(r.msg_id, r.status) for r in a.rejected] == [
            (theirs.msg_id, pb.SETTLE_STATUS_NOT_OWNER),
            (777, pb.SETTLE_STATUS_UNKNOWN),
            (mine[1].msg_id, pb.SETTLE_STATUS_ALREADY_SETTLED),
        ]
        assert [p.offset for p in h.commit_points()] == [0]  # offset 0 is still out
        await a.call.write(pb.StreamRequest(ack_msg_ids=[mine[0].msg_id]))
        await until(lambda: h.engine.ledger.partitions[TopicPartition("t", 0)].in_flight == 1)
        assert [p.offset for p in h.commit_points()] == [2]
