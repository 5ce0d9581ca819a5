"""Dead letters and expired records leave through their topics, against a real broker.

A record that keeps failing goes to the dead-letter topic after max_attempts, with the reason
and its origin in headers, while the rest of its partition flows and commits. Records past
their TTL (or the time in their expiry header) never reach a worker, after a broker outage as
in the seed's case of 5-minute verification codes; they are produced to the expired topic
instead. What is expired, retried and dead-lettered is counted per subscription (/metrics).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

from confluent_kafka import KafkaError, Message, Producer

import lowwater
from coordinator.embedded import SidecarProcess, TansuBroker
from coordinator.embedded.tansu import pick_free_port
from tests.integration.workload import wait_committed_to_end
from tests.support.aio import async_test, until
from tests.support.broker import (
    PRODUCER_CONFIG,
    OutRecord,
    TopicFactory,
    committed_offsets,
    create_topic,
    log_end_offsets,
    produce,
    read_all,
    unique_name,
)
from tests.support.metrics import Samples, scrape

N = 200
WAIT_S = 60.0


async def _until(predicate: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    await until(predicate, timeout, what=what, every=0.05)


@async_test
async def test_a_record_that_keeps_failing_is_dead_lettered_while_the_rest_flows(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic, dlq, group = new_topic(4), new_topic(1), unique_name("g")
    produce(kafka_bootstrap, topic,
            [OutRecord(value=f"id-{i}".encode(), partition=i % 4) for i in range(N)]
            + [OutRecord(value=b"poison", partition=0), OutRecord(value=b"gives-up", partition=1)])
    attempts: dict[bytes, list[int]] = defaultdict(list)

    async def handle(msg: lowwater.Message) -> None:
        attempts[msg.value].append(msg.attempt)
        if msg.value == b"poison":
            raise lowwater.Retry(reason="the SMS gateway said 500")
        if msg.value == b"gives-up":
            raise lowwater.DeadLetter("phone number 123 is not a number")

    port = pick_free_port()
    with SidecarProcess(kafka_bootstrap, group, [topic], extra=[
            "--max-attempts", "3", "--default-retry-delay", "0s",
            "--dead-letter-topic", dlq, "--metrics-listen", f"127.0.0.1:{port}"]) as sidecar:
        async with lowwater.AsyncWorker(sidecar.target, handle, max_in_flight=20):
            await _until(lambda: len(attempts) == N + 2 and len(attempts[b"poison"]) == 3,
                         "every record handled, the poison three times")
            end = await asyncio.to_thread(wait_committed_to_end, kafka_bootstrap, group, topic)
        counted = handed_off(await asyncio.to_thread(scrape, port))
        assert sidecar.stop() == 0, sidecar.log()
    # Counted per subscription; retries without retry tiers wait in memory, not in a topic.
    assert counted == {"expired": {topic: 0}, "retried": {topic: 0}, "dead_lettered": {topic: 2}}
    assert sum(end.values()) == N + 2  # the dead letters finished: the commits passed them
    assert attempts[b"poison"] == [1, 2, 3] and attempts[b"gives-up"] == [1]
    assert all(a == [1] for v, a in attempts.items() if v.startswith(b"id-"))
    letters = {r.value: r for r in await asyncio.to_thread(read_all, kafka_bootstrap, dlq)}
    assert set(letters) == {b"poison", b"gives-up"}
    poison = letters[b"poison"].headers or {}
    assert (poison["lowwater.topic"], poison["lowwater.partition"]) == (topic.encode(), b"0")
    assert poison["lowwater.offset"] == str(N // 4).encode()  # after the 50 ids of partition 0
    assert poison["lowwater.attempts"] == b"3" and poison["lowwater.handoff"] == b"dead_letter"
    assert b"3 of 3 attempts" in (poison["lowwater.reason"] or b"")
    assert poison["lowwater.group"] == group.encode()
    gives_up = letters[b"gives-up"].headers or {}
    assert b"phone number 123 is not a number" in (gives_up["lowwater.reason"] or b"")


def handed_off(samples: Samples) -> dict[str, dict[str, float]]:
    """Records expired, retried and dead-lettered, by subscription, from a scrape."""
    return {kind: {labels["subscription"]: value
                   for labels, value in samples[f"lowwater_records_{kind}_total"]}
            for kind in ("expired", "retried", "dead_lettered")}


TTL_S = 3
"""The codes' TTL in the seed's case. It stands for the 5-minute validity of a verification
code: seconds instead of minutes keep the test short, and the broker outage that outlasts it."""
OUTAGE_MARGIN_S = 1.0
"""How much longer than the TTL the broker stays frozen after the last late code is produced.
The outage stays well under the group's 6 s session timeout (FAST_GROUP_SETTINGS), so Tansu
does not also rebalance the group when it wakes up."""
CODES = 20


def _codes(producer: Producer, topic: str, prefix: str) -> set[bytes]:
    """Queues CODES codes over 2 partitions with producer.produce(): librdkafka stamps their
    CreateTime now, whether or not the broker answers."""
    values = [f"{prefix}-{i}".encode() for i in range(CODES)]
    for i, value in enumerate(values):
        producer.produce(topic, value, partition=i % 2)
    return set(values)


def _flush(producer: Producer) -> None:
    undelivered = producer.flush(WAIT_S)
    assert undelivered == 0, f"{undelivered} code(s) not delivered in {WAIT_S:g}s"


@async_test
async def test_codes_past_their_ttl_never_reach_a_worker(private_tansu: TansuBroker) -> None:
    """The seed's case: verification codes sent while the broker is down arrive when it is
    back, late; none may reach a worker, and the codes sent after the outage all do."""
    bootstrap = private_tansu.bootstrap_servers
    topic, expired_topic, group = unique_name("codes"), unique_name("expired"), unique_name("g")
    create_topic(bootstrap, topic, 2)
    create_topic(bootstrap, expired_topic, 1)
    failed: list[str] = []

    def delivered(err: KafkaError | None, _: Message) -> None:
        if err is not None:
            failed.append(err.str())

    # The producer keeps what it could not send for up to a minute, far longer than the outage.
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG,
                         "message.timeout.ms": 60_000, "on_delivery": delivered})
    seen: list[bytes] = []

    async def handle(msg: lowwater.Message) -> None:
        seen.append(msg.value)

    port = pick_free_port()
    with SidecarProcess(bootstrap, group, [topic], extra=[
            "--ttl", f"{TTL_S}s", "--expired-topic", expired_topic,
            "--metrics-listen", f"127.0.0.1:{port}"]) as sidecar:
        await asyncio.to_thread(sidecar.wait_assigned, 2)
        async with lowwater.AsyncWorker(sidecar.target, handle, max_in_flight=10):
            fresh = _codes(producer, topic, "fresh")
            await asyncio.to_thread(_flush, producer)
            await _until(lambda: fresh <= set(seen), "the codes sent before the outage")

            private_tansu.freeze()  # the outage: the sidecar and the worker keep running
            try:
                late = _codes(producer, topic, "late")
                stamped = time.time()  # the late codes' CreateTime is at most this
                # Not a wait for an event: the outage lasts past the late codes' TTL.
                await asyncio.sleep(stamped + TTL_S + OUTAGE_MARGIN_S - time.time())
                assert len(producer) == CODES, "the broker took late codes while frozen"
            finally:
                private_tansu.thaw()
            await asyncio.to_thread(_flush, producer)  # the late codes arrive, past their TTL

            after = _codes(producer, topic, "after")
            await asyncio.to_thread(_flush, producer)
            await _until(lambda: after <= set(seen), "the codes sent after the outage")
            # Every code finished: delivered and acked, or expired and handed off.
            await asyncio.to_thread(wait_committed_to_end, bootstrap, group, topic)
        counted = handed_off(await asyncio.to_thread(scrape, port))
        assert sidecar.stop() == 0, sidecar.log()
    assert failed == []
    assert not late & set(seen), "a code past its TTL reached a worker"
    assert sorted(seen) == sorted(fresh | after)  # each once: none expired, none redelivered
    dropped = await asyncio.to_thread(read_all, bootstrap, expired_topic)
    assert sorted(r.value or b"" for r in dropped) == sorted(late)  # kept for inspection
    assert all((r.headers or {}).get("lowwater.handoff") == b"expired" for r in dropped)
    assert counted == {"expired": {topic: CODES}, "retried": {topic: 0},
                       "dead_lettered": {topic: 0}}


@async_test
async def test_an_expiry_header_wins_over_the_ttl_and_a_bad_one_falls_back_to_it(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """The header holds decimal milliseconds since the epoch (docs/configuration.md)."""
    topic, expired_topic, group = new_topic(1), new_topic(1), unique_name("g")
    now = int(time.time() * 1000)
    hour_ago, hour_on = now - 3_600_000, now + 3_600_000

    def code(name: str, header: bytes | None, timestamp_ms: int) -> OutRecord:
        headers = None if header is None else [("trace", b"t"), ("expires-at", header)]
        return OutRecord(value=name.encode(), partition=0, headers=headers,
                         timestamp_ms=timestamp_ms)

    records = [
        code("past-header", str(now - 1000).encode(), now),  # the TTL would keep it
        code("future-header", str(hour_on).encode(), hour_ago),  # the TTL would drop it
        code("bad-header-old", b"in 5 minutes", hour_ago),  # falls back to the TTL: expired
        code("bad-header-new", b"1767225600000.0", now),  # falls back to the TTL: delivered
        code("no-header-old", None, hour_ago),
        code("no-header-new", None, now),
    ]
    await asyncio.to_thread(produce, kafka_bootstrap, topic, records)
    seen: list[bytes] = []

    async def handle(msg: lowwater.Message) -> None:
        seen.append(msg.value)

    port = pick_free_port()
    with SidecarProcess(kafka_bootstrap, group, [topic], extra=[
            "--ttl", "30m", "--expiry-header", "expires-at", "--expired-topic", expired_topic,
            "--metrics-listen", f"127.0.0.1:{port}"]) as sidecar:
        async with lowwater.AsyncWorker(sidecar.target, handle, max_in_flight=10):
            # Committed to the end: every record delivered and acked, or expired and handed off.
            await asyncio.to_thread(wait_committed_to_end, kafka_bootstrap, group, topic)
        counted = handed_off(await asyncio.to_thread(scrape, port))
        assert sidecar.stop() == 0, sidecar.log()
    assert sorted(seen) == [b"bad-header-new", b"future-header", b"no-header-new"]
    dropped = await asyncio.to_thread(read_all, kafka_bootstrap, expired_topic)
    assert sorted(r.value or b"" for r in dropped) == [
        b"bad-header-old", b"no-header-old", b"past-header"]
    assert counted["expired"] == {topic: 3}


@async_test
async def test_a_retry_waits_in_a_retry_topic_while_its_partition_flows_and_commits(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """The issue's case: a record that fails twice, then succeeds."""
    topic, dlq, group = new_topic(2), new_topic(1), unique_name("g")
    records = [OutRecord(value=f"id-{i}".encode(), partition=i % 2) for i in range(N)]
    records.insert(N // 2, OutRecord(value=b"flaky", partition=0, headers=[("trace", b"t-1")]))
    result = produce(kafka_bootstrap, topic, records)
    [origin] = [(d.partition, d.offset) for d in result.deliveries if d.value == b"flaky"]
    deliveries: list[tuple[int, str, int, int, float]] = []
    handled: dict[bytes, float] = {}

    port = pick_free_port()
    sidecar = SidecarProcess(kafka_bootstrap, group, [topic], extra=[
        "--retry", "2s,4s", "--max-attempts", "4", "--dead-letter-topic", dlq,
        "--create-topics", "--metrics-listen", f"127.0.0.1:{port}"])
    end_of_topic = {p: sum(1 for r in records if r.partition == p) for p in (0, 1)}
    committed_at_third: dict[int, int] = {}

    async def handle(msg: lowwater.Message) -> None:
        if msg.value == b"flaky":
            deliveries.append((msg.attempt, msg.topic, msg.partition, msg.offset, time.monotonic()))
            assert msg.headers == (("trace", b"t-1"),)  # the record's own, without lowwater's
            if msg.attempt < 3:
                raise lowwater.Retry(reason=f"SMS gateway 503 on attempt {msg.attempt}")
            # What the partition's commit had reached when the retried record came back.
            status = await asyncio.to_thread(sidecar.status)
            committed_at_third.update({p.partition: p.committed_offset
                                       for p in status.partitions if p.topic == topic})
        handled[msg.value] = time.monotonic()

    with sidecar:
        async with lowwater.AsyncWorker(sidecar.target, handle, max_in_flight=20):
            await _until(lambda: len(deliveries) == 1, "the first delivery")
            # The retry waits in its topic: the partition's commit passes it meanwhile.
            await asyncio.to_thread(wait_committed_to_end, kafka_bootstrap, group, topic)
            await _until(lambda: b"flaky" in handled, "the third attempt")
            for retry_topic in (f"{topic}.retry.2s", f"{topic}.retry.4s"):
                end = await asyncio.to_thread(log_end_offsets, kafka_bootstrap, retry_topic)
                assert sum(end.values()) == 1  # the one retry it took
                await _until(lambda: {p: o or 0 for p, o in committed_offsets(
                    kafka_bootstrap, group, retry_topic).items()} == end,  # noqa: B023
                    f"{retry_topic} committed to its end")
        counted = handed_off(await asyncio.to_thread(scrape, port))
        assert sidecar.stop() == 0, sidecar.log()
    # Both retries count under the subscription, the one from the first retry topic too.
    assert counted == {"expired": {topic: 0}, "retried": {topic: 2}, "dead_lettered": {topic: 0}}
    assert [(a, t, p, o) for a, t, p, o, _ in deliveries] == [
        (attempt, topic, *origin) for attempt in (1, 2, 3)]  # the original coordinates
    first, second, third = (at for *_, at in deliveries)
    assert second - first >= 2.0 - 0.1 and third - second >= 4.0 - 0.1  # the tiers' delays
    # The partition did not wait for its retried record: its commit had reached the log end
    # (the flaky record included) before the record's third attempt was delivered. (The other
    # partition is not in question: a rebalance, when the retry topics are created, can
    # leave it uncommitted in the sidecar's new generation for a while.)
    partition = origin[0]
    assert committed_at_third[partition] == end_of_topic[partition]
    assert len(handled) == N + 1 and max(t for v, t in handled.items() if v != b"flaky") < third
