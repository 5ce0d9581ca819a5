"""PartitionOffsets: the pending set of one partition and the commit point it allows."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from coordinator.core.model import consecutive
from coordinator.core.offsets import COMPACT_SLACK, PartitionOffsets

EXAMPLES = 3000 if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else 100


def fetched(*offsets: int) -> PartitionOffsets[None]:
    po = PartitionOffsets[None]()
    for offset in offsets:
        po.fetched(offset, None)
    return po


def test_a_seek_sets_the_commit_point_until_the_first_fetch_moves_it() -> None:
    po = PartitionOffsets[None]()
    po.start_at(50)
    assert po.commit_offset == 50 and po.next_offset is None
    po.fetched(10, None)  # out of range: auto.offset.reset moved the consumer to the start
    assert po.commit_offset == 10
    po.finished(10)
    assert po.commit_offset == 11


def test_nothing_fetched_has_no_commit_point() -> None:
    po = PartitionOffsets[None]()
    assert po.commit_offset is None
    assert po.lowest_pending is None
    assert po.next_offset is None
    assert len(po) == 0


def test_commit_is_the_lowest_pending_offset_not_acked_plus_one() -> None:
    po = fetched(0, 1, 5, 9)
    assert po.commit_offset == 0
    assert po.finished(0) and po.finished(1)
    assert po.commit_offset == 5  # not 2: offsets 2-4 do not exist
    assert po.lowest_pending == 5
    assert po.finished(5) and po.finished(9)
    assert po.commit_offset == 10  # nothing pending: the next fetch position
    assert po.lowest_pending is None
    assert len(po) == 0


def test_commit_after_everything_finished_is_the_next_fetch_position() -> None:
    po = fetched(3, 7)
    po.finished(7)
    assert po.commit_offset == 3
    po.finished(3)
    assert po.commit_offset == po.next_offset == 8


def test_finishing_out_of_order_holds_the_commit_at_the_gap() -> None:
    po = fetched(10, 11, 12, 20)
    for offset in (20, 12, 11):
        po.finished(offset)
        assert po.commit_offset == 10
    po.finished(10)
    assert po.commit_offset == 21


def test_first_fetch_may_start_anywhere() -> None:
    po = fetched(1_000_000)
    assert po.commit_offset == 1_000_000
    assert po.next_offset == 1_000_001


def test_finishing_twice_or_unknown_returns_false() -> None:
    po = fetched(0, 4)
    assert po.finished(4) is True
    assert po.finished(4) is False
    assert po.finished(2) is False  # a gap was never fetched
    assert po.finished(99) is False
    assert po.commit_offset == 0
    assert 0 in po and 4 not in po


@pytest.mark.parametrize("offset", [0, 4, 5])
def test_fetching_below_the_next_position_raises(offset: int) -> None:
    po = fetched(0, 5)
    with pytest.raises(ValueError, match="below the next fetch position 6"):
        po.fetched(offset, None)
    assert po.next_offset == 6 and len(po) == 2  # unchanged


def test_fetching_after_everything_finished_still_only_moves_forward() -> None:
    po = fetched(0, 1)
    po.finished(0)
    po.finished(1)
    with pytest.raises(ValueError):
        po.fetched(1, None)
    po.fetched(2, None)
    assert po.commit_offset == 2


@st.composite
def fetch_and_finish(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    start = draw(st.integers(0, 10**12))
    steps = draw(st.lists(st.integers(1, 5), min_size=1, max_size=60))
    offsets = [start]
    for step in steps[1:]:
        offsets.append(offsets[-1] + step)
    subset = draw(st.lists(st.sampled_from(offsets), unique=True))
    return offsets, draw(st.permutations(subset))


@settings(max_examples=EXAMPLES, deadline=None)
@given(fetch_and_finish())
def test_commit_is_min_unfinished_or_next_position(case: tuple[list[int], list[int]]) -> None:
    offsets, order = case
    po = fetched(*offsets)
    unfinished = set(offsets)
    next_position = offsets[-1] + 1
    for offset in order:
        assert po.finished(offset) is True
        unfinished.discard(offset)
        expected = min(unfinished) if unfinished else next_position
        assert po.commit_offset == expected
        assert po.finished(offset) is False
        assert po.commit_offset == expected
        assert len(po) == len(unfinished)
    assert po.next_offset == next_position
    for below in {offsets[0], offsets[-1], next_position - 1}:
        with pytest.raises(ValueError):
            po.fetched(below, None)


OPS = st.lists(st.tuples(st.booleans(), st.integers(0, 4), st.integers(0, 2**16)), max_size=80)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.integers(0, 1000), OPS)
def test_interleaved_fetch_and_finish_never_commits_past_a_pending_offset(
    position: int, ops: list[tuple[bool, int, int]]
) -> None:
    po = PartitionOffsets[None]()
    pending: list[int] = []
    last_commit: int | None = None
    for finish, gap, pick in ops:
        if finish and pending:
            offset = pending.pop(pick % len(pending))
            assert po.finished(offset)
        else:
            position += gap
            po.fetched(position, None)
            pending.append(position)
            position += 1
        commit = po.commit_offset
        assert commit == (min(pending) if pending else position)
        assert list(po.pending_from(pick)) == sorted(o for o in pending if o >= pick)
        assert last_commit is None or commit >= last_commit  # monotonic in one generation
        last_commit = commit


def test_finished_offsets_behind_a_stuck_one_do_not_pile_up() -> None:
    """A record that stays pending (a long retry) while 100,000 later ones finish: the memory
    stays proportional to what is pending, not to what was fetched."""
    po = PartitionOffsets[None]()
    for offset in range(100_001):
        po.fetched(offset, None)
        if offset:
            assert po.finished(offset)
        assert len(po._order) + len(po._heap) <= 2 * len(po) + COMPACT_SLACK + 1
    assert po.commit_offset == 0 and len(po) == 1
    assert list(po.pending_from(0)) == [0]
    assert po.finished(0) and po.commit_offset == 100_001


def test_passed_offsets_move_the_position_without_becoming_pending() -> None:
    po = fetched(3)
    po.passed(4)
    po.passed(9)
    assert 4 not in po and po.next_offset == 10 and po.commit_offset == 3
    assert po.finished(3) and po.commit_offset == 10
    with pytest.raises(ValueError):
        po.passed(9)
    po.fetched(12, None)
    po.clear()
    assert len(po) == 0 and po.commit_offset == 12  # as it was


class Value:
    """A run's or a record's value: named by identity, like the ledger's."""


class RunsAndSingles(RuleBasedStateMachine):
    """Singles and runs fetched, finished one by one or whole, set apart and split, against a
    model of the pending offsets and their values."""

    def __init__(self) -> None:
        super().__init__()
        self.po = PartitionOffsets[Value]()
        self.pending: dict[int, Value] = {}
        self.runs: dict[int, tuple[Value, list[int], bool]] = {}
        """id(value) -> (value, its members still pending in it, whether one ever left)."""
        self.offsets_of: dict[int, list[int]] = {}
        """id(value) -> every member a run was fetched (or split off) with."""
        self.position = 0

    def _members(self) -> list[tuple[Value, int]]:
        return [(value, o) for value, members, _ in self.runs.values() for o in members]

    def _leave(self, run: Value, offset: int) -> None:
        value, members, _ = self.runs[id(run)]
        members.remove(offset)
        self.runs[id(run)] = (value, members, True)
        if not members:
            del self.runs[id(run)]

    @rule(gap=st.integers(0, 3))
    def fetch_single(self, gap: int) -> None:
        offset, value = self.position + gap, Value()
        self.po.fetched(offset, value)
        self.pending[offset] = value
        self.position = offset + 1

    @rule(gaps=st.lists(st.integers(0, 2), min_size=1, max_size=8))
    def fetch_run(self, gaps: list[int]) -> None:
        offsets, value = [], Value()
        for gap in gaps:
            offsets.append(self.position + gap)
            self.position = offsets[-1] + 1
        self.po.fetched_run(consecutive(offsets), value)  # a range when consecutive
        self.pending.update(dict.fromkeys(offsets, value))
        self.runs[id(value)] = (value, list(offsets), False)
        self.offsets_of[id(value)] = offsets

    @rule(pick=st.integers(0, 10**6))
    def finish_any(self, pick: int) -> None:
        if not self.pending:
            return
        offset = sorted(self.pending)[pick % len(self.pending)]
        value = self.pending.pop(offset)
        if id(value) in self.runs and offset in self.runs[id(value)][1]:
            self._leave(value, offset)
        assert self.po.finished(offset) is True
        assert self.po.finished(offset) is False

    @rule(pick=st.integers(0, 10**6))
    def finish_member(self, pick: int) -> None:
        members = self._members()
        if members:
            run, offset = members[pick % len(members)]
            self.po.finished_member(run, offset)
            del self.pending[offset]
            self._leave(run, offset)

    @rule(pick=st.integers(0, 10**6), start=st.integers(0, 10**6), length=st.integers(1, 8))
    def finish_members(self, pick: int, start: int, length: int) -> None:
        """Members in a row, all pending, finish at once; if one is not, nothing changes."""
        if not self.runs:
            return
        run, members, _ = list(self.runs.values())[pick % len(self.runs)]
        every = self.offsets_of[id(run)]
        starts = [k for k, offset in enumerate(every) if offset in members]
        i = starts[start % len(starts)]  # from a pending member: the head is often one
        chunk = every[i:i + length]
        if not set(chunk) <= set(members):
            with pytest.raises(KeyError):
                self.po.finished_members(run, chunk[0], len(chunk))
            return
        self.po.finished_members(run, chunk[0], len(chunk))
        for offset in chunk:
            del self.pending[offset]
            self._leave(run, offset)

    @rule(pick=st.integers(0, 10**6))
    def finish_run(self, pick: int) -> None:
        if self.runs:
            run, members, _ = list(self.runs.values())[pick % len(self.runs)]
            self.po.finished_run(run)
            for offset in members:
                del self.pending[offset]
            del self.runs[id(run)]

    @rule(pick=st.integers(0, 10**6))
    def set_apart(self, pick: int) -> None:
        members = self._members()
        if members:
            run, offset = members[pick % len(members)]
            alone = Value()
            self.po.set_apart(run, offset, alone)
            self.pending[offset] = alone
            self._leave(run, offset)

    @rule(pick=st.integers(0, 10**6), cut=st.integers(1, 7))
    def split(self, pick: int, cut: int) -> None:
        whole = [r for r in self.runs.values() if not r[2] and len(r[1]) > 1]
        if whole:
            run, members, _ = whole[pick % len(whole)]
            k = 1 + cut % (len(members) - 1)
            head = Value()
            self.po.split_run(run, k, head)
            self.pending.update(dict.fromkeys(members[:k], head))
            self.runs[id(head)] = (head, members[:k], False)
            self.runs[id(run)] = (run, members[k:], False)
            self.offsets_of[id(head)], self.offsets_of[id(run)] = members[:k], members[k:]

    @invariant()
    def it_reads_as_the_pending_offsets_in_order(self) -> None:
        po, pending = self.po, self.pending
        assert len(po) == len(pending)
        assert [(o, id(v)) for o, v in po.items()] == [
            (o, id(pending[o])) for o in sorted(pending)]
        assert list(po) == sorted(pending)
        assert po.commit_offset == (min(pending) if pending else
                                    (self.position if po.next_offset is not None else None))
        for offset in range(max(0, self.position - 12), self.position + 1):
            assert (offset in po) == (offset in pending)
            assert po.get(offset) is pending.get(offset)


RunsAndSingles.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=40,
                                            deadline=None)
test_runs_and_singles = RunsAndSingles.TestCase


def test_members_in_a_row_finish_at_once_and_move_the_commit_past_them() -> None:
    po, run = PartitionOffsets[Value](), Value()
    po.fetched_run(range(10, 15), run)
    po.finished_members(run, 10, 2)
    assert (po.commit_offset, list(po)) == (12, [12, 13, 14])
    po.finished_members(run, 13, 2)
    assert (po.commit_offset, list(po)) == (12, [12])
    with pytest.raises(KeyError):  # 13 is not pending: nothing changes
        po.finished_members(run, 12, 2)
    assert (po.commit_offset, list(po), len(po)) == (12, [12], 1)
    po.finished_members(run, 12, 1)
    assert (po.commit_offset, list(po), len(po)) == (15, [], 0)


def test_a_run_is_named_by_a_value_of_its_own_and_splits_only_whole() -> None:
    po, run = PartitionOffsets[Value](), Value()
    po.fetched_run([0, 1, 2], run)
    with pytest.raises(ValueError, match="name it alone"):
        po.fetched_run([3], run)
    with pytest.raises(ValueError, match="whole run"):
        po.split_run(run, 3, Value())
    po.finished_member(run, 1)
    with pytest.raises(ValueError, match="whole run"):
        po.split_run(run, 1, Value())
    with pytest.raises(KeyError):
        po.finished_member(run, 1)
    po.finished_run(run)
    assert len(po) == 0 and po.commit_offset == 3
