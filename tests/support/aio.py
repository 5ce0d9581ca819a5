"""Running ``async def`` tests without a pytest plugin, and waiting in them for a condition."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any


def async_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Runs the decorated coroutine test in a fresh event loop (``asyncio.run``)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


async def until(cond: Callable[[], object], timeout: float = 10.0, *,
                what: str = "condition", every: float = 0.01) -> None:
    """Returns once ``cond()`` holds, looked at every ``every`` seconds; fails the test after
    ``timeout`` seconds, naming ``what``. For what another task or thread brings about (a
    settlement the server has not applied yet), never a fixed sleep."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not met in {timeout:g}s")
        await asyncio.sleep(every)
