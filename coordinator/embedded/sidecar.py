"""``lowwater serve`` as a child process, the way it runs beside a real worker.

The demo, the benchmarks and the end-to-end tests start sidecars with this.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.embedded.tansu import pick_free_port
from lowwater.v1 import admin_pb2, admin_pb2_grpc

SIDECAR_START_TIMEOUT_S = 30.0
"""Seconds for a sidecar to bind and report SERVING."""
SIDECAR_STOP_TIMEOUT_S = 60.0
"""Seconds for a graceful stop (drain + commit + leave) before SIGKILL."""
FAST_GROUP_SETTINGS = (
    "session.timeout.ms=6000", "heartbeat.interval.ms=500", "max.poll.interval.ms=30000")
"""Consumer settings for the embedded broker: Tansu group joins take ~3 s instead of ~23 s,
and a join Tansu holds (it can, when it races another member's leave) gives up after the
30 s rebalance timeout (librdkafka uses max.poll.interval.ms) instead of 5 minutes."""


LOG_DIR: str | None = None
"""Where sidecar logs go when ``log_dir`` is not given; None: the system's temporary directory
(the demo prints the path). The test suite points it at a pytest temporary directory."""


class SidecarProcess:
    """One ``lowwater serve`` subprocess on a free loopback port.

    ``stop()`` sends SIGTERM and waits (then SIGKILL); ``kill()`` is ``kill -9``.
    Both signal only this process's own pid. The log is kept in ``log_path``.
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: list[str],
        *,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_dir: str | None = None,
        socket_path: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        admin_token: str | None = None,
    ) -> None:
        """``socket_path`` listens on that Unix socket instead of a free loopback port.
        ``credentials`` (TLS) and ``admin_token`` are what this object's own health and
        Admin calls use, for a sidecar started with ``--tls-*`` or an Admin token."""
        self.socket_path = socket_path
        self.credentials = credentials
        self.admin_metadata = None if admin_token is None else [
            ("authorization", f"Bearer {admin_token}")]
        self.bootstrap = bootstrap
        self.group = group
        self.topics = topics
        self.extra = list(extra or [])
        self.env = env
        self.port = pick_free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="lowwater-", suffix=".log",
                                              dir=log_dir or LOG_DIR)[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the sidecar has not started")
        return self.proc.pid

    @property
    def target(self) -> str:
        """The address to give gRPC clients (``unix:/path`` for a socket)."""
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "coordinator", "serve",
               "--bootstrap-servers", self.bootstrap, "--group", self.group,
               "--listen", self.target, "--log-level", "INFO"]
        for topic in self.topics:
            cmd += ["--topic", topic]
        for setting in FAST_GROUP_SETTINGS:
            cmd += ["--kafka", setting]
        return cmd + self.extra

    def start(self, *, wait_serving: bool = True) -> Self:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**_inherited_env(), **(self.env or {})},
            )
        if wait_serving:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = SIDECAR_START_TIMEOUT_S) -> None:
        """Waits until ``grpc.health.v1`` reports SERVING."""
        self.wait_health(health_pb2.HealthCheckResponse.SERVING, timeout)

    def wait_health(self, status: int, timeout: float = SIDECAR_START_TIMEOUT_S) -> None:
        """Waits until ``grpc.health.v1`` reports ``status`` (a ``ServingStatus`` value).

        Raises:
            RuntimeError: the sidecar exited meanwhile (the message carries its log).
            TimeoutError: it did not report ``status`` within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == status:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                    raise TimeoutError(f"sidecar not {name} after {timeout}s:\n{self.log()}")
                time.sleep(0.1)

    def status(self, timeout: float = 5.0) -> admin_pb2.GetStatusResponse:
        """Admin/GetStatus."""
        with self.channel() as channel:
            resp: admin_pb2.GetStatusResponse = admin_pb2_grpc.AdminStub(channel).GetStatus(
                admin_pb2.GetStatusRequest(), timeout=timeout, metadata=self.admin_metadata)
            return resp

    def channel(self) -> grpc.Channel:
        """A blocking channel to the sidecar, with ``credentials`` if given."""
        if self.credentials is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self.credentials)

    def wait_assigned(self, partitions: int, timeout: float = SIDECAR_START_TIMEOUT_S) -> None:
        """Waits until Admin/GetStatus shows ``partitions`` assigned partitions."""
        deadline = time.monotonic() + timeout
        while len(self.status().partitions) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not assigned after {timeout}s:\n{self.log()}")
            time.sleep(0.1)

    def stop(self, timeout: float = SIDECAR_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then wait; SIGKILL after ``timeout``. Returns the exit code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

    def kill(self) -> None:
        """``kill -9``: no drain, no commit, no goodbye to the group."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        finally:
            self.kill()


def _inherited_env() -> dict[str, str]:
    """This process's environment, less the test suite's own ``LOWWATER_TEST_*`` variables
    (the sidecar would warn that they are no settings)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LOWWATER_TEST_")}
