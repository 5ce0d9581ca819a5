"""The message a handler receives: one delivery of one Kafka record."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from lowwater.errors import AlreadySettled
from lowwater.outcomes import MAX_REASON_CHARS, Outcome

if TYPE_CHECKING:
    from lowwater.v1 import coordinator_pb2 as pb

__all__ = ["Message"]


class Settler(Protocol):
    """Where a message's settlement goes: the stream that delivered it. Internal."""

    def settle(self, msg: Message, outcome: Outcome, delay: float | None, reason: str) -> bool:
        """Queues a settlement; False if it was discarded. Callable from any thread."""
        ...

    def ack(self, msg: Message) -> None:
        """``settle(msg, Outcome.ACK, None, "")``, on the worker's own event loop only: the
        handler pool's, once a handler has returned. The hot path: it runs once a message."""
        ...

    def extend(self, msg: Message, seconds: float | None) -> bool:
        """Queues a lease extension; False if it was discarded. Callable from any thread."""
        ...


def _datetime_from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class Batch:
    """The records of one DeliveryBatch (or of one Delivery), as Python lists: what the
    messages of the batch read their fields from. Internal.

    The lists are taken from the protobuf message in one call each, so a message costs a
    reference and an index rather than a copy of its fields.
    """

    __slots__ = ("attempts", "headers", "keys", "lease_deadline_ms", "offsets", "partition",
                 "timestamps_ms", "topic", "values")

    def __init__(self, topic: str, partition: int, offsets: Sequence[int], values: list[bytes],
                 keys: list[bytes | None] | None, headers: dict[int, tuple[tuple[str, bytes], ...]],
                 timestamps_ms: list[int], attempts: list[int] | None,
                 lease_deadline_ms: int) -> None:
        self.topic = topic
        self.partition = partition
        self.offsets = offsets
        """A list, or a range when the batch's offsets are consecutive."""
        self.values = values
        self.keys = keys
        """None when every key is null."""
        self.headers = headers
        """By index, only the records that have headers."""
        self.timestamps_ms = timestamps_ms
        self.attempts = attempts
        """None when every delivery is a first one (attempt 1)."""
        self.lease_deadline_ms = lease_deadline_ms

    @classmethod
    def of_batch(cls, b: pb.DeliveryBatch) -> Batch:
        keys: list[bytes | None] | None = None
        if b.keys:
            keys = list(b.keys)
            for i in b.null_keys:
                keys[i] = None
        headers = {h.index: tuple((x.key, x.value) for x in h.headers) for h in b.headers}
        values = list(b.values)
        # Empty offsets and attempts stand for consecutive offsets and first deliveries (the
        # usual case), which the sidecar does not spell out.
        offsets: Sequence[int] = list(b.offsets) or range(b.first_offset,
                                                          b.first_offset + len(values))
        return cls(b.topic, b.partition, offsets, values, keys, headers,
                   list(b.timestamps_ms), list(b.attempts) or None,
                   b.lease_deadline_ms)

    @classmethod
    def of_delivery(cls, d: pb.Delivery) -> Batch:
        headers = {0: tuple((h.key, h.value) for h in d.headers)} if d.headers else {}
        return cls(d.topic, d.partition, [d.offset], [d.value],
                   [d.key] if d.HasField("key") else None, headers, [d.timestamp_ms],
                   [d.attempt], d.lease_deadline_ms)

    def __len__(self) -> int:
        return len(self.offsets)


class Message:
    """One delivery of one record, and the handle to settle it.

    Fields are read-only views of the delivery. A message is settled exactly
    once, by its handler's result (handler mode) or by calling one of
    :meth:`ack`, :meth:`retry`, :meth:`dead_letter`, :meth:`drop` or
    :meth:`already_processed` (manual mode; allowed in handler mode too, in
    which case the handler's own result is ignored).

    The settling methods never block and may be called from any thread. They
    return True when the settlement was queued for the stream that delivered
    the message, and False when that stream is gone: the settlement is then
    discarded, because the sidecar redelivers every record of a broken stream.

    Messages are created by the SDK (or by :func:`lowwater.testing.make_message`).
    """

    __slots__ = ("_batch", "_deadline", "_i", "_id", "_received", "_settled", "_settler")

    _deadline: float
    """Local (monotonic) estimate of the lease deadline; set by the session when first needed."""

    def __init__(self, settler: Settler, batch: Batch, index: int, msg_id: int,
                 received: float) -> None:
        self._settler = settler
        self._batch = batch
        self._i = index
        """Its record's place in ``batch``."""
        self._id = msg_id
        self._received = received
        """When it arrived, ``time.monotonic()`` seconds."""
        self._settled = False

    # -- the record -------------------------------------------------------

    @property
    def msg_id(self) -> int:
        """Names this delivery; a redelivery of the same record has another msg_id."""
        return self._id

    @property
    def topic(self) -> str:
        return self._batch.topic

    @property
    def partition(self) -> int:
        return self._batch.partition

    @property
    def offset(self) -> int:
        """The record's position in its partition."""
        return self._batch.offsets[self._i]

    @property
    def key(self) -> bytes | None:
        """The record key; None for a null key."""
        keys = self._batch.keys
        return None if keys is None else keys[self._i]

    @property
    def value(self) -> bytes:
        return self._batch.values[self._i]

    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]:
        """The record headers in order, as (key, value) pairs; keys may repeat."""
        return self._batch.headers.get(self._i, ())

    @property
    def timestamp(self) -> datetime | None:
        """The record timestamp (UTC), or None when unknown or past what a datetime holds
        (a producer may set any 64-bit value; year 10000 is past it)."""
        ms = self._batch.timestamps_ms[self._i]
        if not ms:
            return None
        try:
            return _datetime_from_ms(ms)
        except (ValueError, OverflowError, OSError):
            return None

    @property
    def attempt(self) -> int:
        """1 on the first delivery, incremented on every redelivery."""
        attempts = self._batch.attempts
        return 1 if attempts is None else attempts[self._i]

    @property
    def lease_deadline(self) -> datetime:
        """When the lease ran out as delivered (UTC, sidecar clock).

        Extensions, automatic or by :meth:`extend`, move the real deadline; this
        value keeps the one the delivery carried.
        """
        return _datetime_from_ms(self._batch.lease_deadline_ms)

    @property
    def size(self) -> int:
        """Key plus value bytes: what counts against ``max_in_flight_bytes``."""
        key = self.key
        return len(self._batch.values[self._i]) + (len(key) if key else 0)

    @property
    def settled(self) -> bool:
        """Whether an outcome has been chosen for this message."""
        return self._settled

    def __repr__(self) -> str:
        return (
            f"Message(msg_id={self._id}, topic={self.topic!r}, partition={self.partition},"
            f" offset={self.offset}, attempt={self.attempt})"
        )

    # -- settling ---------------------------------------------------------

    def ack(self) -> bool:
        """Done: the record is finished.

        Raises:
            AlreadySettled: the message was settled before.
        """
        return self._settle(Outcome.ACK, None, "")

    def retry(self, delay: timedelta | None = None, reason: str = "") -> bool:
        """Deliver the record again after ``delay`` (None: the sidecar's default).

        Raises:
            AlreadySettled: the message was settled before.
            ValueError: ``delay`` is negative.
        """
        seconds = None
        if delay is not None:
            seconds = _seconds("delay", delay)
        return self._settle(Outcome.RETRY, seconds, reason)

    def dead_letter(self, reason: str) -> bool:
        """Give up now and send the record to the dead-letter topic.

        Raises:
            AlreadySettled: the message was settled before.
        """
        return self._settle(Outcome.DEAD_LETTER, None, reason)

    def drop(self, reason: str) -> bool:
        """Give up without a dead-letter topic; the record is counted and finished.

        Raises:
            AlreadySettled: the message was settled before.
        """
        return self._settle(Outcome.DROP, None, reason)

    def already_processed(self, reason: str = "") -> bool:
        """An idempotent skip: the work was done before. Counts as finished.

        Raises:
            AlreadySettled: the message was settled before.
        """
        return self._settle(Outcome.ALREADY_PROCESSED, None, reason)

    def extend(self, by: timedelta | None = None) -> bool:
        """Asks for the lease to run until now + ``by`` (capped by the sidecar).

        Workers extend leases on their own while a message is unsettled (see
        ``max_lease_extension``); call this for an explicit, longer extension.

        Args:
            by: the new lease length from now; None means the sidecar's default lease.

        Returns:
            False if the message is settled or its stream is gone.
        """
        seconds = None if by is None else _seconds("by", by)
        if self._settled:
            return False
        return self._settler.extend(self, seconds)

    def _settle(self, outcome: Outcome, delay: float | None, reason: str) -> bool:
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__}")
        if self._settled:
            raise AlreadySettled(f"{self!r} was already settled")
        self._settled = True
        return self._settler.settle(self, outcome, delay, reason[:MAX_REASON_CHARS])


def _seconds(name: str, value: timedelta) -> float:
    if not isinstance(value, timedelta):
        raise TypeError(f"{name} must be a timedelta, got {type(value).__name__}")
    if value < timedelta(0):
        raise ValueError(f"{name} must not be negative, got {value}")
    return value.total_seconds()


def from_delivery(settler: Settler, delivery: pb.Delivery, received: float) -> Message:
    """The message of one Delivery. Internal."""
    return Message(settler, Batch.of_delivery(delivery), 0, delivery.msg_id, received)
