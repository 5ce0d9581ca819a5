"""Per-partition pending set and the commit point it allows."""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedList


class PartitionOffsets:
    """The offsets of one partition, in one assignment generation, that were
    fetched and not yet finished.

    A record is pending from the moment it is fetched until it is finished,
    whether or not a worker holds it. The commit offset is the smallest offset
    still pending or, when nothing is pending, the next offset to fetch. It is
    never derived from finished offsets by ``+ 1`` arithmetic: offsets have gaps
    (compaction, transaction markers).

    Not thread-safe: owned by whoever owns the enclosing ledger.
    """

    __slots__ = ("_next_offset", "_pending")

    def __init__(self) -> None:
        self._pending: SortedList = SortedList()
        self._next_offset: int | None = None

    def fetched(self, offset: int) -> None:
        """Records that ``offset`` was fetched.

        Raises:
            ValueError: ``offset`` is below the next fetch position; within one
                generation the consumer only moves forward.
        """
        if self._next_offset is not None and offset < self._next_offset:
            raise ValueError(
                f"offset {offset} fetched below the next fetch position {self._next_offset}"
            )
        self._pending.add(offset)
        self._next_offset = offset + 1

    def finished(self, offset: int) -> bool:
        """Marks ``offset`` finished; returns False when it was not pending."""
        try:
            self._pending.remove(offset)
        except ValueError:
            return False
        return True

    @property
    def commit_offset(self) -> int | None:
        """The offset a commit may carry now; None before the first fetch."""
        if self._pending:
            return int(self._pending[0])
        return self._next_offset

    @property
    def lowest_pending(self) -> int | None:
        """The smallest pending offset, or None when nothing is pending."""
        return int(self._pending[0]) if self._pending else None

    @property
    def next_offset(self) -> int | None:
        """The next offset to fetch, as far as this tracker has seen."""
        return self._next_offset

    def pending_from(self, offset: int) -> Iterator[int]:
        """The pending offsets at or above ``offset``, in increasing order."""
        return (int(o) for o in self._pending.irange(offset))

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, offset: object) -> bool:
        return offset in self._pending
