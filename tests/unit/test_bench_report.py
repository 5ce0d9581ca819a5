"""The benchmark suite's rendering (``bench/render.py``): a fake section becomes a markdown
section, a rich table and PNG plots, so the page cannot rot between full benchmark runs."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from bench.render import Outcome, page, rich_table, save_plots, section_markdown
from bench.report import Goal, Plot, Section, Series, plot_path

FAKE = Section(
    title="9. Fake",
    setup="One fake run with N = 3.",
    headers=["size", "cost | us"],
    rows=[["1", "2.0"], ["10", "2.5"]],
    goals=[Goal("cost ratio <= 2", "1.25", met=True), Goal("rate >= 1", "0.5", met=False)],
    notes=["The rate is bound by nothing at all."],
    plots=[Plot("bench-fake", "Cost per record", "size", "us",
                [Series("a", [1, 10, 100], [2.0, 2.5, 3.0]), Series("b", [1, 10], [1.0, 1.1])],
                log_x=True)],
)


def test_a_section_renders_to_markdown_with_its_goals_notes_and_plots() -> None:
    text = section_markdown(FAKE)
    assert text.startswith("## 9. Fake\n\nOne fake run with N = 3.")
    assert "| size | cost \\| us |" in text
    assert "| 10 | 2.5 |" in text
    assert "- **met**: cost ratio <= 2; measured 1.25" in text
    assert "- **not met**: rate >= 1; measured 0.5" in text
    assert "The rate is bound by nothing at all." in text
    assert "![Cost per record](img/bench-fake.png)" in text


def test_plots_are_written_as_png(tmp_path: Path) -> None:
    paths = save_plots(FAKE, tmp_path)
    assert paths == [plot_path(tmp_path, FAKE.plots[0])]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_names_the_machine_and_sums_up_goals_and_missing_sections() -> None:
    outcomes = [Outcome("fake", section=FAKE, seconds=3.0),
                Outcome("latency", problem="not run: bench/latency.py does not exist yet")]
    text = page(outcomes, {"CPU": "a fast one", "broker": "Tansu 0.6.0"}, intro="Hello.")
    assert text.startswith("# Benchmarks\n\nHello.")
    assert "| broker | Tansu 0.6.0 |" in text
    assert "| 9. Fake | rate >= 1 | 0.5 | **not met** |" in text
    assert "| latency | - | - | not run: bench/latency.py does not exist yet |" in text
    assert "## 9. Fake" in text


def test_the_terminal_table_shows_rows_and_goals() -> None:
    console = Console(record=True, width=100)
    console.print(rich_table(FAKE))
    shown = console.export_text()
    assert "2.5" in shown
    assert "NOT MET: rate >= 1" in shown and "(measured 0.5)" in shown
