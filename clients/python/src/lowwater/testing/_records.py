"""What the fake sidecar lets tests observe, and a Message factory for unit tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from lowwater.message import Message, from_delivery
from lowwater.outcomes import Outcome
from lowwater.v1 import coordinator_pb2 as pb

OutcomeName = Literal["ACK", "RETRY", "DEAD_LETTER", "DROP", "ALREADY_PROCESSED"]
"""An outcome as tests see it."""


@dataclass(frozen=True, slots=True)
class PublishedRecord:
    """Names one record published to the fake: where it sits in its partition."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One delivery the fake made (a redelivery is another DeliveryRecord)."""

    msg_id: int
    record: PublishedRecord
    attempt: int
    stream_id: str
    """The stream it went to, or ``"pull:<worker_id>"`` for Pull."""


@dataclass(frozen=True, slots=True)
class SettlementRecord:
    """One settlement the fake accepted."""

    msg_id: int
    record: PublishedRecord
    attempt: int
    outcome: OutcomeName
    retry_delay: timedelta | None
    reason: str
    stream_id: str


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream as the fake saw it; the ``max_*_seen`` fields check flow control."""

    stream_id: str
    worker_id: str
    max_in_flight: int
    """The message limit declared last (open or flow_control)."""
    max_in_flight_bytes: int
    outstanding: int
    max_outstanding_seen: int
    """The most deliveries this stream ever held at once."""
    max_outstanding_bytes_seen: int
    max_in_flight_declared_min: int
    """The smallest message limit this stream ever declared."""
    open: bool


@dataclass(slots=True)
class RecordingSettler:
    """Collects what :func:`make_message` messages are settled with. Thread-safe."""

    settlements: list[tuple[OutcomeName, timedelta | None, str]] = field(default_factory=list)
    extensions: list[timedelta | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def settle(self, msg: Message, outcome: Outcome, delay: float | None, reason: str) -> bool:
        with self._lock:
            wait = None if delay is None else timedelta(seconds=delay)
            self.settlements.append((outcome_name(outcome), wait, reason))
        return True

    def ack(self, msg: Message) -> None:
        self.settle(msg, Outcome.ACK, None, "")

    def extend(self, msg: Message, seconds: float | None) -> bool:
        with self._lock:
            self.extensions.append(None if seconds is None else timedelta(seconds=seconds))
        return True


def outcome_name(outcome: int) -> OutcomeName:
    names: dict[int, OutcomeName] = {
        Outcome.ACK: "ACK",
        Outcome.RETRY: "RETRY",
        Outcome.DEAD_LETTER: "DEAD_LETTER",
        Outcome.DROP: "DROP",
        Outcome.ALREADY_PROCESSED: "ALREADY_PROCESSED",
    }
    return names[outcome]


def make_message(
    *,
    value: bytes = b"",
    key: bytes | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
    topic: str = "test",
    partition: int = 0,
    offset: int = 0,
    msg_id: int = 1,
    attempt: int = 1,
    timestamp_ms: int = 0,
    lease_deadline_ms: int = 0,
    settler: RecordingSettler | None = None,
) -> tuple[Message, RecordingSettler]:
    """A standalone Message for unit-testing a handler without any sidecar.

    Returns:
        The message and the settler that records how it gets settled.
    """
    delivery = pb.Delivery(
        msg_id=msg_id,
        topic=topic,
        partition=partition,
        offset=offset,
        value=value,
        headers=[pb.Header(key=k, value=v) for k, v in headers],
        timestamp_ms=timestamp_ms,
        attempt=attempt,
        lease_deadline_ms=lease_deadline_ms,
    )
    if key is not None:
        delivery.key = key
    settler = settler if settler is not None else RecordingSettler()
    return from_delivery(settler, delivery, 0.0), settler
