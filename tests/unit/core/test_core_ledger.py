"""Ledger examples: commit points, credits, redelivery, rebalance, settlement answers."""

from __future__ import annotations

from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.flow import GateChange
from coordinator.core.ledger import (
    CommitPoint,
    HandoffKind,
    Holder,
    Lease,
    LeaseTimes,
    Ledger,
    SkipRefused,
    State,
)
from coordinator.core.model import Outcome, SettleStatus, TopicPartition
from coordinator.core.offsetmap import decode
from coordinator.core.policy import RetryPolicy
from coordinator.core.records import Run

TP0 = TopicPartition("orders", 0)
TP1 = TopicPartition("orders", 1)
ACK, RETRY = Outcome.ACK, Outcome.RETRY


def fetch(led: Ledger, tp: TopicPartition, *offsets: int, size: int = 1, now: float = 0.0) -> None:
    for offset in offsets:
        assert led.add(tp, offset, size, f"{tp.partition}@{offset}", now)


def points(led: Ledger) -> dict[TopicPartition, int]:
    return {p.tp: p.offset for p in led.commit_points()}


def leased(led: Ledger, holder: Holder, now: float, limit: int) -> list[Lease]:
    """``led.lease``: records added one by one are leased as Leases, never as runs."""
    out = led.lease(holder, now, limit)
    assert not any(isinstance(lease, Run) for lease in out)
    return cast(list[Lease], out)


def by_offset(leases: list[Lease]) -> dict[int, int]:  # offset -> msg_id
    return {lease.record.offset: lease.msg_id for lease in leases}


def test_out_of_order_settlements_commit_the_lowest_pending_offset() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, 0, 1, 5, 9)
    h = led.open_holder("s1", "w", 10)
    ids = by_offset(leased(led, h, 0.0, 10))
    assert points(led) == {TP0: 0}
    assert led.settle(h, ids[5], ACK, None, 1.0) is SettleStatus.OK
    assert led.settle(h, ids[9], Outcome.DROP, None, 1.0) is SettleStatus.OK
    assert points(led) == {}  # still held at 0: nothing new to hand out
    assert led.settle(h, ids[0], Outcome.ALREADY_PROCESSED, None, 1.0) is SettleStatus.OK
    assert points(led) == {TP0: 1}
    assert led.settle(h, ids[1], ACK, None, 1.0) is SettleStatus.OK
    assert points(led) == {TP0: 10}  # everything finished: the next fetch position
    assert points(led) == {}


def test_buffered_records_not_yet_leased_hold_the_commit_back() -> None:
    led = Ledger()
    led.assign(TP0, committed=100)
    fetch(led, TP0, 100, 101, 102, 103)
    assert points(led) == {}  # 100 is what the group already has
    h = led.open_holder("s1", "w", 10)
    leases = leased(led, h, 0.0, 2)
    assert [lease.record.offset for lease in leases] == [100, 101]
    for lease in leases:
        led.settle(h, lease.msg_id, ACK, None, 0.0)
    assert points(led) == {TP0: 102}  # not 104: 102 and 103 were fetched, never delivered
    assert led.ready_count == 2


def test_credits_are_never_exceeded() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, *range(10))
    h = led.open_holder("s1", "w", 3)
    first = leased(led, h, 0.0, 100)
    assert len(first) == 3 and h.credits.messages == 3
    assert leased(led, h, 0.0, 100) == []
    led.settle(h, first[0].msg_id, ACK, None, 0.0)
    assert len(leased(led, h, 0.0, 100)) == 1
    assert h.credits.messages == 3 and len(h.leases) == 3


def test_byte_credits_and_the_one_oversized_record() -> None:
    led = Ledger()
    led.assign(TP0)
    led.add(TP0, 0, 500, None, 0.0)
    led.add(TP0, 1, 40, None, 0.0)
    led.add(TP0, 2, 70, None, 0.0)
    h = led.open_holder("s1", "w", 10, 100)
    [big] = leased(led, h, 0.0, 10)  # granted alone, so it cannot wedge the stream
    assert big.record.offset == 0 and h.credits.bytes == 500
    led.settle(h, big.msg_id, ACK, None, 0.0)
    assert [lease.record.offset for lease in leased(led, h, 0.0, 10)] == [1]  # 40 + 70 > 100
    assert h.credits.bytes == 40


def test_retry_with_delay_redelivers_after_tick_with_a_new_msg_id() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, 7)
    h = led.open_holder("s1", "w", 10)
    [first] = leased(led, h, 0.0, 10)
    assert first.attempt == 1
    assert led.settle(h, first.msg_id, RETRY, 5.0, 1.0) is SettleStatus.OK
    assert first.record.state is State.DELAYED
    assert led.next_wakeup() == 6.0
    assert leased(led, h, 1.0, 10) == []
    assert led.tick(5.99) == 0 and leased(led, h, 5.99, 10) == []
    led.tick(6.0)
    [second] = leased(led, h, 6.0, 10)
    assert second.record is first.record and second.attempt == 2
    assert second.msg_id > first.msg_id
    assert points(led) == {TP0: 7}  # pending the whole time
    assert led.settle(h, first.msg_id, ACK, None, 6.0) is SettleStatus.ALREADY_SETTLED


def test_lapsed_lease_is_redelivered_with_the_next_attempt() -> None:
    led = Ledger(leases=LeaseTimes(default=30.0))
    led.assign(TP0)
    fetch(led, TP0, 0)
    h = led.open_holder("s1", "w", 10)
    [first] = leased(led, h, 0.0, 10)
    assert first.deadline == 30.0 and led.next_wakeup() == 30.0
    assert led.tick(29.9) == 0
    assert led.tick(30.0) == 1
    assert not h.leases and list(h.lapsed) == [first.msg_id]
    [second] = leased(led, h, 31.0, 10)
    assert (second.attempt, second.deadline) == (2, 61.0)
    assert second.msg_id > first.msg_id
    assert led.settle(h, first.msg_id, ACK, None, 31.0) is SettleStatus.ALREADY_SETTLED
    assert second.record.state is State.LEASED


def test_a_hung_holder_keeps_the_credit_of_its_lapsed_leases() -> None:
    """A stream whose lease lapsed may still be running the handler: it is sent no more than
    it declared until it answers for that msg_id (any answer) or closes."""
    led = Ledger(leases=LeaseTimes(default=30.0))
    led.assign(TP0)
    fetch(led, TP0, 0, 1, size=7)
    hung = led.open_holder("hung", "w", 1)
    [held] = leased(led, hung, 0.0, 10)
    led.tick(30.0)  # lapsed: offset 0 goes back to the queue...
    assert (hung.credits.messages, hung.credits.bytes) == (1, 7)
    assert leased(led, hung, 30.0, 10) == []  # ...but not to the stream still holding it
    other = led.open_holder("other", "w", 10)
    assert [lease.record.offset for lease in leased(led, other, 30.0, 10)] == [0, 1]
    assert led.extend(hung, held.msg_id, None, 31.0) is SettleStatus.ALREADY_SETTLED
    assert hung.credits.messages == 1  # an extension is no answer: it still holds it
    assert led.ack_many(hung, [held.msg_id]) == [(held.msg_id, SettleStatus.ALREADY_SETTLED)]
    assert (hung.credits.messages, hung.credits.bytes, hung.lapsed) == (0, 0, {})


def test_lapsed_credit_returns_when_the_partition_is_revoked() -> None:
    led = Ledger(leases=LeaseTimes(default=30.0))
    led.assign(TP0)
    led.assign(TP1)
    fetch(led, TP0, 0)
    fetch(led, TP1, 0)
    h = led.open_holder("s1", "w", 2)
    leased(led, h, 0.0, 10)
    led.tick(30.0)
    assert h.credits.messages == 2
    led.revoke([TP0])  # the worker drops a revoked delivery without settling it
    assert h.credits.messages == 1 and [r.part.tp for r in h.lapsed.values()] == [TP1]


def test_extend_moves_the_deadline_within_the_maximum() -> None:
    led = Ledger(leases=LeaseTimes(default=10.0, maximum=60.0))
    led.assign(TP0)
    fetch(led, TP0, 0)
    h, other = led.open_holder("s1", "w", 10), led.open_holder("s2", "w", 10)
    [lease] = leased(led, h, 0.0, 10)
    assert led.extend(other, lease.msg_id, 50.0, 5.0) is SettleStatus.NOT_OWNER
    assert led.extend(h, lease.msg_id, 500.0, 5.0) is SettleStatus.OK
    assert lease.deadline == 65.0
    assert led.tick(64.0) == 0
    assert led.extend(h, lease.msg_id, None, 64.0) is SettleStatus.OK
    assert lease.deadline == 74.0
    assert led.extend(h, 999, 1.0, 64.0) is SettleStatus.UNKNOWN


def test_extending_to_the_same_deadline_lapses_once() -> None:
    led = Ledger(leases=LeaseTimes(default=30.0))
    led.assign(TP0)
    fetch(led, TP0, 0, 1)
    h = led.open_holder("s1", "w", 10)
    first, _ = leased(led, h, 0.0, 10)
    led.extend(h, first.msg_id, None, 0.0)  # now + default == the deadline it already has
    assert led.tick(30.0) == 2  # it used to lapse twice and raise KeyError
    assert [lease.attempt for lease in leased(led, h, 30.0, 10)] == [2, 2]


def test_one_lease_of_a_batch_extended_the_others_lapse() -> None:
    led = Ledger(leases=LeaseTimes(default=30.0))
    led.assign(TP0)
    fetch(led, TP0, 0, 1, 2)
    h = led.open_holder("s1", "w", 10)
    batch = leased(led, h, 0.0, 10)
    assert led.extend(h, batch[1].msg_id, 40.0, 10.0) is SettleStatus.OK
    assert led.tick(30.0) == 2
    assert set(h.leases) == {batch[1].msg_id}
    assert led.next_wakeup() == 50.0


def test_close_holder_redelivers_at_once() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, 0, 1, 2)
    h1, h2 = led.open_holder("s1", "w", 2), led.open_holder("s2", "w", 10)
    held = leased(led, h1, 0.0, 10)
    assert led.close_holder("s1", 1.0) == 2
    assert led.close_holder("s1", 1.0) == 0  # idempotent
    again = leased(led, h2, 1.0, 10)  # no tick needed
    assert sorted(lease.record.offset for lease in again) == [0, 1, 2]
    assert {lease.attempt for lease in again if lease.record.offset < 2} == {2}
    for lease in held:
        assert led.settle(h1, lease.msg_id, ACK, None, 1.0) is SettleStatus.ALREADY_SETTLED
    assert "s1" not in led.holders


def test_settlement_answers() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, 0, 1)
    h1, h2 = led.open_holder("s1", "w", 10), led.open_holder("s2", "w", 10)
    [a] = leased(led, h1, 0.0, 1)
    assert led.settle(h2, a.msg_id, ACK, None, 0.0) is SettleStatus.NOT_OWNER
    assert led.settle(None, a.msg_id, ACK, None, 0.0) is SettleStatus.NOT_OWNER
    assert led.settle(h1, a.msg_id, None, None, 0.0) is SettleStatus.INVALID
    assert led.settle(h1, 12345, ACK, None, 0.0) is SettleStatus.UNKNOWN
    assert a.record.state is State.LEASED and points(led) == {TP0: 0}  # nothing moved
    assert led.settle(h1, a.msg_id, ACK, None, 0.0) is SettleStatus.OK
    assert led.settle(h1, a.msg_id, ACK, None, 0.0) is SettleStatus.ALREADY_SETTLED
    assert led.settle(h1, a.msg_id, RETRY, None, 0.0) is SettleStatus.ALREADY_SETTLED
    pull = led.pull_holder("p")
    assert led.pull_holder("p") is pull
    [b] = leased(led, pull, 0.0, 1)
    assert led.settle(None, b.msg_id, ACK, None, 0.0) is SettleStatus.OK  # Acknowledge
    assert points(led) == {TP0: 2}
    with pytest.raises(ValueError, match="already open"):
        led.open_holder("s1", "w", 1)


def test_ack_many_acks_its_own_and_reports_the_rest() -> None:
    led = Ledger(max_pending_per_partition=4)
    old = led.assign(TP1)
    fetch(led, TP1, 0)
    h1, h2 = led.open_holder("s1", "w", 10), led.open_holder("s2", "w", 10)
    [stale] = leased(led, h1, 0.0, 1)
    led.revoke([TP1])
    led.assign(TP0)
    fetch(led, TP0, 0, 1, 2, 5)
    assert led.take_gate_changes() == [(TP0, GateChange.PAUSE)]
    mine = by_offset(leased(led, h1, 0.0, 3))
    [theirs] = leased(led, h2, 0.0, 1)
    led.settle(h1, mine[2], ACK, None, 0.0)
    rejected = led.ack_many(h1, [mine[1], theirs.msg_id, mine[0], mine[2], mine[0],
                                 stale.msg_id, 999])
    assert rejected == [
        (theirs.msg_id, SettleStatus.NOT_OWNER),
        (mine[2], SettleStatus.ALREADY_SETTLED),
        (mine[0], SettleStatus.ALREADY_SETTLED),  # listed twice in one batch
        (stale.msg_id, SettleStatus.STALE),
        (999, SettleStatus.UNKNOWN),
    ]
    assert old.offsets.commit_offset == 0  # the revoked generation is untouched
    assert not h1.leases and h1.credits.messages == 0 and h1.credits.bytes == 0
    assert led.in_flight([TP0]) == 1
    assert points(led) == {TP0: 5}
    assert led.take_gate_changes() == [(TP0, GateChange.RESUME)]  # checked once per batch
    assert led.ack_many(h2, []) == []


def test_begin_revoke_tells_each_holder_and_stops_dispatch() -> None:
    led = Ledger()
    part0 = led.assign(TP0)
    led.assign(TP1)
    fetch(led, TP0, 0, 1)
    fetch(led, TP1, 0, 1)
    h1, h2 = led.open_holder("s1", "w", 2), led.open_holder("s2", "w", 1)
    l1, l2 = leased(led, h1, 0.0, 10), leased(led, h2, 0.0, 10)
    assert [x.record.part.tp for x in l1 + l2] == [TP0, TP0, TP1]
    notify = led.begin_revoke([TP0])
    assert notify == {"s1": [l1[0].msg_id, l1[1].msg_id]}
    assert led.begin_revoke([TP0]) == {}  # second call: already revoking
    assert led.in_flight([TP0]) == 2
    assert not led.add(TP0, 2, 1, None, 0.0)  # no more fetching into it
    fetch(led, TP1, 2)
    led.settle(h1, l1[0].msg_id, RETRY, 0.0, 0.0)  # redelivery parks it
    assert l1[0].record.state is State.PARKED
    led.settle(h1, l1[1].msg_id, ACK, None, 0.0)  # finishing still counts
    assert led.in_flight([TP0]) == 0
    assert [x.record.part.tp for x in leased(led, h1, 0.0, 10)] == [TP1, TP1]
    assert TP0 not in points(led)
    assert led.revoke([TP0]) == [CommitPoint(TP0, part0.generation, 0)]  # 0 was never finished


def test_revoke_releases_leases_and_stale_acks_never_move_the_new_generation() -> None:
    led = Ledger()
    old = led.assign(TP0)
    fetch(led, TP0, 0, 1, 2)
    h = led.open_holder("s1", "w", 10)
    ids = by_offset(leased(led, h, 0.0, 10))
    led.settle(h, ids[0], ACK, None, 0.0)
    led.begin_revoke([TP0])
    assert led.revoke([TP0]) == [CommitPoint(TP0, old.generation, 1)]
    assert old.revoked and TP0 not in led.partitions
    assert h.credits.messages == 0 and not h.leases
    assert led.revoke([TP0]) == []
    new = led.assign(TP0, committed=1)
    assert new.generation > old.generation
    fetch(led, TP0, 1, 2)
    for offset in (1, 2):
        assert led.settle(h, ids[offset], ACK, None, 1.0) is SettleStatus.STALE
    assert new.offsets.commit_offset == 1 and len(new.records) == 2
    assert points(led) == {}  # 1 is what the group already has
    assert led.ready_count == 2


def test_add_to_an_old_partition_object_is_refused() -> None:
    led = Ledger()
    old = led.assign(TP0)
    new = led.assign(TP0)
    assert not led.add_to(old, 0, 1, None, 0.0)
    assert led.add_to(new, 0, 1, None, 0.0)
    assert not led.add(TP1, 0, 1, None, 0.0)  # not assigned here
    assert len(old.records) == 0 and old.offsets.commit_offset is None


def test_reassign_without_revoke_drops_the_old_generation() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, 0)
    h = led.open_holder("s1", "w", 10)
    [lease] = leased(led, h, 0.0, 1)
    led.assign(TP0, committed=0)
    assert led.settle(h, lease.msg_id, ACK, None, 0.0) is SettleStatus.STALE
    assert led.partitions[TP0].offsets.commit_offset is None


def test_committed_answers_and_old_generations() -> None:
    led = Ledger()
    gen1 = led.assign(TP0)
    fetch(led, TP0, 0, 1)
    [p1] = led.commit_points()
    led.committed(p1, True)
    assert gen1.committed == 0
    gen2 = led.assign(TP0, committed=0)
    fetch(led, TP0, 5)
    led.committed(CommitPoint(TP0, gen1.generation, 40), True)
    led.committed(CommitPoint(TP0, gen1.generation, 5), False)
    assert gen2.committed == 0 and gen2.commit_sent == 0
    assert points(led) == {TP0: 5}
    led.committed(CommitPoint(TP0, gen2.generation, 5), False)  # a failed commit...
    assert points(led) == {TP0: 5}  # ...is handed out again
    led.committed(CommitPoint(TP0, gen2.generation, 5), True)
    assert points(led) == {} and gen2.committed == 5


def test_a_late_failure_of_an_older_commit_does_not_rewind_what_was_handed_out() -> None:
    led = Ledger()
    part = led.assign(TP0)
    fetch(led, TP0, 0, 1, 2)
    h = led.open_holder("s1", "w", 10)
    ids = by_offset(leased(led, h, 0.0, 10))
    led.commit_points()
    led.settle(h, ids[0], ACK, None, 0.0)
    [p1] = led.commit_points()
    led.settle(h, ids[1], ACK, None, 0.0)
    [p2] = led.commit_points()
    assert (p1.offset, p2.offset) == (1, 2)
    led.committed(p1, False)  # p2 supersedes it: nothing to hand out again
    assert points(led) == {}
    assert part.commit_sent == 2


def test_revoke_commits_a_point_that_was_handed_out_but_not_confirmed() -> None:
    led = Ledger()
    part = led.assign(TP0)
    fetch(led, TP0, 0, 1)
    h = led.open_holder("s1", "w", 10)
    ids = by_offset(leased(led, h, 0.0, 10))
    led.settle(h, ids[0], ACK, None, 0.0)
    assert points(led) == {TP0: 1}  # in flight to the broker, never confirmed
    assert led.revoke([TP0]) == [CommitPoint(TP0, part.generation, 1)]


def test_revoke_skips_a_point_the_broker_already_confirmed() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, 0)
    [point] = led.commit_points()
    led.committed(point, True)
    assert led.revoke([TP0]) == []


def test_the_callers_generation_number_is_the_one_checked() -> None:
    led = Ledger()
    part = led.assign(TP0, committed=3, generation=41)
    fetch(led, TP0, 3, 4)
    led.committed(CommitPoint(TP0, 1, 4), True)  # the ledger's own numbering is not used
    assert part.generation == 41 and part.committed == 3
    led.committed(CommitPoint(TP0, 41, 4), True)
    assert part.committed == 4


def test_gate_pauses_at_the_cap_and_resumes_below_80_percent() -> None:
    led = Ledger(max_pending_per_partition=10)
    led.assign(TP0)
    fetch(led, TP0, *range(9))
    assert led.take_gate_changes() == []
    fetch(led, TP0, 9)
    assert led.take_gate_changes() == [(TP0, GateChange.PAUSE)]
    assert led.take_gate_changes() == []
    h = led.open_holder("s1", "w", 100)
    leases = leased(led, h, 0.0, 100)
    for lease in leases[:2]:
        led.settle(h, lease.msg_id, ACK, None, 0.0)
    assert led.take_gate_changes() == []  # 8 pending: in the band
    led.settle(h, leases[2].msg_id, ACK, None, 0.0)
    assert led.take_gate_changes() == [(TP0, GateChange.RESUME)]  # 7 < 8


def test_max_attempts_hands_off_and_finish_handoff_finishes() -> None:
    led = Ledger(policy=RetryPolicy(max_attempts=2, default_delay=0.0))
    led.assign(TP0)
    fetch(led, TP0, 3, 4)
    h = led.open_holder("s1", "w", 1)
    [a1] = leased(led, h, 0.0, 1)
    led.settle(h, a1.msg_id, RETRY, None, 0.0)
    [a2] = leased(led, h, 0.0, 1)
    assert a2.record.offset == 3 and a2.attempt == 2  # served first: it holds the mark
    led.settle(h, a2.msg_id, RETRY, None, 0.0)
    [handoff] = led.take_handoffs()
    rec = handoff.record
    assert rec is a2.record and rec.state is State.HANDOFF and "2 of 2" in handoff.reason
    assert handoff.kind is HandoffKind.DEAD_LETTER
    assert led.take_handoffs() == []
    assert points(led) == {TP0: 3}  # still pending until the dead-letter path confirms
    led.finish_handoff(rec)
    led.finish_handoff(rec)  # a second confirmation changes nothing
    assert points(led) == {TP0: 4}


def test_each_partition_follows_its_own_policy() -> None:
    led = Ledger(policy=RetryPolicy(default_delay=0.0))  # unlimited attempts by default
    led.assign(TP0, policy=RetryPolicy(max_attempts=1, default_delay=0.0))
    led.assign(TP1)
    fetch(led, TP0, 0)
    fetch(led, TP1, 0)
    h = led.open_holder("s1", "w", 10)
    for lease in leased(led, h, 0.0, 10):
        led.settle(h, lease.msg_id, RETRY, None, 0.0)
    [handoff] = led.take_handoffs()  # only TP0's record: one attempt is all it had
    assert handoff.record.part.tp == TP0
    [again] = leased(led, h, 0.0, 10)
    assert again.record.part.tp == TP1 and again.attempt == 2


def test_a_dead_letter_carries_the_workers_reason() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, 0)
    h = led.open_holder("s1", "w", 10)
    [lease] = leased(led, h, 0.0, 10)
    assert led.settle(h, lease.msg_id, Outcome.DEAD_LETTER, None, 0.0,
                      reason="phone number invalid") is SettleStatus.OK
    [handoff] = led.take_handoffs()
    assert handoff.kind is HandoffKind.DEAD_LETTER and "phone number invalid" in handoff.reason


def test_expired_records_are_never_delivered() -> None:
    """At fetch, when redelivered, and when a retry falls due: past its TTL, a record is handed
    off as EXPIRED and stays pending (it holds the commit) until the hand-off is finished."""
    led = Ledger(policy=RetryPolicy(default_delay=5.0))
    led.assign(TP0)
    assert led.add(TP0, 0, 1, None, now=10.0, expires=10.0)  # already expired at fetch
    assert led.add(TP0, 1, 1, None, now=10.0, expires=12.0)
    assert led.add(TP0, 2, 1, None, now=10.0, expires=20.0)
    assert led.add(TP0, 3, 1, None, now=10.0)  # no TTL
    [at_fetch] = led.take_handoffs()
    assert (at_fetch.record.offset, at_fetch.kind) == (0, HandoffKind.EXPIRED)
    assert "before it was delivered" in at_fetch.reason
    h = led.open_holder("s1", "w", 10)
    leases = leased(led, h, 12.0, 10)  # offset 1 expires at 12.0: it waited too long
    assert [lease.record.offset for lease in leases] == [2, 3]
    [waited] = led.take_handoffs()
    assert waited.record.offset == 1 and led.ready_count == 0
    led.settle(h, leases[0].msg_id, RETRY, None, 13.0)  # due at 18.0, expires at 20.0
    led.tick(18.0)
    [again] = leased(led, h, 18.0, 10)
    assert again.record.offset == 2 and again.attempt == 2
    led.settle(h, again.msg_id, RETRY, None, 18.0)  # due at 23.0: past its expiry
    led.tick(23.0)
    assert leased(led, h, 23.0, 10) == []
    [retried] = led.take_handoffs()
    assert retried.record.offset == 2 and "after 2 attempt(s)" in retried.reason
    assert points(led) == {TP0: 0}  # every hand-off still pending
    for handoff in (at_fetch, waited, retried):
        led.finish_handoff(handoff.record)
    assert points(led) == {TP0: 3}  # offset 3 is still leased


def test_at_most_once_finishes_a_record_when_it_is_dispatched() -> None:
    led = Ledger(leases=LeaseTimes(default=30.0))
    led.assign(TP0, at_most_once=True)
    fetch(led, TP0, 0, 1, 2)
    h = led.open_holder("s1", "w", 2)
    first = leased(led, h, 0.0, 10)
    assert [lease.record.offset for lease in first] == [0, 1]
    assert points(led) == {TP0: 2}  # committed past them at once: the loss window
    assert led.partitions[TP0].in_flight == 0 and led.begin_revoke([]) == {}
    assert led.settle(h, first[0].msg_id, RETRY, None, 1.0) is SettleStatus.OK
    assert led.ready_count == 1  # no retry: only offset 2 is left to deliver
    led.tick(31.0)  # the other lease lapses: nothing comes back, but its credit stays held
    assert led.take_handoffs() == [] and list(h.lapsed) == [first[1].msg_id]
    [last] = leased(led, h, 31.0, 10)
    assert last.record.offset == 2 and points(led) == {TP0: 3}


def test_with_retry_tiers_a_retry_is_handed_off_and_a_retried_record_waits_until_due() -> None:
    led = Ledger(policy=RetryPolicy(max_attempts=4, tiers=(1.0, 10.0)))
    led.assign(TP0)
    fetch(led, TP0, 0, 1)
    h = led.open_holder("s1", "w", 10)
    first, _ = leased(led, h, 0.0, 10)
    led.settle(h, first.msg_id, RETRY, 5.0, 1.0, reason="gateway 503")
    [handoff] = led.take_handoffs()
    assert (handoff.kind, handoff.delay, handoff.record.offset) == (HandoffKind.RETRY, 10.0, 0)
    assert handoff.reason.endswith("gateway 503")
    assert points(led) == {TP0: 0}  # pending until the retry topic has it
    led.finish_handoff(handoff.record)
    assert points(led) == {TP0: 1}  # the partition never waits for the retry

    led.assign(TopicPartition("orders.retry.10s", 0))  # the record comes back from there
    back = TopicPartition("orders.retry.10s", 0)
    assert led.add(back, 0, 1, "retried", now=2.0, attempts=1, not_before=11.0)
    assert led.ready_count == 0 and leased(led, h, 2.0, 10) == []
    led.tick(11.0)
    [again] = leased(led, h, 11.0, 10)
    assert again.record.payload == "retried" and again.attempt == 2


def test_commits_carry_the_offset_map_and_the_next_owner_skips_what_it_lists() -> None:
    led = Ledger(offset_map_limit=4096)
    led.assign(TP0, committed=10)
    fetch(led, TP0, 10, 11, 12, 13, 14)
    h = led.open_holder("s1", "w", 10)
    ids = by_offset(leased(led, h, 0.0, 10))
    for offset in (11, 13):  # finished out of order: 10 holds the low-water mark
        led.settle(h, ids[offset], ACK, None, 0.0)
    [point] = led.commit_points()  # the offset has not moved, but the map has
    assert point.offset == 10
    finished = decode(point.metadata, 10)
    assert finished is not None and sorted(o for o in range(10, 15) if o in finished) == [11, 13]
    assert led.commit_points() == []  # nothing changed since
    led.settle(h, ids[12], ACK, None, 0.0)
    [point] = led.commit_points()
    after_crash = Ledger(offset_map_limit=4096)  # the next owner, after a kill -9
    after_crash.assign(TP0, committed=10, finished=decode(point.metadata, 10))
    fetch(after_crash, TP0, 10, 11, 12, 13, 14)
    h2 = after_crash.open_holder("s1", "w", 10)
    assert [lease.record.offset for lease in leased(after_crash, h2, 0.0, 10)] == [10, 14]
    assert after_crash.partitions[TP0].skipped == 3


@given(gaps=st.lists(st.integers(1, 3), min_size=1, max_size=40),
       settle=st.lists(st.booleans(), min_size=40, max_size=40),
       rounds=st.integers(1, 3))
def test_the_offset_map_lists_exactly_the_finished_offsets_above_the_commit(
    gaps: list[int], settle: list[bool], rounds: int
) -> None:
    """Offsets with gaps (transaction markers, compaction) or without, finished in any
    pattern and over several commits: the map decodes to the offsets above the commit offset
    that are not pending (finished, or never there), and is empty when every offset from it
    up is pending (the shortcut that skips the walk of the pending set)."""
    led = Ledger(offset_map_limit=4096)
    led.assign(TP0, committed=0)
    offsets = [sum(gaps[:i + 1]) for i in range(len(gaps))]
    fetch(led, TP0, *offsets)
    h = led.open_holder("s1", "w", len(offsets))
    ids = by_offset(leased(led, h, 0.0, len(offsets)))
    done: set[int] = set()
    for r in range(rounds):
        for i, offset in enumerate(offsets):
            if settle[(i + r) % len(settle)] and offset not in done and i % rounds == r:
                led.settle(h, ids[offset], ACK, None, 0.0)
                done.add(offset)
        part = led.partitions[TP0]
        commit = part.offsets.commit_offset
        assert commit is not None
        led.commit_points()
        pending = set(offsets) - done  # an offset never fetched (a gap) is not pending either
        finished_above = {o for o in range(commit, offsets[-1] + 1) if o not in pending}
        if not finished_above:
            assert part.map_sent == ""
        else:
            finished = decode(part.map_sent, commit)
            assert finished is not None
            assert {o for o in range(commit, offsets[-1] + 1) if o in finished} == finished_above


def test_a_map_too_big_is_left_out_and_counted_and_the_commit_still_goes() -> None:
    led = Ledger(offset_map_limit=64)
    led.assign(TP0)
    fetch(led, TP0, *range(400))
    h = led.open_holder("s1", "w", 400)
    for lease in leased(led, h, 0.0, 400):
        if lease.record.offset % 2:
            led.settle(h, lease.msg_id, ACK, None, 0.0)
    [point] = led.commit_points()
    assert (point.offset, point.metadata, led.maps_too_big) == (0, "", 1)


def test_a_stale_map_is_not_used() -> None:
    led = Ledger()
    finished = decode("lw1:5:r:AQE", 5)  # offset 6 finished above 5
    assert finished is not None and 6 in finished
    led.assign(TP0, committed=7, finished=finished)  # the group committed further since
    fetch(led, TP0, 7, 8)
    assert led.partitions[TP0].skip is None and led.ready_count == 2


def test_invalid_configuration_is_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="max_pending_per_partition"):
        Ledger(max_pending_per_partition=0)
    with pytest.raises(ValueError, match="leases"):
        LeaseTimes(default=60.0, maximum=30.0)
    with pytest.raises(ValueError, match="leases"):
        LeaseTimes(default=0.0)


def test_reassigning_a_live_partition_drops_its_queued_pause() -> None:
    led = Ledger(max_pending_per_partition=2)
    led.assign(TP0)
    fetch(led, TP0, 0, 1)  # at the cap: a PAUSE is queued for this generation
    led.assign(TP0)  # a new generation before anyone took the change
    assert led.take_gate_changes() == []
    assert not led.partitions[TP0].gate.paused


def test_a_generation_must_be_newer_than_the_current_one() -> None:
    led = Ledger()
    led.assign(TP0, generation=5)
    with pytest.raises(ValueError, match="not newer"):
        led.assign(TP0, generation=5)
    led.assign(TP0, generation=6)
    assert led.partitions[TP0].generation == 6


def test_a_closed_holder_is_leased_nothing() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, 0)
    h = led.open_holder("s1", "w", 10)
    led.close_holder("s1", 0.0)
    assert leased(led, h, 0.0, 10) == []
    assert led.ready_count == 1


def test_revoked_records_leave_the_ready_queue_at_once() -> None:
    led = Ledger()
    for _ in range(3):  # rebalances with no worker attached
        led.assign(TP0)
        fetch(led, TP0, *range(100))
        led.revoke([TP0])
    assert led.ready_count == 0
    assert len(led._ready) == 0  # the queue itself must not keep dead records


def test_retry_policy_refuses_a_default_above_the_maximum() -> None:
    with pytest.raises(ValueError, match="exceeds max_delay"):
        RetryPolicy(default_delay=10.0, max_delay=5.0)


def test_an_operator_skip_finishes_a_poison_record_in_any_skippable_state() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, 0, 1, 2, 3)
    h = led.open_holder("s1", "w", 2)
    ids = by_offset(leased(led, h, 0.0, 2))  # 0 and 1 leased; 2 and 3 ready
    assert led.settle(h, ids[1], RETRY, 60.0, 0.0) is SettleStatus.OK  # 1 delayed
    led.skip(TP0, 0)  # leased: its lease is released, its credit returned
    assert led.settle(h, ids[0], ACK, None, 1.0) is SettleStatus.STALE
    assert h.credits.messages == 0
    led.skip(TP0, 1)  # delayed
    led.skip(TP0, 2)  # ready
    assert led.ready_count == 1
    assert points(led) == {TP0: 3}
    [three] = leased(led, h, 2.0, 5)
    assert three.record.offset == 3  # 2 is never delivered
    assert led.settle(h, three.msg_id, ACK, None, 2.0) is SettleStatus.OK
    assert points(led) == {TP0: 4}
    assert led.tick(120.0) == 0 and not leased(led, h, 120.0, 5)  # nor is 1, when it falls due


def test_skips_that_are_refused() -> None:
    led = Ledger()
    led.assign(TP0)
    fetch(led, TP0, 5)
    led.skip(TP0, 5)
    for tp, offset in ((TP1, 0), (TP0, 4), (TP0, 5), (TP0, 6)):
        with pytest.raises(SkipRefused) as info:
            led.skip(tp, offset)
        assert info.value.missing
    led.assign(TP1)
    assert led.add(TP1, 0, 1, "a", 0.0, okey=b"k") and led.add(TP1, 1, 1, "b", 0.0, okey=b"k")
    h = led.open_holder("s", "w", 10)
    assert [lease.record.offset for lease in leased(led, h, 0.0, 10)] == [0]  # 1 waits for 0
    with pytest.raises(SkipRefused, match="waiting") as info:
        led.skip(TP1, 1)
    assert not info.value.missing
    led.skip(TP1, 0)  # the key's holder: skipping it lets the next one go
    assert [lease.record.offset for lease in leased(led, h, 0.0, 10)] == [1]
