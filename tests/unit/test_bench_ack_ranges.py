"""bench/ack_ranges.py keeps working: both ways settle every record and move the commit."""

from __future__ import annotations

import pytest

from bench.ack_ranges import RUN, RUNS_PER_LEASE, main, ns_per_ack


@pytest.mark.parametrize("cut", [False, True])
def test_both_ways_ack_every_leased_record(cut: bool) -> None:
    assert ns_per_ack(2 * RUN * RUNS_PER_LEASE, cut=cut) > 0  # it checks the commit itself


def test_it_prints_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--records", str(RUN * RUNS_PER_LEASE)]) == 0
    assert "ratio cut / aligned" in capsys.readouterr().out
