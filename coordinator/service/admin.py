"""The ``lowwater.v1.Admin`` servicer."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from coordinator.runtime.engine import Engine
from coordinator.service import convert
from lowwater.v1 import admin_pb2, admin_pb2_grpc


class AdminService(admin_pb2_grpc.AdminServicer):
    """Read-only operator calls, answered from the engine's state on its loop."""

    def __init__(self, engine: Engine, *, group: str, health: Callable[[], str]) -> None:
        self._engine = engine
        self._group = group
        self._health = health

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetStatusResponse:
        return convert.status_response(self._engine.status(), self._group, self._health())
