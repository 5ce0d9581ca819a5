"""An engine behind real gRPC servicers on 127.0.0.1:0, fed by fake records.

Nothing in gRPC is faked: the servicers run on a real ``grpc.aio`` server and
the tests talk to it through real channels. Only the Kafka side is replaced:
records are :class:`FakeMessage` objects with confluent-kafka's accessors, and
commands meant for the consumer thread are recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from confluent_kafka import TIMESTAMP_CREATE_TIME
from grpc_health.v1 import health, health_pb2_grpc

from coordinator.core.ledger import CommitPoint, LeaseTimes, Ledger
from coordinator.core.model import TopicPartition
from coordinator.core.policy import RetryPolicy
from coordinator.kafka.fetcher import Commit, Pause, Resubscribe, Seek
from coordinator.kafka.records import segments
from coordinator.runtime.engine import Engine
from coordinator.service.admin import AdminService
from coordinator.service.coordinator import CoordinatorService
from coordinator.service.coordinator import add_to_server as add_coordinator
from coordinator.service.limits import Limits
from lowwater.v1 import admin_pb2_grpc, coordinator_pb2_grpc


@dataclass
class FakeMessage:
    """A fetched record with the accessors of ``confluent_kafka.Message``."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None = b"v"
    _key: bytes | None = None
    _headers: list[tuple[str, bytes | None]] | None = None
    _undecodable_headers: bool = False
    """Behave like confluent-kafka for a header key that is not UTF-8: the first
    ``headers()`` raises SystemError; a later one would crash the interpreter (here it
    raises AssertionError) unless ``set_headers`` replaced them."""
    _headers_calls: int = 0
    _timestamp_ms: int = 1_700_000_000_000
    """Its CreateTime: by default November 2023, past any TTL a test sets."""

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        self._headers_calls += 1
        if self._undecodable_headers:
            if self._headers_calls == 1:
                raise SystemError("<method 'headers'> returned a result with an exception set")
            raise AssertionError("confluent-kafka would crash the process here")
        return self._headers

    def set_headers(self, headers: list[tuple[str, bytes | None]]) -> None:
        self._headers = headers
        self._undecodable_headers = False

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._timestamp_ms

    def error(self) -> None:
        return None


@dataclass
class RecordingSink:
    """Stands in for the fetcher: records commits, pauses and the other commands; answers
    those that wait."""

    commits: list[Commit] = field(default_factory=list)
    pauses: list[Pause] = field(default_factory=list)
    others: list[Resubscribe | Seek] = field(default_factory=list)
    """Seeks are not answered: a test that seeks answers through ``Engine.sought``."""

    def submit(self, command: Commit | Pause | Resubscribe | Seek) -> None:
        if isinstance(command, Commit):
            self.commits.append(command)
            if command.done is not None:
                command.done.set_result(True)
        elif isinstance(command, Pause):
            self.pauses.append(command)
            if command.done is not None:
                command.done.set_result(None)
        else:
            self.others.append(command)

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """The latest offset handed out per partition."""
        out: dict[TopicPartition, int] = {}
        for command in self.commits:
            for point in command.points:
                out[point.tp] = point.offset
        return out


@dataclass
class Harness:
    engine: Engine
    sink: RecordingSink
    service: CoordinatorService
    channel: grpc.aio.Channel
    coordinator: coordinator_pb2_grpc.CoordinatorStub
    admin: admin_pb2_grpc.AdminStub
    target: str = ""
    """``127.0.0.1:PORT``, for clients of their own (the SDK)."""

    def assign(self, topic: str, partitions: int, committed: int | None = None) -> None:
        self.engine.assigned(
            [(TopicPartition(topic, p), p + 1, committed, None) for p in range(partitions)])

    def feed(self, topic: str, partition: int, offsets: list[int], **kw: Any) -> None:
        self.engine.intake(segments([FakeMessage(topic, partition, o, **kw) for o in offsets]))

    def commit_points(self) -> list[CommitPoint]:
        return self.engine.ledger.commit_points()


@asynccontextmanager
async def harness(
    *, lease: float = 30.0, max_pending: int = 10_000, rebalance_timeout: float = 2.0,
    max_attempts: int | None = None, limits: Limits | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (), commit_interval: float = 3600,
) -> AsyncIterator[Harness]:
    """An engine behind the worker, Admin and health servicers, on 127.0.0.1:0.

    The server gets the options and limits ``coordinator.runtime.sidecar`` gives its own (the
    defaults of the limit settings unless ``limits`` says otherwise); ``interceptors`` go to
    it, as :class:`coordinator.service.auth.ServerGuard` does in the sidecar."""
    limits = limits or Limits()
    ledger = Ledger(
        leases=LeaseTimes(lease, max(lease, 60.0)),
        policy=RetryPolicy(0.05, 60.0, max_attempts),
        max_pending_per_partition=max_pending,
    )
    sink = RecordingSink()
    engine = Engine(ledger, sink, commit_interval=commit_interval,
                    rebalance_timeout=rebalance_timeout,
                    max_leases_per_worker=limits.max_leases_per_stream)
    server = grpc.aio.server(options=limits.server_options(),
                             maximum_concurrent_rpcs=limits.maximum_concurrent_rpcs,
                             interceptors=interceptors)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    service = CoordinatorService(engine, lease=lease, max_lease=max(lease, 60.0), limits=limits)
    add_coordinator(service, server)
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminService(engine, group="g", health=lambda: "SERVING"), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    timers = asyncio.create_task(engine.run())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Harness(engine, sink, service, channel, coordinator_pb2_grpc.CoordinatorStub(channel),
                      admin_pb2_grpc.AdminStub(channel), f"127.0.0.1:{port}")
    finally:
        timers.cancel()
        await channel.close()
        await server.stop(None)
