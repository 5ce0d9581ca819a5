"""A fetched message becomes a compact payload; a retry-topic record becomes the one it retries."""

from __future__ import annotations

import gc
from itertools import pairwise
from typing import Any

from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    Message,
)
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.model import TopicPartition
from coordinator.kafka.records import (
    Fetched,
    Retried,
    contents,
    origin,
    retried,
    segments,
)

TP = TopicPartition("orders.retry.1s", 3)
RETRY_HEADERS: list[tuple[str, str | bytes | None]] = [
    ("trace", b"x"), ("lowwater.topic", b"orders"), ("lowwater.partition", b"2"),
    ("lowwater.offset", b"41"), ("lowwater.attempts", b"2"), ("lowwater.reason", b"r"),
    ("lowwater.due", b"1700000001000"), ("lowwater.first.seen", b"1700000000500")]


def message(headers: list[tuple[str, str | bytes | None]] | None = None,
            timestamp: tuple[int, int] = (TIMESTAMP_CREATE_TIME, 1_700_000_000_000)) -> Message:
    return Message(topic=TP.topic, partition=TP.partition, offset=7, key=b"k", value=b"v",
                   headers=headers, timestamp=timestamp)


def fetched(msg: Message) -> Fetched:
    """A message's payload as the sidecar reads it: through segments(), alone."""
    (seg,) = segments([msg])
    return seg.payload(0)


def read_one(msg: Message) -> tuple[Any, ...]:
    """The oracle: what a payload must hold, read message by message."""
    kind, ts = msg.timestamp()
    return (msg.key(), msg.value(), msg.headers(),
            None if kind == TIMESTAMP_NOT_AVAILABLE else ts)


def test_a_fetched_payload_keeps_what_a_delivery_needs_and_no_coordinates() -> None:
    payload = fetched(message([("h", b"1"), ("null", None)]))
    assert payload == (b"k", b"v", [("h", b"1"), ("null", None)], 1_700_000_000_000)
    assert contents(payload) is payload
    assert origin(payload, TP, 7) == (TP.topic, TP.partition, 7)


def test_a_missing_timestamp_is_the_one_false_kind() -> None:
    """_read_columns finds TIMESTAMP_NOT_AVAILABLE among the kinds with all()."""
    assert not TIMESTAMP_NOT_AVAILABLE and TIMESTAMP_CREATE_TIME and TIMESTAMP_LOG_APPEND_TIME


def test_a_record_without_headers_or_timestamp_has_none() -> None:
    assert fetched(message(timestamp=(TIMESTAMP_NOT_AVAILABLE, 0))) == (b"k", b"v", None, None)


def test_a_payload_without_headers_leaves_the_garbage_collector_alone() -> None:
    payload = fetched(message())
    gc.collect()
    assert not gc.is_tracked(payload)  # a plain tuple of bytes, ints and None


def test_a_retried_record_stands_for_its_original() -> None:
    back = retried(fetched(message(RETRY_HEADERS)))
    assert back == Retried((b"k", b"v", [("trace", b"x")], 1_700_000_000_000), "orders", 2, 41,
                           attempts=2, due_ms=1_700_000_001_000, first_seen_ms=1_700_000_000_500)
    assert back is not None and contents(back) is back.record
    assert origin(back, TP, 7) == ("orders", 2, 41)


def test_a_retried_record_without_first_seen_or_own_headers() -> None:
    headers = [(k, v) for k, v in RETRY_HEADERS if k.startswith("lowwater.")
               and k != "lowwater.first.seen"]
    back = retried(fetched(message(headers)))
    assert back is not None and (back.record[2], back.first_seen_ms) == (None, 0)


def test_a_retried_record_has_its_original_timestamp_whatever_its_own() -> None:
    """A retry topic with LogAppendTime stamps the retry record anew: lowwater.timestamp keeps
    the original's, which TTLs count from. Without it (an older lowwater) the record's own
    timestamp stands, which the hand-off copied from the original."""
    headers = [*RETRY_HEADERS, ("lowwater.timestamp", b"1600000000000")]
    back = retried(fetched(message(headers, (TIMESTAMP_LOG_APPEND_TIME, 1_700_000_000_000))))
    assert back is not None and back.record[3] == 1_600_000_000_000
    back = retried(fetched(message(RETRY_HEADERS)))
    assert back is not None and back.record[3] == 1_700_000_000_000
    bad = [*RETRY_HEADERS, ("lowwater.timestamp", b"yesterday")]
    assert retried(fetched(message(bad))) is None  # malformed, as any other lowwater.* header


def test_a_record_without_valid_retry_headers_is_not_a_retry() -> None:
    assert retried(fetched(message())) is None
    broken = [(k, b"x" if k == "lowwater.offset" else v) for k, v in RETRY_HEADERS]
    assert retried(fetched(message(broken))) is None


def test_columns_hold_what_fetched_gives_record_by_record() -> None:
    msgs = [message([("h", b"1")]), message(timestamp=(TIMESTAMP_NOT_AVAILABLE, 0)),
            Message(topic=TP.topic, partition=TP.partition, offset=9, key=None, value=None),
            message([("a", None), ("a", b"")])]
    (seg,) = segments(msgs)
    columns = seg.columns
    assert [tuple(c[i] for c in columns) for i in range(len(msgs))] == [read_one(m) for m in msgs]


_record = st.tuples(
    st.sampled_from(["a", "b"]), st.integers(0, 2),  # topic, partition
    st.none() | st.binary(max_size=3), st.none() | st.binary(max_size=3),  # key, value
    st.none() | st.lists(st.tuples(st.text(max_size=2), st.none() | st.binary(max_size=2)),
                         max_size=2),
    st.integers(1, 3))  # the gap to the partition's previous offset: 1 is consecutive


def with_offsets(fields: list[tuple[str, int, bytes | None, bytes | None, Any, int]],
                 ) -> list[Message]:
    """Messages of ``fields``, each partition's offsets increasing by the drawn gaps."""
    last: dict[tuple[str, int], int] = {}
    msgs = []
    for i, (t, p, k, v, h, gap) in enumerate(fields):
        offset = last[t, p] = last.get((t, p), 10) + gap
        msgs.append(Message(topic=t, partition=p, offset=offset, key=k, value=v, headers=h,
                            timestamp=(TIMESTAMP_CREATE_TIME, i)))
    return msgs


@given(st.lists(_record, max_size=30))
def test_segments_cut_a_batch_where_the_partition_changes_and_read_it_as_fetched(
        fields: list[tuple[str, int, bytes | None, bytes | None, Any, int]]) -> None:
    msgs = with_offsets(fields)
    expected = [read_one(m) for m in msgs]
    segs = segments(msgs)
    assert [(s.topic, s.partition, o) for s in segs for o in s.offsets] == [
        (m.topic(), m.partition(), m.offset()) for m in msgs]
    assert all((a.topic, a.partition) != (b.topic, b.partition)
               for a, b in pairwise(segs))  # each one as long as it can be
    for s in segs:  # consecutive offsets, and only they, come as a range
        assert isinstance(s.offsets, range) == (s.offsets[-1] - s.offsets[0] == len(s.offsets) - 1)
    assert [s.payload(i) for s in segs for i in range(len(s.offsets))] == expected
    assert [n for s in segs for n in s.sizes] == [
        len(k or b"") + len(v or b"") for k, v, _, _ in expected]


@given(st.lists(st.booleans(), min_size=1, max_size=12))
def test_headers_the_client_cannot_decode_are_read_once_and_dropped_alone(
        undecodable: list[bool]) -> None:
    from tests.component.harness import FakeMessage  # raises on a second headers() call

    msgs = [FakeMessage("t", 0, i, _headers=[("h", bytes([i]))], _undecodable_headers=bad)
            for i, bad in enumerate(undecodable)]
    (seg,) = segments(msgs)
    assert seg.columns[2] == [None if bad else [("h", bytes([i]))]
                              for i, bad in enumerate(undecodable)]
    assert all(m._headers_calls == 1 for m in msgs)
    assert [m._headers for m, bad in zip(msgs, undecodable, strict=True) if bad] == [
        []] * sum(undecodable)


@given(st.lists(st.tuples(st.integers(0, 2), st.none() | st.binary(max_size=3),
                          st.integers(1, 3)), max_size=30))
def test_segments_of_the_one_subscribed_topic_read_no_topic_and_cut_the_same(
        fields: list[tuple[int, bytes | None, int]]) -> None:
    msgs = with_offsets([("only", p, None, v, None, gap) for p, v, gap in fields])
    fast, read = segments(msgs, only_topic="only"), segments(msgs)
    assert [(s.topic, s.partition, s.offsets, s.sizes) for s in fast] == [
        (s.topic, s.partition, s.offsets, s.sizes) for s in read]
    assert [s.payload(i) for s in fast for i in range(len(s.offsets))] == [
        s.payload(i) for s in read for i in range(len(s.offsets))]
