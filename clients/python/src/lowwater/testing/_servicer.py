"""Thin gRPC glue: the Coordinator service over FakeCore, for a sync gRPC server."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterator
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
            or first.ack_ranges
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


class TokenCheck(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses every call without ``authorization: Bearer <token>``, as a sidecar with
    ``token_file`` does: UNAUTHENTICATED, before the servicer sees the call."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if handler is None or hmac.compare_digest(given_bytes, self._expected):
            return handler
        reason = "no token" if not given else "a wrong token"

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"the worker API needs a valid token (authorization: Bearer <token>);"
                          f" got {reason}")

        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
