"""Runs the fault scenarios and prints one row per scenario.

    python -m tests.faults                      every scenario, short (as in CI)
    python -m tests.faults --soak               the long versions
    python -m tests.faults --only sidecar-crash --only cut-streams
    python -m tests.faults --compare            the seed's auto-commit consumer beside lowwater
    python -m tests.faults --markdown FILE      also write the table(s) there, as Markdown

Starts its own Tansu brokers (one shared, and one per scenario that freezes
its broker) unless LOWWATER_TEST_BOOTSTRAP names a Kafka; the broker-outage
scenario always needs Tansu, since it SIGSTOPs the broker process.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from coordinator.embedded import TansuBroker
from tests.faults.report import markdown_table, rich_table
from tests.faults.run import Outcome
from tests.faults.scenarios import (
    COMPARE,
    SCENARIOS,
    SHORT,
    SOAK,
    Context,
    seed_vs_lowwater,
)
from tests.support.broker import external_bootstrap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--soak", action="store_true", help="run the long versions")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS),
                        help="run only this scenario (repeatable)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    parser.add_argument("--compare", action="store_true",
                        help="run only the side-by-side: the seed's consumer and lowwater under "
                             "the same kill -9 schedule")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 110))
    scale = SOAK if args.soak else SHORT
    outcomes: list[Outcome] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lowwater-faults-") as tmp:
        shared = external_bootstrap()
        if shared is None:
            broker = stack.enter_context(TansuBroker(log_dir=Path(tmp) / "tansu"))
            shared = broker.bootstrap_servers
        if args.compare:
            workdir = Path(tmp) / "compare"
            console.print(f"[bold]side by side[/]: {COMPARE.records:,} records at "
                          f"{COMPARE.rate:,.0f}/s, kill -9 {COMPARE.faults} times")
            outcomes = seed_vs_lowwater(Context(shared, workdir, COMPARE,
                                                random.Random(f"{args.seed}-compare")))
        for name in [] if args.compare else args.only or list(SCENARIOS):
            console.print(f"[bold]{name}[/]: {scale.records:,} records at {scale.rate:,.0f}/s")
            workdir = Path(tmp) / name
            workdir.mkdir()
            ctx = Context(shared, workdir, scale, random.Random(f"{args.seed}-{name}"))
            with ExitStack() as own:
                if name == "broker-outage":
                    ctx.broker = own.enter_context(TansuBroker(log_dir=workdir / "tansu"))
                outcome = SCENARIOS[name](ctx)
            outcomes.append(outcome)
            console.print(rich_table(outcomes[-1:]))
    console.print(rich_table(outcomes, title="every scenario"))
    if args.markdown:
        args.markdown.write_text(markdown_table(outcomes) + "\n")
    if args.compare:  # the seed's consumer is expected to fail; lowwater is not
        return 0 if outcomes[-1].verdict.ok else 1
    failed = [o for o in outcomes if not o.verdict.ok]
    for o in failed:
        console.print(f"[red]{o.name}[/]: " + "; ".join(o.verdict.problems()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
