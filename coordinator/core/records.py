"""The ledger's records: one assignment of a partition, one fetched record, one holder.

These are plain mutable objects owned by the :class:`~coordinator.core.ledger.Ledger`'s
owner; nothing here has behaviour beyond construction.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from coordinator.core.flow import Credits, PauseGate
from coordinator.core.leases import Lease as _Lease
from coordinator.core.model import Offsets, TopicPartition
from coordinator.core.offsetmap import FinishedOffsets
from coordinator.core.offsets import PartitionOffsets
from coordinator.core.policy import RetryPolicy


class State(enum.Enum):
    READY = "ready"
    """Waiting in the ready queue for a holder."""
    LEASED = "leased"
    DELAYED = "delayed"
    """Waiting for its retry delay to pass."""
    PARKED = "parked"
    """Its partition is being revoked: it stays pending but is not delivered."""
    WAITING = "waiting"
    """Behind an earlier record of its ordering key, which is not finished yet."""
    HANDOFF = "handoff"
    """Given to the dead-letter path; pending until that path confirms."""
    DONE = "done"
    """Finished, or dropped with its revoked partition."""


# Module-level aliases: on Python 3.11 ``State.READY`` costs ~150 ns per access,
# and the hot paths test a record's state several times per record.
READY, LEASED, DELAYED, PARKED, WAITING, HANDOFF, DONE = (
    State.READY, State.LEASED, State.DELAYED, State.PARKED, State.WAITING, State.HANDOFF,
    State.DONE)

WHOLE_PARTITION: object = object()
"""The ordering key of every record of a partition ordered as a whole."""


class HandoffKind(enum.Enum):
    DEAD_LETTER = "dead_letter"
    """Given up on: max attempts used, or the worker answered DEAD_LETTER."""
    EXPIRED = "expired"
    """Past its TTL: it is never delivered again."""
    RETRY = "retry"
    """To a retry topic, to come back after ``Handoff.delay``."""


class PartitionState:
    """One assignment of one partition to this sidecar.

    Every assignment creates a new object with a new generation; revoking marks
    it revoked, so anything still holding it can tell that it is stale.
    """

    __slots__ = (
        "at_most_once",
        "busy",
        "commit_sent",
        "committed",
        "gate",
        "generation",
        "in_flight",
        "map_cache",
        "map_sent",
        "offsets",
        "policy",
        "records",
        "revoked",
        "revoking",
        "skip",
        "skipped",
        "tp",
        "waiting",
    )

    def __init__(self, tp: TopicPartition, generation: int, committed: int | None, cap: int,
                 policy: RetryPolicy, at_most_once: bool = False):
        self.tp = tp
        self.generation = generation
        self.policy = policy
        """Attempts and delays for this partition's records (its subscription's)."""
        self.at_most_once = at_most_once
        """Records are finished when leased (see :meth:`Ledger.assign`)."""
        self.busy: dict[object, Record] = {}
        """Ordering key -> the record that holds it: the earliest of its key not yet finished
        nor handed off. Only it may be delivered."""
        self.waiting: dict[object, deque[Record]] = {}
        """Ordering key -> the records behind its holder, in offset order."""
        self.skip: FinishedOffsets | None = None
        """Offsets the previous owner finished above the committed one (its offset map):
        fetched again, they are finished at once instead of delivered."""
        self.skipped = 0
        self.map_sent = ""
        """The offset map of the last commit handed out."""
        self.map_cache: tuple[tuple[int, int, int] | None, str] = (None, "")
        """(commit offset, next offset, pending count) and the map they give."""
        self.offsets: PartitionOffsets[Record | Run] = PartitionOffsets()
        self.records = self.offsets
        """The pending records by offset, in fetch order (a run under each of its members'
        offsets): ``offsets`` itself, read as a mapping."""
        self.gate = PauseGate(cap)
        self.in_flight = 0
        self.revoking = False
        self.revoked = False
        self.committed = committed
        """The last offset the broker confirmed for the group, if known."""
        self.commit_sent: int | None = committed
        """The last offset handed to the committer for this generation."""


NEVER = math.inf
"""The expiry of a record without a TTL."""


class Record:
    """One fetched record, pending until finished. ``payload`` is opaque to the core."""

    __slots__ = ("attempt", "expires", "fetched_at", "lease", "offset", "okey", "part", "payload",
                 "size", "state")

    def __init__(self, part: PartitionState, offset: int, size: int, payload: object, now: float,
                 expires: float = NEVER, okey: object = None):
        self.part = part
        self.offset = offset
        self.size = size
        self.payload = payload
        self.fetched_at = now
        self.expires = expires
        """When it passes its TTL, on the ledger's clock; NEVER without one."""
        self.okey = okey
        """Its ordering key: records of one key are delivered one at a time, in offset order.
        None: no order (unordered subscriptions, and null Kafka keys)."""
        self.attempt = 0
        self.lease: Lease | None = None
        self.state = READY


class Run:
    """Records fetched in a row from one partition, kept as one while they share one fate.

    The fast path for records with nothing of their own (unordered, no TTL, not back from a
    retry topic; at least once or at most once): a run is queued as one, leased to one holder under
    consecutive msg_ids (``msg_id`` is its first member's), and its members are finished one
    by one or all at once. A member that needs a fate of its own (a retry, a lapse, an
    extension, a skip, a revoke) is first set apart by the ledger: it becomes a
    :class:`Record`, exactly as if it had been fetched alone, and the run forgets it.

    ``part.records`` holds the run under the offset of each member still in it.
    """

    __slots__ = ("columns", "deadline", "done", "fetched_at", "granted", "holder", "msg_id",
                 "offsets", "open", "part", "sizes", "state")

    attempt = 1
    """A run is only ever leased once: a redelivery is a record's own."""

    def __init__(self, part: PartitionState, offsets: Offsets, columns: tuple[list[Any], ...],
                 sizes: list[int], now: float) -> None:
        self.part = part
        self.offsets = offsets
        """Increasing: one per member, and so is each column and ``sizes``. Never changed in
        place (a range when they are consecutive)."""
        self.columns = columns
        """The members' payloads, column by column: member i's is ``payload(i)``. Opaque to
        the core, like a Record's payload; kept as columns so that the runtime can take them
        in and send them out a column at a time."""
        self.sizes = sizes
        self.fetched_at = now
        self.state = READY
        """READY while queued, LEASED once leased, DONE once no member is left in it."""
        self.open = len(offsets)
        """Members neither finished nor set apart."""
        self.done: bytearray | None = None
        """Per member, 1 once finished or set apart; None while every member is open."""
        self.msg_id = 0
        self.holder: Holder | None = None
        self.deadline = 0.0
        self.granted = 0.0

    def split(self, k: int) -> Run:
        """Cuts the first ``k`` members off this (READY) run into a new one, which it returns;
        the caller moves ``part.records`` of their offsets to it."""
        head = Run(self.part, self.offsets[:k], tuple(c[:k] for c in self.columns),
                   self.sizes[:k], self.fetched_at)
        self.offsets = self.offsets[k:]
        del self.sizes[:k]
        for column in self.columns:
            del column[:k]
        self.open -= k
        return head

    def payload(self, i: int) -> tuple[Any, ...]:
        """Member ``i``'s payload: its value in each column."""
        return tuple(column[i] for column in self.columns)

    def member(self, offset: int) -> int:
        """The index of the member at ``offset``."""
        return bisect.bisect_left(self.offsets, offset)

    def view(self, offset: int) -> Record:
        """A detached Record that reads as the member at ``offset`` does (for status pages and
        snapshots; changing it changes nothing)."""
        i = self.member(offset)
        rec = Record(self.part, offset, self.sizes[i], self.payload(i), self.fetched_at)
        rec.state = DONE if self.state is LEASED and self.part.at_most_once else self.state
        if self.state is LEASED:
            rec.attempt = 1
            rec.lease = _Lease(self.msg_id + i, rec, cast(Holder, self.holder), self.deadline,
                               1, self.granted)
        return rec


def pending_records(part: PartitionState) -> Iterator[tuple[int, Record]]:
    """``part``'s pending records by offset, in fetch order; a run's members as views."""
    for offset, rec in part.records.items():
        yield offset, rec.view(offset) if isinstance(rec, Run) else rec


def members(leases: Sequence[Lease | Run]) -> list[Lease]:
    """What :meth:`Ledger.lease` returned, each run as a lease per member (read-only views)."""
    out: list[Lease] = []
    for lease in leases:
        if isinstance(lease, Run):
            out += [cast(Lease, lease.view(offset).lease) for offset in lease.offsets]
        else:
            out.append(lease)
    return out


def leased_count(leases: Sequence[Lease | Run]) -> int:
    """Records in what :meth:`Ledger.lease` returned."""
    return sum(len(x.offsets) if isinstance(x, Run) else 1 for x in leases)


class Holder:
    """A worker stream or a Pull caller, with its credits and its leases."""

    __slots__ = ("credits", "lapsed", "leases", "name", "pull", "runs", "worker_id")

    def __init__(self, name: str, worker_id: str, credits: Credits, pull: bool) -> None:
        self.name = name
        self.worker_id = worker_id
        self.credits = credits
        self.leases: dict[int, Lease] = {}
        self.runs: dict[int, Run] = {}
        """The runs leased to it, by their first msg_id."""
        self.lapsed: dict[int, Record] = {}
        """Deliveries whose lease lapsed while this stream may still hold them.

        The record has gone back to the queue, but its credit stays charged
        until the stream answers for the msg_id (any settlement) or closes, or
        the record's partition is revoked: a hung worker must not be sent more
        than it declared. Pull holders hold nothing, so their credit returns at
        once."""
        self.pull = pull


Lease = _Lease[Record, Holder]


@dataclass(frozen=True, slots=True)
class LeaseTimes:
    """Lease durations, seconds."""

    default: float = 30.0
    maximum: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.default <= self.maximum:
            raise ValueError("leases need 0 < default <= maximum")


@dataclass(frozen=True, slots=True)
class Handoff:
    """A record leaving the normal flow: it stays pending until :meth:`Ledger.finish_handoff`."""

    record: Record
    kind: HandoffKind
    reason: str
    delay: float = 0.0
    """RETRY only: the tier, seconds."""


@dataclass(frozen=True, slots=True)
class CommitPoint:
    tp: TopicPartition
    generation: int
    offset: int
    metadata: str = ""
    """The offset map of the finished offsets above ``offset`` (see ``core.offsetmap``)."""
