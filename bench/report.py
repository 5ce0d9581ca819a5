"""What each benchmark section hands to the suite (``bench/suite.py``): a table, notes and
plots, rendered to the terminal with rich and to ``docs/benchmarks.md`` with PNG plots.

A section module exposes ``run(ctx: Context) -> Section``. It measures every comparison in the
same run, on the same broker, and reports ratios: absolute rates on shared machines are noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console


@dataclass(frozen=True)
class Context:
    """What every section gets from the suite."""

    bootstrap: str
    """The Kafka every section uses (one Tansu for the whole suite, or LOWWATER_TEST_BOOTSTRAP)."""
    broker: str
    """How the broker is named in the report, e.g. "Tansu 0.6.0 (embedded, memory storage)"."""
    quick: bool
    """Smaller N and fewer points: a smoke run (CI, or trying a change), not for the docs."""
    console: Console
    """Where progress goes while a section runs."""


@dataclass(frozen=True)
class Series:
    """One line of a plot."""

    label: str
    x: Sequence[float]
    y: Sequence[float]


@dataclass(frozen=True)
class Plot:
    """A line plot, written to ``docs/img/<name>.png``."""

    name: str
    """File name without ``.png``, e.g. ``bench-slow-handlers``."""
    title: str
    x_label: str
    y_label: str
    series: Sequence[Series]
    log_x: bool = False
    log_y: bool = False


@dataclass(frozen=True)
class Goal:
    """A target from the issue and whether this run met it."""

    text: str
    """For example "lowwater / ceiling >= 0.5"."""
    measured: str
    """The measured figure, formatted, e.g. "0.07"."""
    met: bool


@dataclass(frozen=True)
class Section:
    """One benchmark's result."""

    title: str
    setup: str
    """One paragraph: what was run, with which N, sizes and settings."""
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    goals: Sequence[Goal] = ()
    notes: Sequence[str] = ()
    """Paragraphs after the table: what bounds a figure that falls short, quirks seen."""
    plots: Sequence[Plot] = field(default_factory=tuple)


def plot_path(docs: Path, plot: Plot) -> Path:
    return docs / "img" / f"{plot.name}.png"
