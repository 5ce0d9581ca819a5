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

COMPARE_SHORT = Scale(records=30_000, rate=1_500, faults=2)
"""The side-by-side, shorter than ``scripts/faults --compare`` (90,000 records, 3 kills)."""


@pytest.mark.parametrize("name", sorted(set(SCENARIOS) - {"broker-outage"}))
def test_scenario(name: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    outcome = SCENARIOS[name](Context(kafka_bootstrap, tmp_path, SHORT, random.Random(name)))
    print("\n" + markdown_table([outcome]), *outcome.notes, sep="\n")
    assert outcome.verdict.ok, "; ".join(outcome.verdict.problems())
    assert outcome.faults >= SHORT.faults


def test_broker_outage(private_tansu: TansuBroker, tmp_path: Path) -> None:
    ctx = Context(private_tansu.bootstrap_servers, tmp_path, SHORT, random.Random("outage"),
                  broker=private_tansu)
    outcome = SCENARIOS["broker-outage"](ctx)
    print("\n" + markdown_table([outcome]))
    assert outcome.verdict.ok, "; ".join(outcome.verdict.problems())
    assert outcome.faults == SHORT.faults


def test_the_seeds_consumer_loses_records_where_lowwater_loses_none(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The README's side-by-side, short: the same kill -9 schedule on both consumers.

    The seed's consumer auto-commits what it polled, so a kill loses what sat in
    its queue. Its queue is full after the first restart: the backlog of the
    seconds the broker took to hand its partitions over is polled at once.
    """
    seed, ours = seed_vs_lowwater(Context(kafka_bootstrap, tmp_path, COMPARE_SHORT,
                                          random.Random("compare")))
    print("\n" + markdown_table([seed, ours]))
    assert ours.verdict.ok, "; ".join(ours.verdict.problems())
    assert ours.faults == seed.faults == COMPARE_SHORT.faults
    assert seed.verdict.lost, "the seed's consumer lost nothing: the comparison shows nothing"
    assert seed.verdict.early_commits, "the seed's commits never passed an unprocessed record"
