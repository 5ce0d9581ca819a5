"""AsyncWorker against the fake sidecar over real gRPC."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent import futures
from datetime import timedelta
from typing import Any

import grpc
import pytest

import lowwater
from lowwater import AlreadyProcessed, AsyncWorker, Backoff, DeadLetter, Drop, Message, Retry
from lowwater.testing import FakeSidecar

pytestmark = pytest.mark.timeout(60)
FAST_RECONNECT = Backoff(
    initial=timedelta(milliseconds=10), maximum=timedelta(milliseconds=100), jitter=0.2
)
Run = Callable[[Coroutine[Any, Any, Any]], Any]
QUICK_RETRY = Backoff(initial=timedelta(milliseconds=20), maximum=timedelta(seconds=1))


def test_every_outcome(fake: FakeSidecar, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    records = {
        name: fake.publish(topic="sms", value=name.encode(), key=b"k", partition=i % 3)
        for i, name in enumerate(["ack", "retry", "dead", "drop", "done", "boom"])
    }

    async def handler(msg: Message) -> None:
        kind = msg.value.decode()
        if kind == "retry" and msg.attempt == 1:
            raise Retry(delay=timedelta(milliseconds=50), reason="later")
        if kind == "dead":
            raise DeadLetter("bad payload")
        if kind == "drop":
            raise Drop("expired")
        if kind == "done":
            raise AlreadyProcessed()
        if kind == "boom" and msg.attempt == 1:
            raise RuntimeError("downstream down")

    async def scenario() -> None:
        async with AsyncWorker(fake.target, handler, retry_backoff=QUICK_RETRY):
            await fake.wait_for_settlements_async(8)

    with caplog.at_level(logging.WARNING, logger="lowwater.handler"):
        run(scenario())
    assert {name: fake.outcome(ref) for name, ref in records.items()} == {
        "ack": "ACK",
        "retry": "ACK",
        "dead": "DEAD_LETTER",
        "drop": "DROP",
        "done": "ALREADY_PROCESSED",
        "boom": "ACK",
    }
    by_record = {(s.record, s.attempt): s for s in fake.settlements}
    retried = by_record[(records["retry"], 1)]
    assert (retried.outcome, retried.retry_delay, retried.reason) == (
        "RETRY", timedelta(milliseconds=50), "later")
    failed = by_record[(records["boom"], 1)]
    assert failed.outcome == "RETRY" and failed.retry_delay == timedelta(milliseconds=20)
    assert "RuntimeError: downstream down" in failed.reason
    assert by_record[(records["dead"], 1)].reason == "bad payload"
    assert fake.rejections == []
    assert len([r for r in caplog.records if r.name == "lowwater.handler"]) == 1
    assert fake.committed("sms", 0) == 2 and fake.committed("sms", 1) == 2


def test_out_of_order_completion_commits_the_low_water_mark(fake: FakeSidecar, run: Run) -> None:
    refs = [fake.publish(topic="t", value=str(i).encode()) for i in range(6)]
    release = {i: asyncio.Event() for i in range(6)}
    started: set[int] = set()

    async def handler(msg: Message) -> None:
        i = int(msg.value)
        started.add(i)
        await release[i].wait()

    async def scenario() -> None:
        async with AsyncWorker(fake.target, handler, max_in_flight=6):
            while len(started) < 6:
                await asyncio.sleep(0.005)
            for i in (5, 3, 1, 4, 2):  # everything but offset 0, out of order
                release[i].set()
            await fake.wait_for_settlements_async(5)
            assert fake.committed("t", 0) == 0  # offset 0 still pending holds the commit
            release[0].set()
            await fake.wait_for_settlements_async(6)

    run(scenario())
    settled = [s.record.offset for s in fake.settlements]  # acks may be sent as a range
    assert sorted(settled[:5]) == [1, 2, 3, 4, 5] and settled[5:] == [0]
    assert fake.committed("t", 0) == 6
    assert all(fake.outcome(r) == "ACK" for r in refs)


@pytest.mark.parametrize(("max_in_flight", "max_bytes"), [(3, 0), (50, 250)])
def test_flow_control_is_respected(
    fake: FakeSidecar, run: Run, max_in_flight: int, max_bytes: int
) -> None:
    for i in range(40):
        fake.publish(topic="t", value=b"x" * 100, partition=i % 4)
    running = 0
    peak = 0

    async def handler(msg: Message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.002)
        running -= 1

    async def scenario() -> None:
        async with AsyncWorker(
            fake.target, handler, max_in_flight=max_in_flight, max_in_flight_bytes=max_bytes
        ):
            await fake.wait_for_settlements_async(40)

    run(scenario())
    (stream,) = fake.streams
    assert (stream.max_in_flight, stream.max_in_flight_bytes) == (max_in_flight, max_bytes)
    assert stream.max_outstanding_seen <= max_in_flight
    assert peak <= max_in_flight
    if max_bytes:
        assert stream.max_outstanding_bytes_seen <= max_bytes
        assert peak <= 2  # two 100-byte values fit in 250 bytes, three do not
    else:
        assert peak == max_in_flight  # and the limit is actually used


def test_settlements_are_coalesced(fake: FakeSidecar, run: Run) -> None:
    for _ in range(300):
        fake.publish(topic="t", value=b"v")
    requests = 0
    original = lowwater._outbox.Outbox.take

    def counting(self: Any) -> Any:
        nonlocal requests
        request = original(self)
        requests += request is not None
        return request

    async def handler(msg: Message) -> None:
        pass

    async def scenario() -> None:
        async with AsyncWorker(fake.target, handler, max_in_flight=300):
            await fake.wait_for_settlements_async(300)

    lowwater._outbox.Outbox.take = counting  # type: ignore[method-assign]
    try:
        run(scenario())
    finally:
        lowwater._outbox.Outbox.take = original  # type: ignore[method-assign]
    assert requests < 30  # batches, not one request per settlement


def test_lifecycle_is_idempotent_and_runs_once(fake: FakeSidecar, run: Run) -> None:
    async def handler(msg: Message) -> None:
        pass

    async def scenario() -> None:
        early = AsyncWorker(fake.target, handler)
        await early.shutdown()  # before run: run() then returns at once
        await early.run()
        worker = AsyncWorker(fake.target, handler)
        task = asyncio.create_task(worker.run())
        fake.publish(topic="t", value=b"v")
        await fake.wait_for_settlements_async(1)  # the stream is open on both sides
        await asyncio.gather(worker.shutdown(), worker.shutdown())
        await worker.shutdown()
        await task
        with pytest.raises(RuntimeError, match="once"):
            await worker.run()

    run(scenario())
    (stream,) = fake.streams
    assert not stream.open and fake.rejections == []


def test_a_server_without_the_service_is_rejected(run: Run) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    async def handler(msg: Message) -> None:
        pass

    async def scenario() -> None:
        worker = AsyncWorker(f"127.0.0.1:{port}", handler, reconnect_backoff=FAST_RECONNECT)
        with pytest.raises(lowwater.SidecarRejected) as info:
            await worker.run()
        assert info.value.code == "UNIMPLEMENTED"
        assert info.value.retriable is False

    try:
        run(scenario())
    finally:
        server.stop(None)
