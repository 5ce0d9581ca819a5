"""Section 4, scale: how the cost per record, the memory and a restart grow with what is pending.

1. The ledger's cost per record, alone (no Kafka, no gRPC: the pure core that every record
   goes through on the sidecar's event loop), as partitions go from 1 to 256 and pending
   records from 1,000 to 1,000,000. The ledger holds ``pending`` records, all leased to one
   holder; each round settles 500 of the oldest out of order (every other one of the oldest
   1,000, alternating, so gaps stay open for a round below settled records), fetches 500 new
   ones round-robin over the partitions and leases them, so that the pending count stays put.
   Commit points are taken every 10,000 records, as a commit interval would. The issue asks
   for O(log n) or better: over a 1,000-fold range that allows the cost to grow by
   log(1M) / log(1k) = 2.
2. Memory per pending record: a real sidecar (``lowwater serve``) holding 100,000 (quick) or
   1,000,000 records fetched and unsettled (no worker; ``--max-pending-per-partition`` stops
   the fetch), its RSS against an idle sidecar's (``bench/sidecar.py``).
3. Restart and resume with that many pending: the holding sidecar is stopped (SIGTERM) or
   killed (SIGKILL) and a new one started in its group; the times until it is SERVING, until
   it is assigned, until a worker gets its first record and until it holds them all pending
   again.

Alone it runs part 1 only (no broker), as ``bench/ledger.py`` did before it:

    .venv/bin/python bench/scale.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import statistics
import sys
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer
from rich.console import Console
from rich.table import Table

from bench.ceiling import CONSUMER_TUNING, _fill_with_progress
from bench.ceiling import PARTITIONS as TOPIC_PARTITIONS
from bench.report import Context, Goal, Plot, Section, Series
from bench.sidecar import idle_rss, rss_kib, rss_slope, sidecar_args, wait_pending
from bench.sizing import chart_resources, quantity
from coordinator.config.model import Settings
from coordinator.core.ledger import Ledger
from coordinator.core.model import TopicPartition
from coordinator.embedded import SidecarProcess, create_topic, unique_name
from coordinator.kafka.records import Segment, segments

PARTITIONS = (1, 4, 16, 64, 256)
PENDING = (1_000, 10_000, 100_000, 1_000_000)
QUICK_PARTITIONS = (1, 16, 256)
QUICK_PENDING = (1_000, 10_000, 100_000)
RECORDS = 150_000
"""Records timed per cell, in three chunks of which the least costly counts."""
QUICK_RECORDS = 30_000
BATCH = 500
"""Records settled, fetched and leased per round (the fetcher's consume batch)."""
COMMIT_EVERY = 10_000
"""Records between two ``commit_points()`` calls."""
CHUNKS = 3

SIDECAR_PENDING = 1_000_000
QUICK_SIDECAR_PENDING = 100_000
MEMORY_GOAL_BYTES = 500
PROBED = 50_000
"""Records held to weigh a record's payload and a ledger record with tracemalloc."""
RESTART_DEADLINE_S = 600.0
"""How long one step of a restart may take before the section fails instead of hanging."""


# --- 1. the ledger alone ---------------------------------------------------------------------


def ledger_cost(partitions: int, pending: int, records: int, chunks: int = CHUNKS) -> float:
    """Microseconds per record through settle (out of order), fetch, lease and commit, with
    ``pending`` records pending over ``partitions`` partitions: the least of ``chunks`` timed
    chunks of ``records / chunks`` records each (the one least disturbed by other processes;
    each chunk spans many cyclic garbage collections)."""
    if pending < 2 * BATCH:
        raise ValueError(f"pending must be at least {2 * BATCH}")
    led = Ledger(max_pending_per_partition=10**9)
    tps = [TopicPartition("t", p) for p in range(partitions)]
    for generation, tp in enumerate(tps, start=1):
        led.assign(tp, 0, generation)
    parts = [led.partitions[tp] for tp in tps]
    holder = led.open_holder("stream-1", "w", pending)
    offsets = [0] * partitions
    turn = 0

    def fetch(count: int) -> None:  # round-robin over the partitions, as a fetch would spread
        nonlocal turn
        add_to = led.add_to
        for _ in range(count):
            i = turn
            add_to(parts[i], offsets[i], 100, None, 0.0)
            offsets[i] += 1
            turn = i + 1 if i + 1 < partitions else 0

    fetch(pending)
    outstanding = deque(lease.msg_id for lease in led.lease(holder, 0.0, pending))
    assert len(outstanding) == pending
    rounds = 0
    per_chunk = max(BATCH, records // chunks)
    costs = []
    for _ in range(chunks):
        done = 0
        started = time.perf_counter()
        while done < per_chunk:
            window = [outstanding.popleft() for _ in range(2 * BATCH)]
            parity = rounds & 1
            led.ack_many(holder, window[1 - parity::2])
            outstanding.extendleft(reversed(window[parity::2]))
            fetch(BATCH)
            outstanding.extend(lease.msg_id for lease in led.lease(holder, 0.0, BATCH))
            done += BATCH
            rounds += 1
            if rounds * BATCH % COMMIT_EVERY == 0:
                led.commit_points()
        costs.append((time.perf_counter() - started) / done * 1e6)
    assert sum(len(p.offsets) for p in parts) == pending
    return min(costs)


@dataclass(frozen=True)
class Grid:
    """Cost per record (us) by partitions (rows) and pending (columns)."""

    partitions: Sequence[int]
    pending: Sequence[int]
    cost: dict[tuple[int, int], float]

    def growth_with_pending(self) -> tuple[float, int]:
        """The largest cost(most pending) / cost(least pending) over the rows, and its row."""
        lo, hi = self.pending[0], self.pending[-1]
        return max((self.cost[p, hi] / self.cost[p, lo], p) for p in self.partitions)

    def growth_with_partitions(self) -> tuple[float, int]:
        """The largest cost(most partitions) / cost(one partition) over the columns."""
        lo, hi = self.partitions[0], self.partitions[-1]
        return max((self.cost[hi, n] / self.cost[lo, n], n) for n in self.pending)

    def corners(self) -> float:
        """cost(most partitions, most pending) / cost(fewest, least)."""
        return (self.cost[self.partitions[-1], self.pending[-1]]
                / self.cost[self.partitions[0], self.pending[0]])


def measure_grid(partitions: Sequence[int], pending: Sequence[int], records: int,
                 on_cell: Callable[[int, int, float], None] | None = None) -> Grid:
    cost = {}
    for p in partitions:
        for n in pending:
            cost[p, n] = ledger_cost(p, n, records)
            if on_cell is not None:
                on_cell(p, n, cost[p, n])
    return Grid(partitions, pending, cost)


def without_gc(pending: Sequence[int], records: int) -> dict[int, float]:
    """One partition's row again with Python's cyclic garbage collector off: its share of the
    cost (the sidecar runs with it on)."""
    gc.disable()
    try:
        return {n: ledger_cost(1, n, records) for n in pending}
    finally:
        gc.enable()


def ledger_bytes(pending: int) -> float:
    """Python heap bytes per record the ledger holds (fetched, not leased; no payload)."""
    led = Ledger(max_pending_per_partition=10**9)
    tps = [TopicPartition("t", p) for p in range(TOPIC_PARTITIONS)]
    for generation, tp in enumerate(tps, start=1):
        led.assign(tp, 0, generation)
    parts = [led.partitions[tp] for tp in tps]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for offset in range(pending // TOPIC_PARTITIONS):
            for part in parts:
                led.add_to(part, offset, 100, None, 0.0)
        return (tracemalloc.get_traced_memory()[0] - before) / pending
    finally:
        tracemalloc.stop()


def payload_bytes(bootstrap: str, topic: str, count: int) -> float:
    """Python heap bytes per fetched record's payload held (key, value, headers, timestamp,
    offset and size, in the column segments the consumer thread makes; the confluent-kafka
    ``Message`` let go), as the sidecar holds each pending record's."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("bench-msg"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    held: list[Segment] = []

    def fetch() -> int:
        """Holds one consume()'s records as segments; returns how many."""
        got = segments(consumer.consume(500, timeout=1.0))
        held.extend(got)
        return sum(len(seg.offsets) for seg in got)

    try:
        consumer.subscribe([topic])
        while not fetch():  # the group join and the first fetch are not counted
            pass
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            deadline = time.monotonic() + RESTART_DEADLINE_S
            taken = 0
            while taken < count and time.monotonic() < deadline:
                taken += fetch()
            return (tracemalloc.get_traced_memory()[0] - before) / taken
        finally:
            tracemalloc.stop()
    finally:
        consumer.close()


def log_bound(pending: Sequence[int]) -> float:
    """How much O(log n) lets the cost grow from the least to the most pending."""
    return math.log(pending[-1]) / math.log(pending[0])


# --- 2 and 3. a real sidecar holding them ------------------------------------------------


class HoldingWorker:
    """One SDK ``AsyncWorker`` on a thread of its own that takes one record and holds it until
    :meth:`stop`: it tells when the first record arrives and leaves the rest pending."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.first = threading.Event()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="holding-worker", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import lowwater

        self._loop, self._release = asyncio.get_running_loop(), asyncio.Event()
        release = self._release
        self._ready.set()

        async def hold(msg: lowwater.Message) -> None:
            self.first.set()
            await release.wait()

        async with lowwater.AsyncWorker(self.target, hold, max_in_flight=1,
                                       shutdown_timeout=timedelta(seconds=5)):
            await release.wait()

    def start(self) -> HoldingWorker:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)
        self._thread.join(30)


@dataclass(frozen=True)
class Resume:
    """Seconds from a new sidecar's start until each step of taking over."""

    serving: float
    assigned: float
    first_record: float
    all_pending: float

    def sentence(self, pending: int) -> str:
        return (f"SERVING after {self.serving:.1f} s, assigned after {self.assigned:.1f} s, "
                f"its worker had a first record after {self.first_record:.1f} s, and it held "
                f"all {pending:,} pending again after {self.all_pending:.1f} s")


def resume(stack: ExitStack, bootstrap: str, group: str, topic: str, args: list[str],
           pending: int) -> tuple[Resume, SidecarProcess]:
    """Starts a sidecar in ``group`` and times it until it holds ``pending`` records again,
    with a worker (started once it is SERVING) holding the first; returns the times and the
    sidecar, still running (``stack`` stops it)."""
    sc = SidecarProcess(bootstrap, group, [topic], extra=args)
    stack.push(sc)
    started = time.perf_counter()
    sc.start(wait_serving=False)
    sc.wait_serving()
    serving = time.perf_counter() - started
    worker = HoldingWorker(sc.target).start()
    try:
        sc.wait_assigned(TOPIC_PARTITIONS, timeout=RESTART_DEADLINE_S)
        assigned = time.perf_counter() - started
        if not worker.first.wait(RESTART_DEADLINE_S):
            raise TimeoutError(f"no record reached the worker in {RESTART_DEADLINE_S:g}s")
        first = time.perf_counter() - started
        wait_pending(sc, pending)
        full = time.perf_counter() - started
    finally:
        worker.stop()
    return Resume(serving, assigned, first, full), sc


@dataclass(frozen=True)
class Held:
    """A sidecar holding ``pending`` records, and what came of stopping and replacing it."""

    pending: int
    fill_s: float
    idle_kib: int
    loaded_kib: int
    curve: Sequence[tuple[int, int]]
    """(records pending, RSS KiB) while the first sidecar filled up."""
    stop_s: float
    after_stop: Resume
    after_kill: Resume
    payload_bytes: float
    ledger_bytes: float

    @property
    def gross_bytes(self) -> float:
        """RSS over an idle sidecar's, per pending record: fixed buffers included."""
        return (self.loaded_kib - self.idle_kib) * 1024 / self.pending

    @property
    def marginal_bytes(self) -> float:
        """What one more pending record costs: the slope of RSS against pending records while
        the sidecar filled, past the first fifth (librdkafka's fetch queue fills first)."""
        slope = rss_slope(self.curve, self.pending)
        return self.gross_bytes if slope is None else slope

    @property
    def fixed_kib(self) -> float:
        """What holding records cost besides their marginal bytes (fetch queue, arenas)."""
        return max(0.0, self.loaded_kib - self.idle_kib - self.marginal_bytes * self.pending / 1024)


def hold_and_restart(ctx: Context, pending: int) -> Held:
    """Fills a topic, has a sidecar hold ``pending`` of it, measures its RSS, stops it and times
    a successor; then kills that one and times another."""
    topic = unique_name("bench-scale")
    create_topic(ctx.bootstrap, topic, TOPIC_PARTITIONS)
    ctx.console.print(f"  producing {pending:,} records of 100 bytes", highlight=False)
    _fill_with_progress(ctx.bootstrap, topic, pending)
    args = sidecar_args(CONSUMER_TUNING, [
        "--max-pending-per-partition", str(pending // TOPIC_PARTITIONS)])
    idle = idle_rss(ctx.bootstrap, args)
    group = unique_name("bench-scale")
    with ExitStack() as stack:
        first = SidecarProcess(ctx.bootstrap, group, [topic], extra=args)
        stack.push(first)
        started = time.perf_counter()
        first.start()
        first.wait_assigned(TOPIC_PARTITIONS)
        curve: list[tuple[int, int]] = []
        held = wait_pending(first, pending, lambda n: curve.append((n, rss_kib(first.pid))))
        fill_s = time.perf_counter() - started
        loaded = rss_kib(first.pid)
        ctx.console.print(f"  holding {held:,} pending after {fill_s:.1f} s, RSS "
                          f"{loaded / 1024:,.0f} MiB (idle {idle / 1024:,.0f} MiB)",
                          highlight=False)
        started = time.perf_counter()
        first.stop()
        stop_s = time.perf_counter() - started
        after_stop, second = resume(stack, ctx.bootstrap, group, topic, args, pending)
        ctx.console.print(f"  after SIGTERM ({stop_s:.1f} s): {after_stop.sentence(pending)}",
                          highlight=False)
        second.kill()
        after_kill, _ = resume(stack, ctx.bootstrap, group, topic, args, pending)
        ctx.console.print(f"  after SIGKILL: {after_kill.sentence(pending)}", highlight=False)
    probed = min(PROBED, pending)
    weighed = payload_bytes(ctx.bootstrap, topic, probed), ledger_bytes(probed)
    ctx.console.print(f"  tracemalloc: {weighed[0]:,.0f} bytes per payload held, "
                      f"{weighed[1]:,.0f} per ledger record", highlight=False)
    return Held(held, fill_s, idle, loaded, curve, stop_s, after_stop, after_kill, *weighed)


# --- the section -----------------------------------------------------------------------------


def _cell_printer(console: Console) -> Callable[[int, int, float], None]:
    def show(partitions: int, pending: int, cost: float) -> None:
        console.print(f"  {partitions} partition(s), {pending:,} pending: {cost:.2f} us/record",
                      highlight=False)
    return show


def grid_table(grid: Grid) -> tuple[list[str], list[list[str]]]:
    headers = ["partitions", *(f"{n:,} pending" for n in grid.pending)]
    rows = [[str(p), *(f"{grid.cost[p, n]:.2f}" for n in grid.pending)] for p in grid.partitions]
    return headers, rows


def run(ctx: Context) -> Section:
    partitions = QUICK_PARTITIONS if ctx.quick else PARTITIONS
    pending = QUICK_PENDING if ctx.quick else PENDING
    records = QUICK_RECORDS if ctx.quick else RECORDS
    ctx.console.print("4a ledger alone: cost per record by partitions and pending")
    grid = measure_grid(partitions, pending, records, _cell_printer(ctx.console))
    no_gc = without_gc(pending, records)
    ctx.console.print("  1 partition, cyclic GC off: " + ", ".join(
        f"{no_gc[n]:.2f}" for n in pending) + " us/record", highlight=False)
    held_target = QUICK_SIDECAR_PENDING if ctx.quick else SIDECAR_PENDING
    ctx.console.print(f"4b sidecar holding {held_target:,} pending: memory, stop, restart")
    held = hold_and_restart(ctx, held_target)

    bound = log_bound(pending)
    growth_n, at_p = grid.growth_with_pending()
    growth_p, at_n = grid.growth_with_partitions()
    corners = grid.corners()
    lo_p, hi_p, lo_n, hi_n = partitions[0], partitions[-1], pending[0], pending[-1]
    headers, rows = grid_table(grid)
    rows.append(["1, cyclic GC off", *(f"{no_gc[n]:.2f}" for n in pending)])
    gc_share = statistics.mean(1 - no_gc[n] / grid.cost[lo_p, n] for n in pending)
    per_pending = held.marginal_bytes
    limit = quantity(chart_resources().get("limits.memory", "0"))
    cap = Settings.model_fields["max_pending_per_partition"].default
    room = (limit * 1024 - held.idle_kib - held.fixed_kib) * 1024
    fits = max(0.0, room) / max(per_pending, 1.0)
    return Section(
        title="4. Scale",
        setup=(
            f"The ledger alone (no Kafka, no gRPC; one process, one thread): microseconds of "
            f"CPU per record through a settlement, a fetch, a lease and a share of a commit, "
            f"with a steady {lo_n:,} to {hi_n:,} records pending over {lo_p} to {hi_p} "
            f"partitions, all leased to one holder. Each round settles {BATCH} of the oldest "
            f"{2 * BATCH} out of order (every other one, alternating, so gaps stay open below "
            f"settled records for a round), fetches {BATCH} new records round-robin over the "
            f"partitions and leases them; commit points are taken every {COMMIT_EVERY:,} "
            f"records. Each cell is the least of {CHUNKS} chunks of "
            f"{records // CHUNKS:,} records; the harness's own loop is included. Then a real "
            f"sidecar (`lowwater serve`, {TOPIC_PARTITIONS} partitions, no worker) holds "
            f"{held.pending:,} records pending, stopped by `--max-pending-per-partition`, for "
            f"its RSS as it fills (the slope is the memory per pending record) and against an "
            f"idle sidecar's, and is replaced in its group twice: after a "
            f"SIGTERM and after a SIGKILL."),
        headers=headers,
        rows=rows,
        goals=[
            Goal(f"O(log n) or better: cost per record at ({hi_p} partitions, {hi_n:,} "
                 f"pending) / at ({lo_p} partition, {lo_n:,} pending) <= log({hi_n:,}) / "
                 f"log({lo_n:,}) = {bound:.2f}", f"{corners:.2f}", corners <= bound),
            Goal(f"memory per pending record <= {MEMORY_GOAL_BYTES} bytes (slope of the "
                 f"sidecar's RSS while it filled to {held.pending:,} pending)",
                 f"{per_pending:,.0f} bytes",
                 per_pending <= MEMORY_GOAL_BYTES),
        ],
        notes=[
            (f"Along one axis at a time: from {lo_n:,} to {hi_n:,} pending the cost grows at "
            f"most {growth_n:.2f}x (at {at_p} partition(s)); from {lo_p} to {hi_p} partitions "
            f"at most {growth_p:.2f}x (at {at_n:,} pending). Every step of the ledger is O(1) "
            f"amortized (dicts and queues in fetch order); what growth there is comes from the "
            f"memory hierarchy: the more records pending, the less of them fits in the CPU's "
            f"caches, and the likelier each touch of a record is a cache miss. The last row "
            f"runs the first again with Python's cyclic garbage collector off: it takes about "
            f"{gc_share:.0%} of the cost per record (the sidecar runs with it on; every record "
            f"allocates a few objects that live until it is settled, and the collector traces "
            f"each of them a few times as they age)."),
            (f"Memory: the sidecar held {held.pending:,} records pending after "
            f"{held.fill_s:.1f} s. While it filled, its RSS grew {per_pending:,.0f} bytes per "
            f"pending record (the 100-byte value and what else a delivery needs included); at "
            f"the end it was {held.loaded_kib / 1024:,.0f} MiB against "
            f"{held.idle_kib / 1024:,.0f} MiB idle, {held.gross_bytes:,.0f} bytes per pending "
            f"record, which also counts about {held.fixed_kib / 1024:,.0f} MiB of fixed costs, "
            f"chiefly librdkafka's fetch queue (up to 64 MiB by default, whatever the number of "
            f"partitions). Weighed with tracemalloc on {min(PROBED, held.pending):,} records, "
            f"a record's payload (key, value, headers, timestamp, offset and size, in the "
            f"column segments the consumer thread reads them into; the confluent-kafka Message "
            f"is not kept) is "
            f"{held.payload_bytes:,.0f} bytes of Python heap and the ledger's own record "
            f"{held.ledger_bytes:,.0f}. "
            f"So the Helm chart's sidecar memory limit ({limit:,.0f} MiB) holds "
            f"about {fits:,.0f} pending records: with the default cap "
            f"of {cap:,} per partition, a sidecar whose worker falls behind stays within it up "
            f"to about {fits / cap:,.0f} partitions."),
            (f"Restart with {held.pending:,} pending. A SIGTERM stopped the holding sidecar in "
            f"{held.stop_s:.1f} s (nothing was leased, so there was nothing to drain); the "
            f"new sidecar in its group was {held.after_stop.sentence(held.pending)}. After a "
            f"SIGKILL of that one, the next was {held.after_kill.sentence(held.pending)}: the "
            f"group waits for the killed member's session to time out (6 s here) before it "
            f"assigns its partitions. Nothing is rebuilt at start-up: the pending set is "
            f"simply fetched again from the committed offsets."),
        ],
        plots=[
            Plot(
                name="bench-scale-ledger",
                title="Ledger cost per record as pending records grow",
                x_label="records pending", y_label="us per record",
                series=[Series(f"{p} partition(s)", list(pending),
                               [grid.cost[p, n] for n in pending]) for p in partitions],
                log_x=True),
            Plot(
                name="bench-scale-memory",
                title=f"Sidecar RSS while it fills to {held.pending:,} pending",
                x_label="records pending", y_label="RSS (MiB)",
                series=[Series("lowwater serve", [n for n, _ in held.curve],
                               [kib / 1024 for _, kib in held.curve])]),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    """Part 1 alone: the ledger's cost per record, no broker."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cells, fewer records")
    args = parser.parse_args(argv)
    console = Console()
    partitions = QUICK_PARTITIONS if args.quick else PARTITIONS
    pending = QUICK_PENDING if args.quick else PENDING
    records = QUICK_RECORDS if args.quick else RECORDS
    grid = measure_grid(partitions, pending, records, _cell_printer(console))
    headers, rows = grid_table(grid)
    table = Table(title="ledger cost per record, us", title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"growth with pending: {grid.growth_with_pending()[0]:.2f}x "
                  f"(O(log n) allows {log_bound(pending):.2f}x); corner to corner: "
                  f"{grid.corners():.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
