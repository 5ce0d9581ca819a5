"""The ``lowwater.v1.Coordinator`` servicer: thin translation over the engine."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from coordinator.core.model import SettleStatus
from coordinator.runtime.engine import DELIVERY_BATCH, Draining, Engine, Revoking, Session
from coordinator.service import convert
from coordinator.service.errors import invalid_argument, unavailable
from lowwater.v1 import coordinator_pb2 as pb
from lowwater.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger("coordinator.streams")

PULL_MAX_WAIT = 30.0
"""Seconds a Pull may wait at most, whatever it asks for."""


class CoordinatorService(pb_grpc.CoordinatorServicer):
    """Serves worker streams, Pull and Acknowledge on the engine's event loop."""

    def __init__(self, engine: Engine, *, lease: float, max_lease: float) -> None:
        self._engine = engine
        self._lease = convert.duration(lease)
        self._max_lease = convert.duration(max_lease)

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # type: ignore[override]
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if not first.HasField("open") or first.settlements or first.ack_msg_ids \
                or first.HasField("extend") or first.HasField("flow_control"):
            await context.abort_with_status(
                invalid_argument("open", "the first request must carry `open` and nothing else"))
        if self._engine.draining:
            await context.abort_with_status(
                unavailable("the sidecar is draining", reason="DRAINING"))
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
            await context.write(pb.StreamResponse(opened=pb.StreamOpened(
                stream_id=session.stream_id, lease=self._lease, max_lease=self._max_lease)))
            await self._write(context, session, reader)
        finally:
            reader.cancel()
            self._engine.close_session(session)
            log.info("%s closed after %d deliveries in %d messages", session.stream_id,
                     session.delivered, session.writes)

    async def _read(self, context: grpc.aio.ServicerContext, session: Session) -> grpc.Status | None:
        """Applies requests until the worker half-closes; returns a status to abort with."""
        engine, holder = self._engine, session.holder
        try:
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    return None
                if req.HasField("open"):
                    return invalid_argument("open", "only the first request may carry `open`")
                if req.settlements:
                    rejected = engine.settle(holder, convert.settlements(req.settlements))
                    if rejected:
                        session.rejected.extend(rejected)
                        session.wake.set()
                if req.ack_msg_ids:
                    rejected = engine.ack(holder, req.ack_msg_ids)
                    if rejected:
                        session.rejected.extend(rejected)
                        session.wake.set()
                if req.HasField("extend"):
                    ext = req.extend
                    span = convert.span_seconds(ext.extension) \
                        if ext.HasField("extension") else None
                    if span is None and ext.HasField("extension"):
                        # A malformed or negative extension changes no lease.
                        rejected = [(m, SettleStatus.INVALID) for m in ext.msg_ids]
                    else:
                        rejected = engine.extend(holder, ext.msg_ids, span)
                    if rejected:
                        session.rejected.extend(rejected)
                        session.wake.set()
                if req.HasField("flow_control"):
                    fc = req.flow_control
                    try:
                        engine.set_flow(session, fc.max_in_flight_messages, fc.max_in_flight_bytes)
                    except ValueError as exc:
                        return invalid_argument("flow_control", str(exc))
        finally:
            session.wake.set()

    async def _write(self, context: grpc.aio.ServicerContext, session: Session,
                     reader: asyncio.Future[grpc.Status | None]) -> None:
        engine = self._engine
        while True:
            await session.wake.wait()
            session.wake.clear()
            if reader.done():
                status = reader.result()
                if status is not None:
                    await context.abort_with_status(status)
                return
            resp = pb.StreamResponse()
            for notice in session.take_notices():
                if isinstance(notice, Revoking):
                    await context.write(pb.StreamResponse(revoking=pb.PartitionsRevoking(
                        partitions=[pb.TopicPartition(topic=t, partition=p)
                                    for t, p in notice.partitions],
                        msg_ids=notice.msg_ids, deadline=convert.duration(notice.deadline))))
                elif isinstance(notice, Draining):
                    await context.write(pb.StreamResponse(
                        draining=pb.Draining(deadline=convert.duration(notice.deadline))))
            if session.rejected:
                resp.rejected.extend(convert.results(session.rejected))
                session.rejected.clear()
            leases = engine.lease(session.holder, DELIVERY_BATCH)
            if leases:
                convert.add_deliveries(resp.deliveries, leases)
                if len(leases) == DELIVERY_BATCH:
                    session.wake.set()  # there may be more, and credit for it
            if leases or resp.rejected:
                session.delivered += len(leases)
                session.writes += 1
                await context.write(resp)

    async def Pull(self, request: pb.PullRequest, context: grpc.aio.ServicerContext) -> pb.PullResponse:
        if request.max_messages < 1:
            await context.abort_with_status(invalid_argument("max_messages", "must be at least 1"))
        wait = convert.span_seconds(request.wait) if request.HasField("wait") else 0.0
        if wait is None:
            await context.abort_with_status(
                invalid_argument("wait", "must be a valid Duration, not negative"))
            return pb.PullResponse()  # not reached: abort raises
        leases = await self._engine.pull(
            request.worker_id or "pull", request.max_messages, min(wait, PULL_MAX_WAIT))
        resp = pb.PullResponse()
        convert.add_deliveries(resp.deliveries, leases)
        return resp

    async def Acknowledge(self, request: pb.AcknowledgeRequest,
                          context: grpc.aio.ServicerContext) -> pb.AcknowledgeResponse:
        results = []
        for item in convert.settlements(request.settlements):
            rejected = self._engine.settle(None, (item,))
            status = convert.STATUSES[rejected[0][1]] if rejected else pb.SETTLE_STATUS_OK
            results.append(pb.SettleResult(msg_id=item[0], status=status))
        return pb.AcknowledgeResponse(results=results)
