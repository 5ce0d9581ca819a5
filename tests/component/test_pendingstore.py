"""The pending-set writer against real Redis: what it writes, what it inherits, and outages.

The ledger is driven by hand; Redis is the machine's own (under a prefix of the test's own) or
a private ``redis-server`` that the test stops and freezes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest
import redis

from coordinator.core.ledger import LeaseTimes, Ledger
from coordinator.core.model import Outcome, TopicPartition
from coordinator.core.pending import META_FIELD, KeySpace, PartitionMeta, decode_hash, encode_row
from coordinator.core.policy import RetryPolicy
from coordinator.runtime.pendingstore import PendingStore, StoreState, connect
from tests.support.aio import async_test
from tests.support.redis import RedisServer

pytestmark = pytest.mark.timeout(60)

TP = TopicPartition("sms.requests", 0)
GROUP = "sms-senders"


def ledger(n: int) -> Ledger:
    led = Ledger(leases=LeaseTimes(30.0, 600.0), policy=RetryPolicy(1.0, 60.0, None))
    led.assign(TP, committed=0, generation=1)
    for offset in range(n):
        assert led.add(TP, offset, 10, b"x", now=time.monotonic())
    return led


def stored(url: str, keys: KeySpace) -> tuple[PartitionMeta | None, dict[int, str]]:
    client = redis.Redis.from_url(url)
    try:
        meta, entries = decode_hash(client.hgetall(keys.partition(TP)))
        assert client.sismember(keys.partitions, keys.member(TP))
        assert 0 < client.pttl(keys.partition(TP)) <= 60_000
        return meta, {o: e.state for o, e in entries.items()}
    finally:
        client.close()


@async_test
async def test_writes_what_was_delivered_then_only_what_changed(
    redis_keys: tuple[str, str]
) -> None:
    url, prefix = redis_keys
    keys = KeySpace(prefix, GROUP)
    led = ledger(6)
    worker = led.open_holder("stream-1", "sms-worker", 3)
    leases = led.lease(worker, time.monotonic(), 3)
    store = PendingStore(connect(url), keys, led, interval=0.1, ttl=60.0, instance="me")
    try:
        assert await store.flush()
        meta, states = stored(url, keys)
        assert states == {0: "leased", 1: "leased", 2: "leased"}
        assert meta is not None and (meta.instance, meta.pending, meta.undelivered) == ("me", 6, 3)
        assert store.state is StoreState.OK and store.inherited == {}

        led.settle(worker, leases[0].msg_id, Outcome.ACK, None, time.monotonic())
        led.settle(worker, leases[1].msg_id, Outcome.RETRY, 30.0, time.monotonic())
        assert await store.flush()
        meta, states = stored(url, keys)
        assert states == {1: "delayed", 2: "leased"}
        assert meta is not None and (meta.commit_offset, meta.pending) == (1, 5)
        assert store.writes == 2 and store.failed_writes == 0
    finally:
        await store.close()


@async_test
async def test_reads_what_the_previous_owner_left_before_writing_its_own(
    redis_keys: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, prefix = redis_keys
    keys = KeySpace(prefix, GROUP)
    client = redis.Redis.from_url(url)
    old = PartitionMeta("crashed/7/abcd", 3, int(time.time() * 1000) - 5000, 0, 0, 4, 1, 3)
    client.hset(keys.partition(TP), mapping={
        META_FIELD: old.encode(),
        "0": encode_row(("leased", 1, 1, 11, "w-1", 2, 3)),
        "2": encode_row(("delayed", 2, 1, 0, "", 0, 0)),
    })
    client.close()
    led = ledger(4)
    store = PendingStore(connect(url), keys, led, interval=0.1, ttl=60.0, instance="me")
    try:
        assert await store.flush()
        replay = store.inherited[TP]
        assert replay.meta == old
        assert [(e.offset, e.state, e.worker) for e in replay.entries] == [
            (0, "leased", "w-1"), (2, "delayed", "")]
        meta, states = stored(url, keys)
        assert meta is not None and meta.instance == "me" and states == {}  # replaced
        worker = led.open_holder("s", "w-2", 4)
        for lease in led.lease(worker, time.monotonic(), 4):
            led.settle(worker, lease.msg_id, Outcome.ACK, None, time.monotonic())
        assert replay.done(led.partitions[TP]) == [True, True]
        with caplog.at_level(logging.INFO, logger="coordinator.redis"):
            assert await store.flush()
            assert await store.flush()
        assert store.inherited[TP] is replay  # read once per assignment
        done = [r for r in caplog.records if "previous owner had in flight" in r.getMessage()]
        assert len(done) == 1 and "all 2 record(s)" in done[0].getMessage()
    finally:
        await store.close()


@async_test
async def test_a_redis_outage_degrades_the_store_and_it_catches_up_in_full(
    private_redis: RedisServer
) -> None:
    keys = KeySpace("lw", GROUP)
    led = ledger(4)
    worker = led.open_holder("stream-1", "w", 4)
    leases = led.lease(worker, time.monotonic(), 4)
    states: list[StoreState] = []
    store = PendingStore(connect(private_redis.url), keys, led, interval=0.1, ttl=60.0,
                         on_state=states.append)
    try:
        assert await store.flush()
        private_redis.stop()  # killed: it comes back empty
        led.settle(worker, leases[0].msg_id, Outcome.ACK, None, time.monotonic())
        assert not await store.flush()
        assert store.state is StoreState.DEGRADED and "Connection" in store.last_error
        assert not await store.flush()
        assert states == [StoreState.OK, StoreState.DEGRADED]  # one transition per outage

        private_redis.start()
        assert await store.flush()
        assert states[-1] is StoreState.OK
        _, entries = stored(private_redis.url, keys)
        assert entries == {1: "leased", 2: "leased", 3: "leased"}  # rewritten in full
        assert (store.failed_writes, store.writes) == (2, 2)
    finally:
        await store.close()


@async_test
async def test_a_frozen_redis_fails_the_write_in_bounded_time(private_redis: RedisServer) -> None:
    led = ledger(2)
    store = PendingStore(connect(private_redis.url), KeySpace("lw", GROUP), led,
                         interval=0.1, ttl=60.0)
    try:
        assert await store.flush()
        private_redis.freeze()
        started = time.monotonic()
        try:
            ok = await store.flush()
        finally:
            private_redis.thaw()
        assert not ok and store.state is StoreState.DEGRADED
        assert time.monotonic() - started < 10.0  # the socket timeout, not forever
        assert await store.flush()
    finally:
        await store.close()


@async_test
async def test_the_final_snapshot_is_written_and_then_forgotten(
    redis_keys: tuple[str, str]
) -> None:
    url, prefix = redis_keys
    keys = KeySpace(prefix, GROUP)
    led = ledger(3)
    worker = led.open_holder("s", "w", 1)
    led.lease(worker, time.monotonic(), 1)
    store = PendingStore(connect(url), keys, led, interval=0.1, ttl=60.0)
    try:
        assert await store.write_final([led.partitions[TP]])
        _, states = stored(url, keys)
        assert states == {0: "leased"}
        led.revoke([TP])
        assert await store.flush()  # nothing assigned: nothing written, nothing deleted
        _, states = stored(url, keys)
        assert states == {0: "leased"}
    finally:
        await store.close()


@async_test
async def test_the_event_loop_is_never_blocked_by_a_write(private_redis: RedisServer) -> None:
    """Writes are awaited on the loop: a timer keeps firing while Redis is frozen."""
    store = PendingStore(connect(private_redis.url), KeySpace("lw", GROUP), ledger(1),
                         interval=0.1, ttl=60.0)
    ticks: list[float] = []
    try:
        private_redis.freeze()
        flush = asyncio.ensure_future(store.flush())
        while not flush.done():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.05)
        assert not flush.result()
    finally:
        private_redis.thaw()
        await store.close()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(gaps) > 10 and max(gaps) < 1.0
