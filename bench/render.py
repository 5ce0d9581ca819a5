"""How the suite shows a :class:`~bench.report.Section`: a rich table on the terminal, a
markdown section on ``docs/benchmarks.md`` and PNG plots beside it (matplotlib, Agg backend).

Kept apart from ``bench/report.py`` (what sections hand over) so that a section never needs
matplotlib, and from ``bench/suite.py`` (what runs) so that the rendering has a test of its own
(``tests/unit/test_bench_report.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from bench.report import Plot, Section, plot_path

MET, NOT_MET = "met", "not met"


@dataclass(frozen=True)
class Outcome:
    """What became of one section in a suite run: its result, or why there is none."""

    name: str
    """The section's module name, e.g. ``scale``."""
    section: Section | None = None
    problem: str | None = None
    """Why there is no section: its module is missing, or it failed (the error's last line)."""
    seconds: float = 0.0


def rich_table(section: Section) -> Table:
    """The section's table for the terminal, with its goals as a caption."""
    table = Table(title=section.title, title_justify="left")
    for i, header in enumerate(section.headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in section.rows:
        table.add_row(*row)
    if section.goals:
        table.caption = "\n".join(
            f"{MET if goal.met else NOT_MET.upper()}: {goal.text} (measured {goal.measured})"
            for goal in section.goals)
        table.caption_justify = "left"
    return table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; every column but the first right-aligned."""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |",
             "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section_markdown(section: Section, *, img_dir: str = "img") -> str:
    """The section as markdown: setup, table, goals, notes, then its plots (relative links)."""
    parts = [f"## {section.title}", section.setup, markdown_table(section.headers, section.rows)]
    if section.goals:
        parts.append("\n".join(
            f"- **{MET if goal.met else NOT_MET}**: {goal.text}; measured {goal.measured}"
            for goal in section.goals))
    parts += list(section.notes)
    parts += [f"![{plot.title}]({img_dir}/{plot.name}.png)" for plot in section.plots]
    return "\n\n".join(parts)


def save_plot(plot: Plot, path: Path) -> Path:
    """Draws ``plot`` as a PNG at ``path`` (its folder is created) and returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        for series in plot.series:
            ax.plot(list(series.x), list(series.y), marker="o", markersize=3.5, label=series.label)
        ax.set_title(plot.title)
        ax.set_xlabel(plot.x_label)
        ax.set_ylabel(plot.y_label)
        if plot.log_x:
            ax.set_xscale("log")
        if plot.log_y:
            ax.set_yscale("log")
        else:  # from zero, so that noise does not look like a trend
            ax.set_ylim(bottom=0)
        ax.grid(True, which="major", alpha=0.35)
        if len(plot.series) > 1:
            ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def save_plots(section: Section, docs: Path) -> list[Path]:
    """Every plot of ``section`` under ``docs/img/``."""
    return [save_plot(plot, plot_path(docs, plot)) for plot in section.plots]


def page(outcomes: Sequence[Outcome], machine: Mapping[str, str], *, intro: str) -> str:
    """``docs/benchmarks.md``: the intro, the machine, a summary of the goals, the sections."""
    parts = ["# Benchmarks", intro, "## Machine and run",
             markdown_table(["", ""], [[k, v] for k, v in machine.items()])]
    summary = []
    for outcome in outcomes:
        if outcome.section is None:
            summary.append([outcome.name, "-", "-", outcome.problem or "no result"])
            continue
        for goal in outcome.section.goals:
            summary.append([outcome.section.title, goal.text, goal.measured,
                            MET if goal.met else f"**{NOT_MET}**"])
    if summary:
        parts += ["## Goals", markdown_table(["section", "goal", "measured", ""], summary)]
    for outcome in outcomes:
        if outcome.section is not None:
            parts.append(section_markdown(outcome.section))
            parts.append(f"*Ran in {outcome.seconds:,.0f} s.*")
    return "\n\n".join(parts) + "\n"
