"""The in-flight table: msg_id -> delivery, holder, deadline, attempt."""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict
from collections.abc import Iterable
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
        self._active: dict[int, Lease[R, H]] = {}
        self._blocks: dict[int, tuple[object, int, float]] = {}
        """First msg_id -> (block, its count of ids, its deadline): see :meth:`grant_block`."""
        self._block_starts: list[int] = []
        """The first msg_ids of the blocks, increasing; released ones linger until compacted."""
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
        msg_id = self._issued = self._issued + 1
        lease = Lease(msg_id, record, holder, deadline, attempt, granted)
        self._active[msg_id] = lease
        if watch:
            heapq.heappush(self._expiry, (deadline, msg_id, msg_id))
        return lease

    def grant_block(self, block: object, count: int, deadline: float) -> int:
        """Issues ``count`` consecutive msg_ids to ``block`` (the owner's object: a run of
        records leased as one) until ``deadline``; returns the first. The block's ids hold no
        :class:`Lease` each: :meth:`block` finds the block of an id, and :meth:`take_lapsed`
        reports it once its deadline passes. The caller watches the deadline, as with
        ``grant(watch=False)``."""
        first = self._issued + 1
        self._issued += count
        self._blocks[first] = (block, count, deadline)
        self._block_starts.append(first)
        return first

    def block(self, msg_id: int) -> tuple[object, int] | None:
        """(block, its first msg_id) of the unreleased block that issued ``msg_id``."""
        starts = self._block_starts
        i = bisect.bisect_right(starts, msg_id) - 1
        if i < 0:
            return None
        first = starts[i]
        found = self._blocks.get(first)
        if found is None or msg_id >= first + found[1]:
            return None
        return found[0], first

    def release_block(self, first: int, why: SettleStatus, ids: Iterable[int] = ()) -> None:
        """Releases the block issued from ``first``; later settlements of ``ids`` (its ids not
        released otherwise) are answered ``why``, the others ALREADY_SETTLED."""
        del self._blocks[first]
        if why is not SettleStatus.ALREADY_SETTLED:
            for msg_id in ids:
                self._remember_other(msg_id, why)
        starts = self._block_starts
        if len(starts) > 2 * len(self._blocks) + 64:
            self._block_starts = sorted(self._blocks)

    def watch(self, deadline: float, first_id: int, last_id: int) -> None:
        """Watches the deadline of the msg_ids ``first_id..last_id`` (inclusive) at once."""
        heapq.heappush(self._expiry, (deadline, first_id, last_id))

    def get(self, msg_id: int) -> Lease[R, H] | None:
        return self._active.get(msg_id)

    def release(self, lease: Lease[R, H], why: SettleStatus) -> None:
        """Removes ``lease``; later settlements of its msg_id are answered ``why``."""
        del self._active[lease.msg_id]
        if why is not SettleStatus.ALREADY_SETTLED:
            self._remember_other(lease.msg_id, why)

    def adopt(self, lease: Lease[R, H]) -> None:
        """Tracks ``lease``, for an id of a block (see :meth:`grant_block`) that now goes its
        own way; the block's deadline watch covers it."""
        self._active[lease.msg_id] = lease

    def _remember_other(self, msg_id: int, why: SettleStatus) -> None:
        other = self._other
        other[msg_id] = why
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

    def take_lapsed(self, now: float) -> tuple[list[Lease[R, H]], list[object]]:
        """The active leases and the blocks whose deadline is at or before ``now``, earliest
        first; their deadlines are no longer watched."""
        out: dict[int, Lease[R, H]] = {}  # an id extended to the same deadline has 2 entries
        blocks: list[object] = []
        heap, active, granted = self._expiry, self._active, self._blocks
        while heap and heap[0][0] <= now:
            deadline, first, last = heapq.heappop(heap)
            for msg_id in range(first, last + 1):
                lease = active.get(msg_id)
                if lease is not None and lease.deadline == deadline:
                    out[msg_id] = lease
                found = granted.get(msg_id)  # a block's first id may have gone its own way
                if found is not None and found[2] == deadline:
                    blocks.append(found[0])
        return list(out.values()), blocks

    def next_deadline(self) -> float | None:
        """The earliest deadline still in the heap (may belong to a released lease)."""
        heap, active, granted = self._expiry, self._active, self._blocks
        while heap:
            deadline, first, last = heap[0]
            for msg_id in range(first, last + 1):
                lease = active.get(msg_id)
                if lease is not None and lease.deadline == deadline:
                    return deadline
                found = granted.get(msg_id)
                if found is not None and found[2] == deadline:
                    return deadline
            heapq.heappop(heap)
        return None

    @property
    def issued(self) -> int:
        """The highest msg_id issued so far (0 before the first)."""
        return self._issued

    def __len__(self) -> int:
        return len(self._active)
