"""Plain value types shared by the core modules."""

from __future__ import annotations

import enum
from typing import NamedTuple


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
