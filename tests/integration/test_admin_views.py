"""Admin/ListPending, Admin/ListWorkers, ``lowwater status`` and ``lowwater top`` against a
real sidecar holding records."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from grpc_status import rpc_status
from rich.console import Console

import lowwater
from coordinator import cli
from coordinator import status as status_command
from coordinator.embedded import SidecarProcess
from lowwater.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.workload import (
    Budget,
    Ledgerbook,
    logs_on_failure,
    make_handler,
    produce_ids,
    wait_processed,
)
from tests.support.aio import async_test
from tests.support.broker import TopicFactory, unique_name

HELD = 5


def admin(target: str) -> tuple[grpc.Channel, admin_pb2_grpc.AdminStub]:
    channel = grpc.insecure_channel(target)
    return channel, admin_pb2_grpc.AdminStub(channel)


@async_test
async def test_pending_pages_workers_status_and_top_of_a_sidecar_holding_records(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    budget = Budget()
    topic = new_topic(1)
    produce_ids(kafka_bootstrap, topic, 12)
    release = asyncio.Event()
    held: list[int] = []

    async def hold(msg: lowwater.Message) -> None:
        held.append(msg.offset)
        await release.wait()

    sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [topic])
    with logs_on_failure(sidecar):
        sidecar.start()
        try:
            async with lowwater.AsyncWorker(sidecar.target, hold, max_in_flight=HELD,
                                            worker_id="sms-worker-7"):
                deadline = asyncio.get_running_loop().time() + budget.left(60)
                while len(held) < HELD:
                    assert asyncio.get_running_loop().time() < deadline, held
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(check_views, sidecar.target, topic)
                release.set()
        finally:
            sidecar.stop()
            sidecar.kill()


def check_views(target: str, topic: str) -> None:
    channel, stub = admin(target)
    with channel:
        pages, token = [], ""
        while True:
            page = stub.ListPending(admin_pb2.ListPendingRequest(
                topic=topic, partition=0, page_size=5, page_token=token), timeout=5)
            pages.append(page)
            token = page.next_page_token
            if not token:
                break
        records = [r for page in pages for r in page.records]
        assert [r.offset for r in records] == list(range(12)) and len(pages) == 3
        assert {page.total for page in pages} == {12}
        leased = [r for r in records if r.state == "leased"]
        assert [r.offset for r in leased] == list(range(HELD))
        assert all(r.worker_id == "sms-worker-7" and r.msg_id and r.attempts == 1
                   and r.HasField("lease_left") for r in leased)
        assert all(r.state == "ready" and not r.msg_id for r in records[HELD:])

        with pytest.raises(grpc.RpcError) as info:
            stub.ListPending(admin_pb2.ListPendingRequest(topic=topic, partition=9), timeout=5)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        detail = rpc_status.from_call(info.value)
        assert detail is not None and "not assigned" in detail.message
        with pytest.raises(grpc.RpcError) as info:
            stub.ListPending(admin_pb2.ListPendingRequest(
                topic=topic, partition=0, page_token="next please"), timeout=5)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT

        workers = stub.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=5).workers
        assert [(w.worker_id, w.in_flight_count) for w in workers] == [("sms-worker-7", HELD)]
        status = stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        assert [(e.event, [p.partition for p in e.partitions]) for e in status.rebalances] == [
            ("assigned", [0])]

    out = subprocess.run([sys.executable, "-m", "coordinator", "status", "--target", target],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert f"{topic}[0]" in out.stdout and "sms-worker-7" in out.stdout
    assert "assigned" in out.stdout

    console = Console(record=True, width=160, force_terminal=False)
    args = cli.build_parser().parse_args(
        ["top", "--target", target, "--interval", "0.2", "--iterations", "2"])
    assert status_command.run_top(args, console) == 0
    frame = console.export_text()
    assert "commits/s" in frame and f"{topic}[0]" in frame and "sms-worker-7" in frame


def test_status_of_a_sidecar_that_is_not_there_exits_1() -> None:
    out = subprocess.run([sys.executable, "-m", "coordinator", "status", "--target",
                          "127.0.0.1:1"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 1
    assert "cannot get the status of the sidecar at 127.0.0.1:1: UNAVAILABLE" in out.stderr


@async_test
async def test_an_operator_pauses_and_resumes_fetching(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    budget = Budget()
    topic = new_topic(1)
    first = produce_ids(kafka_bootstrap, topic, 10, prefix="before")
    book = Ledgerbook()
    sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [topic],
                             extra=["--admin-insecure"])  # mutating calls without Admin auth
    with logs_on_failure(sidecar):
        sidecar.start()
        try:
            async with lowwater.AsyncWorker(sidecar.target, make_handler(book), max_in_flight=5):
                await wait_processed(book, first, budget.left(60))
                ref = admin_pb2.PartitionRef(topic=topic, partition=0)
                elsewhere = admin_pb2.PartitionRef(topic=topic, partition=7)
                channel, stub = admin(sidecar.target)
                with channel:
                    paused = await asyncio.to_thread(stub.PausePartitions,
                                                     admin_pb2.PausePartitionsRequest(
                                                         partitions=[ref, elsewhere]), timeout=5)
                    assert [r.partition for r in paused.not_assigned] == [7]
                    status = await asyncio.to_thread(sidecar.status)
                    assert status.partitions[0].paused
                    later = produce_ids(kafka_bootstrap, topic, 10, prefix="after")
                    # Nothing new is fetched while paused; librdkafka would fetch these
                    # within its fetch wait (500 ms) otherwise: 3 s is well past it.
                    await asyncio.sleep(3)
                    assert not later & book.processed
                    status = await asyncio.to_thread(sidecar.status)
                    assert status.partitions[0].pending_count == 0
                    await asyncio.to_thread(stub.ResumePartitions,
                                            admin_pb2.ResumePartitionsRequest(partitions=[ref]),
                                            timeout=5)
                    await wait_processed(book, first | later, budget.left(60))
                    status = await asyncio.to_thread(sidecar.status)
                    assert not status.partitions[0].paused
                    with pytest.raises(grpc.RpcError) as info:
                        await asyncio.to_thread(stub.PausePartitions,
                                                admin_pb2.PausePartitionsRequest(), timeout=5)
                    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert sidecar.stop() == 0
        finally:
            sidecar.kill()


@async_test
async def test_an_operator_skips_a_poison_record_only_when_allowed(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """A record whose handler never returns holds its partition's commit; skipping it lets
    the commit pass. Without admin_operator_actions the call is refused."""
    budget = Budget()
    topic = new_topic(1)
    produce_ids(kafka_bootstrap, topic, 5)
    stuck = asyncio.Event()

    async def poison_at_2(msg: lowwater.Message) -> None:
        if msg.offset == 2:
            stuck.set()
            await asyncio.Event().wait()  # the handler hangs on this record

    for allowed in (False, True):
        # --admin-insecure lets the mutating call reach the servicer (no Admin auth here).
        extra = ["--admin-insecure", *(["--admin-operator-actions"] if allowed else [])]
        sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [topic], extra=extra)
        stuck.clear()
        with logs_on_failure(sidecar):
            sidecar.start()
            try:
                async with lowwater.AsyncWorker(sidecar.target, poison_at_2, max_in_flight=5,
                                                shutdown_timeout=timedelta(seconds=1)):
                    await asyncio.wait_for(stuck.wait(), budget.left(60))
                    channel, stub = admin(sidecar.target)
                    with channel:
                        skip = admin_pb2.SkipRecordRequest(topic=topic, partition=0, offset=2,
                                                           reason="malformed phone number")
                        if not allowed:
                            with pytest.raises(grpc.RpcError) as info:
                                await asyncio.to_thread(stub.SkipRecord, skip, timeout=5)
                            assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
                            assert "admin_operator_actions" in (info.value.details() or "")
                            seek = admin_pb2.SeekPartitionRequest(topic=topic, partition=0)
                            with pytest.raises(grpc.RpcError) as info:
                                await asyncio.to_thread(stub.SeekPartition, seek, timeout=5)
                            assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
                            continue
                        await asyncio.to_thread(stub.SkipRecord, skip, timeout=5)
                        with pytest.raises(grpc.RpcError) as info:  # it is not pending now
                            await asyncio.to_thread(stub.SkipRecord, skip, timeout=5)
                        assert info.value.code() is grpc.StatusCode.NOT_FOUND
                    deadline = asyncio.get_running_loop().time() + budget.left(30)
                    while (await asyncio.to_thread(sidecar.status)).partitions[0] \
                            .committed_offset != 5:
                        assert asyncio.get_running_loop().time() < deadline
                        await asyncio.sleep(0.1)
                    assert "operator skipped" in sidecar.log() and "malformed phone" in \
                        sidecar.log()
            finally:
                sidecar.stop()
                sidecar.kill()


@async_test
async def test_an_operator_seeks_a_partition_forward_past_a_stuck_record_and_back(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """Seeking forward drops the stuck record and lets the commit pass it; seeking back
    delivers everything again. The partition's commit follows both."""
    budget = Budget()
    topic = new_topic(1)
    produce_ids(kafka_bootstrap, topic, 10)
    seen: dict[int, int] = {}
    stuck = asyncio.Event()

    async def hang_once_at_2(msg: lowwater.Message) -> None:
        seen[msg.offset] = seen.get(msg.offset, 0) + 1
        if msg.offset == 2 and seen[2] == 1:
            stuck.set()
            await asyncio.Event().wait()

    sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [topic],
                             extra=["--admin-insecure", "--admin-operator-actions"])
    loop = asyncio.get_running_loop()

    async def wait_for(done: Callable[[admin_pb2.PartitionStatus], bool], what: str) -> None:
        deadline = loop.time() + budget.left(60)
        while not done((await asyncio.to_thread(sidecar.status)).partitions[0]):
            assert loop.time() < deadline, f"timed out waiting for {what}; seen {seen}"
            await asyncio.sleep(0.1)

    with logs_on_failure(sidecar):
        sidecar.start()
        try:
            async with lowwater.AsyncWorker(sidecar.target, hang_once_at_2, max_in_flight=5,
                                            shutdown_timeout=timedelta(seconds=1)):
                await asyncio.wait_for(stuck.wait(), budget.left(60))
                await wait_for(lambda p: p.pending_count == 1 and p.committed_offset == 2,
                               "all but the stuck record to be finished")
                channel, stub = admin(sidecar.target)
                with channel:
                    def seek(offset: int, partition: int = 0) -> admin_pb2.SeekPartitionResponse:
                        request = admin_pb2.SeekPartitionRequest(
                            topic=topic, partition=partition, offset=offset, reason="incident 42")
                        response: admin_pb2.SeekPartitionResponse = stub.SeekPartition(
                            request, timeout=15)
                        return response

                    forward = await asyncio.to_thread(seek, 8)
                    assert (forward.previous_commit_offset, forward.dropped_count) == (2, 1)
                    await wait_for(lambda p: p.committed_offset == 10,
                                   "the commit to pass the skipped range")
                    assert seen[8] == seen[9] == 2 and seen[2] == 1  # 8, 9 fetched again
                    back = await asyncio.to_thread(seek, 0)
                    assert (back.previous_commit_offset, back.dropped_count) == (10, 0)
                    deadline = loop.time() + budget.left(60)
                    while min(seen.get(o, 0) for o in range(10)) < 2:
                        assert loop.time() < deadline, f"not every record came back: {seen}"
                        await asyncio.sleep(0.1)
                    await wait_for(lambda p: p.committed_offset == 10 and not p.pending_count,
                                   "the replay to be committed")
                    for offset, partition, code in ((-1, 0, grpc.StatusCode.INVALID_ARGUMENT),
                                                    (0, 3, grpc.StatusCode.NOT_FOUND)):
                        with pytest.raises(grpc.RpcError) as info:
                            await asyncio.to_thread(seek, offset, partition)
                        assert info.value.code() is code
            log = sidecar.log()
            assert "operator moved" in log and "incident 42" in log
            assert sidecar.stop() == 0
        finally:
            sidecar.kill()
