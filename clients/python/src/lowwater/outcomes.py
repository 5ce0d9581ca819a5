"""How a handler chooses the outcome of a message.

A handler that returns normally ACKs its message. To choose another outcome it
raises one of the exceptions below. Any other exception means RETRY after an
exponential backoff computed from the delivery's attempt number (see
``retry_backoff`` on the workers), and is logged on ``lowwater.handler``.

Example::

    async def handle(msg: Message) -> None:
        if expired(msg):
            raise Drop("verification code expired")
        if not await channel.send(msg.value):
            raise Retry(delay=timedelta(seconds=10))
"""

from __future__ import annotations

import enum
from datetime import timedelta

from lowwater.backoff import Backoff

__all__ = ["AlreadyProcessed", "DeadLetter", "Drop", "HandlerOutcome", "Retry"]

MAX_REASON_CHARS = 1000
"""Reasons longer than this are cut before they go on the wire."""


class Outcome(enum.IntEnum):
    """The outcomes of the wire protocol (values of ``lowwater.v1.Outcome``). Internal."""

    ACK = 1
    RETRY = 2
    DEAD_LETTER = 3
    DROP = 4
    ALREADY_PROCESSED = 5


class HandlerOutcome(Exception):
    """Base class of the exceptions a handler raises to choose an outcome.

    Attributes:
        reason: free text, sent to the sidecar for its logs and dead-letter headers.
    """

    outcome: Outcome

    def __init__(self, reason: str = "") -> None:
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__}")
        super().__init__(reason)
        self.reason = reason


class Retry(HandlerOutcome):
    """Deliver the message again later, with its attempt number incremented.

    Args:
        delay: how long the sidecar waits before the redelivery; None means the
            sidecar's default retry delay. Must not be negative.
        reason: free text for the sidecar's logs.
    """

    outcome = Outcome.RETRY

    def __init__(self, delay: timedelta | None = None, reason: str = "") -> None:
        if delay is not None:
            if not isinstance(delay, timedelta):
                raise TypeError(f"delay must be a timedelta or None, got {type(delay).__name__}")
            if delay < timedelta(0):
                raise ValueError(f"delay must not be negative, got {delay}")
        super().__init__(reason)
        self.delay = delay


class DeadLetter(HandlerOutcome):
    """Give up now: the sidecar sends the record to the dead-letter topic with ``reason``."""

    outcome = Outcome.DEAD_LETTER

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class Drop(HandlerOutcome):
    """Give up: the sidecar counts the record and finishes it, without a dead-letter topic."""

    outcome = Outcome.DROP

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class AlreadyProcessed(HandlerOutcome):
    """An idempotent skip: the work was done before. It counts as finished."""

    outcome = Outcome.ALREADY_PROCESSED

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)


Settlement = tuple[Outcome, "float | None", str]
"""An outcome, the retry delay in seconds (None for the sidecar's default), and a reason."""

ACK: Settlement = (Outcome.ACK, None, "")


def settlement_for(exc: BaseException, attempt: int, retry_backoff: Backoff) -> Settlement:
    """Maps what a handler raised to the settlement to send.

    Args:
        exc: the exception the handler raised.
        attempt: the delivery's attempt number (1 on the first delivery).
        retry_backoff: the schedule for failures that are not a HandlerOutcome.
    """
    if isinstance(exc, HandlerOutcome):
        delay: float | None = None
        if isinstance(exc, Retry) and exc.delay is not None:
            delay = exc.delay.total_seconds()
        return (exc.outcome, delay, exc.reason[:MAX_REASON_CHARS])
    reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]
    return (Outcome.RETRY, retry_backoff.delay_seconds(attempt), reason)
