"""FakeSidecar: the Coordinator service on a real gRPC server, without Kafka."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import grpc

from lowwater.testing._core import FakeCore
from lowwater.testing._ledger import Holder, Ledger
from lowwater.testing._records import (
    DeliveryRecord,
    OutcomeName,
    PublishedRecord,
    SettlementRecord,
    StreamInfo,
)
from lowwater.testing._servicer import CoordinatorServicer, TokenCheck
from lowwater.v1 import coordinator_pb2_grpc as pb_grpc

_log = logging.getLogger("lowwater.testing")

SERVER_THREADS = 32
"""gRPC server threads: one per open stream or waiting Pull, plus headroom."""


class FakeSidecar:
    """An in-process lowwater sidecar for tests: publish records, run workers, observe outcomes.

    It serves the ``lowwater.v1.Coordinator`` service on a real gRPC server on
    ``127.0.0.1`` and follows the proto contract: the first request must carry
    ``open`` only; it never keeps more deliveries outstanding on a stream than
    its flow-control limits; it redelivers (attempt + 1) on RETRY after the
    delay, when a lease lapses and when a stream ends; it answers late or wrong
    settlements in ``rejected`` (UNKNOWN, ALREADY_SETTLED, STALE, NOT_OWNER,
    INVALID); it sends ``revoking`` (:meth:`revoke`) and ``draining``
    (:meth:`drain`, :meth:`stop`). Pull and Acknowledge work too.

    Records live in the fake, not in the server: :meth:`stop` then
    :meth:`start` is a sidecar restart on the same port, and unfinished
    records are delivered again.

    Thread-safe; usable from sync and async tests. Blocking waits have
    ``*_async`` twins that run in a thread, so that a worker on the same event
    loop keeps running. ``with`` / ``async with`` start and stop it.

    Args:
        port: the port to listen on; 0 picks a free one (kept across restarts).
        lease: the lease each delivery gets.
        max_lease: the most a lease can be extended to from now.
        default_retry_delay: the delay of a RETRY without one.
        max_attempts: deliveries before a record is dead-lettered; None: no limit.
        max_batch: most deliveries in one response.
        token: the bearer token workers must send (the worker option ``token``, or
            ``token_file``/``token_env``); calls without it fail UNAUTHENTICATED, as on a
            sidecar with ``token_file``. None: no token needed.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        lease: timedelta = timedelta(seconds=30),
        max_lease: timedelta = timedelta(minutes=10),
        default_retry_delay: timedelta = timedelta(seconds=1),
        max_attempts: int | None = None,
        max_batch: int = 500,
        token: str | None = None,
    ) -> None:
        if token is not None and not token.strip():
            raise ValueError("token must not be empty")
        self._token = None if token is None else token.strip()
        if lease <= timedelta(0) or max_lease < lease:
            raise ValueError("FakeSidecar needs 0 < lease <= max_lease")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._port = port
        ledger = Ledger(
            lease=lease.total_seconds(),
            max_lease=max_lease.total_seconds(),
            retry_delay=default_retry_delay.total_seconds(),
            max_attempts=max_attempts,
        )
        self._core = core = FakeCore(ledger, max_batch)
        self._cond = core.cond
        self._ledger = ledger
        self._server: Any = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._pump: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Self:
        """Starts serving (again, on the same port after :meth:`stop`). Idempotent."""
        with self._cond:
            if self._core.running:
                return self
            executor = futures.ThreadPoolExecutor(SERVER_THREADS, thread_name_prefix="fake-grpc")
            checks = [] if self._token is None else [TokenCheck(self._token)]
            server = grpc.server(executor, interceptors=checks)
            pb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(self._core), server)
            port = server.add_insecure_port(f"127.0.0.1:{self._port}")
            if not port:
                executor.shutdown(wait=False)
                raise RuntimeError(f"FakeSidecar could not bind 127.0.0.1:{self._port}")
            self._port = port
            server.start()
            self._server, self._executor = server, executor
            self._core.running = True
            self._pump = threading.Thread(target=self._core.pump, name="fake-sidecar", daemon=True)
            self._pump.start()
        return self

    def stop(self, *, grace: timedelta = timedelta(seconds=5), drain: bool = True) -> None:
        """Stops serving, like a sidecar shutting down. Idempotent.

        Args:
            grace: with ``drain``, how long workers get to settle and close.
            drain: send ``draining`` and wait for the streams to close first;
                False breaks every stream at once (a crash, as workers see it).
        """
        if drain and self._core.running:
            self.drain(grace)
            try:
                self.wait_until(lambda: not self.open_streams, timeout=grace, what="streams closed")
            except TimeoutError:
                _log.warning("streams still open after the drain grace; breaking them")
        with self._cond:
            if not self._core.running:
                return
            self._core.running = False
            server, self._server = self._server, None
            executor, self._executor = self._executor, None
            self._cond.notify_all()
        server.stop(None).wait()
        if executor is not None:
            executor.shutdown(wait=False)
        with self._cond:
            for holder in self._core.streams:
                self._core.close_stream(holder)
        if self._pump is not None:
            self._pump.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=timedelta(seconds=1))

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop, grace=timedelta(seconds=1))

    @property
    def port(self) -> int:
        return self._port

    @property
    def target(self) -> str:
        """The address workers connect to."""
        return f"127.0.0.1:{self._port}"

    # -- driving ------------------------------------------------------------

    def publish(
        self,
        *,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
        partition: int = 0,
        timestamp: datetime | None = None,
    ) -> PublishedRecord:
        """Appends a record to ``topic[partition]``; it is delivered as soon as a stream has room."""
        timestamp_ms = 0 if timestamp is None else int(timestamp.timestamp() * 1000)
        with self._cond:
            ref = self._ledger.publish(topic, partition, key, value, tuple(headers), timestamp_ms)
            self._core.dispatch_all()
            self._cond.notify_all()
        return ref

    def drain(self, deadline: timedelta = timedelta(seconds=5)) -> None:
        """Sends ``draining`` on every open stream; they get no more deliveries. New streams do."""
        with self._cond:
            self._core.drain(deadline.total_seconds())

    def revoke(self, topic: str, partition: int, deadline: timedelta = timedelta(seconds=2)) -> None:
        """Revokes ``topic[partition]`` and reassigns it at once, as a rebalance would.

        Every open stream is told (``revoking``) with its msg_ids on the
        partition. Once they are settled, or ``deadline`` has passed, the
        generation ends: later settlements of those msg_ids are STALE, and the
        unfinished records are delivered again, from attempt 1.
        """
        with self._cond:
            self._core.revoke(topic, partition, deadline.total_seconds())

    # -- observing ------------------------------------------------------------

    @property
    def settlements(self) -> list[SettlementRecord]:
        """Every accepted settlement, in order."""
        with self._cond:
            return list(self._ledger.settlements)

    @property
    def deliveries(self) -> list[DeliveryRecord]:
        """Every delivery made, in order."""
        with self._cond:
            return list(self._ledger.deliveries)

    @property
    def rejections(self) -> list[tuple[int, str]]:
        """Every settlement answered with a status other than OK: (msg_id, status name)."""
        with self._cond:
            return list(self._ledger.rejections)

    @property
    def extensions(self) -> list[int]:
        """The msg_id of every accepted lease extension, in order."""
        with self._cond:
            return list(self._ledger.extensions)

    @property
    def dead_letters(self) -> list[tuple[PublishedRecord, str]]:
        """Records sent to the (fake) dead-letter topic, with the reason."""
        with self._cond:
            return list(self._ledger.dead_letters)

    @property
    def lapses(self) -> int:
        """How many leases ran out."""
        with self._cond:
            return self._ledger.lapses

    @property
    def outstanding(self) -> int:
        """Deliveries leased now, on every stream and Pull caller."""
        with self._cond:
            return len(self._ledger.leases)

    @property
    def pending(self) -> int:
        """Records not finished yet."""
        with self._cond:
            return self._ledger.pending()

    @property
    def streams(self) -> list[StreamInfo]:
        """Every stream opened so far, open or closed, oldest first."""
        with self._cond:
            return [_info(h) for h in self._core.streams]

    @property
    def open_streams(self) -> list[StreamInfo]:
        with self._cond:
            return [_info(h) for h in self._core.open_streams()]

    def committed(self, topic: str, partition: int) -> int:
        """The offset a real sidecar would commit: the lowest one not finished."""
        with self._cond:
            return self._ledger.committed(topic, partition)

    def outcome(self, record: PublishedRecord) -> OutcomeName | None:
        """The outcome of the last accepted settlement of ``record``, if any."""
        with self._cond:
            found = [s.outcome for s in self._ledger.settlements if s.record == record]
        return found[-1] if found else None

    # -- waiting ------------------------------------------------------------

    def wait_until(
        self, predicate: Callable[[], bool], *, timeout: timedelta, what: str = "condition"
    ) -> None:
        """Blocks until ``predicate()`` is true; it is checked on every change, under the lock.

        Raises:
            TimeoutError: not true within ``timeout``; the message names ``what``.
        """
        with self._cond:
            if not self._cond.wait_for(predicate, timeout.total_seconds()):
                raise TimeoutError(f"FakeSidecar: no {what} within {timeout}")

    def wait_for_settlements(
        self, count: int, *, timeout: timedelta = timedelta(seconds=10)
    ) -> list[SettlementRecord]:
        """Blocks until at least ``count`` settlements were accepted; returns them all."""
        ledger = self._ledger
        try:
            self.wait_until(lambda: len(ledger.settlements) >= count, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(
                f"FakeSidecar: {len(self.settlements)} of {count} settlements within {timeout}"
            ) from None
        return self.settlements

    async def wait_until_async(
        self, predicate: Callable[[], bool], *, timeout: timedelta, what: str = "condition"
    ) -> None:
        """:meth:`wait_until` for coroutines (waits on a thread)."""
        await asyncio.to_thread(self.wait_until, predicate, timeout=timeout, what=what)

    async def wait_for_settlements_async(
        self, count: int, *, timeout: timedelta = timedelta(seconds=10)
    ) -> list[SettlementRecord]:
        """:meth:`wait_for_settlements` for coroutines (waits on a thread)."""
        return await asyncio.to_thread(self.wait_for_settlements, count, timeout=timeout)


def _info(h: Holder) -> StreamInfo:
    return StreamInfo(
        stream_id=h.name,
        worker_id=h.worker_id,
        max_in_flight=h.max_messages,
        max_in_flight_bytes=h.max_bytes,
        outstanding=len(h.leases),
        max_outstanding_seen=h.max_seen,
        max_outstanding_bytes_seen=h.max_bytes_seen,
        max_in_flight_declared_min=h.min_declared,
        open=h.open,
    )
