"""lowwater against the ceiling, measured in one run on the same broker.

1. Ceiling: one plain confluent-kafka consumer reads N 100-byte records with
   ``consume(500)`` and does nothing else (``bench/ceiling.py``).
2. lowwater: the same N records through ``lowwater serve`` (a real sidecar
   process) to one SDK ``AsyncWorker`` whose handler returns at once, timed until
   every partition's committed offset reaches the log end; once with the default
   ``at_least_once`` guarantee, once with ``at_most_once`` (records finished
   when dispatched), and once ``at_least_once`` writing its pending sets to Redis
   (``--redis-url``, write-behind; the issue's budget is 10% of the throughput),
   each in a group of its own.
3. Memory: the sidecar's peak RSS in run 2, and the RSS each pending record costs
   when 100,000 records are held pending (no worker attached, so the pending cap
   stops the fetch).

It prints both rates and their ratio: on shared machines absolute rates are
noise, the ratio is the figure.

    .venv/bin/python bench/sidecar.py [--n 500000] [--pending 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests.support` importable
    sys.path.insert(0, str(ROOT))

import grpc
from rich.console import Console
from rich.table import Table

import lowwater
from bench.ceiling import (
    CONSUMER_TUNING,
    DEFAULT_RECORDS,
    PARTITIONS,
    _fill_with_progress,
    kafka,
    measure_consume,
)
from coordinator.embedded import SidecarProcess, create_topic, unique_name
from lowwater.v1 import admin_pb2, admin_pb2_grpc
from tests.support.redis import delete_prefix, ping, shared_redis_url, unique_prefix

WORKER_IN_FLIGHT = 2000
"""What the benchmark worker declares it holds at once."""
STATUS_POLL_S = 0.02
"""How often the run polls the sidecar's status for the commit point."""
COMMIT_INTERVAL = "100ms"
"""The runs are timed until the commit reaches the log end: with the default 1 s interval
their times would come in steps of a second (a 3 s run is 4 s when it just misses a tick)."""
AB_ORDER = ("at_least_once", "redis", "redis", "at_least_once", "at_least_once", "redis")
"""lowwater without and with Redis, alternated; the median of each is compared."""
RUN_DEADLINE_S = 900.0
"""A run that has not committed everything by then fails instead of hanging."""


def sidecar_args(tuning: dict[str, object], extra: list[str]) -> list[str]:
    out = list(extra)
    for key, value in tuning.items():
        out += ["--kafka", f"{key}={value}"]
    return out


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident set (or ``VmHWM``, its peak) in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


async def through_sidecar(target: str, n: int) -> float:
    """Seconds from the first handled record until all ``n`` are committed."""
    handled = 0
    first = asyncio.Event()

    async def handle(msg: lowwater.Message) -> None:
        nonlocal handled
        handled += 1
        if handled == 1:
            first.set()

    async with grpc.aio.insecure_channel(target) as channel, \
            lowwater.AsyncWorker(target, handle, max_in_flight=WORKER_IN_FLIGHT):
        admin = admin_pb2_grpc.AdminStub(channel)
        await first.wait()
        started = time.perf_counter()
        deadline = time.monotonic() + RUN_DEADLINE_S
        while True:
            st = await admin.GetStatus(admin_pb2.GetStatusRequest())
            if sum(max(p.committed_offset, 0) for p in st.partitions) >= n:
                return time.perf_counter() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {handled} of {n} handled after {RUN_DEADLINE_S:g}s")
            await asyncio.sleep(STATUS_POLL_S)


def idle_rss(bootstrap: str, extra: list[str]) -> int:
    """KiB of RSS of a sidecar assigned an empty topic: what holding nothing costs."""
    empty_topic = unique_name("bench-empty")
    create_topic(bootstrap, empty_topic, PARTITIONS)
    with SidecarProcess(bootstrap, unique_name("bench-idle"), [empty_topic], extra=extra) as idle:
        idle.wait_assigned(PARTITIONS)
        return rss_kib(idle.pid)


def wait_pending(sidecar: SidecarProcess, pending: int,
                 on_poll: Callable[[int], None] | None = None) -> int:
    """Waits until ``sidecar`` holds at least ``pending`` records pending; returns how many.
    ``on_poll(held)`` is called at every look, the last one included."""
    deadline = time.monotonic() + RUN_DEADLINE_S
    while True:
        held = sum(p.pending_count for p in sidecar.status().partitions)
        if on_poll is not None:
            on_poll(held)
        if held >= pending:
            return held
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {held} pending after {RUN_DEADLINE_S:g}s")
        time.sleep(0.1)


def pending_rss(bootstrap: str, topic: str, pending: int, extra: list[str]) -> tuple[int, float]:
    """(records held, KiB per pending record) with ``pending`` records fetched and unsettled."""
    args = extra + ["--max-pending-per-partition", str(pending // PARTITIONS)]
    baseline = idle_rss(bootstrap, args)
    with SidecarProcess(bootstrap, unique_name("bench-pending"), [topic], extra=args) as full:
        full.wait_assigned(PARTITIONS)
        held = wait_pending(full, pending)
        loaded = rss_kib(full.pid)
    return held, (loaded - baseline) / held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=DEFAULT_RECORDS, help="records per run")
    parser.add_argument("--pending", type=int, default=100_000,
                        help="pending records for the memory figure")
    args = parser.parse_args(argv)
    console = Console()
    extra = sidecar_args(CONSUMER_TUNING, ["--commit-interval", COMMIT_INTERVAL])
    with kafka() as bootstrap:
        topic = unique_name("bench")
        create_topic(bootstrap, topic, PARTITIONS)
        console.print(f"producing {args.n:,} records of 100 bytes to {PARTITIONS} partitions")
        _fill_with_progress(bootstrap, topic, args.n)

        console.print("1/3 ceiling: plain confluent-kafka consume(500)")
        ceiling = measure_consume(bootstrap, topic, args.n)

        console.print("2/3 lowwater: sidecar process -> one SDK AsyncWorker, until committed")
        redis_url, prefix = shared_redis_url(), unique_prefix()
        if (why := ping(redis_url)) is not None:
            raise SystemExit(f"Redis at {redis_url} does not answer ({why})")
        flags = {
            "at_least_once": ["--guarantee", "at_least_once"],
            "redis": ["--redis-url", redis_url, "--redis-prefix", prefix],
            "at_most_once": ["--guarantee", "at_most_once"],
        }
        # With and without Redis alternate (ABBAAB), the median of each compared: a 10%
        # budget is within one run's noise on a shared machine.
        order = [*AB_ORDER, "at_most_once"]
        runs: dict[str, list[float]] = {}
        peaks: dict[str, int] = {}
        try:
            for name in order:
                with SidecarProcess(bootstrap, unique_name("bench-lw"), [topic],
                                    extra=[*extra, *flags[name]]) as sc:
                    sc.wait_assigned(PARTITIONS)
                    rate = args.n / asyncio.run(through_sidecar(sc.target, args.n))
                    peaks[name] = max(peaks.get(name, 0), rss_kib(sc.pid, "VmHWM"))
                runs.setdefault(name, []).append(rate)
                console.print(f"    {name}: {rate:,.0f} rec/s")
        finally:
            delete_prefix(redis_url, prefix)
        rates = {name: statistics.median(values) for name, values in runs.items()}
        lw_rate, peak = rates["at_least_once"], peaks["at_least_once"]

        console.print(f"3/3 memory: {args.pending:,} records pending, no worker")
        held, per_pending = pending_rss(bootstrap, topic, args.pending, extra)

    table = Table(title=f"lowwater vs ceiling, N = {args.n:,}, one run, same broker",
                  title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("ceiling: raw consume(500)", f"{ceiling.per_second:,.0f} rec/s")
    table.add_row("lowwater: sidecar + SDK worker, to commit (median of 3)",
                  f"{lw_rate:,.0f} rec/s")
    table.add_row("ratio lowwater / ceiling (target >= 0.3)", f"{lw_rate / ceiling.per_second:.3f}")
    table.add_row("lowwater at_most_once, to commit", f"{rates['at_most_once']:,.0f} rec/s")
    table.add_row("ratio at_most_once / at_least_once",
                  f"{rates['at_most_once'] / lw_rate:.2f}")
    table.add_row("lowwater at_least_once + Redis pending sets (median of 3)",
                  f"{rates['redis']:,.0f} rec/s")
    table.add_row("ratio with Redis / without (target >= 0.9)", f"{rates['redis'] / lw_rate:.2f}")
    table.add_row("sidecar peak RSS", f"{peak / 1024:,.1f} MiB")
    table.add_row(f"RSS per pending record ({held:,} pending; target <= 1 KiB)",
                  f"{per_pending * 1024:,.0f} bytes")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
