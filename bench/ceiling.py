"""The ceiling: how fast one plain confluent-kafka consumer reads a topic, with no sidecar.

Starts Tansu (or uses LOWWATER_TEST_BOOTSTRAP), creates a 4-partition topic, produces N
100-byte records, then reads all of them with `consume(500)` in a fresh group and prints the
rate from the first record to the last. The sidecar benchmark compares against this number.
The consumer uses FAST_GROUP_CONFIG and CONSUMER_TUNING, and librdkafka's defaults otherwise.

    .venv/bin/python bench/ceiling.py [--n 500000] [--runs 1] [--librdkafka-defaults]

`fill_topic` and `measure_consume` are importable (`from bench.ceiling import ...` from the
repository root) for the full benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, KafkaException
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from tests.support.broker import (
    FAST_GROUP_CONFIG,
    OutRecord,
    TansuBroker,
    create_topic,
    external_bootstrap,
    produce,
    unique_name,
)

DEFAULT_RECORDS = 500_000
"""Records produced and consumed by default."""

RECORD_BYTES = 100
"""Size of each record's value."""

PARTITIONS = 4
"""Partitions of the benchmark topic; records are spread round-robin over them."""

CONSUME_BATCH = 500
"""Records asked for per `consume()` call, as the sidecar's fetcher does."""

CONSUME_WAIT_S = 1.0
"""Longest wait of one `consume()` call."""

CONSUME_DEADLINE_S = 600.0
"""A run that has not read every record by then fails instead of hanging."""

CONSUMER_TUNING: dict[str, object] = {"fetch.queue.backoff.ms": 10}
"""Cut librdkafka's 1 s fetch pause when its local queue passes queued.min.messages: Tansu
answers one fetch with ~5 MB per partition, the queue overshoots, and a fast reader then idles
for the rest of the second (0-2 such stalls per 500k records). --librdkafka-defaults drops it."""


@dataclass(frozen=True)
class ConsumeRate:
    """One measured read of a topic."""

    records: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Records per second."""
        return self.records / self.seconds if self.seconds > 0 else float("inf")


def filler(n: int, size: int = RECORD_BYTES, partitions: int = PARTITIONS) -> Iterator[OutRecord]:
    """`n` records of `size` bytes, round-robin over `partitions` (no keys)."""
    payload = b"x" * size
    for i in range(n):
        yield OutRecord(value=payload, partition=i % partitions)


def fill_topic(
    bootstrap: str,
    topic: str,
    n: int,
    *,
    partitions: int = PARTITIONS,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Produce `n` filler records round-robin to `topic`'s first `partitions` partitions and wait
    for every delivery report."""
    result = produce(bootstrap, topic, filler(n, partitions=partitions), keep=False,
                     on_progress=on_progress)
    assert result.count == n, f"produced {result.count} of {n}"


def measure_consume(
    bootstrap: str,
    topic: str,
    n: int,
    *,
    batch: int = CONSUME_BATCH,
    tuning: Mapping[str, object] = CONSUMER_TUNING,
) -> ConsumeRate:
    """Read `n` records of `topic` with one consumer in a fresh group, `consume(batch)` at a time.

    The clock runs from the first batch's arrival to the last record's, so the group join is
    not counted; the first batch's records are not counted either.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("ceiling"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST_GROUP_CONFIG,
            **tuning,
        }
    )
    try:
        consumer.subscribe([topic])
        return _timed_read(consumer, n, batch)
    finally:
        consumer.close()


def _timed_read(consumer: Consumer, n: int, batch: int) -> ConsumeRate:
    """Consume until `n` records have arrived; time them from the first batch."""
    seen, first_batch, started = 0, 0, 0.0
    give_up = time.monotonic() + CONSUME_DEADLINE_S
    while seen < n:
        if time.monotonic() > give_up:
            raise TimeoutError(f"read {seen} of {n} records in {CONSUME_DEADLINE_S:g}s")
        messages = consumer.consume(batch, timeout=CONSUME_WAIT_S)
        for msg in messages:
            if msg.error() is not None:
                raise KafkaException(msg.error())
        if messages and not seen:
            started, first_batch = time.perf_counter(), len(messages)
        seen += len(messages)
    return ConsumeRate(seen - first_batch, time.perf_counter() - started)


@contextmanager
def kafka() -> Iterator[str]:
    """Bootstrap servers of LOWWATER_TEST_BOOTSTRAP, or of a Tansu started for the run."""
    target = external_bootstrap()
    if target is not None:
        yield target
        return
    with TansuBroker() as broker:
        yield broker.bootstrap_servers


def _fill_with_progress(bootstrap: str, topic: str, n: int) -> float:
    """`fill_topic` with a progress bar; returns the seconds it took."""
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress("producing", *columns, transient=True) as progress:
        task = progress.add_task("produce", total=n)
        started = time.perf_counter()
        fill_topic(
            bootstrap, topic, n, on_progress=lambda done: progress.update(task, completed=done)
        )
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the ceiling benchmark and print records/s."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=DEFAULT_RECORDS, help="records to produce")
    parser.add_argument("--runs", type=int, default=1, help="consume runs (fresh group each)")
    parser.add_argument(
        "--librdkafka-defaults", action="store_true", help="consume without CONSUMER_TUNING"
    )
    args = parser.parse_args(argv)

    with kafka() as bootstrap:
        topic = unique_name("ceiling")
        create_topic(bootstrap, topic, PARTITIONS)
        took = _fill_with_progress(bootstrap, topic, args.n)
        print(f"produced {args.n:,} x {RECORD_BYTES} B in {took:.1f}s ({args.n / took:,.0f}/s)")
        rates = []
        for run in range(1, args.runs + 1):
            tuning = {} if args.librdkafka_defaults else CONSUMER_TUNING
            rate = measure_consume(bootstrap, topic, args.n, tuning=tuning)
            rates.append(rate.per_second)
            print(f"run {run}: {rate.records:,} records in {rate.seconds:.2f}s")
    print(f"ceiling: {statistics.median(rates):,.0f} records/s (median of {len(rates)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
