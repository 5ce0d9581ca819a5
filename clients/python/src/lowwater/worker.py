"""Handler-mode workers: the SDK calls your handler for every message and settles it.

:class:`AsyncWorker` runs ``async def handler(msg)`` on the event loop;
:class:`Worker` runs ``def handler(msg)`` on a thread pool. Both settle each
message from the handler's result: returning means ACK, raising one of
:mod:`lowwater.outcomes` chooses that outcome, and any other exception means
RETRY after a backoff (see ``retry_backoff``).

Delivery guarantees, in short: at least once. A message whose handler has not
settled it when its stream breaks, when its lease lapses, or at shutdown, is
redelivered (possibly to another worker), so handlers must be idempotent.
Settlements for deliveries of a broken stream are discarded: the sidecar has
already released those leases.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Self, Unpack

from lowwater._dispatch import HandlerPool
from lowwater._runtime import Runtime
from lowwater._settings import Settings, WorkerOptions, make_settings, takes_options
from lowwater.message import Message

__all__ = ["AsyncHandler", "AsyncWorker", "SyncHandler", "Worker"]

AsyncHandler = Callable[[Message], Awaitable[None]]
"""An ``async def handler(msg: Message) -> None``."""

SyncHandler = Callable[[Message], None]
"""A ``def handler(msg: Message) -> None``, run on a worker thread."""

_handler_thread = threading.local()


def _is_async(handler: object) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async __call__ on an object
    )


class AsyncWorker:
    """Runs an async handler for each message the sidecar delivers.

    Example::

        async def handle(msg: lowwater.Message) -> None:
            await send_sms(msg.value)

        async with lowwater.AsyncWorker("127.0.0.1:50051", handle) as worker:
            await stop_requested.wait()
        # leaving the block shuts down gracefully

    The options after ``handler`` are keyword-only, and every worker and
    consumer class takes the same ones: they are documented here only.

    Args:
        target: the sidecar's address, for example ``"127.0.0.1:50051"``.
        handler: an ``async def`` taking a :class:`Message`.
        max_in_flight: most messages held at once (running or queued); declared
            to the sidecar, which never sends more. At least 1.
        max_in_flight_bytes: most key+value bytes held at once; 0 for no limit.
        concurrency: most handlers running at once, from 1 to ``max_in_flight``;
            by default ``max_in_flight``. Below it, the deliveries beyond
            ``concurrency`` wait at the worker for a free handler, so a handler
            that returns finds its next message there instead of waiting for the
            sidecar to send one: with slow handlers, ``max_in_flight`` about
            half again above ``concurrency`` keeps every handler busy. A consumer
            runs no handlers and ignores it.
        worker_id: a name shown by the sidecar's status; default ``host:pid``.
        shutdown_timeout: how long a graceful shutdown waits for running
            handlers before cancelling them.
        max_lease_extension: how long after its arrival a message's lease is
            still extended automatically while its handler runs; after that the
            lease lapses and the sidecar redelivers the message.
        retry_backoff: retry delays for handlers that fail with an exception
            other than a :class:`~lowwater.outcomes.HandlerOutcome`, by attempt.
        reconnect_backoff: delays between attempts to reach the sidecar.
        credentials: ``grpc.ChannelCredentials`` for TLS; None for plaintext
            (or the ``tls_*`` files, not both).
        channel_options: extra gRPC channel options, as (name, value) pairs.
        token: the bearer token the sidecar's ``token_file``/``token_env``
            requires, sent as ``authorization: Bearer <token>``.
        token_file: a file holding the token instead, read again at every
            (re)connection, so a rotated Secret is picked up.
        token_env: the name of an environment variable holding the token
            instead, read once here. Give at most one of the three.
        tls_ca_file: PEM bundle of the CA that signed the sidecar's
            certificate: connect with TLS.
        tls_cert_file, tls_key_file: the worker's PEM certificate and key,
            for a sidecar that requires client certificates (mutual TLS).
            TLS files are read when the worker starts.

    Raises:
        TypeError, ValueError: an argument is invalid; the message names it.

    Lifecycle: :meth:`run` serves until :meth:`shutdown`; ``async with`` starts
    :meth:`run` on entry and shuts down on exit. Both belong to one event loop;
    a worker runs once.
    """

    @takes_options
    def __init__(
        self,
        target: str,
        handler: AsyncHandler,
        **options: Unpack[WorkerOptions],
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be an async callable, got {handler!r}")
        if (inspect.isfunction(handler) or inspect.ismethod(handler)) and not _is_async(handler):
            raise TypeError("handler must be an `async def`; use lowwater.Worker for sync handlers")
        self._handler = handler
        self._settings = make_settings(target, **options)
        self._runtime = Runtime(self._settings)
        self._task: asyncio.Task[None] | None = None

    @property
    def worker_id(self) -> str:
        return self._settings.worker_id

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Serves messages until :meth:`shutdown` (or SIGTERM/SIGINT if installed).

        Args:
            install_signal_handlers: make SIGTERM and SIGINT start a graceful
                shutdown while running (main thread only).

        Raises:
            RuntimeError: the worker has run before.
            SidecarRejected: the sidecar refused the stream; reconnecting cannot help.
        """
        pool = _pool(self._settings, self._handler, self._runtime)
        await self._runtime.run(pool, install_signal_handlers=install_signal_handlers)

    async def shutdown(self) -> None:
        """Shuts down gracefully and waits until :meth:`run` has returned.

        Takes no new messages, lets running handlers finish and settle within
        ``shutdown_timeout`` (then cancels them), and closes the stream.
        Messages never started are not settled; the sidecar redelivers them at
        once. Idempotent; returns at once if the worker never ran. Do not await
        it from inside a handler (it would wait for that handler).
        """
        self._runtime.request_shutdown()
        await self._runtime.wait_finished()

    async def __aenter__(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self.run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
        task = self._task
        if task is None:
            return
        if exc is None:
            await task  # raises run()'s error, if any
        elif task.done() and not task.cancelled():
            task.exception()  # retrieved: the body's exception wins


class Worker:
    """Runs a sync handler on a thread pool for each message the sidecar delivers.

    The SDK itself runs on an asyncio event loop of its own; handlers run on
    ``concurrency`` threads. Arguments are those of :class:`AsyncWorker`,
    with a plain ``def handler(msg)``.

    Example::

        def handle(msg: lowwater.Message) -> None:
            send_sms(msg.value)

        lowwater.Worker("127.0.0.1:50051", handle).run()  # until SIGTERM/SIGINT

    Lifecycle: :meth:`run` blocks the calling thread until :meth:`shutdown`
    (callable from any thread) or, on the main thread by default, SIGTERM or
    SIGINT. ``with Worker(...)`` runs it on a background thread instead and
    shuts down on exit. A worker runs once. A handler still running at the end
    of ``shutdown_timeout`` cannot be interrupted: it keeps its thread, and its
    settlement is discarded.
    """

    @takes_options
    def __init__(
        self,
        target: str,
        handler: SyncHandler,
        **options: Unpack[WorkerOptions],
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        if _is_async(handler):
            raise TypeError("handler is an `async def`; use lowwater.AsyncWorker for it")
        self._handler = handler
        self._settings = make_settings(target, **options)
        self._runtime = Runtime(self._settings)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._launched = False
        self._done = threading.Event()

    @property
    def worker_id(self) -> str:
        return self._settings.worker_id

    def run(self, *, install_signal_handlers: bool | None = None) -> None:
        """Serves messages until :meth:`shutdown`; blocks the calling thread.

        Args:
            install_signal_handlers: make SIGTERM and SIGINT start a graceful
                shutdown; by default, True on the main thread.

        Raises:
            RuntimeError: the worker has run before, or an event loop is
                already running in this thread.
            SidecarRejected: the sidecar refused the stream; reconnecting cannot help.
        """
        if install_signal_handlers is None:
            install_signal_handlers = threading.current_thread() is threading.main_thread()
        self._launched = True
        try:
            asyncio.run(self._main(install_signal_handlers))
        finally:
            self._done.set()

    async def _main(self, install_signal_handlers: bool) -> None:
        executor = ThreadPoolExecutor(
            max_workers=self._settings.concurrency,
            thread_name_prefix="lowwater-handler",
            initializer=_mark_handler_thread,
        )
        loop = asyncio.get_running_loop()
        handler = self._handler

        async def invoke(msg: Message) -> None:
            await loop.run_in_executor(executor, handler, msg)

        try:
            pool = _pool(self._settings, invoke, self._runtime)
            await self._runtime.run(pool, install_signal_handlers=install_signal_handlers)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, *, wait: bool = True) -> None:
        """Starts a graceful shutdown (see :meth:`AsyncWorker.shutdown`); thread-safe, idempotent.

        Args:
            wait: block until :meth:`run` has returned. Ignored (no wait) when
                called from a handler thread or from the worker's own loop,
                where waiting would never end.
        """
        self._runtime.request_shutdown()
        if not wait or getattr(_handler_thread, "active", False) or self._runtime.on_loop_thread():
            return
        if self._launched:
            self._done.wait()

    def __enter__(self) -> Self:
        def target() -> None:
            try:
                self.run(install_signal_handlers=False)
            except BaseException as exc:  # noqa: BLE001 - handed to __exit__
                self._error = exc

        self._launched = True
        self._thread = threading.Thread(target=target, name="lowwater-worker", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._runtime.request_shutdown()
        if self._thread is not None:
            self._thread.join()
        if exc is None and self._error is not None:
            raise self._error


def _mark_handler_thread() -> None:
    _handler_thread.active = True


def _pool(settings: Settings, invoke: AsyncHandler, runtime: Runtime) -> HandlerPool:
    return HandlerPool(
        invoke,
        limit=settings.max_in_flight,
        concurrency=settings.concurrency,
        max_bytes=settings.max_in_flight_bytes,
        retry_backoff=settings.retry_backoff,
        on_orphan_done=runtime.on_orphan_done,
    )
