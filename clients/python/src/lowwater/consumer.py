"""Manual mode: iterate over messages and settle each one yourself.

Use a consumer when a handler per message does not fit: batching writes,
feeding another framework, settling much later. The consumer keeps the stream,
reconnects, and extends leases of unsettled messages exactly like the workers;
you call :meth:`Message.ack` (or another outcome) on every message you take.

Example::

    async with lowwater.AsyncConsumer("127.0.0.1:50051", max_in_flight=100) as consumer:
        async for msg in consumer.messages():
            await store(msg.value)
            msg.ack()

Flow control counts every message taken and not yet settled: once
``max_in_flight`` messages are unsettled, no more arrive. Messages of a broken
stream can still be settled, but the settlement is discarded (the call returns
False), because the sidecar redelivers them. Shutdown stops the iteration, then
waits up to ``shutdown_timeout`` for the messages already taken to be settled;
when the ``with`` block ends with an exception it does not wait.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Container, Iterator
from datetime import timedelta
from types import TracebackType
from typing import Self, Unpack

from lowwater._runtime import Runtime
from lowwater._session import withdraw_queued
from lowwater._settings import Settings, WorkerOptions, make_settings, takes_options
from lowwater.message import Message

__all__ = ["AsyncConsumer", "Consumer"]


class _Buffer:
    """Deliveries not yet taken by the user. ``accept``/``withdraw`` run on the event loop."""

    def __init__(self, settings: Settings) -> None:
        self._limits = (settings.max_in_flight, settings.max_in_flight_bytes)
        self._queue: collections.deque[Message] = collections.deque()
        self._stopped = False

    def limits(self) -> tuple[int, int]:
        return self._limits

    def has_room(self) -> bool:
        return True

    def stream_ended(self) -> None:
        self.withdraw(None)

    def withdraw(self, msg_ids: Container[int] | None) -> list[Message]:
        return withdraw_queued(self._queue, msg_ids)

    def withdraw_revoked(self, msg_ids: Container[int]) -> list[Message]:
        """Withdraws them at once: the user takes messages at their own pace, maybe too late."""
        return self.withdraw(msg_ids)


class _AsyncBuffer(_Buffer):
    """A buffer read by coroutines on the same event loop."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._changed = asyncio.Event()

    def accept(self, batch: list[Message]) -> None:
        # Queued even once stopped: the session withdraws them when it closes.
        self._queue.extend(batch)
        self._changed.set()

    def stop(self) -> None:
        self._stopped = True
        self._changed.set()

    async def close(self, deadline: float) -> None:
        self.stop()
        self._queue.clear()

    async def get(self, timeout: float | None) -> Message | None:
        """The next message; None once stopped or when ``timeout`` passes."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while not self._queue or self._stopped:
            if self._stopped:
                return None
            self._changed.clear()
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return None
        return self._queue.popleft()


class _ThreadBuffer(_Buffer):
    """A buffer read by other threads; every access holds the condition's lock."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._cond = threading.Condition()

    def accept(self, batch: list[Message]) -> None:
        with self._cond:  # queued even once stopped: the session withdraws them when it closes
            self._queue.extend(batch)
            self._cond.notify_all()

    def withdraw(self, msg_ids: Container[int] | None) -> list[Message]:
        with self._cond:
            return super().withdraw(msg_ids)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    async def close(self, deadline: float) -> None:
        self.stop()
        self.withdraw(None)

    def get(self, timeout: float | None) -> Message | None:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._stopped, timeout)
            return self._queue.popleft() if self._queue and not self._stopped else None


def _timeout(timeout: timedelta | None) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, timedelta):
        raise TypeError(f"timeout must be a timedelta or None, got {type(timeout).__name__}")
    return max(0.0, timeout.total_seconds())


class AsyncConsumer:
    """Hands messages to your coroutines; you settle each one (manual mode).

    Arguments are those of :class:`lowwater.AsyncWorker` without a handler
    (``retry_backoff`` is accepted for symmetry and unused: you choose delays).

    Lifecycle: ``async with`` connects in the background and shuts down on
    exit; :meth:`shutdown` ends the iteration early. All on one event loop; a
    consumer runs once.
    """

    @takes_options
    def __init__(self, target: str, **options: Unpack[WorkerOptions]) -> None:
        self._settings = make_settings(target, **options)
        self._runtime = Runtime(self._settings)
        self._buffer: _AsyncBuffer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("a consumer runs once")
        self._buffer = _AsyncBuffer(self._settings)
        self._task = asyncio.get_running_loop().create_task(self._runtime.run(self._buffer))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:  # the block failed: do not wait for what it took and left unsettled
            self._runtime.request_shutdown(timeout=0.0)
        await self.shutdown()
        task = self._task
        if task is not None:
            if exc is None:
                await task
            elif task.done() and not task.cancelled():
                task.exception()

    async def get(self, timeout: timedelta | None = None) -> Message | None:
        """The next message, waiting up to ``timeout`` (None: no limit).

        Returns:
            None when the timeout passed or the consumer is shutting down.

        Raises:
            RuntimeError: used outside ``async with``.
        """
        if self._buffer is None:
            raise RuntimeError("use the consumer inside `async with`")
        return await self._buffer.get(_timeout(timeout))

    async def messages(self) -> AsyncIterator[Message]:
        """Yields messages until shutdown; settle every one of them."""
        while (msg := await self.get()) is not None:
            yield msg

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.messages()

    async def shutdown(self) -> None:
        """Ends the iteration, waits up to ``shutdown_timeout`` for taken messages to be
        settled, and closes the stream. Idempotent."""
        self._runtime.request_shutdown()
        await self._runtime.wait_finished()


class Consumer:
    """The thread-based :class:`AsyncConsumer`: iterate from any thread, settle from any thread.

    The SDK runs its event loop on a background thread started by ``with``.
    Arguments are those of :class:`AsyncConsumer`.

    Example::

        with lowwater.Consumer("127.0.0.1:50051") as consumer:
            for msg in consumer:
                store(msg.value)
                msg.ack()

    :meth:`shutdown` may be called from any thread (for example a signal
    handler); iteration then ends.
    """

    @takes_options
    def __init__(self, target: str, **options: Unpack[WorkerOptions]) -> None:
        self._settings = make_settings(target, **options)
        self._runtime = Runtime(self._settings)
        self._buffer = _ThreadBuffer(self._settings)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("a consumer runs once")

        def target() -> None:
            try:
                asyncio.run(self._runtime.run(self._buffer))
            except BaseException as exc:  # noqa: BLE001 - handed to __exit__
                self._error = exc
            finally:
                self._buffer.stop()

        self._thread = threading.Thread(target=target, name="lowwater-consumer", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:  # the block failed: do not wait for what it took and left unsettled
            self._runtime.request_shutdown(timeout=0.0)
        self.shutdown()
        if exc is None and self._error is not None:
            raise self._error

    def get(self, timeout: timedelta | None = None) -> Message | None:
        """The next message, waiting up to ``timeout`` (None: no limit).

        Returns:
            None when the timeout passed or the consumer is shutting down.

        Raises:
            RuntimeError: used outside ``with``.
        """
        if self._thread is None:
            raise RuntimeError("use the consumer inside `with`")
        return self._buffer.get(_timeout(timeout))

    def __iter__(self) -> Iterator[Message]:
        """Yields messages until shutdown; settle every one of them."""
        while (msg := self.get()) is not None:
            yield msg

    def messages(self) -> Iterator[Message]:
        """Same as iterating over the consumer."""
        return iter(self)

    def shutdown(self, *, wait: bool = True) -> None:
        """Ends the iteration and closes gracefully (see :meth:`AsyncConsumer.shutdown`).

        Thread-safe and idempotent.

        Args:
            wait: block until the stream is closed.
        """
        self._buffer.stop()
        self._runtime.request_shutdown()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
