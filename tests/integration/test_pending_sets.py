"""Pending sets in Redis with a real sidecar: a crash explained, a replay followed.

Workers hold some records unsettled while they finish the rest, the sidecar is killed with
``kill -9``, and ``lowwater inspect`` must list exactly the records the workers held. A new
sidecar then reports, through ``Admin/GetRecovery``, that those records are replayed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

import lowwater
from coordinator.core.pending import KeySpace, decode_hash
from coordinator.embedded import SidecarProcess
from coordinator.runtime.sidecar import PENDING_STORE_HEALTH
from lowwater.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.workload import (
    Budget,
    Ledgerbook,
    logs_on_failure,
    make_handler,
    produce_ids,
    wait_committed_to_end,
    wait_count,
    wait_processed,
)
from tests.support.aio import async_test
from tests.support.broker import TopicFactory, unique_name
from tests.support.redis import RedisServer

N = 400
HOLD_EVERY = 25
"""Records whose offset is 7 modulo this are held by the first worker, never settled."""
INTERVAL = "200ms"

Held = set[tuple[int, int, int]]
"""(partition, offset, msg_id) of the records a worker holds."""


def redis_args(url: str, prefix: str) -> list[str]:
    return ["--redis-url", url, "--redis-prefix", prefix, "--redis-interval", INTERVAL]


def status(target: str) -> admin_pb2.GetStatusResponse:
    with grpc.insecure_channel(target) as channel:
        resp: admin_pb2.GetStatusResponse = admin_pb2_grpc.AdminStub(channel).GetStatus(
            admin_pb2.GetStatusRequest(), timeout=5)
        return resp


def recovery(target: str) -> admin_pb2.GetRecoveryResponse:
    with grpc.insecure_channel(target) as channel:
        resp: admin_pb2.GetRecoveryResponse = admin_pb2_grpc.AdminStub(channel).GetRecovery(
            admin_pb2.GetRecoveryRequest(), timeout=5)
        return resp


def written_since(url: str, keys: KeySpace, topic: str, since_ms: int) -> bool:
    """Whether every partition's snapshot was written after ``since_ms``."""
    client = redis.Redis.from_url(url)
    try:
        metas = [decode_hash(client.hgetall(f"{keys.base}p:{topic}:{p}"))[0] for p in range(4)]
    finally:
        client.close()
    return all(m is not None and m.written_ms > since_ms for m in metas)


async def until(check: object, budget: Budget, cap: float, what: str) -> None:
    deadline = time.monotonic() + budget.left(cap)
    while not await asyncio.to_thread(check):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def inspect_json(url: str, prefix: str, group: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "inspect", "--redis-url", url, "--prefix", prefix,
         "--group", group, "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@async_test
async def test_after_kill_9_inspect_lists_what_the_workers_held_and_the_next_owner_replays_it(
    kafka_bootstrap: str, new_topic: TopicFactory, redis_keys: tuple[str, str]
) -> None:
    budget = Budget()
    url, prefix = redis_keys
    topic, group = new_topic(4), unique_name("g")
    keys = KeySpace(prefix, group)
    expected = produce_ids(kafka_bootstrap, topic, N)
    held: Held = set()
    book = Ledgerbook()
    release = asyncio.Event()

    async def holding(msg: lowwater.Message) -> None:
        if msg.offset % HOLD_EVERY == 7:
            held.add((msg.partition, msg.offset, msg.msg_id))
            await release.wait()  # never settled while the first sidecar lives
            return
        book.deliveries[msg.value] += 1

    async def plain(msg: lowwater.Message) -> None:
        book.deliveries[msg.value] += 1

    first = SidecarProcess(kafka_bootstrap, group, [topic], extra=redis_args(url, prefix))
    second = SidecarProcess(kafka_bootstrap, group, [topic], extra=redis_args(url, prefix))
    with logs_on_failure(first, second):
        first.start()
        try:
            async with lowwater.AsyncWorker(first.target, holding, max_in_flight=200,
                                            worker_id="holder-a"):
                def settled() -> bool:
                    parts = status(first.target).partitions
                    return (len(book.deliveries) + len(held) == N and len(parts) == 4
                            and sum(p.pending_count for p in parts) == len(held))

                await until(settled, budget, 60, "all but the held records to be finished")
                since_ms = int(time.time() * 1000)
                await until(lambda: written_since(url, keys, topic, since_ms), budget, 10,
                            "a snapshot written after that")
                instance = status(first.target).pending_store
                assert instance.state == admin_pb2.PendingStoreStatus.STATE_OK
                first.kill()
                release.set()
        finally:
            first.kill()

        report = inspect_json(url, prefix, group)
        listed = {(p["partition"], e["offset"], e["msg_id"])
                  for p in report["partitions"] for e in p["entries"]}
        assert held and listed == held
        for part in report["partitions"]:
            for entry in part["entries"]:
                assert (entry["state"], entry["worker"], entry["attempts"]) == (
                    "leased", "holder-a", 1)
                assert entry["delivered_ms"] <= entry["deadline_ms"]

        await asyncio.to_thread(second.start)
        try:
            async with lowwater.AsyncWorker(second.target, plain, max_in_flight=200):
                def replayed() -> bool:
                    rec = recovery(second.target)
                    return (len(rec.partitions) == 4
                            and all(p.done_count == len(p.records) for p in rec.partitions)
                            and expected <= book.processed)

                await until(replayed, budget, 120, "the held records to be replayed")
                rec = recovery(second.target)
        finally:
            await asyncio.to_thread(second.stop)
    inherited = {(p.partition, r.offset, r.msg_id) for p in rec.partitions for r in p.records}
    assert inherited == held
    assert all(r.worker_id == "holder-a" and r.done for p in rec.partitions for r in p.records)
    assert len({p.previous_instance for p in rec.partitions}) == 1
    assert rec.instance not in {p.previous_instance for p in rec.partitions}
    assert book.processed == expected


def redis_health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=PENDING_STORE_HEALTH), timeout=5)
        return int(resp.status)


@async_test
async def test_with_redis_stopped_mid_run_nothing_is_lost_nothing_stalls_and_health_says_so(
    kafka_bootstrap: str, new_topic: TopicFactory, private_redis: RedisServer
) -> None:
    budget = Budget()
    topic, group = new_topic(4), unique_name("g")
    expected = produce_ids(kafka_bootstrap, topic, 4000)
    book = Ledgerbook()
    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                            health_pb2.HealthCheckResponse.NOT_SERVING)
    sidecar = SidecarProcess(kafka_bootstrap, group, [topic],
                             extra=redis_args(private_redis.url, "lw"))
    with logs_on_failure(sidecar):
        sidecar.start()
        try:
            async with lowwater.AsyncWorker(sidecar.target, make_handler(book, max_delay=0.02),
                                            max_in_flight=50):
                await until(lambda: redis_health(sidecar.target) == serving, budget, 30,
                            "the pending store to report SERVING")
                await wait_count(book, 500, budget.left(60))
                private_redis.stop()
                at_outage = len(book.deliveries)
                await until(lambda: redis_health(sidecar.target) == not_serving, budget, 30,
                            "the pending store to report NOT_SERVING")
                store = status(sidecar.target).pending_store
                assert store.state == admin_pb2.PendingStoreStatus.STATE_DEGRADED
                assert store.last_error and store.failed_writes >= 1
                await asyncio.to_thread(sidecar.wait_health, serving, 1.0)  # overall: SERVING
                # Consuming and committing go on without Redis: everything, to the log end.
                await wait_processed(book, expected, budget.left())
                await asyncio.to_thread(wait_committed_to_end, kafka_bootstrap, group, topic,
                                        budget.left(30))
                assert at_outage < len(expected)
                private_redis.start()  # back, empty: the store rewrites every partition
                await until(lambda: redis_health(sidecar.target) == serving, budget, 30,
                            "the pending store to recover")
                assert written_since(private_redis.url, KeySpace("lw", group), topic, 0)
            assert sidecar.stop() == 0
        finally:
            sidecar.kill()
    assert book.processed == expected
