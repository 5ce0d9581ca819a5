"""``health_listen``: grpc.health.v1 alone on a second port, for Kubernetes probes."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.embedded import SidecarProcess
from coordinator.embedded.tansu import pick_free_port
from coordinator.runtime.sidecar import LIVENESS_HEALTH
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


def test_liveness_stays_serving_while_kafka_is_unreachable() -> None:
    """A broker outage makes the sidecar not ready ("" NOT_SERVING) but not dead
    ("lowwater.live" SERVING): restarting it would not bring the broker back."""
    nowhere = f"127.0.0.1:{pick_free_port()}"
    port = pick_free_port()
    sidecar = SidecarProcess(nowhere, unique_name("g"), ["t"],
                             extra=["--health-listen", f"127.0.0.1:{port}"])
    sidecar.start(wait_serving=False)
    try:
        deadline = time.monotonic() + 30
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    live = health.Check(health_pb2.HealthCheckRequest(
                        service=LIVENESS_HEALTH), timeout=2).status
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, sidecar.log()
                    time.sleep(0.1)
            overall = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
        assert live == health_pb2.HealthCheckResponse.SERVING
        assert overall == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        sidecar.stop()
        sidecar.kill()
