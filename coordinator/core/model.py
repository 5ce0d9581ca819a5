"""Plain value types shared by the core modules."""

from __future__ import annotations

import enum
from typing import NamedTuple

Offsets = list[int] | range
"""Increasing offsets of records fetched in a row from one partition: a range when they are
consecutive (the usual case; it costs nothing per record), a list when they have gaps."""


def consecutive(offsets: list[int]) -> Offsets:
    """Increasing ``offsets`` (not empty) as a range when they are consecutive."""
    first, last = offsets[0], offsets[-1]
    return range(first, last + 1) if last - first == len(offsets) - 1 else offsets


class TopicPartition(NamedTuple):
    """A Kafka partition."""

    topic: str
    partition: int


class Outcome(enum.Enum):
    """What a worker reports for one delivery (see the proto's ``Outcome``)."""

    ACK = 1
    RETRY = 2
    DEAD_LETTER = 3
    DROP = 4
    ALREADY_PROCESSED = 5


class SettleStatus(enum.Enum):
    """The answer to one settlement or lease extension."""

    OK = 1
    UNKNOWN = 2
    STALE = 3
    ALREADY_SETTLED = 4
    NOT_OWNER = 5
    INVALID = 6
