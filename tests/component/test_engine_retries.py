"""The engine's hand-offs: a RETRY is handed off with its due time; a record back from a retry
topic waits, with its retry partition paused, and returns as the original record, unless its
TTL ran out meanwhile; expired, retried and dead-lettered records are counted per
subscription."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from coordinator.config import SubscriptionPolicy
from coordinator.core.ledger import Ledger
from coordinator.core.model import Outcome, TopicPartition
from coordinator.core.records import HandoffKind, Run
from coordinator.kafka.records import (
    HEADER_DUE,
    HEADER_FIRST_SEEN,
    HEADER_TIMESTAMP,
    Fetched,
    Retried,
    segments,
)
from coordinator.runtime.engine import Engine
from coordinator.runtime.subscriptions import Router
from tests.support.aio import async_test

from .harness import FakeMessage, RecordingSink

MAIN, RETRY = TopicPartition("orders", 0), TopicPartition("orders.retry.1s", 0)
WAIT = 5.0


class Sent:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Fetched, dict[str, Any], Callable[[str | None], None]]] = []

    def send(self, topic: str, record: Fetched, *, origin: tuple[str, int, int], kind: str,
             reason: str, attempts: int, report: Callable[[str | None], None],
             extra: Sequence[tuple[str, bytes]] = ()) -> None:
        info = {"origin": origin, "kind": kind, "reason": reason, "attempts": attempts,
                **dict(extra)}
        self.sent.append((topic, record, info, report))


ORDERS = SubscriptionPolicy("orders", "at_least_once", "unordered", 5, "dlq", None, None, None,
                            retry=(1.0,))


def engine(sent: Sent, sink: RecordingSink, *policies: SubscriptionPolicy) -> Engine:
    router = Router(policies or [ORDERS], default_delay=0.0, max_delay=60.0,
                    retry_topic=lambda topic, delay: f"{topic}.retry.{delay:g}s")
    return Engine(Ledger(), sink, router=router, handoffs=sent, commit_interval=3600)


def handed_off(e: Engine) -> dict[tuple[str, str], int]:
    """The engine's non-zero hand-off counts: (kind, subscription) -> records."""
    return {(kind.value, sub): n for (kind, sub), n in e.handed_off.items() if n}


async def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@async_test
async def test_a_retry_goes_to_its_tier_topic_and_finishes_its_record_there() -> None:
    sent, sink = Sent(), RecordingSink()
    e = engine(sent, sink)
    e.assigned([(MAIN, 1, None, None)])
    e.intake(segments([FakeMessage("orders", 0, 7)]))
    holder = e.open_session("w", 10, 0).holder
    [lease] = e.lease(holder)
    before = time.time()
    assert e.settle(holder, [(lease.msg_id, Outcome.RETRY, None, "busy")]) == []
    [(topic, record, info, report)] = sent.sent
    assert (topic, info["origin"], info["kind"], info["attempts"]) == (
        "orders.retry.1s", ("orders", 0, 7), "retry", 1)
    assert record == (None, b"v", None, 1_700_000_000_000)  # key, value, headers, timestamp
    assert info["reason"].endswith("busy")
    assert int(before * 1000) + 1000 <= int(info[HEADER_DUE]) <= time.time() * 1000 + 1000
    assert int(info[HEADER_FIRST_SEEN]) <= time.time() * 1000
    assert info[HEADER_TIMESTAMP] == b"1700000000000"  # the TTL counts from it when it is back
    assert e.ledger.partitions[MAIN].offsets.commit_offset == 7  # pending until confirmed
    assert handed_off(e) == {("retry", "orders"): 1}
    report(None)  # the retry topic has it: the original is finished
    assert e.ledger.partitions[MAIN].offsets.commit_offset == 8
    assert handed_off(e) == {("retry", "orders"): 1}  # counted once


@async_test
async def test_expired_and_dead_lettered_records_are_counted_per_subscription() -> None:
    """A pattern subscription's topics share its count; each subscription starts at 0."""
    sent, sink = Sent(), RecordingSink()
    sms = SubscriptionPolicy("^sms\\..*", "at_least_once", "unordered", None, None, None, 60.0,
                             None)
    orders = SubscriptionPolicy("orders", "at_least_once", "unordered", 2, "dlq", "orders.expired",
                                60.0, None)
    e = engine(sent, sink, orders, sms)
    assert e.handed_off == {(kind, sub): 0 for kind in HandoffKind for sub in ("orders", "^sms\\..*")}
    tps = [MAIN, TopicPartition("sms.code", 0), TopicPartition("sms.code", 1),
           TopicPartition("sms.login", 0)]
    e.assigned([(tp, 1, None, None) for tp in tps])
    now_ms = int(time.time() * 1000)
    e.intake(segments([FakeMessage("orders", 0, 0),  # from 2023: past its TTL
                       *(FakeMessage("orders", 0, o, _timestamp_ms=now_ms) for o in (1, 2, 3))]))
    for tp in tps[1:]:  # two old records on each sms partition, one fresh
        e.intake(segments([FakeMessage(tp.topic, tp.partition, o) for o in (0, 1)]
                          + [FakeMessage(tp.topic, tp.partition, 2, _timestamp_ms=now_ms)]))
    holder = e.open_session("w", 100, 0).holder
    leases = {(lease.record.part.tp, lease.record.offset): lease for lease in e.lease(holder)
              if not isinstance(lease, Run)}
    assert set(leases) == {(MAIN, 1), (MAIN, 2), (MAIN, 3)} | {(tp, 2) for tp in tps[1:]}
    assert e.settle(holder, [
        (leases[MAIN, 1].msg_id, Outcome.DEAD_LETTER, None, "bad phone number"),
        (leases[MAIN, 2].msg_id, Outcome.RETRY, None, "busy"),  # 1 of 2 attempts: redelivered
        (leases[MAIN, 3].msg_id, Outcome.ACK, None, "")]) == []
    [again] = e.lease(holder)
    assert not isinstance(again, Run)
    assert e.settle(holder, [(again.msg_id, Outcome.RETRY, None, "busy")]) == []  # 2 of 2
    assert sorted((topic, info["kind"], info["origin"]) for topic, _, info, _ in sent.sent) == [
        ("dlq", "dead_letter", ("orders", 0, 1)), ("dlq", "dead_letter", ("orders", 0, 2)),
        ("orders.expired", "expired", ("orders", 0, 0))]  # the sms ones have no topic to go to
    assert handed_off(e) == {("expired", "orders"): 1, ("dead_letter", "orders"): 2,
                             ("expired", "^sms\\..*"): 6}


@async_test
async def test_a_record_back_from_a_retry_topic_waits_paused_then_comes_back_as_the_original(
) -> None:
    sent, sink = Sent(), RecordingSink()
    e = engine(sent, sink)
    e.assigned([(RETRY, 3, None, None)])
    run = asyncio.create_task(e.run())
    try:
        due = int((time.time() + 0.3) * 1000)
        e.intake(segments([FakeMessage("orders.retry.1s", 0, 0, _headers=[
            ("trace", b"x"), ("lowwater.topic", b"orders"), ("lowwater.partition", b"2"),
            ("lowwater.offset", b"41"), ("lowwater.attempts", b"2"), ("lowwater.reason", b"r"),
            ("lowwater.due", str(due).encode()), ("lowwater.first.seen", b"1")])]))
        assert [(p.points, p.resume) for p in sink.pauses] == [([(RETRY, 3)], False)]
        holder = e.open_session("w", 10, 0).holder
        assert e.lease(holder) == []  # not due yet
        await _until(lambda: any(p.resume for p in sink.pauses), "the retry partition resumed")
        await _until(lambda: e.ledger.ready_count == 1, "the record due")
        [lease] = e.lease(holder)
        assert not isinstance(lease, Run)  # a retried record is leased on its own
        back = lease.record.payload
        assert isinstance(back, Retried)
        assert (back.topic, back.partition, back.offset, lease.attempt) == ("orders", 2, 41, 3)
        assert back.record == (None, b"v", [("trace", b"x")], 1_700_000_000_000)
        assert back.first_seen_ms == 1
        assert lease.record.offset == 0  # the retry partition's own offset is what commits
    finally:
        run.cancel()


def _retry_message(offset: int, *, due_ms: int, original_ms: int, own_ms: int) -> FakeMessage:
    """A record of orders.retry.1s standing for orders[2]@41+offset, first produced at
    ``original_ms``; ``own_ms`` is the retry record's own timestamp (a retry topic with
    LogAppendTime gives it the time it was appended)."""
    return FakeMessage("orders.retry.1s", 0, offset, _value=f"code-{offset}".encode(),
                       _timestamp_ms=own_ms, _headers=[
        ("lowwater.topic", b"orders"), ("lowwater.partition", b"2"),
        ("lowwater.offset", str(41 + offset).encode()), ("lowwater.attempts", b"1"),
        ("lowwater.reason", b"r"), ("lowwater.due", str(due_ms).encode()),
        ("lowwater.timestamp", str(original_ms).encode())])


@async_test
async def test_a_retry_that_falls_due_past_its_ttl_is_expired_not_delivered() -> None:
    """The TTL counts from the original record's timestamp, not from the retry record's own:
    a code that expires while its retry waits is never delivered, and is counted and handed
    to the expired topic when its retry falls due."""
    sent, sink = Sent(), RecordingSink()
    codes = SubscriptionPolicy("orders", "at_least_once", "unordered", 5, "dlq", "orders.expired",
                               60.0, None, retry=(1.0,))
    e = engine(sent, sink, codes)
    e.assigned([(RETRY, 3, None, None)])
    run = asyncio.create_task(e.run())
    try:
        now = int(time.time() * 1000)
        due = now + 1500
        e.intake(segments([
            # Its TTL ends a second from now: after it is fetched, before it is due.
            _retry_message(0, due_ms=due, original_ms=now - 60_000 + 1000, own_ms=now),
            _retry_message(1, due_ms=due, original_ms=now, own_ms=now)]))  # fresh
        holder = e.open_session("w", 10, 0).holder
        assert e.lease(holder) == [] and sent.sent == []  # neither is due, nor yet expired
        await _until(lambda: e.ledger.ready_count >= 1, "the retries due")
        [lease] = e.lease(holder)
        assert not isinstance(lease, Run) and lease.record.offset == 1  # only the fresh one
        await _until(lambda: bool(sent.sent), "the expired one handed off (on the next tick)")
        [(topic, record, info, report)] = sent.sent
        assert (topic, info["kind"], info["origin"]) == ("orders.expired", "expired",
                                                         ("orders", 2, 41))
        assert record[1] == b"code-0" and record[3] == now - 60_000 + 1000  # the original's
        assert handed_off(e) == {("expired", "orders"): 1}
        assert e.ledger.partitions[RETRY].offsets.commit_offset == 0
        report(None)  # the expired topic has it: the retry record is finished
        assert e.ledger.partitions[RETRY].offsets.commit_offset == 1  # 1 is leased
    finally:
        run.cancel()


class Flaky(Sent):
    """A producer whose first ``failures`` delivery reports are errors; it posts each report
    to the event loop, as the real one does from its thread."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.reported: list[str | None] = []
        """The reports the engine has been given, in order."""

    def send(self, topic: str, record: Fetched, *, origin: tuple[str, int, int], kind: str,
             reason: str, attempts: int, report: Callable[[str | None], None],
             extra: Sequence[tuple[str, bytes]] = ()) -> None:
        super().send(topic, record, origin=origin, kind=kind, reason=reason, attempts=attempts,
                     report=report, extra=extra)
        error = "Local: Message timed out" if len(self.sent) <= self.failures else None

        def post() -> None:
            self.reported.append(error)
            report(error)

        asyncio.get_running_loop().call_soon(post)


@async_test
async def test_a_hand_off_whose_delivery_failed_is_produced_again_and_commits_only_then() -> None:
    flaky, sink = Flaky(failures=1), RecordingSink()
    e = engine(flaky, sink)
    e.assigned([(MAIN, 1, None, None)])
    e.intake(segments([FakeMessage("orders", 0, 7)]))
    holder = e.open_session("w", 10, 0).holder
    [lease] = e.lease(holder)
    assert e.settle(holder, [(lease.msg_id, Outcome.DEAD_LETTER, None, "bad number")]) == []
    await _until(lambda: flaky.reported == ["Local: Message timed out"],
                 "the first produce's report, an error")
    e.commit()
    assert e.ledger.partitions[MAIN].offsets.commit_offset == 7  # still pending
    assert sink.committed_offsets().get(MAIN, 7) == 7  # no commit passes it
    assert e.handoffs_in_flight == 1  # a drain waits for it
    await _until(lambda: flaky.reported == ["Local: Message timed out", None],
                 "the second produce, delivered")  # HANDOFF_RETRY_S later
    assert e.handoffs_in_flight == 0
    [(topic, record, info, _), again] = flaky.sent
    assert again[0] == topic == "dlq" and again[1] == record and again[2] == info
    assert info["origin"] == ("orders", 0, 7) and info["kind"] == "dead_letter"
    e.commit()
    assert sink.committed_offsets()[MAIN] == 8
    assert handed_off(e) == {("dead_letter", "orders"): 1}  # one record, however many produces
