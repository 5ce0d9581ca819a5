"""Runs the handler for each delivery on a small pool of long-lived runner tasks.

A task per message costs far more than the no-op handler it would run, so a
runner takes messages from a shared queue one after the other. Concurrency
still follows the handlers: when a runner picks a message and more are
waiting, it wakes (or starts) one more runner first, so every waiting message
gets a runner as soon as the current one suspends. Handlers that never
suspend therefore cost no task switch at all.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Container

from lowwater._session import withdraw_queued
from lowwater.backoff import Backoff
from lowwater.message import Message
from lowwater.outcomes import HandlerOutcome, settlement_for

_log = logging.getLogger("lowwater.handler")

Invoke = Callable[[Message], Awaitable[None]]
"""Runs the user's handler for one message (awaits it, or runs it on a thread)."""


class _Slot:
    """What one runner is running: a message, or None."""

    __slots__ = ("msg",)

    def __init__(self) -> None:
        self.msg: Message | None = None


class HandlerPool:
    """The sink of a handler-mode worker: a queue of deliveries and the runners that serve it.

    Owned by the event loop thread. At most ``concurrency`` runners exist; the
    flow-control limit declared to the sidecar is ``limit`` (at least as large), so
    up to ``limit - concurrency`` deliveries wait here for the next free runner
    and a runner that finishes finds one without a round trip to the sidecar.

    Handlers still running when their stream ends are *orphans*: they finish,
    their settlements are discarded, and they count against the limits that the
    next stream declares (see :meth:`limits`).
    """

    def __init__(
        self,
        invoke: Invoke,
        *,
        limit: int,
        concurrency: int | None = None,
        max_bytes: int,
        retry_backoff: Backoff,
        on_orphan_done: Callable[[], None],
    ) -> None:
        self._invoke = invoke
        self._limit = limit
        self._concurrency = limit if concurrency is None else min(concurrency, limit)
        self._max_bytes = max_bytes
        self._backoff = retry_backoff
        self._on_orphan_done = on_orphan_done
        self._queue: collections.deque[Message] = collections.deque()
        self._runners: dict[asyncio.Task[None], _Slot] = {}
        self._parked: list[asyncio.Future[None]] = []
        self._waking = 0
        """Runners woken or started that have not picked a message yet."""
        self._orphans: set[Message] = set()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._watching = False
        """Whether a finished handler must be reported (orphans or idle waiters exist)."""
        self._closed = False

    # -- Sink -------------------------------------------------------------

    def accept(self, batch: list[Message]) -> None:
        if self._closed:
            return
        self._queue.extend(batch)
        if not self._waking:
            self._wake_one()

    def withdraw(self, msg_ids: Container[int] | None) -> list[Message]:
        return withdraw_queued(self._queue, msg_ids)

    def withdraw_revoked(self, msg_ids: Container[int]) -> list[Message]:
        """Keeps them all: a runner is free for each, or soon is (at most ``limit -
        concurrency`` wait), so they start and settle in time."""
        return []

    # -- engine -------------------------------------------------------------

    def limits(self) -> tuple[int, int]:
        """Flow-control limits for a stream: the configured ones minus what orphans hold."""
        max_bytes = self._max_bytes
        if max_bytes:
            max_bytes = max(1, max_bytes - sum(m.size for m in self._orphans))
        return max(1, self._limit - len(self._orphans)), max_bytes

    def has_room(self) -> bool:
        """Whether a new stream can declare room for at least one delivery."""
        if len(self._orphans) >= self._limit:
            return False
        return not (self._max_bytes and sum(m.size for m in self._orphans) >= self._max_bytes)

    def stop(self) -> None:
        """Shutdown has begun: accept nothing new (the session withdraws what is queued)."""
        self._closed = True

    def stream_ended(self) -> None:
        """The current stream is gone: its running handlers become orphans."""
        self._queue.clear()
        self._orphans.update(self.running_messages())
        self._watching = bool(self._orphans or self._idle_waiters)

    def running_messages(self) -> list[Message]:
        """The messages whose handlers are running now."""
        return [slot.msg for slot in self._runners.values() if slot.msg is not None]

    async def wait_idle(self) -> None:
        """Returns once no handler is running, or at once if none is."""
        if self.running_messages():
            future = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(future)
            self._watching = True
            await future

    async def close(self, deadline: float) -> None:
        """Stops taking messages, waits for running handlers until ``deadline``, cancels the rest.

        Cancelling an async handler interrupts it; a handler on a thread cannot
        be interrupted and keeps running in the background.
        """
        self._closed = True
        self._queue.clear()
        left = deadline - time.monotonic()
        if left > 0:
            try:
                await asyncio.wait_for(self.wait_idle(), left)
            except TimeoutError:
                pass
        running = self.running_messages()
        if running:
            _log.warning(
                "%d handler(s) still running at the shutdown deadline; cancelling them"
                " (their records will be redelivered)",
                len(running),
            )
        runners = list(self._runners)
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.wait(runners, timeout=1.0)

    # -- runners ------------------------------------------------------------

    def _wake_one(self) -> None:
        while self._parked:
            future = self._parked.pop()
            if not future.done():
                future.set_result(None)
                self._waking += 1
                return
        if len(self._runners) < self._concurrency:
            self._waking += 1
            slot = _Slot()
            task = asyncio.get_running_loop().create_task(self._runner(slot))
            self._runners[task] = slot
            task.add_done_callback(self._runners.pop)

    async def _runner(self, slot: _Slot) -> None:
        queue, invoke = self._queue, self._invoke
        loop = asyncio.get_running_loop()
        self._waking -= 1
        while True:
            if not queue:
                parked = loop.create_future()
                self._parked.append(parked)
                await parked
                self._waking -= 1
                continue
            msg = queue.popleft()
            if queue and not self._waking:
                self._wake_one()
            slot.msg = msg
            try:
                await invoke(msg)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    slot.msg = None
                    raise
                self._failed(msg, asyncio.CancelledError("the handler was cancelled"))
            except Exception as exc:  # noqa: BLE001 - any handler failure becomes an outcome
                self._failed(msg, exc)
            except BaseException:
                slot.msg = None
                raise
            else:
                if not msg._settled:
                    msg._settled = True
                    msg._settler.ack(msg)
            slot.msg = None
            if self._watching:
                self._report(msg)

    def _report(self, msg: Message) -> None:
        """A handler finished while someone watches: orphan accounting, idle waiters."""
        if msg in self._orphans:
            self._orphans.discard(msg)
            self._on_orphan_done()
        if self._idle_waiters and not self.running_messages():
            for future in self._idle_waiters:
                if not future.done():
                    future.set_result(None)
            self._idle_waiters.clear()
        self._watching = bool(self._orphans or self._idle_waiters)

    def _failed(self, msg: Message, exc: BaseException) -> None:
        if msg._settled:
            _log.warning(
                "handler raised %r after settling %s[%d]@%d (msg_id=%d); keeping the settlement",
                exc, msg.topic, msg.partition, msg.offset, msg._id,
            )
            return
        outcome, delay, reason = settlement_for(exc, msg.attempt, self._backoff)
        if not isinstance(exc, HandlerOutcome):
            _log.warning(
                "handler failed on %s[%d]@%d (msg_id=%d, attempt %d); retrying in %.3f s",
                msg.topic, msg.partition, msg.offset, msg._id, msg.attempt, delay or 0.0,
                exc_info=exc,
            )
        msg._settled = True
        msg._settler.settle(msg, outcome, delay, reason)
