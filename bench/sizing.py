"""Section 5, sizing: the sidecar's CPU per 1,000 records/s and its RSS, to ground the Helm
chart's default resource requests.

One sidecar (``lowwater serve`` with its default settings) and one SDK ``AsyncWorker`` whose
handler returns at once; this process produces 100-byte records at a few steady rates (paced,
one rate after another, after an idle spell). For each rate, after a warm-up, the sidecar
process's CPU time (utime + stime from ``/proc/<pid>/stat``) and RSS are read at the start and
the end of a window, and the records the worker handled in it are counted. A line fitted
through (rate, cores) gives the idle cost and the marginal cost per 1,000 records/s, and the
notes hold them against ``sidecar.resources`` in ``helm/lowwater/values.yaml``.

    .venv/bin/python bench/suite.py --only sizing [--quick]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import yaml
from confluent_kafka import Producer

from bench.ceiling import PARTITIONS, RECORD_BYTES
from bench.report import Context, Plot, Section, Series
from bench.sidecar import rss_kib
from coordinator.embedded import SidecarProcess, create_topic, unique_name
from coordinator.embedded.tansu import NO_AUTO_CREATE

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "helm" / "lowwater" / "values.yaml"

RATES = (0, 1_000, 5_000, 20_000)
"""Records per second produced, one after another; 0 is the idle sidecar."""
QUICK_RATES = (0, 1_000, 5_000)
WINDOW_S = 10.0
QUICK_WINDOW_S = 3.0
WARMUP_S = 2.0
QUICK_WARMUP_S = 1.0
PACE_S = 0.005
"""How often the producer catches up with its rate."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


class CountingWorker:
    """One SDK ``AsyncWorker`` on a thread of its own whose handler counts and returns."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.handled = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name="counting-worker", daemon=True)

    async def _main(self) -> None:
        import lowwater

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        stop = self._stop
        self._ready.set()

        async def handle(msg: lowwater.Message) -> None:
            self.handled += 1

        async with lowwater.AsyncWorker(self.target, handle):
            await stop.wait()

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


class PacedProducer:
    """Produces 100-byte records to ``topic`` at a steady rate, from the calling thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.sent = 0
        self._payload = b"x" * RECORD_BYTES
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                                   **NO_AUTO_CREATE})

    def run(self, rate: int, seconds: float) -> None:
        """Produces ``rate`` records/s for ``seconds`` (sleeps through it at rate 0)."""
        started = time.perf_counter()
        sent_before = self.sent
        produce, poll = self._producer.produce, self._producer.poll
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(rate * elapsed) - (self.sent - sent_before)
            for _ in range(due):
                produce(self.topic, self._payload)
            self.sent += max(due, 0)
            poll(0)
            time.sleep(PACE_S)

    def close(self) -> None:
        left = self._producer.flush(30)
        if left:
            raise RuntimeError(f"{left} records were not delivered")


@dataclass(frozen=True)
class Window:
    """What one steady rate cost the sidecar."""

    target: int
    handled_per_s: float
    cores: float
    rss_mib: float


def measure(ctx: Context, rates: tuple[int, ...], window_s: float,
            warmup_s: float) -> tuple[list[Window], float]:
    """One window per rate; returns them and the sidecar's peak RSS (MiB)."""
    topic = unique_name("bench-sizing")
    create_topic(ctx.bootstrap, topic, PARTITIONS)
    out = []
    producer = PacedProducer(ctx.bootstrap, topic)
    with SidecarProcess(ctx.bootstrap, unique_name("bench-sizing"), [topic]) as sc, \
            CountingWorker(sc.target) as worker:
        sc.wait_assigned(PARTITIONS)
        for rate in rates:
            producer.run(rate, warmup_s)
            cpu, handled, started = cpu_seconds(sc.pid), worker.handled, time.perf_counter()
            producer.run(rate, window_s)
            took = time.perf_counter() - started
            window = Window(rate, (worker.handled - handled) / took,
                            (cpu_seconds(sc.pid) - cpu) / took, rss_kib(sc.pid) / 1024)
            out.append(window)
            ctx.console.print(
                f"  {rate:,} rec/s produced: {window.handled_per_s:,.0f} rec/s handled, "
                f"sidecar {window.cores:.3f} cores, RSS {window.rss_mib:,.0f} MiB",
                highlight=False)
        producer.close()
        peak = rss_kib(sc.pid, "VmHWM") / 1024
    return out, peak


def quantity(text: str) -> float:
    """A Kubernetes quantity of CPU (cores) or memory (MiB): "100m", "1", "256Mi", "1Gi"."""
    text = str(text)
    units = {"m": 1e-3, "Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def chart_resources() -> dict[str, str]:
    """``sidecar.resources`` of the chart, flattened: requests.cpu, limits.memory, ..."""
    values = yaml.safe_load(VALUES.read_text())
    resources = values.get("sidecar", {}).get("resources", {}) or {}
    return {f"{kind}.{name}": str(value)
            for kind, entries in resources.items() for name, value in (entries or {}).items()}


def run(ctx: Context) -> Section:
    rates = QUICK_RATES if ctx.quick else RATES
    window_s = QUICK_WINDOW_S if ctx.quick else WINDOW_S
    warmup_s = QUICK_WARMUP_S if ctx.quick else WARMUP_S
    windows, peak = measure(ctx, rates, window_s, warmup_s)

    fit = statistics.linear_regression([w.handled_per_s for w in windows],
                                       [w.cores for w in windows])
    idle, per_1k = fit.intercept, fit.slope * 1000
    rows = [[f"{w.target:,}", f"{w.handled_per_s:,.0f}", f"{w.cores:.3f}",
             f"{w.cores / (w.handled_per_s / 1000):.3f}" if w.target else "-",
             f"{w.rss_mib:,.0f}"] for w in windows]
    chart = chart_resources()
    cpu_request = quantity(chart.get("requests.cpu", "0"))
    mem_request = quantity(chart.get("requests.memory", "0"))
    mem_limit = quantity(chart.get("limits.memory", "0"))
    top = windows[-1]
    at_request = (cpu_request - idle) / per_1k * 1000 if per_1k > 0 else float("inf")
    cpu_note = (
        f"CPU: a line through (handled rate, cores) gives {idle:.3f} cores idle and "
        f"{per_1k:.3f} cores per 1,000 records/s ({per_1k * 1000:.0f} ms of CPU per 1,000 "
        f"records); at {top.target:,} records/s the sidecar used {top.cores:.2f} cores. A "
        f"deployment that expects R records/s should request about {idle:.2f} + "
        f"{per_1k:.3f} x R/1000 cores. The chart requests {chart.get('requests.cpu', 'none')}"
        + (f", which covers about {at_request:,.0f} records/s: "
           + ("enough for the rates measured here. " if at_request >= top.handled_per_s
              else "less than the highest rate measured here. ")
           if at_request > 0 else ", less than the idle sidecar uses. ")
        + "A sidecar is one Python process whose consumer thread, event loop and gRPC "
        "threads share one GIL, so more than about one core does not make it faster; near its "
        "throughput ceiling (section 1) it needs that whole core.")
    mem_note = (
        f"Memory: RSS stayed at {min(w.rss_mib for w in windows):,.0f} to "
        f"{max(w.rss_mib for w in windows):,.0f} MiB (peak {peak:,.0f} MiB) with the worker "
        f"keeping up, against a request of {chart.get('requests.memory', 'none')} "
        f"({mem_request:,.0f} MiB) and a limit of {chart.get('limits.memory', 'none')} "
        f"({mem_limit:,.0f} MiB): "
        + ("the request covers the steady state. " if mem_request >= peak else
           "the request is below the steady state. ")
        + "What grows is the pending set when a worker falls behind, up to "
        "`--max-pending-per-partition` per assigned partition: section 4 gives its cost per "
        "record and how many partitions the limit allows at the default cap.")
    return Section(
        title="5. Sizing",
        setup=(
            f"One sidecar (`lowwater serve`, default settings, {PARTITIONS} partitions) and "
            f"one SDK `AsyncWorker` whose handler returns at once; records of {RECORD_BYTES} "
            f"bytes produced at {', '.join(f'{r:,}' for r in rates)} records/s in turn, each "
            f"for {warmup_s:g} s of warm-up and a {window_s:g} s window. Per window: the "
            f"records the worker handled per second, the sidecar process's CPU (utime + stime "
            f"from /proc) per second of wall time, and its RSS at the end."),
        headers=["produced rec/s", "handled rec/s", "sidecar cores", "cores per 1k rec/s",
                 "RSS MiB"],
        rows=rows,
        notes=[cpu_note, mem_note],
        plots=[Plot(
            name="bench-sizing-cpu",
            title="Sidecar CPU against the rate it handles",
            x_label="records/s handled", y_label="sidecar CPU (cores)",
            series=[
                Series("measured", [w.handled_per_s for w in windows],
                       [w.cores for w in windows]),
                Series(f"chart request ({chart.get('requests.cpu', '0')})",
                       [0, max(w.handled_per_s for w in windows)], [cpu_request, cpu_request]),
            ])],
    )
