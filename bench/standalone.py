"""Run one benchmark section alone, on its own broker, and print its table with rich.

Each section module ends with ``sys.exit(main_for(run))``; ``bench/suite.py`` runs them all
on one broker instead.
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from bench.ceiling import kafka
from bench.report import Context, Section
from coordinator.embedded import tansu_binary
from tests.support.broker import external_bootstrap


def broker_name() -> str:
    """How the report names the broker ``kafka()`` gives."""
    if (target := external_bootstrap()) is not None:
        return f"the Kafka at {target} (LOWWATER_TEST_BOOTSTRAP)"
    version = subprocess.run([tansu_binary(), "--version"], capture_output=True, text=True,
                             check=False).stdout.strip() or "Tansu"
    return f"{version.capitalize()} (embedded, memory storage)"


def print_section(console: Console, section: Section) -> None:
    """The section's table, goals and notes, on the terminal."""
    table = Table(title=section.title, title_justify="left", caption=section.setup,
                  caption_justify="left")
    for i, header in enumerate(section.headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in section.rows:
        table.add_row(*row)
    console.print(table)
    for goal in section.goals:
        mark = "[green]met[/]" if goal.met else "[red]not met[/]"
        console.print(f"goal: {goal.text}: {goal.measured} ({mark})")
    for note in section.notes:
        console.print(f"\n{note}")


def main_for(run: Callable[[Context], Section], argv: list[str] | None = None) -> int:
    """Parse ``--quick``, start a broker (or use LOWWATER_TEST_BOOTSTRAP), run, print."""
    parser = argparse.ArgumentParser(description="Run one benchmark section alone.")
    parser.add_argument("--quick", action="store_true", help="smaller N, fewer points")
    args = parser.parse_args(argv)
    console = Console()
    with kafka() as bootstrap:
        section = run(Context(bootstrap=bootstrap, broker=broker_name(), quick=args.quick,
                              console=console))
    print_section(console, section)
    return 0
