"""The fault suite's checker catches what it exists to catch: loss, early commits, stray
duplicates, corruption and a commit short of the log end."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.faults.checker import CommitSample, FaultWindow, check
from tests.faults.journal import Processed

PRODUCED = {seq: (seq % 2, seq // 2) for seq in range(6)}  # offsets 0..2 on partitions 0 and 1
END = {0: 3, 1: 3}


def rows(*items: tuple[int, int]) -> list[Processed]:
    """(seq, t_ns) -> journal rows at the produced positions."""
    return [Processed(seq, *PRODUCED[seq], t, "w") for seq, t in items]


ALL_ONCE = rows(*((seq, 100 + seq) for seq in range(6)))


def test_a_clean_run_passes() -> None:
    verdict = check(PRODUCED, ALL_ONCE, [CommitSample(200, "broker", 0, 3)], [], END, END)
    assert verdict.ok and verdict.problems() == []
    assert (verdict.records, verdict.duplicates, verdict.lost) == (6, 0, [])


def test_a_missing_record_is_lost() -> None:
    verdict = check(PRODUCED, ALL_ONCE[1:], [], [], END, END)
    assert verdict.lost == [(0, 0)] and not verdict.ok


def test_a_commit_before_processing_is_caught() -> None:
    # seq 4 is partition 0, offset 2, processed at t=104: a commit to 3 seen at t=103 is early.
    early = check(PRODUCED, ALL_ONCE, [CommitSample(103, "sidecar", 0, 3)], [], END, END)
    assert len(early.early_commits) == 1 and not early.ok
    on_time = check(PRODUCED, ALL_ONCE, [CommitSample(104, "sidecar", 0, 3),
                                         CommitSample(103, "sidecar", 0, 2)], [], END, END)
    assert on_time.ok


def test_a_commit_past_a_record_never_processed_is_caught() -> None:
    verdict = check(PRODUCED, ALL_ONCE[:-1], [CommitSample(10**9, "broker", 1, 3)], [], END, END)
    assert verdict.early_commits and verdict.lost == [(1, 2)]


def test_duplicates_need_a_fault_in_between_and_within_the_bound() -> None:
    twice = [*ALL_ONCE, *rows((0, 500))]
    assert check(PRODUCED, twice, [], [], END, END).unexplained == [(0, 0)]
    before = FaultWindow("kill", 50, 90, bound=1)  # over before the first processing
    assert check(PRODUCED, twice, [], [before], END, END).unexplained == [(0, 0)]
    between = FaultWindow("kill", 300, 400, bound=1)
    assert check(PRODUCED, twice, [], [between], END, END).ok
    tight = FaultWindow("kill", 300, 400, bound=0)
    verdict = check(PRODUCED, twice, [], [tight], END, END)
    assert verdict.duplicates == 1 and not verdict.ok


def test_a_replay_from_below_the_committed_offset_is_not_explained_by_the_fault() -> None:
    # seq 0 is partition 0, offset 0. A fault whose committed offset on partition 0 was 1 may
    # replay offsets 1 and up there, not offset 0: that was no longer pending.
    twice = [*ALL_ONCE, *rows((0, 500))]
    above = FaultWindow("kill", 300, 400, bound=1, floor={0: 0, 1: 3})
    assert check(PRODUCED, twice, [], [above], END, END).ok
    below = FaultWindow("kill", 300, 400, bound=1, floor={0: 1})
    verdict = check(PRODUCED, twice, [], [below], END, END)
    assert verdict.unexplained == [(0, 0)] and not verdict.ok


def test_a_journaled_id_that_does_not_match_its_position_is_corrupt() -> None:
    wrong = [*ALL_ONCE[1:], Processed(99, 0, 0, 100, "w")]
    assert check(PRODUCED, wrong, [], [], END, END).corrupt


def test_positions_never_produced_are_extra_not_duplicates() -> None:
    verdict = check(PRODUCED, [*ALL_ONCE, Processed(0, 0, 7, 1, "w")], [], [], END, END)
    assert verdict.extra == 1 and verdict.ok


def test_commits_short_of_the_log_end_fail() -> None:
    verdict = check(PRODUCED, ALL_ONCE, [], [], {0: 3, 1: 2}, END)
    assert verdict.end_mismatch == {1: (2, 3)} and not verdict.ok


@given(st.lists(st.integers(0, 10**6), min_size=6, max_size=6),
       st.integers(0, 2), st.integers(0, 10**6))
def test_a_sample_is_early_exactly_when_a_record_below_it_came_later(
    times: list[int], offset: int, t_sample: int
) -> None:
    journal = rows(*enumerate(times))
    sample = CommitSample(t_sample, "broker", 0, offset + 1)
    below = [times[seq] for seq, (p, o) in PRODUCED.items() if p == 0 and o <= offset]
    verdict = check(PRODUCED, journal, [sample], [], END, END)
    assert bool(verdict.early_commits) == (max(below) > t_sample)
