"""Request coalescing and lease-extension choices: pure, time passed in."""

from __future__ import annotations

import itertools
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowwater import Message
from lowwater._leases import due_for_extension, lease_tick
from lowwater._outbox import (
    MAX_ACKS_PER_REQUEST,
    MAX_IDS_PER_REQUEST,
    MAX_REASON_BYTES_PER_REQUEST,
    MAX_SETTLEMENTS_PER_REQUEST,
    Outbox,
    ranges,
)
from lowwater.message import from_delivery
from lowwater.outcomes import MAX_REASON_CHARS, Outcome
from lowwater.testing import RecordingSettler
from lowwater.v1 import coordinator_pb2 as pb


def test_everything_queued_goes_in_one_request() -> None:
    box = Outbox()
    assert box.take() is None
    box.acks.extend([1, 2, 3])
    box.others.append((4, Outcome.RETRY, 1.5, "later"))
    box.others.append((5, Outcome.DROP, None, "old"))
    box.extends[None] = [6, 7]
    box.flow = (10, 1000)
    request = box.take()
    assert request is not None
    assert not request.ack_msg_ids  # plain ACKs of consecutive ids go as a range
    assert [(r.first_msg_id, r.count) for r in request.ack_ranges] == [(1, 3)]
    assert [(s.msg_id, s.outcome) for s in request.settlements] == [
        (4, pb.OUTCOME_RETRY), (5, pb.OUTCOME_DROP)]
    assert request.settlements[0].retry_delay.ToNanoseconds() == 1_500_000_000
    assert request.settlements[0].reason == "later"
    assert not request.settlements[1].HasField("retry_delay")
    assert list(request.extend.msg_ids) == [6, 7] and not request.extend.HasField("extension")
    assert (request.flow_control.max_in_flight_messages,
            request.flow_control.max_in_flight_bytes) == (10, 1000)
    assert box.take() is None and not box


def test_large_backlogs_and_extension_groups_are_split() -> None:
    box = Outbox()
    box.acks.extend(range(0, 2 * MAX_ACKS_PER_REQUEST + 10, 2))  # none consecutive
    box.others.extend((i, Outcome.DEAD_LETTER, None, "x") for i in range(MAX_SETTLEMENTS_PER_REQUEST + 1))
    box.extends[2.0] = [1]
    box.extends[None] = [2]
    first, second, third = box.take(), box.take(), box.take()
    assert first is not None and second is not None and third is not None
    assert len(first.ack_msg_ids) == MAX_ACKS_PER_REQUEST
    assert len(first.settlements) == MAX_SETTLEMENTS_PER_REQUEST
    assert not first.HasField("extend")  # full: MAX_IDS_PER_REQUEST msg_ids already
    assert list(second.ack_msg_ids) == list(range(2 * MAX_ACKS_PER_REQUEST,
                                                  2 * MAX_ACKS_PER_REQUEST + 10, 2))
    assert [s.msg_id for s in second.settlements] == [MAX_SETTLEMENTS_PER_REQUEST]
    assert second.extend.extension.ToNanoseconds() == 2_000_000_000
    assert list(second.extend.msg_ids) == [1]
    assert list(third.extend.msg_ids) == [2]
    assert box.take() is None


@given(st.lists(st.integers(1, 60), max_size=40))
def test_acks_go_as_ranges_and_single_ids_that_name_each_id_once(ids: list[int]) -> None:
    singles, spans = ranges(ids)
    named = singles + [m for first, count in spans for m in range(first, first + count)]
    assert sorted(named) == sorted(ids)
    assert all(count >= 2 for _, count in spans)
    ends = sorted([(m, m) for m in singles] + [(f, f + c - 1) for f, c in spans])
    # Maximal: no two pieces of distinct ids could have been joined.
    assert all(b[0] != a[1] + 1 for a, b in itertools.pairwise(ends))


def test_a_request_names_no_more_ids_than_the_budget_whatever_their_form() -> None:
    box = Outbox()
    box.max_ids = 100
    box.acks.extend([*range(1, 60), *range(61, 200, 2)])
    first = box.take()
    assert first is not None
    assert len(first.ack_msg_ids) + sum(r.count for r in first.ack_ranges) == 100
    assert [(r.first_msg_id, r.count) for r in first.ack_ranges] == [(1, 59)]


def test_long_reasons_and_many_extensions_are_split_below_the_sidecar_size_limit() -> None:
    box = Outbox()
    reason = "\u9a8c" * MAX_REASON_CHARS  # 3 UTF-8 bytes a character
    box.others.extend((i, Outcome.DEAD_LETTER, None, reason) for i in range(2000))
    box.extends[None] = list(range(2 * MAX_ACKS_PER_REQUEST + 1))
    requests = []
    while (request := box.take()) is not None:
        requests.append(request)
    assert all(r.ByteSize() < 4 * 1024 * 1024 for r in requests)
    assert all(sum(len(s.reason.encode()) for s in r.settlements) <= MAX_REASON_BYTES_PER_REQUEST
               for r in requests)
    assert [s.msg_id for r in requests for s in r.settlements] == list(range(2000))
    assert [m for r in requests for m in r.extend.msg_ids] == list(range(2 * MAX_ACKS_PER_REQUEST + 1))
    one = Outbox()  # one reason is never too big to go alone
    one.others.append((1, Outcome.DROP, None, reason))
    assert (first := one.take()) is not None and len(first.settlements) == 1


def _msg(msg_id: int, received: float, deadline_ms: int) -> Message:
    delivery = pb.Delivery(msg_id=msg_id, topic="t", lease_deadline_ms=deadline_ms)
    return from_delivery(RecordingSettler(), delivery, received)


def test_leases_are_extended_past_two_thirds() -> None:
    # monotonic 100 s == wall 1000 s; lease 30 s, delivered at monotonic 100
    early = _msg(1, 100.0, 1_030_000)
    due = _msg(2, 100.0, 1_030_000)
    skewed = _msg(3, 100.0, 9_999_999_000)  # sidecar clock far ahead: arrival + lease wins
    assert due_for_extension([early], now=105.0, wall=1005.0, lease=30.0, max_extension=600) == []
    got = due_for_extension([due, skewed], now=121.0, wall=1021.0, lease=30.0, max_extension=600)
    assert got == [2, 3]
    assert due._deadline == pytest.approx(151.0)
    assert due_for_extension([due], now=122.0, wall=1022.0, lease=30.0, max_extension=600) == []


def test_extension_stops_after_the_maximum(caplog: pytest.LogCaptureFixture) -> None:
    msg = _msg(7, 100.0, 1_030_000)
    with caplog.at_level(logging.WARNING, logger="lowwater.lease"):
        assert due_for_extension([msg], now=125.0, wall=1025.0, lease=30.0, max_extension=20) == []
        assert due_for_extension([msg], now=900.0, wall=1900.0, lease=30.0, max_extension=20) == []
    assert len(caplog.records) == 1 and "msg_id=7" in caplog.records[0].getMessage()


def test_lease_tick_is_bounded() -> None:
    assert lease_tick(0.3) == pytest.approx(0.05)
    assert lease_tick(30.0) == 1.0
    assert lease_tick(0.001) == 0.01


@pytest.mark.parametrize("max_ids", [MAX_IDS_PER_REQUEST, 2500, 100])
def test_no_request_names_more_msg_ids_than_the_sidecar_takes(max_ids: int) -> None:
    """``max_ids`` is what the sidecar said when the stream opened (its max_settlement_batch)."""
    box = Outbox()
    box.max_ids = max_ids
    box.acks.extend(range(3 * MAX_ACKS_PER_REQUEST))
    box.others.extend((i, Outcome.RETRY, None, "") for i in range(3 * MAX_SETTLEMENTS_PER_REQUEST))
    box.extends[None] = list(range(3 * MAX_ACKS_PER_REQUEST))
    sizes = []
    while (request := box.take()) is not None:
        sizes.append(len(request.ack_msg_ids) + sum(r.count for r in request.ack_ranges)
                     + len(request.settlements) + len(request.extend.msg_ids))
    assert max(sizes) == max_ids
    assert sum(sizes) == 6 * MAX_ACKS_PER_REQUEST + 3 * MAX_SETTLEMENTS_PER_REQUEST
