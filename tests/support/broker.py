"""Kafka brokers and Kafka helpers for the tests, the demo and the benchmarks.

- `TansuBroker` runs a private Tansu process on a free loopback port.
- `MockCluster` hosts librdkafka's mock cluster in this process; other processes can use it.
- `create_topic`, `produce`, `log_end_offsets`, `committed_offsets` and `read_all` work on
  both, and on a real Kafka (named by `LOWWATER_TEST_BOOTSTRAP`, see `external_bootstrap`).

Tansu quirks bent around here (MISSION.md, "Development environment"):

- It binds 0.0.0.0:9092 unless told otherwise, and a taken port makes it exit: `TansuBroker`
  picks a free port and retries with a new one when it loses that race.
- It creates a missing topic (4 partitions) for any metadata request that allows it, which
  producer and admin clients do by default: these helpers disallow it, and `create_topic`
  uses the admin API.
- `ListOffsets(latest)` returns the last batch's base offset + 1, not the log end:
  `log_end_offsets` reads the high watermark from a fetch response instead.
- It drops offset-commit metadata: `committed` returns `metadata=None` there.

This module must not import pytest.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, NamedTuple, Protocol, Self, TypeVar, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

# The broker launcher and topic helpers live in the product (the demo uses them too);
# they are re-exported here (see __all__) so tests import Kafka helpers from one place.
from coordinator.embedded.tansu import (
    METADATA_TIMEOUT_S,
    NO_AUTO_CREATE,
    POLL_INTERVAL_S,
    BrokerStartError,
    Deadline,
    TansuBroker,
    _admin,
    check_reachable,
    create_topic,
    pick_free_port,
    tansu_binary,
    unique_name,
    wait_for_topic,
    wait_until,
)

__all__ = [
    "BOOTSTRAP_ENV",
    "COMMITTED_TIMEOUT_S",
    "FAST_GROUP_CONFIG",
    "FLUSH_TIMEOUT_S",
    "METADATA_TIMEOUT_S",
    "MOCK_LOG_LEVEL",
    "MOCK_PARTITIONS",
    "NO_AUTO_CREATE",
    "PROBE_FETCH_WAIT_MS",
    "PRODUCER_CONFIG",
    "PRODUCE_POLL_EVERY",
    "READ_BATCH",
    "READ_TIMEOUT_S",
    "READ_WAIT_S",
    "BrokerStartError",
    "Committed",
    "ConsumedRecord",
    "Deadline",
    "Delivered",
    "DeliveryError",
    "MockCluster",
    "OutRecord",
    "ProduceResult",
    "TansuBroker",
    "TopicFactory",
    "check_reachable",
    "committed",
    "committed_offsets",
    "create_topic",
    "delete_topic",
    "external_bootstrap",
    "id_records",
    "log_end_offsets",
    "pick_free_port",
    "produce",
    "read_all",
    "tansu_binary",
    "topic_partitions",
    "unique_name",
    "wait_for_topic",
    "wait_until",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# --- tunables -------------------------------------------------------------------------------

BOOTSTRAP_ENV: Final = "LOWWATER_TEST_BOOTSTRAP"
"""Environment variable naming an external Kafka (bootstrap servers) to use instead of Tansu."""

FAST_GROUP_CONFIG: Final[Mapping[str, Any]] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
}
"""Consumer settings that cut a group join on Tansu from ~23 s (librdkafka defaults) to ~3 s."""

PRODUCER_CONFIG: Final[Mapping[str, Any]] = {
    "linger.ms": 20,
    "message.timeout.ms": 30_000,
    **NO_AUTO_CREATE,
}
"""Producer settings for `produce`: batch for speed, fail a delivery after 30 s (not 5 min),
and never create the topic."""

READ_TIMEOUT_S: Final = 60.0
"""Deadline for reading partitions to their end (log_end_offsets, read_all)."""

COMMITTED_TIMEOUT_S: Final = 15.0
"""Deadline for fetching a group's committed offsets."""

FLUSH_TIMEOUT_S: Final = 60.0
"""Deadline for every produced record's delivery report to arrive."""

PRODUCE_POLL_EVERY: Final = 1000
"""`produce` serves delivery reports (and reports progress) after this many records."""

PROBE_FETCH_WAIT_MS: Final = 10
"""How long a broker may hold a probe's fetch at the log end (EOF comes after an empty fetch)."""

READ_BATCH: Final = 500
"""Records per `consume()` call when reading partitions to their end."""

READ_WAIT_S: Final = 0.05
"""Longest wait of one such `consume()` call (it waits for a full batch or this long)."""

MOCK_PARTITIONS: Final = 4
"""Partitions of every topic the librdkafka mock cluster auto-creates (it cannot be changed)."""

MOCK_LOG_LEVEL: Final = 4
"""syslog level for the mock cluster's host client: warnings and worse (hides its MOCK notice)."""


# --- small utilities ------------------------------------------------------------------------


def external_bootstrap() -> str | None:
    """The bootstrap servers of an external Kafka from `LOWWATER_TEST_BOOTSTRAP`, if set."""
    value = os.environ.get(BOOTSTRAP_ENV, "").strip()
    return value or None


# --- librdkafka mock cluster ----------------------------------------------------------------


class MockCluster:
    """librdkafka's mock cluster, hosted by a producer in this process.

    Other clients, in this process or another, reach it at `bootstrap_servers`. It auto-creates
    topics with 4 partitions (CreateTopics is not supported) and keeps offset-commit metadata,
    unlike Tansu. It lives only as long as this object: `close()` (or leaving the `with`
    block) destroys it. It keeps only the last 5 MiB or 100,000 records per partition.
    """

    def __init__(self, num_brokers: int = 3) -> None:
        self._host: Producer | None = Producer(
            {
                "bootstrap.servers": "",
                "test.mock.num.brokers": num_brokers,
                "log_level": MOCK_LOG_LEVEL,
            }
        )
        metadata = self._host.list_topics(timeout=METADATA_TIMEOUT_S)
        brokers = sorted(metadata.brokers.values(), key=lambda broker: broker.id)
        self.bootstrap_servers: str = ",".join(f"{b.host}:{b.port}" for b in brokers)
        """Comma-separated `host:port` of every mock broker."""

    def create_topic(
        self, name: str, partitions: int = MOCK_PARTITIONS, *, timeout: float = METADATA_TIMEOUT_S
    ) -> None:
        """Make the mock auto-create `name` (a metadata request) and wait until it is led."""
        if partitions != MOCK_PARTITIONS:
            raise ValueError(f"the mock cluster creates topics with {MOCK_PARTITIONS} partitions")
        self._live_host().list_topics(name, timeout=timeout)
        wait_for_topic(self.bootstrap_servers, name, partitions, timeout=timeout)

    def close(self) -> None:
        """Destroy the mock cluster. Safe to call twice."""
        host, self._host = self._host, None
        if host is not None:
            host.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _live_host(self) -> Producer:
        if self._host is None:
            raise RuntimeError("the mock cluster is closed")
        return self._host


# --- topics ---------------------------------------------------------------------------------


class TopicFactory(Protocol):
    """Creates a uniquely named topic and returns its name (the `new_topic` fixture); `name`
    names it instead, for a test that needs a name to follow a pattern (make it unique, with
    `unique_name`)."""

    def __call__(self, partitions: int = 4, *, name: str | None = None) -> str: ...


def delete_topic(bootstrap: str, name: str, *, timeout: float = METADATA_TIMEOUT_S) -> None:
    """Delete a topic (raises KafkaException if the broker refuses)."""
    admin = _admin(bootstrap)  # must outlive the future
    admin.delete_topics([name], operation_timeout=timeout)[name].result(timeout)


def topic_partitions(
    bootstrap: str, topic: str, *, timeout: float = METADATA_TIMEOUT_S
) -> list[int]:
    """The partition ids of `topic` (raises KafkaException if it does not exist)."""
    metadata = _admin(bootstrap).list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise KafkaException(metadata.error if metadata is not None else KafkaError.UNKNOWN)
    return sorted(metadata.partitions)


# --- producing ------------------------------------------------------------------------------


class OutRecord(NamedTuple):
    """A record to produce. Leave `partition` None to let the partitioner pick (by key)."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes | None]] | None = None
    partition: int | None = None
    timestamp_ms: int | None = None


class Delivered(NamedTuple):
    """Where the broker stored one produced record."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class ProduceResult:
    """What `produce` delivered: counts always, each record's place when `keep=True`."""

    count: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    deliveries: list[Delivered] = field(default_factory=list)


class DeliveryError(RuntimeError):
    """At least one produced record was not acknowledged by the broker."""


def id_records(n: int, *, prefix: str = "rec", pad_to: int = 0) -> list[OutRecord]:
    """`n` records whose key and value carry a unique id (`prefix-000000042`).

    The key spreads them over the partitions; `pad_to` pads the value to that many bytes.
    """
    records = []
    for i in range(n):
        ident = f"{prefix}-{i:09d}".encode()
        records.append(OutRecord(value=ident.ljust(pad_to, b"."), key=ident))
    return records


def _position(msg: Message) -> tuple[int, int]:
    """(partition, offset) of a delivered or consumed message (both are always set there)."""
    partition, offset = msg.partition(), msg.offset()
    if partition is None or offset is None:
        raise ValueError(f"message without a position: {msg}")
    return partition, offset


def _value(msg: Message) -> bytes | None:
    """The value of a message as bytes (confluent-kafka types it loosely)."""
    value = msg.value()
    return value if value is None or isinstance(value, bytes) else bytes(value)


class _DeliveryTracker:
    """Counts delivery reports and keeps the first errors."""

    def __init__(self, keep: bool) -> None:
        self.result = ProduceResult()
        self.errors: list[str] = []
        self.failed = 0
        self._keep = keep

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(f"partition {msg.partition()}: {err}")
            return
        result = self.result
        result.count += 1
        partition, offset = _position(msg)
        result.per_partition[partition] = result.per_partition.get(partition, 0) + 1
        if self._keep:
            result.deliveries.append(Delivered(partition, offset, msg.key(), _value(msg)))


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[OutRecord | bytes],
    *,
    config: Mapping[str, Any] | None = None,
    keep: bool = True,
    on_progress: Callable[[int], None] | None = None,
    flush_timeout: float = FLUSH_TIMEOUT_S,
) -> ProduceResult:
    """Produce `records` (an `OutRecord`, or a bare value), flush, and check every delivery.

    Raises DeliveryError if any delivery report is an error or missing after `flush_timeout`.
    `on_progress(delivered)` is called every `PRODUCE_POLL_EVERY` records and at the end.
    With `keep=False` only counts are kept (for millions of records).
    """
    tracker = _DeliveryTracker(keep)
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG, **(config or {})})
    sent = 0
    try:
        for sent, record in enumerate(records, 1):
            _produce_one(producer, topic, record, tracker)
            if sent % PRODUCE_POLL_EVERY == 0:
                producer.poll(0)
                if on_progress is not None:
                    on_progress(tracker.result.count)
        undelivered = producer.flush(flush_timeout)
    finally:
        if len(producer):
            producer.purge()
            producer.flush(0)
    if on_progress is not None:
        on_progress(tracker.result.count)
    if tracker.failed or undelivered:
        raise DeliveryError(
            f"{tracker.failed} of {sent} records to {topic} failed and {undelivered} had no "
            f"delivery report after {flush_timeout:g}s; first errors: {tracker.errors}"
        )
    return tracker.result


def _produce_one(
    producer: Producer, topic: str, record: OutRecord | bytes, on_delivery: _DeliveryTracker
) -> None:
    """Enqueue one record, waiting for room when the local queue is full."""
    rec = OutRecord(record) if isinstance(record, bytes) else record
    partition = -1 if rec.partition is None else rec.partition  # -1: the partitioner picks
    headers: list[tuple[str, str | bytes | None]] | None = None
    if rec.headers is not None:
        headers = list(rec.headers)
    while True:
        try:
            producer.produce(
                topic,
                rec.value,
                rec.key,
                partition=partition,
                on_delivery=on_delivery,
                timestamp=rec.timestamp_ms or 0,  # 0: now
                headers=headers,
            )
            return
        except BufferError:
            producer.poll(POLL_INTERVAL_S)  # the local queue is full: let deliveries drain it


# --- reading offsets and records ------------------------------------------------------------


class Committed(NamedTuple):
    """A group's committed position on one partition."""

    offset: int | None
    """The committed offset, or None when the group has committed nothing there."""
    metadata: str | None
    """The commit's metadata string (Tansu drops it: always None there)."""


class ConsumedRecord(NamedTuple):
    """One record read back from a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None] | None = None
    """The headers by key (the last value of a repeated key), or None without headers."""


def _probe_consumer(bootstrap: str) -> Consumer:
    """A consumer for assign()-only reads: it never joins a group or commits."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("lowwater-probe"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": PROBE_FETCH_WAIT_MS,
        }
    )


@contextlib.contextmanager
def _closing(consumer: Consumer) -> Iterator[Consumer]:
    try:
        yield consumer
    finally:
        consumer.close()


_TRANSIENT: Final = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
"""Consumer errors librdkafka recovers from by itself (a read is still bounded by its deadline)."""


def _read_to_eof(
    consumer: Consumer,
    topic: str,
    starts: Mapping[int, int],
    deadline: Deadline,
    on_record: Callable[[Message], None] | None = None,
) -> dict[int, int]:
    """Read each partition from its start offset until EOF; return the EOF positions."""
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
    eof: dict[int, int] = {}
    while len(eof) < len(starts):
        if deadline.expired():
            missing = sorted(set(starts) - set(eof))
            raise TimeoutError(
                f"{topic}: partitions {missing} not read to their end in {deadline.seconds:g}s"
            )
        batch = consumer.consume(READ_BATCH, timeout=min(READ_WAIT_S, deadline.remaining()))
        for msg in batch:
            err = msg.error()
            if err is None:
                if on_record is not None:
                    on_record(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                partition, offset = _position(msg)
                eof[partition] = offset
            elif err.code() in _TRANSIENT:
                log.debug("transient consumer error while reading %s: %s", topic, err)
            else:
                raise KafkaException(err)
    return eof


def _last_batch_start(consumer: Consumer, topic: str, partition: int, timeout: float) -> int:
    """An offset at or below the last record: ListOffsets(latest) - 1, never below the start.

    ListOffsets(latest) is the log end on Kafka and the last batch's base offset + 1 on
    Tansu; either way, one batch at most separates the result from the log end.
    """
    low, listed = consumer.get_watermark_offsets(
        TopicPartition(topic, partition), timeout=timeout, cached=False
    )
    return max(int(low), int(listed) - 1, 0)


def log_end_offsets(
    bootstrap: str, topic: str, *, timeout: float = READ_TIMEOUT_S
) -> dict[int, int]:
    """Each partition's high watermark (log end offset), as a fetch response reports it.

    Tansu's ListOffsets(latest) under-reports, so this reads every partition from just below
    its end to EOF and takes the high watermark the fetch responses carried.
    """
    deadline = Deadline(timeout)
    with _closing(_probe_consumer(bootstrap)) as consumer:
        partitions = topic_partitions(bootstrap, topic, timeout=deadline.remaining())
        starts = {
            p: _last_batch_start(consumer, topic, p, deadline.remaining()) for p in partitions
        }
        eof = _read_to_eof(consumer, topic, starts, deadline)
        ends = {}
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            ends[p] = high if high >= 0 else eof[p]
        return ends


def read_all(
    bootstrap: str, topic: str, *, timeout: float = READ_TIMEOUT_S
) -> list[ConsumedRecord]:
    """Every record of `topic`, read from the beginning of each partition to its end."""
    deadline = Deadline(timeout)
    records: list[ConsumedRecord] = []

    def keep(msg: Message) -> None:
        # A consumed message's headers are a list of (str, bytes or None).
        headers = cast(list[tuple[str, bytes | None]], msg.headers() or [])
        records.append(ConsumedRecord(*_position(msg), msg.key(), _value(msg),
                                      dict(headers) or None))

    with _closing(_probe_consumer(bootstrap)) as consumer:
        partitions = topic_partitions(bootstrap, topic, timeout=deadline.remaining())
        _read_to_eof(consumer, topic, dict.fromkeys(partitions, OFFSET_BEGINNING), deadline, keep)
    return records


def committed(
    bootstrap: str, group: str, topic: str, *, timeout: float = COMMITTED_TIMEOUT_S
) -> dict[int, Committed]:
    """The committed offset and metadata of `group` on every partition of `topic`.

    Uses a throwaway consumer's `committed()` (an OffsetFetch; it does not join the group).
    """
    partitions = topic_partitions(bootstrap, topic, timeout=timeout)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    with _closing(consumer):
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
    result = {}
    for tp in found:
        if tp.error is not None:
            raise KafkaException(tp.error)
        result[tp.partition] = Committed(tp.offset if tp.offset >= 0 else None, tp.metadata)
    return result


def committed_offsets(
    bootstrap: str, group: str, topic: str, *, timeout: float = COMMITTED_TIMEOUT_S
) -> dict[int, int | None]:
    """The committed offset of `group` per partition of `topic` (None: nothing committed)."""
    return {p: c.offset for p, c in committed(bootstrap, group, topic, timeout=timeout).items()}
