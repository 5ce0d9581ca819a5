"""Several subscriptions in one sidecar, each handled by its own policy, against a real broker.

One `lowwater serve` reads a TOML file with three `[[subscriptions]]`: a topic whose retries
wait in memory, a topic whose retries go through retry topics, and a pattern. A worker that
always fails shows each topic's records getting their own subscription's attempts and landing
in their own dead-letter topic, and the records in the retry topics carry what the contract
says: the original coordinates, the attempt, when the record was first seen, when it is due
and the last error.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import lowwater
from coordinator.embedded import SidecarProcess
from tests.integration.workload import wait_committed_to_end
from tests.support.aio import async_test, until
from tests.support.broker import (
    ConsumedRecord,
    OutRecord,
    TopicFactory,
    produce,
    read_all,
    unique_name,
)

WAIT_S = 60.0
"""Seconds for the whole flow (a group join, then 1 s and 2 s retry tiers) to show up."""
CLOCK_SLACK_MS = 50
"""How far a due time may seem to be missed: the wall clock, the ledger's clock and the
milliseconds in headers are three readings."""


class Delivery(NamedTuple):
    topic: str
    partition: int
    offset: int
    attempt: int
    at: float


async def _until(predicate: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    await until(predicate, timeout, what=what, every=0.05)


def _check_handoff(headers: dict[str, bytes | None], origin: tuple[str, int, int],
                   attempts: int, kind: bytes) -> None:
    """A handed-off record's headers name its origin (topic, partition, offset), its attempts
    and the kind of hand-off."""
    topic, partition, offset = origin
    assert headers["lowwater.topic"] == topic.encode()
    assert headers["lowwater.partition"] == str(partition).encode()
    assert headers["lowwater.offset"] == str(offset).encode()
    assert headers["lowwater.attempts"] == str(attempts).encode()
    assert headers["lowwater.handoff"] == kind


def _by_value(records: list[ConsumedRecord]) -> dict[bytes, dict[str, bytes | None]]:
    assert len({r.value for r in records}) == len(records), "a record was handed off twice"
    return {r.value or b"": r.headers or {} for r in records}


@async_test
async def test_each_subscription_handles_its_records_by_its_own_policy(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    in_memory, tiered = new_topic(2), new_topic(2)
    prefix = unique_name("lw-subs-pattern")
    matched = [new_topic(1, name=f"{prefix}-{channel}") for channel in ("sms", "push")]
    dlq = {name: new_topic(1, name=f"{name}.dlq") for name in (in_memory, tiered, prefix)}
    retry_topics = [new_topic(1, name=f"{tiered}.retry.{tier}") for tier in ("1s", "2s")]
    config = tmp_path / "lowwater.toml"
    config.write_text(f"""
default_retry_delay = "0s"

[[subscriptions]]
topic = "{in_memory}"
max_attempts = 2
dead_letter_topic = "{dlq[in_memory]}"

[[subscriptions]]
topic = "{tiered}"
max_attempts = 3
retry = ["1s", "2s"]
dead_letter_topic = "{dlq[tiered]}"

[[subscriptions]]
topic = "^{prefix}-"
max_attempts = 1
dead_letter_topic = "{dlq[prefix]}"
""")
    produced: dict[bytes, tuple[str, int, int]] = {}
    """value -> (topic, partition, offset) where it was produced."""
    for topic, count, partitions in ((in_memory, 4, 2), (tiered, 2, 2), (matched[0], 2, 1),
                                     (matched[1], 2, 1)):
        records = [OutRecord(value=f"{topic}/{i}".encode(), partition=i % partitions)
                   for i in range(count)]
        result = await asyncio.to_thread(produce, kafka_bootstrap, topic, records)
        produced.update({d.value or b"": (topic, d.partition, d.offset)
                         for d in result.deliveries})
    policy_attempts = {in_memory: 2, tiered: 3, matched[0]: 1, matched[1]: 1}
    deliveries: dict[bytes, list[Delivery]] = defaultdict(list)

    async def handle(msg: lowwater.Message) -> None:
        deliveries[msg.value].append(
            Delivery(msg.topic, msg.partition, msg.offset, msg.attempt, time.monotonic()))
        raise lowwater.Retry(reason=f"gateway 503 on attempt {msg.attempt}")

    group = unique_name("g")
    started_ms = time.time() * 1000
    with SidecarProcess(kafka_bootstrap, group, [], extra=["--config", str(config)]) as sidecar:
        async with lowwater.AsyncWorker(sidecar.target, handle, max_in_flight=20):
            await _until(lambda: sum(map(len, deliveries.values())) >= sum(
                policy_attempts[topic] for topic, _, _ in produced.values()),
                "every attempt of every record")
            # Each record had its own subscription's attempts, with its original coordinates.
            for value, (topic, partition, offset) in produced.items():
                got = deliveries[value]
                assert [d.attempt for d in got] == list(range(1, policy_attempts[topic] + 1)), \
                    value
                assert {(d.topic, d.partition, d.offset) for d in got} == {
                    (topic, partition, offset)}
            for topic in (in_memory, tiered, *matched, *retry_topics):  # hand-offs finished
                await asyncio.to_thread(wait_committed_to_end, kafka_bootstrap, group, topic)
        assert sidecar.stop() == 0, sidecar.log()
    finished_ms = time.time() * 1000
    for value in (v for v, (topic, _, _) in produced.items() if topic == tiered):
        first, second, third = (d.at for d in deliveries[value])
        assert second - first >= 1.0 - 0.1 and third - second >= 2.0 - 0.1  # the tiers' delays

    # Each subscription's records went to its own dead-letter topic, with the reason.
    letters = {name: _by_value(await asyncio.to_thread(read_all, kafka_bootstrap, topic))
               for name, topic in dlq.items()}
    owner = {in_memory: in_memory, tiered: tiered, matched[0]: prefix, matched[1]: prefix}
    for name in dlq:
        assert set(letters[name]) == {v for v, (t, _, _) in produced.items() if owner[t] == name}
    for value, (topic, partition, offset) in produced.items():
        headers = letters[owner[topic]][value]
        attempts = policy_attempts[topic]
        _check_handoff(headers, (topic, partition, offset), attempts, b"dead_letter")
        assert headers["lowwater.reason"] == (
            f"worker asked for a retry; {attempts} of {attempts} attempts used:"
            f" gateway 503 on attempt {attempts}").encode()
        assert headers["lowwater.group"] == group.encode()

    # The retried records waited in the retry topics of their tiers, with the retry headers.
    retried = [_by_value(await asyncio.to_thread(read_all, kafka_bootstrap, topic))
               for topic in retry_topics]
    tiered_values = {v for v, (t, _, _) in produced.items() if t == tiered}
    for attempt, (handed, delay_ms) in enumerate(zip(retried, (1000, 2000), strict=True), 1):
        assert set(handed) == tiered_values
        for value, headers in handed.items():
            _check_handoff(headers, produced[value], attempt, b"retry")
            assert headers["lowwater.reason"] == (
                f"worker asked for a retry: gateway 503 on attempt {attempt}").encode()
            first_seen = int(headers["lowwater.first.seen"] or b"")
            due = int(headers["lowwater.due"] or b"")
            assert started_ms - CLOCK_SLACK_MS <= first_seen <= finished_ms
            assert first_seen == int(retried[0][value]["lowwater.first.seen"] or b"")  # kept
            # Due one tier after the hand-off, which came after the previous tier was due.
            waited_ms = delay_ms + (1000 if attempt == 2 else 0)
            assert due - first_seen >= waited_ms - CLOCK_SLACK_MS
