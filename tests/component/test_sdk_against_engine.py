"""The Python SDK's AsyncWorker against the real engine, over real gRPC.

The engine runs on an event loop of its own, in a thread, so that a test can
block the worker's event loop (as a handler that does not yield would) while
the sidecar side goes on: leases lapse, records are redelivered, revokes and
drains are announced.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

import lowwater
from coordinator.core.ledger import CommitPoint
from coordinator.core.model import TopicPartition
from coordinator.service.limits import Limits

from .harness import Harness, harness

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
WAIT = 10.0
"""Seconds a test waits for a condition before failing."""


class EngineThread:
    """A :func:`harness` on its own event loop thread; call into it with :meth:`run`/:meth:`call`."""

    def __init__(self, h: Harness, loop: asyncio.AbstractEventLoop) -> None:
        self.h = h
        self.loop = loop
        c = h.channel._channel.target
        self.target = (c() if callable(c) else c).decode()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Starts ``coro`` on the engine's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the engine's loop and waits for it (do not block the worker's loop)."""
        return self.submit(coro).result(WAIT)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Calls ``fn`` on the engine's loop and waits for it."""
        async def call() -> T:
            return fn(*args)
        return self.run(call())


@contextmanager
def engine_thread(**options: Any) -> Iterator[EngineThread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="engine", daemon=True)
    thread.start()
    context = harness(**options)
    h = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(WAIT)
    try:
        yield EngineThread(h, loop)
    finally:
        asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


async def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not in time"
        await asyncio.sleep(0.005)


def test_a_blocked_worker_is_sent_no_more_and_revoke_and_drain_do_not_wait_for_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sequence of the two-sidecar integration test, made deterministic.

    The worker's event loop is blocked while its handlers hold a full window, so their leases
    lapse. The records go back to the queue, but not to this stream: it still holds them, so
    its window stays full until it answers for them (Holder.lapsed). Then the partition is
    revoked: nothing is in flight any more, so the revoke ends at once, and the late
    settlements are answered ALREADY_SETTLED and return the window. The partition comes back
    (a new generation), a backlog larger than the window is fed, and the sidecar drains
    mid-backlog: the stream must close as soon as the running handlers are done.
    """
    caplog.set_level(logging.INFO, logger="lowwater")
    n = 20
    tp = TopicPartition("t", 0)
    rebalance_timeout = 5.0
    loop_blocked, unblock = threading.Event(), threading.Event()
    release = asyncio.Event()
    handled: list[tuple[int, int]] = []

    async def handler(msg: lowwater.Message) -> None:
        if msg.offset < n and len(handled) < n:  # the first generation's deliveries
            if msg.offset == n - 1:
                loop_blocked.set()
                unblock.wait(WAIT)  # blocks the event loop: no settlement, no lease extension
            await release.wait()
        else:
            await asyncio.sleep(0.01)
        handled.append((msg.offset, msg.attempt))

    def stream_holder() -> Any:
        [holder] = [x for x in h.engine.ledger.holders.values() if not x.pull]
        return holder

    with engine_thread(lease=0.5, rebalance_timeout=rebalance_timeout) as e:
        h = e.h
        revoke: list[Future[list[CommitPoint]]] = []
        revoke_began: list[float] = []

        def sidecar_side() -> None:
            assert loop_blocked.wait(WAIT)
            deadline = time.monotonic() + WAIT
            while e.call(lambda: h.engine.counters["lapsed"]) < n:
                assert time.monotonic() < deadline, "the leases did not lapse"
                time.sleep(0.01)
            # Lapsed, back in the queue, and still charged to the blocked stream: none is
            # sent to it again while it cannot have finished them.
            assert e.call(lambda: (h.engine.ledger.ready_count, len(stream_holder().lapsed),
                                   stream_holder().credits.messages)) == (n, n, n)
            assert e.call(lambda: h.engine.counters["delivered"]) == n
            revoke_began.append(time.monotonic())
            revoke.append(e.submit(h.engine.revoke([tp], lost=False)))
            time.sleep(0.1)  # the notice reaches the worker's socket before its loop runs again
            unblock.set()

        async def scenario() -> None:
            e.call(h.assign, "t", 1)  # generation 1
            e.call(h.feed, "t", 0, list(range(n)))
            side = threading.Thread(target=sidecar_side, daemon=True)
            side.start()
            async with lowwater.AsyncWorker(e.target, handler, max_in_flight=n):
                await asyncio.to_thread(side.join, WAIT)
                assert revoke, "the revoke did not start"
                final = await asyncio.wait_for(asyncio.wrap_future(revoke[0]), WAIT)
                took = time.monotonic() - revoke_began[0]
                assert took < rebalance_timeout / 2, f"the revoke waited {took:.1f} s"
                assert final == [CommitPoint(tp, 1, 0)]  # nothing was finished: no commit past
                release.set()  # the first attempts end; their leases are gone already
                await _until(lambda: len(handled) == n, "late handlers done")
                await _until(lambda: e.call(lambda: stream_holder().credits.messages) == 0,
                             "the window returned by the late settlements")

                # The partition comes back; a backlog; the sidecar drains in the middle of it.
                e.call(h.engine.assigned, [(tp, 2, 0, None)])
                e.call(h.feed, "t", 0, list(range(11 * n)))
                await _until(lambda: len(handled) >= 3 * n + n // 2, "second generation under way")
                began = time.monotonic()
                drained = await asyncio.wait_for(
                    asyncio.wrap_future(e.submit(h.engine.drain(WAIT))), WAIT)
                took = time.monotonic() - began
                assert drained and e.call(lambda: h.engine.ledger.leased) == 0
                assert took < 2.0, f"the drain waited {took:.1f} s"
                await _until(lambda: any("sidecar drained stream" in r.getMessage()
                                         for r in caplog.records), "stream closed")

        asyncio.run(scenario())
        assert e.call(lambda: h.engine.counters["lapsed"]) == n
    # The first generation's records ran once there (late), and again in the next generation.
    assert sorted(a for o, a in handled[:n]) == [1] * n
    assert {o for o, a in handled[n:]} >= set(range(n))
    messages = [r.getMessage() for r in caplog.records]
    assert not any("still running at the shutdown deadline" in m for m in messages)


def test_the_worker_keeps_its_requests_within_the_batch_the_sidecar_announced() -> None:
    """A sidecar with a small max_settlement_batch says so when the stream opens; the SDK's
    coalesced acks then stay within it, so the stream is never refused for them."""
    n, batch = 600, 25
    done = threading.Event()
    handled = 0

    async def handler(msg: lowwater.Message) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    with engine_thread(limits=Limits(max_settlement_batch=batch)) as e:
        h = e.h
        e.call(h.assign, "t", 1)
        e.call(h.feed, "t", 0, list(range(n)))

        async def work() -> None:
            async with lowwater.AsyncWorker(e.target, handler, max_in_flight=500):
                await _until(done.is_set, "every record handled")
                await _until(lambda: e.call(lambda: h.engine.ledger.leased) == 0,
                             "every ack applied")

        asyncio.run(work())
        assert e.call(lambda: h.engine.counters["settled"]) == n
        assert e.call(lambda: h.engine.counters["streams_opened"]) == 1  # never refused
        assert e.call(lambda: [p.offset for p in h.commit_points()]) == [n]
