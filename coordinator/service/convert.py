"""Protobuf <-> core conversion. Protobuf never enters ``coordinator.core``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, cast

from google.protobuf.duration_pb2 import Duration

from coordinator.core.ledger import Lease, Run
from coordinator.core.model import Offsets, Outcome, SettleStatus, TopicPartition, consecutive
from coordinator.core.records import members
from coordinator.kafka.records import Fetched, Headers, Payload, Retried
from coordinator.runtime.engine import PendingView, Settlement, StatusView
from coordinator.runtime.pendingstore import PendingStore, StoreState
from lowwater.v1 import admin_pb2
from lowwater.v1 import coordinator_pb2 as pb

MAX_DURATION_SECONDS = 315_576_000_000
"""The largest ``seconds`` of a valid ``google.protobuf.Duration`` (about 10,000 years)."""
MAX_DURATION_NANOS = 999_999_999
"""The largest ``nanos`` of a valid ``google.protobuf.Duration``."""

OUTCOMES: dict[int, Outcome] = {
    pb.OUTCOME_ACK: Outcome.ACK,
    pb.OUTCOME_RETRY: Outcome.RETRY,
    pb.OUTCOME_DEAD_LETTER: Outcome.DEAD_LETTER,
    pb.OUTCOME_DROP: Outcome.DROP,
    pb.OUTCOME_ALREADY_PROCESSED: Outcome.ALREADY_PROCESSED,
}
STATUSES: dict[SettleStatus, pb.SettleStatus.ValueType] = {
    SettleStatus.OK: pb.SETTLE_STATUS_OK,
    SettleStatus.UNKNOWN: pb.SETTLE_STATUS_UNKNOWN,
    SettleStatus.STALE: pb.SETTLE_STATUS_STALE,
    SettleStatus.ALREADY_SETTLED: pb.SETTLE_STATUS_ALREADY_SETTLED,
    SettleStatus.NOT_OWNER: pb.SETTLE_STATUS_NOT_OWNER,
    SettleStatus.INVALID: pb.SETTLE_STATUS_INVALID,
}


def span_seconds(span: Duration) -> float | None:
    """A Duration in seconds; None unless it is a valid Duration and not negative.

    Valid means what ``duration.proto`` says: ``seconds`` within +-315,576,000,000 and
    ``nanos`` within +-999,999,999. No field of this API means anything by a negative
    span, so a negative one (either part below zero) is refused too.
    """
    secs, nanos = span.seconds, span.nanos
    if not (0 <= secs <= MAX_DURATION_SECONDS and 0 <= nanos <= MAX_DURATION_NANOS):
        return None
    return secs + nanos / 1e9


def settlements(items: Iterable[pb.Settlement]) -> Iterator[Settlement]:
    """Core settlements from protobuf ones.

    A settlement whose outcome is unspecified or unknown, or whose ``retry_delay`` is set
    but not a valid, non-negative Duration, gets the outcome None: it is answered INVALID.
    """
    outcomes = OUTCOMES
    for s in items:
        outcome = outcomes.get(s.outcome)
        delay = None
        if s.HasField("retry_delay"):
            delay = span_seconds(s.retry_delay)
            if delay is None:
                outcome = None
        yield s.msg_id, outcome, delay, s.reason


Leased = Lease | Run
"""What :meth:`Ledger.lease` hands out: a record's own lease, or a run leased whole."""


def add_deliveries(target: Iterable[pb.Delivery], leases: Sequence[Leased]) -> None:
    """Appends a Delivery per record leased to a repeated field (``resp.deliveries``).

    A record's topic, partition and offset are its ledger record's own, or, back from a
    retry topic, the original's (``records.origin`` and ``records.contents``, inlined).
    Fields are set one by one: with the upb runtime that is about twice as
    fast as keyword arguments, and this runs once per delivered record.
    """
    add = target.add  # type: ignore[attr-defined]
    wall = time.time() - time.monotonic()
    deadline, deadline_ms = None, 0  # the leases of one batch share their deadline
    for lease in members(leases):
        rec = lease.record
        payload: Payload = rec.payload  # type: ignore[assignment]  # what intake put there
        d = add()
        d.msg_id = lease.msg_id
        if isinstance(payload, Retried):
            key, value, headers, ts = payload.record
            d.topic = payload.topic
            d.partition = payload.partition
            d.offset = payload.offset
        else:
            key, value, headers, ts = payload
            tp = rec.part.tp
            d.topic = tp.topic
            d.partition = tp.partition
            d.offset = rec.offset
        if value:
            d.value = value
        if key is not None:
            d.key = key
        if ts is not None:
            d.timestamp_ms = ts
        d.attempt = lease.attempt
        if lease.deadline != deadline:
            deadline = lease.deadline
            deadline_ms = int((deadline + wall) * 1000)
        d.lease_deadline_ms = deadline_ms
        if headers:
            d.headers.extend(pb.Header(key=k, value=v or b"") for k, v in headers)


def _runs(leases: list[Lease]) -> Iterator[list[Lease]]:
    """``leases`` cut into the runs one DeliveryBatch each carries: consecutive msg_ids of
    records fetched from one partition, sharing a deadline. A record back from a retry topic
    goes alone: its topic, partition and offset are its original's."""
    start, part, expect, deadline = 0, None, -1, 0.0
    for i, lease in enumerate(leases):
        rec = lease.record
        if rec.part is not part or lease.msg_id != expect or lease.deadline != deadline \
                or type(rec.payload) is not tuple:
            if i > start:
                yield leases[start:i]
            start, part, deadline = i, rec.part, lease.deadline
            if type(rec.payload) is not tuple:
                part = None  # a retried record: nothing joins it
        expect = lease.msg_id + 1
    if leases:
        yield leases[start:]


def add_batches(target: Iterable[pb.DeliveryBatch], leases: Sequence[Leased]) -> None:
    """Appends the DeliveryBatch messages that carry ``leases`` to a repeated field
    (``resp.batches``): what :func:`add_deliveries` says, field by field.

    Each field is built from a list in one call, so the cost per record is a few list
    comprehensions rather than a protobuf message (several times less, measured). A run
    leased whole is one batch, its columns taken from the run as they are.
    """
    add = target.add  # type: ignore[attr-defined]
    wall = time.time() - time.monotonic()
    own: list[Lease] = []
    for lease in leases:
        if not isinstance(lease, Run):
            own.append(lease)
            continue
        if own:
            _add_leases(add, own, wall)
            own = []
        b = add()
        tp = lease.part.tp
        b.topic, b.partition = tp.topic, tp.partition
        b.first_msg_id = lease.msg_id
        b.lease_deadline_ms = int((lease.deadline + wall) * 1000)
        _set_offsets(b, lease.offsets)
        # No attempts: a run is only ever leased once, so every member's attempt is 1.
        _add_columns(b, *lease.columns)  # kafka.records.Columns, as segments() made them
    if own:
        _add_leases(add, own, wall)


def _add_leases(add: Callable[[], pb.DeliveryBatch], leases: list[Lease], wall: float) -> None:
    """The batches of records leased one by one: a batch per run of :func:`_runs`."""
    for run in _runs(leases):
        first = run[0]
        recs = [lease.record for lease in run]
        b = add()
        b.first_msg_id = first.msg_id
        b.lease_deadline_ms = int((first.deadline + wall) * 1000)
        payload: Payload = recs[0].payload  # type: ignore[assignment]  # what intake put there
        if isinstance(payload, Retried):  # alone in its run
            b.topic, b.partition = payload.topic, payload.partition
            b.offsets.append(payload.offset)
            contents: list[Fetched] = [payload.record]
        else:
            tp = recs[0].part.tp
            b.topic, b.partition = tp.topic, tp.partition
            _set_offsets(b, consecutive([rec.offset for rec in recs]))
            contents = [rec.payload for rec in recs]  # type: ignore[misc]  # Fetched, by _runs
        attempts = [lease.attempt for lease in run]
        if attempts.count(1) != len(attempts):  # otherwise left out: all first deliveries
            b.attempts.extend(attempts)
        _add_columns(b, *(list(column) for column in zip(*contents, strict=True)))


def _set_offsets(b: pb.DeliveryBatch, offsets: Offsets) -> None:
    """A batch's offsets: consecutive ones as the first alone (``first_offset``)."""
    if isinstance(offsets, range):
        b.first_offset = offsets.start
    else:
        b.offsets.extend(offsets)


def _add_columns(b: pb.DeliveryBatch, keys: list[bytes | None], values: list[bytes | None],
                 headers: list[Headers | None], stamps: list[int | None]) -> None:
    """A batch's values, timestamps, keys and headers, from its records' columns. A column
    without a null goes in as it is, in one call."""
    # all() finds a None (or an empty value, or a zero timestamp, which map to themselves) at
    # C speed: several times faster than `None in`, which compares each item with None.
    b.values.extend(cast(list[bytes], values) if all(values)
                    else [value or b"" for value in values])
    b.timestamps_ms.extend(cast(list[int], stamps) if all(stamps)
                           else [ts or 0 for ts in stamps])
    nulls = keys.count(None)
    if nulls != len(keys):
        if nulls:
            b.null_keys.extend([i for i, key in enumerate(keys) if key is None])
            b.keys.extend([b"" if key is None else key for key in keys])
        else:
            b.keys.extend(cast(list[bytes], keys))  # no None: counted
    if headers.count(None) != len(headers):
        for i, pairs in enumerate(headers):
            if pairs:
                h = b.headers.add()
                h.index = i
                h.headers.extend(pb.Header(key=k, value=v or b"") for k, v in pairs)


Fill = Callable[[pb.StreamResponse, Sequence[Leased]], None]
"""Puts the deliveries of leases into a stream response: :func:`deliveries_into` or
:func:`batches_into`, the form a worker asks for when it opens its stream."""


def deliveries_into(resp: pb.StreamResponse, leases: Sequence[Leased]) -> None:
    add_deliveries(resp.deliveries, leases)


def batches_into(resp: pb.StreamResponse, leases: Sequence[Leased]) -> None:
    add_batches(resp.batches, leases)


def duration(seconds: float) -> Duration:
    out = Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out


def results(rejected: list[tuple[int, SettleStatus]]) -> list[pb.SettleResult]:
    return [pb.SettleResult(msg_id=m, status=STATUSES[s]) for m, s in rejected]


def status_response(view: StatusView, group: str, health: str) -> admin_pb2.GetStatusResponse:
    resp = admin_pb2.GetStatusResponse(group=group, health=health, buffered_count=view.buffered)
    for p in view.partitions:
        resp.partitions.add(
            topic=p.tp.topic,
            partition=p.tp.partition,
            generation=p.generation,
            committed_offset=-1 if p.committed is None else p.committed,
            commit_offset=-1 if p.commit_offset is None else p.commit_offset,
            lowest_pending_offset=-1 if p.lowest_pending is None else p.lowest_pending,
            pending_count=p.pending,
            in_flight_count=p.in_flight,
            oldest_pending_age=duration(p.oldest_age),
            paused=p.paused,
            lag=-1 if p.lag is None else p.lag,
        )
    for event in view.rebalances:
        resp.rebalances.add(
            at_ms=int(event.at * 1000), event=event.event,
            partitions=[admin_pb2.PartitionRef(topic=tp.topic, partition=tp.partition)
                        for tp in event.partitions])
    for h in view.holders:
        resp.workers.add(
            stream_id=h.name,
            worker_id=h.worker_id,
            in_flight_count=h.in_flight,
            max_in_flight_messages=h.max_messages,
            in_flight_bytes=h.in_flight_bytes,
            max_in_flight_bytes=h.max_bytes,
            leased_msg_ids=h.msg_ids,
        )
    return resp


_STORE_STATES = {
    StoreState.STARTING: admin_pb2.PendingStoreStatus.STATE_STARTING,
    StoreState.OK: admin_pb2.PendingStoreStatus.STATE_OK,
    StoreState.DEGRADED: admin_pb2.PendingStoreStatus.STATE_DEGRADED,
}


def store_status(store: PendingStore, now: float) -> admin_pb2.PendingStoreStatus:
    """``now`` is on the store's clock (monotonic)."""
    status = admin_pb2.PendingStoreStatus(
        state=_STORE_STATES[store.state], writes=store.writes, failed_writes=store.failed_writes,
        last_error=store.last_error if store.state is StoreState.DEGRADED else "")
    if store.last_write is not None:
        status.since_last_write.CopyFrom(duration(now - store.last_write))
    return status


def recovery_response(store: PendingStore | None, partitions: Mapping[TopicPartition, Any],
                      group: str, now_ms: int) -> admin_pb2.GetRecoveryResponse:
    """What each partition's previous owner had in flight, and what of it is done here.
    ``partitions`` maps each assigned partition to its ledger state."""
    if store is None:
        return admin_pb2.GetRecoveryResponse(group=group)
    resp = admin_pb2.GetRecoveryResponse(group=group, instance=store.instance)
    for tp, replay in sorted(store.inherited.items()):
        meta = replay.meta
        done = replay.done(partitions.get(tp))
        out = resp.partitions.add(
            topic=tp.topic, partition=tp.partition,
            previous_instance="" if meta is None else meta.instance,
            done_count=sum(done), undelivered_count=0 if meta is None else meta.undelivered)
        if meta is not None:
            out.snapshot_age.CopyFrom(duration(max(0, now_ms - meta.written_ms) / 1000.0))
        written_ms = now_ms if meta is None else meta.written_ms
        for entry, finished in zip(replay.entries, done, strict=True):
            out.records.add(
                offset=entry.offset, state=entry.state, attempts=entry.attempts,
                worker_id=entry.worker, msg_id=entry.msg_id,
                pending_for=duration(max(0, written_ms - entry.fetched_ms) / 1000.0),
                done=finished)
    return resp


def pending_response(records: list[PendingView], total: int, more: bool
                     ) -> admin_pb2.ListPendingResponse:
    resp = admin_pb2.ListPendingResponse(total=total)
    for r in records:
        out = resp.records.add(offset=r.offset, state=r.state, attempts=r.attempts,
                               msg_id=r.msg_id, worker_id=r.worker_id,
                               pending_for=duration(max(0.0, r.pending_for)))
        if r.lease_left is not None:
            out.lease_left.CopyFrom(duration(max(0.0, r.lease_left)))
    if more and records:
        resp.next_page_token = str(records[-1].offset)
    return resp
