"""The fault suite's journal: a row's time is when its fsync had returned, not before."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.faults.journal import OPENED, SYNCED, Journal, Tail, line


def test_rows_take_the_time_of_the_fsync_that_covered_them(tmp_path: Path) -> None:
    path = tmp_path / "w1.journal"
    before = time.monotonic_ns()

    async def write() -> int:
        journal = Journal(path)
        try:
            await asyncio.gather(*(journal.record(line(seq, 0, seq, before, "w1"))
                                   for seq in range(3)))
        finally:
            journal.close()
        return time.monotonic_ns()

    after = asyncio.run(write())
    tail = Tail(tmp_path)
    assert tail.poll() == 3
    assert sorted(r.seq for r in tail.rows) == [0, 1, 2]
    # Each row's time is its marker's, written after the fsync: later than the row's own.
    assert all(before < r.t_ns <= after for r in tail.rows)
    assert path.read_text().count(SYNCED) >= 1


def test_a_row_with_no_marker_after_it_keeps_its_own_time(tmp_path: Path) -> None:
    # A worker killed between its fsync and the marker: the row is there, the marker is not.
    path = tmp_path / "w1.journal"
    path.write_text(line(1, 0, 10, 100, "w1") + f"{SYNCED} 150\n" + line(2, 0, 11, 200, "w1"))
    tail = Tail(tmp_path)
    assert tail.poll() == 2
    assert [(r.seq, r.t_ns) for r in tail.rows] == [(1, 150), (2, 200)]
    # The marker arrives in a later read: it covers only the rows since the previous one.
    with path.open("a") as f:
        f.write(f"{SYNCED} 250\n")
    assert tail.poll() == 0
    assert [(r.seq, r.t_ns) for r in tail.rows] == [(1, 150), (2, 250)]


def test_a_restarted_workers_marker_does_not_cover_the_rows_of_the_one_killed(
    tmp_path: Path
) -> None:
    # w1 was killed between its fsync and its marker, then started again on the same file.
    path = tmp_path / "w1.journal"
    path.write_text(f"{OPENED} 50\n" + line(1, 0, 10, 100, "w1")
                    + f"{OPENED} 300\n" + line(2, 0, 11, 400, "w1") + f"{SYNCED} 450\n")
    tail = Tail(tmp_path)
    assert tail.poll() == 2
    assert [(r.seq, r.t_ns) for r in tail.rows] == [(1, 100), (2, 450)]
