"""The in-process baseline's tracker (bench/inprocess.py) commits only finished prefixes: its
commit point never passes an unfinished offset, and it reaches the end once all are finished."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.inprocess import ContiguousTracker


@st.composite
def runs(draw: st.DrawFn) -> tuple[dict[int, list[int]], list[tuple[int, int]]]:
    """Per partition, increasing offsets with gaps; and the order they finish in: a shuffle of
    all of them in which each record finishes after it was dispatched."""
    offsets: dict[int, list[int]] = {}
    for p in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, 1000))
        gaps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=40))
        offs, at = [], start
        for gap in gaps:
            offs.append(at)
            at += gap
        offsets[p] = offs
    order = draw(st.permutations([(p, o) for p, offs in offsets.items() for o in offs]))
    return offsets, order


@given(runs(), st.data())
def test_the_commit_point_never_passes_an_unfinished_offset(
    run: tuple[dict[int, list[int]], list[tuple[int, int]]], data: st.DataObject
) -> None:
    offsets, finish_order = run
    tracker = ContiguousTracker()
    dispatched = {p: 0 for p in offsets}  # how many of each partition's offsets are dispatched
    finished: set[tuple[int, int]] = set()
    last: dict[int, int] = {}
    for p, offset in finish_order:
        # Dispatch, in Kafka's order, up to this record and perhaps further.
        index = offsets[p].index(offset)
        upto = data.draw(st.integers(index + 1, len(offsets[p])))
        while dispatched[p] < upto:
            tracker.dispatch(p, offsets[p][dispatched[p]])
            dispatched[p] += 1
        tracker.finish(p, offset)
        finished.add((p, offset))
        moved = tracker.take_changed()
        for q, offs in offsets.items():
            point = tracker.commit_point(q)
            unfinished = [o for o in offs[: dispatched[q]] if (q, o) not in finished]
            if point is None:
                assert q not in moved
                continue
            assert all(point <= o for o in unfinished), (q, point, unfinished)
            assert point >= last.get(q, point), "the commit point went back"
            assert (q in moved) == (point != last.get(q)), "take_changed missed or invented one"
            last[q] = point
    for p, offs in offsets.items():
        assert tracker.commit_point(p) == offs[-1] + 1, "all finished, the commit is the end"


def test_offsets_must_come_in_kafkas_order() -> None:
    tracker = ContiguousTracker()
    tracker.dispatch(0, 5)
    with pytest.raises(ValueError):
        tracker.dispatch(0, 5)
    tracker.finish(0, 5)
    assert tracker.take_changed() == {0: 6}
    assert tracker.take_changed() == {}
    with pytest.raises(ValueError):
        tracker.dispatch(0, 4)
