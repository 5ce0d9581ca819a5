"""Fetched confluent-kafka messages, read safely into compact payloads; the lowwater.*
headers of hand-offs."""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Any, NamedTuple, cast

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from coordinator.core.model import Offsets, TopicPartition, consecutive

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
HEADER_TIMESTAMP = HEADER_PREFIX + "timestamp"
"""Headers added to a handed-off record, after its own: where it was first consumed, how many
deliveries it had, why it left (``dead_letter``, ``expired`` or ``retry``), the consumer group;
for a retry also when it is due, when it was first fetched and, if it has one, the original's
timestamp (milliseconds since the epoch). The hand-off is produced with that timestamp too, but
a retry topic with ``message.timestamp.type=LogAppendTime`` replaces it, and a TTL must not
start again."""


Headers = list[tuple[str, bytes | None]]
"""A record's headers as confluent-kafka gives them: (key, value) pairs, in order."""


def _no_headers(msg: Any, exc: BaseException) -> None:
    """``msg.headers()`` raised ``exc``: the message keeps no headers, and it is logged."""
    msg.set_headers([])
    records_log.warning(
        "%s[%d]@%d: the Kafka client cannot decode its headers (%s: %s); delivering it "
        "without headers", msg.topic(), msg.partition(), msg.offset(), type(exc).__name__,
        exc.__cause__ or exc)


Fetched = tuple[bytes | None, bytes | None, Headers | None, int | None]
"""What a delivery and a hand-off need of a fetched record: (key, value, headers,
timestamp_ms), the ledger record's payload (read by :func:`segments`).

Headers are None when it has none or when the Kafka client cannot decode them; the timestamp
(milliseconds since the epoch) is None when the record has none. Its topic, partition and
offset are the ledger record's own (``rec.part.tp``, ``rec.offset``), so they are not kept.

A plain tuple, not a NamedTuple: one is held per pending record, and a plain tuple of bytes,
ints and None is built faster and is soon no longer tracked by Python's cyclic garbage
collector (a tuple subclass always is).
"""


class Retried(NamedTuple):
    """A record back from a retry topic, seen as the record it retries: a ledger record's
    payload, like :data:`Fetched`."""

    record: Fetched
    """Key and value of the retry record (copied from the original); the original's headers,
    without the ``lowwater.*`` ones; the original's timestamp (``lowwater.timestamp``, else the
    retry record's own)."""
    topic: str
    """Where the original was consumed: its topic, partition and offset."""
    partition: int
    offset: int
    attempts: int
    """Deliveries the original had before it was handed to the retry topic."""
    due_ms: int
    """When it is due again, milliseconds since the epoch."""
    first_seen_ms: int
    """When the original was first fetched, milliseconds since the epoch; 0 if unknown."""


Payload = Fetched | Retried
"""A ledger record's payload: :func:`contents` gives its key, value, headers and timestamp,
:func:`origin` where it was first consumed."""


Columns = tuple[list[bytes | None], list[bytes | None], list[Headers | None], list[int | None]]
"""The payloads of fetched records, column by column: keys, values, headers, timestamps.
Record i's :data:`Fetched` is the tuple of each column's item i."""


def _read_columns(msgs: list[Any], cls: Any) -> Columns:
    """Each message's payload (:data:`Fetched`), a column at a time.

    ``cls`` is the messages' class (all of one: ``confluent_kafka.Message``, or a test's
    fake): ``map`` over its unbound accessors calls each one at C speed, about 20 ns a
    record, where a list comprehension takes twice that and a loop over the messages more.
    """
    stamps = list(map(cls.timestamp, msgs))
    kinds, times = zip(*stamps) if stamps else ((), ())
    # TIMESTAMP_NOT_AVAILABLE is 0 (a unit test pins it), so all() finds one: several times
    # faster than `in`, which compares each kind with it.
    if not all(kinds):
        at: list[int | None] = [None if kind == TIMESTAMP_NOT_AVAILABLE else ts
                                for kind, ts in stamps]
    else:
        at = list(times)
    return (list(map(cls.key, msgs)), list(map(cls.value, msgs)),
            _headers_column(msgs, cls.headers), at)


def _headers_column(msgs: list[Any], headers_of: Any) -> list[Headers | None]:
    """Each message's headers, or None where the Kafka client cannot decode them.

    confluent-kafka decodes header keys as strict UTF-8. For a key that is not (any
    producer but the Python client can write one), ``headers()`` raises SystemError once,
    and every later call returns a list holding a NULL that crashes the interpreter when
    it is unpacked. So that message's ``headers()`` is never called again: its headers are
    replaced with none, for good, and it is delivered with its key and value intact (it must
    kill neither the stream nor the sidecar).
    """
    out: list[Headers | None] = []
    each = map(headers_of, msgs)
    while True:
        try:
            out.extend(each)  # what it appended before a raise stays: the culprit is next
            return out
        except (SystemError, ValueError) as exc:  # SystemError from a UnicodeDecodeError
            _no_headers(msgs[len(out)], exc)
            out.append(None)


class Segment(NamedTuple):
    """Records fetched in a row from one partition, read out of their confluent-kafka
    messages: what the event loop takes in (see :func:`segments`)."""

    topic: str
    partition: int
    offsets: Offsets
    """Increasing: a range when they are consecutive."""
    columns: Columns
    sizes: list[int]
    """Each record's key and value bytes, what flow control counts."""

    def payload(self, i: int) -> Fetched:
        """Record i's :data:`Fetched`."""
        keys, values, headers, stamps = self.columns
        return keys[i], values[i], headers[i], stamps[i]


def segments(msgs: list[Any], only_topic: str | None = None) -> list[Segment]:
    """Fetched messages as the segments of consecutive records from one partition, in order.

    Called on the consumer thread, right after ``consume()``: the messages are read while
    they are still in the CPU's cache, and only the segments cross to the event loop. Reading
    them there instead, a batch or more later, cost the sidecar about a fifth more CPU per
    record (bench/sidecar.py, 2026-11-26: 2.18 against 1.73 µs, medians of three
    1,000,000-record runs). The whole batch is read a column at a time, then cut (almost
    always it is one segment already: a fetch answers per partition).

    ``only_topic``: the one topic the consumer is subscribed to, when it is a single topic
    named outright (not a pattern); every message is from it, so no message's topic is read.

    The offsets of one partition within one batch increase: the fetch position only moves
    forward, and librdkafka drops what was fetched before a seek. So when a whole batch is
    of one partition, its first and last offsets tell whether the offsets are consecutive,
    and then no other offset is read (see :data:`~coordinator.core.model.Offsets`).
    """
    if not msgs:
        return []
    cls = type(msgs[0])
    partitions = list(map(cls.partition, msgs))
    columns = _read_columns(msgs, cls)
    n = len(msgs)
    topics = [only_topic] * n if only_topic is not None else list(map(cls.topic, msgs))
    if partitions.count(partitions[0]) == n and topics.count(topics[0]) == n:
        first, last = msgs[0].offset(), msgs[-1].offset()
        offsets: Offsets = range(first, last + 1) if last - first == n - 1 \
            else list(map(cls.offset, msgs))
        return [_segment(topics[0], partitions[0], offsets, columns)]
    every = list(map(cls.offset, msgs))
    out: list[Segment] = []
    i = 0
    for (topic, partition), run in itertools.groupby(zip(topics, partitions, strict=True)):
        j = i + sum(1 for _ in run)
        out.append(_segment(topic, partition, consecutive(every[i:j]),
                            cast(Columns, tuple(column[i:j] for column in columns))))
        i = j
    return out


def _segment(topic: str, partition: int, offsets: Offsets, columns: Columns) -> Segment:
    keys, values = columns[0], columns[1]
    sizes: list[int] | None = None
    if keys.count(None) == len(keys):  # no keys: the usual case, at C speed
        with contextlib.suppress(TypeError):  # len(None): a null value
            sizes = list(map(len, cast(list[bytes], values)))
    if sizes is None:
        sizes = [(len(value) if value else 0) + (len(key) if key else 0)
                 for key, value in zip(keys, values, strict=True)]
    return Segment(topic, partition, offsets, columns, sizes)


def contents(payload: Payload) -> Fetched:
    """A payload's (key, value, headers, timestamp_ms)."""
    return payload.record if isinstance(payload, Retried) else payload


def origin(payload: Payload, tp: TopicPartition, offset: int) -> tuple[str, int, int]:
    """(topic, partition, offset) where a record was first consumed: a retried record's
    original's; otherwise ``tp`` and ``offset``, the ledger record's own."""
    if isinstance(payload, Retried):
        return payload.topic, payload.partition, payload.offset
    return tp.topic, tp.partition, offset


def retried(record: Fetched) -> Retried | None:
    """The record a retry-topic record retries; None if its lowwater.* headers are missing or
    malformed (it was not produced by lowwater)."""
    key, value, headers, timestamp_ms = record
    own: Headers = []
    ours: dict[str, bytes | None] = {}
    for name, content in headers or ():
        if name.startswith(HEADER_PREFIX):
            ours[name] = content
        else:
            own.append((name, content))
    try:
        original_ms = ours.get(HEADER_TIMESTAMP)
        if original_ms is not None:
            timestamp_ms = int(original_ms)
        return Retried(
            (key, value, own or None, timestamp_ms),
            (ours[HEADER_TOPIC] or b"").decode(), int(ours[HEADER_PARTITION] or b""),
            int(ours[HEADER_OFFSET] or b""), int(ours[HEADER_ATTEMPTS] or b""),
            int(ours[HEADER_DUE] or b""), int(ours.get(HEADER_FIRST_SEEN) or b"0"))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
