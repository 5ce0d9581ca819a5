"""Manual mode: AsyncConsumer and Consumer, settling by hand."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest

from lowwater import AlreadySettled, AsyncConsumer, Consumer, Message
from lowwater.testing import FakeSidecar

pytestmark = pytest.mark.timeout(60)
Run = Callable[[Coroutine[Any, Any, Any]], Any]
WAIT = timedelta(seconds=10)


def test_async_consumer_settles_by_hand(fake: FakeSidecar, run: Run) -> None:
    refs = [fake.publish(topic="t", value=str(i).encode(), key=b"k") for i in range(5)]

    async def scenario() -> None:
        async with AsyncConsumer(fake.target, max_in_flight=5) as consumer:
            taken: list[Message] = []
            async for msg in consumer.messages():
                taken.append(msg)
                if len(taken) == 5:
                    break
            # settle in reverse order, every outcome once
            assert taken[4].already_processed() is True
            assert taken[3].drop("old") is True
            assert taken[2].dead_letter("bad") is True
            assert taken[1].retry(timedelta(seconds=60)) is True
            assert taken[0].ack() is True
            with pytest.raises(AlreadySettled):
                taken[0].ack()
            await fake.wait_for_settlements_async(5)

    run(scenario())
    assert [fake.outcome(r) for r in refs] == [
        "ACK", "RETRY", "DEAD_LETTER", "DROP", "ALREADY_PROCESSED"]
    (retry,) = [s for s in fake.settlements if s.outcome == "RETRY"]
    assert retry.retry_delay == timedelta(seconds=60)


def test_unsettled_messages_hold_flow_control(fake: FakeSidecar, run: Run) -> None:
    for i in range(3):
        fake.publish(topic="t", value=str(i).encode())

    async def scenario() -> None:
        async with AsyncConsumer(fake.target, max_in_flight=2) as consumer:
            first = await consumer.get(WAIT)
            second = await consumer.get(WAIT)
            assert first is not None and second is not None
            assert await consumer.get(timedelta(milliseconds=200)) is None  # two unsettled
            first.ack()
            third = await consumer.get(WAIT)
            assert third is not None and third.value == b"2"
            second.ack()
            third.ack()
            await fake.wait_for_settlements_async(3)

    run(scenario())
    assert fake.streams[0].max_outstanding_seen == 2


def test_sync_consumer_iterates_until_shutdown(fake: FakeSidecar) -> None:
    for i in range(4):
        fake.publish(topic="t", value=str(i).encode())
    seen: list[bytes] = []
    with Consumer(fake.target, max_in_flight=4) as consumer:

        def stop_when_done() -> None:
            fake.wait_for_settlements(4, timeout=WAIT)
            consumer.shutdown()

        stopper = threading.Thread(target=stop_when_done)
        stopper.start()
        for msg in consumer:  # ends when shutdown() is called from the other thread
            seen.append(msg.value)
            msg.ack()
        stopper.join(10)
    assert sorted(seen) == [b"0", b"1", b"2", b"3"]
    assert not fake.open_streams


def test_settling_from_other_threads(fake: FakeSidecar) -> None:
    for i in range(20):
        fake.publish(topic="t", value=str(i).encode())
    with Consumer(fake.target, max_in_flight=20) as consumer:
        msgs = [consumer.get(WAIT) for _ in range(20)]
        threads = [threading.Thread(target=m.ack) for m in msgs if m is not None]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        fake.wait_for_settlements(20, timeout=WAIT)
    assert fake.rejections == []


def test_late_settlement_is_rejected_and_logged(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with FakeSidecar(lease=timedelta(milliseconds=300)) as fake:
            fake.publish(topic="t", value=b"v")
            async with AsyncConsumer(fake.target, max_lease_extension=timedelta(0)) as consumer:
                msg = await consumer.get(WAIT)
                assert msg is not None
                await fake.wait_until_async(lambda: fake.lapses == 1, timeout=WAIT)
                again = await consumer.get(WAIT)  # redelivered: a new msg_id, attempt 2
                assert again is not None and again.attempt == 2
                assert msg.ack() is True  # queued; the sidecar says it is too late
                await fake.wait_until_async(lambda: bool(fake.rejections), timeout=WAIT)
                again.ack()
                await fake.wait_for_settlements_async(1)
            assert fake.rejections == [(msg.msg_id, "ALREADY_SETTLED")]

    with caplog.at_level(logging.WARNING, logger="lowwater"):
        run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.name == "lowwater.settle"]
    assert any("1 ALREADY_SETTLED" in w for w in warnings)


def test_manual_extension(run: Run) -> None:
    async def scenario() -> None:
        async with FakeSidecar(lease=timedelta(milliseconds=300)) as fake:
            fake.publish(topic="t", value=b"v")
            async with AsyncConsumer(fake.target, max_lease_extension=timedelta(0)) as consumer:
                msg = await consumer.get(WAIT)
                assert msg is not None
                assert msg.extend(timedelta(seconds=5)) is True
                await fake.wait_until_async(lambda: fake.extensions != [], timeout=WAIT)
                await asyncio.sleep(0.6)  # two default leases: only the extension keeps it
                assert fake.lapses == 0
                msg.ack()
                await fake.wait_for_settlements_async(1)

    run(scenario())


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Waits until the SDK has logged ``text`` (it reacts to a notice on the event loop)."""
    for _ in range(2000):
        if any(text in r.getMessage() for r in caplog.records):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the SDK never logged {text!r}")


def test_draining_drops_what_was_not_taken(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lowwater.connection")

    async def scenario() -> FakeSidecar:
        async with FakeSidecar() as fake:
            for i in range(3):
                fake.publish(topic="t", value=str(i).encode())
            async with AsyncConsumer(fake.target, max_in_flight=3) as consumer:
                taken = await consumer.get(WAIT)
                assert taken is not None and taken.value == b"0"
                await fake.wait_until_async(lambda: fake.outstanding == 3, timeout=WAIT)
                fake.drain(timedelta(seconds=5))
                await _logged(caplog, "is draining")  # the two not taken are dropped
                assert taken.ack() is True  # the drain waits for this one
                rest = [await consumer.get(WAIT), await consumer.get(WAIT)]
                assert sorted((m.value, m.attempt) for m in rest if m) == [(b"1", 2), (b"2", 2)]
                for m in rest:
                    assert m is not None
                    m.ack()
                await fake.wait_for_settlements_async(3)
            return fake

    fake = run(scenario())
    assert sorted((s.stream_id, s.record.offset) for s in fake.settlements) == [
        ("stream-1", 0), ("stream-2", 1), ("stream-2", 2)]


def test_revoking_drops_what_was_not_taken(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lowwater.connection")

    async def scenario() -> FakeSidecar:
        async with FakeSidecar() as fake:
            for i in range(2):
                fake.publish(topic="t", value=str(i).encode())
            async with AsyncConsumer(fake.target, max_in_flight=2) as consumer:
                taken = await consumer.get(WAIT)
                assert taken is not None
                await fake.wait_until_async(lambda: fake.outstanding == 2, timeout=WAIT)
                fake.revoke("t", 0, timedelta(milliseconds=300))
                await _logged(caplog, "revoking t[0]")  # offset 1, not taken, is dropped
                assert taken.ack() is True  # in time: accepted
                again = await consumer.get(WAIT)  # offset 1, delivered anew after the revoke
                assert again is not None
                assert (again.offset, again.attempt) == (1, 1)
                assert again.msg_id != taken.msg_id + 1
                again.ack()
                await fake.wait_for_settlements_async(2)
            return fake

    fake = run(scenario())
    assert [s.record.offset for s in fake.settlements] == [0, 1]
    assert fake.rejections == []
