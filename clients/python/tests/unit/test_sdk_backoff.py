"""Exponential backoff with cap and jitter."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowwater import DEFAULT_RECONNECT_BACKOFF, Backoff


def test_doubles_up_to_the_maximum() -> None:
    b = Backoff(initial=timedelta(milliseconds=100), maximum=timedelta(seconds=1))
    assert [b.delay_seconds(n) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert b.delay(3) == timedelta(milliseconds=400)
    assert b.delay_seconds(0) == pytest.approx(0.1)
    assert b.delay_seconds(10**6) == pytest.approx(1.0)  # no overflow


def test_jitter_takes_off_up_to_its_share() -> None:
    b = Backoff(initial=timedelta(seconds=1), maximum=timedelta(seconds=1), jitter=0.5)
    assert b.delay_seconds(1, rand=lambda: 0.0) == pytest.approx(1.0)
    assert b.delay_seconds(1, rand=lambda: 0.999) == pytest.approx(0.5005)


def test_default_reconnect_backoff_spans_100ms_to_5s() -> None:
    assert DEFAULT_RECONNECT_BACKOFF.initial == timedelta(milliseconds=100)
    assert DEFAULT_RECONNECT_BACKOFF.maximum == timedelta(seconds=5)
    assert DEFAULT_RECONNECT_BACKOFF.jitter > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"initial": timedelta(seconds=-1), "maximum": timedelta(seconds=1)}, ValueError, "initial"),
        ({"initial": timedelta(seconds=2), "maximum": timedelta(seconds=1)}, ValueError, "maximum"),
        ({"initial": 1, "maximum": timedelta(seconds=1)}, TypeError, "initial"),
        (
            {"initial": timedelta(0), "maximum": timedelta(1), "multiplier": 0.5},
            ValueError,
            "multiplier",
        ),
        ({"initial": timedelta(0), "maximum": timedelta(1), "jitter": 1.5}, ValueError, "jitter"),
    ],
)
def test_invalid_settings_are_rejected(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Backoff(**kwargs)  # type: ignore[arg-type]


@given(
    initial_ms=st.integers(0, 10_000),
    extra_ms=st.integers(0, 100_000),
    multiplier=st.floats(1.0, 10.0),
    jitter=st.floats(0.0, 1.0),
    attempt=st.integers(-5, 10_000),
    rand=st.floats(0.0, 0.999999),
)
def test_delays_stay_within_bounds_and_grow(
    initial_ms: int, extra_ms: int, multiplier: float, jitter: float, attempt: int, rand: float
) -> None:
    b = Backoff(
        initial=timedelta(milliseconds=initial_ms),
        maximum=timedelta(milliseconds=initial_ms + extra_ms),
        multiplier=multiplier,
        jitter=jitter,
    )
    delay = b.delay_seconds(attempt, rand=lambda: rand)
    assert 0.0 <= delay <= b.maximum.total_seconds() + 1e-9
    no_jitter = Backoff(initial=b.initial, maximum=b.maximum, multiplier=multiplier)
    assert no_jitter.delay_seconds(attempt) <= no_jitter.delay_seconds(attempt + 1) + 1e-9
