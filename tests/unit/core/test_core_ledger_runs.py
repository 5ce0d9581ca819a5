"""Runs change how the ledger keeps records, never what it does with them.

Two ledgers get the same fetches and the same calls: one takes every fetched record on its
own (``Ledger.add``), the other takes each fetch as a run (``Ledger.add_run``). Whatever
hypothesis throws at them (leases within credits, settlements of every outcome, packed and
ranged ACKs of own, foreign and unknown ids, extensions, lapses, closed streams, skips,
revokes), every answer and every observable must be equal: the msg_ids issued and what
they name, commit points, pending snapshots, holders' ids and credits, hand-offs and gate
changes.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from coordinator.core.ledger import LeaseTimes, Ledger, SkipRefused
from coordinator.core.model import Outcome, SettleStatus, TopicPartition
from coordinator.core.pending import snapshot
from coordinator.core.policy import RetryPolicy
from coordinator.core.records import leased_count, members, pending_records

SOAK = os.environ.get("HYPOTHESIS_PROFILE") == "soak"
TPS = (TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("fast", 0))
AT_MOST_ONCE = TPS[2]
"""Its records are finished when they are dispatched."""
HOLDERS = {"s0": (5, 0), "s1": (3, 40), "pull:w": (50, 0)}
"""Holder name -> (max messages, max bytes)."""

PICK = st.integers(0, 10_000)
OUTCOMES = st.one_of(st.none(), st.sampled_from(Outcome))
ops = st.lists(st.one_of(
    st.tuples(st.just("fetch"), st.integers(0, 2), st.lists(st.integers(0, 2), min_size=1,
                                                            max_size=7), st.integers(1, 25)),
    st.tuples(st.just("lease"), st.sampled_from(sorted(HOLDERS)), st.integers(1, 8)),
    st.tuples(st.just("settle"), st.sampled_from([*HOLDERS, None]), PICK, OUTCOMES),
    st.tuples(st.just("acks"), st.sampled_from(sorted(HOLDERS)), st.lists(PICK, max_size=5)),
    st.tuples(st.just("ranges"), st.sampled_from(sorted(HOLDERS)),
              st.lists(st.tuples(PICK, st.integers(0, 9)), max_size=3)),
    st.tuples(st.just("extend"), st.sampled_from(sorted(HOLDERS)), PICK,
              st.sampled_from([None, 0.0, 5.0])),
    st.tuples(st.just("tick"), st.floats(0.0, 25.0)),
    st.tuples(st.just("close"), st.sampled_from(["s0", "s1"])),
    st.tuples(st.just("skip"), st.integers(0, 2), PICK),
    st.tuples(st.just("revoke"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("commit"),),
), max_size=60)


class Side:
    """One ledger and the clock and fetch positions it is driven with."""

    def __init__(self, runs: bool) -> None:
        self.runs = runs
        self.led = Ledger(leases=LeaseTimes(10.0, 30.0), policy=RetryPolicy(1.0, 8.0, 4),
                          max_pending_per_partition=12)
        self.now = 0.0
        self.next = dict.fromkeys(TPS, 0)
        self.committed = dict.fromkeys(TPS, 0)
        for tp in TPS:
            self.led.assign(tp, 0, at_most_once=tp == AT_MOST_ONCE)
        for name, (messages, nbytes) in HOLDERS.items():
            self.led.open_holder(name, name, messages, nbytes, pull=name.startswith("pull:"))

    def holder(self, name: str | None) -> Any:
        return None if name is None else self.led.holders[name]

    def apply(self, op: tuple[Any, ...]) -> object:
        led, kind = self.led, op[0]
        if kind == "fetch":
            tp = TPS[op[1]]
            part = led.partitions[tp]
            if part.gate.paused:  # the runtime stops fetching a paused partition
                return "paused"
            offsets = []
            for gap in op[2]:
                offsets.append(self.next[tp] + gap)
                self.next[tp] = offsets[-1] + 1
            sizes = [op[3] + o % 7 for o in offsets]
            keys, values = [f"k{o}" for o in offsets], [f"v{o}" for o in offsets]
            payloads = list(zip(keys, values, strict=True))  # (key, value): a run's columns
            if self.runs:
                return led.add_run(part, offsets, (keys, values), sizes, self.now)
            added = [led.add_to(part, o, s, p, self.now)  # every one: no short cut
                     for o, s, p in zip(offsets, sizes, payloads, strict=True)]
            return all(added)
        if kind == "lease":
            out = led.lease(led.holders[op[1]], self.now, op[2])
            assert len(members(out)) == leased_count(out) <= op[2]
            return [(m.msg_id, m.record.part.tp, m.record.offset, m.attempt, m.deadline,
                     m.record.payload) for m in members(out)]
        issued = led._table.issued
        if kind == "settle":
            return led.settle(self.holder(op[1]), 1 + op[2] % (issued + 2), op[3], 0.5,
                              self.now, "why")
        if kind == "acks":
            return led.ack_many(led.holders[op[1]], [1 + p % (issued + 2) for p in op[2]])
        if kind == "ranges":
            return led.ack_ranges(led.holders[op[1]],
                                  [(1 + p % (issued + 2), count) for p, count in op[2]])
        if kind == "extend":
            return led.extend(led.holders[op[1]], 1 + op[2] % (issued + 2), op[3], self.now)
        if kind == "tick":
            self.now += op[1]
            return led.tick(self.now)
        if kind == "close":
            closed = led.close_holder(op[1], self.now)
            led.open_holder(op[1], op[1], *HOLDERS[op[1]])
            return closed
        if kind == "skip":
            part = led.partitions[TPS[op[1]]]
            pending = sorted(part.records)
            if not pending:
                return "none"
            try:
                led.skip(part.tp, pending[op[2] % len(pending)])
            except SkipRefused as exc:
                return str(exc)
            return "skipped"
        if kind == "revoke":
            tp = TPS[op[1]]
            notify = led.begin_revoke([tp])
            if op[2]:
                return notify, None  # lingers: revoked at the next revoke of it
            points = led.revoke([tp])
            if points:  # committed before the release
                self.committed[tp] = points[0].offset
            led.assign(tp, self.committed[tp], at_most_once=tp == AT_MOST_ONCE)  # back again
            self.next[tp] = self.committed[tp]
            return notify, [(p.tp, p.offset) for p in points]
        assert kind == "commit"
        return [(p.tp, p.offset, p.metadata) for p in led.commit_points()]

    def observe(self) -> object:
        led = self.led

        def wall_ms(t: float) -> int:
            return int(t * 1000)

        parts = [(tp, p.generation, p.offsets.commit_offset, p.in_flight, p.gate.paused,
                  snapshot(p, wall_ms).rows, snapshot(p, wall_ms).undelivered,
                  [(o, r.state, r.attempt, r.lease and r.lease.msg_id)
                   for o, r in pending_records(p)])
                 for tp, p in sorted(led.partitions.items())]
        holders = [(name, led.holder_msg_ids(h), h.credits.messages, h.credits.bytes,
                    sorted(h.lapsed)) for name, h in sorted(led.holders.items())]
        handoffs = led.take_handoffs()
        for h in handoffs:  # the hand-off path takes them at once
            led.finish_handoff(h.record)
        handed = [(h.record.part.tp, h.record.offset, h.record.payload, h.kind, h.reason)
                  for h in handoffs]
        return (parts, holders, handed, led.take_gate_changes(), led.leased, led.ready_count,
                led.next_wakeup(), led._table.issued)


@settings(max_examples=5000 if SOAK else 300, deadline=None)
@given(ops)
# A run and a record leased in one call lapse (or their stream closes) together: they go back
# to the queue in the order of their msg_ids, as records leased one by one would.
@example([("fetch", 0, [0, 0], 1), ("fetch", 1, [0, 0], 1), ("skip", 1, 0),
          ("lease", "pull:w", 8), ("tick", 11.0), ("lease", "pull:w", 8)])
@example([("fetch", 0, [0, 0], 1), ("fetch", 1, [0, 0], 1), ("skip", 1, 0),
          ("lease", "s0", 8), ("close", "s0"), ("lease", "s0", 8)])
def test_a_ledger_with_runs_behaves_as_one_without(program: list[tuple[Any, ...]]) -> None:
    plain, runs = Side(runs=False), Side(runs=True)
    for op in program:
        assert plain.apply(op) == runs.apply(op), op
        assert plain.observe() == runs.observe(), op


def test_a_run_is_one_entry_until_a_member_needs_a_fate_of_its_own() -> None:
    side = Side(runs=True)
    led = side.led
    side.apply(("fetch", 0, [0, 0, 0, 0], 5))
    part = led.partitions[TPS[0]]
    assert len({id(r) for r in part.records.values()}) == 1  # one run for four records
    leased = led.lease(led.holders["s0"], 0.0, 10)
    (run,) = leased
    assert leased_count(leased) == 4 and led.leased == 4
    assert led.settle(led.holders["s0"], run.msg_id + 2, Outcome.RETRY, 0.5, 0.0) is not None
    assert len({id(r) for r in part.records.values()}) == 2  # the retried one set apart
    assert led.ack_ranges(led.holders["s0"], [(run.msg_id, 4)]) == [
        (run.msg_id + 2, led._table.recall(run.msg_id + 2))]
    assert sorted(part.records) == [2]  # only the retried one is pending
    assert not led.holders["s0"].runs and led.leased == 0


def test_ranges_that_cut_a_run_finish_their_part_of_it_at_once() -> None:
    """A worker's ACKs rarely cover a run whole: each part finishes in one step, with the
    credit, the partition's in-flight count and the commit point of each member."""
    led = Ledger(max_pending_per_partition=100)
    part = led.assign(TPS[0], 0)
    holder = led.open_holder("w", "w", 100)
    assert led.add_run(part, range(10, 16), ([None] * 6,), [1, 2, 4, 8, 16, 32], 0.0)
    (run,) = led.lease(holder, 0.0, 10)
    first = run.msg_id
    assert led.ack_ranges(holder, [(first + 1, 2), (first + 4, 1)]) == []  # 11, 12 and 14
    assert (holder.credits.messages, holder.credits.bytes, part.in_flight) == (3, 1 + 8 + 32, 3)
    assert (part.offsets.commit_offset, sorted(part.records)) == (10, [10, 13, 15])
    assert led.ack_ranges(holder, [(first + 3, 2)]) == [(first + 4, SettleStatus.ALREADY_SETTLED)]
    assert (holder.credits.messages, holder.credits.bytes, part.in_flight) == (2, 1 + 32, 2)
    assert led.ack_ranges(holder, [(first, 1), (first + 5, 1)]) == []
    assert (holder.credits.messages, holder.credits.bytes, part.in_flight) == (0, 0, 0)
    assert part.offsets.commit_offset == 16 and not holder.runs and led.leased == 0
    assert led.ack_ranges(holder, [(first, 6)]) == [
        (m, SettleStatus.ALREADY_SETTLED) for m in range(first, first + 6)]


@pytest.mark.parametrize("offsets", [[5, 4], [3, 3]])
def test_a_run_must_be_increasing(offsets: list[int]) -> None:
    side = Side(runs=True)
    part = side.led.partitions[TPS[0]]
    with pytest.raises(ValueError, match="not increasing"):
        side.led.add_run(part, offsets, ([None, None],), [1, 1], 0.0)
