"""Thin gRPC glue: the Coordinator service over FakeCore, for a sync gRPC server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc

from lowwater.testing._core import FakeCore
from lowwater.testing._ledger import Holder
from lowwater.v1 import coordinator_pb2 as pb
from lowwater.v1 import coordinator_pb2_grpc as pb_grpc


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """Each Stream runs on a server thread (responses) plus a reader thread (requests)."""

    def __init__(self, core: FakeCore) -> None:
        self._core = core

    def Stream(
        self, request_iterator: Iterator[pb.StreamRequest], context: Any
    ) -> Iterator[pb.StreamResponse]:
        core = self._core
        try:
            first = next(request_iterator)
        except (StopIteration, grpc.RpcError):
            return
        if (
            not first.HasField("open")
            or first.settlements
            or first.ack_msg_ids
            or first.HasField("extend")
            or first.HasField("flow_control")
        ):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry only `open`")
        if first.open.flow_control.max_in_flight_messages < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_in_flight_messages must be >= 1")
        with core.cond:
            holder, outbox = core.open_stream(first.open)
        context.add_callback(lambda: outbox.put(None))
        reader = threading.Thread(
            target=self._read, args=(holder, request_iterator), name="fake-reader", daemon=True
        )
        reader.start()
        try:
            while (response := outbox.get()) is not None:
                if isinstance(response, str):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, response)  # raises
                    return
                yield response
        finally:
            with core.cond:
                core.close_stream(holder)

    def _read(self, holder: Holder, requests: Iterator[pb.StreamRequest]) -> None:
        core = self._core
        try:
            for request in requests:
                if request.HasField("open"):
                    core.outboxes[holder.name].put("`open` is only allowed in the first request")
                    return
                with core.cond:
                    if holder.open:
                        core.on_request(holder, request)
        except grpc.RpcError:
            pass  # the stream broke; the response side closes it
        finally:
            with core.cond:
                core.close_stream(holder)

    def Pull(self, request: pb.PullRequest, context: Any) -> pb.PullResponse:
        if request.max_messages < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_messages must be >= 1")
        return pb.PullResponse(deliveries=self._core.pull(request))

    def Acknowledge(self, request: pb.AcknowledgeRequest, context: Any) -> pb.AcknowledgeResponse:
        return pb.AcknowledgeResponse(results=self._core.acknowledge(request))
