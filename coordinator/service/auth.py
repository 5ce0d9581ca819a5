"""Who may call what: bearer tokens per API, and the gate on mutating Admin calls.

:class:`ServerGuard` is a ``grpc.aio.ServerInterceptor``. It checks the
``authorization: Bearer <token>`` metadata of every call to ``lowwater.v1.Coordinator``
against the workers' token and of every call to ``lowwater.v1.Admin`` against the Admin
token, in constant time (:func:`hmac.compare_digest`). Health and reflection stay open, for
probes and grpcurl. It also refuses the mutating Admin calls unless Admin callers are
authenticated or the operator allowed them (``admin_insecure``).

A token read from a file is re-read when the file changes: the file is ``stat``-ed on each
call (a few microseconds, against ~100 µs for the call itself), and read again when its
modification time, size or inode differ, which catches Kubernetes' atomic symlink swap of a
rotated Secret. New calls then need the new token; streams already open go on. Token values
are never logged, counted by value or shown anywhere.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import grpc

from coordinator.config import ConfigError, Problem
from coordinator.service.errors import permission_denied, unauthenticated
from lowwater.v1 import admin_pb2, coordinator_pb2

log = logging.getLogger("coordinator.auth")

WORKER_SERVICE: Final = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
ADMIN_SERVICE: Final = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
MUTATING_ADMIN_METHODS: Final = frozenset(
    {"PausePartitions", "ResumePartitions", "SkipRecord", "SeekPartition"})
"""Admin methods that change what gets processed: they need Admin authentication or
``admin_insecure``. Every other Admin method must be in :data:`READ_ONLY_ADMIN_METHODS`."""
READ_ONLY_ADMIN_METHODS: Final = frozenset(
    {"GetStatus", "GetRecovery", "ListPending", "ListWorkers"})
"""Admin methods that only read; open unless an Admin token is configured."""
ADMIN_AUTH_SETTINGS: Final = "admin_token_file, admin_token_env, tls_client_ca_file, admin_insecure"
"""The settings that allow mutating Admin calls, as named in the refusal."""
REFUSAL_LOG_INTERVAL: Final = 10.0
"""Seconds between two warnings about refused calls; the metric counts every one."""
BEARER: Final = "bearer "


class TokenSource(Protocol):
    """Where the current token of one API comes from."""

    def current(self) -> bytes:
        """The token now in force (never empty)."""
        ...


class StaticToken:
    """A token read once (from an environment variable)."""

    def __init__(self, token: bytes) -> None:
        self._token = token

    def current(self) -> bytes:
        return self._token


class FileToken:
    """A token in a file, re-read when the file changes. Used from the event loop only.

    An unreadable or empty file keeps the previous token in force, with a warning.
    """

    def __init__(self, path: Path, setting: str) -> None:
        self._path = path
        self._setting = setting
        self._signature = self._stat()
        self._token = _read_token(path)

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self._path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def current(self) -> bytes:
        try:
            signature = self._stat()
            if signature != self._signature:
                self._signature = signature
                token = _read_token(self._path)
                if token != self._token:
                    log.info("%s changed: using the new token", self._setting)
                self._token = token
        except (OSError, ValueError) as exc:
            log.warning("%s: keeping the previous token (%s)", self._setting, exc)
        return self._token


def _read_token(path: Path) -> bytes:
    token = path.read_bytes().strip()
    if not token:
        raise ValueError(f"{path} holds no token")
    return token


def token_source(setting: str, file: Path | None, env_setting: str, env_name: str | None,
                 environ: Mapping[str, str]) -> TokenSource | None:
    """The token source named by a ``*_token_file`` or ``*_token_env`` setting, if either is set.

    Raises:
        ConfigError: the file or variable holds no token; names the setting.
    """
    if file is not None:
        try:
            return FileToken(file, setting)
        except (OSError, ValueError) as exc:
            raise ConfigError(Problem(setting, f"cannot read a token: {exc}")) from None
    if env_name is not None:
        value = environ.get(env_name, "").strip()
        if not value:
            raise ConfigError(Problem(env_setting, f"${env_name} is not set or empty"))
        return StaticToken(value.encode())
    return None


def bearer_token(metadata: Any) -> bytes | None:
    """The token of an ``authorization: Bearer <token>`` entry of ``metadata``, if any."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if text[:len(BEARER)].lower() == BEARER:
                return text[len(BEARER):].strip().encode("latin-1")
            return b""
    return None


class ServerGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks tokens per API and gates the mutating Admin calls; see the module docstring.

    Args:
        worker_token: the token of ``lowwater.v1.Coordinator``; None leaves it open.
        admin_token: the token of ``lowwater.v1.Admin``; None leaves it open.
        admin_mutations: whether mutating Admin calls are allowed (to whoever passed the
            token check).
        on_refused: called with the API (``worker`` or ``admin``) and the reason
            (``missing`` or ``invalid``) of each refused call; for the metric.
    """

    def __init__(self, *, worker_token: TokenSource | None, admin_token: TokenSource | None,
                 admin_mutations: bool,
                 on_refused: Callable[[str, str], None] = lambda api, reason: None) -> None:
        self._tokens = {WORKER_SERVICE: ("worker", worker_token),
                        ADMIN_SERVICE: ("admin", admin_token)}
        self._admin_mutations = admin_mutations
        self._on_refused = on_refused
        self._last_warning = float("-inf")
        self._unlogged = 0

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        service, _, method = details.method.lstrip("/").partition("/")
        api, source = self._tokens.get(service, (None, None))
        if source is not None:
            given = bearer_token(details.invocation_metadata)
            if given is None or not hmac.compare_digest(given, source.current()):
                reason = "missing" if given is None else "invalid"
                self._refused(api or service, method, reason)
                return _refusal(await continuation(details), unauthenticated(
                    f"the {api} API needs a valid token (authorization: Bearer <token>)",
                    reason="TOKEN_MISSING" if given is None else "TOKEN_INVALID"))
        if service == ADMIN_SERVICE and method in MUTATING_ADMIN_METHODS \
                and not self._admin_mutations:
            return _refusal(await continuation(details), permission_denied(
                f"Admin/{method} changes what gets processed: configure Admin authentication"
                " (admin_token_file, admin_token_env or tls_client_ca_file) or set"
                " admin_insecure = true", reason="ADMIN_AUTH_REQUIRED",
                settings=ADMIN_AUTH_SETTINGS))
        handler: grpc.RpcMethodHandler = await continuation(details)
        return handler

    def _refused(self, api: str, method: str, reason: str) -> None:
        self._on_refused(api, reason)
        now = time.monotonic()
        if now - self._last_warning < REFUSAL_LOG_INTERVAL:
            self._unlogged += 1
            return
        log.warning("refused %s call %s: %s token (%d more refused since the last warning)",
                    api, method, reason, self._unlogged)
        self._last_warning, self._unlogged = now, 0


def _refusal(handler: grpc.RpcMethodHandler | None, status: grpc.Status) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts every call with ``status``."""
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)
        yield  # pragma: no cover - abort raises; this makes it a generator

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(unary)
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
