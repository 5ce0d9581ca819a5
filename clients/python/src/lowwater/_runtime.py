"""The async core behind every public class: connect, reconnect, dispatch, shut down."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Any, Protocol

import grpc

from lowwater._session import Session, SessionEnd, Sink
from lowwater._settings import Settings, channel_options
from lowwater.errors import ConnectionLost
from lowwater.v1 import coordinator_pb2_grpc as pb_grpc

_log = logging.getLogger("lowwater.connection")
_worker_log = logging.getLogger("lowwater.worker")

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""Signals that start a graceful shutdown when signal handlers are installed."""


class Dispatcher(Sink, Protocol):
    """A Sink that also takes part in the worker's lifecycle."""

    def limits(self) -> tuple[int, int]:
        """Flow-control limits (messages, bytes) to declare for a new stream."""
        ...

    def has_room(self) -> bool:
        """Whether a new stream may be opened now."""
        ...

    def stream_ended(self) -> None:
        """The stream that fed this dispatcher ended; what it had not started is gone."""
        ...

    def stop(self) -> None:
        """Shutdown has begun: start nothing new."""
        ...

    async def close(self, deadline: float) -> None:
        """Finishes work in progress until ``deadline`` (monotonic), then stops for good."""
        ...


class Runtime:
    """Keeps one stream to the sidecar open, feeding ``dispatcher``, until shutdown.

    On a broken or refused stream it reconnects with exponential backoff and
    jitter, logging a warning once per outage. When the sidecar drains a stream
    it reconnects too (the sidecar is restarting), unless shutting down.

    Owned by the event loop that awaits :meth:`run`. :meth:`request_shutdown`
    is thread-safe and idempotent.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dispatcher: Dispatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stop_requested = False
        self._stopping = False
        self._stop_deadline = 0.0
        self._wake: asyncio.Event | None = None
        self._session: Session | None = None
        self._failures = 0
        self._outage_since: float | None = None
        self.finished = threading.Event()
        """Set once :meth:`run` has returned (or raised)."""
        self._finished_async: asyncio.Event | None = None
        self._shutdown_timeout = settings.shutdown_timeout

    @property
    def stopping(self) -> bool:
        return self._stopping or self._stop_requested

    # -- any thread -------------------------------------------------------

    def request_shutdown(self, timeout: float | None = None) -> None:
        """Starts a graceful shutdown; returns at once. Safe from any thread, idempotent.

        Args:
            timeout: seconds to wait for work in progress; None for ``shutdown_timeout``.
        """
        if timeout is not None:
            self._shutdown_timeout = timeout
        with self._lock:
            self._stop_requested = True
            loop = self._loop
        if loop is None or self.finished.is_set():
            return
        try:
            if _running_loop() is loop:
                self._begin_shutdown()
            else:
                loop.call_soon_threadsafe(self._begin_shutdown)
        except RuntimeError:  # the loop closed meanwhile: run() has ended
            pass

    def on_loop_thread(self) -> bool:
        """Whether the caller runs on the loop that runs (or ran) this runtime."""
        return self._loop is not None and _running_loop() is self._loop

    async def wait_finished(self) -> None:
        """Waits until :meth:`run` has returned; at once if it never started."""
        if not self._started or self.finished.is_set():
            return
        if _running_loop() is self._loop and self._finished_async is not None:
            await self._finished_async.wait()
        else:
            await asyncio.get_running_loop().run_in_executor(None, self.finished.wait)

    # -- the loop ---------------------------------------------------------

    def on_orphan_done(self) -> None:
        """A handler of an ended stream finished: the live stream may hold more."""
        if self.dispatcher is None:
            return
        if self._session is not None and self._session.opened:
            self._session.set_limits(*self.dispatcher.limits())
        if self._wake is not None:
            self._wake.set()

    async def run(self, dispatcher: Dispatcher, *, install_signal_handlers: bool = False) -> None:
        """Serves until shutdown.

        Raises:
            RuntimeError: called a second time.
            SidecarRejected: the sidecar refused the stream; reconnecting cannot help.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._started:
                raise RuntimeError("run() can only be called once per worker")
            self._started = True
            self._loop = loop
            self.dispatcher = dispatcher
            self._wake = asyncio.Event()
            self._finished_async = asyncio.Event()
        installed: list[signal.Signals] = []
        try:
            if install_signal_handlers:
                for sig in SHUTDOWN_SIGNALS:
                    loop.add_signal_handler(sig, self._begin_shutdown)
                    installed.append(sig)
            if self._stop_requested:
                self._begin_shutdown()
            settings = self.settings
            credentials = settings.channel_credentials()
            if credentials is None:
                channel = grpc.aio.insecure_channel(
                    settings.target, options=channel_options(settings)
                )
            else:
                channel = grpc.aio.secure_channel(
                    settings.target, credentials, options=channel_options(settings)
                )
            try:
                await self._serve(pb_grpc.CoordinatorStub(channel), dispatcher)
            finally:
                if not self._stopping:
                    self._stop_deadline = time.monotonic() + settings.shutdown_timeout
                    self._stopping = True
                await dispatcher.close(self._stop_deadline)
                await channel.close()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.finished.set()
            self._finished_async.set()
            _worker_log.info("worker %s stopped", self.settings.worker_id)

    def _begin_shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._stop_deadline = time.monotonic() + self._shutdown_timeout
        _worker_log.info(
            "worker %s shutting down (up to %.1f s for running work)",
            self.settings.worker_id,
            self._shutdown_timeout,
        )
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self._wake is not None:
            self._wake.set()
        if self._session is not None:
            self._session.close(self._stop_deadline)

    async def _serve(self, stub: Any, dispatcher: Dispatcher) -> None:
        backoff = self.settings.reconnect_backoff
        while not self._stopping:
            if not dispatcher.has_room():
                await self._pause(None)
                continue
            session = Session(stub, self.settings, dispatcher, dispatcher.limits(), self._opened)
            self._session = session
            try:
                end = await session.run()
            except ConnectionLost as exc:
                self._failures += 1
                if self._stopping:
                    _log.debug("stream ended while shutting down: %s", exc)
                elif self._outage_since is None:
                    self._outage_since = time.monotonic()
                    _log.warning(
                        "sidecar at %s unreachable (%s); reconnecting with backoff",
                        self.settings.target,
                        exc,
                    )
                else:
                    _log.debug("reconnect attempt %d failed: %s", self._failures, exc)
            else:
                if end is SessionEnd.DRAINED and not self._stopping:
                    _log.info("sidecar drained stream %s; reconnecting", session.stream_id)
                    self._failures += 1
            finally:
                self._session = None
                dispatcher.stream_ended()
            if not self._stopping:
                await self._pause(backoff.delay_seconds(max(1, self._failures)))

    def _opened(self, session: Session) -> None:
        if self._outage_since is not None:
            _log.info(
                "reconnected to sidecar at %s after %.1f s (%d failed attempt(s))",
                self.settings.target,
                time.monotonic() - self._outage_since,
                self._failures,
            )
        else:
            _log.info("connected to sidecar at %s (stream %s)", self.settings.target, session.stream_id)
        self._outage_since = None
        self._failures = 0
        if self._stopping:
            session.close(self._stop_deadline)

    async def _pause(self, seconds: float | None) -> None:
        """Sleeps ``seconds`` (None: until woken), returning early on shutdown or a wake-up."""
        wake = self._wake
        if wake is None or self._stopping:
            return
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), seconds)
        except TimeoutError:
            pass


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
