"""Validated worker settings, shared by every worker and consumer class."""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypedDict, TypeVar, get_type_hints

from lowwater.backoff import DEFAULT_RECONNECT_BACKOFF, DEFAULT_RETRY_BACKOFF, Backoff
from lowwater.security import TlsFiles, TokenSource, channel_security

MAX_UINT32 = 2**32 - 1
MAX_UINT64 = 2**64 - 1

DEFAULT_SHUTDOWN_TIMEOUT = timedelta(seconds=30)
"""How long graceful shutdown waits for running handlers."""

DEFAULT_MAX_LEASE_EXTENSION = timedelta(minutes=10)
"""How long, counted from its arrival, a message's lease is extended automatically."""


class WorkerOptions(TypedDict, total=False):
    """The keyword-only options that every worker and consumer constructor takes.

    Constructors accept them as ``**options: Unpack[WorkerOptions]`` and pass
    them on to :func:`make_settings`, which holds their defaults and validates
    them. They are documented once, in the Args of :class:`lowwater.AsyncWorker`.
    """

    max_in_flight: int
    max_in_flight_bytes: int
    concurrency: int | None
    worker_id: str | None
    shutdown_timeout: timedelta
    max_lease_extension: timedelta
    retry_backoff: Backoff
    reconnect_backoff: Backoff
    credentials: Any
    channel_options: Sequence[tuple[str, Any]]
    token: str | None
    token_file: str | os.PathLike[str] | None
    token_env: str | None
    tls_ca_file: str | os.PathLike[str] | None
    tls_cert_file: str | os.PathLike[str] | None
    tls_key_file: str | os.PathLike[str] | None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker needs to run, validated. Durations in seconds."""

    target: str
    max_in_flight: int
    max_in_flight_bytes: int
    concurrency: int
    """Most handlers running at once, at most ``max_in_flight``."""
    worker_id: str
    shutdown_timeout: float
    max_lease_extension: float
    retry_backoff: Backoff
    reconnect_backoff: Backoff
    credentials: Any
    channel_options: tuple[tuple[str, Any], ...]
    token: TokenSource | None = None
    tls: TlsFiles | None = None

    def channel_credentials(self) -> Any:
        """``grpc.ChannelCredentials`` for TLS, or None for plaintext."""
        return self.tls.credentials() if self.tls is not None else self.credentials

    def call_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """Metadata for every call: the bearer token, if any."""
        return None if self.token is None else self.token.metadata()


def _duration(name: str, value: object, *, allow_zero: bool = True) -> float:
    if not isinstance(value, timedelta):
        raise TypeError(f"{name} must be a timedelta, got {type(value).__name__}")
    if value < timedelta(0) or (not allow_zero and value == timedelta(0)):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value}")
    return value.total_seconds()


def _int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def make_settings(
    target: object,
    *,
    max_in_flight: object = 64,
    max_in_flight_bytes: object = 0,
    concurrency: object = None,
    worker_id: object = None,
    shutdown_timeout: object = DEFAULT_SHUTDOWN_TIMEOUT,
    max_lease_extension: object = DEFAULT_MAX_LEASE_EXTENSION,
    retry_backoff: object = DEFAULT_RETRY_BACKOFF,
    reconnect_backoff: object = DEFAULT_RECONNECT_BACKOFF,
    credentials: object = None,
    channel_options: object = (),
    token: object = None,
    token_file: object = None,
    token_env: object = None,
    tls_ca_file: object = None,
    tls_cert_file: object = None,
    tls_key_file: object = None,
    **unknown: object,
) -> Settings:
    """Validates constructor arguments: the target and the :class:`WorkerOptions`.

    The options' defaults live here, and only here.

    Raises:
        TypeError: an argument is not an option or has the wrong type; the
            message names it.
        ValueError: an argument is out of range; the message names it.
    """
    if unknown:  # checked here so that the error does not name this private function
        raise TypeError(f"got an unexpected keyword argument {next(iter(unknown))!r}")
    if not isinstance(target, str):
        raise TypeError(f"target must be a str such as '127.0.0.1:50051', got {target!r}")
    if not target.strip():
        raise ValueError("target must not be empty")
    if worker_id is None:
        worker_id = f"{socket.gethostname()}:{os.getpid()}"
    if not isinstance(worker_id, str):
        raise TypeError(f"worker_id must be a str or None, got {type(worker_id).__name__}")
    if not isinstance(retry_backoff, Backoff):
        raise TypeError(f"retry_backoff must be a Backoff, got {type(retry_backoff).__name__}")
    if not isinstance(reconnect_backoff, Backoff):
        raise TypeError(
            f"reconnect_backoff must be a Backoff, got {type(reconnect_backoff).__name__}"
        )
    if not isinstance(channel_options, Sequence) or isinstance(channel_options, str | bytes):
        raise TypeError("channel_options must be a sequence of (name, value) pairs")
    options: list[tuple[str, Any]] = []
    for option in channel_options:
        if not (isinstance(option, tuple) and len(option) == 2 and isinstance(option[0], str)):
            raise TypeError(f"channel_options entries must be (str, value) pairs, got {option!r}")
        options.append(option)
    security = channel_security(
        token=token, token_file=token_file, token_env=token_env, tls_ca_file=tls_ca_file,
        tls_cert_file=tls_cert_file, tls_key_file=tls_key_file)
    held = _int("max_in_flight", max_in_flight, 1, MAX_UINT32)
    return Settings(
        target=target,
        max_in_flight=held,
        concurrency=held if concurrency is None else _int("concurrency", concurrency, 1, held),
        max_in_flight_bytes=_int("max_in_flight_bytes", max_in_flight_bytes, 0, MAX_UINT64),
        worker_id=worker_id,
        shutdown_timeout=_duration("shutdown_timeout", shutdown_timeout),
        max_lease_extension=_duration("max_lease_extension", max_lease_extension),
        retry_backoff=retry_backoff,
        reconnect_backoff=reconnect_backoff,
        credentials=credentials,
        channel_options=tuple(options),
        token=security.token,
        tls=_tls(credentials, security.tls),
    )


def _tls(credentials: object, tls: TlsFiles | None) -> TlsFiles | None:
    if tls is not None and credentials is not None:
        raise ValueError("give credentials or the tls_* files, not both")
    return tls


def _option_parameters() -> list[inspect.Parameter]:
    """The options as keyword-only parameters: types from WorkerOptions, defaults from here."""
    types = get_type_hints(WorkerOptions)
    params = [
        p for p in inspect.signature(make_settings).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    if [p.name for p in params] != list(types):
        raise RuntimeError("WorkerOptions and make_settings() must name the same options")
    return [p.replace(annotation=types[p.name]) for p in params]


_OPTION_PARAMETERS = _option_parameters()

_Init = TypeVar("_Init", bound=Callable[..., None])


def takes_options(init: _Init) -> _Init:
    """Marks an ``__init__(..., **options: Unpack[WorkerOptions])``.

    Type checkers read the options from the ``Unpack``; this gives the runtime
    signature (``inspect.signature``, ``help()``, REPL completion) the same
    keyword-only parameters, with their defaults, in place of ``**options``.
    """
    signature = inspect.signature(init)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    function: Any = init
    function.__signature__ = signature.replace(parameters=params + _OPTION_PARAMETERS)
    return init


HTTP2_MAX_FRAME_SIZE = 1024 * 1024
"""The HTTP/2 frame size both ends of a stream advertise (the sidecar's server does too)."""


def channel_options(settings: Settings) -> list[tuple[str, Any]]:
    """gRPC channel options: ours first, the user's override them."""
    backoff = settings.reconnect_backoff
    ours: dict[str, Any] = {
        # Keep the channel's own reconnect timer in step with our backoff (its
        # default grows to 120 s, which would hide a sidecar that came back).
        "grpc.initial_reconnect_backoff_ms": max(1, int(backoff.initial.total_seconds() * 1000)),
        "grpc.min_reconnect_backoff_ms": max(1, int(backoff.initial.total_seconds() * 1000)),
        "grpc.max_reconnect_backoff_ms": max(1, int(backoff.maximum.total_seconds() * 1000)),
        # A batch of deliveries can exceed the 4 MiB default; the sidecar is trusted.
        "grpc.max_receive_message_length": -1,
        # The largest HTTP/2 frame the sidecar may send us: a stream message of deliveries
        # (up to 1 MiB) in one frame instead of 16 KiB ones (the default); +3-4% records/s
        # in bench/sidecar.py (A/B, medians of three and four 1,000,000-record runs).
        "grpc.http2.max_frame_size": HTTP2_MAX_FRAME_SIZE,
    }
    ours.update(dict(settings.channel_options))
    return list(ours.items())
