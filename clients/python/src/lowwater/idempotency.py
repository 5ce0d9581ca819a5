"""Idempotent handlers: a side effect once per key, although records arrive at least once.

Two layers, as the seed asks ("Redis alone can't guarantee idempotency"):

1. **A fast pre-check in Redis** (:class:`RedisClaims`), a small state machine per key.
   A handler claims its key with ``SET key IN_PROGRESS:<token> NX PX <lease>`` before it
   runs, and writes ``DONE`` (with a TTL that covers the message's validity window) after it
   succeeded, or deletes its claim after it failed, so that a retry can run. A duplicate that
   finds ``DONE`` is answered ``ALREADY_PROCESSED`` without running; one that finds a claim
   held by a live owner is answered ``RETRY`` after a delay, never a second send. A claim
   whose owner died expires after its lease; a live owner keeps renewing it.
2. **The final guarantee in the database** (:class:`DbKeys`): the key is inserted, under a
   unique constraint, in the same transaction as the handler's business write, and that
   transaction commits only after the handler returns. A duplicate violates the key and is
   answered ``ALREADY_PROCESSED``; on PostgreSQL a concurrent duplicate waits on the first
   one's uncommitted row and then fails on it. A handler that raises rolls its key back.

When Redis cannot be reached the pre-check is skipped (logged once per outage) and the
database key alone decides: slower, still exactly once for what the transaction covers.

The record is claimed *before* the channel call and only marked done *after* it, inside
the transaction: see ``docs/idempotency.md`` for why, and for the failure windows that
remain (a crash after the provider accepted a message but before the commit sends it again,
unless the provider honours :attr:`Idempotent.key`).

Example::

    claims = RedisClaims(redis.Redis(), lease=timedelta(seconds=30),
                         done_ttl=timedelta(minutes=10))
    keys = DbKeys(lambda: psycopg.connect(DSN))

    @idempotent(key=lambda msg: order_key(msg.value), redis=claims, db=keys)
    def send_sms(msg: lowwater.Message, ctx: Idempotent) -> None:
        provider.send(..., idempotency_key=ctx.key)  # the provider dedupes too, if it can
        ctx.connection.execute("INSERT INTO sms_log ...")  # the business write, same tx

Needs the ``redis`` package for :class:`RedisClaims` and a DB-API driver (``sqlite3``, or
``psycopg`` 3 for PostgreSQL) for :class:`DbKeys`: ``pip install 'lowwater[idempotency]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import inspect
import logging
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, TypeVar

from lowwater.message import Message
from lowwater.outcomes import AlreadyProcessed, DeadLetter, Retry

__all__ = [
    "ClaimState",
    "DbKeys",
    "Idempotent",
    "RedisClaims",
    "header_key",
    "idempotent",
]

_log = logging.getLogger("lowwater.idempotency")

DEFAULT_HEADER: Final = "idempotency-key"
DONE: Final = b"DONE"
_IN_PROGRESS: Final = "IN_PROGRESS:"

# Deletes or renews a claim only if it is still the caller's (its token is in the value).
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

T = TypeVar("T")


class ClaimState(enum.Enum):
    CLAIMED = "claimed"
    """This caller holds the key now."""
    DONE = "done"
    """The key was processed before."""
    BUSY = "busy"
    """Another live owner holds the key."""


class KeyMissing(ValueError):
    """A message has no idempotency key."""


def header_key(name: str = DEFAULT_HEADER) -> Callable[[Message], str]:
    """A key function that reads the message's ``name`` header (UTF-8).

    A message without it cannot be deduplicated: :func:`idempotent` dead-letters it with the
    reason, rather than retrying it forever or processing it unguarded.
    """

    def key(msg: Message) -> str:
        for header, value in reversed(msg.headers):  # the last one wins, as in Kafka clients
            if header == name and value:
                return value.decode("utf-8", "replace")
        raise KeyMissing(f"the message has no {name!r} header")

    return key


class RedisClaims:
    """The fast pre-check: one Redis key per idempotency key, ``IN_PROGRESS`` then ``DONE``.

    Args:
        client: a synchronous ``redis.Redis`` (it is thread-safe; its pool serves every
            handler thread). Give it short socket timeouts: a slow Redis delays every handler.
        lease: how long a claim lives unless its owner renews it. Longer: a crashed owner's
            duplicates wait longer (each answered RETRY meanwhile); shorter: more renewals.
            Owners renew every third of it while their handler runs.
        done_ttl: how long ``DONE`` is remembered: cover the message's validity window (a
            verification code's 5 minutes, the topic's retention, the retry tiers). After it
            only the database key catches a duplicate.
        prefix: the Redis key prefix.
    """

    def __init__(self, client: Any, *, lease: timedelta = timedelta(seconds=30),
                 done_ttl: timedelta = timedelta(minutes=10),
                 prefix: str = "lowwater:idem:") -> None:
        if lease <= timedelta(0) or done_ttl <= timedelta(0):
            raise ValueError("lease and done_ttl must be positive")
        self.client = client
        self.lease = lease
        self.done_ttl = done_ttl
        self.prefix = prefix
        self._lease_ms = max(1, int(lease.total_seconds() * 1000))
        self._done_ms = max(1, int(done_ttl.total_seconds() * 1000))
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._held: dict[str, str] = {}
        """Claims held now, redis key -> value, renewed by the renewer thread."""
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._set_get = True
        """Whether ``SET NX GET`` works (Redis 7.0 and later); found out at the first claim."""

    def _key(self, key: str) -> str:
        return self.prefix + key

    def claim(self, key: str, token: str) -> ClaimState:
        """Tries to take ``key`` for ``token``: one round trip (``SET NX GET``, Redis 7),
        or two on an older Redis.

        Raises:
            redis.RedisError: Redis could not be asked.
        """
        rkey, value = self._key(key), _IN_PROGRESS + token
        for _ in range(3):  # a claim may vanish between SET NX and GET: ask again
            if self._set_get:
                try:
                    current = self.client.set(rkey, value, nx=True, px=self._lease_ms, get=True)
                except Exception as exc:
                    if "syntax" not in str(exc).lower() and "wrong number" not in str(exc).lower():
                        raise
                    self._set_get = False  # before Redis 7.0: NX and GET do not combine
                    continue
                if current is None:
                    return self._claimed(rkey, value)
            else:
                if self.client.set(rkey, value, nx=True, px=self._lease_ms):
                    return self._claimed(rkey, value)
                current = self.client.get(rkey)
                if current is None:
                    continue
            return ClaimState.DONE if current == DONE else ClaimState.BUSY
        return ClaimState.BUSY

    def _claimed(self, rkey: str, value: str) -> ClaimState:
        with self._lock:
            self._held[rkey] = value
            self._start_renewer()
        return ClaimState.CLAIMED

    def done(self, key: str) -> None:
        """Marks ``key`` done for ``done_ttl``. Raises redis.RedisError."""
        rkey = self._key(key)
        with self._lock:
            self._held.pop(rkey, None)
        self.client.set(rkey, DONE, px=self._done_ms)

    def release(self, key: str, token: str) -> None:
        """Gives up ``token``'s claim on ``key`` (not anyone else's). Raises redis.RedisError."""
        rkey = self._key(key)
        with self._lock:
            self._held.pop(rkey, None)
        self._release(keys=[rkey], args=[_IN_PROGRESS + token])

    def forget(self, key: str) -> None:
        """Stops renewing a claim this process can no longer speak for."""
        with self._lock:
            self._held.pop(self._key(key), None)

    def _start_renewer(self) -> None:
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(target=self._renew_loop, name="lowwater-idem-renew",
                                             daemon=True)
            self._renewer.start()

    def _renew_loop(self) -> None:
        while True:
            time.sleep(self.lease.total_seconds() / 3)
            with self._lock:
                held = list(self._held.items())
                if not held:
                    self._renewer = None
                    return
            try:
                pipe = self.client.pipeline(transaction=False)
                for rkey, value in held:
                    self._renew(keys=[rkey], args=[value, self._lease_ms], client=pipe)
                pipe.execute()
            except Exception as exc:  # noqa: BLE001 - the claims lapse; the DB key still holds
                _log.warning("cannot renew %d idempotency claim(s): %s", len(held), exc)


class DbKeys:
    """The final guarantee: a unique key inserted in the handler's own transaction.

    Args:
        connect: returns a DB-API connection, or a context manager of one (a pool's
            ``pool.connection``). ``sqlite3`` and ``psycopg`` 3 are supported; the
            placeholder style and the duplicate-key error come from the driver's module.
            A connection is used by one message at a time, and closed (or returned to its
            pool) after it.
        table: the key table, created by :meth:`create_table` (``key`` is its primary key).
    """

    def __init__(self, connect: Callable[[], Any], *, table: str = "lowwater_idempotency") -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"table must be a plain SQL identifier, got {table!r}")
        self.connect = connect
        self.table = table

    def create_table(self) -> None:
        """Creates the key table if it does not exist."""
        with self._connection() as conn:
            conn.cursor().execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                " key TEXT PRIMARY KEY,"
                " done_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)")
            conn.commit()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        made = self.connect()
        if hasattr(made, "__enter__") and not _is_dbapi_connection(made):
            with made as conn:  # a pool's context manager
                yield conn
            return
        try:
            yield made
        finally:
            made.close()

    @contextlib.contextmanager
    def transaction(self, key: str) -> Iterator[Any]:
        """Inserts ``key``, yields the connection for the business write, commits on success.

        Raises:
            AlreadyProcessed: the key was committed before (a duplicate).
        """
        with self._connection() as conn:
            driver = sys.modules[type(conn).__module__.split(".")[0]]
            mark = "?" if getattr(driver, "paramstyle", "qmark") == "qmark" else "%s"
            try:
                conn.cursor().execute(
                    f"INSERT INTO {self.table} (key) VALUES ({mark})", (key,))
            except driver.IntegrityError:
                conn.rollback()
                raise AlreadyProcessed(f"idempotency key {key!r} is in {self.table}") from None
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()


def _is_dbapi_connection(obj: object) -> bool:
    return all(hasattr(obj, name) for name in ("cursor", "commit", "rollback"))


@dataclass(frozen=True, slots=True)
class Idempotent:
    """What an idempotent handler gets besides the message."""

    key: str
    """The idempotency key: pass it to a provider that accepts one."""
    connection: Any
    """The DB-API connection whose transaction holds the key, for the business write (None
    without a :class:`DbKeys`). Do not commit it: the wrapper commits after the handler."""


@dataclass(frozen=True, slots=True)
class _Guard:
    key_of: Callable[[Message], str]
    redis: RedisClaims | None
    db: DbKeys | None
    busy_retry: timedelta
    down: threading.Event  # set while Redis is unreachable: warn once per outage

    def begin(self, msg: Message) -> tuple[str, str, bool]:
        """(key, token, claimed): claims the key, or raises the outcome for a duplicate."""
        try:
            key = self.key_of(msg)
        except KeyMissing as exc:
            raise DeadLetter(str(exc)) from None
        token = uuid.uuid4().hex
        if self.redis is None:
            return key, token, False
        try:
            state = self.redis.claim(key, token)
        except Exception as exc:
            if self.db is None:
                raise  # no final guarantee to fall back to: retry later
            if not self.down.is_set():
                self.down.set()
                _log.warning("redis unreachable (%s); idempotency falls back to the database "
                             "key alone until it answers", exc)
            return key, token, False
        if self.down.is_set():
            self.down.clear()
            _log.warning("redis answers again; idempotency pre-checks resume")
        if state is ClaimState.DONE:
            raise AlreadyProcessed(f"idempotency key {key!r} is done")
        if state is ClaimState.BUSY:
            raise Retry(self.busy_retry, f"idempotency key {key!r} is in progress elsewhere")
        return key, token, True

    def finished(self, key: str, token: str, claimed: bool, ok: bool) -> None:
        """After the handler: DONE on success, the claim released on failure (best effort).
        Without a claim (no Redis, or Redis down when the handler began) nothing is written:
        the next duplicate's claim, or the database key, answers it."""
        if self.redis is None or not claimed:
            return
        try:
            if ok:
                self.redis.done(key)
            else:
                self.redis.release(key, token)
        except Exception as exc:  # noqa: BLE001 - the claim expires after its lease anyway
            self.redis.forget(key)
            _log.warning("cannot %s idempotency key %r in redis: %s",
                         "mark done" if ok else "release", key, exc)

    @contextlib.contextmanager
    def transaction(self, key: str) -> Iterator[Any]:
        if self.db is None:
            yield None
        else:
            with self.db.transaction(key) as conn:
                yield conn


def idempotent(
    *,
    key: Callable[[Message], str] | None = None,
    redis: RedisClaims | None = None,
    db: DbKeys | None = None,
    busy_retry: timedelta = timedelta(seconds=1),
) -> Callable[[Callable[..., Any]], Callable[[Message], Any]]:
    """Wraps ``handler(msg, ctx: Idempotent)`` into a ``handler(msg)`` whose side effect runs
    at most once per key among handlers that complete; see the module docs.

    Works on ``def`` handlers (for :class:`lowwater.Worker`) and ``async def`` ones (for
    :class:`lowwater.AsyncWorker`); for the latter the Redis and database calls run on a
    thread, and the connection is used from the event loop, so it must allow that
    (``sqlite3.connect(..., check_same_thread=False)``; psycopg connections do).

    Args:
        key: the idempotency key of a message, e.g. order number + status; by default its
            ``idempotency-key`` header (:func:`header_key`).
        redis: the pre-check; None to rely on the database alone.
        db: the final guarantee; None to rely on Redis alone, which is no guarantee: a
            duplicate after ``done_ttl``, or after an outage, runs again.
        busy_retry: the RETRY delay for a duplicate that finds its key in progress.
    """
    if redis is None and db is None:
        raise ValueError("idempotent() needs redis=, db= or both")
    guard = _Guard(key or header_key(), redis, db, busy_retry, threading.Event())

    def wrap(handler: Callable[..., Any]) -> Callable[[Message], Any]:
        if inspect.iscoroutinefunction(handler):
            return _wrap_async(guard, handler)
        return _wrap_sync(guard, handler)

    return wrap


def _wrap_sync(guard: _Guard, handler: Callable[[Message, Idempotent], T]) -> Callable[[Message], T]:
    @functools.wraps(handler)
    def run(msg: Message) -> T:
        key, token, claimed = guard.begin(msg)
        ok = False
        try:
            with guard.transaction(key) as conn:
                result = handler(msg, Idempotent(key, conn))
            ok = True
        except AlreadyProcessed:
            ok = True  # the database had it: record DONE for the next duplicate
            raise
        finally:
            guard.finished(key, token, claimed, ok)
        return result

    return run


def _wrap_async(guard: _Guard, handler: Callable[[Message, Idempotent], Awaitable[T]]
                ) -> Callable[[Message], Awaitable[T]]:
    @functools.wraps(handler)
    async def run(msg: Message) -> T:
        key, token, claimed = await asyncio.to_thread(guard.begin, msg)
        ok = False
        try:
            tx: contextlib.AbstractContextManager[Any] = guard.transaction(key)
            conn = await asyncio.to_thread(tx.__enter__)
            try:
                result = await handler(msg, Idempotent(key, conn))
            except BaseException:
                await asyncio.to_thread(tx.__exit__, *sys.exc_info())
                raise
            await asyncio.to_thread(tx.__exit__, None, None, None)
            ok = True
        except AlreadyProcessed:
            ok = True
            raise
        finally:
            await asyncio.to_thread(guard.finished, key, token, claimed, ok)
        return result

    return run
