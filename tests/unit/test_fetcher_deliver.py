"""What the consumer thread hands on from one consume() batch: the records, as segments; end
of partition markers dropped; errors reported, never delivered."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from coordinator.kafka.fetcher import Fetcher
from coordinator.kafka.records import Segment


class Sink:
    """The fetcher's sink, recording what reaches it (only what _deliver calls)."""

    def __init__(self) -> None:
        self.records: list[tuple[list[Segment], int]] = []
        self.health: list[tuple[bool, str]] = []

    def on_records(self, segments: list[Segment], count: int) -> None:
        self.records.append((segments, count))

    def on_health(self, serving: bool, reason: str) -> None:
        self.health.append((serving, reason))


def record(offset: int, error: int | None = None) -> Message:
    return Message(topic="t", partition=0, offset=offset, value=b"v%d" % offset,
                   error=None if error is None else KafkaError(error))


def deliver(records: list[Message]) -> Sink:
    sink = Sink()
    fetcher = Fetcher({"group.id": "g"}, ["t"], sink)  # type: ignore[arg-type]  # _deliver's part
    fetcher._deliver(records)
    return sink


def delivered(sink: Sink) -> list[tuple[int, Any]]:
    return [(o, s.payload(i)[1]) for segs, _ in sink.records for s in segs
            for i, o in enumerate(s.offsets)]


def test_a_clean_batch_is_handed_on_whole() -> None:
    sink = deliver([record(0), record(1), record(2)])
    assert delivered(sink) == [(0, b"v0"), (1, b"v1"), (2, b"v2")]
    assert [count for _, count in sink.records] == [3]
    assert sink.health == [(True, "records arrived")]


def test_errors_in_a_batch_are_reported_and_never_delivered(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="coordinator.kafka")
    sink = deliver([record(0), record(1, KafkaError._PARTITION_EOF), record(2),
                    record(3, KafkaError.OFFSET_OUT_OF_RANGE)])
    assert delivered(sink) == [(0, b"v0"), (2, b"v2")]
    assert [count for _, count in sink.records] == [2]
    (warning,) = [r.getMessage() for r in caplog.records]  # the EOF marker is not an error
    assert warning.startswith("Kafka error: ")


def test_a_batch_of_errors_alone_hands_nothing_on() -> None:
    sink = deliver([record(5, KafkaError._PARTITION_EOF)])
    assert sink.records == [] and sink.health == []


@pytest.mark.parametrize(("topics", "only"), [
    (["t"], "t"), (["t", "t.retry.10s"], None), (["^t.*"], None)])
def test_only_a_single_topic_named_outright_spares_reading_each_topic(
        topics: list[str], only: str | None) -> None:
    fetcher = Fetcher({"group.id": "g"}, topics, Sink())  # type: ignore[arg-type]
    assert fetcher._only_topic == only
