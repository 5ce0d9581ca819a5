"""The in-flight table: msg_id -> delivery, holder, deadline, attempt."""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from typing import Generic, TypeVar

from coordinator.core.model import SettleStatus

RECENT_IDS_REMEMBERED = 100_000
"""How many of the latest msg_ids issued are remembered once they left the table, to answer a
late settlement ALREADY_SETTLED or STALE rather than UNKNOWN."""

R = TypeVar("R")
H = TypeVar("H")


class Lease(Generic[R, H]):
    """One delivery of one record to one holder (a worker stream or a Pull caller)."""

    __slots__ = ("attempt", "deadline", "granted", "holder", "msg_id", "record")

    def __init__(self, msg_id: int, record: R, holder: H, deadline: float, attempt: int,
                 granted: float = 0.0) -> None:
        self.msg_id = msg_id
        self.record = record
        self.holder = holder
        self.deadline = deadline
        self.attempt = attempt
        self.granted = granted
        """When the delivery started, on the owner's clock."""

    def __repr__(self) -> str:
        return f"Lease(msg_id={self.msg_id}, attempt={self.attempt}, deadline={self.deadline:.3f})"


class LeaseTable(Generic[R, H]):
    """Issues msg_ids and tracks every lease until it is settled, lapses or is revoked.

    msg_ids start at 1, increase and are never reused within one table (one
    sidecar process has one table). Ids that left the table are remembered,
    boundedly, with the reason they left, so that a late settlement gets a
    precise answer: the latest ``remember`` ids issued count as ALREADY_SETTLED
    once they left, unless they left for another reason (kept, boundedly, in a
    small table of their own). Settling, the common way out, thus writes
    nothing.

    Not thread-safe: owned by the ledger's owner.
    """

    def __init__(self, *, remember: int = RECENT_IDS_REMEMBERED) -> None:
        if remember < 0:
            raise ValueError("remember must not be negative")
        self._ids = itertools.count(1)
        self._active: dict[int, Lease[R, H]] = {}
        self._expiry: list[tuple[float, int, int]] = []
        """(deadline, first msg_id, last msg_id): one entry per batch of leases."""
        self._other: OrderedDict[int, SettleStatus] = OrderedDict()
        """Ids that left for a reason other than ALREADY_SETTLED, oldest first."""
        self._remember = remember
        self._issued = 0

    def grant(
        self, record: R, holder: H, deadline: float, attempt: int, *, watch: bool = True,
        granted: float = 0.0,
    ) -> Lease[R, H]:
        """Issues a msg_id and leases ``record`` to ``holder`` until ``deadline``.

        With ``watch=False`` the caller promises to :meth:`watch` the id's
        deadline itself, typically once for a whole batch.
        """
        msg_id = next(self._ids)
        self._issued = msg_id
        lease = Lease(msg_id, record, holder, deadline, attempt, granted)
        self._active[msg_id] = lease
        if watch:
            heapq.heappush(self._expiry, (deadline, msg_id, msg_id))
        return lease

    def watch(self, deadline: float, first_id: int, last_id: int) -> None:
        """Watches the deadline of the msg_ids ``first_id..last_id`` (inclusive) at once."""
        heapq.heappush(self._expiry, (deadline, first_id, last_id))

    def get(self, msg_id: int) -> Lease[R, H] | None:
        return self._active.get(msg_id)

    def release(self, lease: Lease[R, H], why: SettleStatus) -> None:
        """Removes ``lease``; later settlements of its msg_id are answered ``why``."""
        del self._active[lease.msg_id]
        if why is not SettleStatus.ALREADY_SETTLED:
            other = self._other
            other[lease.msg_id] = why
            if len(other) > self._remember:
                other.popitem(last=False)

    def extend(self, lease: Lease[R, H], deadline: float) -> None:
        lease.deadline = deadline
        heapq.heappush(self._expiry, (deadline, lease.msg_id, lease.msg_id))

    def recall(self, msg_id: int) -> SettleStatus:
        """The answer for a msg_id that holds no lease."""
        if not max(0, self._issued - self._remember) < msg_id <= self._issued:
            return SettleStatus.UNKNOWN
        return self._other.get(msg_id, SettleStatus.ALREADY_SETTLED)

    def lapsed(self, now: float) -> list[Lease[R, H]]:
        """The active leases whose deadline is at or before ``now``, earliest first."""
        out: dict[int, Lease[R, H]] = {}  # an id extended to the same deadline has 2 entries
        heap, active = self._expiry, self._active
        while heap and heap[0][0] <= now:
            deadline, first, last = heapq.heappop(heap)
            for msg_id in range(first, last + 1):
                lease = active.get(msg_id)
                if lease is not None and lease.deadline == deadline:
                    out[msg_id] = lease
        return list(out.values())

    def next_deadline(self) -> float | None:
        """The earliest deadline still in the heap (may belong to a released lease)."""
        heap, active = self._expiry, self._active
        while heap:
            deadline, first, last = heap[0]
            for msg_id in range(first, last + 1):
                lease = active.get(msg_id)
                if lease is not None and lease.deadline == deadline:
                    return deadline
            heapq.heappop(heap)
        return None

    @property
    def issued(self) -> int:
        """The highest msg_id issued so far (0 before the first)."""
        return self._issued

    def __len__(self) -> int:
        return len(self._active)
