"""Flow control: per-stream Credits and the per-partition PauseGate."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.flow import RESUME_RATIO, Credits, GateChange, PauseGate

EXAMPLES = 3000 if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else 100


# -- Credits ----------------------------------------------------------------


def test_message_limit() -> None:
    c = Credits(2)
    assert c.allows(10**9)  # max_bytes 0: bytes are unlimited
    c.take(10**9)
    assert c.allows(1)
    c.take(1)
    assert not c.allows(0)
    c.give(1)
    assert c.allows(0)
    assert (c.messages, c.bytes) == (1, 10**9)


def test_byte_limit() -> None:
    c = Credits(10, 100)
    c.take(60)
    assert c.allows(40)
    assert not c.allows(41)
    c.take(40)
    assert c.allows(0)  # exactly at the byte limit still fits a 0-byte record
    assert not c.allows(1)


def test_one_oversized_record_is_granted_when_nothing_is_outstanding() -> None:
    c = Credits(10, 100)
    assert c.allows(1000)
    c.take(1000)
    assert not c.allows(1)  # but nothing else joins it
    assert not c.allows(0)
    c.give(1000)
    assert c.allows(1000)


def test_oversized_record_never_bypasses_the_message_limit() -> None:
    c = Credits(1, 100)
    c.take(5)
    assert not c.allows(1000)


def test_resize_keeps_what_is_outstanding() -> None:
    c = Credits(5, 100)
    for _ in range(4):
        c.take(20)
    c.resize(2, 50)
    assert (c.max_messages, c.max_bytes) == (2, 50)
    assert (c.messages, c.bytes) == (4, 80)
    assert not c.allows(0)
    for _ in range(3):
        c.give(20)
    assert c.allows(30)
    assert not c.allows(31)


@pytest.mark.parametrize(
    ("max_messages", "max_bytes", "match"),
    [(0, 0, "max_in_flight_messages"), (-1, 0, "max_in_flight_messages"),
     (1, -1, "max_in_flight_bytes")],
)
def test_limits_are_validated(max_messages: int, max_bytes: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Credits(max_messages, max_bytes)
    c = Credits(3, 30)
    with pytest.raises(ValueError, match=match):
        c.resize(max_messages, max_bytes)
    assert (c.max_messages, c.max_bytes) == (3, 30)  # a rejected resize changes nothing


# -- PauseGate ----------------------------------------------------------------


def test_pauses_at_cap_and_resumes_below_80_percent() -> None:
    gate = PauseGate(10)
    assert gate.resume_below == 8
    assert [gate.update(n) for n in range(10)] == [None] * 10
    assert gate.update(10) is GateChange.PAUSE
    assert gate.paused
    assert gate.update(11) is None  # already paused
    assert [gate.update(n) for n in (10, 9, 8)] == [None, None, None]  # hysteresis band
    assert gate.paused
    assert gate.update(7) is GateChange.RESUME
    assert not gate.paused
    assert gate.update(9) is None  # no flapping back on the way up
    assert gate.update(10) is GateChange.PAUSE


def test_tiny_caps_still_resume() -> None:
    gate = PauseGate(1)
    assert gate.resume_below == 1
    assert gate.update(1) is GateChange.PAUSE
    assert gate.update(0) is GateChange.RESUME
    assert PauseGate(2).resume_below == 1


@pytest.mark.parametrize("cap", [0, -5])
def test_cap_is_validated(cap: int) -> None:
    with pytest.raises(ValueError, match="max_pending_per_partition"):
        PauseGate(cap)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.integers(1, 200), st.lists(st.integers(-30, 30), max_size=200))
def test_gate_follows_its_last_change_over_any_walk(cap: int, steps: list[int]) -> None:
    gate = PauseGate(cap)
    assert 1 <= gate.resume_below <= cap
    assert gate.resume_below <= max(1, cap * RESUME_RATIO)
    last: GateChange | None = None
    pending = 0
    for step in steps:
        pending = max(0, pending + step)
        was_paused = gate.paused
        change = gate.update(pending)
        if change is GateChange.PAUSE:
            assert not was_paused and pending >= cap
        elif change is GateChange.RESUME:
            assert was_paused and pending < gate.resume_below
        else:
            # Nothing changed: either already paused and still in/above the band,
            # or running and still below the cap.
            assert pending >= gate.resume_below if was_paused else pending < cap
        if change is not None:
            assert change is not last  # changes alternate: no PAUSE, PAUSE
            last = change
        assert gate.paused == (last is GateChange.PAUSE)
