"""Pending sets for Redis: snapshots of the ledger, their encoding, diffs and replays."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.ledger import LeaseTimes, Ledger
from coordinator.core.model import Outcome, TopicPartition
from coordinator.core.pending import (
    SCHEMA,
    KeySpace,
    PartitionMeta,
    PendingEntry,
    Replay,
    Row,
    decode_entry,
    decode_hash,
    diff,
    encode_row,
    snapshot,
)
from coordinator.core.policy import RetryPolicy
from coordinator.core.records import members

TP = TopicPartition("sms.requests", 3)


def wall_ms(t: float) -> int:
    """The ledger's clock starts at 0 here; epoch 1,000 s in."""
    return int((t + 1000.0) * 1000)


def ledger_with(offsets: range) -> Ledger:
    led = Ledger(leases=LeaseTimes(30.0, 600.0), policy=RetryPolicy(1.0, 60.0, None))
    led.assign(TP, committed=offsets.start)
    for offset in offsets:
        assert led.add(TP, offset, 10, f"v{offset}", now=1.0)
    return led


def test_a_snapshot_lists_what_was_delivered_and_counts_what_was_not() -> None:
    led = ledger_with(range(100, 110))
    worker = led.open_holder("stream-1", "sms-worker-a", 4)
    leases = led.lease(worker, now=2.0, limit=4)  # 100..103
    led.settle(worker, leases[1].msg_id, Outcome.ACK, None, 3.0)  # 101 done
    led.settle(worker, leases[2].msg_id, Outcome.RETRY, 5.0, 3.0)  # 102 waits for a retry
    snap = snapshot(led.partitions[TP], wall_ms)
    assert snap.rows == {
        100: ("leased", 1, 1_001_000, leases[0].msg_id, "sms-worker-a", 1_002_000, 1_032_000),
        102: ("delayed", 1, 1_001_000, 0, "", 0, 0),
        103: ("leased", 1, 1_001_000, leases[3].msg_id, "sms-worker-a", 1_002_000, 1_032_000),
    }
    assert (snap.pending, snap.undelivered, snap.lowest_undelivered) == (9, 6, 104)
    assert (snap.committed, snap.commit_offset) == (100, 100)
    meta = snap.meta("host/1/abc", written_ms=1_005_000)
    assert PartitionMeta.decode(meta.encode()) == meta


def test_a_lapsed_delivery_is_listed_as_ready_with_its_attempts() -> None:
    led = ledger_with(range(2))
    worker = led.open_holder("stream-1", "w", 2)
    led.lease(worker, now=0.0, limit=2)
    assert led.tick(31.0) == 2
    rows = snapshot(led.partitions[TP], wall_ms).rows
    assert rows == {0: ("ready", 1, 1_001_000, 0, "", 0, 0), 1: ("ready", 1, 1_001_000, 0, "", 0, 0)}


rows = st.tuples(
    st.sampled_from(["leased", "ready", "delayed", "waiting", "parked", "handoff"]),
    st.integers(1, 1000), st.integers(0, 2**53), st.integers(0, 2**53),
    st.text(max_size=40), st.integers(0, 2**53), st.integers(0, 2**53),
)
row_maps = st.dictionaries(st.integers(0, 2**62), rows, max_size=30)


@given(offset=st.integers(0, 2**62), row=rows)
def test_rows_round_trip(offset: int, row: Row) -> None:
    assert decode_entry(str(offset), encode_row(row)) == PendingEntry.from_row(offset, row)


@given(before=row_maps, after=row_maps)
def test_applying_a_diff_turns_one_snapshot_into_the_other(
    before: dict[int, Row], after: dict[int, Row]
) -> None:
    upserts, deletes = diff(before, after)
    applied = {o: r for o, r in before.items() if o not in deletes} | upserts
    assert applied == after
    assert all(before.get(o) != r for o, r in upserts.items())  # nothing unchanged is rewritten


@given(field=st.one_of(st.text(), st.binary()), value=st.one_of(st.text(), st.binary()))
def test_garbage_never_decodes_nor_raises(field: str | bytes, value: str | bytes) -> None:
    entry = decode_entry(field, value)
    assert entry is None or entry.offset >= 0
    meta, _entries = decode_hash({field: value, "meta": value})
    assert meta is None or meta.schema == SCHEMA


def test_a_meta_of_another_schema_or_shape_is_not_read() -> None:
    good = json.loads(PartitionMeta("i", 1, 0, None, 5, 0, 0, None).encode())
    assert PartitionMeta.decode(json.dumps(good)) is not None
    assert PartitionMeta.decode(json.dumps(good | {"v": SCHEMA + 1})) is None
    assert PartitionMeta.decode(json.dumps(good | {"generation": "1"})) is None
    assert PartitionMeta.decode(json.dumps(good | {"pending": True})) is None
    assert PartitionMeta.decode("[1]") is None


def test_a_hash_decodes_to_its_meta_and_entries_leaving_malformed_fields_out() -> None:
    meta = PartitionMeta("i", 2, 5, 7, 7, 3, 1, 9)
    row: Row = ("leased", 2, 1, 42, "w", 3, 4)
    fields = {b"meta": meta.encode().encode(), b"7": encode_row(row).encode(),
              b"8": b"[1,2]", b"x": encode_row(row).encode(), b"-1": encode_row(row).encode()}
    assert decode_hash(fields) == (meta, {7: PendingEntry.from_row(7, row)})


@given(topic=st.from_regex(r"[a-zA-Z0-9._-]{1,40}", fullmatch=True), partition=st.integers(0, 10**6))
def test_partition_members_round_trip(topic: str, partition: int) -> None:
    tp = TopicPartition(topic, partition)
    assert KeySpace.parse_member(KeySpace.member(tp).encode()) == tp
    assert KeySpace("lw", "g").partition(tp) == f"lw:g:p:{topic}:{partition}"


def test_members_that_name_no_partition() -> None:
    for member in ["", "topic", ":3", "t:", "t:x", "t:-1"]:
        assert KeySpace.parse_member(member) is None


def test_a_replay_counts_what_this_instance_has_finished_since() -> None:
    led = ledger_with(range(10, 16))
    entries = [PendingEntry(o, "leased", 1, 0, o, "w") for o in (10, 12, 14, 20)]
    replay = Replay(TP, None, reversed(entries))
    assert [e.offset for e in replay.entries] == [10, 12, 14, 20]
    assert replay.done(None) == [False] * 4
    part = led.partitions[TP]
    assert replay.done(part) == [False] * 4  # fetched again, nothing finished yet
    worker = led.open_holder("s", "w", 10)
    by_offset = {lease.record.offset: lease.msg_id
                 for lease in members(led.lease(worker, 1.0, 10))}
    led.settle(worker, by_offset[12], Outcome.ACK, None, 2.0)
    led.settle(worker, by_offset[14], Outcome.ACK, None, 2.0)
    assert replay.done(part) == [False, True, True, False]  # 20 is not fetched yet
    for offset in (10, 11, 13, 15):
        led.settle(worker, by_offset[offset], Outcome.ACK, None, 2.0)
    assert replay.done(part) == [True, True, True, False]
