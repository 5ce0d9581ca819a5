"""``/metrics`` of a real sidecar under real traffic, scraped as Prometheus would."""

from __future__ import annotations

import asyncio

import lowwater
from coordinator.embedded import SidecarProcess
from coordinator.embedded.tansu import pick_free_port
from tests.integration.workload import (
    Budget,
    Ledgerbook,
    logs_on_failure,
    make_handler,
    produce_ids,
    wait_committed_to_end,
    wait_processed,
)
from tests.support.aio import async_test
from tests.support.broker import TopicFactory, unique_name
from tests.support.metrics import Samples, scrape, total

N = 2000


def caught_up(samples: Samples) -> bool:
    """Every partition's lag, from librdkafka's statistics, is reported and 0."""
    lags = samples.get("lowwater_partition_lag_records", [])
    return len(lags) == 4 and all(value == 0 for _, value in lags)


@async_test
async def test_metrics_follow_a_run_from_fetch_to_commit(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    budget = Budget()
    topic, group = new_topic(4), unique_name("g")
    expected = produce_ids(kafka_bootstrap, topic, N)
    book = Ledgerbook()
    port = pick_free_port()
    sidecar = SidecarProcess(
        kafka_bootstrap, group, [topic],
        extra=["--metrics-listen", f"127.0.0.1:{port}", "--commit-interval", "200ms",
               "--kafka", "statistics.interval.ms=500"])
    with logs_on_failure(sidecar):
        sidecar.start()
        try:
            async with lowwater.AsyncWorker(sidecar.target, make_handler(book), max_in_flight=50):
                await wait_processed(book, expected, budget.left())
                end = await asyncio.to_thread(wait_committed_to_end, kafka_bootstrap, group,
                                              topic, budget.left(30))
                samples = await asyncio.to_thread(scrape, port)
                # The sidecar learns of its last commit a little later, and librdkafka's
                # statistics (every 500 ms here) report the lag later still.
                while not (total(samples, "lowwater_partition_committed_offset")
                           == sum(end.values()) and caught_up(samples)):
                    assert budget.left(30) > 0.1, f"metrics never caught up: {samples}"
                    await asyncio.sleep(0.2)
                    samples = await asyncio.to_thread(scrape, port)
                assert total(samples, "lowwater_worker_streams") == 1
            assert sidecar.stop() == 0
        finally:
            sidecar.kill()
    assert total(samples, "lowwater_records_fetched_total") == N
    assert total(samples, "lowwater_deliveries_total") == N
    assert total(samples, "lowwater_settlements_total", outcome="ack") == N
    assert total(samples, "lowwater_redeliveries_total") == 0
    assert total(samples, "lowwater_commits_total", result="ok") > 0
    assert total(samples, "lowwater_commits_total", result="failed") == 0
    assert total(samples, "lowwater_commit_latency_seconds_count") > 0
    assert total(samples, "lowwater_rebalance_partitions_total", event="assigned") == 4
    for partition, offset in end.items():
        labels = {"topic": topic, "partition": str(partition)}
        assert total(samples, "lowwater_partition_committed_offset", **labels) == offset
        assert total(samples, "lowwater_partition_pending_records", **labels) == 0
    assert total(samples, "lowwater_worker_streams_opened_total") == 1
    for handed_off in ("expired", "retried", "dead_lettered"):  # there from the start, at 0
        assert samples[f"lowwater_records_{handed_off}_total"] == [({"subscription": topic}, 0.0)]
