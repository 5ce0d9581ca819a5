"""``lowwater.idempotency`` against real Redis and PostgreSQL (and SQLite): exactly once per key.

The side effects are rows: ``sends`` is written outside the handler's transaction (an SMS
provider's call), ``effects`` inside it (the business write). See tests/support/idempotency.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from coordinator.embedded.tansu import pick_free_port
from lowwater import AlreadyProcessed, DeadLetter, Message, Retry, Worker
from lowwater.idempotency import (
    ClaimState,
    DbKeys,
    Idempotent,
    RedisClaims,
    header_key,
    idempotent,
)
from lowwater.testing import FakeSidecar, make_message
from tests.support.idempotency import (
    Plan,
    claims_for,
    create_tables,
    deliver,
    drop_tables,
    make_handler,
    row_counts,
)

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plan(postgres_dsn: str, redis_keys: tuple[str, str]) -> Iterator[Plan]:
    """A plan with tables of this test's own, dropped afterwards; no deliveries yet."""
    url, prefix = redis_keys
    suffix = uuid.uuid4().hex[:10]
    made = Plan(dsn=postgres_dsn, redis_url=url, redis_prefix=f"{prefix}:idem:",
                keys_table=f"lw_keys_{suffix}", effects_table=f"lw_effects_{suffix}",
                sends_table=f"lw_sends_{suffix}", deliveries=[])
    create_tables(made)
    try:
        yield made
    finally:
        drop_tables(postgres_dsn, made.keys_table, made.effects_table, made.sends_table)


def with_duplicates(unique: int, duplicates: int, seed: int = 11) -> tuple[list[str], list[str]]:
    """Two processes' deliveries: each key once, ``duplicates`` of them twice, the second
    copy in the other process at about the same position, so that the two race."""
    rng = random.Random(seed)
    keys = [f"order-{i:06d}:SENT" for i in range(unique)]
    twice = set(rng.sample(range(unique), duplicates))
    shares: tuple[list[str], list[str]] = ([], [])
    for i, key in enumerate(keys):
        shares[i % 2].append(key)
        if i in twice:
            shares[1 - i % 2].append(key)
    return shares


def assert_exactly_once(plan: Plan, keys: set[str]) -> None:
    for table in (plan.sends_table, plan.effects_table, plan.keys_table):
        counts = row_counts(plan.dsn, table)
        assert set(counts) == keys, f"{table}: {len(set(counts) ^ keys)} keys differ"
        assert max(counts.values()) == 1, f"{table}: {counts.most_common(3)}"


def test_concurrent_duplicates_over_threads_and_processes_have_one_side_effect_each(
    plan: Plan, tmp_path: Path
) -> None:
    """10,000 deliveries, 3,000 of them duplicates, on 2 processes x 4 threads."""
    shares = with_duplicates(7000, 3000)
    assert sum(map(len, shares)) == 10_000
    procs = []
    for i, share in enumerate(shares):
        path = tmp_path / f"plan-{i}.json"
        path.write_text(Plan(**{**plan.__dict__, "deliveries": share}).dump())
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.support.idempotency", str(path)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outcomes: Counter[str] = Counter()
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=200)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        outcomes.update(json.loads(out))
    assert_exactly_once(plan, {key for share in shares for key in share})
    busy = outcomes.pop("busy", 0)
    assert outcomes == {"ack": 7000, "already": 3000}
    print(f"10,000 deliveries, 3,000 duplicates: 7,000 sends; {busy} RETRYs for keys in "
          "progress in the other process")


def test_a_crash_between_the_commit_and_done_still_sends_once(plan: Plan, tmp_path: Path) -> None:
    """The first process commits, then dies before it writes DONE: its claim is left behind
    IN_PROGRESS. The duplicate waits (RETRY) until the claim lapses, then the database key
    answers it."""
    crashing = (
        "import os, sys\n"
        "from lowwater.idempotency import RedisClaims\n"
        "from tests.support import idempotency as load\n"
        "RedisClaims.done = lambda self, key: os._exit(3)  # killed right after the commit\n"
        "load.main(sys.argv[1:])\n")
    path = tmp_path / "plan.json"
    short = Plan(**{**plan.__dict__, "deliveries": ["order-1:SENT"], "lease_seconds": 1.0})
    path.write_text(short.dump())
    proc = subprocess.run([sys.executable, "-c", crashing, str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    assert row_counts(plan.dsn, plan.sends_table) == {"order-1:SENT": 1}

    claims = claims_for(short)
    assert claims is not None
    client = claims.client
    assert client.get(f"{plan.redis_prefix}order-1:SENT").startswith(b"IN_PROGRESS:")
    handler = make_handler(short, claims)
    msg, _ = make_message(value=b"order-1:SENT")
    with pytest.raises(Retry):  # its owner's claim still stands
        handler(msg)
    assert deliver(handler, "order-1:SENT") == "already"  # after the lease: the DB key
    assert client.get(f"{plan.redis_prefix}order-1:SENT") == b"DONE"
    assert_exactly_once(plan, {"order-1:SENT"})


def test_without_redis_the_database_key_alone_keeps_it_exactly_once(
    plan: Plan, caplog: pytest.LogCaptureFixture
) -> None:
    shares = with_duplicates(600, 200, seed=5)
    dead = Plan(**{**plan.__dict__, "redis_url": f"redis://127.0.0.1:{pick_free_port()}/0",
                   "threads": 8})
    claims = claims_for(dead)
    handler = make_handler(dead, claims)
    deliveries = [key for pair in itertools.zip_longest(*shares) for key in pair if key]
    with caplog.at_level(logging.WARNING, logger="lowwater.idempotency"), \
            ThreadPoolExecutor(8) as pool:
        outcomes = Counter(pool.map(lambda key: deliver(handler, key), deliveries))
    assert len(deliveries) == 800
    assert outcomes == {"ack": 600, "already": 200}
    assert_exactly_once(plan, set(deliveries))
    warnings = [r for r in caplog.records if "falls back to the database" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per message


def test_a_failing_handler_releases_its_claim_and_the_retry_succeeds(plan: Plan) -> None:
    claims = claims_for(plan)
    assert claims is not None
    calls = []

    @idempotent(key=lambda m: m.value.decode(), redis=claims,
                db=DbKeys(lambda: psycopg.connect(plan.dsn), table=plan.keys_table))
    def handle(msg: Message, ctx: Idempotent) -> None:
        calls.append(msg.attempt)
        ctx.connection.execute(f"INSERT INTO {plan.effects_table} (key) VALUES (%s)", (ctx.key,))
        if msg.attempt == 1:
            raise ConnectionError("the SMS provider timed out")

    first, _ = make_message(value=b"order-9:SENT", attempt=1)
    with pytest.raises(ConnectionError):
        handle(first)
    assert claims.client.get(f"{plan.redis_prefix}order-9:SENT") is None  # released
    assert row_counts(plan.dsn, plan.keys_table) == {}  # and the key rolled back
    second, _ = make_message(value=b"order-9:SENT", attempt=2)
    handle(second)
    assert calls == [1, 2]
    assert claims.client.get(f"{plan.redis_prefix}order-9:SENT") == b"DONE"
    assert row_counts(plan.dsn, plan.effects_table) == {"order-9:SENT": 1}
    third, _ = make_message(value=b"order-9:SENT", attempt=1)
    with pytest.raises(AlreadyProcessed):  # Redis answers, the handler does not run
        handle(third)
    assert calls == [1, 2]


def test_a_live_owner_keeps_its_claim_past_the_lease(redis_keys: tuple[str, str]) -> None:
    url, prefix = redis_keys
    claims = RedisClaims(redis.Redis.from_url(url), lease=timedelta(milliseconds=300),
                         prefix=f"{prefix}:idem:")
    started, release = threading.Event(), threading.Event()

    @idempotent(key=lambda m: "k", redis=claims)
    def slow(msg: Message, ctx: Idempotent) -> None:
        started.set()
        release.wait(10)

    first, _ = make_message(value=b"x")
    runner = threading.Thread(target=slow, args=(first,))
    runner.start()
    try:
        assert started.wait(10)
        deadline = time.monotonic() + 1.5  # five leases
        while time.monotonic() < deadline:
            dup, _ = make_message(value=b"x")
            with pytest.raises(Retry):
                slow(dup)
            time.sleep(0.1)
    finally:
        release.set()
        runner.join()
    dup, _ = make_message(value=b"x")
    with pytest.raises(AlreadyProcessed):
        slow(dup)


def test_sqlite_is_the_embedded_default(tmp_path: Path) -> None:
    db_path = tmp_path / "keys.db"
    keys = DbKeys(lambda: sqlite3.connect(db_path, timeout=30))
    keys.create_table()
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE effects (key TEXT)")

    @idempotent(key=header_key(), db=keys)
    def handle(msg: Message, ctx: Idempotent) -> None:
        ctx.connection.execute("INSERT INTO effects VALUES (?)", (ctx.key,))

    def deliver_one(i: int) -> str:
        msg, _ = make_message(headers=(("idempotency-key", f"k{i % 50}".encode()),))
        try:
            handle(msg)
            return "ack"
        except AlreadyProcessed:
            return "already"

    with ThreadPoolExecutor(8) as pool:
        outcomes = Counter(pool.map(deliver_one, range(200)))
    assert outcomes == {"ack": 50, "already": 150}
    with sqlite3.connect(db_path) as conn:
        rows = Counter(k for (k,) in conn.execute("SELECT key FROM effects"))
    assert rows == {f"k{i}": 1 for i in range(50)}
    unkeyed, _ = make_message()
    with pytest.raises(DeadLetter, match="no 'idempotency-key' header"):
        handle(unkeyed)


def test_async_handlers_on_postgres(plan: Plan) -> None:
    claims = claims_for(plan)

    @idempotent(key=lambda m: m.value.decode(), redis=claims,
                db=DbKeys(lambda: psycopg.connect(plan.dsn), table=plan.keys_table),
                busy_retry=timedelta(milliseconds=10))
    async def handle(msg: Message, ctx: Idempotent) -> None:
        await asyncio.sleep(0.005)
        ctx.connection.execute(f"INSERT INTO {plan.effects_table} (key) VALUES (%s)", (ctx.key,))

    async def deliver_async(key: str) -> str:
        while True:
            msg, _ = make_message(value=key.encode())
            try:
                await handle(msg)
                return "ack"
            except AlreadyProcessed:
                return "already"
            except Retry:
                await asyncio.sleep(0.01)

    async def scenario() -> Counter[str]:
        keys = [f"k{i % 40}" for i in range(120)]
        return Counter(await asyncio.gather(*(deliver_async(k) for k in keys)))

    assert asyncio.run(scenario()) == {"ack": 40, "already": 80}
    assert row_counts(plan.dsn, plan.effects_table) == {f"k{i}": 1 for i in range(40)}


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="needs redis=, db= or both"):
        idempotent()
    with pytest.raises(ValueError, match="plain SQL identifier"):
        DbKeys(lambda: None, table="keys; DROP TABLE x")
    with pytest.raises(ValueError, match="positive"):
        RedisClaims(redis.Redis(), lease=timedelta(0))


def test_a_worker_settles_duplicates_as_already_processed(plan: Plan) -> None:
    """Through the SDK's Worker and its in-process fake sidecar: the outcomes the tool raises
    become settlements."""
    claims = claims_for(plan)
    sent: list[str] = []

    @idempotent(redis=claims, db=DbKeys(lambda: psycopg.connect(plan.dsn), table=plan.keys_table))
    def send_sms(msg: Message, ctx: Idempotent) -> None:
        sent.append(ctx.key)
        ctx.connection.execute(f"INSERT INTO {plan.effects_table} (key) VALUES (%s)", (ctx.key,))

    with FakeSidecar() as fake:
        refs = [fake.publish(topic="sms", value=b"code", headers=[("idempotency-key", k)])
                for k in (b"order-1:SENT", b"order-2:SENT", b"order-1:SENT")]
        with Worker(fake.target, send_sms, max_in_flight=1):
            fake.wait_for_settlements(3)
        assert [fake.outcome(r) for r in refs] == ["ACK", "ACK", "ALREADY_PROCESSED"]
    assert sent == ["order-1:SENT", "order-2:SENT"]


@pytest.mark.parametrize("set_get", [True, False], ids=["redis-7-set-nx-get", "older-redis"])
def test_claim_states_in_one_round_trip_or_two(redis_keys: tuple[str, str], set_get: bool) -> None:
    """Redis 7 answers a claim in one ``SET NX GET``; before 7.0 it takes SET NX, then GET."""
    url, prefix = redis_keys
    claims = RedisClaims(redis.Redis.from_url(url), prefix=f"{prefix}:idem:")
    claims._set_get = set_get
    assert claims.claim("k", "t1") is ClaimState.CLAIMED
    assert claims.claim("k", "t2") is ClaimState.BUSY
    claims.release("k", "t2")  # not t2's claim: it stays
    assert claims.claim("k", "t3") is ClaimState.BUSY
    claims.done("k")
    assert claims.claim("k", "t4") is ClaimState.DONE
    claims.client.delete(f"{prefix}:idem:k")
    assert claims.claim("k", "t5") is ClaimState.CLAIMED
    claims.release("k", "t5")
    assert claims.client.get(f"{prefix}:idem:k") is None
