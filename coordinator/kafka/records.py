"""Reading fetched confluent-kafka messages safely, and the lowwater.* headers of hand-offs."""

from __future__ import annotations

import logging
from typing import Any

records_log = logging.getLogger("coordinator.records")

HEADER_PREFIX = "lowwater."
HEADER_TOPIC = HEADER_PREFIX + "topic"
HEADER_PARTITION = HEADER_PREFIX + "partition"
HEADER_OFFSET = HEADER_PREFIX + "offset"
HEADER_ATTEMPTS = HEADER_PREFIX + "attempts"
HEADER_REASON = HEADER_PREFIX + "reason"
HEADER_KIND = HEADER_PREFIX + "handoff"
HEADER_GROUP = HEADER_PREFIX + "group"
HEADER_DUE = HEADER_PREFIX + "due"
HEADER_FIRST_SEEN = HEADER_PREFIX + "first.seen"
"""Headers added to a handed-off record, after its own: where it was first consumed, how many
deliveries it had, why it left (``dead_letter``, ``expired`` or ``retry``), the consumer group;
for a retry also when it is due and when it was first fetched (milliseconds since the epoch)."""


def record_headers(msg: Any) -> list[tuple[str, bytes | None]] | None:
    """``msg.headers()``, or no headers when the Kafka client cannot decode them.

    confluent-kafka decodes header keys as strict UTF-8. For a key that is not (any
    producer but the Python client can write one), ``headers()`` raises SystemError once,
    and every later call returns a list holding a NULL that crashes the interpreter when
    it is unpacked. So the record's headers are replaced with none, for good, and it is
    delivered with its key and value intact: it must neither kill the stream nor, being
    redelivered, the sidecar.
    """
    try:
        headers: list[tuple[str, bytes | None]] | None = msg.headers()
    except (SystemError, ValueError) as exc:  # SystemError from a UnicodeDecodeError, today
        msg.set_headers([])
        records_log.warning(
            "%s[%d]@%d: the Kafka client cannot decode its headers (%s: %s); delivering it "
            "without headers", msg.topic(), msg.partition(), msg.offset(), type(exc).__name__,
            exc.__cause__ or exc)
        return None
    return headers


class RetriedMessage:
    """A record back from a retry topic, seen as the record it retries.

    ``topic()``, ``partition()`` and ``offset()`` are the original record's; key, value and
    timestamp are the retry record's (copied from the original); ``headers()`` are the
    original's, without the ``lowwater.*`` ones. The retry record itself is ``raw``.
    """

    __slots__ = ("_headers", "_offset", "_partition", "_topic", "attempts", "due_ms",
                 "first_seen_ms", "raw")

    def __init__(self, raw: Any, headers: list[tuple[str, bytes | None]], topic: str,
                 partition: int, offset: int, attempts: int, due_ms: int,
                 first_seen_ms: int) -> None:
        self.raw = raw
        self._headers = headers
        self._topic, self._partition, self._offset = topic, partition, offset
        self.attempts = attempts
        self.due_ms = due_ms
        self.first_seen_ms = first_seen_ms

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        key: bytes | None = self.raw.key()
        return key

    def value(self) -> bytes | None:
        value: bytes | None = self.raw.value()
        return value

    def timestamp(self) -> tuple[int, int]:
        ts: tuple[int, int] = self.raw.timestamp()
        return ts

    def headers(self) -> list[tuple[str, bytes | None]]:
        return self._headers

    def set_headers(self, headers: list[tuple[str, bytes | None]]) -> None:
        self._headers = headers


def retried(msg: Any) -> RetriedMessage | None:
    """The record a retry-topic message retries; None if its lowwater.* headers are missing or
    malformed (it was not produced by lowwater)."""
    own: list[tuple[str, bytes | None]] = []
    ours: dict[str, bytes | None] = {}
    for key, value in record_headers(msg) or ():
        if key.startswith(HEADER_PREFIX):
            ours[key] = value
        else:
            own.append((key, value))
    try:
        return RetriedMessage(
            msg, own, (ours[HEADER_TOPIC] or b"").decode(), int(ours[HEADER_PARTITION] or b""),
            int(ours[HEADER_OFFSET] or b""), int(ours[HEADER_ATTEMPTS] or b""),
            int(ours[HEADER_DUE] or b""), int(ours.get(HEADER_FIRST_SEEN) or b"0"))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
