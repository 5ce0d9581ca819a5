"""The model behind test_core_ledger_stateful: what the Ledger should hold, and checked calls.

``LedgerModel`` keeps, per partition, the offsets fetched and not yet finished in
the current generation, the group's committed offset, and every msg_id by fate
(active, settled, stale). Each ``_lease``/``_settle``/``_tick``/... helper drives
the ledger, asserts its answer against the model, then updates the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize

from coordinator.core.ledger import (
    CommitPoint,
    HandoffKind,
    Holder,
    Lease,
    LeaseTimes,
    Ledger,
    Record,
    Run,
    State,
)
from coordinator.core.model import Outcome, SettleStatus, TopicPartition
from coordinator.core.policy import RetryPolicy
from coordinator.core.records import leased_count, members, pending_records

TPS = (TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("fast", 0))
AT_MOST_ONCE = frozenset({TopicPartition("fast", 0)})
"""Partitions whose records are finished when leased (the at_most_once guarantee)."""
KEYED = frozenset({TopicPartition("t", 1)})
"""Partitions whose records carry ordering keys (the `key` ordering)."""
TIMES = LeaseTimes(default=20.0, maximum=50.0)
POLICY = RetryPolicy(default_delay=2.0, max_delay=20.0, max_attempts=3)
CAP = 6
RESUME_BELOW = 4
"""80% of CAP: a paused partition resumes once fewer than this many records are pending."""
FINISHING = {Outcome.ACK, Outcome.DROP, Outcome.ALREADY_PROCESSED}
OK = SettleStatus.OK


@dataclass
class Active:
    holder: str
    tp: TopicPartition
    offset: int
    deadline: float
    size: int
    at_most_once: bool = False
    """Its record was finished when leased: this lease holds only credit."""


class LedgerModel(RuleBasedStateMachine):
    @initialize(max_messages=st.integers(1, 4))
    def setup(self, max_messages: int) -> None:
        self.led = Ledger(leases=TIMES, policy=POLICY, max_pending_per_partition=CAP)
        self.now = 0.0
        self.gen: dict[TopicPartition, int | None] = dict.fromkeys(TPS)
        self.pending: dict[TopicPartition, set[int]] = {tp: set() for tp in TPS}
        self.next_pos: dict[TopicPartition, int | None] = dict.fromkeys(TPS)
        self.start: dict[TopicPartition, int | None] = dict.fromkeys(TPS)
        """Where an operator's seek moved the partition, until its first fetch."""
        self.fetch_pos = dict.fromkeys(TPS, 0)
        self.committed: dict[TopicPartition, int | None] = dict.fromkeys(TPS)
        self.sent: dict[TopicPartition, int | None] = dict.fromkeys(TPS)
        self.revoking: set[TopicPartition] = set()
        self.paused = dict.fromkeys(TPS, False)
        self.active: dict[int, Active] = {}
        self.keys: dict[tuple[TopicPartition, int], str | None] = {}
        """(partition, offset) -> ordering key, for the records of KEYED partitions."""
        self.lapsed: dict[int, Active] = {}
        """Lapsed on a stream holder that still holds the credit (see Holder.lapsed)."""
        self.settled: set[int] = set()
        self.stale: set[int] = set()
        self.leased_times: dict[tuple[int, int], int] = {}  # (generation, offset) -> leases
        self.max_id = 0
        self.handoffs: list[Record] = []
        self.points_out: list[CommitPoint] = []
        self.closed: list[Holder] = []
        self.led.open_holder("s0", "w0", max_messages)
        self.led.open_holder("s1", "w1", 4, 80)
        for tp in TPS:
            self._assign(tp)
            for offset in (0, 1, 3):  # something to lease from the first step on
                assert self.led.add(tp, offset, 10, None, self.now)
                self.pending[tp].add(offset)
            self.next_pos[tp] = self.fetch_pos[tp] = 4

    # -- model helpers ------------------------------------------------------

    def _commit(self, tp: TopicPartition) -> int | None:
        if self.pending[tp]:
            return min(self.pending[tp])
        return self.start[tp] if self.next_pos[tp] is None else self.next_pos[tp]

    def _snapshot(self) -> tuple[Any, ...]:
        parts = tuple(
            (p.tp, p.generation, p.offsets.commit_offset, p.commit_sent, p.committed, p.in_flight,
             p.revoking, tuple((o, r.state, r.attempt) for o, r in sorted(pending_records(p))))
            for p in self.led.partitions.values()
        )
        holders = tuple((h.name, h.credits.messages, h.credits.bytes,
                         tuple(self.led.holder_msg_ids(h))) for h in self.led.holders.values())
        return parts, holders, self.led.ready_count, self.led.leased, len(self.led._delayed)

    def _holder(self, pick: int) -> Holder:
        names = sorted(self.led.holders)
        return self.led.holders[names[pick % len(names)]]

    def _pick_id(self, source: str, pick: int) -> int:
        """A msg_id from the ``source`` pool, or the next non-empty one; else never issued."""
        pools = {"stale": self.stale, "settled": self.settled, "active": self.active}
        if source in pools:
            for name in [source, *(name for name in pools if name != source)]:
                if pools[name]:
                    pool = sorted(pools[name])
                    return pool[pick % len(pool)]
        return self.max_id + 1 + pick % 3

    def _who(self, msg_id: int, who: str, pick: int) -> Holder | None:
        """The owner of ``msg_id``, another (maybe closed) holder, or None (Acknowledge)."""
        owner = self.led.holders.get(self.active[msg_id].holder) if msg_id in self.active else None
        if who == "owner" and owner is not None:
            return owner
        others = [h for h in [*self.led.holders.values(), *self.closed] if h is not owner]
        return others[pick % len(others)] if others and who != "none" else None

    def _expect(self, msg_id: int, holder: Holder | None) -> SettleStatus:
        if msg_id in self.active:
            owner = self.active[msg_id].holder
            if holder is None:
                return OK if owner == "pull:w" else SettleStatus.NOT_OWNER
            return OK if holder is self.led.holders.get(owner) else SettleStatus.NOT_OWNER
        if msg_id in self.stale:
            return SettleStatus.STALE
        return SettleStatus.ALREADY_SETTLED if msg_id in self.settled else SettleStatus.UNKNOWN

    def _expect_acks(self, holder: Holder, ids: list[int]) -> list[tuple[int, SettleStatus]]:
        """The model's side of ACKing ``ids`` in order for ``holder``: applies them and
        returns the (msg_id, status) the ledger must reject."""
        expected = []
        for msg_id in ids:
            status = self._expect(msg_id, holder)
            if status is OK:
                done = self._end_lease(msg_id, self.settled)
                if not done.at_most_once:
                    self.pending[done.tp].remove(done.offset)
            else:
                self._answer(msg_id, holder)
                expected.append((msg_id, status))
        return expected

    def _end_lease(self, msg_id: int, fate: set[int]) -> Active:
        fate.add(msg_id)
        return self.active.pop(msg_id)

    def _collect_handoffs(self) -> None:
        for handoff in self.led.take_handoffs():
            rec, reason = handoff.record, handoff.reason
            assert rec.state is State.HANDOFF
            if handoff.kind is HandoffKind.EXPIRED:  # found expired at fetch or when leasing
                assert rec.expires <= self.now, (rec.expires, self.now)
            else:
                assert "dead-lettered" in reason or rec.attempt == POLICY.max_attempts, reason
            assert rec.part.generation == self.gen[rec.part.tp]
            self.handoffs.append(rec)

    # -- driving the ledger, checked ------------------------------------------

    def _lease(self, holder: Holder, limit: int) -> list[Lease]:
        leased = self.led.lease(holder, self.now, limit)
        leases = members(leased)  # a run leased whole: a lease per member
        assert len(leases) == leased_count(leased) <= limit
        for run in leased:
            if isinstance(run, Run):
                event("a run was leased whole")
                assert run.part.tp not in KEYED
                assert [m.msg_id for m in members([run])] == list(
                    range(run.msg_id, run.msg_id + len(run.offsets)))
        for lease in leases:
            rec = lease.record
            assert lease.msg_id > self.max_id  # strictly increasing, never reused
            self.max_id = lease.msg_id
            assert rec.part.generation == self.gen[rec.part.tp] and rec.part.tp not in self.revoking
            assert rec.offset in self.pending[rec.part.tp]
            assert rec.expires > self.now  # an expired record is never delivered
            if rec.part.tp in KEYED and rec.okey is not None:
                self._check_key_order(rec)
            at_most_once = rec.part.tp in AT_MOST_ONCE
            if at_most_once:  # finished on dispatch: never held back, never delivered again
                assert rec.state is State.DONE and rec.offset not in rec.part.records
                self.pending[rec.part.tp].remove(rec.offset)
            else:
                assert rec.state is State.LEASED
            key = (rec.part.generation, rec.offset)
            self.leased_times[key] = self.leased_times.get(key, 0) + 1
            assert POLICY.max_attempts is not None
            assert lease.attempt == self.leased_times[key] <= POLICY.max_attempts
            assert lease.deadline == self.now + TIMES.default
            self.active[lease.msg_id] = Active(holder.name, rec.part.tp, rec.offset,
                                            lease.deadline, rec.size, at_most_once)
        if len(leases) < limit:  # stopped early: nothing deliverable, or no credit for it
            nxt = next((r for r in self.led._ready
                        if r.state is State.READY and not r.part.revoking), None)
            size = nxt.sizes[0] if isinstance(nxt, Run) else None if nxt is None else nxt.size
            assert size is None or not holder.credits.allows(size)
        self._collect_handoffs()  # the expired ones it skipped
        return leases

    def _check_key_order(self, rec: Record) -> None:
        """A keyed record is leased only when every earlier record of its key is finished or
        handed off, and no other record of its key is in flight."""
        tp, key, records = rec.part.tp, rec.okey, rec.part.records
        earlier = [o for o in self.pending[tp] if o < rec.offset and self.keys.get((tp, o)) == key
                   and records[o].state is not State.HANDOFF]  # handed off: out of the flow
        assert not earlier, f"{tp}@{rec.offset} (key {key!r}) leased before {earlier}"
        flying = [a.offset for a in self.active.values()
                  if a.tp == tp and self.keys.get((tp, a.offset)) == key]
        assert flying in ([], [rec.offset]), (rec.offset, flying)

    def _settle(self, holder: Holder | None, msg_id: int, outcome: Outcome | None,
                delay: float | None) -> None:
        expected = self._expect(msg_id, holder)
        if expected is OK and outcome is None:
            expected = SettleStatus.INVALID
        before = self._snapshot()
        assert self.led.settle(holder, msg_id, outcome, delay, self.now) is expected
        if expected is not OK:
            if self._answer(msg_id, holder):  # only the holder's credit moves
                assert self._snapshot()[0] == before[0]
            else:
                assert self._snapshot() == before  # a rejected settlement changes nothing
            return
        done = self._end_lease(msg_id, self.settled)
        if outcome in FINISHING and not done.at_most_once:
            self.pending[done.tp].remove(done.offset)
        self._collect_handoffs()

    def _answer(self, msg_id: int, holder: Holder | None) -> bool:
        """``holder`` answered for ``msg_id`` without a lease: True if that returned its credit."""
        lapsed = self.lapsed.get(msg_id)
        if holder is None or lapsed is None or self.led.holders.get(lapsed.holder) is not holder:
            return False
        del self.lapsed[msg_id]
        return True

    def _extend(self, holder: Holder, msg_id: int, extension: float | None, times: int) -> None:
        """Extends ``times`` times at once (a msg_id repeated in one LeaseExtension)."""
        expected, before = self._expect(msg_id, holder), self._snapshot()
        for _ in range(times):
            assert self.led.extend(holder, msg_id, extension, self.now) is expected
        if expected is OK:
            span = TIMES.default if extension is None else min(max(extension, 0.0), TIMES.maximum)
            self.active[msg_id].deadline = self.now + span  # may repeat an earlier deadline
        else:
            assert self._snapshot() == before

    def _tick(self, now: float) -> None:
        self.now = now
        due = [m for m, a in self.active.items() if a.deadline <= now]
        assert self.led.tick(now) == len(due)
        for msg_id in due:
            lapsed = self._end_lease(msg_id, self.settled)
            if not lapsed.holder.startswith("pull:"):
                self.lapsed[msg_id] = lapsed
        self._collect_handoffs()

    def _finish_handoff(self, rec: Record) -> None:
        self.handoffs.remove(rec)
        tp, before = rec.part.tp, self._snapshot()
        self.led.finish_handoff(rec)
        if rec.part.generation == self.gen[tp]:
            self.pending[tp].remove(rec.offset)
        else:
            assert self._snapshot() == before  # its generation is gone: nothing moves

    def _drop_generation(self, tp: TopicPartition) -> None:
        for msg_id in [m for m, a in self.active.items() if a.tp == tp and not a.at_most_once]:
            self._end_lease(msg_id, self.stale)  # at-most-once leases live on: nothing to undo
        self.lapsed = {m: a for m, a in self.lapsed.items() if a.tp != tp or a.at_most_once}
        self.gen[tp], self.next_pos[tp], self.pending[tp] = None, None, set()
        self.start[tp] = None
        self.revoking.discard(tp)
        self.handoffs = [r for r in self.handoffs if r.part.tp != tp]

    def _assign(self, tp: TopicPartition) -> None:
        old = self.gen[tp]
        if old is not None:
            self._drop_generation(tp)
        self.led.take_gate_changes()  # the old generation's, as the engine does on revoke
        part = self.led.assign(tp, self.committed[tp], at_most_once=tp in AT_MOST_ONCE)
        self.paused[tp] = False
        assert part.generation > max((g for g in self.gen.values() if g), default=0)
        assert old is None or part.generation > old
        self.gen[tp], self.sent[tp] = part.generation, self.committed[tp]
        self.fetch_pos[tp] = self.committed[tp] or 0  # the next owner starts from the group's
