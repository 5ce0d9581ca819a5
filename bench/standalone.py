"""Run one benchmark section alone, on its own broker, and print its table with rich.

Each section module ends with ``sys.exit(main_for(run))``; ``bench/suite.py`` runs them all
on one broker instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rich.console import Console

from bench.ceiling import kafka
from bench.render import rich_table
from bench.report import Context, Section
from bench.suite import broker_name


def print_section(console: Console, section: Section) -> None:
    """The section's table (as the suite prints it, goals in its caption) and notes."""
    console.print(rich_table(section))
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
