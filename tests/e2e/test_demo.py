"""``lowwater demo`` as a user runs it: it must finish with nothing lost."""

from __future__ import annotations

import re
import subprocess
import sys

DEMO_TIMEOUT_S = 240
"""Seconds the demo gets (it needs about 10 s for 3,000 records)."""


def test_demo_processes_and_commits_everything() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "demo", "--records", "3000", "--rate", "3000"],
        capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    rows = dict(re.findall(r"│ (produced|processed \(distinct\)|lost)\s+│\s+([\d,]+) │", out))
    assert rows == {"produced": "3,000", "processed (distinct)": "3,000", "lost": "0"}, out
    assert "sidecar stopped with exit code 0" in out


def test_demo_refuses_bad_arguments() -> None:
    done = subprocess.run([sys.executable, "-m", "coordinator", "demo", "--records", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--records must be at least 1" in done.stderr
