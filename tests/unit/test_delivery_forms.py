"""The two forms of a stream's deliveries carry the same records.

A worker that opens its stream with ``delivery_batches`` gets DeliveryBatch messages
(``convert.batches_into``); any other gets one Delivery per record (``convert.deliveries_into``).
Leases from a real ledger, with hypothesis-chosen records, go through both and through the
SDK's decoding: every message must read the same, field by field.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.ledger import Ledger
from coordinator.core.model import TopicPartition, consecutive
from coordinator.core.records import members
from coordinator.kafka.records import Fetched, Payload, Retried
from coordinator.service import convert
from lowwater.message import Batch, Message, from_delivery
from lowwater.testing import RecordingSettler
from lowwater.v1 import coordinator_pb2 as pb

TPS = [TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)]

maybe_bytes = st.none() | st.binary(max_size=8)
headers = st.none() | st.lists(
    st.tuples(st.text(max_size=4), maybe_bytes), min_size=1, max_size=3)
fetched = st.tuples(maybe_bytes, maybe_bytes, headers, st.none() | st.integers(1, 2**50))
retried = st.builds(Retried, fetched, st.sampled_from(["orig", "a"]), st.integers(0, 5),
                    st.integers(0, 10**6), st.integers(1, 5), st.integers(0, 2**40),
                    st.integers(0, 2**40))
records = st.lists(st.tuples(st.sampled_from(TPS), fetched | retried, st.integers(1, 2)),
                   max_size=40)
"""(partition, payload, gap to the partition's previous offset): a gap of 1 is consecutive."""


def fields(msg: Message) -> tuple[object, ...]:
    return (msg.msg_id, msg.topic, msg.partition, msg.offset, msg.key, msg.value, msg.headers,
            msg.timestamp, msg.attempt, msg.lease_deadline, msg.size)


def as_batches(resp: pb.StreamResponse) -> list[Message]:
    settler = RecordingSettler()
    out: list[Message] = []
    for b in resp.batches:
        batch = Batch.of_batch(b)
        out += [Message(settler, batch, i, b.first_msg_id + i, 0.0) for i in range(len(batch))]
    return out


@settings(max_examples=200, deadline=None)
@given(records, st.integers(1, 50), st.lists(st.integers(0, 39), max_size=5))
def test_batches_read_as_the_deliveries_they_stand_for(
        recs: list[tuple[TopicPartition, Payload, int]], limit: int, lapse: list[int]) -> None:
    ledger = Ledger(max_pending_per_partition=1000)
    for tp in TPS:
        ledger.assign(tp, 0)
    offset = {tp: 0 for tp in TPS}
    for tp, payload, gap in recs:
        offset[tp] += gap
        ledger.add(tp, offset[tp], 1, payload, 0.0)
    holder = ledger.open_holder("h", "w", 1000)
    leases = members(ledger.lease(holder, 1.0, limit))  # one by one: the leases themselves
    # Redeliveries: later attempts, out of msg_id order with the rest.
    for i in sorted({i for i in lapse if i < len(leases)}):
        ledger.settle(holder, leases[i].msg_id, None, None, 2.0)  # INVALID: nothing changes
    ledger.close_holder("h", 3.0)
    again = ledger.open_holder("h2", "w", 1000)
    leases += members(ledger.lease(again, 4.0, limit))

    one = pb.StreamResponse()
    convert.deliveries_into(one, leases)
    batched = pb.StreamResponse()
    convert.batches_into(batched, leases)
    batched = pb.StreamResponse.FromString(batched.SerializeToString())  # as on the wire

    expected = [fields(from_delivery(RecordingSettler(), d, 0.0)) for d in one.deliveries]
    assert [fields(m) for m in as_batches(batched)] == expected
    assert len(expected) == len(leases)
    # Records fetched from one partition in a row share a batch.
    plain = sum(1 for lease in leases if not isinstance(lease.record.payload, Retried))
    if plain == len(leases) and len({lease.record.part for lease in leases}) == 1 \
            and len({lease.deadline for lease in leases}) == 1:
        assert len(batched.batches) == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(fetched, st.integers(1, 2)), min_size=1, max_size=30),
       st.integers(0, 10), st.integers(1, 40))
def test_a_run_is_sent_as_the_deliveries_of_its_records(
        drawn: list[tuple[Fetched, int]], start: int, limit: int) -> None:
    """Records taken in as a run (their payloads as columns) read the same in both forms:
    consecutive offsets (a range, sent as the first alone) and offsets with gaps (a list)."""
    ledger = Ledger(max_pending_per_partition=1000)
    part = ledger.assign(TPS[0], 0)
    payloads = [payload for payload, _ in drawn]
    columns = tuple(list(column) for column in zip(*payloads, strict=True))
    offsets = consecutive(list(itertools.accumulate((gap for _, gap in drawn), initial=start))[1:])
    assert ledger.add_run(part, offsets, columns, [1] * len(payloads), 0.0)
    leases = ledger.lease(ledger.open_holder("h", "w", 1000), 1.0, limit)
    one, batched = pb.StreamResponse(), pb.StreamResponse()
    convert.deliveries_into(one, leases)
    convert.batches_into(batched, leases)
    batched = pb.StreamResponse.FromString(batched.SerializeToString())
    expected = [fields(from_delivery(RecordingSettler(), d, 0.0)) for d in one.deliveries]
    assert [fields(m) for m in as_batches(batched)] == expected
    assert len(expected) == min(limit, len(payloads)) and len(batched.batches) == 1
    (b,) = batched.batches
    assert (len(b.offsets) == 0) == isinstance(offsets, range) and not b.attempts


def test_a_batch_keeps_null_and_empty_keys_apart() -> None:
    ledger = Ledger()
    tp = TPS[0]
    ledger.assign(tp, 0)
    payloads: list[Fetched] = [(None, b"v", None, None), (b"", b"v", None, None),
                               (b"k", None, [("h", None)], 5)]
    for offset, payload in enumerate(payloads):
        ledger.add(tp, offset, 1, payload, 0.0)
    leases = ledger.lease(ledger.open_holder("h", "w", 10), 1.0, 10)
    resp = pb.StreamResponse()
    convert.batches_into(resp, leases)
    (b,) = resp.batches
    assert list(b.null_keys) == [0] and list(b.keys) == [b"", b"", b"k"]
    msgs = as_batches(resp)
    assert [m.key for m in msgs] == [None, b"", b"k"]
    assert [m.value for m in msgs] == [b"v", b"v", b""]
    assert [m.headers for m in msgs] == [(), (), (("h", b""),)]
    assert [m.timestamp is None for m in msgs] == [True, True, False]
    nulls = pb.StreamResponse()  # every key null: no keys sent at all
    convert.batches_into(nulls, leases[:1])
    assert not nulls.batches[0].keys and as_batches(nulls)[0].key is None
