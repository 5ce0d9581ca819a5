"""One Stream call to the sidecar: open it, take deliveries, send settlements, drain, close."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Callable, Container
from threading import get_ident
from typing import Any, Protocol

import grpc

from lowwater._leases import due_for_extension, lease_tick
from lowwater._outbox import Outbox
from lowwater._settings import Settings
from lowwater.errors import ConnectionLost, SidecarRejected
from lowwater.message import Batch, Message, from_delivery
from lowwater.outcomes import Outcome
from lowwater.v1 import coordinator_pb2 as pb
from lowwater.v1 import coordinator_pb2_grpc as pb_grpc

_log = logging.getLogger("lowwater.connection")
_settle_log = logging.getLogger("lowwater.settle")

OPEN_TIMEOUT = 10.0
"""Seconds to send ``open`` and get the sidecar's ``opened`` answer before giving up on an
attempt."""

CLOSE_TIMEOUT = 5.0
"""Seconds to wait, after half-closing, for the sidecar to end the stream."""

DEFAULT_LEASE = 30.0
"""Lease length assumed (seconds) when ``opened`` does not carry one."""

_NOT_RETRIABLE = frozenset(
    {"INVALID_ARGUMENT", "UNIMPLEMENTED", "PERMISSION_DENIED", "UNAUTHENTICATED"}
)
"""gRPC status codes for which reconnecting cannot help."""


class Sink(Protocol):
    """Where a session's deliveries go (handler runners or a consumer's buffer)."""

    def accept(self, batch: list[Message]) -> None:
        """Takes new deliveries. Must not block or start user code synchronously."""
        ...

    def withdraw(self, msg_ids: Container[int] | None) -> list[Message]:
        """Removes and returns deliveries not yet started; all of them when ``msg_ids`` is None."""
        ...

    def withdraw_revoked(self, msg_ids: Container[int]) -> list[Message]:
        """A revoke of ``msg_ids`` was announced: removes and returns those not to start at all.

        The ones left queued may still start until the revoke deadline, when the session
        withdraws what is left of them. A sink that starts every delivery at once keeps them:
        they settle in time, and an unsettled withdrawn delivery would keep its lease, and the
        sidecar's rebalance, waiting until that deadline.
        """
        ...


class _EveryId:
    """A container of every msg_id."""

    def __contains__(self, msg_id: object) -> bool:
        return True


EVERY_ID = _EveryId()


def withdraw_queued(
    queue: collections.deque[Message], msg_ids: Container[int] | None
) -> list[Message]:
    """:meth:`Sink.withdraw` for a sink that queues deliveries: removes them from ``queue``.

    Returns the removed messages in queue order; the others keep theirs.
    """
    if msg_ids is None:
        out = list(queue)
        queue.clear()
        return out
    out = [m for m in queue if m._id in msg_ids]
    if out:
        keep = [m for m in queue if m._id not in msg_ids]
        queue.clear()
        queue.extend(keep)
    return out


class SessionEnd(enum.Enum):
    DRAINED = "drained"
    """The sidecar asked to drain; the stream is closed and the sidecar is going away."""
    CLOSED = "closed"
    """The worker closed the stream (shutdown)."""


def rpc_error(exc: BaseException, what: str) -> Exception:
    """Translates a gRPC failure to ConnectionLost or SidecarRejected."""
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
    name = code.name if code is not None else None
    details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    message = f"{what}: {name or type(exc).__name__}: {details}"
    if name in _NOT_RETRIABLE:
        return SidecarRejected(message, code=name)
    return ConnectionLost(message)


def _seconds(duration: Any, default: float) -> float:
    value = float(duration.seconds + duration.nanos / 1e9)
    return value if value > 0 else default


class Session:
    """One Stream call, from ``open`` to the end of the stream.

    Owned by the event loop that awaits :meth:`run`; :meth:`settle` and
    :meth:`extend` may be called from any thread. A session is used once.

    Settlements and extensions are queued and coalesced: the sender drains
    everything queued into one StreamRequest each time it wakes. Once the
    stream has ended, settlements are discarded (the sidecar has already
    released those leases and redelivers the records).
    """

    def __init__(
        self,
        stub: pb_grpc.CoordinatorAsyncStub,
        settings: Settings,
        sink: Sink,
        limits: tuple[int, int],
        on_open: Callable[[Session], None],
    ) -> None:
        self._stub = stub
        self._on_open = on_open
        self._settings = settings
        self._sink = sink
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._thread = get_ident()
        self._call: Any = None
        self.stream_id = ""
        self.lease = DEFAULT_LEASE
        self.max_lease = DEFAULT_LEASE
        self.opened = False
        self._outstanding: dict[int, Message] = {}
        """Delivered on this stream, not yet settled or withdrawn, by msg_id."""
        self._outbox = Outbox()
        self._acks = self._outbox.acks
        self._others = self._outbox.others
        self._wakeup = asyncio.Event()
        self._wakeup_set = False
        """Mirrors ``_wakeup.is_set()`` for the per-settlement fast path."""
        self._idle = asyncio.Event()
        self._done = False
        """Set when the stream has ended; from then on settlements are discarded."""
        self._closing = False
        self._half_close = False
        self._drained_by_sidecar = False
        self._cancelled_by_us = False
        self._drain_deadline = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.TimerHandle] = []
        """Revoke deadlines (see :meth:`_on_revoking`), cancelled when the stream ends."""

    # -- any thread -------------------------------------------------------

    def settle(self, msg: Message, outcome: Outcome, delay: float | None, reason: str) -> bool:
        if self._done:
            return False
        if get_ident() != self._thread:
            try:
                self._loop.call_soon_threadsafe(self.settle, msg, outcome, delay, reason)
            except RuntimeError:  # the loop has closed: the stream is long gone
                return False
            return True
        if outcome is Outcome.ACK and not reason:
            self.ack(msg)
        else:
            self._others.append((msg._id, outcome, delay, reason))
            self._queued(msg)
        return True

    def ack(self, msg: Message) -> None:
        if self._done:
            return
        self._acks.append(msg._id)
        self._queued(msg)

    def _queued(self, msg: Message) -> None:
        """``msg``'s settlement is in the outbox: it is no longer outstanding, and the sender
        wakes up."""
        outstanding = self._outstanding
        outstanding.pop(msg._id, None)
        if not self._wakeup_set:
            self._wakeup_set = True
            self._wakeup.set()
        if self._closing and not outstanding:
            self._idle.set()

    def extend(self, msg: Message, seconds: float | None) -> bool:
        if self._done:
            return False
        if get_ident() == self._thread:
            self._extend_here(msg, seconds)
            return True
        try:
            self._loop.call_soon_threadsafe(self._extend_here, msg, seconds)
        except RuntimeError:  # the loop has closed: the stream is long gone
            return False
        return True

    # -- the loop ---------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Deliveries of this stream not yet settled (nor withdrawn)."""
        return len(self._outstanding)

    def set_limits(self, max_messages: int, max_bytes: int) -> None:
        """Sends new flow-control limits with the next request."""
        if (max_messages, max_bytes) != self._limits:
            self._limits = (max_messages, max_bytes)
            self._outbox.flow = self._limits
            self._wakeup.set()

    def close(self, deadline: float) -> None:
        """Starts closing: settle what is outstanding until ``deadline`` (monotonic), then close.

        Idempotent; a second call can only bring the deadline forward.
        """
        self._begin_drain(deadline)

    async def run(self) -> SessionEnd:
        """Opens the stream and serves it until it ends.

        Raises:
            ConnectionLost: the stream could not be opened or broke.
            SidecarRejected: the sidecar refused the stream or broke the protocol.
        """
        try:
            metadata = self._settings.call_metadata()  # a token file is read again each time
        except (OSError, ValueError) as exc:
            raise ConnectionLost(f"cannot read the token: {exc}") from None
        try:
            call = self._call = self._stub.Stream(metadata=metadata)
            if self._closing:  # closed before the call existed
                return SessionEnd.CLOSED
            await self._open(call)
            spawn = self._loop.create_task
            self._tasks += [spawn(self._send_loop(call)), spawn(self._lease_loop())]
            await self._read_loop(call)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._cancelled_by_us or (task is not None and task.cancelling()):
                raise
        except grpc.aio.AioRpcError as exc:
            if not (self._closing and self._cancelled_by_us):
                raise rpc_error(exc, "stream to the sidecar broke") from None
        finally:
            self._end()
        if self._drained_by_sidecar:
            return SessionEnd.DRAINED
        if self._closing:
            return SessionEnd.CLOSED
        code = await self._call.code()
        raise ConnectionLost(f"the sidecar ended the stream without draining it ({code})")

    async def _open(self, call: Any) -> None:
        max_messages, max_bytes = self._limits
        flow = pb.FlowControl(max_in_flight_messages=max_messages, max_in_flight_bytes=max_bytes)
        request = pb.StreamRequest(
            open=pb.OpenStream(worker_id=self._settings.worker_id, flow_control=flow,
                              delivery_batches=True)
        )
        try:
            # Both halves are bounded: a write can wait for a connection that never answers.
            async with asyncio.timeout(OPEN_TIMEOUT):
                await call.write(request)
                first = await call.read()
        except TimeoutError:
            self._cancel_call()
            raise ConnectionLost(f"no answer to open within {OPEN_TIMEOUT} s") from None
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, "cannot open a stream to the sidecar") from None
        except asyncio.InvalidStateError:
            raise rpc_error(await self._failure(call), "stream ended while opening") from None
        if first is grpc.aio.EOF:
            raise ConnectionLost("the sidecar ended the stream before opening it")
        if not first.HasField("opened"):
            self._cancel_call()
            raise SidecarRejected("protocol violation: the first response lacks `opened`")
        opened = first.opened
        self.stream_id = opened.stream_id
        self.lease = _seconds(opened.lease, DEFAULT_LEASE)
        self.max_lease = max(self.lease, _seconds(opened.max_lease, self.lease))
        if opened.max_settlement_batch:
            self._outbox.max_ids = opened.max_settlement_batch
        self.opened = True
        _log.debug("stream %s opened (lease %.3f s)", self.stream_id, self.lease)
        self._on_open(self)
        self._handle(first)

    async def _failure(self, call: Any) -> BaseException:
        try:
            await call.read()
        except BaseException as exc:  # noqa: BLE001 - we want the RPC's own error
            return exc
        return ConnectionLost("stream ended")

    async def _read_loop(self, call: Any) -> None:
        read, eof, handle = call.read, grpc.aio.EOF, self._handle
        while True:
            response = await read()
            if response is eof:
                return
            handle(response)

    def _handle(self, response: pb.StreamResponse) -> None:
        deliveries, batches = response.deliveries, response.batches
        if deliveries or batches:
            if self._closing:
                _log.debug("ignoring deliveries that arrived while closing")
            else:
                now = time.monotonic()
                batch = [from_delivery(self, d, now) for d in deliveries]
                for b in batches:
                    records, first = Batch.of_batch(b), b.first_msg_id
                    batch += [Message(self, records, i, first + i, now)
                              for i in range(len(records))]
                outstanding = self._outstanding
                for msg in batch:
                    outstanding[msg._id] = msg
                self._sink.accept(batch)
        if response.rejected:
            self._on_rejected(response.rejected)
        if response.HasField("revoking"):
            self._on_revoking(response.revoking)
        if response.HasField("draining"):
            deadline = _seconds(response.draining.deadline, self._settings.shutdown_timeout)
            _log.info("sidecar is draining stream %s; closing within %.1f s", self.stream_id, deadline)
            self._drained_by_sidecar = True
            # What a sink starts at once still runs: a delivery left unsettled would hold its
            # partition's commit below later ones, which would then be processed again after
            # the restart. A sink whose user takes messages at their own pace drops them, as
            # on a revoke.
            self._begin_drain(time.monotonic() + deadline, withdraw=False)

    def _on_rejected(self, rejected: Any) -> None:
        counts = collections.Counter(
            pb.SettleStatus.Name(r.status).removeprefix("SETTLE_STATUS_") for r in rejected
        )
        sample = [r.msg_id for r in rejected[:5]]
        _settle_log.warning(
            "sidecar rejected %d settlement(s) on stream %s: %s (msg_ids %s%s)",
            len(rejected),
            self.stream_id,
            ", ".join(f"{n} {status}" for status, n in counts.items()),
            sample,
            "..." if len(rejected) > len(sample) else "",
        )

    def _on_revoking(self, revoking: pb.PartitionsRevoking) -> None:
        """Deliveries of revoked partitions: running ones settle; the sink decides about the others.

        Those the sink keeps queued may start until the deadline (a handler pool starts them at
        once); at the deadline whatever has not started is withdrawn, unsettled: a settlement
        would come too late (STALE), and the next owner of the partition delivers it again.
        Withdrawn deliveries are never settled: no outcome hands a delivery back without
        counting it as an attempt (RETRY may dead-letter it), so their leases stay out until the
        deadline, when the sidecar releases them.
        """
        msg_ids = set(revoking.msg_ids)
        partitions = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in revoking.partitions)
        deadline = revoking.deadline.seconds + revoking.deadline.nanos / 1e9
        if deadline > 0:
            withdrawn = self._sink.withdraw_revoked(msg_ids)
            now = self._loop.time()
            self._timers = [t for t in self._timers if t.when() > now]  # forget past ones
            self._timers.append(
                self._loop.call_later(deadline, self._revoke_deadline, msg_ids, partitions)
            )
        else:  # the sidecar is not waiting: settlements would be STALE already
            withdrawn = self._sink.withdraw(msg_ids)
        for msg in withdrawn:
            self._outstanding.pop(msg._id, None)
        _log.info(
            "sidecar revoking %s: %d delivery(ies) not started were dropped,"
            " %d to settle within %.1f s",
            partitions,
            len(withdrawn),
            len(msg_ids) - len(withdrawn),
            max(deadline, 0.0),
        )
        if self._closing and not self._outstanding:
            self._idle.set()

    def _revoke_deadline(self, msg_ids: set[int], partitions: str) -> None:
        """The revoke deadline has passed: deliveries of ``msg_ids`` not started are dropped."""
        if self._done:
            return
        withdrawn = self._sink.withdraw(msg_ids)
        for msg in withdrawn:
            self._outstanding.pop(msg._id, None)
        if withdrawn:
            _log.info(
                "revoke deadline of %s passed on stream %s: %d delivery(ies) not started"
                " were dropped",
                partitions,
                self.stream_id,
                len(withdrawn),
            )
        if self._closing and not self._outstanding:
            self._idle.set()

    def _extend_here(self, msg: Message, seconds: float | None) -> None:
        if self._done or msg._id not in self._outstanding:
            return
        span = self.lease if seconds is None else min(seconds, self.max_lease)
        msg._deadline = time.monotonic() + span
        self._outbox.extends.setdefault(seconds, []).append(msg._id)
        self._wakeup.set()

    # -- sending ------------------------------------------------------------

    async def _send_loop(self, call: Any) -> None:
        wakeup = self._wakeup
        try:
            while True:
                await wakeup.wait()
                wakeup.clear()
                self._wakeup_set = False
                while (request := self._outbox.take()) is not None:
                    await call.write(request)
                if self._half_close:
                    await call.done_writing()
                    return
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            # The call ended; the reader sees why and ends the session.
            _log.debug("stream %s: write failed: %r", self.stream_id, exc)

    # -- leases -------------------------------------------------------------

    async def _lease_loop(self) -> None:
        tick = lease_tick(self.lease)
        while True:
            await asyncio.sleep(tick)
            due = due_for_extension(
                self._outstanding.values(),
                now=time.monotonic(),
                wall=time.time(),
                lease=self.lease,
                max_extension=self._settings.max_lease_extension,
            )
            if due:
                self._outbox.extends.setdefault(None, []).extend(due)
                self._wakeup.set()

    # -- closing ------------------------------------------------------------

    def _begin_drain(self, deadline: float, *, withdraw: bool = True) -> None:
        """Stops taking deliveries and closes once every outstanding one is settled, or at
        ``deadline``. ``withdraw`` drops the deliveries not started yet (the sidecar redelivers
        them); otherwise the sink keeps those it would keep on a revoke."""
        if self._closing:
            self._drain_deadline = min(self._drain_deadline, deadline)
            self._idle.set()  # re-check the deadline
            return
        self._closing = True
        self._drain_deadline = deadline
        if self._call is None or not self.opened:
            self._cancel_call()
            return
        dropped = self._sink.withdraw(None) if withdraw else self._sink.withdraw_revoked(EVERY_ID)
        for msg in dropped:
            self._outstanding.pop(msg._id, None)
        self._tasks.append(self._loop.create_task(self._drain()))

    async def _drain(self) -> None:
        while self._outstanding:
            left = self._drain_deadline - time.monotonic()
            if left <= 0:
                break
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), left)
            except TimeoutError:
                break
        if self._outstanding:
            _log.warning(
                "closing stream %s with %d unsettled delivery(ies); the sidecar redelivers them",
                self.stream_id,
                len(self._outstanding),
            )
        self._half_close = True
        self._wakeup.set()
        await asyncio.sleep(CLOSE_TIMEOUT)  # the reader ends the session when the sidecar closes
        _log.warning("sidecar did not end stream %s in %.0f s; cancelling", self.stream_id, CLOSE_TIMEOUT)
        self._cancel_call()

    def _cancel_call(self) -> None:
        if self._call is not None and not self._call.done():
            self._cancelled_by_us = True
            self._call.cancel()

    def _end(self) -> None:
        self._done = True
        for task in self._tasks:
            task.cancel()
        for timer in self._timers:
            timer.cancel()
        self._cancel_call()
        self._sink.withdraw(None)
        self._outstanding.clear()
