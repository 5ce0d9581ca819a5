"""Handler results map to wire outcomes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lowwater import AlreadyProcessed, Backoff, DeadLetter, Drop, Retry
from lowwater.outcomes import MAX_REASON_CHARS, Outcome, settlement_for

BACKOFF = Backoff(initial=timedelta(seconds=1), maximum=timedelta(seconds=10))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (Retry(), (Outcome.RETRY, None, "")),
        (Retry(delay=timedelta(milliseconds=1500), reason="busy"), (Outcome.RETRY, 1.5, "busy")),
        (Retry(delay=timedelta(0)), (Outcome.RETRY, 0.0, "")),
        (DeadLetter("bad payload"), (Outcome.DEAD_LETTER, None, "bad payload")),
        (Drop("expired"), (Outcome.DROP, None, "expired")),
        (AlreadyProcessed(), (Outcome.ALREADY_PROCESSED, None, "")),
        (AlreadyProcessed("seen"), (Outcome.ALREADY_PROCESSED, None, "seen")),
    ],
)
def test_handler_outcomes(exc: BaseException, expected: tuple[object, ...]) -> None:
    assert settlement_for(exc, 1, BACKOFF) == expected


@pytest.mark.parametrize(("attempt", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0)])
def test_other_exceptions_retry_with_backoff_by_attempt(attempt: int, delay: float) -> None:
    outcome, got, reason = settlement_for(ValueError("boom"), attempt, BACKOFF)
    assert (outcome, got, reason) == (Outcome.RETRY, delay, "ValueError: boom")


def test_long_reasons_are_cut() -> None:
    _, _, reason = settlement_for(DeadLetter("x" * 5000), 1, BACKOFF)
    assert len(reason) == MAX_REASON_CHARS
    _, _, reason = settlement_for(RuntimeError("y" * 5000), 1, BACKOFF)
    assert len(reason) == MAX_REASON_CHARS


def test_retry_validates_its_delay() -> None:
    with pytest.raises(ValueError, match="delay"):
        Retry(delay=timedelta(seconds=-1))
    with pytest.raises(TypeError, match="delay"):
        Retry(delay=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reason"):
        DeadLetter(42)  # type: ignore[arg-type]


def test_wire_values_match_the_proto() -> None:
    from lowwater.v1 import coordinator_pb2 as pb

    for outcome in Outcome:
        assert pb.Outcome.Value(f"OUTCOME_{outcome.name}") == outcome.value
