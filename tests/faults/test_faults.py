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
from tests.faults.scenarios import SCENARIOS, SHORT, Context


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
