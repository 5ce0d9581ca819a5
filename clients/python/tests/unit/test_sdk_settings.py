"""Constructor arguments are validated up front, naming the bad argument."""

from __future__ import annotations

from datetime import timedelta
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
