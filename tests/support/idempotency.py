"""A load for ``lowwater.idempotency``: deliveries of keys, duplicates among them, run on threads.

``python -m tests.support.idempotency PLAN.json`` runs one process's share of a plan: every
delivery through an idempotent handler whose side effects land in two tables of a real
PostgreSQL. ``sends`` is written outside the handler's transaction, as a call to an SMS
provider would be (it cannot be rolled back); ``effects`` is the business write inside it.
Exactly once means one row per key in each.

This module must not import pytest.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import psycopg
import redis

from lowwater import AlreadyProcessed, Message, Retry
from lowwater.idempotency import DbKeys, Idempotent, RedisClaims, idempotent
from lowwater.testing import make_message


@dataclass(frozen=True)
class Plan:
    dsn: str
    redis_url: str | None
    """None: no Redis pre-check."""
    redis_prefix: str
    keys_table: str
    effects_table: str
    sends_table: str
    deliveries: list[str]
    """The keys to deliver, in order; a key may repeat (a duplicate)."""
    threads: int = 4
    handler_seconds: float = 0.001
    lease_seconds: float = 30.0

    def dump(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def load(cls, text: str) -> Plan:
        return cls(**json.loads(text))


def create_tables(plan: Plan) -> None:
    DbKeys(lambda: psycopg.connect(plan.dsn), table=plan.keys_table).create_table()
    with psycopg.connect(plan.dsn, autocommit=True) as conn:
        for table in (plan.effects_table, plan.sends_table):
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT NOT NULL, pid INT)")


def drop_tables(dsn: str, *tables: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def row_counts(dsn: str, table: str) -> Counter[str]:
    with psycopg.connect(dsn) as conn:
        return Counter(row[0] for row in conn.execute(f"SELECT key FROM {table}"))


def make_handler(plan: Plan, claims: RedisClaims | None) -> Callable[[Message], Any]:
    sender = threading.local()  # one autocommit connection per thread: the "provider"
    pid = os.getpid()

    def provider() -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(sender, "conn", None)
        if conn is None:
            conn = sender.conn = psycopg.connect(plan.dsn, autocommit=True)
        return conn

    @idempotent(key=lambda msg: msg.value.decode(), redis=claims,
                db=DbKeys(lambda: psycopg.connect(plan.dsn), table=plan.keys_table),
                busy_retry=timedelta(milliseconds=20))
    def handle(msg: Message, ctx: Idempotent) -> None:
        provider().execute(f"INSERT INTO {plan.sends_table} (key, pid) VALUES (%s, %s)",
                           (ctx.key, pid))
        time.sleep(plan.handler_seconds)
        ctx.connection.execute(f"INSERT INTO {plan.effects_table} (key, pid) VALUES (%s, %s)",
                               (ctx.key, pid))

    return handle


def claims_for(plan: Plan) -> RedisClaims | None:
    if plan.redis_url is None:
        return None
    client = redis.Redis.from_url(plan.redis_url, socket_timeout=2, socket_connect_timeout=0.5)
    return RedisClaims(client, lease=timedelta(seconds=plan.lease_seconds),
                       prefix=plan.redis_prefix)


def deliver(handler: Callable[[Message], Any], key: str,
            retries: Counter[str] | None = None) -> str:
    """Delivers ``key`` until it is settled; returns how: ``ack`` or ``already``. Each RETRY
    (the key was in progress elsewhere) is counted in ``retries["busy"]``."""
    attempt = 1
    while True:
        msg, _ = make_message(value=key.encode(), attempt=attempt)
        try:
            handler(msg)
            return "ack"
        except AlreadyProcessed:
            return "already"
        except Retry as retry:  # the sidecar would redeliver it after the delay
            attempt += 1
            if retries is not None:
                retries["busy"] += 1  # Counter += is atomic enough under the GIL for a tally
            time.sleep(retry.delay.total_seconds() if retry.delay else 0.02)


def run(plan: Plan) -> Counter[str]:
    """Outcomes (``ack``, ``already``) and, as ``busy``, the RETRYs met on the way."""
    handler = make_handler(plan, claims_for(plan))
    retries: Counter[str] = Counter()
    with ThreadPoolExecutor(plan.threads) as pool:
        outcomes = Counter(pool.map(lambda key: deliver(handler, key, retries), plan.deliveries))
    return outcomes + retries


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        plan = Plan.load(f.read())
    outcomes = run(plan)
    print(json.dumps(dict(outcomes)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
