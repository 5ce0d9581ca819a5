"""Per-partition pending set and the commit point it allows."""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from operator import itemgetter
from typing import Any, Generic, TypeVar

from sortedcontainers import SortedDict

from coordinator.core.model import Offsets

V = TypeVar("V")

COMPACT_SLACK = 1024
"""Finished offsets the queues of single offsets may keep besides as many as are pending,
before they are rebuilt."""


class _Block(Generic[V]):
    """Offsets fetched in a row that share one value: the members of a run."""

    __slots__ = ("alive", "head", "offsets", "open", "value")

    def __init__(self, offsets: Offsets, value: V) -> None:
        self.offsets = offsets
        """Increasing; never changed in place (a range when they are consecutive)."""
        self.value = value
        self.open = len(offsets)
        """Members still pending here."""
        self.alive: bytearray | None = None
        """Per member, 1 while it is pending here; None while every member is."""
        self.head = 0
        """No member before this index is pending here."""

    def index(self, offset: int) -> int | None:
        """The index of the member at ``offset`` if it is pending here."""
        offsets = self.offsets
        i = bisect.bisect_left(offsets, offset)
        if i == len(offsets) or offsets[i] != offset or (self.alive is not None
                                                         and not self.alive[i]):
            return None
        return i

    def leave(self, i: int) -> None:
        """Member ``i`` (pending here) is not any more."""
        alive = self.alive
        if alive is None:
            alive = self.alive = bytearray(b"\x01") * len(self.offsets)
        alive[i] = 0
        self.open -= 1
        if i == self.head:
            self.head = alive.find(1, i)  # -1 once none is left: the block is dropped then

    def leave_slice(self, i: int, j: int) -> None:
        """Members ``i`` to ``j - 1`` (each pending here) are not any more: :meth:`leave` of
        each, at once. KeyError (and nothing changes) if one of them is not pending here."""
        alive = self.alive
        if alive is None:
            alive = self.alive = bytearray(b"\x01") * len(self.offsets)
        elif alive.find(0, i, j) != -1:
            raise KeyError(self.offsets[alive.find(0, i, j)])
        alive[i:j] = bytes(j - i)
        self.open -= j - i
        if i <= self.head < j:
            self.head = alive.find(1, j)  # -1 once none is left: the block is dropped then

    def members(self) -> Iterator[int]:
        """The offsets pending here, in increasing order."""
        if self.alive is None:
            return iter(self.offsets)
        return itertools.compress(self.offsets, self.alive)


class PartitionOffsets(Generic[V]):
    """The offsets of one partition, in one assignment generation, that were
    fetched and not yet finished, each with a value (the ledger keeps its record there).

    A record is pending from the moment it is fetched until it is finished,
    whether or not a worker holds it. The commit offset is the smallest offset
    still pending or, when nothing is pending, the next offset to fetch. It is
    never derived from finished offsets by ``+ 1`` arithmetic: offsets have gaps
    (compaction, transaction markers).

    Offsets are pending either on their own (:meth:`fetched`) or as members of a run
    (:meth:`fetched_run`): offsets fetched in a row that share one value, kept as one entry so
    that taking a run in and finishing it whole cost the same whatever its length. A run is
    named by its value, which must be an object of its own (the ledger's ``Run``); its members
    can also be finished one by one, set apart as offsets on their own, or split off into a
    run of their own.

    Single offsets are kept in a dict, with their offsets in a queue in fetch order (or in a
    heap, for a run member set apart below the queue's tail): a finished one leaves when it
    reaches the head, and both are rebuilt when finished ones pile up behind a pending one
    that stays. Runs are kept in a ``SortedDict`` by first offset. Reading it as a mapping
    (``len``, ``in``, ``[offset]``, :meth:`get`, :meth:`items`, ...) sees every pending offset,
    run members included, in increasing order. Memory is O(pending).

    Not thread-safe: owned by whoever owns the enclosing ledger.
    """

    __slots__ = ("_blocks", "_cleared", "_count", "_heap", "_next_offset", "_of_value",
                 "_order", "_singles", "_start")

    def __init__(self) -> None:
        self._singles: dict[int, V] = {}
        """Offsets pending on their own, with their values."""
        self._order: deque[int] = deque()
        """Offsets of ``_singles``, increasing: those fetched, and those set apart above its
        tail. Finished ones may stay in it, but never at its head."""
        self._heap: list[int] = []
        """The other offsets of ``_singles`` (set apart below the tail of ``_order``), a
        min-heap; finished ones may stay in it, but never at its head."""
        self._blocks: Any = SortedDict()
        """First offset -> the _Block of a run with a member pending."""
        self._of_value: dict[int, _Block[V]] = {}
        """id(run value) -> its _Block."""
        self._count = 0
        self._next_offset: int | None = None
        self._start: int | None = None
        """Where the consumer was moved to (:meth:`start_at`): the commit offset until the
        first fetch."""
        self._cleared: int | None = None
        """The lowest pending offset when :meth:`clear` let the values go."""

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
        self._singles[offset] = value
        self._order.append(offset)
        self._count += 1
        self._next_offset = offset + 1

    def fetched_run(self, offsets: Offsets, value: V) -> None:
        """Records that ``offsets`` (increasing, not empty) were fetched in a row: they are
        pending as the members of one run, named by ``value``.

        Raises:
            ValueError: as :meth:`fetched`, or ``offsets`` cannot be increasing, or ``value``
                names a run already.
        """
        self._check_forward(offsets[0])
        if offsets[-1] < offsets[0] + len(offsets) - 1:
            raise ValueError(f"offsets {offsets[0]}..{offsets[-1]} are not increasing")
        if id(value) in self._of_value:
            raise ValueError("a run's value must name it alone")
        self._add_block(_Block(offsets, value))
        self._count += len(offsets)
        self._next_offset = offsets[-1] + 1

    def _add_block(self, block: _Block[V]) -> None:
        self._blocks[block.offsets[0]] = block
        self._of_value[id(block.value)] = block

    def _drop_block(self, block: _Block[V]) -> None:
        del self._blocks[block.offsets[0]]
        del self._of_value[id(block.value)]

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
        """Marks ``offset`` finished, on its own or a run's member; returns False when it was
        not pending."""
        if offset in self._singles:
            self._finish_single(offset)
            return True
        block = self._block_at(offset)
        i = None if block is None else block.index(offset)
        if block is None or i is None:
            return False
        self._leave(block, i)
        self._count -= 1
        return True

    def finished_member(self, run: V, offset: int) -> None:
        """Marks the member of ``run`` at ``offset`` (pending) finished: :meth:`finished`
        without looking for its run."""
        self._take_member(run, offset)
        self._count -= 1

    def finished_members(self, run: V, offset: int, count: int) -> None:
        """Marks ``count`` members of ``run`` in a row, from the one at ``offset`` on, finished
        at once: :meth:`finished_member` of each (KeyError, and nothing changes, if one of
        them is not pending in it)."""
        block = self._of_value[id(run)]
        i = block.index(offset)
        if i is None or i + count > len(block.offsets):
            raise KeyError(offset)
        block.leave_slice(i, i + count)
        self._count -= count
        if not block.open:
            self._drop_block(block)

    def finished_run(self, run: V) -> None:
        """Marks every member of ``run`` still pending finished, at once."""
        block = self._of_value[id(run)]
        self._drop_block(block)
        self._count -= block.open

    def set_apart(self, run: V, offset: int, value: V) -> None:
        """The member of ``run`` at ``offset`` (pending) stays pending on its own, with
        ``value``, as if it had been fetched alone."""
        self._take_member(run, offset)
        self._singles[offset] = value
        if not self._order or offset > self._order[-1]:
            self._order.append(offset)
        else:
            heapq.heappush(self._heap, offset)

    def split_run(self, run: V, k: int, head: V) -> None:
        """The first ``k`` members of ``run`` (every member pending) become a run of their
        own, named by ``head``."""
        block = self._of_value[id(run)]
        if block.alive is not None or not 0 < k < len(block.offsets):
            raise ValueError("only a whole run can be split, into two non-empty runs")
        if id(head) in self._of_value:
            raise ValueError("a run's value must name it alone")
        self._drop_block(block)
        offsets = block.offsets
        front = _Block(offsets[:k], head)
        block.offsets = offsets[k:]
        block.open = len(block.offsets)
        self._add_block(front)
        self._add_block(block)

    def _take_member(self, run: V, offset: int) -> None:
        """The member of ``run`` at ``offset`` leaves the run (KeyError if it is not pending
        in it)."""
        block = self._of_value[id(run)]
        i = block.index(offset)
        if i is None:
            raise KeyError(offset)
        self._leave(block, i)

    def _leave(self, block: _Block[V], i: int) -> None:
        block.leave(i)
        if not block.open:
            self._drop_block(block)

    def _finish_single(self, offset: int) -> None:
        singles, order, heap = self._singles, self._order, self._heap
        del singles[offset]
        self._count -= 1
        while order and order[0] not in singles:
            order.popleft()
        while heap and heap[0] not in singles:
            heapq.heappop(heap)
        if len(order) + len(heap) > 2 * len(singles) + COMPACT_SLACK:
            self._order, self._heap = deque(sorted(singles)), []

    def _block_at(self, offset: int) -> _Block[V] | None:
        """The block whose offsets span ``offset``, if any."""
        at = self._blocks.bisect_right(offset) - 1
        if at < 0:
            return None
        block: _Block[V] = self._blocks.peekitem(at)[1]
        return block

    def clear(self) -> None:
        """Lets go of the pending values (the partition is gone, and with it this tracker):
        the commit offset and the fetch position stay what they were, for whoever still
        looks at this generation."""
        self._cleared = self.lowest_pending
        self._singles.clear()
        self._order.clear()
        self._heap.clear()
        self._blocks.clear()
        self._of_value.clear()
        self._count = 0

    @property
    def commit_offset(self) -> int | None:
        """The offset a commit may carry now; None before the first fetch (unless
        :meth:`start_at` said where fetching starts)."""
        lowest = self.lowest_pending
        if lowest is not None:
            return lowest
        return self._start if self._next_offset is None else self._next_offset

    @property
    def lowest_pending(self) -> int | None:
        """The smallest pending offset, or None when nothing is pending."""
        lowest = self._order[0] if self._order else self._cleared
        if self._heap and (lowest is None or self._heap[0] < lowest):
            lowest = self._heap[0]
        if self._blocks:
            block: _Block[V] = self._blocks.peekitem(0)[1]
            first = block.offsets[block.head]
            if lowest is None or first < lowest:
                return first
        return lowest

    @property
    def next_offset(self) -> int | None:
        """The next offset to fetch, as far as this tracker has seen."""
        return self._next_offset

    def items(self) -> Iterator[tuple[int, V]]:
        """(offset, value) of every pending offset, in increasing order."""
        in_runs = ((offset, block.value) for block in self._blocks.values()
                   for offset in block.members())
        if not self._singles:
            return in_runs
        return heapq.merge(sorted(self._singles.items(), key=itemgetter(0)), in_runs,
                           key=itemgetter(0))

    def values(self) -> Iterator[V]:
        """The value of every pending offset (a run's once per member), in offset order."""
        return map(itemgetter(1), self.items())

    def __iter__(self) -> Iterator[int]:
        return map(itemgetter(0), self.items())

    def pending_from(self, offset: int) -> Iterator[int]:
        """The pending offsets at or above ``offset``, in increasing order."""
        return (o for o in self if o >= offset)

    def get(self, offset: int, default: V | None = None) -> V | None:
        """The value pending at ``offset``, or ``default``."""
        try:
            return self[offset]
        except KeyError:
            return default

    def __getitem__(self, offset: int) -> V:
        try:
            return self._singles[offset]
        except KeyError:
            pass
        block = self._block_at(offset)
        if block is None or block.index(offset) is None:
            raise KeyError(offset)
        return block.value

    def __len__(self) -> int:
        return self._count

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        if offset in self._singles:
            return True
        block = self._block_at(offset)
        return block is not None and block.index(offset) is not None
