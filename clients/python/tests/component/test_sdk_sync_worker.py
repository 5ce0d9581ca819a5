"""Worker (sync handlers on a thread pool) against the fake sidecar."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta

import pytest

from lowwater import AlreadyProcessed, DeadLetter, Drop, Message, Retry, Worker
from lowwater.testing import FakeSidecar

pytestmark = pytest.mark.timeout(60)
WAIT = timedelta(seconds=10)


def test_outcomes_from_sync_handlers(fake: FakeSidecar) -> None:
    values = (b"ok", b"retry", b"dead", b"drop", b"done")
    refs = [fake.publish(topic="t", value=v) for v in values]
    threads: set[str] = set()

    def handler(msg: Message) -> None:
        threads.add(threading.current_thread().name)
        if msg.value == b"retry" and msg.attempt == 1:
            raise Retry(delay=timedelta(milliseconds=10))
        if msg.value == b"dead":
            raise DeadLetter("no")
        if msg.value == b"drop":
            raise Drop("old")
        if msg.value == b"done":
            raise AlreadyProcessed()

    with Worker(fake.target, handler, max_in_flight=4):
        fake.wait_for_settlements(6, timeout=WAIT)
    assert [fake.outcome(r) for r in refs] == [
        "ACK", "ACK", "DEAD_LETTER", "DROP", "ALREADY_PROCESSED"]
    assert all(name.startswith("lowwater-handler") for name in threads)


def test_handlers_run_concurrently_on_threads(fake: FakeSidecar) -> None:
    for _ in range(8):
        fake.publish(topic="t", value=b"v")
    barrier = threading.Barrier(4, timeout=10)

    def handler(msg: Message) -> None:
        barrier.wait()  # only passes if four handlers run at once

    with Worker(fake.target, handler, max_in_flight=4):
        fake.wait_for_settlements(8, timeout=WAIT)
    assert {s.outcome for s in fake.settlements} == {"ACK"}
    assert fake.streams[0].max_outstanding_seen <= 4


def test_run_blocks_until_shutdown_from_another_thread(fake: FakeSidecar) -> None:
    fake.publish(topic="t", value=b"v")
    worker = Worker(fake.target, lambda msg: None)
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        fake.wait_for_settlements(1, timeout=WAIT)
    finally:
        worker.shutdown()
        worker.shutdown()  # idempotent
        runner.join(10)
    assert not runner.is_alive()
    assert not fake.open_streams


def test_shutdown_from_a_handler_does_not_deadlock(fake: FakeSidecar) -> None:
    fake.publish(topic="t", value=b"v")
    worker: Worker

    def handler(msg: Message) -> None:
        worker.shutdown()  # must not wait for this very handler

    worker = Worker(fake.target, handler)
    runner = threading.Thread(target=worker.run)
    runner.start()
    runner.join(10)
    assert not runner.is_alive()
    assert [s.outcome for s in fake.settlements] == ["ACK"]


SCRIPT = """
import sys, time, lowwater

def handler(msg):
    print("started", flush=True)
    time.sleep(0.5)

lowwater.Worker(sys.argv[1], handler, worker_id="sig").run()
print("stopped", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully(fake: FakeSidecar, sig: signal.Signals) -> None:
    ref = fake.publish(topic="t", value=b"v")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), fake.target],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        started = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "stopped" in out
        assert time.monotonic() - started >= 0.3  # it waited for the running handler
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert fake.outcome(ref) == "ACK"
    assert fake.lapses == 0
