"""The at_most_once lane against a real broker: finished on dispatch, never delivered twice."""

from __future__ import annotations

import asyncio

import lowwater
from coordinator.embedded import SidecarProcess
from tests.integration.workload import (
    Ledgerbook,
    produce_ids,
    wait_committed_to_end,
    wait_processed,
)
from tests.support.aio import async_test
from tests.support.broker import TopicFactory, unique_name

N = 500


@async_test
async def test_at_most_once_never_redelivers_and_commits_what_it_sent(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic, group = new_topic(4), unique_name("g")
    expected = produce_ids(kafka_bootstrap, topic, N)
    book = Ledgerbook()
    seen = book.deliveries
    failing = asyncio.Event()

    async def handle(msg: lowwater.Message) -> None:
        seen[msg.value] += 1
        if len(seen) % 10 == 0:  # a tenth of them fail: at most once, nothing comes back
            failing.set()
            raise lowwater.Retry(reason="gateway busy")

    with SidecarProcess(kafka_bootstrap, group, [topic], extra=[
            "--guarantee", "at_most_once", "--default-retry-delay", "0s"]) as sidecar:
        async with lowwater.AsyncWorker(sidecar.target, handle, max_in_flight=50):
            await wait_processed(book, expected)
            end = await asyncio.to_thread(wait_committed_to_end, kafka_bootstrap, group, topic,
                                          timeout=60)
        assert sidecar.stop() == 0, sidecar.log()
    assert failing.is_set() and sum(end.values()) == N
    assert set(seen) == expected
    assert set(seen.values()) == {1}  # the failed ones too: never redelivered
