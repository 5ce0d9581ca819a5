"""Bearer tokens and the mutating-Admin gate: ``ServerGuard`` on a real gRPC server.

The engine runs behind the real servicers (the harness) with the guard the sidecar installs;
calls go through real channels with and without ``authorization`` metadata.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from coordinator.config import ConfigError
from coordinator.runtime.metrics import Metrics
from coordinator.service.auth import (
    ADMIN_SERVICE,
    MUTATING_ADMIN_METHODS,
    READ_ONLY_ADMIN_METHODS,
    FileToken,
    ServerGuard,
    StaticToken,
    token_source,
)
from lowwater.v1 import admin_pb2
from lowwater.v1 import coordinator_pb2 as pb
from tests.support.aio import async_test

from .harness import Harness, harness

WORKER_TOKEN = "worker-s3cr3t-7f1c"
ADMIN_TOKEN = "admin-s3cr3t-92ab"
PAUSE = admin_pb2.PausePartitionsRequest(partitions=[admin_pb2.PartitionRef(topic="t")])


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _guard(tmp_path: Path, metrics: Metrics, *, mutations: bool = True) -> ServerGuard:
    (tmp_path / "worker").write_text(WORKER_TOKEN + "\n")
    return ServerGuard(
        worker_token=FileToken(tmp_path / "worker", "token_file"),
        admin_token=StaticToken(ADMIN_TOKEN.encode()),
        admin_mutations=mutations,
        on_refused=lambda api, reason: metrics.auth_refused.labels(api, reason).inc())


def refused(metrics: Metrics, api: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "lowwater_auth_refused_total", {"api": api, "reason": reason})
    assert value is not None
    return value


async def pull(h: Harness, metadata: list[tuple[str, str]] | None) -> pb.PullResponse:
    resp: pb.PullResponse = await h.coordinator.Pull(
        pb.PullRequest(max_messages=1), metadata=metadata, timeout=5)
    return resp


async def stream_open(h: Harness, metadata: list[tuple[str, str]] | None) -> pb.StreamResponse:
    call = h.coordinator.Stream(metadata=metadata, timeout=5)
    await call.write(pb.StreamRequest(open=pb.OpenStream(
        worker_id="w", flow_control=pb.FlowControl(max_in_flight_messages=1))))
    resp: pb.StreamResponse = await call.read()
    call.cancel()
    return resp


async def expect_code(code: grpc.StatusCode, coro: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value


@async_test
async def test_the_worker_api_takes_only_the_worker_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    metrics = Metrics()
    async with harness(interceptors=[_guard(tmp_path, metrics)]) as h:
        h.assign("t", 1)
        for metadata in (None, bearer("wrong"), bearer(ADMIN_TOKEN),
                         [("authorization", WORKER_TOKEN)]):  # no "Bearer "
            error = await expect_code(grpc.StatusCode.UNAUTHENTICATED, pull(h, metadata))
            assert WORKER_TOKEN not in (error.details() or "")
            await expect_code(grpc.StatusCode.UNAUTHENTICATED, stream_open(h, metadata))
        assert refused(metrics, "worker", "missing") == 2
        assert refused(metrics, "worker", "invalid") == 6
        assert refused(metrics, "admin", "missing") == 0
        assert h.engine.status().holders == []  # no refused call got as far as the engine

        assert (await pull(h, bearer(WORKER_TOKEN))) == pb.PullResponse()
        assert (await pull(h, [("authorization", f"bearer  {WORKER_TOKEN} ")])) == pb.PullResponse()
        assert (await stream_open(h, bearer(WORKER_TOKEN))).HasField("opened")
    for token in (WORKER_TOKEN, ADMIN_TOKEN):
        assert token not in caplog.text
    assert "refused worker call Pull: missing token" in caplog.text


@async_test
async def test_the_admin_api_takes_only_the_admin_token(tmp_path: Path) -> None:
    metrics = Metrics()
    async with harness(interceptors=[_guard(tmp_path, metrics)]) as h:
        h.assign("t", 1)
        for metadata in (None, bearer(WORKER_TOKEN), bearer("x" * len(ADMIN_TOKEN))):
            error = await expect_code(grpc.StatusCode.UNAUTHENTICATED, h.admin.GetStatus(
                admin_pb2.GetStatusRequest(), metadata=metadata))
            info = error_details_pb2.ErrorInfo()
            status = rpc_status.from_call(error)
            assert status is not None
            status.details[0].Unpack(info)
            assert info.reason in {"TOKEN_MISSING", "TOKEN_INVALID"}
            await expect_code(grpc.StatusCode.UNAUTHENTICATED,
                              h.admin.PausePartitions(PAUSE, metadata=metadata))
        assert h.sink.pauses == []
        assert refused(metrics, "admin", "missing") == 2
        assert refused(metrics, "admin", "invalid") == 4
        status_resp = await h.admin.GetStatus(admin_pb2.GetStatusRequest(),
                                              metadata=bearer(ADMIN_TOKEN))
        assert status_resp.group == "g"
        await h.admin.PausePartitions(PAUSE, metadata=bearer(ADMIN_TOKEN))
        assert len(h.sink.pauses) == 1


@async_test
async def test_health_stays_open(tmp_path: Path) -> None:
    async with harness(interceptors=[_guard(tmp_path, Metrics())]) as h:
        resp = await health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest())
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


@async_test
async def test_a_rotated_token_file_takes_effect_on_the_next_call(tmp_path: Path) -> None:
    async with harness(interceptors=[_guard(tmp_path, Metrics())]) as h:
        assert await pull(h, bearer(WORKER_TOKEN)) == pb.PullResponse()
        # As Kubernetes rotates a Secret: a new file swapped in by rename.
        (tmp_path / "new").write_text("rotated-token")
        os.replace(tmp_path / "new", tmp_path / "worker")
        await expect_code(grpc.StatusCode.UNAUTHENTICATED, pull(h, bearer(WORKER_TOKEN)))
        assert await pull(h, bearer("rotated-token")) == pb.PullResponse()
        # A rotation caught empty keeps the token in force.
        (tmp_path / "worker").write_text("")
        assert await pull(h, bearer("rotated-token")) == pb.PullResponse()


@async_test
async def test_mutating_admin_calls_are_refused_without_admin_auth(tmp_path: Path) -> None:
    guard = ServerGuard(worker_token=None, admin_token=None, admin_mutations=False)
    async with harness(interceptors=[guard]) as h:
        h.assign("t", 1)
        assert (await h.admin.GetStatus(admin_pb2.GetStatusRequest())).group == "g"
        for call in (h.admin.PausePartitions(PAUSE),
                     h.admin.ResumePartitions(admin_pb2.ResumePartitionsRequest(
                         partitions=PAUSE.partitions)),
                     h.admin.SkipRecord(admin_pb2.SkipRecordRequest(topic="t", offset=0))):
            error = await expect_code(grpc.StatusCode.PERMISSION_DENIED, call)
            assert "admin_insecure" in (error.details() or "")
            status = rpc_status.from_call(error)
            assert status is not None
            info = error_details_pb2.ErrorInfo()
            status.details[0].Unpack(info)
            assert info.reason == "ADMIN_AUTH_REQUIRED"
            assert "admin_token_file" in info.metadata["settings"]
        assert h.sink.pauses == []
        assert await pull(h, None) == pb.PullResponse()  # the worker API is open


def test_every_admin_method_is_classified() -> None:
    """A new Admin method must be declared mutating or read-only, or this fails."""
    methods = {m.name for m in admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods}
    assert methods <= MUTATING_ADMIN_METHODS | READ_ONLY_ADMIN_METHODS
    assert not MUTATING_ADMIN_METHODS & READ_ONLY_ADMIN_METHODS
    assert ADMIN_SERVICE == "lowwater.v1.Admin"


def test_token_sources_name_their_setting(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ConfigError) as info:
        token_source("token_file", tmp_path / "empty", "token_env", None, {})
    assert info.value.setting == "token_file"
    with pytest.raises(ConfigError) as info:
        token_source("admin_token_file", None, "admin_token_env", "LW_T", {"LW_T": " "})
    assert info.value.setting == "admin_token_env"
    assert "$LW_T is not set or empty" in str(info.value)
    source = token_source("token_file", None, "token_env", "LW_T", {"LW_T": " tok\n"})
    assert source is not None
    assert source.current() == b"tok"
    assert token_source("token_file", None, "token_env", None, {"LW_T": "x"}) is None
