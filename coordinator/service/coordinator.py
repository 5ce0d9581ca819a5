"""The ``lowwater.v1.Coordinator`` servicer: thin translation over the engine, and the
limits that keep one client from exhausting the sidecar (see :mod:`coordinator.service.limits`).

A worker that stops reading its stream costs at most one stream message (at most
``max_send_message_bytes``, built and handed to gRPC) plus what the stream's HTTP/2 window
holds: the writer awaits each write, and takes no new lease while one is pending. Settlement
answers it has not sent yet are bounded too: the reader stops reading requests while more than
``max_settlement_batch`` of them wait. A write that is not taken within
``stream_write_timeout`` closes the stream, and its leases are redelivered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from coordinator.core.model import Outcome, SettleStatus
from coordinator.core.records import leased_count, members
from coordinator.runtime.engine import Draining, Engine, Revoking, Session, delivery_batch
from coordinator.service import convert
from coordinator.service.convert import Fill, Leased
from coordinator.service.errors import invalid_argument, limit_exceeded, unavailable
from coordinator.service.limits import Limits
from lowwater.v1 import coordinator_pb2 as pb
from lowwater.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger("coordinator.streams")
limits_log = logging.getLogger("coordinator.limits")

DELIVERY_MESSAGE_BYTES = 1024 * 1024
"""Deliveries are packed into one stream message up to this size; a lone bigger record goes
alone, up to ``max_send_message_bytes``. 1 MiB holds a full batch of 500 records of 2 KiB,
so batching loses nothing, and keeps the message a worker that stops reading holds small."""


class Stalled(Exception):
    """A stream message was not taken within ``stream_write_timeout``."""


def _consume(write: asyncio.Future[None]) -> None:
    """Retrieves a write's outcome: a write that failed because its call ended is no news."""
    if not write.cancelled():
        write.exception()


def _answer(session: Session, rejected: list[tuple[int, SettleStatus]]) -> None:
    """Queues the answers to a request's msg_ids that were not accepted, for the writer."""
    if rejected:
        session.rejected.extend(rejected)
        session.wake.set()


def request_ids(req: pb.StreamRequest) -> int:
    """The msg_ids one stream request names: what ``max_settlement_batch`` counts."""
    return (len(req.settlements) + len(req.ack_msg_ids) + len(req.extend.msg_ids)
            + sum(r.count for r in req.ack_ranges))


def _serialized(response: pb.StreamResponse | bytes) -> bytes:
    """Stream's response serializer: the writer hands its messages over serialized already.
    It needs each one's size first, and upb's ``ByteSize()`` costs a whole serialization (as
    much CPU as the delivery batch took to build, measured)."""
    return response if isinstance(response, bytes) else response.SerializeToString()


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name


def add_to_server(service: CoordinatorService, server: grpc.aio.Server) -> None:
    """Registers ``service`` as the generated ``add_CoordinatorServicer_to_server`` does, except
    that Stream also takes responses serialized already (see :func:`_serialized`)."""
    handlers = {
        "Stream": grpc.stream_stream_rpc_method_handler(
            service.Stream, request_deserializer=pb.StreamRequest.FromString,
            response_serializer=_serialized),
        "Pull": grpc.unary_unary_rpc_method_handler(
            service.Pull, request_deserializer=pb.PullRequest.FromString,
            response_serializer=pb.PullResponse.SerializeToString),
        "Acknowledge": grpc.unary_unary_rpc_method_handler(
            service.Acknowledge, request_deserializer=pb.AcknowledgeRequest.FromString,
            response_serializer=pb.AcknowledgeResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class CoordinatorService(pb_grpc.CoordinatorServicer):
    """Serves worker streams, Pull and Acknowledge on the engine's event loop."""

    def __init__(self, engine: Engine, *, lease: float, max_lease: float,
                 limits: Limits | None = None) -> None:
        self._engine = engine
        self._lease = convert.duration(lease)
        self._max_lease = convert.duration(max_lease)
        self._limits = limits or Limits()
        self._unary = 0
        """Pull and Acknowledge calls running now."""
        self._streams = 0
        """Stream calls running now (a stalled one until gRPC has ended it)."""
        self.refused: dict[str, int] = {}
        """Requests refused per limit (setting name), since start."""

    def _refuse(self, limit: str, description: str, peer: str) -> grpc.Status:
        self.refused[limit] = self.refused.get(limit, 0) + 1
        limits_log.warning("refused a request from %s: %s: %s", peer, limit, description)
        return limit_exceeded(limit, description)

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # type: ignore[override]
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if not first.HasField("open") or first.settlements or first.ack_msg_ids \
                or first.ack_ranges or first.HasField("extend") or first.HasField("flow_control"):
            await context.abort_with_status(
                invalid_argument("open", "the first request must carry `open` and nothing else"))
        if self._engine.draining:
            await context.abort_with_status(
                unavailable("the sidecar is draining", reason="DRAINING"))
        limits = self._limits
        if self._streams >= limits.max_streams:
            await context.abort_with_status(self._refuse(
                "max_streams", f"{self._streams} worker streams are open, the most this"
                " sidecar serves", context.peer()))
        self._streams += 1
        try:
            await self._serve(first, context)
        finally:
            self._streams -= 1

    async def _serve(self, first: pb.StreamRequest, context: grpc.aio.ServicerContext) -> None:
        limits = self._limits
        flow = first.open.flow_control
        worker_id = first.open.worker_id or context.peer()
        try:
            session = self._engine.open_session(
                worker_id, flow.max_in_flight_messages, flow.max_in_flight_bytes)
        except ValueError as exc:
            await context.abort_with_status(invalid_argument("open.flow_control", str(exc)))
        log.info("%s opened by %r (max %d in flight)", session.stream_id, worker_id,
                 flow.max_in_flight_messages)
        reader = asyncio.ensure_future(self._read(context, session))
        try:
            await self._send(context, session, pb.StreamResponse(opened=pb.StreamOpened(
                stream_id=session.stream_id, lease=self._lease, max_lease=self._max_lease,
                max_settlement_batch=limits.max_settlement_batch)))
            fill = convert.batches_into if first.open.delivery_batches else convert.deliveries_into
            await self._write(context, session, reader, fill)
        except Stalled:
            # Its leases go elsewhere now. The abort itself waits until the worker reads what
            # was sent or goes away (gRPC sends the status after the data): until then the
            # call counts towards max_streams, so stalled calls stay bounded too.
            reader.cancel()
            self._engine.close_session(session)
            await context.abort_with_status(self._refuse(
                "stream_write_timeout", f"the worker took no message for"
                f" {limits.stream_write_timeout:g}s; its leases go to other workers",
                context.peer()))
        finally:
            reader.cancel()
            self._engine.close_session(session)
            log.info("%s closed after %d deliveries in %d messages", session.stream_id,
                     session.delivered, session.writes)

    async def _read(self, context: grpc.aio.ServicerContext, session: Session) -> grpc.Status | None:
        """Applies requests until the worker half-closes; returns a status to abort with."""
        engine, holder = self._engine, session.holder
        max_batch = self._limits.max_settlement_batch
        try:
            while True:
                while len(session.rejected) >= max_batch:  # answers the worker has not taken
                    session.drained.clear()
                    await session.drained.wait()
                req = await context.read()
                if req is grpc.aio.EOF:
                    return None
                if req.HasField("open"):
                    return invalid_argument("open", "only the first request may carry `open`")
                ids = request_ids(req)
                if ids > max_batch:  # refused whole: nothing in it is applied
                    return self._refuse("max_settlement_batch", f"a request names {ids} msg_ids,"
                                        f" more than {max_batch}", context.peer())
                if req.settlements:
                    _answer(session, engine.settle(holder, convert.settlements(req.settlements)))
                if req.ack_msg_ids:
                    _answer(session, engine.ack(holder, req.ack_msg_ids))
                if req.ack_ranges:
                    _answer(session, engine.ack_ranges(
                        holder, [(r.first_msg_id, r.count) for r in req.ack_ranges]))
                if req.HasField("extend"):
                    ext = req.extend
                    span = convert.span_seconds(ext.extension) \
                        if ext.HasField("extension") else None
                    if span is None and ext.HasField("extension"):
                        # A malformed or negative extension changes no lease.
                        rejected = [(m, SettleStatus.INVALID) for m in ext.msg_ids]
                    else:
                        rejected = engine.extend(holder, ext.msg_ids, span)
                    _answer(session, rejected)
                if req.HasField("flow_control"):
                    fc = req.flow_control
                    try:
                        engine.set_flow(session, fc.max_in_flight_messages, fc.max_in_flight_bytes)
                    except ValueError as exc:
                        return invalid_argument("flow_control", str(exc))
        finally:
            session.wake.set()

    async def _send(self, context: grpc.aio.ServicerContext, session: Session,
                    message: pb.StreamResponse | bytes) -> None:
        """Writes one message (or one serialized already); raises :class:`Stalled` if the
        worker does not take it within ``stream_write_timeout``. The write is not cancelled
        (that would break the call): it ends when the call is aborted."""
        if not isinstance(message, bytes):
            message = message.SerializeToString()
        session.unsent_bytes = len(message)
        write = asyncio.ensure_future(context.write(message))
        write.add_done_callback(_consume)
        done, _ = await asyncio.wait((write,), timeout=self._limits.stream_write_timeout)
        if not done:
            raise Stalled
        write.result()
        session.unsent_bytes = 0
        session.writes += 1

    async def _write(self, context: grpc.aio.ServicerContext, session: Session,
                     reader: asyncio.Future[grpc.Status | None], fill: Fill) -> None:
        """Sends the stream's notices, answers and deliveries until ``reader`` ends; ``fill``
        puts deliveries into a response, in the form the worker asked for."""
        engine, limits = self._engine, self._limits
        while True:
            await session.wake.wait()
            session.wake.clear()
            if reader.done():
                status = reader.result()
                if status is not None:
                    await context.abort_with_status(status)
                return
            for notice in session.take_notices():
                if isinstance(notice, Revoking):
                    await self._send(context, session, pb.StreamResponse(
                        revoking=pb.PartitionsRevoking(
                            partitions=[pb.TopicPartition(topic=t, partition=p)
                                        for t, p in notice.partitions],
                            msg_ids=notice.msg_ids, deadline=convert.duration(notice.deadline))))
                elif isinstance(notice, Draining):
                    await self._send(context, session, pb.StreamResponse(
                        draining=pb.Draining(deadline=convert.duration(notice.deadline))))
            resp = pb.StreamResponse()
            if session.rejected:
                answers = session.rejected[:limits.max_settlement_batch]
                del session.rejected[:limits.max_settlement_batch]
                resp.rejected.extend(convert.results(answers))
                session.drained.set()
                if session.rejected:
                    session.wake.set()
            most = delivery_batch(session.holder.credits.max_messages)
            leases = engine.lease(session.holder, most)
            count = leased_count(leases)
            if leases:
                fill(resp, leases)
                if count == most:
                    session.wake.set()  # there may be more, and credit for it
            if not (leases or resp.rejected):
                continue
            session.delivered += count
            data = resp.SerializeToString()  # once: its size says whether it must be split
            if len(data) <= min(DELIVERY_MESSAGE_BYTES, limits.max_send_message_bytes):
                await self._send(context, session, data)
                continue
            for message in self._split(session, resp.rejected, leases, fill):
                await self._send(context, session, message)

    def _split(self, session: Session, rejected: Any, leased: list[Leased],
               fill: Fill) -> list[pb.StreamResponse]:
        """The answers ``rejected`` and the deliveries of ``leases`` as messages of at most
        :data:`DELIVERY_MESSAGE_BYTES`, or one delivery within ``max_send_message_bytes``. A
        delivery over that is not sent: it is answered RETRY for the worker (the retry policy
        decides)."""
        limit = self._limits.max_send_message_bytes
        pack = min(DELIVERY_MESSAGE_BYTES, limit)
        out = [pb.StreamResponse(rejected=rejected)]
        size = out[0].ByteSize()
        group: list[Leased] = []
        too_big: list[tuple[int, Outcome | None, float | None, str]] = []
        for lease in members(leased):
            alone = pb.StreamResponse()
            fill(alone, [lease])
            cost = alone.ByteSize()  # an upper bound of what it adds to a message
            if cost > limit:
                too_big.append((lease.msg_id, Outcome.RETRY, None,
                                f"its delivery ({cost} bytes) exceeds max_send_message_bytes"))
                continue
            if size and size + cost > pack:
                fill(out[-1], group)
                out.append(pb.StreamResponse())
                group, size = [], 0
            group.append(lease)
            size += cost
        fill(out[-1], group)
        if too_big:
            session.delivered -= len(too_big)
            self.refused["max_send_message_bytes"] = (
                self.refused.get("max_send_message_bytes", 0) + len(too_big))
            limits_log.warning("%d record(s) too big for max_send_message_bytes (%d): retrying"
                               " them: %s", len(too_big), limit,
                               ", ".join(str(m) for m, *_ in too_big[:10]))
            self._engine.settle(session.holder, too_big)
        return [m for m in out if m.deliveries or m.batches or m.rejected]

    @contextlib.asynccontextmanager
    async def _unary_slot(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Counts a Pull or Acknowledge call while it runs; refuses it over the limit."""
        if self._unary >= self._limits.max_concurrent_unary:
            await context.abort_with_status(self._refuse(
                "max_concurrent_unary", f"{self._unary} Pull and Acknowledge calls are running,"
                " the most this sidecar serves at once", context.peer()))
        self._unary += 1
        try:
            yield
        finally:
            self._unary -= 1

    async def Pull(self, request: pb.PullRequest, context: grpc.aio.ServicerContext) -> pb.PullResponse:
        async with self._unary_slot(context):
            return await self._pull(request, context)

    async def _pull(self, request: pb.PullRequest,
                    context: grpc.aio.ServicerContext) -> pb.PullResponse:
        if request.max_messages < 1:
            await context.abort_with_status(invalid_argument("max_messages", "must be at least 1"))
        wait = convert.span_seconds(request.wait) if request.HasField("wait") else 0.0
        if wait is None:
            await context.abort_with_status(
                invalid_argument("wait", "must be a valid Duration, not negative"))
            return pb.PullResponse()  # not reached: abort raises
        leases = await self._engine.pull(
            request.worker_id or "pull", request.max_messages, min(wait, self._limits.max_pull_wait))
        resp = pb.PullResponse()
        convert.add_deliveries(resp.deliveries, leases)
        return resp

    async def Acknowledge(self, request: pb.AcknowledgeRequest,
                          context: grpc.aio.ServicerContext) -> pb.AcknowledgeResponse:
        async with self._unary_slot(context):
            return await self._acknowledge(request, context)

    async def _acknowledge(self, request: pb.AcknowledgeRequest,
                           context: grpc.aio.ServicerContext) -> pb.AcknowledgeResponse:
        ids = len(request.settlements)
        if ids > self._limits.max_settlement_batch:  # refused whole: nothing is settled
            await context.abort_with_status(self._refuse(
                "max_settlement_batch", f"a request names {ids} msg_ids, more than"
                f" {self._limits.max_settlement_batch}", context.peer()))
        results = []
        for item in convert.settlements(request.settlements):
            rejected = self._engine.settle(None, (item,))
            status = convert.STATUSES[rejected[0][1]] if rejected else pb.SETTLE_STATUS_OK
            results.append(pb.SettleResult(msg_id=item[0], status=status))
        return pb.AcknowledgeResponse(results=results)
