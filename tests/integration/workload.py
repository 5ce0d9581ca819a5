"""A workload for end-to-end runs: unique ids produced, SDK workers that record them.

The checker compares what was produced with what the workers processed, and
the group's committed offsets with the log end (the fetch high watermark).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import lowwater
from coordinator.embedded import SidecarProcess
from tests.support.broker import committed_offsets, id_records, log_end_offsets, produce

PROGRESS_TIMEOUT_S = 180.0
"""Seconds a run may take to process everything before the test fails."""
TEST_BUDGET_S = 240.0
"""Seconds a whole multi-phase test may wait in all: below pytest's 300 s timeout, so a slow
run fails with its own message and the sidecars' logs instead of a bare timeout."""


class Budget:
    """One deadline shared by the waits of a test."""

    def __init__(self, seconds: float = TEST_BUDGET_S) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self, cap: float = PROGRESS_TIMEOUT_S) -> float:
        """Seconds left, at most ``cap``; an exhausted budget still allows a last check."""
        return max(0.1, min(cap, self.deadline - time.monotonic()))


@contextmanager
def logs_on_failure(*sidecars: SidecarProcess, lines: int = 200) -> Iterator[None]:
    """Prints the sidecars' logs when the body fails, pytest's own timeout included: the
    logs live in temporary files that a CI run does not keep."""
    try:
        yield
    except BaseException:
        for sidecar in sidecars:
            print(f"---- last {lines} lines of {sidecar.log_path}:\n{sidecar.log(lines)}")
        raise


@dataclass
class Ledgerbook:
    """What the workers processed: every delivery of every id, in arrival order."""

    deliveries: collections.Counter[bytes] = field(default_factory=collections.Counter)

    @property
    def processed(self) -> set[bytes]:
        return set(self.deliveries)

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.deliveries.values())

    def histogram(self) -> dict[int, int]:
        """Deliveries per id -> how many ids (1x, 2x, ...)."""
        return dict(sorted(collections.Counter(self.deliveries.values()).items()))


def produce_ids(bootstrap: str, topic: str, n: int, prefix: str = "id") -> set[bytes]:
    records = id_records(n, prefix=prefix)
    produce(bootstrap, topic, records, keep=False)
    return {r.value for r in records if r.value is not None}


def make_handler(book: Ledgerbook, *, max_delay: float = 0.005,
                 seed: int = 7) -> Callable[[lowwater.Message], Awaitable[None]]:
    """A handler that takes a random time, so acks come back out of order."""
    rng = random.Random(seed)

    async def handle(msg: lowwater.Message) -> None:
        await asyncio.sleep(rng.random() * max_delay)
        book.deliveries[msg.value] += 1

    return handle


async def wait_processed(book: Ledgerbook, expected: set[bytes],
                         timeout: float = PROGRESS_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not expected <= book.processed:
        if time.monotonic() > deadline:
            missing = expected - book.processed
            raise AssertionError(f"{len(missing)} ids never processed, e.g. {sorted(missing)[:5]}")
        await asyncio.sleep(0.1)


async def wait_count(book: Ledgerbook, count: int, timeout: float = PROGRESS_TIMEOUT_S) -> None:
    """Waits until at least ``count`` distinct ids were processed."""
    deadline = time.monotonic() + timeout
    while len(book.deliveries) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(book.deliveries)} of {count} ids processed "
                                 f"after {timeout:.0f} s")
        await asyncio.sleep(0.05)


def wait_committed_to_end(bootstrap: str, group: str, topic: str,
                          timeout: float = 30.0) -> dict[int, int]:
    """Waits until every partition's committed offset equals its log end; returns it."""
    end = log_end_offsets(bootstrap, topic)
    deadline = time.monotonic() + timeout
    while True:
        committed = committed_offsets(bootstrap, group, topic)
        if all(committed.get(p) == o for p, o in end.items()):
            return end
        if time.monotonic() > deadline:
            raise AssertionError(f"committed {committed} never reached the log end {end}")
        time.sleep(0.2)
