"""The short version of every fault scenario: nothing lost, no early commit, duplicates bounded.

The long versions: ``scripts/faults --soak``. Each scenario's table row is
printed with ``-s``; ``scripts/faults`` prints them all.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from coordinator.embedded import TansuBroker
from tests.faults.report import markdown_table
from tests.faults.scenarios import SCENARIOS, SHORT, Context, Scale, seed_vs_lowwater

COMPARE_SHORT = Scale(records=30_000, rate=30_000, faults=2)
"""The side-by-side, shorter than ``scripts/faults --compare``: a burst of 30,000 records (a
campaign sent at once), produced in about a second, and two kills."""
COMPARE_SHORT_DELAY_MS = (40.0, 60.0)
"""Each record takes this long on both sides: the seed's 64 threads finish at most 1,600 a
second, so the 5 s between its auto-commits cover at most 8,000 of the 10,000 records its
full queue held at the last commit. The first kill (8 s in, with the burst not yet worked
off) therefore loses at least 2,000, whatever the commit's phase: a loss, not a chance of one."""
RUN_TIMEOUT_S = 600
"""Above the longest wait of a run (finish(timeout=300) after the faults), so that a stuck run
fails with RunFailed and the processes' logs, not with pytest-timeout's traceback."""


@pytest.mark.timeout(RUN_TIMEOUT_S)
@pytest.mark.parametrize("name", sorted(set(SCENARIOS) - {"broker-outage"}))
def test_scenario(name: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    outcome = SCENARIOS[name](Context(kafka_bootstrap, tmp_path, SHORT, random.Random(name)))
    print("\n" + markdown_table([outcome]), *outcome.notes, sep="\n")
    assert outcome.verdict.ok, "; ".join(outcome.verdict.problems())
    assert outcome.faults >= SHORT.faults


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_broker_outage(private_tansu: TansuBroker, tmp_path: Path) -> None:
    ctx = Context(private_tansu.bootstrap_servers, tmp_path, SHORT, random.Random("outage"),
                  broker=private_tansu)
    outcome = SCENARIOS["broker-outage"](ctx)
    print("\n" + markdown_table([outcome]))
    assert outcome.verdict.ok, "; ".join(outcome.verdict.problems())
    assert outcome.faults == SHORT.faults


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_the_seeds_consumer_loses_records_where_lowwater_loses_none(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The README's side-by-side, short: the same kill -9 schedule on both consumers.

    The seed's consumer auto-commits what it polled, so a kill loses what sat in
    its queue; a burst keeps that queue full (see COMPARE_SHORT_DELAY_MS).
    """
    seed, ours = seed_vs_lowwater(Context(kafka_bootstrap, tmp_path, COMPARE_SHORT,
                                          random.Random("compare")), COMPARE_SHORT_DELAY_MS)
    print("\n" + markdown_table([seed, ours]))
    assert ours.verdict.ok, "; ".join(ours.verdict.problems())
    assert ours.faults == seed.faults == COMPARE_SHORT.faults
    assert seed.verdict.lost, "the seed's consumer lost nothing: the comparison shows nothing"
    assert seed.verdict.early_commits, "the seed's commits never passed an unprocessed record"
