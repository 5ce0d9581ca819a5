"""The fake follows the proto contract when driven by a raw gRPC client, not the SDK."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

import lowwater
from lowwater.testing import FakeSidecar
from lowwater.v1 import coordinator_pb2 as pb
from lowwater.v1 import coordinator_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)


class _Stream:
    """A hand-driven Stream call."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, first: pb.StreamRequest) -> None:
        self._requests: queue.SimpleQueue[pb.StreamRequest | None] = queue.SimpleQueue()
        self._requests.put(first)
        self.call = stub.Stream(self._iterate())
        self.responses = iter(self.call)

    def _iterate(self) -> Iterator[pb.StreamRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def send(self, request: pb.StreamRequest) -> None:
        self._requests.put(request)

    def close(self) -> None:
        self._requests.put(None)

    def next(self) -> pb.StreamResponse:
        response: pb.StreamResponse = next(self.responses)
        return response


def _open(max_messages: int, max_bytes: int = 0) -> pb.StreamRequest:
    flow = pb.FlowControl(max_in_flight_messages=max_messages, max_in_flight_bytes=max_bytes)
    return pb.StreamRequest(open=pb.OpenStream(worker_id="raw", flow_control=flow))


@pytest.fixture
def stub(fake: FakeSidecar) -> Iterator[pb_grpc.CoordinatorStub]:
    with grpc.insecure_channel(fake.target) as channel:
        yield pb_grpc.CoordinatorStub(channel)


def test_stream_protocol(fake: FakeSidecar, stub: pb_grpc.CoordinatorStub) -> None:
    for i in range(3):
        fake.publish(topic="t", value=b"v", key=b"k%d" % i, headers=[("h", b"1"), ("h", b"2")])
    stream = _Stream(stub, _open(2))
    try:
        opened = stream.next()
        assert opened.HasField("opened") and opened.opened.stream_id
        assert opened.opened.lease.ToTimedelta() == timedelta(seconds=30)
        batch = stream.next().deliveries
        assert len(batch) == 2  # flow control
        first = batch[0]
        assert (first.topic, first.offset, first.key, first.attempt) == ("t", 0, b"k0", 1)
        assert [(h.key, h.value) for h in first.headers] == [("h", b"1"), ("h", b"2")]
        stream.send(
            pb.StreamRequest(
                settlements=[
                    pb.Settlement(msg_id=first.msg_id, outcome=pb.OUTCOME_ACK),
                    pb.Settlement(msg_id=first.msg_id, outcome=pb.OUTCOME_ACK),
                    pb.Settlement(msg_id=424242, outcome=pb.OUTCOME_ACK),
                    pb.Settlement(msg_id=batch[1].msg_id, outcome=pb.OUTCOME_UNSPECIFIED),
                ],
                ack_msg_ids=[first.msg_id, 434343],  # applied after `settlements`
            )
        )
        response = stream.next()
        assert [(r.msg_id, r.status) for r in response.rejected] == [
            (first.msg_id, pb.SETTLE_STATUS_ALREADY_SETTLED),
            (424242, pb.SETTLE_STATUS_UNKNOWN),
            (batch[1].msg_id, pb.SETTLE_STATUS_INVALID),
            (first.msg_id, pb.SETTLE_STATUS_ALREADY_SETTLED),
            (434343, pb.SETTLE_STATUS_UNKNOWN),
        ]
        third = response.deliveries or stream.next().deliveries
        assert [d.offset for d in third] == [2]
    finally:
        stream.close()
    fake.wait_until(lambda: not fake.open_streams, timeout=timedelta(seconds=5))
    # the unsettled deliveries were released when the stream ended
    assert fake.outstanding == 0 and fake.pending == 2


def test_first_request_must_carry_only_open(fake: FakeSidecar, stub: pb_grpc.CoordinatorStub) -> None:
    bad = _open(1)
    bad.settlements.add(msg_id=1, outcome=pb.OUTCOME_ACK)
    acks = _open(1)
    acks.ack_msg_ids.append(1)
    for first in (pb.StreamRequest(settlements=[pb.Settlement(msg_id=1)]), bad, acks, _open(0)):
        stream = _Stream(stub, first)
        with pytest.raises(grpc.RpcError) as info:
            stream.next()
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        stream.close()


def test_open_twice_is_a_protocol_error(fake: FakeSidecar, stub: pb_grpc.CoordinatorStub) -> None:
    stream = _Stream(stub, _open(1))
    assert stream.next().HasField("opened")
    stream.send(_open(1))
    with pytest.raises(grpc.RpcError) as info:
        stream.next()
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    stream.close()


def test_pull_and_acknowledge(fake: FakeSidecar, stub: pb_grpc.CoordinatorStub) -> None:
    assert stub.Pull(pb.PullRequest(max_messages=5)).deliveries == []  # no wait, nothing there
    ref = fake.publish(topic="t", value=b"a")
    fake.publish(topic="t", value=b"b")
    pulled = stub.Pull(pb.PullRequest(max_messages=1, worker_id="cli")).deliveries
    assert [d.offset for d in pulled] == [0]
    results = stub.Acknowledge(
        pb.AcknowledgeRequest(
            settlements=[
                pb.Settlement(msg_id=pulled[0].msg_id, outcome=pb.OUTCOME_ACK),
                pb.Settlement(msg_id=pulled[0].msg_id, outcome=pb.OUTCOME_ACK),
            ]
        )
    ).results
    assert [r.status for r in results] == [pb.SETTLE_STATUS_OK, pb.SETTLE_STATUS_ALREADY_SETTLED]
    assert fake.outcome(ref) == "ACK"
    with pytest.raises(grpc.RpcError) as info:
        stub.Pull(pb.PullRequest(max_messages=0))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_pull_waits_for_a_record(fake: FakeSidecar, stub: pb_grpc.CoordinatorStub) -> None:
    wait = Duration()
    wait.FromTimedelta(timedelta(seconds=5))
    timer = threading.Timer(0.2, lambda: fake.publish(topic="t", value=b"late"))
    timer.start()
    try:
        pulled = stub.Pull(pb.PullRequest(max_messages=10, wait=wait)).deliveries
    finally:
        timer.cancel()
    assert [d.value for d in pulled] == [b"late"]


def test_stream_leases_cannot_be_acknowledged(
    fake: FakeSidecar, stub: pb_grpc.CoordinatorStub
) -> None:
    fake.publish(topic="t", value=b"v")
    stream = _Stream(stub, _open(1))
    try:
        stream.next()
        (delivery,) = stream.next().deliveries
        results = stub.Acknowledge(
            pb.AcknowledgeRequest(
                settlements=[pb.Settlement(msg_id=delivery.msg_id, outcome=pb.OUTCOME_ACK)]
            )
        ).results
        assert [r.status for r in results] == [pb.SETTLE_STATUS_NOT_OWNER]
    finally:
        stream.close()


def test_restart_keeps_records_and_port() -> None:
    fake = FakeSidecar().start()
    try:
        ref = fake.publish(topic="t", value=b"v")
        port = fake.port
        fake.stop()
        fake.start()
        assert fake.port == port
        with grpc.insecure_channel(fake.target) as channel:
            pulled = pb_grpc.CoordinatorStub(channel).Pull(pb.PullRequest(max_messages=1))
        assert [(d.topic, d.offset) for d in pulled.deliveries] == [(ref.topic, ref.offset)]
    finally:
        fake.stop()


def test_a_fake_with_a_token_refuses_workers_without_it(tmp_path: Path) -> None:
    handled: list[bytes | None] = []
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with FakeSidecar(token="s3cret") as fake:
        with grpc.insecure_channel(fake.target) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            for metadata in (None, [("authorization", "Bearer wrong")]):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Pull(pb.PullRequest(max_messages=1), metadata=metadata, timeout=5)
                assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(lowwater.SidecarRejected) as rejected:
            lowwater.Worker(fake.target, lambda msg: None).run()
        assert rejected.value.code == "UNAUTHENTICATED"
        ref = fake.publish(topic="t", value=b"v")
        with lowwater.Worker(fake.target, lambda msg: handled.append(msg.value),
                             token_file=token_file):
            fake.wait_for_settlements(1)
        assert fake.outcome(ref) == "ACK"
    assert handled == [b"v"]
    with pytest.raises(ValueError, match="token must not be empty"):
        FakeSidecar(token=" ")
