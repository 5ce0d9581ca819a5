"""Runs the fault scenarios and prints one row per scenario.

    python -m tests.faults                      every scenario, short (as in CI)
    python -m tests.faults --soak               the long versions
    python -m tests.faults --only sidecar-crash --only cut-streams
    python -m tests.faults --compare            the seed's auto-commit consumer beside lowwater
    python -m tests.faults --mock --offset-map both --only sidecar-crash
                                                duplicates with and without offset maps, on a
                                                broker that keeps commit metadata
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
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from coordinator.embedded import TansuBroker, create_topic
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
from tests.support.broker import MockCluster, external_bootstrap


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
    parser.add_argument("--mock", action="store_true",
                        help="run on librdkafka's mock cluster, which keeps commit metadata"
                             " (Tansu drops it); not for broker-outage")
    parser.add_argument("--offset-map", choices=["on", "off", "both"], default="on",
                        help="sidecars write offset maps (on), do not (off), or each scenario"
                             " runs once each way (both)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 110))
    scale = SOAK if args.soak else SHORT
    outcomes: list[Outcome] = []
    crashed: list[str] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lowwater-faults-") as tmp:
        shared = external_bootstrap()
        create: Callable[[str, str, int], None] = create_topic
        if args.mock:
            mock = stack.enter_context(MockCluster())
            shared = mock.bootstrap_servers

            def create_on_mock(bootstrap: str, topic: str, partitions: int) -> None:
                mock.create_topic(topic, partitions)
            create = create_on_mock
        elif shared is None:
            broker = stack.enter_context(TansuBroker(log_dir=Path(tmp) / "tansu"))
            shared = broker.bootstrap_servers
        if args.compare:
            workdir = Path(tmp) / "compare"
            console.print(f"[bold]side by side[/]: {COMPARE.records:,} records at "
                          f"{COMPARE.rate:,.0f}/s, kill -9 {COMPARE.faults} times")
            outcomes = seed_vs_lowwater(Context(shared, workdir, COMPARE,
                                                random.Random(f"{args.seed}-compare")))
        variants = {"on": [True], "off": [False], "both": [True, False]}[args.offset_map]
        for name in [] if args.compare else args.only or list(SCENARIOS):
            for with_map in variants:
                label = name if args.offset_map == "on" else \
                    f"{name}, offset map {'on' if with_map else 'off'}"
                console.print(f"[bold]{label}[/]: {scale.records:,} records at "
                              f"{scale.rate:,.0f}/s")
                workdir = Path(tmp) / label.replace(", ", "-").replace(" ", "-")
                workdir.mkdir()
                ctx = Context(shared, workdir, scale, random.Random(f"{args.seed}-{name}"),
                              sidecar_args=() if with_map else ("--no-offset-map",),
                              create=create)
                try:
                    with ExitStack() as own:
                        if name == "broker-outage":
                            ctx.broker = own.enter_context(
                                TansuBroker(log_dir=workdir / "tansu"))
                        outcome = SCENARIOS[name](ctx)
                except (AssertionError, TimeoutError) as exc:  # RunFailed is an AssertionError
                    # One scenario that could not finish must not hide the others' rows.
                    console.print(f"[red]{label} could not finish[/]: {exc}")
                    crashed.append(label)
                    continue
                if args.offset_map != "on":
                    outcome.name += f", offset map {'on' if with_map else 'off'}"
                outcomes.append(outcome)
                console.print(rich_table(outcomes[-1:]))
                for note in outcome.notes:
                    console.print(f"  {note}")
    console.print(rich_table(outcomes, title="every scenario"))
    if args.markdown:
        args.markdown.write_text(markdown_table(outcomes) + "\n")
    if args.compare:  # the seed's consumer is expected to fail; lowwater is not
        return 0 if outcomes[-1].verdict.ok else 1
    failed = [o for o in outcomes if not o.verdict.ok]
    for o in failed:
        console.print(f"[red]{o.name}[/]: " + "; ".join(o.verdict.problems()))
    if crashed:
        console.print(f"[red]could not finish[/]: {', '.join(crashed)}")
    return 1 if failed or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
