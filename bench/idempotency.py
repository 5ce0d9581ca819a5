"""What ``lowwater.idempotency`` costs a handler, measured in one run on the same services.

The same handler, over N unique keys, on a thread pool, under four configurations:

1. plain: no idempotency (the baseline);
2. Redis pre-check only: ``@idempotent(redis=RedisClaims(...))``;
3. database key only: ``@idempotent(db=DbKeys(...))`` on PostgreSQL;
4. both (the recommended setup).

Then the same N keys again through (4), after they are DONE: every one is a duplicate,
answered ALREADY_PROCESSED by Redis without touching the database.

Every configuration does the same business write: one INSERT and its commit, on a connection
that each thread keeps (the ``DbKeys`` transaction's connection where there is one; otherwise
the handler commits it itself), as a connection pool would give. The four configurations run
in ROUNDS interleaved rounds, and each one's median rate is compared: one pass each is
within a shared machine's noise. Tables get a unique suffix and are dropped at the
end, the Redis keys a unique prefix, deleted at the end.

It prints each rate and its ratio to plain: on shared machines absolute rates are noise, the
ratio is the figure.

    .venv/bin/python bench/idempotency.py [--n 5000] [--threads 4] [--markdown PATH]

Redis: ``LOWWATER_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); PostgreSQL:
``LOWWATER_TEST_POSTGRES_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(ROOT))

import psycopg
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from lowwater import AlreadyProcessed, Message
from lowwater.idempotency import DbKeys, Idempotent, RedisClaims, idempotent
from lowwater.testing import make_message
from tests.support.redis import delete_prefix, ping, shared_redis_url, unique_prefix

POSTGRES_DSN_ENV: Final = "LOWWATER_TEST_POSTGRES_DSN"
DEFAULT_POSTGRES_DSN: Final = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_KEYS: Final = 5000
DEFAULT_THREADS: Final = 4
ROUNDS: Final = 3
"""Interleaved rounds of the four configurations; each one's median rate is reported."""
WARMUP_CALLS: Final = 200
"""Plain calls made (and not counted) before the first measured pass."""
COLUMNS: Final = ("configuration", "calls", "outcomes", "rate", "ratio to plain")
BUSINESS_WRITE: Final = ("every configuration does the same business write: one INSERT and its "
                         "commit, on a PostgreSQL connection each thread keeps (as a pool "
                         "would give); the median of 3 interleaved rounds is compared")
NOISE_NOTE: Final = ("absolute rates on a shared machine are noise; the ratios, measured in "
                     "one run, are the figure")


@dataclass(frozen=True)
class Config:
    name: str
    label: str
    redis: bool
    db: bool


CONFIGS: Final = (
    Config("plain", "plain (no idempotency)", redis=False, db=False),
    Config("redis", "Redis pre-check only", redis=True, db=False),
    Config("db", "database key only", redis=False, db=True),
    Config("both", "Redis + database key", redis=True, db=True),
)
DUPLICATES: Final = Config("dups", "duplicates through Redis + database key", redis=True, db=True)


@dataclass(frozen=True)
class Result:
    config: Config
    calls: int
    seconds: float
    outcomes: Counter[str]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Services:
    dsn: str
    redis_url: str
    prefix: str
    """Redis key prefix of this run; every key is under ``prefix:``."""
    suffix: str
    """Table name suffix of this run."""

    def effects_table(self, config: Config) -> str:
        return f"lwbench_effects_{config.name}_{self.suffix}"

    def keys_table(self, config: Config) -> str:
        return f"lwbench_keys_{config.name}_{self.suffix}"

    def tables(self) -> list[str]:
        return [t for c in CONFIGS for t in (self.effects_table(c), self.keys_table(c))]


def key_of(msg: Message) -> str:
    return msg.value.decode()


class ThreadConnections:
    """One PostgreSQL connection per thread, kept open: what a pool gives a handler."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def get(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = psycopg.connect(self._dsn)
            with self._lock:
                self._all.append(conn)
        return conn

    def lend(self) -> contextlib.nullcontext[psycopg.Connection[Any]]:
        """For ``DbKeys(connect=...)``: the thread's connection, not closed after use."""
        return contextlib.nullcontext(self.get())

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def make_handler(config: Config, services: Services, client: Any,
                 conns: ThreadConnections) -> Callable[[Message], Any]:
    """The handler of ``config``: one INSERT into its effects table per call."""
    insert = f"INSERT INTO {services.effects_table(config)} (key) VALUES (%s)"

    def own_write(key: str) -> None:
        conn = conns.get()
        conn.execute(insert, (key,))
        conn.commit()

    if not config.redis and not config.db:
        def plain(msg: Message) -> None:
            own_write(key_of(msg))
        return plain

    claims = (RedisClaims(client, prefix=f"{services.prefix}:{config.name}:")
              if config.redis else None)
    keys = (DbKeys(conns.lend, table=services.keys_table(config)) if config.db else None)

    @idempotent(key=key_of, redis=claims, db=keys)
    def handle(msg: Message, ctx: Idempotent) -> None:
        if ctx.connection is None:
            own_write(ctx.key)
        else:
            ctx.connection.execute(insert, (ctx.key,))  # committed by the wrapper

    return handle


def create_tables(services: Services) -> None:
    for config in CONFIGS:
        if config.db:
            DbKeys(lambda: psycopg.connect(services.dsn),
                   table=services.keys_table(config)).create_table()
    with psycopg.connect(services.dsn, autocommit=True) as conn:
        for config in CONFIGS:
            conn.execute(f"CREATE TABLE {services.effects_table(config)} (key TEXT NOT NULL)")


def drop_tables(services: Services) -> None:
    with psycopg.connect(services.dsn, autocommit=True) as conn:
        for table in services.tables():
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def row_count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0


def call(handler: Callable[[Message], Any], msg: Message) -> str:
    """``ack``, or how the call was answered ALREADY_PROCESSED (by Redis or the database)."""
    try:
        handler(msg)
    except AlreadyProcessed as exc:
        return "already (Redis)" if str(exc).endswith(" is done") else "already (db)"
    return "ack"


def run_pass(handler: Callable[[Message], Any], keys: list[str], threads: int,
             progress: Progress, description: str) -> tuple[float, Counter[str]]:
    """(seconds, outcomes) of calling ``handler`` once per key on ``threads`` threads."""
    messages = [make_message(value=key.encode(), offset=i)[0] for i, key in enumerate(keys)]
    task = progress.add_task(description, total=len(messages))

    def one(msg: Message) -> str:
        outcome = call(handler, msg)
        progress.advance(task)
        return outcome

    pool = ThreadPoolExecutor(threads)
    try:
        started = time.perf_counter()
        outcomes = Counter(pool.map(one, messages))
        seconds = time.perf_counter() - started
    finally:  # on an error or ^C, drop the calls not started yet rather than run them all
        pool.shutdown(cancel_futures=True)
    progress.remove_task(task)
    return seconds, outcomes


def check_postgres(dsn: str) -> str | None:
    """None when PostgreSQL at ``dsn`` answers; otherwise why not."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def measure(services: Services, n: int, threads: int, console: Console) -> list[Result]:
    client = redis.Redis.from_url(services.redis_url, socket_timeout=2,
                                  socket_connect_timeout=0.5,
                                  max_connections=max(threads * 2, 10))
    conns = ThreadConnections(services.dsn)
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    runs: dict[str, list[Result]] = {}
    try:
        with Progress("{task.description}", *columns, console=console,
                      transient=True) as progress:
            warmup = make_handler(CONFIGS[0], services, client, conns)
            run_pass(warmup, [f"warmup-{i}" for i in range(min(WARMUP_CALLS, n))], threads,
                     progress, "warm-up")
            with psycopg.connect(services.dsn, autocommit=True) as conn:
                conn.execute(f"TRUNCATE {services.effects_table(CONFIGS[0])}")
            handlers = {c.name: make_handler(c, services, client, conns) for c in CONFIGS}
            for round_no in range(ROUNDS):
                order = CONFIGS if round_no % 2 == 0 else tuple(reversed(CONFIGS))
                for config in order:
                    keys = [f"{config.name}-{round_no}-{k}" for k in range(n)]
                    label = f"round {round_no + 1}/{ROUNDS} {config.label}"
                    seconds, outcomes = run_pass(handlers[config.name], keys, threads,
                                                 progress, label)
                    result = Result(config, n, seconds, outcomes)
                    runs.setdefault(config.name, []).append(result)
                    console.print(f"  {label}: {result.rate:,.0f} calls/s "
                                  f"({describe(outcomes)})")
                    written = row_count(services.dsn, services.effects_table(config))
                    if written != n * (round_no + 1):
                        raise RuntimeError(f"{config.label}: {written} business writes for "
                                           f"{n * (round_no + 1)} unique keys")
            both = CONFIGS[-1]
            keys = [f"{both.name}-0-{k}" for k in range(n)]  # DONE since round 1
            seconds, outcomes = run_pass(handlers[both.name], keys, threads, progress,
                                         DUPLICATES.label)
            dups = Result(DUPLICATES, n, seconds, outcomes)
            console.print(f"  {DUPLICATES.label}: {dups.rate:,.0f} calls/s "
                          f"({describe(outcomes)})")
    finally:
        conns.close()
        client.close()
    return [_median(runs[c.name]) for c in CONFIGS] + [dups]


def _median(results: list[Result]) -> Result:
    """The result of median rate (the lower middle one for an even count)."""
    ranked = sorted(results, key=lambda r: r.rate)
    return ranked[(len(ranked) - 1) // 2]


def describe(outcomes: Counter[str]) -> str:
    return ", ".join(f"{count:,} {name}" for name, count in sorted(outcomes.items()))


def rows(results: list[Result]) -> list[list[str]]:
    plain = results[0].rate
    return [[r.config.label, f"{r.calls:,}", describe(r.outcomes), f"{r.rate:,.0f} calls/s",
             f"{r.rate / plain:.2f}"] for r in results]


def rich_table(results: list[Result], n: int, threads: int) -> Table:
    table = Table(title=f"lowwater.idempotency cost, N = {n:,} unique keys, {threads} threads, "
                        "one run", title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("configuration", "outcomes")
                         else "right")
    for row in rows(results):
        table.add_row(*row)
    return table


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if c in ("configuration", "outcomes") else "---:"
                            for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=DEFAULT_KEYS, help="unique keys per pass")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="handler threads (a ThreadPoolExecutor)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.n < 1 or args.threads < 1:
        parser.error("--n and --threads must be positive")
    console = Console(width=max(Console().width, 110))

    dsn = os.environ.get(POSTGRES_DSN_ENV, DEFAULT_POSTGRES_DSN)
    redis_url = shared_redis_url()
    if (why := ping(redis_url)) is not None:
        console.print(f"[red]Redis at {redis_url} does not answer[/] ({why}); "
                      "set LOWWATER_TEST_REDIS_URL")
        return 1
    if (why := check_postgres(dsn)) is not None:
        console.print(f"[red]PostgreSQL at {dsn} does not answer[/] ({why}); "
                      f"set {POSTGRES_DSN_ENV}")
        return 1

    services = Services(dsn, redis_url, unique_prefix(), uuid.uuid4().hex[:12])
    console.print(f"{len(CONFIGS)} configurations + a duplicates pass, {args.n:,} keys each, "
                  f"on {args.threads} threads")
    console.print(BUSINESS_WRITE)
    try:
        create_tables(services)
        results = measure(services, args.n, args.threads, console)
    finally:
        drop_tables(services)
        delete_prefix(redis_url, services.prefix)

    console.print(rich_table(results, args.n, args.threads))
    console.print(NOISE_NOTE)
    if args.markdown:
        args.markdown.write_text(markdown_table(results) + "\n")
        console.print(f"Markdown table written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
