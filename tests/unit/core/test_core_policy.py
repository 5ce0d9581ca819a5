"""RetryPolicy: outcome or lapse -> finish, redeliver (with a delay) or dead-letter."""

from __future__ import annotations

import pytest

from coordinator.core.model import Outcome
from coordinator.core.policy import IN_MEMORY_DELIVERIES, Action, Decision, RetryPolicy


@pytest.mark.parametrize("outcome", [Outcome.ACK, Outcome.DROP, Outcome.ALREADY_PROCESSED])
@pytest.mark.parametrize("attempt", [1, 5, 1000])
def test_done_outcomes_finish_whatever_the_attempt(outcome: Outcome, attempt: int) -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.on_settle(outcome, attempt, None) == Decision(Action.FINISH)
    assert policy.on_settle(outcome, attempt, 7.0).action is Action.FINISH


def test_retry_without_delay_waits_the_default() -> None:
    decision = RetryPolicy(default_delay=2.5).on_settle(Outcome.RETRY, 1, None)
    assert decision.action is Action.REDELIVER
    assert decision.delay == 2.5
    assert decision.reason


@pytest.mark.parametrize(
    ("asked", "waits"), [(0.0, 0.0), (3.0, 3.0), (-4.0, 0.0), (60.0, 60.0), (61.0, 60.0),
                         (float("inf"), 60.0)]
)
def test_retry_delay_is_clamped_to_zero_and_max(asked: float, waits: float) -> None:
    decision = RetryPolicy(default_delay=1.0, max_delay=60.0).on_settle(Outcome.RETRY, 1, asked)
    assert decision == Decision(Action.REDELIVER, delay=waits, reason=decision.reason)


def test_explicit_zero_delay_is_not_replaced_by_the_default() -> None:
    assert RetryPolicy(default_delay=5.0).on_settle(Outcome.RETRY, 1, 0.0).delay == 0.0


def test_dead_letter_outcome_gives_up_at_once() -> None:
    decision = RetryPolicy().on_settle(Outcome.DEAD_LETTER, 1, None)
    assert decision.action is Action.DEAD_LETTER
    assert "dead-letter" in decision.reason


def test_retry_dead_letters_once_max_attempts_are_used() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.on_settle(Outcome.RETRY, 1, None).action is Action.REDELIVER
    assert policy.on_settle(Outcome.RETRY, 2, None).action is Action.REDELIVER
    last = policy.on_settle(Outcome.RETRY, 3, None)
    assert last.action is Action.DEAD_LETTER
    assert last.delay == 0.0
    assert "3 of 3" in last.reason


def test_one_attempt_means_no_redelivery() -> None:
    policy = RetryPolicy(max_attempts=1)
    assert policy.on_settle(Outcome.RETRY, 1, 0.0).action is Action.DEAD_LETTER
    assert policy.on_lapse(1, "its lease expired").action is Action.DEAD_LETTER


def test_no_limit_redelivers_forever() -> None:
    assert RetryPolicy().on_settle(Outcome.RETRY, 10**6, None).action is Action.REDELIVER
    assert RetryPolicy().on_lapse(10**6, "x").action is Action.REDELIVER


def test_lapse_redelivers_at_once_with_the_reason() -> None:
    decision = RetryPolicy(default_delay=9.0, max_attempts=2).on_lapse(1, "its stream closed")
    assert decision == Decision(Action.REDELIVER, delay=0.0, reason="its stream closed")
    final = RetryPolicy(max_attempts=2).on_lapse(2, "its lease expired")
    assert final.action is Action.DEAD_LETTER
    assert final.reason.startswith("its lease expired")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"default_delay": -1.0}, "negative"),
        ({"max_delay": -0.1}, "negative"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -3}, "max_attempts"),
    ],
)
def test_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_valid_edges_are_accepted() -> None:
    policy = RetryPolicy(default_delay=0.0, max_delay=0.0, max_attempts=1)
    assert policy.on_settle(Outcome.ACK, 1, None).action is Action.FINISH


TIERED = RetryPolicy(max_attempts=5, tiers=(1.0, 10.0, 60.0))


@pytest.mark.parametrize(("asked", "tier"), [(0.0, 1.0), (1.0, 1.0), (1.5, 10.0), (10.0, 10.0),
                                             (59.0, 60.0), (3600.0, 60.0)])
def test_a_retry_with_a_delay_goes_to_the_first_tier_at_least_that_long(
    asked: float, tier: float
) -> None:
    assert TIERED.on_settle(Outcome.RETRY, 1, asked) == Decision(
        Action.RETRY_TOPIC, delay=tier, reason="worker asked for a retry")


@pytest.mark.parametrize(("attempt", "tier"), [(1, 1.0), (2, 10.0), (3, 60.0), (4, 60.0)])
def test_a_retry_without_a_delay_goes_to_the_tier_of_its_attempt(attempt: int, tier: float) -> None:
    decision = TIERED.on_settle(Outcome.RETRY, attempt, None)
    assert (decision.action, decision.delay) == (Action.RETRY_TOPIC, tier)


def test_tiers_still_dead_letter_past_max_attempts() -> None:
    assert TIERED.on_settle(Outcome.RETRY, 5, 1.0).action is Action.DEAD_LETTER
    assert TIERED.on_lapse(5, "its lease expired").action is Action.DEAD_LETTER


def test_lapses_redeliver_in_memory_then_through_the_retry_tiers() -> None:
    assert IN_MEMORY_DELIVERIES == 3
    for attempt in (1, 2):
        assert TIERED.on_lapse(attempt, "its stream closed") == Decision(
            Action.REDELIVER, reason="its stream closed")
    third = TIERED.on_lapse(3, "its stream closed")
    assert (third.action, third.delay) == (Action.RETRY_TOPIC, 1.0)
    assert "3 deliveries" in third.reason
    assert TIERED.on_lapse(4, "its lease expired").delay == 10.0
    assert RetryPolicy().on_lapse(9, "x").action is Action.REDELIVER  # no tiers: in memory


@pytest.mark.parametrize("tiers", [(0.0,), (10.0, 1.0), (1.0, 1.0), (-1.0,)])
def test_tiers_must_be_positive_and_increasing(tiers: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="tiers"):
        RetryPolicy(tiers=tiers)
