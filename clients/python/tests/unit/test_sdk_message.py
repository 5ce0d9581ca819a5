"""Message: the protobuf delivery seen as plain Python, and settling by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lowwater import AlreadySettled
from lowwater.message import Batch, Message, from_delivery
from lowwater.testing import RecordingSettler, make_message
from lowwater.v1 import coordinator_pb2 as pb


def _delivery(**overrides: object) -> pb.Delivery:
    fields: dict[str, object] = {
        "msg_id": 2**64 - 1,
        "topic": "sms",
        "partition": 3,
        "offset": 12345678901,
        "value": b"payload",
        "headers": [pb.Header(key="trace", value=b"a"), pb.Header(key="trace", value=b"b")],
        "timestamp_ms": 1_700_000_000_123,
        "attempt": 2,
        "lease_deadline_ms": 1_700_000_030_000,
    }
    fields.update(overrides)
    return pb.Delivery(**fields)  # type: ignore[arg-type]


def _batch_messages(b: pb.DeliveryBatch) -> list[Message]:
    batch = Batch.of_batch(pb.DeliveryBatch.FromString(b.SerializeToString()))
    return [Message(RecordingSettler(), batch, i, b.first_msg_id + i, 0.0)
            for i in range(len(batch))]


def test_a_batch_without_offsets_or_attempts_is_consecutive_first_deliveries() -> None:
    msgs = _batch_messages(pb.DeliveryBatch(topic="sms", partition=1, first_msg_id=7,
                                            first_offset=2**40, values=[b"a", b"b", b"c"]))
    assert [(m.msg_id, m.offset, m.attempt) for m in msgs] == [
        (7, 2**40, 1), (8, 2**40 + 1, 1), (9, 2**40 + 2, 1)]


def test_a_batch_with_offsets_and_attempts_reads_them_and_not_first_offset() -> None:
    msgs = _batch_messages(pb.DeliveryBatch(topic="sms", partition=1, first_msg_id=7,
                                            first_offset=99, offsets=[3, 5], attempts=[1, 4],
                                            values=[b"a", b"b"]))
    assert [(m.offset, m.attempt) for m in msgs] == [(3, 1), (5, 4)]


def test_fields_are_plain_python() -> None:
    msg = from_delivery(RecordingSettler(), _delivery(key=b"k"), 0.0)
    assert msg.msg_id == 2**64 - 1
    assert (msg.topic, msg.partition, msg.offset) == ("sms", 3, 12345678901)
    assert msg.key == b"k"
    assert msg.value == b"payload"
    assert msg.headers == (("trace", b"a"), ("trace", b"b"))
    assert msg.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert msg.attempt == 2
    assert msg.lease_deadline == datetime.fromtimestamp(1_700_000_030, tz=UTC)
    assert msg.size == len(b"k") + len(b"payload")
    assert not msg.settled
    assert "msg_id=18446744073709551615" in repr(msg) and "'sms'" in repr(msg)


def test_null_key_empty_key_and_unknown_timestamp() -> None:
    assert from_delivery(RecordingSettler(), _delivery(), 0.0).key is None
    assert from_delivery(RecordingSettler(), _delivery(key=b""), 0.0).key == b""
    assert from_delivery(RecordingSettler(), _delivery(timestamp_ms=0), 0.0).timestamp is None
    assert from_delivery(RecordingSettler(), _delivery(headers=[]), 0.0).headers == ()


@pytest.mark.parametrize("ms", [253_402_300_800_000, 2**63 - 1, -(2**63)])
def test_a_timestamp_no_datetime_can_hold_reads_as_unknown(ms: int) -> None:
    """A producer may set any 64-bit timestamp; reading it must not fail the handler."""
    assert from_delivery(RecordingSettler(), _delivery(timestamp_ms=ms), 0.0).timestamp is None


def test_fields_are_read_only() -> None:
    msg, _ = make_message(value=b"v")
    with pytest.raises(AttributeError):
        msg.value = b"other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("settle", "expected"),
    [
        (lambda m: m.ack(), ("ACK", None, "")),
        (lambda m: m.retry(), ("RETRY", None, "")),
        (lambda m: m.retry(timedelta(seconds=3), "later"), ("RETRY", timedelta(seconds=3), "later")),
        (lambda m: m.dead_letter("bad"), ("DEAD_LETTER", None, "bad")),
        (lambda m: m.drop("old"), ("DROP", None, "old")),
        (lambda m: m.already_processed(), ("ALREADY_PROCESSED", None, "")),
    ],
)
def test_settling_by_hand(settle: object, expected: tuple[object, ...]) -> None:
    msg, settler = make_message(value=b"v")
    assert settle(msg) is True  # type: ignore[operator]
    assert settler.settlements == [expected]
    assert msg.settled


def test_a_message_is_settled_once() -> None:
    msg, settler = make_message()
    msg.ack()
    with pytest.raises(AlreadySettled):
        msg.drop("again")
    assert len(settler.settlements) == 1
    assert msg.extend(timedelta(seconds=5)) is False


def test_extend_and_argument_checks() -> None:
    msg, settler = make_message()
    assert msg.extend(timedelta(seconds=45)) is True
    assert msg.extend() is True
    assert settler.extensions == [timedelta(seconds=45), None]
    with pytest.raises(ValueError, match="by"):
        msg.extend(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="delay"):
        msg.retry(timedelta(seconds=-1))
    with pytest.raises(TypeError, match="delay"):
        msg.retry(3)  # type: ignore[arg-type]
    assert not msg.settled
