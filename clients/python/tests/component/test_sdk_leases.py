"""Automatic lease extension for slow handlers, and its limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest

from lowwater import AsyncWorker, Message, Worker
from lowwater.testing import FakeSidecar

pytestmark = pytest.mark.timeout(60)
Run = Callable[[Coroutine[Any, Any, Any]], Any]
LEASE = timedelta(milliseconds=300)
WAIT = timedelta(seconds=10)


def test_slow_async_handler_keeps_its_lease(run: Run) -> None:
    async def handler(msg: Message) -> None:
        await asyncio.sleep(1.2)  # four leases long

    async def scenario() -> FakeSidecar:
        async with FakeSidecar(lease=LEASE) as fake:
            ref = fake.publish(topic="t", value=b"slow")
            async with AsyncWorker(fake.target, handler):
                await fake.wait_for_settlements_async(1)
            assert fake.outcome(ref) == "ACK"
            return fake

    fake = run(scenario())
    assert fake.lapses == 0
    assert len(fake.deliveries) == 1  # never redelivered
    assert len(fake.extensions) >= 3


def test_slow_sync_handler_keeps_its_lease() -> None:
    with FakeSidecar(lease=LEASE) as fake:
        fake.publish(topic="t", value=b"slow")
        with Worker(fake.target, lambda msg: __import__("time").sleep(1.0)):
            fake.wait_for_settlements(1, timeout=WAIT)
        assert fake.lapses == 0
        assert [s.outcome for s in fake.settlements] == ["ACK"]
        assert fake.extensions


def test_extension_stops_at_max_lease_extension(run: Run) -> None:
    release = asyncio.Event()

    async def handler(msg: Message) -> None:
        if msg.attempt == 1:
            await release.wait()  # hangs until the lease is gone

    async def scenario() -> FakeSidecar:
        async with FakeSidecar(lease=LEASE) as fake:
            ref = fake.publish(topic="t", value=b"stuck")
            async with AsyncWorker(
                fake.target, handler, max_lease_extension=timedelta(milliseconds=600)
            ):
                # extended for ~0.6 s, then the lease lapses and attempt 2 comes (and acks)
                await fake.wait_until_async(
                    lambda: fake.outcome(ref) == "ACK", timeout=WAIT, what="the redelivery's ACK"
                )
                release.set()  # the first attempt finishes late; the sidecar refuses it
                await fake.wait_until_async(lambda: bool(fake.rejections), timeout=WAIT)
            return fake

    fake = run(scenario())
    assert fake.lapses == 1
    assert [d.attempt for d in fake.deliveries] == [1, 2]
    assert 1 <= len(fake.extensions) <= 4
    assert fake.rejections == [(fake.deliveries[0].msg_id, "ALREADY_SETTLED")]
