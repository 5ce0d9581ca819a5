"""The engine's timer task: leases and retries on a 50 ms tick, commits on their own schedule."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.core.ledger import Ledger
from coordinator.runtime.engine import TIMER_RESOLUTION, Engine
from tests.support.aio import async_test

from .harness import RecordingSink


class Timeline:
    """A clock that the engine's sleeps move forward, and what happened when."""

    def __init__(self) -> None:
        self.now = 0.0
        self.commits: list[float] = []
        self.ticks: list[float] = []
        self.stall_at: float | None = None
        """A sleep that would end after this time ends STALL later instead (a busy loop)."""


STALL = 0.5


async def run_for(timeline: Timeline, interval: float, until: float,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        end = timeline.now + delay
        if timeline.stall_at is not None and end > timeline.stall_at:
            end, timeline.stall_at = end + STALL, None
        timeline.now = end
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)  # what Engine.run awaits
    e = Engine(Ledger(), RecordingSink(), commit_interval=interval, clock=lambda: timeline.now)
    monkeypatch.setattr(e, "commit", lambda: timeline.commits.append(timeline.now))
    tick = e.ledger.tick

    def counted_tick(now: float) -> int:
        timeline.ticks.append(now)
        return tick(now)

    monkeypatch.setattr(e.ledger, "tick", counted_tick)
    task = asyncio.create_task(e.run())
    while timeline.now < until:
        await real_sleep(0)
    task.cancel()


@pytest.mark.parametrize("interval", [0.02, 0.1, 0.13, 1.0])
@async_test
async def test_commits_come_every_interval_whatever_the_tick(
        interval: float, monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = Timeline()
    await run_for(timeline, interval, 3.0, monkeypatch)
    due = [interval * k for k in range(1, 100_000) if interval * k < 3.0 - 1e-6]
    assert [t for t in timeline.commits if t < 3.0 - 1e-6] == pytest.approx(due)
    gaps = [b - a for a, b in zip(timeline.ticks, timeline.ticks[1:], strict=False)]
    assert gaps and min(gaps) >= TIMER_RESOLUTION - 1e-9  # the tick keeps its own pace


@async_test
async def test_after_a_stall_one_commit_and_then_the_interval_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = Timeline()
    timeline.stall_at = 1.0
    await run_for(timeline, 0.1, 3.0, monkeypatch)
    gaps = [round(b - a, 6) for a, b in zip(timeline.commits, timeline.commits[1:],
                                            strict=False)]
    stalled = [gap for gap in gaps if gap >= STALL]
    assert len(stalled) == 1  # the stall happened between two commits
    others = [gap for gap in gaps if gap < STALL]
    assert others == pytest.approx([0.1] * len(others))  # and no burst made up for it
