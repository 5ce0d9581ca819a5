"""Reconnects, draining, revoking and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import grpc
import pytest

from lowwater import AsyncWorker, Backoff, Message, _session
from lowwater.testing import FakeSidecar
from lowwater.v1 import coordinator_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)
FAST_RECONNECT = Backoff(
    initial=timedelta(milliseconds=10), maximum=timedelta(milliseconds=100), jitter=0.2
)
Run = Callable[[Coroutine[Any, Any, Any]], Any]
WAIT = timedelta(seconds=10)


async def _until(predicate: Callable[[], bool]) -> None:
    """Waits for a condition of the worker's side (checked on the event loop)."""
    deadline = time.monotonic() + WAIT.total_seconds()
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _wait_streams(fake: FakeSidecar, n: int) -> Coroutine[Any, Any, None]:
    return fake.wait_until_async(
        lambda: len(fake.streams) >= n and bool(fake.open_streams), timeout=WAIT,
        what=f"stream #{n} open",
    )


def test_reconnect_after_the_sidecar_restarts(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    started: list[int] = []
    finished: list[int] = []
    release = asyncio.Event()

    async def handler(msg: Message) -> None:
        started.append(msg.attempt)
        if msg.attempt == 1:
            await release.wait()
        finished.append(msg.attempt)

    async def scenario() -> FakeSidecar:
        async with FakeSidecar() as fake:
            ref = fake.publish(topic="t", value=b"v")
            async with AsyncWorker(fake.target, handler, reconnect_backoff=FAST_RECONNECT):
                await _until(lambda: started == [1])
                await asyncio.to_thread(fake.stop, drain=False)  # the sidecar crashes
                await asyncio.sleep(0.5)  # many reconnect attempts fail meanwhile
                fake.start()  # same port
                await fake.wait_until_async(
                    lambda: fake.outcome(ref) == "ACK", timeout=WAIT, what="redelivery ACK"
                )
                release.set()  # the orphaned first attempt ends; its settlement is dropped
                await _until(lambda: sorted(finished) == [1, 2])
            return fake

    with caplog.at_level(logging.DEBUG, logger="lowwater.connection"):
        fake = run(scenario())
    assert started == [1, 2]
    assert len(fake.streams) == 2
    assert [(s.attempt, s.outcome) for s in fake.settlements] == [(2, "ACK")]
    assert fake.rejections == []
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1 and unreachable[0].levelno == logging.WARNING
    attempts = [r for r in caplog.records if "reconnect attempt" in r.getMessage()]
    assert len(attempts) >= 2  # several failed attempts, one warning
    assert any("reconnected" in r.getMessage() for r in caplog.records)


def test_orphaned_handlers_shrink_the_next_streams_limits(run: Run) -> None:
    release = asyncio.Event()
    running = 0

    async def handler(msg: Message) -> None:
        nonlocal running
        if msg.attempt == 1:
            running += 1
            await release.wait()

    async def scenario() -> FakeSidecar:
        async with FakeSidecar() as fake:
            for _ in range(2):
                fake.publish(topic="t", value=b"v")
            async with AsyncWorker(
                fake.target, handler, max_in_flight=3, reconnect_backoff=FAST_RECONNECT
            ):
                await _until(lambda: running == 2)
                await asyncio.to_thread(fake.stop, drain=False)
                fake.start()
                await _wait_streams(fake, 2)
                assert fake.streams[1].max_in_flight == 1  # two handlers still run
                await fake.wait_for_settlements_async(2)
                release.set()
                await fake.wait_until_async(
                    lambda: fake.streams[1].max_in_flight == 3, timeout=WAIT,
                    what="flow_control back to 3",
                )
            return fake

    fake = run(scenario())
    assert fake.streams[1].max_in_flight_declared_min == 1


def test_draining_finishes_running_work_then_reconnects(run: Run) -> None:
    release = asyncio.Event()
    seen: list[tuple[bytes, int]] = []

    async def handler(msg: Message) -> None:
        seen.append((msg.value, msg.attempt))
        if msg.value == b"slow":
            await release.wait()

    async def scenario() -> FakeSidecar:
        async with FakeSidecar() as fake:
            slow = fake.publish(topic="t", value=b"slow")
            async with AsyncWorker(fake.target, handler, reconnect_backoff=FAST_RECONNECT):
                await _until(lambda: seen == [(b"slow", 1)])
                fake.drain(timedelta(seconds=5))
                later = fake.publish(topic="t", value=b"later")  # not for the draining stream
                await asyncio.sleep(0.2)
                assert fake.open_streams and fake.open_streams[0].stream_id == "stream-1"
                release.set()
                await fake.wait_until_async(
                    lambda: fake.outcome(later) == "ACK", timeout=WAIT, what="later ACK"
                )
            assert fake.outcome(slow) == "ACK"
            return fake

    fake = run(scenario())
    first, second = fake.streams[:2]
    assert second.open is False  # closed by the test's shutdown
    assert not first.open
    assert [(s.stream_id, s.attempt) for s in fake.settlements] == [
        ("stream-1", 1), ("stream-2", 1)]
    assert seen == [(b"slow", 1), (b"later", 1)]
    assert fake.lapses == 0 and fake.rejections == []


def test_graceful_shutdown_finishes_in_flight_handlers(run: Run) -> None:
    started = 0

    async def handler(msg: Message) -> None:
        nonlocal started
        started += 1
        await asyncio.sleep(0.3)

    async def scenario() -> FakeSidecar:
        async with FakeSidecar() as fake:
            for _ in range(8):
                fake.publish(topic="t", value=b"v")
            worker = AsyncWorker(fake.target, handler, max_in_flight=5)
            task = asyncio.create_task(worker.run())
            while started < 5:
                await asyncio.sleep(0.005)
            began = time.monotonic()
            await worker.shutdown()
            assert time.monotonic() - began >= 0.2  # waited for the handlers
            await task
            assert not fake.open_streams
            assert len(fake.settlements) == 5  # the five running ones, nothing new started
            assert fake.outstanding == 0 and fake.pending == 3
            return fake

    fake = run(scenario())
    assert {s.outcome for s in fake.settlements} == {"ACK"}
    assert started == 5 and fake.lapses == 0


def test_shutdown_timeout_cancels_stuck_handlers(run: Run) -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def handler(msg: Message) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario() -> None:
        async with FakeSidecar() as fake:
            fake.publish(topic="t", value=b"v")
            worker = AsyncWorker(
                fake.target, handler, shutdown_timeout=timedelta(milliseconds=200)
            )
            task = asyncio.create_task(worker.run())
            await asyncio.wait_for(started.wait(), 10)
            began = time.monotonic()
            await worker.shutdown()
            await task
            assert time.monotonic() - began < 3
            assert cancelled.is_set()
            assert fake.settlements == [] and fake.outstanding == 0 and fake.pending == 1

    run(scenario())


@pytest.mark.parametrize("in_time", [True, False])
def test_revoking(run: Run, in_time: bool) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(msg: Message) -> None:
        if msg.partition == 0 and msg.attempt == 1 and msg.offset == 0:
            started.set()
            await release.wait()

    async def scenario() -> FakeSidecar:
        async with FakeSidecar() as fake:
            ref = fake.publish(topic="t", value=b"v", partition=0)
            async with AsyncWorker(fake.target, handler, reconnect_backoff=FAST_RECONNECT):
                await asyncio.wait_for(started.wait(), 10)
                deadline = timedelta(seconds=5 if in_time else 0.1)
                fake.revoke("t", 0, deadline)
                if not in_time:
                    await fake.wait_until_async(lambda: len(fake.deliveries) == 2, timeout=WAIT)
                release.set()
                await fake.wait_until_async(lambda: fake.outcome(ref) == "ACK", timeout=WAIT)
                await fake.wait_until_async(lambda: fake.outstanding == 0, timeout=WAIT)
            return fake

    fake = run(scenario())
    if in_time:
        assert len(fake.deliveries) == 1 and fake.rejections == []
    else:  # the first delivery's settlement came after the generation ended
        assert fake.rejections == [(fake.deliveries[0].msg_id, "STALE")]
        assert [d.attempt for d in fake.deliveries] == [1, 1]




@pytest.mark.parametrize("deadline_passes", [False, True])
def test_revoking_runs_deliveries_not_started_yet(
    run: Run, caplog: pytest.LogCaptureFixture, deadline_passes: bool
) -> None:
    """Deliveries queued when a revoke is announced may start until its deadline, then are dropped.

    Dropping them unsettled at once would leave their leases out until the revoke deadline (or
    until they lapse): the sidecar's rebalance would wait that long for them. Here, as in a
    worker whose event loop was blocked, the first deliveries' leases lapsed while their
    handlers ran, so the redeliveries wait for a free handler when the revoke comes.
    """
    n = 10
    loop_blocked, unblock = threading.Event(), threading.Event()
    release = asyncio.Event()
    started: list[tuple[int, int]] = []
    deadline = timedelta(milliseconds=300) if deadline_passes else timedelta(seconds=5)

    async def handler(msg: Message) -> None:
        started.append((msg.offset, msg.attempt))
        if msg.attempt == 1:
            if msg.offset == n - 1:
                loop_blocked.set()
                unblock.wait(WAIT.total_seconds())  # blocks the event loop: leases lapse
            await release.wait()

    def sidecar_side(fake: FakeSidecar) -> None:
        assert loop_blocked.wait(WAIT.total_seconds())
        fake.wait_until(lambda: len(fake.deliveries) == 2 * n, timeout=WAIT, what="redeliveries")
        fake.revoke("t", 0, deadline)
        time.sleep(0.1)  # the notice reaches the worker's socket before its loop runs again
        unblock.set()

    def logged(text: str) -> Callable[[], bool]:
        return lambda: any(text in r.getMessage() for r in caplog.records)

    async def scenario() -> FakeSidecar:
        async with FakeSidecar(lease=timedelta(milliseconds=500)) as fake:
            refs = [fake.publish(topic="t", value=b"v", partition=0) for _ in range(n)]
            side = threading.Thread(target=sidecar_side, args=(fake,), daemon=True)
            side.start()
            async with AsyncWorker(fake.target, handler, max_in_flight=n):
                await asyncio.to_thread(side.join, WAIT.total_seconds())
                await _until(logged("revoking t[0]: 0 delivery(ies) not started were dropped"))
                if deadline_passes:
                    await _until(logged(f"revoke deadline of t[0] passed on stream stream-1: {n}"))
                release.set()  # the first attempts end; their settlements come too late
                await fake.wait_until_async(
                    lambda: all(fake.outcome(r) == "ACK" for r in refs),
                    timeout=WAIT, what="every record ACKed",
                )
            return fake

    caplog.set_level(logging.INFO, logger="lowwater.connection")
    fake = run(scenario())
    assert fake.lapses == n
    assert sorted(status for _, status in fake.rejections) == ["ALREADY_SETTLED"] * n
    if deadline_passes:
        # Never started: the next generation delivered the records again, from attempt 1.
        assert len(fake.deliveries) == 3 * n
        assert sorted(started) == sorted([(i, 1) for i in range(n)] * 2)
        expected = [(i, 1) for i in range(n)]
    else:
        # Settled in time: the revoke did not wait for them, nothing was delivered a third time.
        assert len(fake.deliveries) == 2 * n
        expected = [(i, 2) for i in range(n)]
    assert sorted((s.record.offset, s.attempt) for s in fake.settlements) == expected


class _Mute(pb_grpc.CoordinatorServicer):
    """A sidecar that takes the stream and never answers ``open``."""

    def __init__(self) -> None:
        self.calls = 0

    async def Stream(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        self.calls += 1
        await asyncio.Event().wait()  # until the call is cancelled

    async def Pull(self, request: Any, context: Any) -> Any:  # never called here
        raise NotImplementedError

    async def Acknowledge(self, request: Any, context: Any) -> Any:  # never called here
        raise NotImplementedError


def test_an_unanswered_open_is_given_up_and_shutdown_does_not_wait_for_it(
        run: Run, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_session, "OPEN_TIMEOUT", 0.3)

    async def scenario() -> None:
        server = grpc.aio.server()
        mute = _Mute()
        pb_grpc.add_CoordinatorServicer_to_server(mute, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with AsyncWorker(f"127.0.0.1:{port}", _never, reconnect_backoff=FAST_RECONNECT):
                await _until(lambda: mute.calls >= 2)  # gave up on the first, tried again
            # ...and the shutdown above returned without an answer to its open.
        finally:
            await server.stop(None)

    run(scenario())
    assert any("no answer to open within 0.3 s" in r.getMessage() for r in caplog.records)


async def _never(msg: Message) -> None:
    raise AssertionError("nothing is delivered")
