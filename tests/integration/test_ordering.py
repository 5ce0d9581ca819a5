"""Ordered subscriptions against a real broker, under concurrency and retries.

Two SDK workers handle records concurrently with random delays; some attempts fail and are
retried. The processed log is then checked as a property over every key (or partition): its
records were handled one at a time, each starting only after the previous one had finished,
and they succeeded in production order.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest

import lowwater
from coordinator.embedded import SidecarProcess
from tests.integration.workload import wait_committed_to_end
from tests.support.aio import async_test
from tests.support.broker import OutRecord, TopicFactory, produce, unique_name

N = 600
KEYS = 12
WAIT_S = 120.0


@dataclass
class Handled:
    group: object
    """The key, or the partition for partition ordering."""
    seq: int
    """Its place in the group's order: the key's own count, or the offset."""
    start: float
    end: float
    ok: bool


def _records(rng: random.Random) -> list[OutRecord]:
    """N records over KEYS keys (and a few with a null key); the value numbers each key's
    records in production order."""
    seqs: dict[bytes | None, int] = defaultdict(int)
    out = []
    for _ in range(N):
        key = None if rng.random() < 0.05 else f"order-{rng.randrange(KEYS)}".encode()
        out.append(OutRecord(value=f"{seqs[key]}".encode(), key=key))
        seqs[key] += 1
    return out


def _check_one_at_a_time_in_order(log: list[Handled]) -> None:
    by_group: dict[object, list[Handled]] = defaultdict(list)
    for h in log:
        by_group[h.group].append(h)
    for group, handled in by_group.items():
        handled.sort(key=lambda h: h.start)
        for before, after in itertools.pairwise(handled):
            assert after.start >= before.end, f"{group!r}: {after} overlapped {before}"
        succeeded = [h.seq for h in handled if h.ok]
        assert succeeded == sorted(succeeded), f"{group!r} out of order: {succeeded}"


@pytest.mark.parametrize("ordering", ["key", "partition"])
@async_test
async def test_ordered_records_go_one_at_a_time_in_order_through_retries(
    ordering: str, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    rng = random.Random(ordering)
    topic, dlq, group = new_topic(2), new_topic(1), unique_name("g")
    records = _records(rng)
    result = produce(kafka_bootstrap, topic, records)
    partition_of = {(d.key, d.value): d.partition for d in result.deliveries}
    log: list[Handled] = []
    done: set[tuple[bytes | None, bytes]] = set()

    def worker(seed: int) -> lowwater.AsyncWorker:
        wrng = random.Random(seed)

        async def handle(msg: lowwater.Message) -> None:
            start = time.monotonic()
            await asyncio.sleep(wrng.random() * 0.004)
            fail = msg.attempt == 1 and wrng.random() < 0.2
            # Keyed records go one at a time per key; with a null key they have no order.
            # Key order is the order of each key's values; partition order is offset order.
            if ordering == "key" and msg.key is not None:
                log.append(Handled(msg.key, int(msg.value), start, time.monotonic(), not fail))
            elif ordering == "partition":
                log.append(Handled(msg.partition, msg.offset, start, time.monotonic(), not fail))
            if fail:
                raise lowwater.Retry(reason="provider busy")
            done.add((msg.key, msg.value))

        return lowwater.AsyncWorker(target, handle, max_in_flight=20, worker_id=f"w{seed}")

    with SidecarProcess(kafka_bootstrap, group, [topic], extra=[
            "--ordering", ordering, "--default-retry-delay", "0s",
            "--max-attempts", "5", "--dead-letter-topic", dlq]) as sidecar:
        target = sidecar.target
        async with worker(1), worker(2):
            deadline = time.monotonic() + WAIT_S
            while len(done) < N:
                assert time.monotonic() < deadline, f"{N - len(done)} records never succeeded"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(wait_committed_to_end, kafka_bootstrap, group, topic)
        assert sidecar.stop() == 0, sidecar.log()
    assert sum(not h.ok for h in log) > 20  # the retries really happened
    assert len({partition_of[k, v] for k, v in done}) == 2
    _check_one_at_a_time_in_order(log)
