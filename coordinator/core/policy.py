"""What happens to a record after a settlement or a lapsed lease."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coordinator.core.model import Outcome


class Action(enum.Enum):
    FINISH = "finish"
    """The record is done; it no longer holds the commit back."""
    REDELIVER = "redeliver"
    """Deliver the record again, after ``Decision.delay`` seconds."""
    DEAD_LETTER = "dead_letter"
    """Give up on the record and hand it to the dead-letter path."""
    RETRY_TOPIC = "retry_topic"
    """Hand the record to the retry topic of the tier ``Decision.delay``."""


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0
    reason: str = ""


_RETRY, _DEAD_LETTER = Outcome.RETRY, Outcome.DEAD_LETTER  # enum access is slow on 3.11
_REDELIVER, _RETRY_TOPIC = Action.REDELIVER, Action.RETRY_TOPIC

IN_MEMORY_DELIVERIES = 3
"""With retry tiers, a record whose lease lapsed (or whose stream broke) this many times is
redelivered through a retry topic instead of at once, so that a record that keeps killing or
hanging its workers stops coming straight back."""

FINISH = Decision(Action.FINISH)
"""The decision for every finishing outcome (shared: decisions are immutable)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delivery attempts and delays.

    Attributes:
        default_delay: seconds to wait on RETRY without a delay.
        max_delay: the cap on a requested delay, seconds.
        max_attempts: deliveries allowed before the record is dead-lettered;
            None for no limit.
        tiers: the delays of the retry topics, seconds, increasing. With
            tiers, a RETRY answer hands the record to the first tier at least
            as long as the delay asked for (without one: the tier of its
            attempt number); without, it waits in memory. A lapsed lease or
            a broken stream always redelivers in memory.
    """

    default_delay: float = 1.0
    max_delay: float = 900.0
    max_attempts: int | None = None
    tiers: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.default_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")
        if self.default_delay > self.max_delay:
            raise ValueError(
                f"default_delay {self.default_delay}s exceeds max_delay {self.max_delay}s")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if list(self.tiers) != sorted(set(self.tiers)) or any(t <= 0 for t in self.tiers):
            raise ValueError(f"retry tiers must be positive and increasing, got {self.tiers}")

    def on_settle(self, outcome: Outcome, attempt: int, delay: float | None) -> Decision:
        """Decides the next step for a record whose delivery ``attempt`` was settled."""
        if outcome is _RETRY:
            if self.tiers:
                return self._to_tier(attempt, delay)
            wait = self.default_delay if delay is None else min(max(delay, 0.0), self.max_delay)
            return self._again(attempt, wait, "worker asked for a retry")
        if outcome is _DEAD_LETTER:
            return Decision(Action.DEAD_LETTER, reason="worker dead-lettered it")
        return FINISH

    def on_lapse(self, attempt: int, why: str) -> Decision:
        """Decides the next step for a delivery whose lease lapsed or whose stream broke: at
        once in memory, or through a retry topic after IN_MEMORY_DELIVERIES attempts."""
        decision = self._again(attempt, 0.0, why)
        if self.tiers and attempt >= IN_MEMORY_DELIVERIES and decision.action is _REDELIVER:
            tier = self.tiers[min(attempt - IN_MEMORY_DELIVERIES, len(self.tiers) - 1)]
            return Decision(_RETRY_TOPIC, delay=tier, reason=f"{why}; {attempt} deliveries")
        return decision

    def _to_tier(self, attempt: int, delay: float | None) -> Decision:
        decision = self._again(attempt, 0.0, "worker asked for a retry")
        if decision.action is not _REDELIVER:
            return decision  # out of attempts
        tiers = self.tiers
        if delay is None:
            tier = tiers[min(attempt, len(tiers)) - 1]
        else:
            tier = next((t for t in tiers if t >= delay), tiers[-1])
        return Decision(_RETRY_TOPIC, delay=tier, reason=decision.reason)

    def _again(self, attempt: int, delay: float, why: str) -> Decision:
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return Decision(
                Action.DEAD_LETTER, reason=f"{why}; {attempt} of {self.max_attempts} attempts used"
            )
        return Decision(Action.REDELIVER, delay=delay, reason=why)
