"""The handler pool: runners, concurrency, outcomes, logging. No gRPC."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest

from lowwater import Backoff, Drop, Message
from lowwater._dispatch import HandlerPool
from lowwater.testing import RecordingSettler, make_message

BACKOFF = Backoff(initial=timedelta(seconds=1), maximum=timedelta(seconds=30))
Run = Callable[[Coroutine[Any, Any, Any]], Any]


def _messages(n: int, settler: RecordingSettler) -> list[Message]:
    return [make_message(msg_id=i + 1, offset=i, settler=settler)[0] for i in range(n)]


def _pool(
    handler: Callable[[Message], Coroutine[Any, Any, None]],
    limit: int,
    concurrency: int | None = None,
) -> HandlerPool:
    return HandlerPool(
        handler, limit=limit, concurrency=concurrency, max_bytes=0, retry_backoff=BACKOFF,
        on_orphan_done=lambda: None,
    )


def test_handlers_that_never_suspend_share_one_runner(run: Run) -> None:
    async def scenario() -> None:
        settler = RecordingSettler()
        seen: list[int] = []

        async def handler(msg: Message) -> None:
            seen.append(msg.msg_id)

        pool = _pool(handler, limit=64)
        pool.accept(_messages(500, settler))
        while len(settler.settlements) < 500:
            await asyncio.sleep(0)
        assert seen == list(range(1, 501))
        assert len(pool._runners) <= 2
        await pool.close(0.0)

    run(scenario())


def test_suspending_handlers_run_concurrently_up_to_the_limit(run: Run) -> None:
    async def scenario() -> None:
        settler = RecordingSettler()
        running = 0
        peak = 0
        release = asyncio.Event()

        async def handler(msg: Message) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

        pool = _pool(handler, limit=8)
        pool.accept(_messages(8, settler))
        while running < 8:
            await asyncio.sleep(0.001)
        assert len(pool.running_messages()) == 8
        release.set()
        while len(settler.settlements) < 8:
            await asyncio.sleep(0.001)
        assert peak == 8
        assert {s[0] for s in settler.settlements} == {"ACK"}
        await pool.close(0.0)

    run(scenario())


def test_concurrency_below_the_limit_queues_the_rest_for_the_next_free_runner(run: Run) -> None:
    async def scenario() -> None:
        settler = RecordingSettler()
        running: set[int] = set()
        peak = 0
        release: dict[int, asyncio.Event] = {}

        async def handler(msg: Message) -> None:
            nonlocal peak
            running.add(msg.msg_id)
            peak = max(peak, len(running))
            await release.setdefault(msg.msg_id, asyncio.Event()).wait()
            running.discard(msg.msg_id)

        pool = _pool(handler, limit=10, concurrency=4)
        assert pool.limits() == (10, 0)  # what the sidecar is told: the held limit
        pool.accept(_messages(10, settler))
        while len(running) < 4:
            await asyncio.sleep(0.001)
        for _ in range(5):  # the other six wait for a runner; none starts
            await asyncio.sleep(0)
        assert running == {1, 2, 3, 4} and len(pool._runners) == 4
        release.setdefault(2, asyncio.Event()).set()  # a runner frees: it takes the next
        while 5 not in running:
            await asyncio.sleep(0.001)
        assert running == {1, 3, 4, 5}
        for i in range(1, 11):
            release.setdefault(i, asyncio.Event()).set()
        while len(settler.settlements) < 10:
            await asyncio.sleep(0.001)
        assert peak == 4
        await pool.close(0.0)

    run(scenario())


def test_outcomes_and_failure_logging(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        settler = RecordingSettler()

        async def handler(msg: Message) -> None:
            if msg.msg_id == 1:
                raise Drop("expired")
            if msg.msg_id == 2:
                raise KeyError("missing")
            if msg.msg_id == 3:
                msg.dead_letter("explicit")  # settled by hand: the return is ignored

        pool = _pool(handler, limit=4)
        pool.accept([make_message(msg_id=i, offset=10 + i, topic="sms", partition=2, attempt=3,
                                  settler=settler)[0] for i in (1, 2, 3)])
        while len(settler.settlements) < 3:
            await asyncio.sleep(0.001)
        await pool.close(0.0)
        outcomes = sorted(settler.settlements, key=lambda s: s[0])
        assert outcomes == [
            ("DEAD_LETTER", None, "explicit"),
            ("DROP", None, "expired"),
            ("RETRY", timedelta(seconds=4), "KeyError: 'missing'"),
        ]

    with caplog.at_level(logging.WARNING, logger="lowwater.handler"):
        run(scenario())
    failures = [r for r in caplog.records if r.name == "lowwater.handler"]
    assert len(failures) == 1
    text = failures[0].getMessage()
    assert "sms[2]@12" in text and "msg_id=2" in text and "attempt 3" in text
    assert failures[0].exc_info is not None


def test_close_cancels_handlers_past_the_deadline(run: Run) -> None:
    async def scenario() -> None:
        settler = RecordingSettler()
        cancelled = asyncio.Event()

        async def handler(msg: Message) -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        pool = _pool(handler, limit=2)
        pool.accept(_messages(1, settler))
        while not pool.running_messages():
            await asyncio.sleep(0.001)
        loop = asyncio.get_running_loop()
        await pool.close(loop.time() - 1)  # deadline already passed
        assert cancelled.is_set()
        assert settler.settlements == []  # a cancelled handler settles nothing

    run(scenario())


def test_withdraw_removes_queued_messages_only(run: Run) -> None:
    async def scenario() -> None:
        pool = _pool(lambda m: asyncio.sleep(0), limit=4)
        msgs = _messages(4, RecordingSettler())
        pool._closed = False
        pool._queue.extend(msgs)  # queued, not started
        assert [m.msg_id for m in pool.withdraw({2, 4})] == [2, 4]
        assert [m.msg_id for m in pool.withdraw(None)] == [1, 3]

    run(scenario())
