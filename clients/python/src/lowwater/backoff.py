"""Exponential backoff, for handler retries and for reconnecting."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["DEFAULT_RECONNECT_BACKOFF", "DEFAULT_RETRY_BACKOFF", "Backoff"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Backoff:
    """An exponential backoff schedule with optional jitter.

    The delay before try ``n`` (1-based) is ``initial * multiplier ** (n - 1)``,
    capped at ``maximum``; with jitter, a random share of up to ``jitter`` of
    that delay is taken off, so that many clients do not retry in step.

    Attributes:
        initial: the first delay; must not be negative.
        maximum: the largest delay; at least ``initial``.
        multiplier: growth per try; at least 1.
        jitter: the largest share of a delay removed at random, from 0 (none)
            to 1 (anything between 0 and the delay).

    Raises:
        TypeError: a duration is not a ``timedelta``.
        ValueError: a value is out of range; the message names it.
    """

    initial: timedelta
    maximum: timedelta
    multiplier: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("initial", "maximum"):
            if not isinstance(getattr(self, name), timedelta):
                raise TypeError(f"Backoff.{name} must be a timedelta")
        if self.initial < timedelta(0):
            raise ValueError(f"Backoff.initial must not be negative, got {self.initial}")
        if self.maximum < self.initial:
            raise ValueError(
                f"Backoff.maximum ({self.maximum}) must be at least initial ({self.initial})"
            )
        if not self.multiplier >= 1.0:
            raise ValueError(f"Backoff.multiplier must be at least 1, got {self.multiplier}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"Backoff.jitter must be between 0 and 1, got {self.jitter}")

    def delay(self, attempt: int, *, rand: Callable[[], float] = random.random) -> timedelta:
        """The delay before try number ``attempt``.

        Args:
            attempt: 1 for the first retry (or a delivery's first attempt).
                Values below 1 count as 1.
            rand: a source of floats in [0, 1), for the jitter.
        """
        return timedelta(seconds=self.delay_seconds(attempt, rand=rand))

    def delay_seconds(self, attempt: int, *, rand: Callable[[], float] = random.random) -> float:
        """Like :meth:`delay`, in seconds."""
        initial = self.initial.total_seconds()
        maximum = self.maximum.total_seconds()
        try:
            base = initial * self.multiplier ** max(0, attempt - 1)
        except OverflowError:
            base = maximum
        base = min(base, maximum)
        if self.jitter:
            base -= base * self.jitter * rand()
        return base


DEFAULT_RETRY_BACKOFF = Backoff(initial=timedelta(seconds=1), maximum=timedelta(minutes=5))
"""Retry delays after a handler fails: 1 s on the first attempt, doubling, at most 5 min."""

DEFAULT_RECONNECT_BACKOFF = Backoff(
    initial=timedelta(milliseconds=100), maximum=timedelta(seconds=5), jitter=0.5
)
"""Delays between attempts to reach the sidecar: 0.1 s doubling to 5 s, with jitter."""
