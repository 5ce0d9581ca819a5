"""Constructor arguments are validated up front, naming the bad argument."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from lowwater import AsyncConsumer, AsyncWorker, Consumer, Message, Worker


async def _async_handler(msg: Message) -> None:
    pass


def _sync_handler(msg: Message) -> None:
    pass


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_in_flight": 0}, ValueError, "max_in_flight"),
        ({"max_in_flight": 2**32}, ValueError, "max_in_flight"),
        ({"max_in_flight": True}, TypeError, "max_in_flight"),
        ({"max_in_flight": 1.5}, TypeError, "max_in_flight"),
        ({"max_in_flight_bytes": -1}, ValueError, "max_in_flight_bytes"),
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"concurrency": 65}, ValueError, "concurrency must be between 1 and 64"),
        ({"max_in_flight": 8, "concurrency": 9}, ValueError, "between 1 and 8"),
        ({"concurrency": "4"}, TypeError, "concurrency"),
        ({"shutdown_timeout": 30}, TypeError, "shutdown_timeout"),
        ({"shutdown_timeout": timedelta(seconds=-1)}, ValueError, "shutdown_timeout"),
        ({"max_lease_extension": timedelta(seconds=-1)}, ValueError, "max_lease_extension"),
        ({"worker_id": 7}, TypeError, "worker_id"),
        ({"retry_backoff": 1.0}, TypeError, "retry_backoff"),
        ({"reconnect_backoff": None}, TypeError, "reconnect_backoff"),
        ({"channel_options": "grpc.x"}, TypeError, "channel_options"),
        ({"channel_options": [("grpc.x",)]}, TypeError, "channel_options"),
    ],
)
@pytest.mark.parametrize("cls", [AsyncWorker, Worker, AsyncConsumer, Consumer])
def test_invalid_options(
    cls: Any, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    args: tuple[object, ...] = ("127.0.0.1:1",)
    if cls is AsyncWorker:
        args += (_async_handler,)
    elif cls is Worker:
        args += (_sync_handler,)
    with pytest.raises(error, match=match):
        cls(*args, **kwargs)


def test_invalid_target() -> None:
    with pytest.raises(ValueError, match="target"):
        AsyncWorker("  ", _async_handler)
    with pytest.raises(TypeError, match="target"):
        Worker(None, _sync_handler)  # type: ignore[arg-type]


def test_handler_kind_must_match_the_worker() -> None:
    with pytest.raises(TypeError, match="Worker"):
        AsyncWorker("127.0.0.1:1", _sync_handler)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncWorker"):
        Worker("127.0.0.1:1", _async_handler)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handler"):
        AsyncWorker("127.0.0.1:1", None)  # type: ignore[arg-type]


def test_defaults() -> None:
    worker = AsyncWorker("127.0.0.1:1", _async_handler)
    assert ":" in worker.worker_id
    assert AsyncWorker("127.0.0.1:1", _async_handler, worker_id="w1").worker_id == "w1"


def test_concurrency_defaults_to_max_in_flight() -> None:
    assert _make().concurrency == 64
    assert _make(max_in_flight=10).concurrency == 10
    assert _make(max_in_flight=10, concurrency=8).concurrency == 8


# --- token and TLS options ----------------------------------------------------------------------


def _make(**options: Any) -> Any:
    from lowwater._settings import make_settings

    return make_settings("127.0.0.1:1", **options)


def test_a_token_from_a_value_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _make().call_metadata() is None
    assert _make(token=" t1 ").call_metadata() == (("authorization", "Bearer t1"),)
    monkeypatch.setenv("LW_SDK_TOKEN", "t2\n")
    assert _make(token_env="LW_SDK_TOKEN").call_metadata() == (("authorization", "Bearer t2"),)
    file = tmp_path / "token"
    file.write_text("t3\n")
    settings = _make(token_file=file)
    assert settings.call_metadata() == (("authorization", "Bearer t3"),)
    file.write_text("t4")  # rotated: read again at the next connection
    assert settings.call_metadata() == (("authorization", "Bearer t4"),)


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"token": "a", "token_env": "B"}, ValueError, "not token and token_env"),
        ({"token": ""}, ValueError, "token must not be empty"),
        ({"token": b"a"}, TypeError, "token must be a str"),
        ({"token_env": "LW_SDK_UNSET_TOKEN"}, ValueError, "$LW_SDK_UNSET_TOKEN is not set"),
        ({"token_file": "/nonexistent"}, ValueError, "token_file: /nonexistent"),
        ({"tls_ca_file": 5}, TypeError, "tls_ca_file must be a path"),
        ({"tls_ca_file": "/nonexistent"}, ValueError, "tls_ca_file"),
        ({"tls_cert_file": "CERT"}, ValueError, "tls_cert_file and tls_key_file go together"),
        ({"tls_ca_file": "CERT", "credentials": object()}, ValueError, "credentials or the tls_"),
    ],
)
def test_bad_token_and_tls_options_name_themselves(
    options: dict[str, Any], error: type[Exception], says: str, tmp_path: Path
) -> None:
    (tmp_path / "CERT").write_text("x")
    options = {k: str(tmp_path / v) if v == "CERT" else v for k, v in options.items()}
    with pytest.raises(error, match=re.escape(says)):
        AsyncWorker("127.0.0.1:1", _async_handler, **options)
    with pytest.raises(error, match=re.escape(says)):
        Worker("127.0.0.1:1", _sync_handler, **options)
