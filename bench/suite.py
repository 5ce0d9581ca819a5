"""The benchmark suite: every section of issue 9 on one broker, in one run.

Starts one broker (an embedded Tansu, or LOWWATER_TEST_BOOTSTRAP), runs the sections in order
(throughput, slow_handlers, latency, scale, sizing), prints each table as it lands and writes
``docs/benchmarks.md`` with the plots under ``docs/img/``. Each section is the module
``bench/<name>.py`` with ``run(ctx) -> Section`` (``bench/report.py``); a module that is not
there yet is reported, and the others still run. A section that fails is reported too, and
the exit status is then 1.

    .venv/bin/python bench/suite.py [--quick] [--only NAME ...] [--out DIR]

``--quick`` is the smoke run (smaller N, fewer points; CI runs it): its page goes to a
temporary folder, not ``docs/``, unless ``--out`` names one.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests.support` importable
    sys.path.insert(0, str(ROOT))

from rich.console import Console
from rich.rule import Rule

from bench.render import Outcome, page, rich_table, save_plots
from bench.report import Context, Section

SECTIONS = ("throughput", "slow_handlers", "latency", "scale", "sizing")
"""Section modules under ``bench/``, in the order they run and appear."""

INTRO = """\
Written by `bench/suite.py` (issue 9). Every comparison in a section was measured in the same
run, on the same broker, and is given as a ratio where one applies: absolute rates on a shared
machine are noise. A section's setup says what it ran; its notes say what bounds a figure that
falls short of its goal. To run it again: `.venv/bin/python bench/suite.py` (about ten minutes on a 2-core machine;
`--quick` for a smoke run, `--only scale sizing` for some sections)."""


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ram_gib() -> float:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def machine(broker: str, command: str) -> dict[str, str]:
    """What the page says the run was made on."""
    import confluent_kafka
    import grpc

    ck, rdk = confluent_kafka.__version__, confluent_kafka.libversion()[0]
    return {
        "CPU": f"{cpu_model()}, {os.cpu_count()} cores",
        "RAM": f"{ram_gib():.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "confluent-kafka / librdkafka": f"{ck} / {rdk}",
        "grpcio": grpc.__version__,
        "broker": broker,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"`{command}`",
    }


def tansu_version() -> str:
    """``tansu 0.6.0`` as the embedded broker's binary tells it."""
    from coordinator.embedded import tansu_binary

    try:
        out = subprocess.run([tansu_binary(), "--version"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        return f"Tansu (version unknown: {e})"
    name, _, version = out.partition(" ")
    return f"Tansu {version}" if name == "tansu" and version else out


def broker_name() -> str:
    from tests.support.broker import external_bootstrap

    target = external_bootstrap()
    if target is not None:
        return f"external Kafka at {target} (LOWWATER_TEST_BOOTSTRAP)"
    return f"{tansu_version()} (embedded, memory storage, one broker)"


def run_section(name: str, ctx: Context) -> Outcome:
    """Imports ``bench.<name>`` and runs it; a missing module or a failure becomes the outcome's
    problem instead of an exception."""
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"bench.{name}":
            return Outcome(name, problem=f"not run: bench/{name}.py does not exist yet")
        return Outcome(name, problem=f"failed: {e}")
    try:
        section = module.run(ctx)
    except Exception as e:  # noqa: BLE001 - reported; the other sections still run
        ctx.console.print(traceback.format_exc(), markup=False, highlight=False)
        last = f"{type(e).__name__}: {e}".splitlines()[0]
        return Outcome(name, problem=f"failed: {last}", seconds=time.perf_counter() - started)
    if not isinstance(section, Section):
        return Outcome(name, problem=f"failed: run() returned {type(section).__name__}")
    return Outcome(name, section=section, seconds=time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small N, few points")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="NAME",
                        help=f"run only these sections, of: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path,
                        help="folder for benchmarks.md and img/ (default: docs/, or a "
                             "temporary folder with --quick)")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join([".venv/bin/python", "bench/suite.py", *argv])
    out: Path = args.out or (Path(tempfile.mkdtemp(prefix="lowwater-bench-")) if args.quick
                             else ROOT / "docs")
    names = [name for name in SECTIONS if not args.only or name in args.only]
    console = Console()

    from bench.ceiling import kafka

    broker = broker_name()
    console.print(f"broker: {broker}", highlight=False)
    outcomes: list[Outcome] = []
    with kafka() as bootstrap:
        ctx = Context(bootstrap=bootstrap, broker=broker, quick=args.quick, console=console)
        for i, name in enumerate(names, start=1):
            console.print(Rule(f"{i}/{len(names)} {name}"))
            outcome = run_section(name, ctx)
            outcomes.append(outcome)
            if outcome.section is None:
                console.print(f"[yellow]{name}: {outcome.problem}[/]")
                continue
            console.print(rich_table(outcome.section))
            for path in save_plots(outcome.section, out):
                console.print(f"plot: {path}", highlight=False)

    out.mkdir(parents=True, exist_ok=True)
    target = out / "benchmarks.md"
    target.write_text(page(outcomes, machine(broker, command), intro=INTRO))
    console.print(f"wrote {target}", highlight=False)
    failed = [o.name for o in outcomes if o.problem and o.problem.startswith("failed")]
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
