"""The fake sidecar's protocol behaviour behind one lock: streams, Pull, timers. No server."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import cast

from google.protobuf.duration_pb2 import Duration

from lowwater.testing._ledger import Holder, Lease, Ledger, Status
from lowwater.v1 import coordinator_pb2 as pb

PUMP_INTERVAL = 0.01
"""Seconds between two looks at lease deadlines, retry delays and revokes while any is due."""

PUMP_IDLE_INTERVAL = 0.1
"""Seconds between two looks when nothing is leased, delayed or being revoked."""

PULL_HOLDER_LIMIT = 100_000
"""Deliveries a Pull caller may hold at once."""

Outbox = queue.SimpleQueue
"""Responses for one stream: a StreamResponse, None to end the stream, or a str to abort it
with INVALID_ARGUMENT (a protocol violation by the worker)."""

OutboxItem = pb.StreamResponse | str | None


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def seconds_of(value: Duration) -> float:
    return value.seconds + value.nanos / 1e9


def _status(status: Status) -> pb.SettleStatus.ValueType:
    return cast("pb.SettleStatus.ValueType", int(status))


class FakeCore:
    """The ledger plus the streams' outboxes and the timer thread.

    Every method expects ``cond`` (a Condition over an RLock) to be held,
    except :meth:`pull` and :meth:`acknowledge`, which take it. Every state
    change notifies ``cond``, so waiters re-check their predicates.
    """

    def __init__(self, ledger: Ledger, max_batch: int) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.ledger = ledger
        self.max_batch = max_batch
        self.running = False
        self.streams: list[Holder] = []
        self.outboxes: dict[str, Outbox[OutboxItem]] = {}
        self._pull_holders: dict[str, Holder] = {}
        self._revokes: list[tuple[float, str, int]] = []
        self._ids = itertools.count(1)

    def open_streams(self) -> list[Holder]:
        return [h for h in self.streams if h.open]

    # -- streams ------------------------------------------------------------

    def open_stream(self, request: pb.OpenStream) -> tuple[Holder, Outbox[OutboxItem]]:
        flow = request.flow_control
        holder = Holder(
            name=f"stream-{next(self._ids)}",
            worker_id=request.worker_id,
            max_messages=flow.max_in_flight_messages,
            max_bytes=flow.max_in_flight_bytes,
        )
        self.ledger.open_holder(holder)
        outbox: Outbox[OutboxItem] = queue.SimpleQueue()
        opened = pb.StreamOpened(
            stream_id=holder.name,
            lease=duration(self.ledger.lease_seconds),
            max_lease=duration(self.ledger.max_lease_seconds),
        )
        outbox.put(pb.StreamResponse(opened=opened))
        self.streams.append(holder)
        self.outboxes[holder.name] = outbox
        self._send_deliveries(holder)
        self.cond.notify_all()
        return holder, outbox

    def on_request(self, holder: Holder, request: pb.StreamRequest) -> None:
        ledger, now = self.ledger, time.monotonic()
        rejected = []
        for s in request.settlements:
            delay = seconds_of(s.retry_delay) if s.HasField("retry_delay") else None
            status = ledger.settle(holder, s.msg_id, s.outcome, delay, s.reason, now)
            if status is not Status.OK:
                rejected.append(pb.SettleResult(msg_id=s.msg_id, status=_status(status)))
        ranged = (m for r in request.ack_ranges for m in range(r.first_msg_id, r.first_msg_id + r.count))
        for msg_id in itertools.chain(request.ack_msg_ids, ranged):  # after `settlements`
            status = ledger.settle(holder, msg_id, 1, None, "", now)
            if status is not Status.OK:
                rejected.append(pb.SettleResult(msg_id=msg_id, status=_status(status)))
        if request.HasField("extend"):
            ext = request.extend
            span = seconds_of(ext.extension) if ext.HasField("extension") else None
            for msg_id in ext.msg_ids:
                ledger.extend(holder, msg_id, span, now)
        if request.HasField("flow_control"):
            flow = request.flow_control
            if flow.max_in_flight_messages >= 1:
                ledger.set_limits(holder, flow.max_in_flight_messages, flow.max_in_flight_bytes)
        if rejected:
            self.outboxes[holder.name].put(pb.StreamResponse(rejected=rejected))
        self.dispatch_all()
        self.cond.notify_all()

    def close_stream(self, holder: Holder) -> None:
        """The stream ended: its leases are redelivered at once. Idempotent."""
        if holder.open:
            self.ledger.close_holder(holder)
            self.outboxes[holder.name].put(None)
            self.dispatch_all()
            self.cond.notify_all()

    def drain(self, deadline: float) -> None:
        for holder in self.open_streams():
            holder.draining = True
            notice = pb.Draining(deadline=duration(deadline))
            self.outboxes[holder.name].put(pb.StreamResponse(draining=notice))

    def revoke(self, topic: str, partition: int, deadline: float) -> None:
        by_holder = self.ledger.begin_revoke(topic, partition)
        for holder in self.open_streams():
            notice = pb.PartitionsRevoking(
                partitions=[pb.TopicPartition(topic=topic, partition=partition)],
                msg_ids=by_holder.get(holder.name, []),
                deadline=duration(deadline),
            )
            self.outboxes[holder.name].put(pb.StreamResponse(revoking=notice))
        self._revokes.append((time.monotonic() + deadline, topic, partition))

    def dispatch_all(self) -> None:
        if self.running:
            for holder in self.open_streams():
                self._send_deliveries(holder)

    def _send_deliveries(self, holder: Holder) -> None:
        outbox = self.outboxes[holder.name]
        while leases := self.ledger.lease(holder, time.monotonic(), self.max_batch):
            outbox.put(pb.StreamResponse(deliveries=_deliveries(leases)))

    # -- Pull and Acknowledge (they take the lock) ------------------------------

    def pull(self, request: pb.PullRequest) -> list[pb.Delivery]:
        worker_id = request.worker_id or "pull"
        end = time.monotonic() + seconds_of(request.wait)
        with self.cond:
            holder = self._pull_holders.get(worker_id)
            if holder is None:
                holder = Holder(f"pull:{worker_id}", worker_id, PULL_HOLDER_LIMIT, 0, pull=True)
                self._pull_holders[worker_id] = holder
            limit = min(request.max_messages, self.max_batch)
            while True:
                leases = self.ledger.lease(holder, time.monotonic(), limit)
                left = end - time.monotonic()
                if leases or left <= 0 or not self.running:
                    break
                self.cond.wait(left)
            self.cond.notify_all()
            return _deliveries(leases)

    def acknowledge(self, request: pb.AcknowledgeRequest) -> list[pb.SettleResult]:
        with self.cond:
            now, results = time.monotonic(), []
            for s in request.settlements:
                delay = seconds_of(s.retry_delay) if s.HasField("retry_delay") else None
                status = self.ledger.settle(None, s.msg_id, s.outcome, delay, s.reason, now)
                results.append(pb.SettleResult(msg_id=s.msg_id, status=_status(status)))
            self.dispatch_all()
            self.cond.notify_all()
            return results

    # -- timers -------------------------------------------------------------------

    def pump(self) -> None:
        """Lapses leases, releases due retries and ends revokes, until stopped. Own thread."""
        with self.cond:
            while self.running:
                now = time.monotonic()
                self.ledger.tick(now)
                for end, topic, partition in list(self._revokes):
                    if now >= end or not self.ledger.in_flight(topic, partition):
                        self._revokes.remove((end, topic, partition))
                        self.ledger.end_revoke(topic, partition)
                self.dispatch_all()
                self.cond.notify_all()
                busy = self.ledger.next_wakeup() is not None or self._revokes
                self.cond.wait(PUMP_INTERVAL if busy else PUMP_IDLE_INTERVAL)


def _deliveries(leases: list[Lease]) -> list[pb.Delivery]:
    now, wall_ms = time.monotonic(), time.time() * 1000
    out = []
    for lease in leases:
        r = lease.record
        d = pb.Delivery(
            msg_id=lease.msg_id,
            topic=r.ref.topic,
            partition=r.ref.partition,
            offset=r.ref.offset,
            value=r.value,
            headers=[pb.Header(key=k, value=v) for k, v in r.headers],
            timestamp_ms=r.timestamp_ms,
            attempt=lease.attempt,
            lease_deadline_ms=int(wall_ms + (lease.deadline - now) * 1000),
        )
        if r.key is not None:
            d.key = r.key
        out.append(d)
    return out
