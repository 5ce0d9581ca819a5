"""Tests of tests/support/broker.py against a real Tansu broker and the librdkafka mock cluster.

Two tests document Tansu quirks (ListOffsets under-reports, commit metadata is dropped): if
a future Tansu fixes them, they fail on purpose, and the workarounds can go.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from coordinator.embedded import tansu
from tests.support.broker import (
    FAST_GROUP_CONFIG,
    DeliveryError,
    MockCluster,
    TansuBroker,
    TopicFactory,
    check_reachable,
    committed,
    committed_offsets,
    create_topic,
    id_records,
    log_end_offsets,
    produce,
    read_all,
    unique_name,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]

RECORDS = 1000
"""Records produced by the watermark test."""

JOIN_BUDGET_S = 15.0
"""A group join with FAST_GROUP_CONFIG takes ~3 s on Tansu; this is the most a test allows."""

OUTAGE_PROBE_S = 1.0
"""How long a request to a frozen broker is given to (not) answer."""


def _ids(values: list[bytes | None]) -> list[bytes]:
    return sorted(v for v in values if v is not None)


# --- producing and the log end ---------------------------------------------------------------


def test_fetch_high_watermarks_sum_to_the_records_produced(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(4)
    records = id_records(RECORDS, prefix="hwm")

    result = produce(kafka_bootstrap, topic, records)
    ends = log_end_offsets(kafka_bootstrap, topic)

    assert result.count == RECORDS
    assert set(result.per_partition) == {0, 1, 2, 3}, "keys should spread over all partitions"
    assert sum(ends.values()) == RECORDS
    assert ends == result.per_partition  # a fresh topic: each log starts at offset 0
    stored = read_all(kafka_bootstrap, topic)
    assert _ids([r.value for r in stored]) == _ids([r.value for r in records])


def test_tansu_list_offsets_latest_under_reports_the_log_end(private_tansu: TansuBroker) -> None:
    """Why log_end_offsets reads the fetch high watermark instead of ListOffsets(latest)."""
    bootstrap = private_tansu.bootstrap_servers
    topic = unique_name("quirk-list-offsets")
    create_topic(bootstrap, topic, 1)
    produce(bootstrap, topic, id_records(RECORDS), config={"linger.ms": 100})  # a few big batches

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("probe")})
    try:
        _, listed = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()

    assert log_end_offsets(bootstrap, topic) == {0: RECORDS}
    assert listed < RECORDS, "Tansu's ListOffsets(latest) is right now: log_end_offsets can use it"


def test_produce_raises_when_a_delivery_fails(kafka_bootstrap: str) -> None:
    """`produce` never creates topics, so producing to a missing one must fail loudly."""
    missing = unique_name("never-created")
    with pytest.raises(DeliveryError, match="1 of 1 records"):
        produce(kafka_bootstrap, missing, [b"x"], config={"message.timeout.ms": 1500})


def test_tansu_creates_missing_topics_when_a_metadata_request_allows_it(
    private_tansu: TansuBroker,
) -> None:
    """Why the helpers set allow.auto.create.topics=false: producers and admins allow it."""
    topic = unique_name("quirk-auto-create")
    producer = Producer({"bootstrap.servers": private_tansu.bootstrap_servers})
    metadata = producer.list_topics(topic, timeout=10).topics[topic]
    assert metadata.error is None and len(metadata.partitions) == 4


# --- committed offsets -----------------------------------------------------------------------


def test_committed_offsets_round_trip_through_a_group_consumer(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(4)
    produce(kafka_bootstrap, topic, id_records(200))
    group = unique_name("round-trip")
    assert committed_offsets(kafka_bootstrap, group, topic) == dict.fromkeys(range(4))

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **FAST_GROUP_CONFIG,
        }
    )
    try:
        started = time.monotonic()
        consumer.subscribe([topic])
        seen = _consume(consumer, 200)
        assert time.monotonic() - started < JOIN_BUDGET_S, "group join too slow for the suite"
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    assert seen == 200
    assert committed_offsets(kafka_bootstrap, group, topic) == log_end_offsets(
        kafka_bootstrap, topic
    )


def _consume(consumer: Consumer, expected: int) -> int:
    """Consume until `expected` records arrived (bounded by the join budget)."""
    seen = 0

    def more() -> bool | None:
        nonlocal seen
        for msg in consumer.consume(500, timeout=0.2):
            if msg.error() is not None:
                raise KafkaException(msg.error())
            seen += 1
        return True if seen >= expected else None

    wait_until(more, timeout=JOIN_BUDGET_S, what=f"{expected} records", interval=0)
    return seen


def _commit_with_metadata(bootstrap: str, group: str, topic: str) -> None:
    """Commit offset 5 with metadata on partition 0, outside any group generation."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 5, "offset-map:7,9")], asynchronous=False)
    finally:
        consumer.close()


def test_tansu_drops_commit_metadata_but_the_mock_cluster_keeps_it(
    private_tansu: TansuBroker, mock_cluster: MockCluster
) -> None:
    """Why tests of the offset map in commit metadata run on the mock cluster (or real Kafka)."""
    topic, group = unique_name("quirk-metadata"), unique_name("metadata")
    create_topic(private_tansu.bootstrap_servers, topic, 4)
    mock_cluster.create_topic(topic)

    for bootstrap in (private_tansu.bootstrap_servers, mock_cluster.bootstrap_servers):
        _commit_with_metadata(bootstrap, group, topic)

    on_tansu = committed(private_tansu.bootstrap_servers, group, topic)[0]
    on_mock = committed(mock_cluster.bootstrap_servers, group, topic)[0]
    assert on_mock == (5, "offset-map:7,9")
    assert on_tansu.offset == 5
    assert on_tansu.metadata is None, "Tansu keeps commit metadata now: metadata tests may use it"


# --- Tansu process control -------------------------------------------------------------------


def test_freeze_makes_tansu_unresponsive_and_thaw_brings_it_back(
    private_tansu: TansuBroker,
) -> None:
    bootstrap = private_tansu.bootstrap_servers
    topic = unique_name("outage")
    create_topic(bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})

    private_tansu.freeze()
    with pytest.raises(KafkaException):
        check_reachable(bootstrap, timeout=OUTAGE_PROBE_S)
    producer.produce(topic, b"sent during the outage")
    assert producer.flush(OUTAGE_PROBE_S) == 1, "a frozen broker acknowledged a record"

    private_tansu.thaw()
    assert producer.flush(30) == 0
    assert log_end_offsets(bootstrap, topic) == {0: 1}


def test_stop_ends_a_frozen_tansu_by_its_pid(tansu_bin: str, tmp_path: Path) -> None:
    broker = TansuBroker(binary=tansu_bin, log_dir=tmp_path).start()
    try:
        pid = broker.pid
        broker.freeze()
    finally:
        broker.stop()
    assert not broker.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stop() reaped it: the pid is gone


def test_tansu_retries_on_a_new_port_when_its_port_is_taken(
    tansu_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind((tansu.LOOPBACK, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_pick = tansu.pick_free_port
        monkeypatch.setattr(tansu, "pick_free_port", lambda: next(ports, None) or real_pick())

        with TansuBroker(binary=tansu_bin, log_dir=tmp_path) as broker:
            assert broker.port != taken
            check_reachable(broker.bootstrap_servers, timeout=5)
    assert "AddrInUse" in "".join(p.read_text() for p in tmp_path.glob("tansu-*.log"))


# --- the librdkafka mock cluster -------------------------------------------------------------

_OTHER_PROCESS = """
import json, sys
from tests.support.broker import id_records, produce, read_all
bootstrap, topic = sys.argv[1:3]
produce(bootstrap, topic, id_records(40, prefix="other"))
print(json.dumps(sorted(r.value.decode() for r in read_all(bootstrap, topic))))
"""


def test_mock_cluster_serves_clients_in_another_process(mock_cluster: MockCluster) -> None:
    topic = unique_name("mock")
    mock_cluster.create_topic(topic)

    child = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, mock_cluster.bootstrap_servers, topic],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    read_there = json.loads(child.stdout)
    read_here = read_all(mock_cluster.bootstrap_servers, topic)
    assert len(read_there) == 40
    assert sorted(r.value.decode() for r in read_here if r.value) == read_there
    assert sum(log_end_offsets(mock_cluster.bootstrap_servers, topic).values()) == 40
    assert len({r.partition for r in read_here}) > 1


def test_mock_cluster_dies_with_its_host() -> None:
    cluster = MockCluster()
    bootstrap = cluster.bootstrap_servers
    check_reachable(bootstrap, timeout=5)
    cluster.close()
    with pytest.raises(KafkaException):
        check_reachable(bootstrap, timeout=OUTAGE_PROBE_S)
