"""Hostile workers against the Coordinator servicer, over real gRPC streams.

Hypothesis writes programs of hostile steps for two workers (settlements of unknown,
foreign, settled and revoked msg_ids; unknown outcomes; zero, negative, malformed and
overflowing durations; packed acks at ``max_settlement_batch`` and 100k of them, over it; a
second ``open``; a zero flow limit; requests over the 4 MiB receive limit; streams whose first
request is not a lone ``open``) and
runs them against a real server. A model predicts every per-id answer and every commit
offset; after each step the test checks that

- every settlement not accepted is answered, in order, with exactly the predicted status
  (a sentinel ack of a never-issued msg_id marks where a step's answers end);
- each partition's commit offset is exactly the lowest offset not finished by an accepted
  ACK, DROP, ALREADY_PROCESSED or DEAD_LETTER, so no commit passes an unfinished record;
- a stream ends only with the predicted status code and, where the service gives them,
  ``google.rpc.Status`` details naming the offending field or the limit; a stream refused for
  a giant batch settles none of it, and its leases are redelivered at once.

``HYPOTHESIS_PROFILE=soak`` runs many more and longer programs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from coordinator.core.model import TopicPartition
from lowwater.v1 import admin_pb2
from lowwater.v1 import coordinator_pb2 as pb
from tests.support.aio import async_test, until

from .harness import Harness, harness

pytestmark = pytest.mark.timeout(120)

SOAK = os.environ.get("HYPOTHESIS_PROFILE") == "soak"
WAIT = 10.0
"""Seconds a step may take before the test fails."""
TOPIC = "t"
PARTITIONS = 2
MAX_DURATION_SECONDS = 315_576_000_000
"""duration.proto: the largest valid ``seconds`` (written here again: the test's own oracle)."""
LAPSE_BELOW = 0.25
"""Valid durations drawn are below this (the lease lapses at once) or at least
LONG_SPAN (nothing lapses while an example runs): no race on either side."""
LONG_SPAN = 30
RECEIVE_LIMIT = 4 * 1024 * 1024
"""gRPC's default receive limit, which the sidecar keeps (``max_receive_message_bytes``)."""
BULK_ACKS = 10_000
"""The default ``max_settlement_batch`` (written here again: the test's own oracle)."""
GIANT_ACKS = 100_000
UNKNOWN_BASE = 2**63
"""msg_ids from here up are never issued (they start at 1 and count up)."""
SENTINELS = itertools.count(2**64 - 1, -1)

FINISHING = {pb.OUTCOME_ACK, pb.OUTCOME_DROP, pb.OUTCOME_ALREADY_PROCESSED,
             pb.OUTCOME_DEAD_LETTER}
"""Outcomes after which a record no longer holds the commit back. DEAD_LETTER counts: the
engine finishes a record once it is handed to the dead-letter path."""
OK = pb.SETTLE_STATUS_OK
UNKNOWN = pb.SETTLE_STATUS_UNKNOWN
STALE = pb.SETTLE_STATUS_STALE
ALREADY_SETTLED = pb.SETTLE_STATUS_ALREADY_SETTLED
NOT_OWNER = pb.SETTLE_STATUS_NOT_OWNER
INVALID = pb.SETTLE_STATUS_INVALID

# -- the programs -------------------------------------------------------------------------------

Dur = tuple[int, int] | None
"""(seconds, nanos) of a google.protobuf.Duration, or None for an unset field."""
Pick = tuple[str, int]
"""(category, index): which msg_id a step names, resolved against the model when it runs."""

PICKS = st.tuples(st.sampled_from(["mine", "mine", "theirs", "gone", "unknown"]),
                  st.integers(0, 50))
DURATIONS: st.SearchStrategy[Dur] = st.one_of(
    st.none(),
    st.just((0, 0)),
    st.tuples(st.just(0), st.integers(1, int(LAPSE_BELOW * 1e9) - 1)),  # tiny, valid
    st.tuples(st.integers(LONG_SPAN, MAX_DURATION_SECONDS), st.integers(0, 999_999_999)),
    st.tuples(st.integers(-(2**63), -1), st.integers(-999_999_999, 0)),  # negative
    st.tuples(st.integers(MAX_DURATION_SECONDS + 1, 2**63 - 1), st.just(0)),  # overflowing
    st.tuples(st.integers(0, 5), st.integers(10**9, 2**31 - 1)),  # nanos out of range
    st.tuples(st.integers(0, 5), st.integers(-(2**31), -1)),  # signs disagree
    st.tuples(st.integers(-5, -1), st.integers(1, 999_999_999)),  # signs disagree
)
OUTCOMES = st.sampled_from([pb.OUTCOME_ACK, pb.OUTCOME_RETRY, pb.OUTCOME_DEAD_LETTER,
                            pb.OUTCOME_DROP, pb.OUTCOME_ALREADY_PROCESSED,
                            pb.OUTCOME_UNSPECIFIED, 99, 2**31 - 1])
WHO = st.integers(0, 1)
BAD_FIRST = ["settlements", "acks", "extend", "flow_control", "open+acks", "open+settlements",
             "open+extend", "open+flow_control", "empty", "eof"]

STEPS = st.one_of(
    st.tuples(st.just("ack"), WHO, st.lists(PICKS, max_size=6)),
    st.tuples(st.just("settle"), WHO, st.lists(st.tuples(PICKS, OUTCOMES, DURATIONS), max_size=6)),
    st.tuples(st.just("extend"), WHO, st.lists(PICKS, max_size=6), DURATIONS),
    st.tuples(st.just("revoke"), st.integers(0, PARTITIONS - 1)),
    st.tuples(st.just("reopen"), WHO),
    st.tuples(st.just("flow_zero"), WHO),
    st.tuples(st.just("bad_first"), st.sampled_from(BAD_FIRST), PICKS),
    st.tuples(st.just("bulk_ack"), WHO),
    st.tuples(st.just("giant_ack"), WHO),
    st.tuples(st.just("oversize"), WHO),
)
Step = tuple[Any, ...]
"""(kind, *arguments)."""

EVERY_KIND: list[Step] = [
    ("bad_first", "open+acks", ("mine", 0)),
    ("settle", 1, [(("theirs", 0), pb.OUTCOME_ACK, None), (("mine", 0), 99, None),
                   (("mine", 0), pb.OUTCOME_RETRY, (-1, 0)),
                   (("mine", 0), pb.OUTCOME_RETRY, (2**63 - 1, 0)),
                   (("mine", 0), pb.OUTCOME_RETRY, (1, 2_000_000_000)),
                   (("mine", 0), pb.OUTCOME_ACK, (0, 0)), (("gone", 0), pb.OUTCOME_ACK, None),
                   (("unknown", 3), pb.OUTCOME_ACK, None)]),
    ("extend", 0, [("mine", 0), ("gone", 0), ("theirs", 0), ("unknown", 0)], (2**62, 0)),
    ("extend", 0, [("mine", 0), ("mine", 1)], (-3, -5)),
    ("extend", 0, [("mine", 0)], (0, 0)),
    ("extend", 1, [("mine", 0)], (LONG_SPAN * 10, 5)),
    ("ack", 0, [("mine", 0), ("mine", 0), ("theirs", 1), ("gone", 1)]),
    ("bulk_ack", 1),
    ("giant_ack", 0),
    ("revoke", 0),
    ("ack", 0, [("gone", 0), ("gone", 1), ("gone", 2), ("mine", 0)]),
    ("reopen", 1),
    ("flow_zero", 0),
    ("oversize", 1),
    ("bad_first", "settlements", ("unknown", 0)),
    ("bad_first", "eof", ("unknown", 0)),
    ("settle", 0, [(("mine", 0), pb.OUTCOME_DROP, None), (("mine", 1), pb.OUTCOME_DEAD_LETTER,
                                                         None)]),
]
"""One program with every kind of step, run whatever hypothesis draws."""

# -- the model and the workers -------------------------------------------------------------------


def valid_span(span: Dur) -> bool:
    if span is None:
        return True
    seconds, nanos = span
    return 0 <= seconds <= MAX_DURATION_SECONDS and 0 <= nanos <= 999_999_999


def set_duration(target: object, span: Dur) -> None:
    if span is not None:
        target.seconds, target.nanos = span  # type: ignore[attr-defined]


@dataclass
class Model:
    """What the sidecar should know: who holds which msg_id, and what is finished."""

    fed: dict[int, set[int]] = field(default_factory=dict)
    """Offsets fed per partition (of partitions still assigned)."""
    finished: dict[int, set[int]] = field(default_factory=dict)
    owner: dict[int, str] = field(default_factory=dict)
    """Live msg_id -> stream_id holding it."""
    where: dict[int, tuple[int, int]] = field(default_factory=dict)
    """msg_id -> (partition, offset), for every msg_id delivered."""
    gone: dict[int, int] = field(default_factory=dict)
    """msg_id -> the status a settlement of it now gets (ALREADY_SETTLED or STALE)."""
    revoked: set[int] = field(default_factory=set)
    """msg_ids leased when their partition was revoked: STALE, even if a peer reads their
    delivery only after the revoke (it was on the wire)."""

    def pool(self, category: str, stream_id: str) -> list[int]:
        if category == "mine":
            return sorted(m for m, s in self.owner.items() if s == stream_id)
        if category == "theirs":
            return sorted(m for m, s in self.owner.items() if s != stream_id)
        if category == "gone":
            return sorted(self.gone)
        return []

    def resolve(self, pick: Pick, stream_id: str) -> int:
        category, index = pick
        pool = self.pool(category, stream_id)
        return pool[index % len(pool)] if pool else UNKNOWN_BASE + index

    def answer(self, msg_id: int, stream_id: str) -> int | None:
        """The status for a settlement by ``stream_id`` if it is not its own live lease."""
        if msg_id not in self.owner:
            return self.gone.get(msg_id, UNKNOWN)
        if self.owner[msg_id] != stream_id:
            return NOT_OWNER
        return None

    def settled(self, msg_id: int, outcome: int) -> None:
        self.owner.pop(msg_id)
        self.gone[msg_id] = ALREADY_SETTLED
        partition, offset = self.where[msg_id]
        if outcome in FINISHING:
            self.finished[partition].add(offset)

    def lapsed(self, msg_ids: list[int]) -> None:
        for m in msg_ids:
            self.owner.pop(m, None)
            self.gone[m] = ALREADY_SETTLED

    def commit_offset(self, partition: int) -> int:
        left = self.fed[partition] - self.finished[partition]
        return min(left) if left else max(self.fed[partition]) + 1


class Peer:
    """One worker stream driven by the program; reconnects under the same worker name."""

    def __init__(self, h: Harness, model: Model, name: str, max_in_flight: int) -> None:
        self.h, self.model, self.name, self.max_in_flight = h, model, name, max_in_flight
        self.stream_id = ""
        self.rejected: list[tuple[int, int]] = []
        self.ended: asyncio.Future[grpc.aio.AioRpcError | None] | None = None
        self.call: grpc.aio.StreamStreamCall | None = None
        self.news = asyncio.Event()

    async def open(self) -> None:
        self.call = self.h.coordinator.Stream()
        self.rejected = []
        await self.call.write(pb.StreamRequest(open=pb.OpenStream(
            worker_id=self.name,
            flow_control=pb.FlowControl(max_in_flight_messages=self.max_in_flight))))
        opened: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.ended = asyncio.ensure_future(self._read(self.call, opened))
        self.stream_id = await asyncio.wait_for(opened, WAIT)

    async def _read(self, call: grpc.aio.StreamStreamCall,
                    opened: asyncio.Future[str]) -> grpc.aio.AioRpcError | None:
        model = self.model
        stream_id = ""  # this call's: self.stream_id may still name the previous one
        try:
            async for resp in call:
                if resp.HasField("opened"):
                    stream_id = resp.opened.stream_id
                    opened.set_result(stream_id)
                for d in resp.deliveries:
                    assert stream_id, "a delivery before `opened`"
                    assert d.msg_id not in model.where, "a msg_id was issued twice"
                    model.where[d.msg_id] = (d.partition, d.offset)
                    if d.msg_id in model.revoked:
                        model.gone[d.msg_id] = STALE
                    else:
                        model.owner[d.msg_id] = stream_id
                self.rejected.extend((r.msg_id, r.status) for r in resp.rejected)
                self.news.set()
        except grpc.aio.AioRpcError as exc:
            return exc
        finally:
            self.news.set()
        return None

    async def round_trip(self, request: pb.StreamRequest) -> list[tuple[int, int]]:
        """Sends ``request`` and returns the rejections it caused, in order."""
        assert self.call is not None and self.ended is not None
        sentinel = next(SENTINELS)
        await self.call.write(request)
        await self.call.write(pb.StreamRequest(ack_msg_ids=[sentinel]))
        deadline = asyncio.get_running_loop().time() + WAIT
        while (sentinel, UNKNOWN) not in self.rejected:
            assert not self.ended.done(), f"the stream ended: {self.ended.result()}"
            self.news.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, "no answer to the sentinel in time"
            try:
                await asyncio.wait_for(self.news.wait(), remaining)
            except TimeoutError:
                pass
        at = self.rejected.index((sentinel, UNKNOWN))
        out, self.rejected = self.rejected[:at], self.rejected[at + 1:]
        return out

    async def expect_end(self, code: grpc.StatusCode, violation: str | None,
                         limit: str | None = None) -> None:
        """The stream must end with ``code`` (and a BadRequest naming ``violation``, or a
        QuotaFailure naming ``limit``); its leases are redelivered at once."""
        assert self.ended is not None
        error = await asyncio.wait_for(self.ended, WAIT)
        assert error is not None, "the stream ended with OK"
        assert error.code() == code, (error.code(), error.details())
        check_details(error, violation)
        if limit is not None:
            check_limit(error, limit)
        stream_id = self.stream_id
        await until(lambda: stream_id not in self.h.engine.ledger.holders)
        self.model.lapsed([m for m, s in self.model.owner.items() if s == stream_id])
        await self.open()

    async def close(self) -> None:
        assert self.call is not None and self.ended is not None
        await self.call.done_writing()
        assert await asyncio.wait_for(self.ended, WAIT) is None
        assert await self.call.code() == grpc.StatusCode.OK


def check_details(error: grpc.aio.AioRpcError, violation: str | None) -> None:
    status = rpc_status.from_call(error)
    if violation is None:
        return
    assert status is not None, "no google.rpc.Status details"
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == [violation]


def check_limit(error: grpc.aio.AioRpcError, limit: str) -> None:
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details"
    quota = error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(quota)
    assert [v.subject for v in quota.violations] == [limit]


# -- running a program -------------------------------------------------------------------------


class Run:
    def __init__(self, h: Harness, model: Model, peers: list[Peer]) -> None:
        self.h, self.model, self.peers = h, model, peers

    def check_commits(self) -> None:
        for p, part in self.h.engine.ledger.partitions.items():
            assert part.offsets.commit_offset == self.model.commit_offset(p.partition), p

    async def step(self, step: Step) -> None:
        kind = step[0]
        event(kind)
        await getattr(self, kind)(*step[1:])
        self.check_commits()

    async def ack(self, who: int, picks: list[Pick]) -> None:
        peer, model = self.peers[who], self.model
        ids = [model.resolve(p, peer.stream_id) for p in picks]
        expected = []
        for m in ids:
            status = model.answer(m, peer.stream_id)
            if status is None:
                model.settled(m, pb.OUTCOME_ACK)
            else:
                expected.append((m, status))
        assert await peer.round_trip(pb.StreamRequest(ack_msg_ids=ids)) == expected

    async def settle(self, who: int, items: list[tuple[Pick, int, Dur]]) -> None:
        peer, model = self.peers[who], self.model
        request = pb.StreamRequest()
        expected: list[tuple[int, int]] = []
        for pick, outcome, span in items:
            m = model.resolve(pick, peer.stream_id)
            s = request.settlements.add(msg_id=m, outcome=outcome)
            if span is not None:
                set_duration(s.retry_delay, span)
            status = model.answer(m, peer.stream_id)
            if status is None and (outcome not in pb.Outcome.values()
                                   or outcome == pb.OUTCOME_UNSPECIFIED or not valid_span(span)):
                status = INVALID
            if status is None:
                model.settled(m, outcome)
            else:
                expected.append((m, status))
        assert await peer.round_trip(request) == expected

    async def extend(self, who: int, picks: list[Pick], span: Dur) -> None:
        peer, model = self.peers[who], self.model
        ids = [model.resolve(p, peer.stream_id) for p in picks]
        request = pb.StreamRequest(extend=pb.LeaseExtension(msg_ids=ids))
        if span is not None:
            set_duration(request.extend.extension, span)
        ledger = self.h.engine.ledger
        holder = ledger.holders[peer.stream_id]
        before = {m: lease.deadline for m in ids
                  if (lease := ledger.lease_of(m)) is not None and lease.holder is holder}
        if not valid_span(span):  # a malformed extension: INVALID for each id, no lease moves
            expected: list[tuple[int, int]] = [(m, INVALID) for m in ids]
        else:
            expected = [(m, s) for m in ids if (s := model.answer(m, peer.stream_id)) is not None]
        assert await peer.round_trip(request) == expected
        if not valid_span(span):
            assert {m: getattr(ledger.lease_of(m), "deadline", None) for m in before} == before
        elif span is not None and span[0] < LONG_SPAN and before:  # the leases run out now
            await until(lambda: not set(before) & set(ledger.holder_msg_ids(holder)))
            model.lapsed(list(before))

    async def bulk_ack(self, who: int) -> None:
        """100k packed acks: the peer's live ids among never-issued ones."""
        peer, model = self.peers[who], self.model
        mine = model.pool("mine", peer.stream_id)
        ids = [UNKNOWN_BASE + i for i in range(BULK_ACKS)]
        for i, m in enumerate(mine):
            ids[(i + 1) * (BULK_ACKS // (len(mine) + 1))] = m
        request = pb.StreamRequest(ack_msg_ids=ids)
        assert request.ByteSize() < RECEIVE_LIMIT
        for m in mine:
            model.settled(m, pb.OUTCOME_ACK)
        expected = [(m, UNKNOWN) for m in ids if m >= UNKNOWN_BASE]
        assert await peer.round_trip(request) == expected

    async def giant_ack(self, who: int) -> None:
        """100k packed acks, over ``max_settlement_batch``: the stream is refused, nothing in
        the request is settled (the commit check after the step), and the peer's leases are
        redelivered at once (they leave its holder, and the model forgets them)."""
        peer, model = self.peers[who], self.model
        assert peer.call is not None
        mine = model.pool("mine", peer.stream_id)
        request = pb.StreamRequest(ack_msg_ids=[*mine, *(UNKNOWN_BASE + i
                                                         for i in range(GIANT_ACKS))])
        assert request.ByteSize() < RECEIVE_LIMIT
        await peer.call.write(request)
        await peer.expect_end(grpc.StatusCode.RESOURCE_EXHAUSTED, None, "max_settlement_batch")

    async def revoke(self, partition: int) -> None:
        tp = TopicPartition(TOPIC, partition)
        if tp not in self.h.engine.ledger.partitions:
            return
        model, ledger = self.model, self.h.engine.ledger
        want = model.commit_offset(partition)
        # What is leased now, the peers' readers may not have seen yet: the ledger knows.
        model.revoked.update(
            m for h in ledger.holders.values() for m in ledger.holder_msg_ids(h)
            if (lease := ledger.lease_of(m)) is not None and lease.record.part.tp == tp)
        final = await asyncio.wait_for(self.h.engine.revoke([tp], lost=False), WAIT)
        assert [(p.tp, p.offset) for p in final] == [(tp, want)]
        for m in [m for m in model.owner if model.where[m][0] == partition]:
            del model.owner[m]
            model.gone[m] = STALE
        del model.fed[partition], model.finished[partition]

    async def reopen(self, who: int) -> None:
        peer = self.peers[who]
        assert peer.call is not None
        await peer.call.write(pb.StreamRequest(open=pb.OpenStream(worker_id="again")))
        await peer.expect_end(grpc.StatusCode.INVALID_ARGUMENT, "open")

    async def flow_zero(self, who: int) -> None:
        peer = self.peers[who]
        assert peer.call is not None
        await peer.call.write(pb.StreamRequest(flow_control=pb.FlowControl()))
        await peer.expect_end(grpc.StatusCode.INVALID_ARGUMENT, "flow_control")

    async def oversize(self, who: int) -> None:
        peer = self.peers[who]
        assert peer.call is not None
        request = pb.StreamRequest(ack_msg_ids=[UNKNOWN_BASE + i for i in range(500_000)])
        assert request.ByteSize() > RECEIVE_LIMIT
        await peer.call.write(request)
        await peer.expect_end(grpc.StatusCode.RESOURCE_EXHAUSTED, None)

    async def bad_first(self, variant: str, pick: Pick) -> None:
        """A third stream whose first request is not a lone ``open``; nothing may change."""
        victim = self.peers[0]
        m = self.model.resolve(pick, victim.stream_id)
        open_ = pb.OpenStream(worker_id="x", flow_control=pb.FlowControl(max_in_flight_messages=5))
        parts = {
            "settlements": pb.StreamRequest(settlements=[pb.Settlement(
                msg_id=m, outcome=pb.OUTCOME_ACK)]),
            "acks": pb.StreamRequest(ack_msg_ids=[m]),
            "extend": pb.StreamRequest(extend=pb.LeaseExtension(msg_ids=[m])),
            "flow_control": pb.StreamRequest(flow_control=pb.FlowControl(
                max_in_flight_messages=5)),
            "empty": pb.StreamRequest(),
        }
        holders = set(self.h.engine.ledger.holders)
        ledger = self.h.engine.ledger
        owned = {s: set(ledger.holder_msg_ids(h)) for s, h in ledger.holders.items()}
        call = self.h.coordinator.Stream()
        if variant == "eof":
            await call.done_writing()
            assert [r async for r in call] == []
            assert await call.code() == grpc.StatusCode.OK
        else:
            request = parts[variant.removeprefix("open+")]
            if variant.startswith("open+"):
                request.open.CopyFrom(open_)
            await call.write(request)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call.read(), WAIT)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            check_details(info.value, "open")
        await until(lambda: set(self.h.engine.ledger.holders) == holders)
        for stream_id, leases in owned.items():  # none taken (new ones may have been granted)
            assert leases <= set(ledger.holder_msg_ids(ledger.holders[stream_id])), stream_id


async def run_program(records: list[list[int]], in_flight: tuple[int, int],
                      program: list[Step]) -> None:
    async with harness(rebalance_timeout=0.0) as h:
        model = Model()
        h.assign(TOPIC, PARTITIONS)
        for p, gaps in enumerate(records):
            offsets = list(itertools.accumulate(gaps, lambda o, g: o + 1 + g, initial=0))
            h.feed(TOPIC, p, offsets)
            model.fed[p], model.finished[p] = set(offsets), set()
        peers = [Peer(h, model, f"w{i}", n) for i, n in enumerate(in_flight)]
        for peer in peers:
            await peer.open()
        run = Run(h, model, peers)
        # Let the first deliveries arrive, so that programs have ids to name.
        total = sum(len(gaps) + 1 for gaps in records)
        await until(lambda: len(model.owner) >= min(sum(in_flight), total))
        run.check_commits()
        for step in program:
            await run.step(step)
        for peer in peers:
            await peer.close()
        # The server still serves: a fresh stream opens, and Admin answers.
        fresh = Peer(h, model, "fresh", 1)
        await fresh.open()
        await fresh.close()
        status = await h.admin.GetStatus(admin_pb2.GetStatusRequest())
        assert {p.partition for p in status.partitions} == set(model.fed)


@settings(max_examples=300 if SOAK else 12, deadline=None)
@given(
    records=st.lists(st.lists(st.integers(0, 2), min_size=0, max_size=7),
                     min_size=PARTITIONS, max_size=PARTITIONS),
    in_flight=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    program=st.lists(STEPS, max_size=25 if SOAK else 10),
)
@example(records=[[0, 0, 1, 0, 2, 0], [0, 1, 0, 0]], in_flight=(3, 2), program=EVERY_KIND)
def test_hostile_programs_get_precise_answers_and_never_move_a_commit_wrongly(
    records: list[list[int]], in_flight: tuple[int, int], program: list[Step]
) -> None:
    asyncio.run(run_program(records, in_flight, program))


@async_test
async def test_settling_another_workers_msg_id_is_not_owner_and_leaves_the_lease_alone() -> None:
    """The rule: only the stream (or, for Pull leases, an Acknowledge) holding a msg_id may
    settle or extend it. Anyone else gets NOT_OWNER per id, and the lease stays exactly as
    it was: same holder, same deadline, still settleable by its owner."""
    async with harness() as h:
        model = Model()
        h.assign(TOPIC, 1)
        h.feed(TOPIC, 0, [0, 1, 2])
        model.fed[0], model.finished[0] = {0, 1, 2}, set()
        a, b = Peer(h, model, "a", 1), Peer(h, model, "b", 1)
        await a.open()
        await until(lambda: len(model.owner) == 1)
        await b.open()
        await until(lambda: len(model.owner) == 2)
        (theirs,) = model.pool("mine", a.stream_id)
        (b_own,) = model.pool("mine", b.stream_id)
        pulled = (await h.coordinator.Pull(pb.PullRequest(max_messages=1))).deliveries[0].msg_id
        lease = h.engine.ledger.lease_of(theirs)
        assert lease is not None and lease.holder is h.engine.ledger.holders[a.stream_id]
        before = (lease.holder, lease.deadline, lease.attempt, lease.record.offset)
        every = [pb.Settlement(msg_id=theirs, outcome=o) for o in pb.Outcome.values()]
        every.append(pb.Settlement(msg_id=pulled, outcome=pb.OUTCOME_ACK))  # a Pull lease
        answers = await b.round_trip(pb.StreamRequest(
            settlements=every, ack_msg_ids=[theirs, pulled],
            extend=pb.LeaseExtension(msg_ids=[theirs], extension=Duration(seconds=1))))
        assert answers == [(theirs, NOT_OWNER)] * len(pb.Outcome.values()) + [
            (pulled, NOT_OWNER), (theirs, NOT_OWNER), (pulled, NOT_OWNER), (theirs, NOT_OWNER)]
        acknowledged = await h.coordinator.Acknowledge(pb.AcknowledgeRequest(settlements=[
            pb.Settlement(msg_id=theirs, outcome=pb.OUTCOME_ACK)]))  # a stream's lease
        assert [r.status for r in acknowledged.results] == [NOT_OWNER]
        same = h.engine.ledger.lease_of(theirs)
        assert same is not None
        assert (same.holder, same.deadline, same.attempt, same.record.offset) == before
        assert h.engine.ledger.partitions[TopicPartition(TOPIC, 0)].offsets.commit_offset == 0
        assert await a.round_trip(pb.StreamRequest(ack_msg_ids=[theirs])) == []  # the owner can
        assert await b.round_trip(pb.StreamRequest(ack_msg_ids=[b_own])) == []
        acknowledged = await h.coordinator.Acknowledge(pb.AcknowledgeRequest(settlements=[
            pb.Settlement(msg_id=pulled, outcome=pb.OUTCOME_ACK)]))
        assert [r.status for r in acknowledged.results] == [OK]
        assert h.engine.ledger.partitions[TopicPartition(TOPIC, 0)].offsets.commit_offset == 3
