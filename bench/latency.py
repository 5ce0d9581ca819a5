"""Benchmark section 3 (issue 9): latency from produce to handler start.

A producer in its own process writes 100-byte records at a steady rate; each record's value
starts with the wall-clock time (``time.time()``, a big-endian double) taken just before
``produce()``. The handler of one SDK AsyncWorker, behind a real sidecar, subtracts it from
its own ``time.time()`` when it starts. Runs at 1k and 10k records/s, for a few consumer
fetch settings (passed to the sidecar with ``--kafka``).

    .venv/bin/python bench/latency.py [--quick]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests.support` importable
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer

import lowwater
from bench.ceiling import CONSUME_BATCH, PARTITIONS, RECORD_BYTES
from bench.report import Context, Goal, Plot, Section, Series
from bench.sidecar import sidecar_args
from bench.standalone import main_for
from coordinator.config.model import DEFAULT_FETCH_WAIT_MAX_MS
from coordinator.embedded import SidecarProcess, create_topic, unique_name
from coordinator.kafka.fetcher import POLL_TIMEOUT, take_ready
from tests.support.broker import FAST_GROUP_CONFIG, NO_AUTO_CREATE

RATES = (1_000, 10_000)
"""Records per second produced."""
SECONDS = 10.0
"""How long each rate is produced (quick: QUICK_SECONDS)."""
QUICK_SECONDS = 3.0
WARMUP_S = 1.0
"""Records produced in the first second are not counted: the stream, the fetch sessions and
librdkafka's connections settle then."""
TICK_S = 0.001
"""The producer wakes this often and produces the records due by then."""
WORKER_IN_FLIGHT = 256
STAMP = struct.Struct(">d")
DRAIN_S = 10.0
"""How long after the producer stops every record must have been handled."""
GOAL_P99_MS = 20.0
JOIN_TIMEOUT_S = 30.0
UPSTREAM_BEHIND_MS = 1000.0
"""A plain consumer's p99 past this means the load itself was not delivered on time."""
LINGER_MS = 1
"""The producer's linger.ms: 0 sends every record in a request of its own, and at 10k/s Tansu
then falls seconds behind."""


@dataclass(frozen=True)
class FetchSetting:
    """One way to configure the sidecar's consumer for latency."""

    name: str
    kafka: dict[str, object]

    def flags(self) -> list[str]:
        return sidecar_args(self.kafka, [])

    def describe(self) -> str:
        return (", ".join(f"{k}={v}" for k, v in self.kafka.items())
                or f"lowwater's defaults (fetch.wait.max.ms={DEFAULT_FETCH_WAIT_MAX_MS})")


SETTINGS = (
    FetchSetting("defaults", {}),
    FetchSetting("short fetch wait", {"fetch.wait.max.ms": 5, "fetch.queue.backoff.ms": 10}),
)
"""lowwater's defaults (fetch.wait.max.ms=100, librdkafka's otherwise: fetch.queue.backoff.ms=1000),
and the fetch wait cut to 5 ms."""
QUICK_SETTINGS = SETTINGS[1:]


def produce_steady(bootstrap: str, topic: str, rate: int, seconds: float,
                   produced: Synchronized[int]) -> None:
    """Produce ``rate`` records/s for ``seconds`` (run in a child process), round-robin over
    the partitions, each stamped with the time just before ``produce()``."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": LINGER_MS, **NO_AUTO_CREATE})
    pad = b"x" * (RECORD_BYTES - STAMP.size)
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = min(int(elapsed * rate), round(seconds * rate))
        while sent < due:
            producer.produce(topic, STAMP.pack(time.time()) + pad, partition=sent % PARTITIONS)
            sent += 1
        producer.poll(0)
        time.sleep(TICK_S)
    if producer.flush(30) != 0:
        raise RuntimeError("records still undelivered 30 s after the last produce")
    produced.value = sent


@dataclass(frozen=True)
class Latencies:
    """Produce-to-handler-start latencies of the records of one run, in milliseconds."""

    setting: FetchSetting
    rate: int
    ms: Sequence[float]
    """Sorted."""
    consumer: str = "lowwater"
    """Who read the records: "lowwater" (sidecar and worker) or "raw consumer"."""

    def pct(self, q: float) -> float:
        return self.ms[min(len(self.ms) - 1, int(q / 100 * len(self.ms)))]


async def _drive(bootstrap: str, topic: str, rate: int, seconds: float,
                 seen: list[tuple[float, float]]) -> list[float]:
    """Produce at ``rate`` for ``seconds`` from a child process while the consumer under test
    appends (produced at, latency s) to ``seen``; the sorted latencies in ms after warm-up."""
    ctx = multiprocessing.get_context("spawn")
    produced = ctx.Value("q", -1)
    producer = ctx.Process(target=produce_steady, args=(bootstrap, topic, rate, seconds, produced))
    producer.start()
    try:
        while producer.is_alive():
            await asyncio.sleep(0.1)
        if producer.exitcode != 0 or produced.value < 0:
            raise RuntimeError(f"the producer failed (exit code {producer.exitcode})")
        deadline = time.monotonic() + DRAIN_S
        while len(seen) < produced.value:
            if time.monotonic() > deadline:
                raise TimeoutError(f"handled {len(seen)} of {produced.value} records")
            await asyncio.sleep(0.05)
    finally:
        producer.join(5)
        if producer.is_alive():
            producer.kill()
    begin = min(stamp for stamp, _ in seen) + WARMUP_S
    return sorted(lat * 1000 for stamp, lat in seen if stamp >= begin)


def _latency(value: bytes | None) -> tuple[float, float]:
    now = time.time()
    stamp: float = STAMP.unpack_from(value or b"")[0]
    return stamp, now - stamp


async def _through_sidecar(target: str, bootstrap: str, topic: str, rate: int,
                           seconds: float) -> list[float]:
    seen: list[tuple[float, float]] = []

    async def handle(msg: lowwater.Message) -> None:
        seen.append(_latency(msg.value))

    async with lowwater.AsyncWorker(target, handle, max_in_flight=WORKER_IN_FLIGHT):
        return await _drive(bootstrap, topic, rate, seconds, seen)


def measure(bootstrap: str, setting: FetchSetting, rate: int, seconds: float) -> Latencies:
    """One run: a fresh topic, sidecar and group; ``rate`` records/s for ``seconds``."""
    topic = unique_name("bench-latency")
    create_topic(bootstrap, topic, PARTITIONS)
    with SidecarProcess(bootstrap, unique_name("bench-lat"), [topic],
                        extra=setting.flags()) as sc:
        sc.wait_assigned(PARTITIONS)
        ms = asyncio.run(_through_sidecar(sc.target, bootstrap, topic, rate, seconds))
    return Latencies(setting, rate, ms)


def measure_raw(bootstrap: str, setting: FetchSetting, rate: int, seconds: float) -> Latencies:
    """The same load read by a plain confluent-kafka consumer on a thread of this process,
    with the sidecar's settings and its fetcher's ``take_ready``: the part of the latency
    that is the broker's, the producer's and librdkafka's, without lowwater."""
    topic = unique_name("bench-latency-raw")
    create_topic(bootstrap, topic, PARTITIONS)
    seen: list[tuple[float, float]] = []
    stop, ready = threading.Event(), threading.Event()
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": unique_name("bench-lat-raw"),
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "fetch.wait.max.ms": DEFAULT_FETCH_WAIT_MAX_MS, **FAST_GROUP_CONFIG, **setting.kafka,
    })

    def read() -> None:
        while not stop.is_set():
            # CONSUME_BATCH is the sidecar's default fetch_batch_size too
            for msg in take_ready(consumer, CONSUME_BATCH, POLL_TIMEOUT):
                if msg.error() is None:
                    seen.append(_latency(msg.value()))
            if consumer.assignment():
                ready.set()

    consumer.subscribe([topic])
    reader = threading.Thread(target=read, name="raw-latency-consumer")
    reader.start()
    try:
        if not ready.wait(JOIN_TIMEOUT_S):
            raise TimeoutError(f"no partitions assigned after {JOIN_TIMEOUT_S:g} s")
        ms = asyncio.run(_drive(bootstrap, topic, rate, seconds, seen))
    finally:
        stop.set()
        reader.join()
        consumer.close()
    return Latencies(setting, rate, ms, "raw consumer")


def _cdf(run: Latencies, points: int = 200) -> Series:
    qs = [i / points for i in range(points + 1)]
    return Series(f"{run.consumer}, {run.rate:,}/s, {run.setting.name}",
                  [run.ms[min(len(run.ms) - 1, int(q * len(run.ms)))] for q in qs], qs)


def run(ctx: Context) -> Section:
    settings = QUICK_SETTINGS if ctx.quick else SETTINGS
    seconds = QUICK_SECONDS if ctx.quick else SECONDS
    runs: list[Latencies] = []
    for setting in settings:
        for rate in RATES:
            for how in (measure, measure_raw):
                ctx.console.print(f"latency: {rate:,} records/s for {seconds:g} s, "
                                  f"{setting.name}, {how.__name__}")
                runs.append(how(ctx.bootstrap, setting, rate, seconds))
                r = runs[-1]
                ctx.console.print(f"    p50 {r.pct(50):.1f} ms, p99 {r.pct(99):.1f} ms")
    rows = [[r.setting.name, f"{r.rate:,}", r.consumer, f"{len(r.ms):,}", f"{r.pct(50):.1f}",
             f"{r.pct(99):.1f}", f"{r.ms[-1]:.1f}"] for r in runs]
    lowwater_runs = [r for r in runs if r.consumer == "lowwater"]
    at_1k = [r for r in lowwater_runs if r.rate == 1_000]
    best = min(at_1k, key=lambda r: r.pct(99))
    goals = [Goal(f"p99 <= {GOAL_P99_MS:g} ms at 1,000 records/s",
                  f"{best.pct(99):.1f} ms ({best.setting.name})",
                  best.pct(99) <= GOAL_P99_MS)]
    notes = [
        "Settings tried: " + "; ".join(f"{s.name}: {s.describe()}" for s in settings) + ". "
        "The sidecar's fetcher takes what librdkafka has ready (consume(500, 0)) or else "
        "waits for the first record only (consume(1, 20 ms)) and takes what came with it. "
        "It used to call consume(500, 20 ms), which returns early only when 500 records are "
        "ready: below that rate every record waited out the rest of the 20 ms (the previous "
        "full run: p50 35.0 ms, p99 158.4 ms at 1,000 records/s with the short fetch wait; "
        "18.2 and 71.2 ms with --fetch-batch-size 1).",
        (f"The broker is {ctx.broker}: Tansu answers fetches differently from Apache Kafka "
        "(how long it holds a fetch at the log end is its own), so the defaults' figures in "
        "particular may differ on a real Kafka. The producer runs in its own process with "
        f"linger.ms={LINGER_MS} and the stamp is taken just before produce(), so the figures "
        "include the linger, the "
        "producer's send and the broker's write as well as the fetch, the sidecar and the "
        f"gRPC stream. Records of the first {WARMUP_S:g} s are not counted."),
    ]
    for r in lowwater_runs:
        if r.setting != best.setting:
            continue
        raw = next(x for x in runs if x.consumer != "lowwater" and x.setting == r.setting
                   and x.rate == r.rate)
        said = (f"At {r.rate:,} records/s with {r.setting.name}: lowwater p50 {r.pct(50):.1f} "
                f"ms, p99 {r.pct(99):.1f} ms; a plain consumer reading the same load the same "
                f"way, p50 {raw.pct(50):.1f} ms, p99 {raw.pct(99):.1f} ms. ")
        if raw.pct(99) >= UPSTREAM_BEHIND_MS:
            said += ("The plain consumer falls as far behind, so at this rate the bound is "
                     "upstream of lowwater: the producer process and Tansu, on the same two "
                     "cores as everything else, do not keep up with the steady rate.")
        else:
            said += (f"The difference ({r.pct(50) - raw.pct(50):.1f} ms at p50, "
                     f"{r.pct(99) - raw.pct(99):.1f} ms at p99) is lowwater's: the fetcher "
                     "thread's hand-off to the sidecar's event loop, the ledger, the gRPC stream "
                     "and the worker's loop; the rest is the producer, Tansu and librdkafka's "
                     "fetch. Repeated runs of this point vary by several times at p99 on this "
                     "shared 2-core machine.")
        notes.append(said)
    if not goals[0].met:
        plain = next(x for x in runs if x.consumer != "lowwater"
                     and x.setting == best.setting and x.rate == best.rate)
        said = (f"Short of the goal: the best p99 at 1,000 records/s is {best.pct(99):.1f} ms "
                f"({best.setting.name}).")
        if plain.pct(99) > GOAL_P99_MS:
            said += (f" The plain consumer's p99 on the same load was {plain.pct(99):.1f} ms, "
                     "itself past the goal: what bounds it here is upstream of lowwater, the "
                     "producer's process and Tansu sharing two cores with the sidecar and the "
                     "worker.")
        notes.append(said)
    plot = Plot(
        name="bench-latency",
        title="Produce to handler start",
        x_label="milliseconds",
        y_label="fraction of records",
        series=[*(_cdf(r) for r in lowwater_runs),
                *(_cdf(r) for r in runs if r.consumer != "lowwater" and r.setting == best.setting)],
        log_x=True,
    )
    return Section(
        title="3. Latency",
        setup=(
            f"A producer process writes {RECORD_BYTES}-byte records round-robin to "
            f"{PARTITIONS} partitions of {ctx.broker} at a steady 1,000 and 10,000 records/s "
            f"for {seconds:g} s each, the wall-clock time in the value; one sidecar (fresh "
            f"topic and group per run) and one AsyncWorker (max_in_flight {WORKER_IN_FLIGHT}) "
            f"measure produce to handler start."
        ),
        headers=["fetch setting", "records/s", "read by", "records", "p50 ms", "p99 ms",
                 "max ms"],
        rows=rows,
        goals=goals,
        notes=notes,
        plots=[plot],
    )


if __name__ == "__main__":
    sys.exit(main_for(run))
