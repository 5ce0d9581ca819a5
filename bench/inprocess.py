"""The in-process alternative to lowwater, as a Python team would write it.

One confluent-kafka consumer on the main thread hands every record to a
``concurrent.futures.ThreadPoolExecutor`` and commits by hand, per partition, the lowest
contiguous finished offset (``commit(asynchronous=True)`` every COMMIT_INTERVAL_S). A
semaphore bounds the records in flight (the seed's unbounded queue is the bug this project
exists for). Nothing clever: one task per record, one lock around the tracker.

    .venv/bin/python bench/inprocess.py [--n 200000]

:class:`ContiguousTracker` is the pure part (tested in ``tests/unit/test_bench_inprocess.py``);
:func:`measure_inprocess` runs it against a topic.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests.support` importable
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from bench.ceiling import (
    CONSUME_BATCH,
    CONSUME_DEADLINE_S,
    CONSUMER_TUNING,
    PARTITIONS,
    ConsumeRate,
    _fill_with_progress,
    kafka,
)
from tests.support.broker import FAST_GROUP_CONFIG, create_topic, unique_name

IN_FLIGHT = 2000
"""Records handed to the pool and not yet finished, at most (lowwater's worker declares the
same)."""
COMMIT_INTERVAL_S = 0.1
"""How often the consumer commits (the lowwater runs use a 100 ms commit interval too)."""


@dataclass
class _Partition:
    dispatched: deque[int] = field(default_factory=deque)
    """Offsets handed out and not yet below the commit point, in the order Kafka gave them."""
    finished: set[int] = field(default_factory=set)
    """Those of ``dispatched`` that are finished."""
    commit: int | None = None
    """The next offset to commit (one past the last contiguous finished offset), if any."""


class ContiguousTracker:
    """Per partition, the offset to commit: one past the longest finished prefix of the
    offsets dispatched so far. Not thread-safe (callers hold a lock).

    Offsets of one partition must be dispatched in increasing order (Kafka's order); they may
    have gaps (compaction, transaction markers), which never hold the commit back.
    """

    def __init__(self) -> None:
        self._parts: dict[int, _Partition] = {}
        self._changed: set[int] = set()

    def dispatch(self, partition: int, offset: int) -> None:
        part = self._parts.setdefault(partition, _Partition())
        if part.dispatched and offset <= part.dispatched[-1]:
            raise ValueError(f"offset {offset} dispatched after {part.dispatched[-1]}")
        if part.commit is not None and offset < part.commit:
            raise ValueError(f"offset {offset} is below the commit point {part.commit}")
        part.dispatched.append(offset)

    def finish(self, partition: int, offset: int) -> None:
        part = self._parts[partition]
        part.finished.add(offset)
        moved = False
        while part.dispatched and part.dispatched[0] in part.finished:
            done = part.dispatched.popleft()
            part.finished.discard(done)
            part.commit, moved = done + 1, True
        if moved:
            self._changed.add(partition)

    def commit_point(self, partition: int) -> int | None:
        """The offset to commit for ``partition`` (None before its first finished record)."""
        part = self._parts.get(partition)
        return None if part is None else part.commit

    def take_changed(self) -> dict[int, int]:
        """The commit points that moved since the last call, by partition."""
        out: dict[int, int] = {}
        for p in self._changed:
            commit = self._parts[p].commit
            assert commit is not None
            out[p] = commit
        self._changed.clear()
        return out


def _position(msg: Message) -> tuple[int, int]:
    """(partition, offset) of a consumed record."""
    partition, offset = msg.partition(), msg.offset()
    assert partition is not None and offset is not None
    return partition, offset


def _handle(msg: Message) -> tuple[int, int]:
    """The benchmark's handler: nothing to do. Returns where the record was."""
    return _position(msg)


def measure_inprocess(
    bootstrap: str,
    topic: str,
    n: int,
    *,
    handler: Callable[[Message], tuple[int, int]] = _handle,
    in_flight: int = IN_FLIGHT,
    workers: int | None = None,
) -> ConsumeRate:
    """Handle the first ``n`` records of ``topic`` (which starts at offset 0) on a thread pool
    in a fresh group; seconds from the first batch until the broker confirms commits of all.

    ``workers`` is the pool size (None: ThreadPoolExecutor's default, min(32, cpus + 4)).
    """
    tracker = ContiguousTracker()
    lock = threading.Lock()
    room = threading.BoundedSemaphore(in_flight)
    committed: dict[int, int] = {}
    errors: list[KafkaError] = []

    def on_commit(err: KafkaError | None, tps: list[TopicPartition]) -> None:
        if err is not None:
            errors.append(err)
            return
        for tp in tps:
            if tp.error is None and tp.offset >= 0:
                committed[tp.partition] = max(committed.get(tp.partition, 0), tp.offset)

    def done(future: Future[tuple[int, int]]) -> None:
        partition, offset = future.result()
        with lock:
            tracker.finish(partition, offset)
        room.release()

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": unique_name("inprocess"),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "on_commit": on_commit,
        **FAST_GROUP_CONFIG,
        **CONSUMER_TUNING,
    })
    try:
        consumer.subscribe([topic])
        with ThreadPoolExecutor(max_workers=workers) as pool:
            started: float | None = None
            next_commit = 0.0
            give_up = time.monotonic() + CONSUME_DEADLINE_S
            while sum(committed.values()) < n:
                if errors:
                    raise KafkaException(errors[0])
                if time.monotonic() > give_up:
                    raise TimeoutError(f"committed {sum(committed.values())} of {n} records")
                for msg in consumer.consume(CONSUME_BATCH, timeout=COMMIT_INTERVAL_S):
                    if (err := msg.error()) is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise KafkaException(err)
                    if started is None:
                        started = time.perf_counter()
                    room.acquire()
                    with lock:
                        tracker.dispatch(*_position(msg))
                    pool.submit(handler, msg).add_done_callback(done)
                if time.monotonic() >= next_commit:
                    next_commit = time.monotonic() + COMMIT_INTERVAL_S
                    with lock:
                        points = tracker.take_changed()
                    if points:
                        consumer.commit(offsets=[TopicPartition(topic, p, o)
                                                 for p, o in points.items()], asynchronous=True)
            assert started is not None
            return ConsumeRate(n, time.perf_counter() - started)
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="records to produce and handle")
    args = parser.parse_args(argv)
    with kafka() as bootstrap:
        topic = unique_name("inprocess")
        create_topic(bootstrap, topic, PARTITIONS)
        _fill_with_progress(bootstrap, topic, args.n)
        rate = measure_inprocess(bootstrap, topic, args.n)
    print(f"in-process thread pool: {rate.records:,} records in {rate.seconds:.2f}s"
          f" ({rate.per_second:,.0f} rec/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
