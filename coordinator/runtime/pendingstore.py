"""Writes the ledger's pending sets to Redis, write-behind, for crash diagnostics.

Every ``interval`` the writer snapshots each assigned partition (on the event loop, no I/O)
and writes what changed since its last write in one pipeline. Nothing on the per-record path
waits for Redis. When a write fails the store turns DEGRADED, keeps snapshotting, and rewrites
every partition in full once Redis answers again. Kafka stays the source of truth: an outage
costs only the diagnostics.

The first time it writes a partition of a new assignment, the writer first reads what the
previous owner left there: that is what a crash replays (:class:`~coordinator.core.pending.
Replay`, served by ``Admin/GetRecovery``).

Owned by the event loop; one flush at a time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from coordinator.core.ledger import Ledger
from coordinator.core.model import TopicPartition
from coordinator.core.pending import (
    META_FIELD,
    KeySpace,
    Replay,
    Row,
    Snapshot,
    decode_hash,
    diff,
    encode_row,
    snapshot,
)
from coordinator.core.records import PartitionState

log = logging.getLogger("coordinator.redis")

SOCKET_TIMEOUT_S = 2.0
"""Seconds a Redis connect or reply may take before the write counts as failed."""
FINAL_WRITE_TIMEOUT_S = 1.0
"""Seconds a revoke or a shutdown waits for the final snapshot of its partitions."""


class StoreState(enum.Enum):
    STARTING = "starting"
    OK = "ok"
    DEGRADED = "degraded"


def instance_id() -> str:
    """An id for this sidecar process: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class PendingStore:
    """The write-behind writer of one sidecar's pending sets.

    Lifecycle: :meth:`run` is its task (cancel it to stop); :meth:`write_final` writes the
    last snapshot of partitions that are leaving; :meth:`close` closes the client.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySpace,
        ledger: Ledger,
        *,
        interval: float,
        ttl: float,
        instance: str | None = None,
        on_state: Callable[[StoreState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.keys = keys
        self._ledger = ledger
        self._interval = interval
        self._ttl_ms = max(1, int(ttl * 1000))
        self.instance = instance or instance_id()
        self._on_state = on_state
        self._clock = clock
        self._wall = wall
        self.state = StoreState.STARTING
        self.last_error = ""
        self.last_write: float | None = None
        """When the last write succeeded, on ``clock``."""
        self.writes = 0
        self.failed_writes = 0
        self.inherited: dict[TopicPartition, Replay] = {}
        """Per partition assigned here: what its previous owner had in flight."""
        self._replaying: set[TopicPartition] = set()
        """Partitions whose inherited records are not all finished yet."""
        self._read: dict[TopicPartition, int] = {}
        """The generation whose inherited snapshot was read, per partition."""
        self._written: dict[TopicPartition, tuple[int, dict[int, Row]]] = {}
        """Per partition, the generation and rows that Redis holds as this writer wrote them."""
        self._lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------

    async def run(self) -> None:
        """Writes every ``interval`` until cancelled."""
        while True:
            await self.flush()
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        await self._client.aclose()

    # -- writing ------------------------------------------------------------

    async def flush(self) -> bool:
        """Writes the current snapshot of every assigned partition; True when Redis took it."""
        async with self._lock:
            parts = [p for p in self._ledger.partitions.values() if not p.revoked]
            return await self._write(parts, leaving=False)

    async def write_final(self, parts: Iterable[PartitionState]) -> bool:
        """Writes the last snapshot of partitions this sidecar is giving up, waiting at most
        :data:`FINAL_WRITE_TIMEOUT_S`: their next owner reads it, so it must land before the
        rebalance completes, or not at all."""
        leaving = [p for p in parts if not p.revoked]
        if not leaving:
            return True
        try:
            async with asyncio.timeout(FINAL_WRITE_TIMEOUT_S):
                async with self._lock:
                    return await self._write(leaving, leaving=True)
        except TimeoutError:
            self._failed("the final snapshot timed out")
            return False

    async def _write(self, parts: list[PartitionState], *, leaving: bool) -> bool:
        wall = self._wall()
        offset = wall - self._clock()  # the ledger's clock + offset = epoch seconds

        def wall_ms(t: float) -> int:
            return int((t + offset) * 1000)

        snaps = [snapshot(p, wall_ms) for p in parts]
        try:
            async with asyncio.timeout(max(self._interval, SOCKET_TIMEOUT_S) * 2):
                await self._read_inherited(snaps, wall)
                await self._send(snaps, int(wall * 1000))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return False
        for snap in snaps:
            if leaving:
                self._written.pop(snap.tp, None)
            else:
                self._written[snap.tp] = (snap.generation, snap.rows)
        self._forget_unassigned()
        self._report_replays()
        self.writes += 1
        self.last_write = self._clock()
        if self.state is not StoreState.OK:
            if self.state is StoreState.DEGRADED:
                log.warning("redis: writing pending sets again (caught up on %d partition(s))",
                            len(snaps))
            self._set_state(StoreState.OK)
        return True

    async def _read_inherited(self, snaps: list[Snapshot], wall: float) -> None:
        """Reads what the previous owner left for each partition new to this writer."""
        fresh = [s for s in snaps if self._read.get(s.tp) != s.generation]
        if not fresh:
            return
        pipe = self._client.pipeline(transaction=False)
        for snap in fresh:
            pipe.hgetall(self.keys.partition(snap.tp))
        results = await pipe.execute()
        for snap, fields in zip(fresh, results, strict=True):
            self._read[snap.tp] = snap.generation
            meta, entries = decode_hash(fields)
            if meta is None or meta.instance == self.instance:
                self.inherited.pop(snap.tp, None)
                continue
            replay = Replay(snap.tp, meta, entries.values())
            self.inherited[snap.tp] = replay
            if replay.entries:
                self._replaying.add(snap.tp)
                log.warning(
                    "%s[%d]: the previous owner (%s, snapshot %.1f s old) had %d record(s) "
                    "delivered and not finished; they are being replayed (Admin/GetRecovery)",
                    snap.tp.topic, snap.tp.partition, meta.instance,
                    wall - meta.written_ms / 1000.0, len(replay.entries))

    async def _send(self, snaps: list[Snapshot], now_ms: int) -> None:
        keys, ttl = self.keys, self._ttl_ms
        pipe = self._client.pipeline(transaction=False)
        for snap in snaps:
            key = keys.partition(snap.tp)
            meta = snap.meta(self.instance, now_ms).encode()
            written = self._written.get(snap.tp)
            deletes: list[int] = []
            if written is None or written[0] != snap.generation:
                pipe.delete(key)
                upserts = snap.rows
            else:
                upserts, deletes = diff(written[1], snap.rows)
            mapping: dict[FieldT, EncodableT] = {
                str(o): encode_row(r) for o, r in upserts.items()}
            mapping[META_FIELD] = meta
            pipe.hset(key, mapping=mapping)
            if deletes:
                pipe.hdel(key, *(str(o) for o in deletes))
            pipe.pexpire(key, ttl)
        if snaps:
            pipe.sadd(keys.partitions, *(keys.member(s.tp) for s in snaps))
            pipe.pexpire(keys.partitions, ttl)
        await pipe.execute()

    def _report_replays(self) -> None:
        """Logs each partition whose inherited records are now all finished."""
        for tp in list(self._replaying):
            replay = self.inherited.get(tp)
            if replay is None:
                self._replaying.discard(tp)
            elif all(replay.done(self._ledger.partitions.get(tp))):
                self._replaying.discard(tp)
                log.info("%s[%d]: all %d record(s) the previous owner had in flight are "
                         "finished", tp.topic, tp.partition, len(replay.entries))

    def _forget_unassigned(self) -> None:
        """Drops what this writer remembers of partitions no longer assigned here."""
        assigned = self._ledger.partitions
        for tp in [tp for tp in self._written if tp not in assigned]:
            del self._written[tp]
        for tp in [tp for tp in self._read if tp not in assigned]:
            del self._read[tp]
            self.inherited.pop(tp, None)

    def _failed(self, error: str) -> None:
        self.failed_writes += 1
        self.last_error = error
        self._written.clear()  # what Redis holds is unknown now: rewrite in full
        if self.state is not StoreState.DEGRADED:
            log.warning("redis: cannot write pending sets (%s); consuming and committing go "
                        "on, and the sets are rewritten when Redis answers", error)
            self._set_state(StoreState.DEGRADED)

    def _set_state(self, state: StoreState) -> None:
        self.state = state
        if self._on_state is not None:
            self._on_state(state)


def connect(url: str) -> aioredis.Redis:
    """A client for ``url`` with short timeouts: a slow Redis fails writes, never blocks."""
    client: Any = aioredis.Redis.from_url(
        url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry_on_timeout=False)
    return client  # type: ignore[no-any-return]
