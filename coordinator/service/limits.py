"""The limits that keep any one client from exhausting the sidecar, and the gRPC server options
that enforce the ones gRPC has itself.

Each limit is a setting of :class:`~coordinator.config.Settings` (its docstring gives the
reason for the default); :class:`Limits` carries them to the servicers and the server.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from coordinator.config import Settings

HTTP2_MAX_FRAME_SIZE = 1024 * 1024
"""The largest HTTP/2 frame the worker API's server takes: a request in one frame. The SDK's
channels advertise the same, so that a stream message of deliveries (up to 1 MiB) goes out in
one frame instead of 16 KiB ones."""

ADMIN_RPC_HEADROOM = 32
"""Calls beyond worker streams and Pull/Acknowledge that the server takes at once: Admin,
health checks and watches, reflection. With the two limits it makes gRPC's own
``maximum_concurrent_rpcs``, a backstop that refuses any call over it."""
SO_REUSEPORT = ("grpc.so_reuseport", 0)
"""No SO_REUSEPORT: a second sidecar on a taken port must fail, not share it silently."""


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True, slots=True)
class Limits:
    """The settings of the same names (see docs/configuration.md); defaults are theirs."""

    max_streams: int = _default("max_streams")
    max_leases_per_stream: int = _default("max_leases_per_stream")
    max_settlement_batch: int = _default("max_settlement_batch")
    max_receive_message_bytes: int = _default("max_receive_message_bytes")
    max_send_message_bytes: int = _default("max_send_message_bytes")
    stream_write_timeout: float = _default("stream_write_timeout").total_seconds()
    max_pull_wait: float = _default("max_pull_wait").total_seconds()
    max_concurrent_unary: int = _default("max_concurrent_unary")
    max_streams_per_connection: int = _default("max_streams_per_connection")
    keepalive_min_ping_interval: float = _default("keepalive_min_ping_interval").total_seconds()
    max_connection_idle: float = _default("max_connection_idle").total_seconds()

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = getattr(settings, f.name)
            values[f.name] = value.total_seconds() if isinstance(value, timedelta) else value
        return cls(**values)

    @property
    def maximum_concurrent_rpcs(self) -> int:
        """gRPC's backstop on calls of any kind (see :data:`ADMIN_RPC_HEADROOM`)."""
        return self.max_streams + self.max_concurrent_unary + ADMIN_RPC_HEADROOM

    def server_options(self) -> list[tuple[str, Any]]:
        """Channel arguments of the worker API's server."""
        return [
            SO_REUSEPORT,
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.http2.min_ping_interval_without_data_ms",
             int(self.keepalive_min_ping_interval * 1000)),
            # A ping with no call open is a strike: idle connections have nothing to keep alive.
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.max_connection_idle_ms", int(self.max_connection_idle * 1000)),
            ("grpc.http2.max_frame_size", HTTP2_MAX_FRAME_SIZE),
        ]
