"""The fake sidecar's bookkeeping follows the proto contract."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lowwater.testing._ledger import Holder, Ledger, Status

ACK, RETRY, DEAD_LETTER = 1, 2, 3


def _ledger(**kw: object) -> Ledger:
    options: dict[str, object] = {"lease": 30.0, "max_lease": 60.0, "retry_delay": 1.0,
                                  "max_attempts": None}
    options.update(kw)
    return Ledger(**options)  # type: ignore[arg-type]


def _publish(ledger: Ledger, n: int, size: int = 10) -> None:
    for _ in range(n):
        ledger.publish("t", 0, None, b"x" * size, (), 0)


def test_flow_control_limits_messages_and_bytes() -> None:
    ledger = _ledger()
    _publish(ledger, 10)
    h = Holder("s1", "w", max_messages=3, max_bytes=0)
    assert len(ledger.lease(h, 0.0, 100)) == 3
    assert ledger.lease(h, 0.0, 100) == []
    b = Holder("s2", "w", max_messages=100, max_bytes=25)
    assert len(ledger.lease(b, 0.0, 100)) == 2  # 10 + 10 <= 25 < 30
    big = _ledger()
    _publish(big, 2, size=100)
    lone = Holder("s3", "w", max_messages=10, max_bytes=25)
    assert len(big.lease(lone, 0.0, 100)) == 1  # one oversized record still goes alone


def test_settle_statuses() -> None:
    ledger = _ledger()
    _publish(ledger, 2)
    a = Holder("a", "w", 10, 0)
    b = Holder("b", "w", 10, 0)
    first, second = ledger.lease(a, 0.0, 2)
    assert ledger.settle(b, first.msg_id, ACK, None, "", 0.0) is Status.NOT_OWNER
    assert ledger.settle(a, first.msg_id, 0, None, "", 0.0) is Status.INVALID
    assert ledger.settle(a, first.msg_id, ACK, None, "", 0.0) is Status.OK
    assert ledger.settle(a, first.msg_id, ACK, None, "", 0.0) is Status.ALREADY_SETTLED
    assert ledger.settle(a, 999, ACK, None, "", 0.0) is Status.UNKNOWN
    assert ledger.settle(None, second.msg_id, ACK, None, "", 0.0) is Status.NOT_OWNER


def test_commit_offset_is_the_lowest_unfinished() -> None:
    ledger = _ledger()
    _publish(ledger, 3)
    h = Holder("a", "w", 10, 0)
    l0, l1, l2 = ledger.lease(h, 0.0, 10)
    ledger.settle(h, l2.msg_id, ACK, None, "", 0.0)
    ledger.settle(h, l1.msg_id, ACK, None, "", 0.0)
    assert ledger.committed("t", 0) == 0
    ledger.settle(h, l0.msg_id, ACK, None, "", 0.0)
    assert ledger.committed("t", 0) == 3


def test_retry_lapse_and_stream_end_redeliver_with_the_next_attempt() -> None:
    ledger = _ledger()
    _publish(ledger, 3)
    h = Holder("a", "w", 10, 0)
    retried, _lapsed, dropped = ledger.lease(h, 0.0, 10)
    ledger.settle(h, retried.msg_id, RETRY, 40.0, "", 0.0)
    ledger.extend(h, dropped.msg_id, 60.0, 0.0)
    ledger.tick(31.0)  # `lapsed` ran out; `dropped` was extended
    assert ledger.lapses == 1
    again = ledger.lease(h, 31.0, 10)
    assert [(x.record.ref.offset, x.attempt) for x in again] == [(1, 2)]
    ledger.tick(39.0)
    assert ledger.lease(h, 39.0, 10) == []
    ledger.tick(40.0)
    assert [(x.record.ref.offset, x.attempt) for x in ledger.lease(h, 40.0, 10)] == [(0, 2)]
    ledger.close_holder(h)
    other = Holder("b", "w", 10, 0)
    assert sorted(x.record.ref.offset for x in ledger.lease(other, 41.0, 10)) == [0, 1, 2]


def test_max_attempts_dead_letters() -> None:
    ledger = _ledger(max_attempts=2)
    _publish(ledger, 1)
    h = Holder("a", "w", 10, 0)
    for _ in range(2):
        (lease,) = ledger.lease(h, 0.0, 10)
        ledger.settle(h, lease.msg_id, RETRY, 0.0, "", 0.0)
        ledger.tick(0.0)
    assert ledger.lease(h, 0.0, 10) == []
    assert [reason for _, reason in ledger.dead_letters] == ["2 of 2 attempts used"]


def test_revoke_makes_late_settlements_stale() -> None:
    ledger = _ledger()
    _publish(ledger, 2)
    h = Holder("a", "w", 10, 0)
    first, second = ledger.lease(h, 0.0, 10)
    assert ledger.begin_revoke("t", 0) == {"a": [first.msg_id, second.msg_id]}
    ledger.settle(h, first.msg_id, ACK, None, "", 0.0)
    ledger.end_revoke("t", 0)
    assert ledger.settle(h, second.msg_id, ACK, None, "", 0.0) is Status.STALE
    (again,) = ledger.lease(h, 0.0, 10)
    assert (again.record.ref.offset, again.attempt) == (1, 1)


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["lease", "settle", "tick", "close", "publish"]),
                  st.integers(0, 3), st.integers(1, 5)),
        max_size=80,
    )
)
def test_invariants_hold_under_any_sequence(ops: list[tuple[str, int, int]]) -> None:
    ledger = _ledger(lease=10.0, retry_delay=2.0)
    _publish(ledger, 5)
    holders = [Holder(f"s{i}", "w", max_messages=2 + i, max_bytes=0) for i in range(2)]
    now = 0.0
    settled: set[int] = set()
    for op, pick, amount in ops:
        holder = holders[pick % 2]
        if op == "lease" and holder.open:
            ledger.lease(holder, now, amount)
        elif op == "settle" and ledger.leases:
            msg_id = sorted(ledger.leases)[pick % len(ledger.leases)]
            owner = ledger.leases[msg_id].holder
            other = next(h for h in holders if h is not owner)
            assert ledger.settle(other, msg_id, ACK, None, "", now) is Status.NOT_OWNER
            assert ledger.settle(owner, msg_id, amount, 0.5, "", now) is Status.OK  # outcome 1-5
            settled.add(msg_id)
            assert ledger.settle(owner, msg_id, ACK, None, "", now) is Status.ALREADY_SETTLED
        elif op == "tick":
            now += amount * 3
            ledger.tick(now)
        elif op == "close":
            ledger.close_holder(holder)
            holders[pick % 2] = Holder(f"s{pick}-{now}", "w", max_messages=2, max_bytes=0)
        elif op == "publish":
            _publish(ledger, amount)
        for h in holders:
            assert len(h.leases) <= h.max_messages
        log = ledger.partitions[("t", 0)]
        unfinished = [r.ref.offset for r in log if not r.done]
        assert ledger.committed("t", 0) == (unfinished[0] if unfinished else len(log))
        assert all(lease.msg_id not in settled for lease in ledger.leases.values())
