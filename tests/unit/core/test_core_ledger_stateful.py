"""A state machine over the Ledger, checked against a model after every step.

The model and the checked calls live in ``core_ledger_model.py``; here are the
rules (hostile ones included: foreign, stale, duplicate and unknown msg_ids) and
the invariants. ``HYPOTHESIS_PROFILE=soak`` runs many more and longer examples.
"""

from __future__ import annotations

import itertools
import math
import os

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from coordinator.core.flow import GateChange
from coordinator.core.ledger import Run, State
from coordinator.core.model import Outcome, TopicPartition
from tests.unit.core.core_ledger_model import CAP, KEYED, RESUME_BELOW, TPS, LedgerModel

SOAK = os.environ.get("HYPOTHESIS_PROFILE") == "soak"
PICK = st.integers(0, 2**16)
DELAY = st.one_of(st.none(), st.floats(-1.0, 30.0))
TP_SETS = st.sets(st.sampled_from(TPS), min_size=1)
SOURCES = ["own", "own", "active", "stale", "settled", "unknown"]
RARELY = st.integers(0, 3).map(lambda n: n == 3)
KEY = st.sampled_from([None, "a", "a", "b"])
"""Ordering keys: few, so that records of one key queue up; None has no order."""
TTL = st.one_of(st.none(), st.none(), st.just(0.0), st.floats(0.5, 40.0))
"""No TTL (mostly), already expired, or expiring while the machine runs."""
"""Destructive rules act one time in four (and not on the simplest draw, 0)."""


class LedgerMachine(LedgerModel):
    # -- rules ----------------------------------------------------------------

    @rule(tp=st.sampled_from(TPS), gaps=st.lists(st.integers(0, 3), min_size=1, max_size=6),
          size=st.integers(1, 50), ttl=TTL, keys=st.lists(KEY, min_size=6, max_size=6))
    def add_records(self, tp: TopicPartition, gaps: list[int], size: int,
                    ttl: float | None, keys: list[str | None]) -> None:
        """Fetches records (named to sort first: hypothesis favours the first rule), some with
        a TTL (already past, when 0), with ordering keys on KEYED partitions."""
        expires = math.inf if ttl is None else self.now + ttl
        part = self.led.partitions.get(tp)
        if part is None or tp in self.revoking:
            before = self._snapshot()
            assert not self.led.add(tp, self.fetch_pos[tp], size, None, self.now)
            assert self._snapshot() == before
            return
        for gap, key in zip(gaps, keys, strict=False):
            if part.gate.paused:  # the runtime stops fetching a paused partition
                break
            offset = self.fetch_pos[tp] + gap
            okey = key if tp in KEYED else None
            assert self.led.add(tp, offset, size + gap, None, self.now, expires, okey)
            self.keys[tp, offset] = okey
            self.pending[tp].add(offset)
            self.next_pos[tp] = self.fetch_pos[tp] = offset + 1
        self._collect_handoffs()  # the ones expired at fetch

    add_more_records = add_records  # listed twice: hypothesis then picks it twice as often

    @rule(tp=st.sampled_from(TPS), gaps=st.lists(st.integers(0, 3), min_size=1, max_size=8),
          sizes=st.lists(st.integers(1, 50), min_size=8, max_size=8))
    def add_run(self, tp: TopicPartition, gaps: list[int], sizes: list[int]) -> None:
        """Fetches records in a row with nothing of their own, as the runtime does for
        unordered partitions without a TTL."""
        part = self.led.partitions.get(tp)
        if part is None or tp in self.revoking:
            before = self._snapshot()
            if part is not None:
                assert not self.led.add_run(part, [self.fetch_pos[tp]], ([None],), [1], self.now)
            assert self._snapshot() == before
            return
        if part.gate.paused or tp in KEYED:  # keyed records are never in runs
            return
        offsets = list(itertools.accumulate(gaps, lambda at, gap: at + 1 + gap,
                                            initial=self.fetch_pos[tp] + gaps[0] - 1))[1:]
        n = len(offsets)
        assert self.led.add_run(part, offsets, ([None] * n,), sizes[:n], self.now)
        self.pending[tp].update(offsets)
        self.next_pos[tp] = self.fetch_pos[tp] = offsets[-1] + 1

    add_another_run = add_run

    @precondition(lambda self: any(p for p in self.next_pos.values()))
    @rule(tp=st.sampled_from(TPS), back=st.integers(1, 5))
    def refetch_below_next_position(self, tp: TopicPartition, back: int) -> None:
        next_pos = self.next_pos[tp]
        if next_pos and tp not in self.revoking:
            before = self._snapshot()
            with pytest.raises(ValueError):
                self.led.add(tp, max(0, next_pos - back), 1, None, self.now)
            assert self._snapshot() == before

    @precondition(lambda self: None in self.gen.values())
    @rule(tp=st.sampled_from(TPS))
    def assign(self, tp: TopicPartition) -> None:
        if self.gen[tp] is None:
            self._assign(tp)

    @rule(tp=st.sampled_from(TPS), really=RARELY)
    def reassign(self, tp: TopicPartition, really: bool) -> None:
        if really and self.gen[tp] is not None:
            self._assign(tp)

    @rule(tp=st.sampled_from(TPS), offset=st.integers(0, 40), really=RARELY)
    def seek(self, tp: TopicPartition, offset: int, really: bool) -> None:
        """An operator moves the partition: its pending records are dropped, its leases go
        stale, and the next commit carries the offset (unless the broker has it)."""
        old = self.gen[tp]
        if not really or old is None:
            return
        generation = next(self.led._generations)  # the fetcher's, in the runtime
        if tp in self.revoking:  # a revoke under way wins: the seek changes nothing
            before = self._snapshot()
            assert self.led.seek(tp, old, generation, offset) is None
            assert self._snapshot() == before
            return
        assert self.led.seek(tp, old - 1, generation, offset) is None  # an old generation's
        dropped = len(self.pending[tp])
        assert self.led.seek(tp, old, generation, offset) == dropped
        self._drop_generation(tp)
        self.gen[tp], self.sent[tp], self.paused[tp] = generation, self.committed[tp], False
        self.start[tp] = self.fetch_pos[tp] = offset

    @rule(name=st.sampled_from(["s0", "s1", "s2", "pull:w"]), max_messages=st.integers(1, 4),
          max_bytes=st.sampled_from([0, 0, 30, 80]))
    def open_holder(self, name: str, max_messages: int, max_bytes: int) -> None:
        if name == "pull:w":
            assert self.led.pull_holder("w") is self.led.holders[name]  # opened on first use
        elif name not in self.led.holders:
            self.led.open_holder(name, "w", max_messages, max_bytes)

    @rule()
    def drop_idle_pull_holders(self) -> None:
        """Pull holders without leases are forgotten; every other holder stays as it was."""
        idle = {n for n, h in self.led.holders.items() if h.pull and not h.leases and not h.runs}
        before = {n: h for n, h in self.led.holders.items() if n not in idle}
        assert self.led.drop_idle_pull_holders() == len(idle)
        assert self.led.holders == before

    @precondition(lambda self: self.led.holders)
    @rule(pick=PICK, really=RARELY)
    def close_holder(self, pick: int, really: bool) -> None:
        holder = self._holder(pick)
        if not really:
            return
        mine = [m for m, a in self.active.items() if a.holder == holder.name]
        assert self.led.close_holder(holder.name, self.now) == len(mine)
        for msg_id in mine:
            self._end_lease(msg_id, self.settled)
        self.lapsed = {m: a for m, a in self.lapsed.items() if a.holder != holder.name}
        self.closed.append(holder)
        self._collect_handoffs()

    @precondition(lambda self: self.led.holders)
    @rule(pick=PICK, limit=st.integers(1, 6), outcomes=st.lists(st.sampled_from(Outcome),
                                                                  max_size=6), delay=DELAY,
          extend=st.booleans(), extension=st.sampled_from([None, 0.0, 5.0, 60.0]))
    def work(self, pick: int, limit: int, outcomes: list[Outcome], delay: float | None,
             extend: bool, extension: float | None) -> None:
        """A holder leases up to ``limit`` records, settles the first few and keeps the rest,
        maybe extending each kept lease twice (a msg_id repeated in one LeaseExtension)."""
        holder = self._holder(pick)
        leases = self._lease(holder, limit)
        for lease, outcome in zip(leases, outcomes):
            self._settle(holder, lease.msg_id, outcome, delay)
        for lease in leases[len(outcomes):] if extend else ():
            self._extend(holder, lease.msg_id, extension, 2)

    work_more = work  # listed twice, like add_records

    @precondition(lambda self: self.active)
    @rule(who=st.sampled_from(["owner", "owner", "other", "none"]),
          outcome=st.one_of(st.sampled_from(Outcome), st.none()), delay=DELAY, pick=PICK)
    def settle(self, who: str, outcome: Outcome | None, delay: float | None, pick: int) -> None:
        msg_id = self._pick_id("active", pick)
        self._settle(self._who(msg_id, who, pick), msg_id, outcome, delay)

    @rule(source=st.sampled_from(["stale", "stale", "settled", "unknown"]),
          who=st.sampled_from(["other", "none"]), outcome=st.sampled_from(Outcome), pick=PICK)
    def settle_late(self, source: str, who: str, outcome: Outcome, pick: int) -> None:
        """Revoked-generation, already-settled or never-issued ids: answered, nothing moves."""
        msg_id = self._pick_id(source, pick)
        self._settle(self._who(msg_id, who, pick), msg_id, outcome, None)

    @precondition(lambda self: self.led.holders)
    @rule(pick=PICK, limit=st.integers(0, 6),
          picks=st.lists(st.tuples(st.sampled_from(SOURCES), PICK), max_size=8))
    def packed_acks(self, pick: int, limit: int, picks: list[tuple[str, int]]) -> None:
        """A holder leases, then ACKs a packed mix of its own, foreign, stale and unknown ids."""
        holder = self._holder(pick)
        self._lease(holder, limit)
        own = self.led.holder_msg_ids(holder)  # run members included
        ids = [own[n % len(own)] if source == "own" and own else self._pick_id(source, n)
               for source, n in picks]
        assert self.led.ack_many(holder, ids) == self._expect_acks(holder, ids)

    @precondition(lambda self: self.led.holders)
    @rule(pick=PICK, limit=st.integers(0, 12),
          spans=st.lists(st.tuples(st.sampled_from(SOURCES), PICK, st.integers(0, 6)),
                         max_size=4))
    def acked_ranges(self, pick: int, limit: int, spans: list[tuple[str, int, int]]) -> None:
        """A holder leases, then ACKs ranges of msg_ids: its own runs whole or in part, and
        ranges over foreign, stale and unknown ids."""
        holder = self._holder(pick)
        self._lease(holder, limit)
        own = self.led.holder_msg_ids(holder)
        ranges = []
        for source, n, count in spans:
            if source == "own" and holder.runs:
                first = sorted(holder.runs)[n % len(holder.runs)]
                run = holder.runs[first]
                ranges.append((first, len(run.offsets) if count == 0 else count))
            else:
                ranges.append((own[n % len(own)] if source == "own" and own
                               else self._pick_id(source, n), count))
        ids = [m for first, count in ranges for m in range(first, first + count)]
        expected = self._expect_acks(holder, ids)
        assert self.led.ack_ranges(holder, ranges) == expected

    @rule(source=st.sampled_from(["active", "active", "settled", "stale", "unknown"]),
          who=st.sampled_from(["owner", "owner", "other"]),
          extension=st.one_of(st.sampled_from([None, 0.0, 60.0]), st.floats(-5.0, 100.0)),
          times=st.integers(1, 2), pick=PICK)
    def extend(self, source: str, who: str, extension: float | None, times: int,
               pick: int) -> None:
        """Extends a lease, maybe twice at once (a msg_id repeated in one LeaseExtension)."""
        msg_id = self._pick_id(source, pick)
        holder = self._who(msg_id, who, pick)
        if holder is not None:
            self._extend(holder, msg_id, extension, times)

    @rule(dt=st.one_of(st.floats(0.0, 4.0), st.floats(4.0, 60.0)), hand_off=st.booleans())
    def tick(self, dt: float, hand_off: bool) -> None:
        """Time passes; unless ``hand_off`` is False, the dead-letter path takes what it got."""
        self._tick(self.now + dt)
        while hand_off and self.handoffs:
            self._finish_handoff(self.handoffs[0])

    @precondition(lambda self: self.handoffs)
    @rule(pick=PICK)
    def finish_handoff(self, pick: int) -> None:
        self._finish_handoff(self.handoffs[pick % len(self.handoffs)])

    @rule(tps=TP_SETS, really=RARELY, linger=st.booleans(), acks=st.integers(0, 3))
    def begin_revoke(self, tps: set[TopicPartition], really: bool, linger: bool,
                     acks: int) -> None:
        """Starts a revoke; unless it lingers, some notified leases settle and it completes."""
        if not really:
            return
        expected: dict[str, list[int]] = {}
        for msg_id, a in self.active.items():  # at-most-once leases are not revoked
            if a.tp in tps and a.tp not in self.revoking and not a.at_most_once:
                expected.setdefault(a.holder, []).append(msg_id)
        got = self.led.begin_revoke(sorted(tps))
        assert {h: sorted(ids) for h, ids in got.items()} == expected
        self.revoking |= {tp for tp in tps if self.gen[tp] is not None}
        if not linger:
            for holder_name, ids in sorted(got.items()):
                for msg_id in ids[:acks]:
                    self._settle(self.led.holders[holder_name], msg_id, Outcome.ACK, None)
            self.revoke(tps, True)

    @rule(tps=TP_SETS, really=RARELY)
    def revoke(self, tps: set[TopicPartition], really: bool) -> None:
        if not (really or tps & self.revoking):
            return
        expected = []
        for tp in sorted(tps):
            offset = self._commit(tp)
            if self.gen[tp] is not None and offset not in (None, self.committed[tp]):
                assert not self.pending[tp] or offset <= min(self.pending[tp])
                expected.append((tp, self.gen[tp], offset))
        final = self.led.revoke(sorted(tps))
        assert [(p.tp, p.generation, p.offset) for p in final] == expected
        for tp, _, offset in expected:
            self.committed[tp] = offset  # committed synchronously before the release
        for tp in tps:
            if self.gen[tp] is not None:
                self._drop_generation(tp)

    @precondition(lambda self: self.points_out)
    @rule(pick=PICK, ok=st.booleans())
    def commit_answer(self, pick: int, ok: bool) -> None:
        point = self.points_out.pop(pick % len(self.points_out))
        before = self._snapshot()
        self.led.committed(point, ok)
        if point.generation != self.gen[point.tp]:
            assert self._snapshot() == before  # an old generation's answer is ignored
        elif ok:
            self.committed[point.tp] = point.offset
        elif self.sent[point.tp] == point.offset:
            self.sent[point.tp] = self.committed[point.tp]

    def teardown(self) -> None:
        """Every run ends quietly: time passes, a drainer ACKs all, so nothing was lost."""
        if not hasattr(self, "led"):
            return
        drainer = self.led.open_holder("drain", "w", 10**6)
        for _ in range(20):
            self._tick(self.now + 100.0)  # past every lease, retry delay and extension
            while self.handoffs:
                self._finish_handoff(self.handoffs[0])
            for lease in self._lease(drainer, 10**6):
                self._settle(drainer, lease.msg_id, Outcome.ACK, None)
            if not any(self.pending[tp] for tp in TPS if tp not in self.revoking):
                break
        assert self.led.close_holder("drain", self.now) == 0
        for tp in TPS:
            if self.gen[tp] is not None and tp not in self.revoking:
                assert not self.pending[tp]
                assert self.led.partitions[tp].offsets.commit_offset == self._commit(tp)
        self.every_pending_record_is_in_exactly_one_place()
        self.commit_points_never_pass_a_pending_record()
        self.revoke(set(TPS), True)  # checks the final points
        assert not self.led.partitions and self.led.ready_count == 0

    # -- invariants -----------------------------------------------------------

    @invariant()
    def commit_points_never_pass_a_pending_record(self) -> None:
        expected = {}
        for tp in TPS:
            if self.gen[tp] is None:
                assert tp not in self.led.partitions
                continue
            part = self.led.partitions[tp]
            assert part.generation == self.gen[tp]
            assert part.offsets.commit_offset == self._commit(tp)
            if tp not in self.revoking and self._commit(tp) not in (None, self.sent[tp]):
                expected[tp] = self._commit(tp)
        points = self.led.commit_points()
        assert {p.tp: p.offset for p in points} == expected
        for p in points:
            assert p.generation == self.gen[p.tp]
            assert not self.pending[p.tp] or p.offset <= min(self.pending[p.tp])
            self.sent[p.tp] = p.offset
        self.points_out.extend(points)

    @invariant()
    def gates_pause_at_the_cap_and_resume_below_80_percent(self) -> None:
        changes = dict(self.led.take_gate_changes())  # the last change per partition
        for tp in TPS:
            if self.gen[tp] is None:
                continue
            count, was = len(self.pending[tp]), self.paused[tp]  # counts move one way a step
            self.paused[tp] = count >= CAP or (was and count >= RESUME_BELOW)
            assert self.led.partitions[tp].gate.paused == self.paused[tp]
            change = GateChange.PAUSE if self.paused[tp] else GateChange.RESUME
            assert changes.get(tp) is (change if self.paused[tp] != was else None)

    @invariant()
    def holders_stay_within_their_credits(self) -> None:
        for holder in self.led.holders.values():
            mine = {m for m, a in self.active.items() if a.holder == holder.name}
            assert set(self.led.holder_msg_ids(holder)) == mine
            assert self.led.holder_msg_ids(holder, 3) == sorted(mine)[:3]
            lapsed = {m: a for m, a in self.lapsed.items() if a.holder == holder.name}
            assert set(holder.lapsed) == set(lapsed)  # lapsed, still charged (Holder.lapsed)
            c = holder.credits
            assert c.messages == len(mine) + len(lapsed) <= c.max_messages
            assert c.bytes == (sum(lease.record.size for lease in holder.leases.values())
                               + sum(size for run in holder.runs.values()
                                     for i, size in enumerate(run.sizes)
                                     if run.done is None or not run.done[i])
                               + sum(a.size for a in lapsed.values()))
            assert c.max_bytes == 0 or c.bytes <= c.max_bytes or c.messages == 1

    @invariant()
    def every_pending_record_is_in_exactly_one_place(self) -> None:
        queued = [id(r) for r in self.led._ready if r.state is State.READY]
        assert len(queued) == len(set(queued))  # each READY record or run once
        assert self.led.ready_count == sum(  # a queued run counts each member
            r.open if isinstance(r, Run) else 1 for r in self.led._ready if r.state is State.READY)
        where = {State.READY: set(queued), State.DELAYED: {id(r) for _, _, r in self.led._delayed},
                 State.HANDOFF: {id(r) for r in self.handoffs},
                 State.WAITING: {id(r) for p in self.led.partitions.values()
                                 for q in p.waiting.values() for r in q}}
        for tp in TPS:
            part = self.led.partitions.get(tp)
            if part is None:
                continue
            assert set(part.records) == self.pending[tp]
            assert part.in_flight == sum(1 for a in self.active.values()
                                         if a.tp == tp and not a.at_most_once)
            for offset, rec in part.records.items():
                state = rec.state
                if isinstance(rec, Run):
                    i = rec.member(offset)
                    assert rec.offsets[i] == offset and (rec.done is None or not rec.done[i])
                    assert rec.part is part and state in (State.READY, State.LEASED)
                    if state is State.READY:
                        assert id(rec) in where[State.READY] and rec.open == len(rec.offsets)
                    else:
                        a = self.active[rec.msg_id + i]
                        assert (a.tp, a.offset, rec.deadline) == (tp, offset, a.deadline)
                        assert rec.holder is not None and rec.holder.runs[rec.msg_id] is rec
                    continue
                assert (state is State.LEASED) == (rec.lease is not None)
                if state is State.LEASED:
                    assert rec.lease is not None
                    a = self.active[rec.lease.msg_id]
                    assert (a.tp, a.offset, rec.lease.deadline) == (tp, rec.offset, a.deadline)
                elif state is State.PARKED:
                    assert part.revoking
                else:  # READY, DELAYED or HANDOFF (never DONE while pending)
                    assert id(rec) in where[state]
        for p in self.led.partitions.values():  # each key: one holder, the rest behind it
            for key, queue in p.waiting.items():
                event("a record waited behind an earlier one of its key")
                holder = p.busy[key]
                assert queue and holder.state is not State.WAITING
                assert all(r.okey == key and r.offset > holder.offset for r in queue)
                assert [r.offset for r in queue] == sorted(r.offset for r in queue)
            assert all(r.okey == key and p.records.get(r.offset) is r for key, r in p.busy.items())
        ready = sum(r.state is State.READY for p in self.led.partitions.values()
                    for r in p.records.values())  # a queued run: once per member
        assert ready == self.led.ready_count
        assert self.led.leased == len(self.active)


LedgerMachine.TestCase.settings = settings(
    max_examples=1000 if SOAK else 40,
    stateful_step_count=150 if SOAK else 80,
    deadline=None,
)
TestLedgerMachine = LedgerMachine.TestCase
