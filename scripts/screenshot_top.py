"""Runs ``lowwater demo``, reads its sidecar twice as ``lowwater top`` does, and renders that
view with rich's SVG export and CairoSVG to ``docs/img/lowwater-top.png``. Run it through
``scripts/screenshot_top``."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import cairosvg
from rich.console import Console

from coordinator import status

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img" / "lowwater-top.png"
DEMO = [str(ROOT / ".venv" / "bin" / "lowwater"), "demo", "--records", "60000", "--rate", "3000"]
TARGET = re.compile(r"lowwater serve on (\S+)")
INTERVAL_S = 1.0
"""Seconds between the two readings, as ``lowwater top --interval``."""
WARM_UP_S = 8.0
"""Seconds of traffic before the screenshot, so that every column has something to show."""
BUSY_TRIES = 40
"""Readings, 50 ms apart, to find a moment with records in flight."""
WIDTH = 100
"""Columns of the rendered terminal."""
FONT = "DejaVu Sans Mono"
"""A monospace font this machine has (rich's SVG asks for Fira Code, which it may not)."""


def main() -> int:
    demo = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    try:
        assert demo.stdout is not None
        target = None
        for line in demo.stdout:
            print(line, end="")
            if (found := TARGET.search(line)) is not None:
                target = found.group(1)
                break
        if target is None:
            print("screenshot_top: the demo ended before its sidecar started", file=sys.stderr)
            return 1
        time.sleep(WARM_UP_S)  # let traffic flow: this picture is of a busy sidecar
        before = status.fetch(target)
        taken = time.monotonic()
        time.sleep(INTERVAL_S)
        after = status.fetch(target)
        for _ in range(BUSY_TRIES):  # records arrive in bursts: catch one in flight
            if any(p.in_flight_count for p in after.partitions):
                break
            time.sleep(0.05)
            after = status.fetch(target)
        view = status.render(after, int(time.time() * 1000),
                             status.rates(before, after, time.monotonic() - taken))
        console = Console(record=True, width=WIDTH, file=io.StringIO(), force_terminal=True,
                          color_system="truecolor")
        console.print(f"$ lowwater top --target {target}")
        console.print(view)
        svg = console.export_svg(title="lowwater top (during lowwater demo)")
        svg = re.sub(r"font-family: *[^;]*;", f'font-family: "{FONT}";', svg)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        cairosvg.svg2png(bytestring=svg.encode(), write_to=str(OUT))
        print(f"screenshot_top: wrote {OUT.relative_to(ROOT)}")
        for line in demo.stdout:  # let the demo finish and show its summary
            print(line, end="")
        return demo.wait()
    finally:
        if demo.poll() is None:
            demo.terminate()
            demo.wait(30)


if __name__ == "__main__":
    sys.exit(main())
