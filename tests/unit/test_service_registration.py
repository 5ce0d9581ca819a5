"""The Coordinator's own registration matches the proto, as the generated one would."""

from __future__ import annotations

from typing import Any

import grpc

from coordinator.service.coordinator import _serialized, add_to_server
from lowwater.v1 import coordinator_pb2 as pb


class RecordingServer:
    """Takes what a registration hands a grpc server."""

    def __init__(self) -> None:
        self.generic: tuple[Any, ...] = ()
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: tuple[Any, ...]) -> None:
        self.generic += handlers

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.registered[service] = handlers


class Servicer:
    async def Stream(self, *_: Any) -> None: ...
    async def Pull(self, *_: Any) -> None: ...
    async def Acknowledge(self, *_: Any) -> None: ...


def test_every_method_of_the_proto_is_registered_with_its_kind_and_types() -> None:
    server = RecordingServer()
    add_to_server(Servicer(), server)  # type: ignore[arg-type]
    service = pb.DESCRIPTOR.services_by_name["Coordinator"]
    handlers = server.registered[service.full_name]
    assert len(server.generic) == 1
    assert set(handlers) == {m.name for m in service.methods}
    for method in service.methods:
        handler = handlers[method.name]
        assert (handler.request_streaming, handler.response_streaming) == (
            method.client_streaming, method.server_streaming), method.name
        request = getattr(pb, method.input_type.name)()
        parsed = handler.request_deserializer(request.SerializeToString())
        assert parsed.DESCRIPTOR is method.input_type
        response = getattr(pb, method.output_type.name)()
        assert handler.response_serializer(response) == response.SerializeToString()


def test_stream_responses_serialized_already_go_out_as_they_are() -> None:
    resp = pb.StreamResponse(rejected=[pb.SettleResult(msg_id=7, status=pb.SETTLE_STATUS_STALE)])
    data = resp.SerializeToString()
    assert _serialized(data) is data
    assert _serialized(resp) == data
