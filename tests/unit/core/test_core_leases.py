"""LeaseTable: msg_id issue, deadlines and the bounded memory of settled ids."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.leases import LeaseTable
from coordinator.core.model import SettleStatus

EXAMPLES = 2000 if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else 100


def test_ids_start_at_one_and_strictly_increase_never_reused() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    assert table.issued == 0
    first = table.grant("r0", "h", 10.0, 1)
    assert first.msg_id == 1 and table.issued == 1
    table.release(first, SettleStatus.ALREADY_SETTLED)
    ids = [table.grant(f"r{i}", "h", 10.0, 1).msg_id for i in range(5)]
    assert ids == [2, 3, 4, 5, 6]  # 1 was released but is not reused
    assert table.issued == 6
    assert len(table) == 5


def test_grant_keeps_what_it_was_given() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    lease = table.grant("rec", "holder", 12.5, 3)
    assert (lease.record, lease.holder, lease.deadline, lease.attempt) == ("rec", "holder", 12.5, 3)
    assert table.get(lease.msg_id) is lease
    assert table.get(lease.msg_id + 1) is None


def test_lapsed_returns_due_leases_earliest_first() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    late = table.grant("a", "h", 30.0, 1)
    early = table.grant("b", "h", 10.0, 1)
    table.grant("c", "h", 31.0, 1)
    assert table.take_lapsed(9.9)[0] == []
    assert table.take_lapsed(30.0)[0] == [early, late]  # deadline == now counts as lapsed
    assert table.next_deadline() == 31.0


def test_lapsed_does_not_return_released_leases() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    lease = table.grant("a", "h", 5.0, 1)
    table.release(lease, SettleStatus.ALREADY_SETTLED)
    assert table.take_lapsed(100.0)[0] == []
    assert table.next_deadline() is None


def test_extended_lease_is_not_lapsed_at_its_old_deadline() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    lease = table.grant("a", "h", 10.0, 1)
    table.extend(lease, 40.0)
    assert table.next_deadline() == 40.0
    assert table.take_lapsed(39.0)[0] == []
    assert table.take_lapsed(40.0)[0] == [lease]


def test_lease_extended_to_an_earlier_deadline_lapses_then() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    lease = table.grant("a", "h", 30.0, 1)
    table.extend(lease, 5.0)
    assert table.take_lapsed(5.0)[0] == [lease]
    assert table.take_lapsed(30.0)[0] == []  # the old heap entry is skipped


def test_lapsed_returns_a_lease_once_even_if_extended_to_the_same_deadline() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    lease = table.grant("a", "h", 30.0, 1)
    table.extend(lease, 30.0)  # e.g. the same msg_id twice in one LeaseExtension
    assert table.take_lapsed(30.0)[0] == [lease]


def test_lapsed_returns_a_lease_once_after_extending_back_and_forth() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    lease = table.grant("a", "h", 30.0, 1)
    for deadline in (40.0, 30.0, 40.0):
        table.extend(lease, deadline)
    assert table.take_lapsed(50.0)[0] == [lease]


def test_a_batch_watched_once_lapses_each_lease_at_its_current_deadline() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    batch = [table.grant(str(i), "h", 30.0, 1, watch=False) for i in range(4)]
    table.watch(30.0, batch[0].msg_id, batch[-1].msg_id)
    table.extend(batch[1], 45.0)
    table.release(batch[2], SettleStatus.ALREADY_SETTLED)
    assert table.next_deadline() == 30.0
    assert table.take_lapsed(30.0)[0] == [batch[0], batch[3]]
    assert table.next_deadline() == 45.0
    assert table.take_lapsed(45.0)[0] == [batch[1]]
    assert table.next_deadline() is None


def test_unwatched_grant_never_lapses_on_its_own() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    table.grant("a", "h", 1.0, 1, watch=False)
    assert table.take_lapsed(100.0)[0] == [] and table.next_deadline() is None


def test_recall_answers_why_an_id_left() -> None:
    table: LeaseTable[str, str] = LeaseTable()
    settled = table.grant("a", "h", 1.0, 1)
    revoked = table.grant("b", "h", 1.0, 1)
    live = table.grant("c", "h", 1.0, 1)
    table.release(settled, SettleStatus.ALREADY_SETTLED)
    table.release(revoked, SettleStatus.STALE)
    assert table.recall(settled.msg_id) is SettleStatus.ALREADY_SETTLED
    assert table.recall(revoked.msg_id) is SettleStatus.STALE
    assert table.recall(999) is SettleStatus.UNKNOWN  # never issued
    assert table.recall(0) is SettleStatus.UNKNOWN
    assert table.get(live.msg_id) is live and len(table) == 1


def test_recall_memory_is_bounded_and_forgets_the_oldest() -> None:
    table: LeaseTable[str, str] = LeaseTable(remember=2)
    leases = [table.grant(str(i), "h", 1.0, 1) for i in range(3)]
    for lease in leases:
        table.release(lease, SettleStatus.STALE)
    assert [table.recall(lease.msg_id) for lease in leases] == [
        SettleStatus.UNKNOWN, SettleStatus.STALE, SettleStatus.STALE
    ]


def test_remember_zero_forgets_everything_and_negative_is_rejected() -> None:
    table: LeaseTable[str, str] = LeaseTable(remember=0)
    lease = table.grant("a", "h", 1.0, 1)
    table.release(lease, SettleStatus.ALREADY_SETTLED)
    assert table.recall(lease.msg_id) is SettleStatus.UNKNOWN
    with pytest.raises(ValueError, match="remember"):
        LeaseTable(remember=-1)


# Each op: (kind, value) with kind 0 grant, 1 extend, 2 release, 3 lapse at now += value.
OPS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 20), st.integers(0, 2**16)),
               max_size=60)


@settings(max_examples=EXAMPLES, deadline=None)
@given(OPS)
def test_lapsed_matches_a_model_of_current_deadlines(ops: list[tuple[int, int, int]]) -> None:
    table: LeaseTable[int, str] = LeaseTable(remember=1000)
    deadlines: dict[int, float] = {}  # msg_id -> current deadline, for active leases
    now, last_id = 0.0, 0
    for kind, value, pick in ops:
        unique = 0.5 if value % 2 else 0.0  # repeated deadlines for one lease happen
        live = sorted(deadlines)
        if kind == 0 or not live:
            lease = table.grant(0, "h", now + value + unique, 1)
            assert lease.msg_id > last_id
            last_id = lease.msg_id
            deadlines[lease.msg_id] = lease.deadline
        elif kind == 1:
            msg_id = live[pick % len(live)]
            held = table.get(msg_id)
            assert held is not None
            table.extend(held, now + value + unique)
            deadlines[msg_id] = now + value + unique
        elif kind == 2:
            msg_id = live.pop(pick % len(live))
            released = table.get(msg_id)
            assert released is not None
            table.release(released, SettleStatus.ALREADY_SETTLED)
            del deadlines[msg_id]
            assert table.recall(msg_id) is SettleStatus.ALREADY_SETTLED
        else:
            now += value
            due = sorted((d, m) for m, d in deadlines.items() if d <= now)
            got = table.take_lapsed(now)[0]
            assert [(lease.deadline, lease.msg_id) for lease in got] == due
            for lease in got:
                table.release(lease, SettleStatus.ALREADY_SETTLED)
                del deadlines[lease.msg_id]
        expected_next = min(deadlines.values()) if deadlines else None
        assert table.next_deadline() == expected_next
        assert len(table) == len(deadlines)
