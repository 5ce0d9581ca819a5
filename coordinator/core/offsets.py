"""Per-partition pending set and the commit point it allows."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

COMPACT_SLACK = 1024
"""Finished offsets the fetch-order queue may keep behind a pending one before it is rebuilt
(besides as many as are pending)."""


class PartitionOffsets(Generic[V]):
    """The offsets of one partition, in one assignment generation, that were
    fetched and not yet finished, each with a value (the ledger keeps its record there).

    A record is pending from the moment it is fetched until it is finished,
    whether or not a worker holds it. The commit offset is the smallest offset
    still pending or, when nothing is pending, the next offset to fetch. It is
    never derived from finished offsets by ``+ 1`` arithmetic: offsets have gaps
    (compaction, transaction markers).

    Offsets are fetched in increasing order, so they are kept in :attr:`pending` (a dict, for
    membership and the values) and in a queue in fetch order whose head is always pending:
    finished offsets leave the queue when they reach its head, and the queue is rebuilt when
    finished ones pile up behind a pending one that stays. Every operation is O(1) amortized,
    and the memory is O(pending).

    Not thread-safe: owned by whoever owns the enclosing ledger.
    """

    __slots__ = ("_next_offset", "_order", "_start", "pending")

    def __init__(self) -> None:
        self.pending: dict[int, V] = {}
        """Pending offset -> its value, in fetch order. Read it; change it only through
        :meth:`fetched` and :meth:`finished`."""
        self._order: deque[int] = deque()
        """Fetched offsets in increasing order; the head, if any, is pending."""
        self._next_offset: int | None = None
        self._start: int | None = None
        """Where the consumer was moved to (:meth:`start_at`): the commit offset until the
        first fetch."""

    def _check_forward(self, offset: int) -> None:
        if self._next_offset is not None and offset < self._next_offset:
            raise ValueError(
                f"offset {offset} fetched below the next fetch position {self._next_offset}"
            )

    def fetched(self, offset: int, value: V) -> None:
        """Records that ``offset`` was fetched; it is pending, with ``value``.

        Raises:
            ValueError: ``offset`` is below the next fetch position; within one
                generation the consumer only moves forward.
        """
        self._check_forward(offset)
        self.pending[offset] = value
        self._order.append(offset)
        self._next_offset = offset + 1

    def fetched_run(self, offsets: list[int], value: V) -> None:
        """:meth:`fetched` for each of ``offsets`` (increasing) at once, all with ``value``.

        Raises:
            ValueError: as :meth:`fetched`, or ``offsets`` cannot be increasing.
        """
        self._check_forward(offsets[0])
        if offsets[-1] < offsets[0] + len(offsets) - 1:
            raise ValueError(f"offsets {offsets[0]}..{offsets[-1]} are not increasing")
        self.pending.update(dict.fromkeys(offsets, value))
        self._order.extend(offsets)
        self._next_offset = offsets[-1] + 1

    def passed(self, offset: int) -> None:
        """Records that ``offset`` was fetched already finished (a previous owner's work): the
        fetch position moves past it, and it is never pending. Raises like :meth:`fetched`."""
        self._check_forward(offset)
        self._next_offset = offset + 1

    def start_at(self, offset: int) -> None:
        """The consumer was moved to ``offset`` before anything was fetched (an operator's
        seek): until the first fetch, the commit offset is ``offset``. Fetching may still
        start below it (an offset out of range is reset by ``auto.offset.reset``), and the
        commit offset then follows what is fetched."""
        self._start = offset

    def finished(self, offset: int) -> bool:
        """Marks ``offset`` finished; returns False when it was not pending."""
        pending = self.pending
        try:
            del pending[offset]
        except KeyError:
            return False
        self._drop_finished()
        return True

    def finished_run(self, offsets: list[int]) -> None:
        """:meth:`finished` for each of ``offsets``, every one of them pending."""
        pending = self.pending
        for offset in offsets:
            del pending[offset]
        self._drop_finished()

    def _drop_finished(self) -> None:
        """Finished offsets leave the head of the fetch-order queue, so that its head is
        pending again (the low-water mark moves); the queue is rebuilt when finished ones
        pile up behind a pending one."""
        pending, order = self.pending, self._order
        while order and order[0] not in pending:
            order.popleft()
        if len(order) > 2 * len(pending) + COMPACT_SLACK:
            self._order = deque(pending)  # the dict keeps fetch order: increasing

    def clear(self) -> None:
        """Lets go of the pending values (the partition is gone, and with it this tracker):
        the commit offset and the fetch position stay what they were, for whoever still
        looks at this generation."""
        self.pending.clear()

    @property
    def commit_offset(self) -> int | None:
        """The offset a commit may carry now; None before the first fetch (unless
        :meth:`start_at` said where fetching starts)."""
        if self._order:
            return self._order[0]
        return self._start if self._next_offset is None else self._next_offset

    @property
    def lowest_pending(self) -> int | None:
        """The smallest pending offset, or None when nothing is pending."""
        return self._order[0] if self._order else None

    @property
    def next_offset(self) -> int | None:
        """The next offset to fetch, as far as this tracker has seen."""
        return self._next_offset

    def pending_from(self, offset: int) -> Iterator[int]:
        """The pending offsets at or above ``offset``, in increasing order."""
        pending = self.pending
        return (o for o in self._order if o >= offset and o in pending)

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, offset: object) -> bool:
        return offset in self.pending
