"""The coordinator's state: pending records, leases, holders and commit points.

The ledger is pure bookkeeping. It never talks to Kafka or gRPC: the runtime
feeds it fetched records, settlements and the time, and reads back what to
deliver, what to commit and which partitions to pause or resume.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any, cast

from coordinator.core.flow import Credits, GateChange, PauseGate
from coordinator.core.leases import RECENT_IDS_REMEMBERED, LeaseTable
from coordinator.core.model import Offsets, Outcome, SettleStatus, TopicPartition
from coordinator.core.offsetmap import FinishedOffsets, encode
from coordinator.core.policy import Action, Decision, RetryPolicy
from coordinator.core.records import (
    DELAYED,
    DONE,
    HANDOFF,
    LEASED,
    NEVER,
    PARKED,
    READY,
    WAITING,
    WHOLE_PARTITION,
    CommitPoint,
    Handoff,
    HandoffKind,
    Holder,
    Lease,
    LeaseTimes,
    PartitionState,
    Record,
    Run,
    State,
)

# Enum members as module constants: on Python 3.11 each ``Enum.MEMBER`` lookup costs ~150 ns.
_OK, _ALREADY_SETTLED, _NOT_OWNER = SettleStatus.OK, SettleStatus.ALREADY_SETTLED, SettleStatus.NOT_OWNER
_FINISH, _DEAD_LETTER, _RETRY_TOPIC = Action.FINISH, Action.DEAD_LETTER, Action.RETRY_TOPIC
_EXPIRED = HandoffKind.EXPIRED

__all__ = [
    "NEVER",
    "PULL_HOLDER_MAX_IN_FLIGHT",
    "WHOLE_PARTITION",
    "CommitPoint",
    "Handoff",
    "HandoffKind",
    "Holder",
    "Lease",
    "LeaseTimes",
    "Ledger",
    "PartitionState",
    "Record",
    "Run",
    "State",
]

PULL_HOLDER_MAX_IN_FLIGHT = 100_000
"""Outstanding deliveries allowed per Pull caller; leases lapse if it never acknowledges."""


def _msg_id(lease: Lease) -> int:
    return lease.msg_id


def _open_members(first: int, run: Run) -> list[int]:
    """The msg_ids of a leased run's members neither finished nor set apart, lowest first."""
    done = run.done
    if done is None:
        return list(range(first, first + len(run.offsets)))
    return [first + i for i in range(len(run.offsets)) if not done[i]]


def _deadline_then_id(lease: Lease) -> tuple[float, int]:
    return lease.deadline, lease.msg_id


class OperatorRefused(Exception):
    """An operator action was refused; ``missing``: what it names is not here."""

    def __init__(self, why: str, *, missing: bool = False) -> None:
        super().__init__(why)
        self.missing = missing


class SkipRefused(OperatorRefused):
    """:meth:`Ledger.skip` did not skip; ``missing``: there is no such pending record."""


class Ledger:
    """Pending records per partition, leases per holder, and the commit points.

    Owned by one thread (the runtime's event loop); no method blocks.
    """

    def __init__(
        self,
        *,
        leases: LeaseTimes | None = None,
        policy: RetryPolicy | None = None,
        max_pending_per_partition: int = 10_000,
        remember: int = RECENT_IDS_REMEMBERED,
        offset_map_limit: int | None = None,
    ) -> None:
        """``offset_map_limit``: with a limit, commits carry the offset map of the finished
        offsets above them, in at most that many characters (see ``core.offsetmap``), and a
        commit is also handed out when only the map changed."""
        self._map_limit = offset_map_limit
        self.maps_too_big = 0
        """Commits handed out without their offset map, because it did not fit the limit."""
        self.lease_times = leases or LeaseTimes()
        self.policy = policy or RetryPolicy()
        self._cap = max_pending_per_partition
        PauseGate(max_pending_per_partition)  # validates the cap now, not at the first assign
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.holders: dict[str, Holder] = {}
        self._table: LeaseTable[Record, Holder] = LeaseTable(remember=remember)
        self._ready: deque[Record | Run] = deque()
        self.ready_count = 0
        """READY records, a READY run counting for each of its members."""
        self._run_leased = 0
        """Members of leased runs still in them: leases without a Lease object."""
        self._delayed: list[tuple[float, int, Record]] = []
        self._seq = itertools.count()
        self._generations = itertools.count(1)
        self._gate_changes: list[tuple[TopicPartition, GateChange]] = []
        self._handoffs: list[Handoff] = []

    # -- partitions -------------------------------------------------------

    def assign(
        self, tp: TopicPartition, committed: int | None = None, generation: int | None = None,
        policy: RetryPolicy | None = None, *, at_most_once: bool = False,
        finished: FinishedOffsets | None = None,
    ) -> PartitionState:
        """Starts a new generation for ``tp``.

        Args:
            committed: the group's committed offset, if known.
            generation: the caller's generation number (the fetcher's, so that
                it can check commits against it); by default the ledger's own.
            policy: attempts and delays for this partition (its subscription's);
                by default the ledger's.
            at_most_once: a record is finished as soon as it is leased: its
                lease only bounds the holder's credits, and whatever becomes
                of it (settled, lapsed, its stream gone) it is never delivered
                again.
            finished: the offset map read with ``committed``: records at these
                offsets were finished by the previous owner and are skipped.
        """
        old = self.partitions.get(tp)
        gen = next(self._generations) if generation is None else generation
        if old is not None:
            if gen <= old.generation:
                raise ValueError(
                    f"generation {gen} of {tp} is not newer than its current {old.generation}")
            self._drop(old)
        part = PartitionState(tp, gen, committed, self._cap, policy or self.policy, at_most_once)
        if finished is not None and finished.base == committed and len(finished):
            part.skip = finished
        self.partitions[tp] = part
        return part

    def seek(self, tp: TopicPartition, old: int, generation: int, offset: int) -> int | None:
        """The consumer of ``tp`` moved to ``offset`` (an operator's seek), ending generation
        ``old``: generation ``generation`` starts there, with the same policy, and the next
        commit carries ``offset`` (unless the broker has it already). The old generation's pending records are dropped
        unfinished and their leases released (a later settlement is answered STALE).

        Returns:
            How many pending records were dropped, or None (nothing changed) when ``tp`` is
            no longer in generation ``old`` here.
        """
        part = self.partitions.get(tp)
        if part is None or part.generation != old or part.revoking:
            return None
        dropped = len(part.records)
        new = self.assign(tp, part.committed, generation, part.policy,
                          at_most_once=part.at_most_once)
        new.offsets.start_at(offset)
        return dropped

    def begin_revoke(self, tps: Iterable[TopicPartition]) -> dict[str, list[int]]:
        """Stops dispatching from ``tps``; returns, per holder, its msg_ids on them."""
        notify: dict[str, list[int]] = {}
        for tp in tps:
            part = self.partitions.get(tp)
            if part is None or part.revoking:
                continue
            part.revoking = True
            self._set_runs_apart(part)
            for rec in part.records.values():
                if isinstance(rec, Record) and rec.state is LEASED and rec.lease is not None:
                    notify.setdefault(rec.lease.holder.name, []).append(rec.lease.msg_id)
        return notify

    def in_flight(self, tps: Iterable[TopicPartition]) -> int:
        """Leased records on ``tps``: what a revoke waits for."""
        return sum(p.in_flight for tp in tps if (p := self.partitions.get(tp)) is not None)

    def revoke(self, tps: Iterable[TopicPartition]) -> list[CommitPoint]:
        """Ends the generation of ``tps`` and returns what the final commit should carry.

        Leases still outstanding are released as STALE; the records they and
        the buffered ones hold are dropped (they were not committed, so the
        next owner fetches them again).
        """
        final: list[CommitPoint] = []
        for tp in tps:
            part = self.partitions.pop(tp, None)
            if part is None:
                continue
            offset = part.offsets.commit_offset
            if offset is not None and offset != part.committed:
                final.append(CommitPoint(tp, part.generation, offset))
            self._drop(part)
        return final

    def _drop(self, part: PartitionState) -> None:
        self._set_runs_apart(part)
        part.revoking = part.revoked = True
        part.busy.clear()
        part.waiting.clear()
        if not part.at_most_once:  # a revoked delivery is dropped unsettled: stop charging
            for holder in self.holders.values():  # (at-most-once ones are not revoked)
                for msg_id in [m for m, rec in holder.lapsed.items() if rec.part is part]:
                    self._answered(holder, msg_id)
        queued = 0
        for rec in part.records.values():
            if isinstance(rec, Run):  # a queued one: leased ones were set apart
                if rec.state is READY:
                    queued += rec.open
                    rec.state = DONE
                continue
            if rec.state is LEASED and rec.lease is not None:
                self._unlease(rec.lease, SettleStatus.STALE)
            elif rec.state is READY:
                queued += 1
            rec.state = DONE
        part.offsets.clear()
        if queued:  # compact now: with no worker to pop them, dead entries would pile up
            self.ready_count -= queued
            self._ready = deque(r for r in self._ready if r.state is READY)
        # A pause or resume queued for this generation must not reach the next one.
        self._gate_changes = [(tp, c) for tp, c in self._gate_changes if tp != part.tp]

    # -- records ----------------------------------------------------------

    def add(self, tp: TopicPartition, offset: int, size: int, payload: object, now: float,
            expires: float = NEVER, okey: object = None, *, attempts: int = 0,
            not_before: float = 0.0) -> bool:
        """Records a fetched record; False (and ignored) if ``tp`` is not assigned here.

        A record that ``expires`` (passes its TTL) by ``now`` is never delivered:
        it is handed off as EXPIRED at once, and so is a queued one whose expiry
        passes before a holder leases it.

        Records with the same ordering key ``okey`` (not None) are delivered one at
        a time, in offset order: a record waits until every earlier one of its key
        is finished or handed off, retries and redeliveries included.

        A record back from a retry topic brings the ``attempts`` it had, and is
        held until ``not_before`` (it is delivered with the next attempt number).
        """
        part = self.partitions.get(tp)
        if part is None:
            return False
        return self.add_to(part, offset, size, payload, now, expires, okey,
                           attempts=attempts, not_before=not_before)

    def add_to(self, part: PartitionState, offset: int, size: int, payload: object,
               now: float, expires: float = NEVER, okey: object = None, *, attempts: int = 0,
               not_before: float = 0.0) -> bool:
        """:meth:`add` for a caller that looked the partition up once for many records."""
        if part.revoking:
            return False
        skip = part.skip
        if skip is not None:
            if offset in skip:  # the previous owner finished it: not again
                part.offsets.passed(offset)
                part.skipped += 1
                return True
            if offset >= skip.end:
                part.skip = None
        rec = Record(part, offset, size, payload, now, expires, okey)
        part.offsets.fetched(offset, rec)
        if attempts:
            rec.attempt = attempts
        if expires <= now:
            rec.state = HANDOFF
            self._handoffs.append(Handoff(rec, _EXPIRED, "expired before it was delivered"))
        elif not_before > now:
            rec.state = DELAYED
            heapq.heappush(self._delayed, (not_before, next(self._seq), rec))
        else:
            self._ready.append(rec)
            self.ready_count += 1
        gate = part.gate
        if not gate.paused and len(part.records) >= gate.cap:  # adding can only ever pause
            self._check_gate(part)
        return True

    def add_run(self, part: PartitionState, offsets: Offsets, columns: tuple[list[Any], ...],
                sizes: list[int], now: float) -> bool:
        """Records fetched in a row from ``part`` (increasing ``offsets``, a size each, and
        their payloads as ``columns``: record i's payload is the tuple of each column's item
        i) that have nothing of their own: no TTL, no ordering key, not back from a
        retry topic. They are kept as one :class:`Run` while they share one fate, which costs
        a fraction of a record each; what :meth:`add_to` does for them is the same otherwise.
        False (and ignored) if ``part`` is being revoked.

        Raises:
            ValueError: as :meth:`add`.
        """
        if part.revoking:
            return False
        if part.skip is not None:  # the previous owner finished some: one by one
            for offset, size, *payload in zip(offsets, sizes, *columns, strict=True):
                self.add_to(part, offset, size, tuple(payload), now)
            return True
        run = Run(part, offsets, columns, sizes, now)
        part.offsets.fetched_run(offsets, run)
        self._ready.append(run)
        self.ready_count += len(offsets)
        gate = part.gate
        if not gate.paused and len(part.records) >= gate.cap:
            self._check_gate(part)
        return True

    def skip(self, tp: TopicPartition, offset: int) -> None:
        """An operator finishes the pending record at ``offset`` without a worker (a poison
        record that no attempt gets past). Its lease, if any, is released: a later
        settlement of it is answered STALE.

        Raises:
            SkipRefused: nothing is pending there, or the record is waiting behind its
                ordering key, being handed off, or in a partition being revoked (skip the
                record holding its key first, or wait).
        """
        part = self.partitions.get(tp)
        if part is None or part.revoking or part.revoked:
            raise SkipRefused("the partition is not assigned here", missing=True)
        found = part.records.get(offset)
        if found is None:
            raise SkipRefused("no record is pending at that offset (finished, or not fetched "
                              "yet)", missing=True)
        rec = self._apart(found, offset)
        state = rec.state
        if state is LEASED:
            if rec.lease is not None:
                self._unlease(rec.lease, SettleStatus.STALE)
        elif state is READY:
            self.ready_count -= 1  # its queue entry is dropped when reached, as not READY
        elif state is not DELAYED:
            raise SkipRefused(f"the record is {state.value}; only ready, leased or delayed "
                              "ones are skipped", missing=False)
        self._finish(rec)

    def take_gate_changes(self) -> list[tuple[TopicPartition, GateChange]]:
        """Pause/resume changes since the last call, oldest first."""
        changes, self._gate_changes = self._gate_changes, []
        return changes

    def take_handoffs(self) -> list[Handoff]:
        """Records given up on (dead-lettered) or expired since the last call, oldest first."""
        out, self._handoffs = self._handoffs, []
        return out

    def finish_handoff(self, rec: Record) -> None:
        """The hand-off's topic has durably taken ``rec`` (or it has none): it is finished."""
        if rec.state is HANDOFF:
            self._finish(rec)

    # -- holders ----------------------------------------------------------

    def open_holder(
        self, name: str, worker_id: str, max_messages: int, max_bytes: int = 0, *, pull: bool = False
    ) -> Holder:
        if name in self.holders:
            raise ValueError(f"holder {name!r} is already open")
        holder = Holder(name, worker_id, Credits(max_messages, max_bytes), pull)
        self.holders[name] = holder
        return holder

    def pull_holder(self, worker_id: str, max_in_flight: int | None = None) -> Holder:
        """The holder of Pull leases for ``worker_id``, opened on first use with room for
        ``max_in_flight`` leases (None: :data:`PULL_HOLDER_MAX_IN_FLIGHT`)."""
        name = f"pull:{worker_id}"
        holder = self.holders.get(name)
        if holder is None:
            cap = PULL_HOLDER_MAX_IN_FLIGHT if max_in_flight is None else max_in_flight
            holder = self.open_holder(name, worker_id, cap, pull=True)
        return holder

    def close_holder(self, name: str, now: float) -> int:
        """Closes a holder; each of its leases is redelivered at once. Returns how many."""
        holder = self.holders.pop(name, None)
        if holder is None:
            return 0
        for run in list(holder.runs.values()):
            self._set_run_apart(run)
        leases = sorted(holder.leases.values(), key=_msg_id)  # in the order they were granted
        for lease in leases:
            self._lapse(lease, "its stream closed", now)
        holder.lapsed.clear()
        return len(leases)

    def drop_idle_pull_holders(self) -> int:
        """Forgets the Pull holders that hold no lease: they have no other state, and the
        next Pull of their worker opens one again. Without this, a client inventing worker
        ids would grow the holders without bound. Returns how many were dropped."""
        idle = [name for name, h in self.holders.items()
                if h.pull and not h.leases and not h.runs]
        for name in idle:
            del self.holders[name]
        return len(idle)

    def lease_of(self, msg_id: int) -> Lease | None:
        """The lease ``msg_id`` names, if it is outstanding: its own, or a read-only view of
        a leased run's member."""
        lease = self._table.get(msg_id)
        if lease is not None:
            return lease
        found = self._member(msg_id)
        if found is None:
            return None
        run, i = found
        return run.view(run.offsets[i]).lease

    @staticmethod
    def holder_msg_ids(holder: Holder, limit: int | None = None) -> list[int]:
        """The msg_ids ``holder`` holds leases for, lowest first; with ``limit``, only the
        lowest ``limit`` of them, found without listing every member of every run (a status
        poll asks for 100 of a worker's thousands)."""
        if limit is None:
            ids = list(holder.leases)
            for first, run in holder.runs.items():
                ids += _open_members(first, run)
            return sorted(ids)
        ids = heapq.nsmallest(limit, holder.leases)
        members: list[int] = []
        for first in sorted(holder.runs):  # runs hold disjoint ranges of msg_ids
            if len(members) >= limit:
                break
            members += _open_members(first, holder.runs[first])
        return sorted(ids + members)[:limit]

    def lease(self, holder: Holder, now: float, limit: int) -> list[Lease | Run]:
        """Leases ready records to ``holder``, within its credits and ``limit`` (records).

        Returns a Lease per record leased on its own and the runs leased whole (their
        members' msg_ids are the run's ``msg_id`` on); :func:`leased_count` counts records.
        A holder that was closed gets nothing.
        """
        out: list[Lease | Run] = []
        if self.holders.get(holder.name) is not holder:
            return out
        ready, credits, table = self._ready, holder.credits, self._table
        deadline = now + self.lease_times.default
        # Credits.allows and Credits.take, inlined: this loop runs once per delivery.
        messages, nbytes = credits.messages, credits.bytes
        max_messages, max_bytes = credits.max_messages, credits.max_bytes
        leases = holder.leases
        taken = 0
        while ready and taken < limit:
            rec = ready[0]
            if isinstance(rec, Run):
                if rec.state is not READY:  # dropped with its partition
                    ready.popleft()
                    continue
                if rec.part.revoking:
                    ready.popleft()
                    self.ready_count -= rec.open
                    self._set_run_apart(rec, PARKED)
                    continue
                n = len(rec.offsets)  # a queued run has every member open
                k = min(n, limit - taken, max_messages - messages)
                if max_bytes:
                    sizes, room, j = rec.sizes, max_bytes - nbytes, 0
                    while j < k and (sizes[j] <= room or not (messages or j)):
                        room -= sizes[j]
                        j += 1
                    k = j
                if k <= 0:
                    break
                if k < n:
                    run = rec.split(k)
                    rec.part.offsets.split_run(rec, k, run)
                else:
                    ready.popleft()
                    run = rec
                self.ready_count -= k
                run.state, run.holder, run.deadline, run.granted = LEASED, holder, deadline, now
                run.msg_id = table.grant_block(run, k, deadline)
                holder.runs[run.msg_id] = run
                self._run_leased += k
                if run.part.at_most_once:  # finished once dispatched; the run holds credit
                    self._finish_pending(run)
                else:
                    run.part.in_flight += k
                messages += k
                nbytes += sum(run.sizes)
                taken += k
                out.append(run)
                continue
            if rec.state is not READY:  # dropped with its partition, or requeued elsewhere
                ready.popleft()
                continue
            part = rec.part
            if part.revoking:
                ready.popleft()
                self.ready_count -= 1
                rec.state = PARKED
                continue
            if rec.expires <= now:  # past its TTL while it waited: never delivered
                ready.popleft()
                self.ready_count -= 1
                rec.state = HANDOFF
                why = (f"expired after {rec.attempt} attempt(s)" if rec.attempt
                       else "expired before it was delivered")
                self._handoffs.append(Handoff(rec, _EXPIRED, why))
                if rec.okey is not None:
                    self._release_key(rec)
                continue
            okey = rec.okey
            if okey is not None:
                holding = part.busy.get(okey)
                if holding is None:
                    part.busy[okey] = rec
                elif holding is not rec:  # an earlier record of its key is not done yet
                    ready.popleft()
                    self.ready_count -= 1
                    rec.state = WAITING
                    waiting = part.waiting.get(okey)
                    if waiting is None:
                        part.waiting[okey] = waiting = deque()
                    waiting.append(rec)
                    continue
            size = rec.size
            if messages >= max_messages or (
                    max_bytes and messages and nbytes + size > max_bytes):
                break
            ready.popleft()
            self.ready_count -= 1
            rec.attempt += 1
            lease = table.grant(rec, holder, deadline, rec.attempt, watch=False, granted=now)
            rec.lease = lease
            rec.state = LEASED
            messages += 1
            nbytes += size
            leases[lease.msg_id] = lease
            out.append(lease)
            taken += 1
            if part.at_most_once:  # finished once dispatched; the lease holds only credit
                self._finish(rec)
            else:
                part.in_flight += 1
        credits.messages, credits.bytes = messages, nbytes
        if out:
            table.watch(deadline, out[0].msg_id, table.issued)
        return out

    # -- settlements --------------------------------------------------------

    def settle(
        self,
        holder: Holder | None,
        msg_id: int,
        outcome: Outcome | None,
        delay: float | None,
        now: float,
        reason: str = "",
    ) -> SettleStatus:
        """Applies one settlement.

        Args:
            holder: the stream settling, or None for Acknowledge (which may
                settle Pull leases only).
            outcome: None for an unspecified or unknown outcome (INVALID).
            delay: RETRY only, seconds; None for the default.
            reason: the worker's words, carried into a dead-letter hand-off.
        """
        lease = self._table.get(msg_id)
        if lease is None:
            found = self._member(msg_id)
            if found is None:
                if holder is not None:
                    self._answered(holder, msg_id)
                return self._table.recall(msg_id)
            run, i = found
            if holder is None:
                if not run.holder.pull:  # type: ignore[union-attr]  # a leased run has one
                    return SettleStatus.NOT_OWNER
            elif run.holder is not holder:
                return SettleStatus.NOT_OWNER
            if outcome is None:
                return SettleStatus.INVALID
            if outcome is Outcome.ACK:
                self._finish_member(run, i)
                return _OK
            lease = self._set_member_apart(run, i)
        if holder is None:
            if not lease.holder.pull:
                return SettleStatus.NOT_OWNER
        elif lease.holder is not holder:
            return SettleStatus.NOT_OWNER
        if outcome is None:
            return SettleStatus.INVALID
        rec = lease.record
        self._unlease(lease, _ALREADY_SETTLED)
        if rec.state is DONE:  # at most once: finished when it was dispatched
            return _OK
        decision = rec.part.policy.on_settle(outcome, lease.attempt, delay)
        if reason and decision.action is not _FINISH:  # for the dead-letter or retry headers
            decision = Decision(decision.action, decision.delay, f"{decision.reason}: {reason}")
        self._apply(rec, decision, now)
        return _OK

    def ack_many(self, holder: Holder, msg_ids: Iterable[int]) -> list[tuple[int, SettleStatus]]:
        """ACKs each of ``msg_ids`` for ``holder``; returns the (msg_id, status) not accepted.

        The fused hot path of :meth:`settle`: for each id it does exactly what
        ``settle(holder, msg_id, Outcome.ACK, None, now)`` does, without the
        per-id policy call, and checks each touched partition's gate once.
        """
        table = self._table
        get, release = table.get, table.release
        leases, credits, lapsed = holder.leases, holder.credits, holder.lapsed
        rejected: list[tuple[int, SettleStatus]] = []
        paused: set[PartitionState] = set()
        for msg_id in msg_ids:
            lease = get(msg_id)
            if lease is None:
                found = self._member(msg_id)
                if found is not None:
                    run, i = found
                    if run.holder is holder:
                        self._finish_member(run, i)
                    else:
                        rejected.append((msg_id, _NOT_OWNER))
                    continue
                if lapsed:
                    self._answered(holder, msg_id)
                rejected.append((msg_id, table.recall(msg_id)))
                continue
            if lease.holder is not holder:
                rejected.append((msg_id, _NOT_OWNER))
                continue
            release(lease, _ALREADY_SETTLED)
            del leases[msg_id]
            rec = lease.record
            credits.messages -= 1
            credits.bytes -= rec.size
            rec.lease = None
            if rec.state is DONE:  # at most once: finished when it was dispatched
                continue
            part = rec.part
            part.in_flight -= 1
            rec.state = DONE
            part.offsets.finished(rec.offset)
            if rec.okey is not None:
                self._release_key(rec)
            if part.gate.paused:
                paused.add(part)
        for part in paused:
            self._check_gate(part)
        return rejected

    def ack_ranges(self, holder: Holder, ranges: Iterable[tuple[int, int]]) -> list[
        tuple[int, SettleStatus]
    ]:
        """ACKs the msg_ids ``first .. first + count - 1`` of each (first, count) of ``ranges``
        for ``holder``, as :meth:`ack_many` would; returns the (msg_id, status) not accepted.
        A range that covers a leased run whole finishes it at once."""
        rejected: list[tuple[int, SettleStatus]] = []
        blocks = self._table.block
        for first, count in ranges:
            msg_id, end = first, first + count
            while msg_id < end:
                found = blocks(msg_id)
                if found is not None:
                    run, start = cast(Run, found[0]), found[1]
                    n = len(run.offsets)
                    stop = min(end, start + n)  # the ids of this block
                    if run.holder is holder:
                        if start == msg_id and stop == start + n and run.done is None:
                            self._finish_run(run)
                            msg_id = stop
                            continue
                        if self._finish_members(run, msg_id - start, stop - start):
                            msg_id = stop
                            continue
                else:
                    stop = msg_id + 1
                # One by one: a foreign, unknown or released id, or a run not all open.
                rejected += self.ack_many(holder, range(msg_id, stop))
                msg_id = stop
        return rejected

    def extend(self, holder: Holder, msg_id: int, extension: float | None, now: float) -> SettleStatus:
        """Moves a lease's deadline to now + ``extension`` (capped at the maximum lease)."""
        lease = self._table.get(msg_id)
        if lease is None:
            found = self._member(msg_id)
            if found is None:
                return self._table.recall(msg_id)
            if found[0].holder is not holder:
                return SettleStatus.NOT_OWNER
            lease = self._set_member_apart(*found)
        if lease.holder is not holder:
            return SettleStatus.NOT_OWNER
        times = self.lease_times
        span = times.default if extension is None else min(max(extension, 0.0), times.maximum)
        self._table.extend(lease, now + span)
        return SettleStatus.OK

    def tick(self, now: float) -> int:
        """Redelivers lapsed leases and due retries; returns the number of lapsed leases."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, rec = heapq.heappop(delayed)
            if rec.state is DELAYED:
                self._requeue(rec, front=False)
        lapsed, runs = self._table.take_lapsed(now)
        if runs:
            for run in runs:
                lapsed += self._set_run_apart(cast(Run, run))
            lapsed.sort(key=_deadline_then_id)  # in the order of their own leases' lapses
        for lease in lapsed:
            self._lapse(lease, "its lease expired", now)
        return len(lapsed)

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` next has work: the earliest lease deadline or retry due time."""
        times = [t for t in (self._table.next_deadline(),) if t is not None]
        if self._delayed:
            times.append(self._delayed[0][0])
        return min(times) if times else None

    @property
    def leased(self) -> int:
        """Leases outstanding across all holders."""
        return len(self._table) + self._run_leased

    # -- commits ----------------------------------------------------------

    def commit_points(self) -> list[CommitPoint]:
        """Partitions whose commit offset (or, with offset maps, its map) changed since it
        was last handed out."""
        out: list[CommitPoint] = []
        for part in self.partitions.values():
            if part.revoking:
                continue
            offset = part.offsets.commit_offset
            if offset is None:
                continue
            metadata = self._offset_map(part, offset)
            if offset != part.commit_sent or metadata != part.map_sent:
                part.commit_sent, part.map_sent = offset, metadata
                out.append(CommitPoint(part.tp, part.generation, offset, metadata))
        return out

    def _offset_map(self, part: PartitionState, offset: int) -> str:
        limit, offsets = self._map_limit, part.offsets
        if limit is None or offsets.next_offset is None:
            return ""
        # The pending set only shrinks by finishing and only grows by fetching, which moves
        # the next offset: with these three unchanged, so is the map.
        key = (offset, offsets.next_offset, len(offsets))
        if part.map_cache[0] == key:
            return part.map_cache[1]
        if offsets.next_offset - offset == len(offsets):
            # Every offset from the commit offset up is pending (acks came in order): nothing
            # above it is finished, and the map is empty without a walk of the pending set.
            part.map_cache = (key, "")
            return ""
        text = encode(offset, offsets.pending_from(offset), offsets.next_offset, limit)
        if text is None:
            self.maps_too_big += 1
            text = ""
        part.map_cache = (key, text)
        return text

    def committed(self, point: CommitPoint, ok: bool) -> None:
        """The broker's answer to a commit; ignored if the generation has moved on."""
        part = self.partitions.get(point.tp)
        if part is None or part.generation != point.generation:
            return
        if ok:
            part.committed = point.offset
        elif part.commit_sent == point.offset:
            part.commit_sent = part.committed  # hand it out again at the next commit
            part.map_sent = ""

    # -- internals ----------------------------------------------------------

    def _unlease(self, lease: Lease, why: SettleStatus, *, keep_credit: bool = False) -> None:
        self._table.release(lease, why)
        holder = lease.holder
        del holder.leases[lease.msg_id]
        rec = lease.record
        if not keep_credit:
            holder.credits.give(rec.size)
        if rec.state is not DONE:  # an at-most-once record was never counted in flight
            rec.part.in_flight -= 1
        rec.lease = None

    def _lapse(self, lease: Lease, why: str, now: float) -> None:
        rec, holder = lease.record, lease.holder
        charged = not holder.pull and self.holders.get(holder.name) is holder
        self._unlease(lease, SettleStatus.ALREADY_SETTLED, keep_credit=charged)
        if charged:  # the stream may still hold it: see Holder.lapsed
            holder.lapsed[lease.msg_id] = rec
        if rec.state is not DONE:  # at most once: never delivered again
            self._apply(rec, rec.part.policy.on_lapse(lease.attempt, why), now)

    def _answered(self, holder: Holder, msg_id: int) -> None:
        """``holder`` answered for ``msg_id``, which holds no lease: if it had lapsed on this
        holder, the holder no longer holds it, and its credit returns."""
        rec = holder.lapsed.pop(msg_id, None)
        if rec is not None:
            holder.credits.give(rec.size)

    def _apply(self, rec: Record, decision: Decision, now: float) -> None:
        if decision.action is _FINISH:
            self._finish(rec)
        elif decision.action is _DEAD_LETTER or decision.action is _RETRY_TOPIC:
            rec.state = HANDOFF
            kind = HandoffKind.DEAD_LETTER if decision.action is _DEAD_LETTER else HandoffKind.RETRY
            self._handoffs.append(Handoff(rec, kind, decision.reason, decision.delay))
            if rec.okey is not None:  # out of the flow: the records behind it go on
                self._release_key(rec)
        elif decision.delay > 0:
            rec.state = DELAYED
            heapq.heappush(self._delayed, (now + decision.delay, next(self._seq), rec))
        else:
            self._requeue(rec, front=True)

    def _requeue(self, rec: Record, *, front: bool) -> None:
        if rec.part.revoking:
            rec.state = PARKED
            return
        rec.state = READY
        self.ready_count += 1
        if front:
            self._ready.appendleft(rec)  # it holds the low-water mark back: serve it first
        else:
            self._ready.append(rec)

    def _finish(self, rec: Record) -> None:
        part = rec.part
        rec.state = DONE
        if part.revoked:
            return
        part.offsets.finished(rec.offset)
        if rec.okey is not None:
            self._release_key(rec)
        if part.gate.paused:  # finishing can only ever resume a partition
            self._check_gate(part)

    def _release_key(self, rec: Record) -> None:
        """``rec`` no longer holds its ordering key (if it did): the next record waiting for
        the key takes it and goes to the front of the queue."""
        part, okey = rec.part, rec.okey
        if part.busy.get(okey) is not rec:
            return
        waiting = part.waiting.get(okey)
        if not waiting:
            del part.busy[okey]
            return
        nxt = waiting.popleft()
        if not waiting:
            del part.waiting[okey]
        part.busy[okey] = nxt
        self._requeue(nxt, front=True)

    # -- runs -------------------------------------------------------------------

    def _member(self, msg_id: int) -> tuple[Run, int] | None:
        """(run, member index) of an open member of a leased run, by its msg_id."""
        found = self._table.block(msg_id)
        if found is None:
            return None
        run = cast(Run, found[0])
        i = msg_id - found[1]
        done = run.done
        if done is not None and done[i]:
            return None
        return run, i

    def _finish_member(self, run: Run, i: int) -> None:
        """An open member of a leased run is finished (ACKed)."""
        done = run.done
        if done is None:
            done = run.done = bytearray(len(run.offsets))
        done[i] = 1
        run.open -= 1
        self._run_leased -= 1
        credits = run.holder.credits  # type: ignore[union-attr]  # a leased run has one
        credits.messages -= 1
        credits.bytes -= run.sizes[i]
        if not run.open:
            self._release_run(run)
        part = run.part
        if part.at_most_once:  # finished when it was dispatched
            return
        part.in_flight -= 1
        part.offsets.finished_member(run, run.offsets[i])
        if part.gate.paused:
            self._check_gate(part)

    def _finish_members(self, run: Run, i: int, j: int) -> bool:
        """Members ``i`` to ``j - 1`` of a leased run are finished (ACKed) at once, as
        :meth:`_finish_member` of each would; False (and nothing changes) unless every one of
        them is open. A worker's ACKs rarely cover a run whole: a request carries what was
        handled when it was sent."""
        done = run.done
        if done is None:
            done = run.done = bytearray(len(run.offsets))
        elif done.find(1, i, j) != -1:
            return False
        k = j - i
        done[i:j] = b"\x01" * k
        run.open -= k
        self._run_leased -= k
        credits = run.holder.credits  # type: ignore[union-attr]  # a leased run has one
        credits.messages -= k
        credits.bytes -= sum(run.sizes[i:j])
        if not run.open:
            self._release_run(run)
        part = run.part
        if part.at_most_once:  # finished when it was dispatched
            return True
        part.in_flight -= k
        part.offsets.finished_members(run, run.offsets[i], k)
        if part.gate.paused:
            self._check_gate(part)
        return True

    def _finish_run(self, run: Run) -> None:
        """Every member of a leased run, all open, is finished (ACKed) at once."""
        n = len(run.offsets)
        run.open = 0
        self._run_leased -= n
        credits = run.holder.credits  # type: ignore[union-attr]  # a leased run has one
        credits.messages -= n
        credits.bytes -= sum(run.sizes)
        self._release_run(run)
        if not run.part.at_most_once:  # (those were finished when dispatched)
            run.part.in_flight -= n
            self._finish_pending(run)

    def _finish_pending(self, run: Run) -> None:
        """Every member of ``run``, all pending, is finished."""
        part = run.part
        part.offsets.finished_run(run)
        if part.gate.paused:
            self._check_gate(part)

    def _release_run(self, run: Run) -> None:
        """A leased run has no open member left: its msg_ids are released (each answered
        ALREADY_SETTLED from now on, unless set apart and released otherwise)."""
        self._table.release_block(run.msg_id, _ALREADY_SETTLED)
        del run.holder.runs[run.msg_id]  # type: ignore[union-attr]  # a leased run has one
        run.state = DONE

    def _set_member_apart(self, run: Run, i: int, state: State = LEASED) -> Lease:
        """Sets an open member of a run apart as a Record of its own, as if fetched alone: in
        ``state`` for a queued run; for a leased run, leased under its msg_id, deadline and
        credit. Returns its lease (leased) or a lease-less one naming the record (queued)."""
        part = run.part
        offset = run.offsets[i]
        rec = Record(part, offset, run.sizes[i], run.payload(i), run.fetched_at)
        finished = run.state is LEASED and part.at_most_once  # when it was dispatched
        if not finished:
            part.offsets.set_apart(run, offset, rec)  # pending on its own from now on
        done = run.done
        if done is None:
            done = run.done = bytearray(len(run.offsets))
        done[i] = 1
        run.open -= 1
        if run.state is not LEASED:
            rec.state = state
            return Lease(0, rec, cast(Holder, None), 0.0, 0)  # only its record
        holder = cast(Holder, run.holder)  # a leased run has one
        rec.attempt = 1
        rec.state = DONE if finished else LEASED
        lease = Lease(run.msg_id + i, rec, holder, run.deadline, 1, run.granted)
        rec.lease = lease
        self._table.adopt(lease)
        holder.leases[lease.msg_id] = lease
        self._run_leased -= 1
        if not run.open:
            self._release_run(run)
        return lease

    def _set_run_apart(self, run: Run, state: State = LEASED) -> list[Lease]:
        """Sets every open member of ``run`` apart (see :meth:`_set_member_apart`); returns
        their leases."""
        done = run.done
        out = [self._set_member_apart(run, i, state) for i in range(len(run.offsets))
               if done is None or not done[i]]
        if run.state is READY:
            run.state = DONE  # its queue entry is skipped; the caller placed its members
        return out

    def _set_runs_apart(self, part: PartitionState) -> None:
        """Sets the members of every leased run of ``part`` apart (a revoke or a seek)."""
        runs = {id(rec): rec for rec in part.records.values()
                if isinstance(rec, Run) and rec.state is LEASED}
        for run in runs.values():
            self._set_run_apart(run)

    def _apart(self, found: Record | Run, offset: int) -> Record:
        """The Record pending at ``offset``: ``found``, or its member set apart. A queued
        run is set apart whole, its members taking its place in the ready queue."""
        if not isinstance(found, Run):
            return found
        if found.state is LEASED:
            return self._set_member_apart(found, found.member(offset)).record
        records = [lease.record for lease in self._set_run_apart(found, READY)]
        ready = self._ready
        at = ready.index(found)
        ready.rotate(-at)
        ready.popleft()
        ready.extendleft(reversed(records))
        ready.rotate(at)
        rec = found.part.records[offset]
        assert isinstance(rec, Record)
        return rec

    def _check_gate(self, part: PartitionState) -> None:
        change = part.gate.update(len(part.records))
        if change is not None:
            self._gate_changes.append((part.tp, change))
