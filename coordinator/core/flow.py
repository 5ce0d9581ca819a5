"""Flow control: per-stream credits and per-partition pause/resume."""

from __future__ import annotations

import enum

RESUME_RATIO = 0.8
"""A paused partition resumes once its pending count falls below this share of the cap."""


class Credits:
    """What one worker stream may hold outstanding, and what it holds.

    A single record larger than the byte limit is still granted when nothing
    else is outstanding, so one big record cannot wedge a stream.
    """

    __slots__ = ("bytes", "max_bytes", "max_messages", "messages")

    def __init__(self, max_messages: int, max_bytes: int = 0) -> None:
        self.max_messages = 0
        self.max_bytes = 0
        self.messages = 0
        self.bytes = 0
        self.resize(max_messages, max_bytes)

    def resize(self, max_messages: int, max_bytes: int = 0) -> None:
        """Replaces the limits; what is already outstanding stays outstanding.

        Raises:
            ValueError: ``max_messages`` < 1 or ``max_bytes`` < 0.
        """
        if max_messages < 1:
            raise ValueError(f"max_in_flight_messages must be at least 1, got {max_messages}")
        if max_bytes < 0:
            raise ValueError(f"max_in_flight_bytes must not be negative, got {max_bytes}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes

    def allows(self, size: int) -> bool:
        """Whether one more record of ``size`` bytes fits."""
        if self.messages >= self.max_messages:
            return False
        if self.max_bytes == 0 or self.messages == 0:
            return True
        return self.bytes + size <= self.max_bytes

    def take(self, size: int) -> None:
        self.messages += 1
        self.bytes += size

    def give(self, size: int) -> None:
        self.messages -= 1
        self.bytes -= size


class GateChange(enum.Enum):
    PAUSE = "pause"
    RESUME = "resume"


class PauseGate:
    """Pauses a partition at its pending cap and resumes it with hysteresis.

    Pausing only stops fetching: the consumer keeps polling, and nothing that
    was already fetched is thrown away.
    """

    __slots__ = ("cap", "paused", "resume_below")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"max_pending_per_partition must be at least 1, got {cap}")
        self.cap = cap
        # Rounded down (cap 11 resumes below 8, not below 8.8): never later than the ratio says.
        self.resume_below = max(1, int(cap * RESUME_RATIO))
        self.paused = False

    def update(self, pending: int) -> GateChange | None:
        """Feeds the current pending count; returns a change to apply, if any."""
        if not self.paused and pending >= self.cap:
            self.paused = True
            return GateChange.PAUSE
        if self.paused and pending < self.resume_below:
            self.paused = False
            return GateChange.RESUME
        return None
