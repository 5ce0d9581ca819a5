"""The fake sidecar's bookkeeping: records, leases, holders. Pure: time comes in as ``now``.

Not thread-safe: the fake holds its lock around every call.
"""

from __future__ import annotations

import collections
import enum
import heapq
import itertools
from dataclasses import dataclass, field
from datetime import timedelta

from lowwater.testing._records import (
    DeliveryRecord,
    PublishedRecord,
    SettlementRecord,
    outcome_name,
)

REMEMBERED_IDS = 100_000
"""Settled, lapsed or revoked msg_ids remembered to answer ALREADY_SETTLED or STALE."""


class Status(enum.IntEnum):
    """``lowwater.v1.SettleStatus`` values."""

    OK = 1
    UNKNOWN = 2
    STALE = 3
    ALREADY_SETTLED = 4
    NOT_OWNER = 5
    INVALID = 6


_ACK, _RETRY, _DEAD_LETTER, _DROP, _ALREADY_PROCESSED = 1, 2, 3, 4, 5


class Record:
    __slots__ = ("attempt", "done", "headers", "key", "ref", "size", "timestamp_ms", "value")

    def __init__(
        self,
        ref: PublishedRecord,
        key: bytes | None,
        value: bytes,
        headers: tuple[tuple[str, bytes], ...],
        timestamp_ms: int,
    ) -> None:
        self.ref = ref
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp_ms = timestamp_ms
        self.size = len(value) + len(key or b"")
        self.attempt = 0
        self.done = False


class Lease:
    __slots__ = ("attempt", "deadline", "holder", "msg_id", "record")

    def __init__(self, msg_id: int, record: Record, holder: Holder, deadline: float) -> None:
        self.msg_id = msg_id
        self.record = record
        self.holder = holder
        self.deadline = deadline
        self.attempt = record.attempt


@dataclass(eq=False)
class Holder:
    """A stream (or the Pull caller of one worker_id) and what it holds."""

    name: str
    worker_id: str
    max_messages: int
    max_bytes: int
    pull: bool = False
    leases: dict[int, Lease] = field(default_factory=dict)
    bytes: int = 0
    open: bool = True
    draining: bool = False
    max_seen: int = 0
    max_bytes_seen: int = 0
    min_declared: int = 0

    def allows(self, size: int) -> bool:
        n = len(self.leases)
        if n >= self.max_messages:
            return False
        return self.max_bytes == 0 or n == 0 or self.bytes + size <= self.max_bytes


class Ledger:
    """Records published to the fake, and who holds which lease."""

    def __init__(
        self, *, lease: float, max_lease: float, retry_delay: float, max_attempts: int | None
    ) -> None:
        self.lease_seconds = lease
        self.max_lease_seconds = max_lease
        self.retry_delay = retry_delay
        self.max_attempts = max_attempts
        self.partitions: dict[tuple[str, int], list[Record]] = {}
        self.ready: collections.deque[Record] = collections.deque()
        self._delayed: list[tuple[float, int, Record]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self.leases: dict[int, Lease] = {}
        self._recent: collections.OrderedDict[int, Status] = collections.OrderedDict()
        self.revoking: set[tuple[str, int]] = set()
        self._parked: list[Record] = []
        self.deliveries: list[DeliveryRecord] = []
        self.settlements: list[SettlementRecord] = []
        self.rejections: list[tuple[int, str]] = []
        self.extensions: list[int] = []
        self.dead_letters: list[tuple[PublishedRecord, str]] = []
        self.lapses = 0

    # -- records ------------------------------------------------------------

    def publish(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes,
        headers: tuple[tuple[str, bytes], ...],
        timestamp_ms: int,
    ) -> PublishedRecord:
        log = self.partitions.setdefault((topic, partition), [])
        ref = PublishedRecord(topic, partition, len(log))
        record = Record(ref, key, value, headers, timestamp_ms)
        log.append(record)
        self.ready.append(record)
        return ref

    def committed(self, topic: str, partition: int) -> int:
        """The commit offset: the smallest offset not finished, or the end of the partition."""
        log = self.partitions.get((topic, partition), [])
        return next((r.ref.offset for r in log if not r.done), len(log))

    def pending(self) -> int:
        return sum(1 for log in self.partitions.values() for r in log if not r.done)

    # -- holders ------------------------------------------------------------

    def open_holder(self, holder: Holder) -> None:
        holder.min_declared = holder.max_messages

    def set_limits(self, holder: Holder, max_messages: int, max_bytes: int) -> None:
        holder.max_messages, holder.max_bytes = max_messages, max_bytes
        holder.min_declared = min(holder.min_declared, max_messages)

    def close_holder(self, holder: Holder) -> None:
        """The holder's stream ended: every lease it held is redelivered at once."""
        holder.open = False
        for lease in list(holder.leases.values()):
            self._unlease(lease, Status.ALREADY_SETTLED)
            self._again(lease.record, lease.attempt, 0.0, 0.0)

    def lease(self, holder: Holder, now: float, limit: int) -> list[Lease]:
        """Leases ready records to ``holder`` within its flow-control limits and ``limit``."""
        out: list[Lease] = []
        ready = self.ready
        while ready and len(out) < limit and holder.open and not holder.draining:
            record = ready[0]
            if record.done:
                ready.popleft()
                continue
            if (record.ref.topic, record.ref.partition) in self.revoking:
                self._parked.append(ready.popleft())
                continue
            if not holder.allows(record.size):
                break
            ready.popleft()
            record.attempt += 1
            lease = Lease(next(self._ids), record, holder, now + self.lease_seconds)
            self.leases[lease.msg_id] = lease
            holder.leases[lease.msg_id] = lease
            holder.bytes += record.size
            holder.max_seen = max(holder.max_seen, len(holder.leases))
            holder.max_bytes_seen = max(holder.max_bytes_seen, holder.bytes)
            self.deliveries.append(
                DeliveryRecord(lease.msg_id, record.ref, record.attempt, holder.name)
            )
            out.append(lease)
        return out

    # -- settlements ----------------------------------------------------------

    def settle(
        self,
        holder: Holder | None,
        msg_id: int,
        outcome: int,
        delay: float | None,
        reason: str,
        now: float,
    ) -> Status:
        """Applies one settlement; ``holder`` None means Acknowledge (Pull leases only)."""
        status = self._check(holder, msg_id)
        if status is not Status.OK:
            self.rejections.append((msg_id, status.name))
            return status
        if outcome not in (_ACK, _RETRY, _DEAD_LETTER, _DROP, _ALREADY_PROCESSED):
            self.rejections.append((msg_id, Status.INVALID.name))
            return Status.INVALID
        lease = self.leases[msg_id]
        record = lease.record
        self._unlease(lease, Status.ALREADY_SETTLED)
        self.settlements.append(
            SettlementRecord(
                msg_id=msg_id,
                record=record.ref,
                attempt=lease.attempt,
                outcome=outcome_name(outcome),
                retry_delay=None if delay is None else timedelta(seconds=delay),
                reason=reason,
                stream_id=lease.holder.name,
            )
        )
        if outcome == _RETRY:
            wait = self.retry_delay if delay is None else max(0.0, delay)
            self._again(record, lease.attempt, wait, now)
        elif outcome == _DEAD_LETTER:
            self._dead_letter(record, reason or "dead-lettered by the worker")
        else:
            record.done = True
        return Status.OK

    def extend(self, holder: Holder, msg_id: int, extension: float | None, now: float) -> Status:
        status = self._check(holder, msg_id)
        if status is Status.OK:
            span = (
                self.lease_seconds
                if extension is None
                else min(max(extension, 0.0), self.max_lease_seconds)
            )
            self.leases[msg_id].deadline = now + span
            self.extensions.append(msg_id)
        return status

    def _check(self, holder: Holder | None, msg_id: int) -> Status:
        lease = self.leases.get(msg_id)
        if lease is None:
            return self._recent.get(msg_id, Status.UNKNOWN)
        if holder is None:
            return Status.OK if lease.holder.pull else Status.NOT_OWNER
        return Status.OK if lease.holder is holder else Status.NOT_OWNER

    # -- time -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Redelivers due retries and lapsed leases."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, record = heapq.heappop(delayed)
            if not record.done:
                self.ready.append(record)
        for lease in [lease for lease in self.leases.values() if lease.deadline <= now]:
            self.lapses += 1
            self._unlease(lease, Status.ALREADY_SETTLED)
            self._again(lease.record, lease.attempt, 0.0, now)

    def next_wakeup(self) -> float | None:
        times = [lease.deadline for lease in self.leases.values()]
        if self._delayed:
            times.append(self._delayed[0][0])
        return min(times) if times else None

    # -- rebalance --------------------------------------------------------------

    def begin_revoke(self, topic: str, partition: int) -> dict[str, list[int]]:
        """Stops delivering from the partition; returns its msg_ids per holder name."""
        self.revoking.add((topic, partition))
        out: dict[str, list[int]] = {}
        for lease in self.leases.values():
            ref = lease.record.ref
            if (ref.topic, ref.partition) == (topic, partition):
                out.setdefault(lease.holder.name, []).append(lease.msg_id)
        return out

    def in_flight(self, topic: str, partition: int) -> int:
        """Leases outstanding on the partition."""
        return sum(1 for lease in self.leases.values() if _tp(lease.record) == (topic, partition))

    def end_revoke(self, topic: str, partition: int) -> None:
        """Ends the generation: late settlements are STALE; the partition is reassigned at once.

        Unfinished records start over (attempt 1), as when the next owner
        fetches them again from the committed offset.
        """
        tp = (topic, partition)
        self.revoking.discard(tp)
        for lease in [lease for lease in self.leases.values() if _tp(lease.record) == tp]:
            self._unlease(lease, Status.STALE)
        again = [r for r in self.partitions.get(tp, []) if not r.done]
        for record in again:
            record.attempt = 0
        ids = {id(r) for r in again}
        self.ready = collections.deque(r for r in self.ready if id(r) not in ids)
        self._parked = [r for r in self._parked if id(r) not in ids]
        self.ready.extendleft(reversed(again))

    # -- internals ----------------------------------------------------------------

    def _unlease(self, lease: Lease, why: Status) -> None:
        del self.leases[lease.msg_id]
        holder = lease.holder
        del holder.leases[lease.msg_id]
        holder.bytes -= lease.record.size
        recent = self._recent
        recent[lease.msg_id] = why
        if len(recent) > REMEMBERED_IDS:
            recent.popitem(last=False)

    def _again(self, record: Record, attempt: int, delay: float, now: float) -> None:
        if self.max_attempts is not None and attempt >= self.max_attempts:
            self._dead_letter(record, f"{attempt} of {self.max_attempts} attempts used")
        elif delay > 0:
            heapq.heappush(self._delayed, (now + delay, next(self._seq), record))
        else:
            self.ready.appendleft(record)

    def _dead_letter(self, record: Record, reason: str) -> None:
        record.done = True
        self.dead_letters.append((record.ref, reason))


def _tp(record: Record) -> tuple[str, int]:
    return (record.ref.topic, record.ref.partition)
