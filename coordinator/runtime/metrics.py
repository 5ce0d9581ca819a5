"""Prometheus metrics: ``/metrics`` on ``metrics_listen``, served by prometheus-client.

The engine keeps plain integer counters on its event loop; nothing on the record path touches
a lock. A scrape runs on the HTTP server's thread and asks the loop for one snapshot of the
engine (status and counters) with ``run_coroutine_threadsafe``, so the loop stays the only
owner of that state. The commit latency is a prometheus-client Histogram, observed on the loop
once per commit.

Names are prefixed ``lowwater_`` and in base units. Labels carry topics, partitions,
subscriptions, outcomes and statuses, never offsets, keys or msg_ids. A ``subscription`` is
named by its ``topic`` setting as written (a topic, or a ``^regex``): a pattern's topics share
its series, so their number is bounded by the configuration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.config import tcp_address
from coordinator.core.model import Outcome, SettleStatus, TopicPartition
from coordinator.core.records import HandoffKind
from coordinator.runtime.engine import Engine, StatusView
from coordinator.runtime.pendingstore import PendingStore, StoreState

log = logging.getLogger("coordinator.metrics")

SNAPSHOT_TIMEOUT_S = 2.0
"""Longest a scrape waits for the event loop's snapshot; a busy loop fails the scrape."""
COMMIT_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                          5.0, 10.0)

_COUNTERS = (
    ("records_fetched", "fetched", "Records taken from Kafka into the pending sets."),
    ("deliveries", "delivered", "Deliveries (leases) sent to workers, redeliveries included."),
    ("redeliveries", "redelivered", "Deliveries of a record that had been delivered before."),
    ("lease_expiries", "lapsed", "Leases that ran out before the worker settled them."),
    ("records_skipped", "skipped", "Records an operator skipped (Admin/SkipRecord)."),
    ("partition_seeks", "sought",
     "Partitions an operator moved to another offset (Admin/SeekPartition)."),
    ("worker_streams_opened", "streams_opened", "Worker streams opened."),
    ("worker_streams_closed", "streams_closed", "Worker streams closed, however they ended."),
)
_HANDOFFS = (
    (HandoffKind.EXPIRED, "records_expired",
     "Records past their TTL, never delivered again, by subscription."),
    (HandoffKind.RETRY, "records_retried", "Records handed off to a retry topic, by subscription."),
    (HandoffKind.DEAD_LETTER, "records_dead_lettered",
     "Records given up on (dead-letter path), by subscription."),
)
_OUTCOMES = {None: "unspecified", Outcome.ACK: "ack", Outcome.RETRY: "retry",
             Outcome.DEAD_LETTER: "dead_letter", Outcome.DROP: "drop",
             Outcome.ALREADY_PROCESSED: "already_processed"}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape shows, taken on the event loop."""

    status: StatusView
    counters: dict[str, int]
    settled_by: dict[Outcome | None, int]
    rejected_by: dict[SettleStatus, int]
    lag: dict[TopicPartition, int]
    streams: int
    store: tuple[StoreState, int, int] | None
    """(state, writes, failed writes) of the pending-set writer, if there is one."""
    handed_off: dict[tuple[HandoffKind, str], int] = field(default_factory=dict)
    """Records expired, retried and dead-lettered per (kind, subscription)."""


class EngineCollector(Collector):
    """A prometheus-client collector that reads the engine through its event loop."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop,
                 store: PendingStore | None = None) -> None:
        self._engine = engine
        self._loop = loop
        self._store = store

    def _take(self) -> Snapshot:  # on the loop
        engine, store = self._engine, self._store
        return Snapshot(
            engine.status(), dict(engine.counters), dict(engine.settled_by),
            dict(engine.rejected_by), dict(engine.lag), engine.stream_count,
            None if store is None else (store.state, store.writes, store.failed_writes),
            dict(engine.handed_off))

    async def _snapshot(self) -> Snapshot:
        return self._take()

    def collect(self) -> Iterator[Metric]:  # on the HTTP server's thread
        future = asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop)
        try:
            snap = future.result(SNAPSHOT_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            log.warning("metrics: the event loop gave no snapshot within %.0f s",
                        SNAPSHOT_TIMEOUT_S)
            return
        yield from families(snap)


def families(snap: Snapshot) -> Iterable[Metric]:
    """The metric families of one snapshot. Pure."""
    labels = ["topic", "partition"]
    per_partition = {
        "committed": GaugeMetricFamily(
            "lowwater_partition_committed_offset",
            "The offset last committed for the group (-1: none known).", labels=labels),
        "pending": GaugeMetricFamily(
            "lowwater_partition_pending_records",
            "Records fetched and not finished: buffered, leased or waiting.", labels=labels),
        "in_flight": GaugeMetricFamily(
            "lowwater_partition_in_flight_records", "Records leased to a worker now.",
            labels=labels),
        "age": GaugeMetricFamily(
            "lowwater_partition_oldest_pending_age_seconds",
            "Age of the oldest pending record, from when it was fetched.", labels=labels),
        "paused": GaugeMetricFamily(
            "lowwater_partition_paused",
            "1 while fetching from the partition is paused (pending cap reached).",
            labels=labels),
        "lag": GaugeMetricFamily(
            "lowwater_partition_lag_records",
            "Consumer lag from librdkafka's statistics (log end minus position; -1: unknown)."
            " Tansu under-reports the log end.", labels=labels),
    }
    for p in snap.status.partitions:
        values = [p.tp.topic, str(p.tp.partition)]
        per_partition["committed"].add_metric(values, -1 if p.committed is None else p.committed)
        per_partition["pending"].add_metric(values, p.pending)
        per_partition["in_flight"].add_metric(values, p.in_flight)
        per_partition["age"].add_metric(values, p.oldest_age if p.pending else 0.0)
        per_partition["paused"].add_metric(values, 1 if p.paused else 0)
        lag = snap.lag.get(p.tp)
        if lag is not None:
            per_partition["lag"].add_metric(values, lag)
    yield from per_partition.values()
    yield GaugeMetricFamily("lowwater_buffered_records",
                            "Records fetched and not yet leased to any worker.",
                            value=snap.status.buffered)
    yield GaugeMetricFamily("lowwater_worker_streams", "Worker streams open now.",
                            value=snap.streams)
    for name, key, text in _COUNTERS:
        yield CounterMetricFamily(f"lowwater_{name}", text, value=snap.counters[key])
    for kind, name, text in _HANDOFFS:
        handed = CounterMetricFamily(f"lowwater_{name}", text, labels=["subscription"])
        for (counted, subscription), count in sorted(snap.handed_off.items(),
                                                     key=lambda kv: kv[0][1]):
            if counted is kind:
                handed.add_metric([subscription], count)
        yield handed
    settled = CounterMetricFamily("lowwater_settlements", "Settlements accepted, by outcome.",
                                  labels=["outcome"])
    for outcome, count in sorted(snap.settled_by.items(), key=lambda kv: _OUTCOMES[kv[0]]):
        settled.add_metric([_OUTCOMES[outcome]], count)
    yield settled
    rejected = CounterMetricFamily(
        "lowwater_settlements_rejected",
        "Settlements not accepted, by answer (stale: an older generation; unknown: an id never"
        " issued or long gone).", labels=["status"])
    for status, count in sorted(snap.rejected_by.items(), key=lambda kv: kv[0].name):
        rejected.add_metric([status.name.lower()], count)
    yield rejected
    commits = CounterMetricFamily("lowwater_commits", "Partition commits, by result.",
                                  labels=["result"])
    commits.add_metric(["ok"], snap.counters["commits_ok"])
    commits.add_metric(["failed"], snap.counters["commits_failed"])
    yield commits
    rebalances = CounterMetricFamily(
        "lowwater_rebalance_partitions",
        "Partitions assigned, revoked or lost in rebalances.", labels=["event"])
    for event in ("assigned", "revoked", "lost"):
        rebalances.add_metric([event], snap.counters[event])
    yield rebalances
    if snap.store is not None:
        state, writes, failed = snap.store
        yield GaugeMetricFamily(
            "lowwater_pending_store_up",
            "1 while the pending sets are written to Redis, 0 while degraded.",
            value=0 if state is StoreState.DEGRADED else 1)
        store_writes = CounterMetricFamily("lowwater_pending_store_writes",
                                           "Pending-set writes to Redis, by result.",
                                           labels=["result"])
        store_writes.add_metric(["ok"], writes)
        store_writes.add_metric(["failed"], failed)
        yield store_writes


class Metrics:
    """The registry, the HTTP server and the one metric observed directly (commit latency)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.commit_latency = Histogram(
            "lowwater_commit_latency_seconds",
            "From an asynchronous commit's request to the broker's answer.",
            buckets=COMMIT_LATENCY_BUCKETS, registry=self.registry)
        self.auth_refused = Counter(
            "lowwater_auth_refused",
            "Calls refused for a missing or invalid bearer token, by API (worker or admin)"
            " and reason (missing or invalid).",
            labelnames=["api", "reason"], registry=self.registry)
        for api in ("worker", "admin"):  # present at 0 from the start, for rate() and alerts
            for reason in ("missing", "invalid"):
                self.auth_refused.labels(api, reason)
        self._server: Any = None
        self._thread: Any = None
        self.port: int | None = None

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)

    def serve(self, listen: str) -> int:
        """Starts ``/metrics`` on ``HOST:PORT`` (port 0: a free one); returns the port."""
        host, _, port = tcp_address(listen).rpartition(":")
        host = host.strip("[]")
        self._server, self._thread = start_http_server(int(port), addr=host,
                                                       registry=self.registry)
        self.port = int(self._server.server_port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

