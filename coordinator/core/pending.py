"""Pending sets as written to Redis for crash diagnostics: the key layout, the encoding, the
snapshot of a partition, the difference between two snapshots, and the replay of what a
previous instance had in flight.

Pure: no I/O. :mod:`coordinator.runtime.pendingstore` writes what this computes, and
``lowwater inspect`` reads it back.

Layout, under ``<prefix>:<group>:``:

- ``p:<topic>:<partition>``: a hash per partition. Field ``meta`` holds a :class:`PartitionMeta`
  as JSON; every other field is a decimal offset whose value is a :class:`PendingEntry` as a
  JSON array.
- ``partitions``: the set of ``<topic>:<partition>`` that have a hash.

Only records that were delivered at least once are listed: those are the ones in flight, or
that were, and they are what a crash replays as duplicates. Records fetched and never
delivered are summarised in the meta (a count and the lowest offset); listing them would make
the writes grow with the fetch buffer instead of with the work in flight.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from coordinator.core.model import TopicPartition
from coordinator.core.records import DONE, LEASED, PartitionState, Run

SCHEMA: Final = 1
"""The version written in every meta; a reader skips what has a newer one."""
META_FIELD: Final = "meta"

Row = tuple[str, int, int, int, str, int, int]
"""A snapshot entry before encoding: (state, attempts, fetched_ms, msg_id, worker, delivered_ms,
lease deadline ms). Tuples compare and hash fast, which keeps a snapshot cheap."""


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """One pending record that was delivered at least once."""

    offset: int
    state: str
    """``leased`` (in flight), ``ready`` (waiting for a redelivery), ``delayed`` (a retry
    delay), ``waiting`` (behind its ordering key), ``parked`` (its partition is being revoked)
    or ``handoff`` (being produced to a retry, dead-letter or expired topic)."""
    attempts: int
    fetched_ms: int
    """When this sidecar fetched it, epoch milliseconds."""
    msg_id: int = 0
    """Of its current delivery; 0 when it is not leased."""
    worker: str = ""
    """The worker_id holding it; empty when it is not leased."""
    delivered_ms: int = 0
    """When its current delivery started, epoch milliseconds; 0 when it is not leased."""
    deadline_ms: int = 0
    """When its current lease runs out, epoch milliseconds; 0 when it is not leased."""

    @classmethod
    def from_row(cls, offset: int, row: Row) -> PendingEntry:
        return cls(offset, *row)

    def row(self) -> Row:
        return (self.state, self.attempts, self.fetched_ms, self.msg_id, self.worker,
                self.delivered_ms, self.deadline_ms)


@dataclass(frozen=True, slots=True)
class PartitionMeta:
    """What a partition's hash says about the snapshot as a whole."""

    instance: str
    """The sidecar instance that wrote it (see :func:`instance_id`)."""
    generation: int
    written_ms: int
    """When it was written, epoch milliseconds."""
    committed: int | None
    """The offset last committed for the group, as that instance knew it."""
    commit_offset: int | None
    """The offset it would commit next: everything below is finished."""
    pending: int
    """Records pending in all, delivered or not."""
    undelivered: int
    """Of those, records fetched and never delivered (not listed one by one)."""
    lowest_undelivered: int | None
    schema: int = SCHEMA

    def encode(self) -> str:
        return json.dumps({
            "v": self.schema, "instance": self.instance, "generation": self.generation,
            "written_ms": self.written_ms, "committed": self.committed,
            "commit_offset": self.commit_offset, "pending": self.pending,
            "undelivered": self.undelivered, "lowest_undelivered": self.lowest_undelivered,
        }, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> PartitionMeta | None:
        """None for anything that is not a meta of a schema this reader knows."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("v") != SCHEMA:
                return None
            return cls(
                instance=_str(raw["instance"]), generation=_int(raw["generation"]),
                written_ms=_int(raw["written_ms"]), committed=_opt_int(raw["committed"]),
                commit_offset=_opt_int(raw["commit_offset"]), pending=_int(raw["pending"]),
                undelivered=_int(raw["undelivered"]),
                lowest_undelivered=_opt_int(raw["lowest_undelivered"]),
            )
        except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
            return None


def encode_row(row: Row) -> str:
    return json.dumps(row, separators=(",", ":"))


def decode_entry(offset_field: str | bytes, text: str | bytes) -> PendingEntry | None:
    """One hash field and its value; None when either is malformed."""
    try:
        offset = int(offset_field)
        raw = json.loads(text)
        if not isinstance(raw, list) or len(raw) != 7 or offset < 0:
            return None
        state, attempts, fetched, msg_id, worker, delivered, deadline = raw
        return PendingEntry(offset, _str(state), _int(attempts), _int(fetched), _int(msg_id),
                            _str(worker), _int(delivered), _int(deadline))
    except (ValueError, TypeError):
        return None


def decode_hash(fields: Mapping[Any, Any]) -> tuple[PartitionMeta | None, dict[int, PendingEntry]]:
    """A partition's hash (``HGETALL``) as its meta and its entries by offset. Malformed
    fields are left out: a diagnostic tool must show what it can."""
    meta = None
    entries: dict[int, PendingEntry] = {}
    for key, value in fields.items():
        name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        if name == META_FIELD:
            meta = PartitionMeta.decode(value)
            continue
        entry = decode_entry(name, value)
        if entry is not None:
            entries[entry.offset] = entry
    return meta, entries


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Redis key names of one consumer group."""

    prefix: str
    group: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{self.group}:"

    @property
    def partitions(self) -> str:
        return self.base + "partitions"

    def partition(self, tp: TopicPartition) -> str:
        return f"{self.base}p:{tp.topic}:{tp.partition}"

    @staticmethod
    def member(tp: TopicPartition) -> str:
        return f"{tp.topic}:{tp.partition}"

    @staticmethod
    def parse_member(member: str | bytes) -> TopicPartition | None:
        """The partition a ``partitions`` set member names; None when it names none (Kafka
        topic names never hold ``:``)."""
        try:
            text = member.decode() if isinstance(member, bytes) else member
        except UnicodeDecodeError:
            return None
        topic, sep, partition = text.rpartition(":")
        if not sep or not topic or not partition.isdigit():
            return None
        return TopicPartition(topic, int(partition))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One partition's pending set at one moment."""

    tp: TopicPartition
    generation: int
    rows: dict[int, Row]
    committed: int | None
    commit_offset: int | None
    pending: int
    undelivered: int
    lowest_undelivered: int | None

    def meta(self, instance: str, written_ms: int) -> PartitionMeta:
        return PartitionMeta(instance, self.generation, written_ms, self.committed,
                             self.commit_offset, self.pending, self.undelivered,
                             self.lowest_undelivered)


def snapshot(part: PartitionState, wall_ms: Callable[[float], int]) -> Snapshot:
    """The pending set of ``part``; ``wall_ms`` turns the ledger's clock into epoch ms."""
    rows: dict[int, Row] = {}
    undelivered = 0
    lowest: int | None = None
    for offset, rec in part.records.items():
        state = rec.state
        if state is DONE:
            continue
        if isinstance(rec, Run):
            if state is LEASED:  # a member of a leased run: its first delivery
                rows[offset] = (state.value, 1, wall_ms(rec.fetched_at),
                                rec.msg_id + rec.member(offset),
                                rec.holder.worker_id,  # type: ignore[union-attr]  # leased
                                wall_ms(rec.granted), wall_ms(rec.deadline))
                continue
        elif rec.attempt:
            lease = rec.lease
            fetched = wall_ms(rec.fetched_at)
            if lease is not None and state is LEASED:
                rows[offset] = (state.value, rec.attempt, fetched, lease.msg_id,
                                lease.holder.worker_id, wall_ms(lease.granted),
                                wall_ms(lease.deadline))
            else:
                rows[offset] = (state.value, rec.attempt, fetched, 0, "", 0, 0)
            continue
        undelivered += 1  # never delivered (a queued run's members too): counted, not listed
        if lowest is None or offset < lowest:
            lowest = offset
    return Snapshot(part.tp, part.generation, rows, part.committed, part.offsets.commit_offset,
                    len(part.records), undelivered, lowest)


def diff(before: Mapping[int, Row], after: Mapping[int, Row]) -> tuple[dict[int, Row], list[int]]:
    """(rows to write, offsets to delete) that turn ``before`` into ``after``."""
    upserts = {offset: row for offset, row in after.items() if before.get(offset) != row}
    deletes = [offset for offset in before if offset not in after]
    return upserts, deletes


class Replay:
    """What the previous owner of a partition had in flight when it last wrote its snapshot,
    and how much of it this instance has finished since.

    An inherited offset is done once this generation has fetched past it and it is no longer
    pending, or once the commit offset has passed it.
    """

    __slots__ = ("entries", "meta", "tp")

    def __init__(self, tp: TopicPartition, meta: PartitionMeta | None,
                 entries: Iterable[PendingEntry]) -> None:
        self.tp = tp
        self.meta = meta
        self.entries = sorted(entries, key=lambda e: e.offset)

    def done(self, part: PartitionState | None) -> list[bool]:
        """Per entry, in offset order: whether ``part`` (this instance's current generation of
        the partition, or None when it is not assigned here) has finished it."""
        if part is None:
            return [False] * len(self.entries)
        offsets = part.offsets
        commit, nxt = offsets.commit_offset, offsets.next_offset
        return [(commit is not None and e.offset < commit)
                or (nxt is not None and e.offset < nxt and e.offset not in offsets)
                for e in self.entries]


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value
