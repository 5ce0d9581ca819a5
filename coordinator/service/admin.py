"""The ``lowwater.v1.Admin`` servicer."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from coordinator.runtime.engine import Engine
from coordinator.runtime.pendingstore import PendingStore
from coordinator.service import convert
from lowwater.v1 import admin_pb2, admin_pb2_grpc


class AdminService(admin_pb2_grpc.AdminServicer):
    """Read-only operator calls, answered from the engine's state on its loop."""

    def __init__(self, engine: Engine, *, group: str, health: Callable[[], str],
                 store: PendingStore | None = None) -> None:
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
