"""The scenario table, for the terminal (rich) and for docs (Markdown)."""

from __future__ import annotations

from rich.table import Table

from tests.faults.run import Outcome

COLUMNS = ("scenario", "records", "faults injected", "lost", "duplicates", "bound", "wall time",
           "verdict")


def _row(o: Outcome) -> list[str]:
    v = o.verdict
    return [o.name, f"{v.records:,}", str(o.faults), f"{len(v.lost):,}", f"{v.duplicates:,}",
            f"{v.bound:,}", f"{o.seconds:.0f} s", "ok" if v.ok else "FAILED"]


def rich_table(outcomes: list[Outcome], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("scenario", "verdict") else "right")
    for o in outcomes:
        table.add_row(*_row(o))
    return table


def markdown_table(outcomes: list[Outcome]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if c in ("scenario", "verdict") else "---:" for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_row(o)) + " |" for o in outcomes]
    return "\n".join(lines)
