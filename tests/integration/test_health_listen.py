"""``health_listen``: grpc.health.v1 alone on a second port, for Kubernetes probes."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.embedded import SidecarProcess
from coordinator.embedded.tansu import pick_free_port
from lowwater.v1 import admin_pb2, admin_pb2_grpc
from tests.support.broker import TopicFactory, unique_name


def test_the_health_port_serves_health_and_nothing_else(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    port = pick_free_port()
    sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [new_topic(1)],
                             extra=["--health-listen", f"127.0.0.1:{port}"])
    with sidecar, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:  # the worker and Admin APIs are not here
            admin_pb2_grpc.AdminStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert "health (grpc.health.v1 only)" in sidecar.log()
        assert sidecar.stop() == 0
