"""The ``lowwater.v1.Admin`` servicer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import grpc

from coordinator.core.ledger import OperatorRefused, SkipRefused
from coordinator.core.model import TopicPartition
from coordinator.runtime.engine import Engine, SeekRefused
from coordinator.runtime.pendingstore import PendingStore
from coordinator.service import convert
from coordinator.service.errors import failed_precondition, invalid_argument, not_found
from lowwater.v1 import admin_pb2, admin_pb2_grpc

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class AdminService(admin_pb2_grpc.AdminServicer):
    """Operator calls, answered from the engine's state on its loop. Skipping records and
    seeking partitions need ``operator_actions``."""

    def __init__(self, engine: Engine, *, group: str, health: Callable[[], str],
                 store: PendingStore | None = None, operator_actions: bool = False) -> None:
        self._operator_actions = operator_actions
        self._engine = engine
        self._group = group
        self._health = health
        self._store = store

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetStatusResponse:
        resp = convert.status_response(self._engine.status(), self._group, self._health())
        if self._store is not None:
            resp.pending_store.CopyFrom(convert.store_status(self._store, time.monotonic()))
        return resp

    async def GetRecovery(
        self, request: admin_pb2.GetRecoveryRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetRecoveryResponse:
        return convert.recovery_response(self._store, self._engine.ledger.partitions,
                                         self._group, int(time.time() * 1000))

    async def ListPending(
        self, request: admin_pb2.ListPendingRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListPendingResponse:
        size = request.page_size or DEFAULT_PAGE
        if size > MAX_PAGE:
            await context.abort_with_status(
                invalid_argument("page_size", f"at most {MAX_PAGE}, got {size}"))
        after = -1
        if request.page_token:
            try:
                after = int(request.page_token)
            except ValueError:
                await context.abort_with_status(
                    invalid_argument("page_token", "not a token from next_page_token"))
        tp = TopicPartition(request.topic, request.partition)
        page = self._engine.pending_page(tp, after, size)
        if page is None:
            await context.abort_with_status(not_found(
                f"{tp.topic}[{tp.partition}] is not assigned to this sidecar",
                resource_type="partition", resource_name=f"{tp.topic}[{tp.partition}]"))
            return admin_pb2.ListPendingResponse()  # not reached: abort raises
        records, total, more = page
        return convert.pending_response(records, total, more)

    async def ListWorkers(
        self, request: admin_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListWorkersResponse:
        resp = convert.status_response(self._engine.status(), self._group, self._health())
        return admin_pb2.ListWorkersResponse(workers=resp.workers)

    async def PausePartitions(
        self, request: admin_pb2.PausePartitionsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.PausePartitionsResponse:
        tps = await _partitions(request.partitions, context)
        return admin_pb2.PausePartitionsResponse(
            not_assigned=_refs(await self._engine.pause(tps)))

    async def ResumePartitions(
        self, request: admin_pb2.ResumePartitionsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ResumePartitionsResponse:
        tps = await _partitions(request.partitions, context)
        return admin_pb2.ResumePartitionsResponse(not_assigned=_refs(self._engine.resume(tps)))

    async def SkipRecord(
        self, request: admin_pb2.SkipRecordRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SkipRecordResponse:
        await self._allow_operator_action("skip records", context)
        tp = await _target(request, context)
        name = f"{tp.topic}[{tp.partition}]@{request.offset}"
        try:
            self._engine.skip(tp, request.offset, request.reason)
        except SkipRefused as exc:
            await _refused(context, f"cannot skip {name}", "record", name, exc)
        return admin_pb2.SkipRecordResponse()

    async def SeekPartition(
        self, request: admin_pb2.SeekPartitionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SeekPartitionResponse:
        await self._allow_operator_action("seek partitions", context)
        tp = await _target(request, context)
        name = f"{tp.topic}[{tp.partition}]"
        try:
            sought = await self._engine.seek(tp, request.offset, request.reason)
        except SeekRefused as exc:
            await _refused(context, f"cannot seek {name}", "partition", name, exc)
            return admin_pb2.SeekPartitionResponse()  # not reached: abort raises
        before = sought.previous_commit_offset
        return admin_pb2.SeekPartitionResponse(
            previous_commit_offset=-1 if before is None else before, dropped_count=sought.dropped)

    async def _allow_operator_action(self, what: str, context: grpc.aio.ServicerContext) -> None:
        if not self._operator_actions:
            await context.abort_with_status(failed_precondition(
                f"operator actions are off: set admin_operator_actions to {what}",
                subject="admin_operator_actions", description="must be true", kind="SETTING"))


async def _target(request: admin_pb2.SkipRecordRequest | admin_pb2.SeekPartitionRequest,
                  context: grpc.aio.ServicerContext) -> TopicPartition:
    """The partition an operator action names, once its offset is checked too."""
    tp = TopicPartition(request.topic, request.partition)
    if not tp.topic or tp.partition < 0 or request.offset < 0:
        await context.abort_with_status(invalid_argument(
            "offset", "needs a topic, a partition and an offset, all of 0 or more"))
    return tp


async def _refused(context: grpc.aio.ServicerContext, message: str, resource_type: str,
                   name: str, exc: OperatorRefused) -> None:
    """Aborts with NOT_FOUND when what ``exc`` names is not here, else FAILED_PRECONDITION."""
    message = f"{message}: {exc}"
    await context.abort_with_status(
        not_found(message, resource_type=resource_type, resource_name=name) if exc.missing
        else failed_precondition(message, subject=name, description=str(exc)))


async def _partitions(refs: Iterable[admin_pb2.PartitionRef],
                      context: grpc.aio.ServicerContext) -> list[TopicPartition]:
    tps = [TopicPartition(r.topic, r.partition) for r in refs]
    if not tps:
        await context.abort_with_status(invalid_argument("partitions", "name at least one"))
    for i, tp in enumerate(tps):
        if not tp.topic or tp.partition < 0:
            await context.abort_with_status(invalid_argument(
                f"partitions[{i}]", "needs a topic and a partition of 0 or more"))
    return tps


def _refs(tps: Iterable[TopicPartition]) -> list[admin_pb2.PartitionRef]:
    return [admin_pb2.PartitionRef(topic=tp.topic, partition=tp.partition) for tp in tps]
