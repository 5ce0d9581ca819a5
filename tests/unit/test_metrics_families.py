"""The Prometheus exposition of one engine snapshot (pure: no loop, no server)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from coordinator.core.model import Outcome, SettleStatus, TopicPartition
from coordinator.core.records import HandoffKind
from coordinator.runtime.engine import HolderView, PartitionView, StatusView
from coordinator.runtime.metrics import Snapshot, families
from coordinator.runtime.pendingstore import StoreState

TP = TopicPartition("sms.verification", 3)
COUNTERS = dict.fromkeys(
    ("fetched", "ignored", "delivered", "redelivered", "settled", "rejected", "lapsed",
     "dropped_dead_letters", "streams_opened", "streams_closed", "assigned", "revoked", "lost",
     "commits_ok", "commits_failed", "skipped", "sought"), 0)
HANDED_OFF = {(HandoffKind.EXPIRED, "sms.verification"): 7,
              (HandoffKind.EXPIRED, "^push\\..*"): 0,
              (HandoffKind.DEAD_LETTER, "sms.verification"): 2,
              (HandoffKind.DEAD_LETTER, "^push\\..*"): 5,
              (HandoffKind.RETRY, "sms.verification"): 11,
              (HandoffKind.RETRY, "^push\\..*"): 0}


class Static(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snap)


def scrape(snap: Snapshot) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The exposition text of ``snap``, parsed back: sample name -> (labels, value)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Static(snap))
    text = generate_latest(registry).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def snapshot(store: tuple[StoreState, int, int] | None = None) -> Snapshot:
    status = StatusView(
        [PartitionView(TP, 7, 1180, 1182, 1182, 40, 12, 3.5, True)],
        [HolderView("stream-1", "w", 12, 100, 1200, 0, [55, 56])], buffered=28)
    counters = COUNTERS | {"fetched": 1220, "delivered": 1200, "redelivered": 9,
                           "commits_ok": 31, "commits_failed": 1, "assigned": 4, "lapsed": 2}
    return Snapshot(status, counters, {Outcome.ACK: 1170, Outcome.RETRY: 6, None: 1},
                    {SettleStatus.STALE: 3}, {TP: 250}, 1, store, HANDED_OFF)


def test_partition_gauges_carry_topic_and_partition_only() -> None:
    samples = scrape(snapshot())
    labels = {"topic": "sms.verification", "partition": "3"}
    assert samples["lowwater_partition_committed_offset"] == [(labels, 1180.0)]
    assert samples["lowwater_partition_pending_records"] == [(labels, 40.0)]
    assert samples["lowwater_partition_in_flight_records"] == [(labels, 12.0)]
    assert samples["lowwater_partition_oldest_pending_age_seconds"] == [(labels, 3.5)]
    assert samples["lowwater_partition_paused"] == [(labels, 1.0)]
    assert samples["lowwater_partition_lag_records"] == [(labels, 250.0)]
    assert samples["lowwater_buffered_records"] == [({}, 28.0)]
    assert samples["lowwater_worker_streams"] == [({}, 1.0)]
    allowed = {"topic", "partition", "subscription", "outcome", "status", "result", "event"}
    assert all(set(labels) <= allowed for values in samples.values() for labels, _ in values)


def test_counters_by_outcome_status_result_and_event() -> None:
    samples = scrape(snapshot())
    assert samples["lowwater_deliveries_total"] == [({}, 1200.0)]
    assert samples["lowwater_redeliveries_total"] == [({}, 9.0)]
    assert samples["lowwater_lease_expiries_total"] == [({}, 2.0)]
    assert sorted(samples["lowwater_settlements_total"], key=str) == sorted(
        [({"outcome": "ack"}, 1170.0), ({"outcome": "retry"}, 6.0),
         ({"outcome": "unspecified"}, 1.0)], key=str)
    assert samples["lowwater_settlements_rejected_total"] == [({"status": "stale"}, 3.0)]
    assert sorted(samples["lowwater_commits_total"], key=str) == [
        ({"result": "failed"}, 1.0), ({"result": "ok"}, 31.0)]
    assert ({"event": "assigned"}, 4.0) in samples["lowwater_rebalance_partitions_total"]
    assert "lowwater_pending_store_up" not in samples  # no Redis configured


def test_expired_retried_and_dead_lettered_records_are_counted_per_subscription() -> None:
    samples = scrape(snapshot())
    by_subscription = {
        name: sorted(samples[f"lowwater_records_{name}_total"], key=str)
        for name in ("expired", "retried", "dead_lettered")}
    assert by_subscription == {
        "expired": [({"subscription": "^push\\..*"}, 0.0),
                    ({"subscription": "sms.verification"}, 7.0)],
        "retried": [({"subscription": "^push\\..*"}, 0.0),
                    ({"subscription": "sms.verification"}, 11.0)],
        "dead_lettered": [({"subscription": "^push\\..*"}, 5.0),
                          ({"subscription": "sms.verification"}, 2.0)],
    }


def test_the_pending_store_shows_up_when_configured() -> None:
    samples = scrape(snapshot((StoreState.DEGRADED, 10, 2)))
    assert samples["lowwater_pending_store_up"] == [({}, 0.0)]
    assert sorted(samples["lowwater_pending_store_writes_total"], key=str) == [
        ({"result": "failed"}, 2.0), ({"result": "ok"}, 10.0)]
    assert scrape(snapshot((StoreState.OK, 1, 0)))["lowwater_pending_store_up"] == [({}, 1.0)]
