"""Fixtures shared by the SDK tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from lowwater.testing import FakeSidecar

T = TypeVar("T")


@pytest.fixture
def fake() -> Iterator[FakeSidecar]:
    """A started fake sidecar (30 s leases), stopped at the end even if the test fails."""
    sidecar = FakeSidecar().start()
    try:
        yield sidecar
    finally:
        sidecar.stop(drain=False)


@pytest.fixture
def run() -> Callable[[Coroutine[Any, Any, T]], T]:
    """Runs a coroutine on a fresh event loop, failing after 20 s."""

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(asyncio.wait_for(coro, 20))

    return runner
