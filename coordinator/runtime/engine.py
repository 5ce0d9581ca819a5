"""The engine: the ledger's owner on the event loop, and the timers around it.

Every method runs on the event loop thread. The fetcher thread reaches the
engine only through the bridge in :mod:`coordinator.runtime.sidecar`; gRPC
servicers call it directly (they run on the same loop).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator.core.flow import GateChange
from coordinator.core.ledger import (
    NEVER,
    WHOLE_PARTITION,
    CommitPoint,
    Handoff,
    HandoffKind,
    Holder,
    Lease,
    Ledger,
    OperatorRefused,
    PartitionState,
)
from coordinator.core.model import Outcome, SettleStatus, TopicPartition
from coordinator.core.offsetmap import decode
from coordinator.core.records import LEASED, Run, leased_count, pending_records
from coordinator.kafka.fetcher import Assignment, Commit, Pause, Resubscribe, Seek
from coordinator.kafka.records import (
    HEADER_DUE,
    HEADER_FIRST_SEEN,
    HEADER_TIMESTAMP,
    Fetched,
    Payload,
    Retried,
    Segment,
    contents,
    origin,
    retried,
)
from coordinator.runtime.subscriptions import Lane, Router

acks_log = logging.getLogger("coordinator.acks")
flow_log = logging.getLogger("coordinator.flow")
rebalance_log = logging.getLogger("coordinator.rebalance")
handoff_log = logging.getLogger("coordinator.handoff")
retry_log = logging.getLogger("coordinator.retry")

TIMER_RESOLUTION = 0.05
"""Seconds between timer ticks: lease expiry and retry due times are this precise."""
DELIVERY_BATCH = 500
"""Most deliveries put into one stream message to a worker whose window (``max_in_flight``)
is at most four times this; a wider window gets larger messages (:func:`delivery_batch`)."""
MAX_DELIVERY_BATCH = 2000
"""Most deliveries put into one stream message, whatever the window."""


def delivery_batch(window: int) -> int:
    """Most deliveries to put into one stream message to a worker that holds up to ``window``
    records: a quarter of its window, from DELIVERY_BATCH to MAX_DELIVERY_BATCH.

    A stream message costs both sides about 50 µs of CPU whatever it holds (grpc.aio's write,
    read and completion-queue events), so large windows are served in larger messages; a
    quarter keeps about four in flight, so the worker is not left idle while its acks travel
    back. bench/sidecar.py, 1,000,000 records, three runs each: a window of 8,000 in messages of
    2,000 ran at 403,537 rec/s (median) against 340,740 for a window of 2,000 in messages of
    500, and 316,780 for 2,000 in messages of 2,000 (one message in flight at a time).
    """
    return max(DELIVERY_BATCH, min(MAX_DELIVERY_BATCH, window // 4))
PULL_MAX_MESSAGES = 1000
"""Cap on ``PullRequest.max_messages``."""
REBALANCES_KEPT = 20
"""Rebalance events kept for the status views."""
STATUS_MSG_IDS = 100
"""A worker's msg_ids GetStatus lists: the lowest this many (WorkerStatus.leased_msg_ids)."""
HANDOFF_RETRY_S = 1.0
"""Seconds before a hand-off whose produce failed is tried again (the record stays pending)."""
SEEK_TIMEOUT = 10.0
"""Seconds an operator's seek waits for the consumer thread to move the partition."""
PAUSE_TIMEOUT = 10.0
"""Seconds an operator's pause waits for the consumer thread to pause the partitions (it
serves commands between fetches: within 20 ms when all is well)."""


class SeekRefused(OperatorRefused):
    """:meth:`Engine.seek` did not move the partition; ``missing``: it is not assigned here."""


@dataclass(frozen=True)
class Sought:
    """What an operator's seek did."""

    previous_commit_offset: int | None
    """The offset the partition's next commit would have carried before the seek."""
    dropped: int
    """Pending records dropped unfinished: they are not delivered again unless fetched again."""


class CommandSink(Protocol):
    def submit(self, command: Commit | Pause | Resubscribe | Seek) -> None: ...


class HandoffSink(Protocol):
    """Where hand-offs are produced (:class:`coordinator.kafka.producer.HandoffProducer`)."""

    def send(self, topic: str, record: Fetched, *, origin: tuple[str, int, int], kind: str,
             reason: str, attempts: int, report: Callable[[str | None], None],
             extra: Sequence[tuple[str, bytes]] = ()) -> None: ...


@dataclass(frozen=True, slots=True)
class Revoking:
    partitions: list[TopicPartition]
    msg_ids: list[int]
    deadline: float
    """Seconds from now."""


@dataclass(frozen=True, slots=True)
class Draining:
    deadline: float
    """Seconds from now."""


Notice = Revoking | Draining


class Session:
    """One worker stream as the engine sees it. Owned by the event loop."""

    __slots__ = ("delivered", "drained", "holder", "notices", "rejected", "unsent_bytes", "wake",
                 "writes")

    def __init__(self, holder: Holder) -> None:
        self.holder = holder
        self.wake = asyncio.Event()
        """Set when the stream's writer may have something to send."""
        self.notices: list[Notice] = []
        self.rejected: list[tuple[int, SettleStatus]] = []
        """Settlements not accepted, to report on the stream."""
        self.drained = asyncio.Event()
        """Set when the writer has taken answers from ``rejected``."""
        self.unsent_bytes = 0
        """Size of the message being written and not yet taken by the transport (0: none)."""
        self.delivered = 0
        self.writes = 0
        """Deliveries and stream messages sent (of every kind): their ratio is the batching
        achieved."""

    def take_notices(self) -> list[Notice]:
        notices, self.notices = self.notices, []
        return notices

    @property
    def stream_id(self) -> str:
        return self.holder.name


@dataclass(frozen=True, slots=True)
class PartitionView:
    tp: TopicPartition
    generation: int
    committed: int | None
    commit_offset: int | None
    lowest_pending: int | None
    pending: int
    in_flight: int
    oldest_age: float
    paused: bool
    lag: int | None = None
    """From librdkafka's statistics, when they are on."""


@dataclass(frozen=True, slots=True)
class RebalanceView:
    at: float
    """Epoch seconds."""
    event: str
    """``assigned``, ``revoked`` or ``lost``."""
    partitions: list[TopicPartition]


@dataclass(frozen=True, slots=True)
class PendingView:
    """One pending record, for Admin/ListPending."""

    offset: int
    state: str
    attempts: int
    msg_id: int
    worker_id: str
    pending_for: float
    lease_left: float | None


@dataclass(frozen=True, slots=True)
class HolderView:
    name: str
    worker_id: str
    in_flight: int
    max_messages: int
    in_flight_bytes: int
    max_bytes: int
    msg_ids: list[int]


@dataclass(frozen=True, slots=True)
class StatusView:
    partitions: list[PartitionView]
    holders: list[HolderView]
    buffered: int
    rebalances: list[RebalanceView] = field(default_factory=list)


Settlement = tuple[int, Outcome | None, float | None, str]
"""(msg_id, outcome or None when unspecified, retry delay in seconds or None, reason)."""


class Engine:
    """Owns the :class:`Ledger` on the event loop and drives its timers and commits.

    Lifecycle: :meth:`run` is the timer task (cancel it to stop);
    :meth:`drain` stops deliveries and waits for outstanding leases.
    """

    def __init__(
        self,
        ledger: Ledger,
        commands: CommandSink,
        *,
        router: Router | None = None,
        handoffs: HandoffSink | None = None,
        commit_interval: float = 1.0,
        rebalance_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        leaving: Callable[[list[PartitionState]], Awaitable[object]] | None = None,
        max_leases_per_worker: int | None = None,
    ) -> None:
        """Without a ``router`` every topic gets the ledger's policy and no TTL; without
        ``handoffs`` a hand-off with a topic is an error (the sidecar always passes one when
        a subscription names a topic). ``leaving`` is awaited on a revoke, once the wait for
        settlements is over and before the ledger lets the partitions go (the pending-set
        writer's last snapshot); it must bound its own wait. ``max_leases_per_worker`` cuts
        what a stream asks to hold in flight, and what a Pull caller may hold (None: no cap)."""
        self.ledger = ledger
        self._max_leases = max_leases_per_worker
        self._commands = commands
        self._router = router
        self._handoffs = handoffs
        self._wall = wall_clock
        self._leaving = leaving
        self.handoffs_in_flight = 0
        """Hand-offs sent to a topic and not yet confirmed: drain waits for them too."""
        self._commit_interval = commit_interval
        self._rebalance_timeout = rebalance_timeout
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._stream_ids = itertools.count(1)
        self._changed = asyncio.Event()
        """Set whenever leases are released: what revoke and drain wait on."""
        self._ready = asyncio.Event()
        """Set whenever records may be ready: what Pull waits on."""
        self._draining = False
        self.counters: dict[str, int] = dict.fromkeys(
            ("fetched", "ignored", "delivered", "redelivered", "settled", "rejected", "lapsed",
             "dropped_dead_letters", "streams_opened", "streams_closed", "assigned", "revoked",
             "lost", "commits_ok", "commits_failed", "skipped", "sought"), 0
        )
        """Totals since start, read by the metrics collector (on this loop)."""
        self.handed_off: dict[tuple[HandoffKind, str], int] = {
            (kind, name): 0 for kind in HandoffKind
            for name in (router.subscriptions if router is not None else ())}
        """Records that left the flow since start, per (kind, subscription): expired,
        dead-lettered (dropped ones too) or handed to a retry topic. A subscription is named by
        its ``topic`` setting as written (a topic, or a ``^regex``), so a pattern's topics share
        one count; without a router, by the record's topic. Counted once per hand-off, when it
        is decided, not when the producer confirms it."""
        self.settled_by: dict[Outcome | None, int] = {}
        """Accepted settlements per outcome (None: unspecified)."""
        self.rejected_by: dict[SettleStatus, int] = {}
        """Settlements not accepted, per answer."""
        self.lag: dict[TopicPartition, int] = {}
        """Consumer lag per partition from librdkafka's statistics, when they are on."""
        self.rebalances: deque[RebalanceView] = deque(maxlen=REBALANCES_KEPT)
        """The latest rebalance events, for Admin/GetStatus and ``lowwater top``."""
        self._holds: dict[TopicPartition, tuple[int, float, asyncio.TimerHandle]] = {}
        """Retry partitions paused until their fetched records are due: (generation, until,
        timer)."""
        self._seeks: dict[Seek, tuple[asyncio.Future[Sought], str, int | None]] = {}
        """Seeks sent to the consumer thread and not answered yet: (their answer, the
        operator's reason, the commit offset before)."""
        self.operator_paused: set[TopicPartition] = set()
        """Partitions an operator paused (Admin/PausePartitions): fetching stays paused, across
        reassignments to this sidecar, until Admin/ResumePartitions."""

    # -- from the fetcher (via the bridge) ------------------------------------

    def intake(self, segments: list[Segment]) -> None:
        """Adds fetched records to the ledger, with their expiry if their subscription has a
        TTL. A record back from a retry topic stands for the record it retries, and waits
        until it is due; its retry partition pauses meanwhile.

        Each record's payload is a compact :data:`~coordinator.kafka.records.Fetched` (or a
        :class:`~coordinator.kafka.records.Retried`), read out of its confluent-kafka message
        on the consumer thread (:func:`~coordinator.kafka.records.segments`). A segment of a
        partition whose records have nothing of their own (no TTL, no ordering, no retry) goes
        in as one run (:meth:`Ledger.add_run`)."""
        now = self._clock()
        ledger = self.ledger
        fetched = ignored = 0
        for seg in segments:
            count = len(seg.offsets)
            fetched += count
            t = seg.topic
            part = ledger.partitions.get(TopicPartition(t, seg.partition))
            lane = self._router.lane(t) if self._router is not None else None
            plain = lane is None or (not lane.expires and lane.subscription.ordering == "unordered")
            if part is None:
                ignored += count
            elif plain and (self._router is None or self._router.retry_tier(t) is None):
                if not ledger.add_run(part, seg.offsets, seg.columns, seg.sizes, now):
                    ignored += count
            else:
                ignored += self._intake_one_by_one(part, lane, seg, now)
        self.counters["fetched"] += fetched - ignored
        self.counters["ignored"] += ignored
        self._after_change()

    def _intake_one_by_one(self, part: PartitionState, lane: Lane | None, seg: Segment,
                           now: float) -> int:
        """:meth:`intake` for records of ``part`` with something of their own: a TTL, an
        ordering key, or a retry-topic's due time. Returns how many were ignored."""
        to_local = now - self._wall()  # epoch seconds + to_local = the ledger's clock
        add = self.ledger.add_to
        expiring = lane if lane is not None and lane.expires else None
        ordering = "unordered" if lane is None else lane.subscription.ordering
        by_key = ordering == "key"
        run_key = WHOLE_PARTITION if ordering == "partition" else None
        topic, partition = part.tp
        tier = None if self._router is None else self._router.retry_tier(topic)
        ignored = 0
        payload: Payload
        for i, offset in enumerate(seg.offsets):
            record = payload = seg.payload(i)
            key = record[0]
            size = seg.sizes[i]
            attempts, not_before = 0, 0.0
            if tier is not None:
                back = retried(record)
                if back is None:
                    retry_log.warning("%s[%d]@%d has no valid lowwater retry headers; "
                                      "delivering it as it is", topic, partition, offset)
                else:
                    payload, record, attempts = back, back.record, back.attempts
                    not_before = back.due_ms / 1000.0 + to_local
                    if not_before > now:
                        self._hold(part.tp, part.generation, not_before)
            expires = NEVER if expiring is None else expiring.expiry_ms(record) / 1000.0 + to_local
            okey = key if by_key else run_key
            if not add(part, offset, size, payload, now, expires, okey,
                       attempts=attempts, not_before=not_before):
                ignored += 1
        return ignored

    def _hold(self, tp: TopicPartition, generation: int, until: float) -> None:
        """Pauses a retry partition until ``until`` (the ledger's clock): the records after a
        record not yet due are due later still, so fetching them would only fill memory."""
        held = self._holds.get(tp)
        if held is not None:
            if held[0] == generation and held[1] >= until:
                return
            held[2].cancel()
        if held is None or held[0] != generation:
            retry_log.debug("pausing %s until its retries are due", tp)
            self._commands.submit(Pause([(tp, generation)]))
        timer = asyncio.get_running_loop().call_later(
            max(0.0, until - self._clock()), self._unhold, tp, generation)
        self._holds[tp] = (generation, until, timer)

    def _unhold(self, tp: TopicPartition, generation: int) -> None:
        held = self._holds.get(tp)
        if held is None or held[0] != generation:  # a newer generation holds it now
            return
        del self._holds[tp]
        part = self.ledger.partitions.get(tp)
        if part is not None and part.generation == generation and not part.gate.paused \
                and tp not in self.operator_paused:
            self._commands.submit(Pause([(tp, generation)], resume=True))

    def assigned(self, parts: list[Assignment]) -> None:
        """New partitions: each starts a generation at its committed offset, and skips what
        the commit's offset map says the previous owner finished above it."""
        router = self._router
        self.counters["assigned"] += len(parts)
        if parts:
            self.rebalances.append(RebalanceView(self._wall(), "assigned", [p[0] for p in parts]))
        for tp, generation, committed, metadata in parts:
            finished = decode(metadata, committed)
            if finished is not None:
                rebalance_log.info("%s[%d]: the last commit's offset map lists %d finished "
                                   "offset(s) above %d; they will be skipped", tp.topic,
                                   tp.partition, len(finished), committed)
            elif metadata:
                rebalance_log.warning("%s[%d]: ignoring commit metadata that is no lowwater "
                                      "offset map for offset %s", tp.topic, tp.partition,
                                      committed)
            if router is None:
                self.ledger.assign(tp, committed, generation, finished=finished)
                continue
            lane = router.lane(tp.topic)
            self.ledger.assign(tp, committed, generation, lane.retry, finished=finished,
                               at_most_once=lane.subscription.guarantee == "at_most_once")
        again = [(tp, generation) for tp, generation, _, _ in parts if tp in self.operator_paused]
        if again:
            flow_log.info("pausing %s again: an operator paused them", again)
            self._commands.submit(Pause(again))

    async def revoke(self, tps: list[TopicPartition], lost: bool) -> list[CommitPoint]:
        """Stops dispatch from ``tps``, waits boundedly for their leases, releases them."""
        self.counters["lost" if lost else "revoked"] += len(tps)
        if tps:
            self.rebalances.append(RebalanceView(self._wall(), "lost" if lost else "revoked",
                                                 list(tps)))
        for tp in tps:
            self.lag.pop(tp, None)
        notify = self.ledger.begin_revoke(tps)
        timeout = 0.0 if lost or self._draining else self._rebalance_timeout
        for name, msg_ids in notify.items():
            session = self._sessions.get(name)
            if session is not None:
                session.notices.append(Revoking(list(tps), msg_ids, timeout))
                session.wake.set()
        waited = await self._wait(lambda: self.ledger.in_flight(tps) == 0, timeout)
        if not waited:
            out = self.ledger.in_flight(tps)
            if lost:
                rebalance_log.warning("lost partitions: %d lease(s) released unsettled", out)
            else:
                rebalance_log.warning(
                    "revoke: %d lease(s) still out after %.1fs; their records go to the next "
                    "owner", out, timeout)
        if self._leaving is not None and not lost:  # lost ones may have a new owner already
            parts = self.ledger.partitions
            await self._leaving([parts[tp] for tp in tps if tp in parts])
        final = self.ledger.revoke(tps)
        self._after_change()
        return [] if lost else final

    def skip(self, tp: TopicPartition, offset: int, reason: str) -> None:
        """An operator skips a poison record. Raises SkipRefused (see :meth:`Ledger.skip`)."""
        self.ledger.skip(tp, offset)
        self.counters["skipped"] += 1
        acks_log.warning("operator skipped %s[%d]@%d without processing it: %s",
                         tp.topic, tp.partition, offset, reason or "no reason given")
        self._after_change()

    async def seek(self, tp: TopicPartition, offset: int, reason: str) -> Sought:
        """An operator moves ``tp``'s consumer to ``offset``: forward past records no one
        should process, or back to process some again. The partition's pending records are
        dropped unfinished and their leases released; the next commit carries ``offset``.

        Raises:
            SeekRefused: ``tp`` is not assigned here (``missing``), is being revoked, the
                sidecar is draining, another seek of it is under way, or the consumer
                refused or did not answer within :data:`SEEK_TIMEOUT`.
        """
        if self._draining:
            raise SeekRefused("the sidecar is shutting down")
        part = self.ledger.partitions.get(tp)
        if part is None or part.revoking:
            raise SeekRefused("the partition is not assigned here", missing=True)
        command = Seek(tp, part.generation, offset)
        if any(pending.tp == tp for pending in self._seeks):
            raise SeekRefused("another seek of this partition is under way")
        answer: asyncio.Future[Sought] = asyncio.get_running_loop().create_future()
        self._seeks[command] = (answer, reason, part.offsets.commit_offset)
        self._commands.submit(command)
        try:  # shielded: the seek still applies if the caller gives up
            return await asyncio.wait_for(asyncio.shield(answer), SEEK_TIMEOUT)
        except TimeoutError:
            raise SeekRefused(f"the consumer did not move the partition within "
                              f"{SEEK_TIMEOUT:.0f}s") from None

    def sought(self, command: Seek, generation: int | None, error: str | None) -> None:
        """The consumer thread's answer to a :class:`Seek`."""
        answer, reason, before = self._seeks.pop(command, (None, "", None))
        tp = command.tp
        dropped = None if generation is None else self.ledger.seek(
            tp, command.generation, generation, command.offset)
        if generation is None or dropped is None:
            why = error or "the partition was reassigned meanwhile"
            if answer is not None and not answer.done():
                answer.set_exception(SeekRefused(why))
            return
        self.counters["sought"] += 1
        held = self._holds.pop(tp, None)
        if held is not None:
            held[2].cancel()
        if tp not in self.operator_paused:  # the old generation may have paused it (its cap)
            self._commands.submit(Pause([(tp, generation)], resume=True))
        flow_log.warning("operator moved %s[%d] from offset %s to %d, dropping %d pending "
                         "record(s) unfinished: %s", tp.topic, tp.partition, before,
                         command.offset, dropped, reason or "no reason given")
        self._after_change()
        if answer is not None and not answer.done():
            answer.set_result(Sought(before, dropped))

    async def pause(self, tps: Iterable[TopicPartition]) -> list[TopicPartition]:
        """An operator pauses fetching from ``tps``; returns those not assigned here (they
        are paused too, should they be assigned later).

        Returns once the consumer thread has paused them (at most PAUSE_TIMEOUT), so
        that a record produced after the call is not fetched: the consumer thread serves
        commands between fetches, and a fetch returning meanwhile would bring it."""
        tps = list(dict.fromkeys(tps))
        self.operator_paused.update(tps)
        parts = self.ledger.partitions
        points = [(tp, parts[tp].generation) for tp in tps if tp in parts]
        if points:
            flow_log.info("pausing %s (operator)", points)
            done: Future[Any] = Future()
            self._commands.submit(Pause(points, done=done))
            try:
                await asyncio.wait_for(asyncio.wrap_future(done), PAUSE_TIMEOUT)
            except TimeoutError:
                flow_log.warning("the consumer thread has not paused %s after %.0f s",
                                 points, PAUSE_TIMEOUT)
        return [tp for tp in tps if tp not in parts]

    def resume(self, tps: Iterable[TopicPartition]) -> list[TopicPartition]:
        """An operator resumes fetching from ``tps``; returns those not assigned here. A
        partition at its pending cap, or holding its retries, resumes once that clears."""
        tps = list(dict.fromkeys(tps))
        self.operator_paused.difference_update(tps)
        parts = self.ledger.partitions
        points = [(tp, parts[tp].generation) for tp in tps if tp in parts
                  and not parts[tp].gate.paused and tp not in self._holds]
        if points:
            flow_log.info("resuming %s (operator)", points)
            self._commands.submit(Pause(points, resume=True))
        return [tp for tp in tps if tp not in parts]

    def lags(self, lags: dict[TopicPartition, int]) -> None:
        """Consumer lag from librdkafka's statistics, for the partitions assigned here."""
        self.lag = {tp: lag for tp, lag in lags.items() if tp in self.ledger.partitions}

    def committed(self, points: list[CommitPoint], ok: bool) -> None:
        self.counters["commits_ok" if ok else "commits_failed"] += len(points)
        for point in points:
            self.ledger.committed(point, ok)

    # -- from the servicers -------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def stream_count(self) -> int:
        """Worker streams open now."""
        return len(self._sessions)

    def open_session(self, worker_id: str, max_messages: int, max_bytes: int) -> Session:
        """Registers a worker stream. Raises ValueError for bad limits."""
        name = f"stream-{next(self._stream_ids)}"
        session = Session(self.ledger.open_holder(name, worker_id, self._capped(max_messages),
                                                  max_bytes))
        self._sessions[name] = session
        self.counters["streams_opened"] += 1
        session.wake.set()
        return session

    def close_session(self, session: Session) -> None:
        """Ends a worker stream; its leases are redelivered at once. Idempotent."""
        if self._sessions.pop(session.stream_id, None) is None:
            return
        self.counters["streams_closed"] += 1
        redelivered = self.ledger.close_holder(session.stream_id, self._clock())
        if redelivered:
            acks_log.info("%s closed with %d lease(s); redelivering them",
                          session.stream_id, redelivered)
        self._after_change()

    def _capped(self, max_messages: int) -> int:
        cap = self._max_leases
        if cap is None or max_messages <= cap:
            return max_messages
        flow_log.info("a worker asked for %d in flight; max_leases_per_stream allows %d",
                      max_messages, cap)
        return cap

    def set_flow(self, session: Session, max_messages: int, max_bytes: int) -> None:
        session.holder.credits.resize(self._capped(max_messages), max_bytes)
        session.wake.set()

    def lease(self, holder: Holder, limit: int = DELIVERY_BATCH) -> list[Lease | Run]:
        """Leases up to ``limit`` records to ``holder``: see :meth:`Ledger.lease`."""
        if self._draining:
            return []
        leases = self.ledger.lease(holder, self._clock(), limit)
        if leases:
            counters = self.counters
            counters["delivered"] += leased_count(leases)
            counters["redelivered"] += sum(1 for lease in leases if lease.attempt > 1)
        return leases

    def settle(self, holder: Holder | None, settlements: Iterable[Settlement]) -> list[
        tuple[int, SettleStatus]
    ]:
        """Applies settlements; returns the (msg_id, status) of each one not accepted."""
        now = self._clock()
        settle = self.ledger.settle
        rejected: list[tuple[int, SettleStatus]] = []
        ok = SettleStatus.OK
        count = 0
        by = self.settled_by
        for msg_id, outcome, delay, reason in settlements:
            count += 1
            status = settle(holder, msg_id, outcome, delay, now, reason)
            if status is not ok:
                rejected.append((msg_id, status))
            else:
                by[outcome] = by.get(outcome, 0) + 1
        self._count_settled(count, rejected)
        self._after_change()
        return rejected

    def _count_settled(self, count: int, rejected: list[tuple[int, SettleStatus]]) -> None:
        self.counters["settled"] += count - len(rejected)
        if rejected:
            self.counters["rejected"] += len(rejected)
            by = self.rejected_by
            for _, status in rejected:
                by[status] = by.get(status, 0) + 1
            acks_log.info("rejected %d of %d settlement(s): %s", len(rejected), count,
                          ", ".join(f"{m}={s.name}" for m, s in rejected[:10]))

    def ack(self, holder: Holder, msg_ids: Collection[int]) -> list[tuple[int, SettleStatus]]:
        """The packed fast path: ACK each of ``msg_ids``; returns the ones not accepted."""
        return self._acked(len(msg_ids), self.ledger.ack_many(holder, msg_ids))

    def ack_ranges(self, holder: Holder, ranges: list[tuple[int, int]]) -> list[
        tuple[int, SettleStatus]
    ]:
        """ACK the msg_ids of each (first, count) of ``ranges``; returns the ones not accepted."""
        return self._acked(sum(count for _, count in ranges),
                           self.ledger.ack_ranges(holder, ranges))

    def _acked(self, count: int, rejected: list[tuple[int, SettleStatus]]) -> list[
        tuple[int, SettleStatus]
    ]:
        self._count_settled(count, rejected)
        self.settled_by[Outcome.ACK] = self.settled_by.get(Outcome.ACK, 0) + count - len(rejected)
        self._after_change()
        return rejected

    def extend(self, holder: Holder, msg_ids: Iterable[int], extension: float | None) -> list[
        tuple[int, SettleStatus]
    ]:
        now = self._clock()
        out = [(m, self.ledger.extend(holder, m, extension, now)) for m in msg_ids]
        return [(m, s) for m, s in out if s is not SettleStatus.OK]

    async def pull(self, worker_id: str, max_messages: int, wait: float) -> list[Lease | Run]:
        limit = min(max(max_messages, 1), PULL_MAX_MESSAGES)
        deadline = self._clock() + wait
        while True:
            self._ready.clear()
            # Looked up again after each wait: an idle Pull holder may have been dropped.
            holder = self.ledger.pull_holder(worker_id, self._max_leases)
            leases = self.lease(holder, limit)
            remaining = deadline - self._clock()
            if leases or remaining <= 0 or self._draining:
                return leases
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except TimeoutError:
                return []

    def status(self) -> StatusView:
        now = self._clock()
        parts = []
        for part in self.ledger.partitions.values():
            lowest = part.offsets.lowest_pending
            oldest = part.records[lowest].fetched_at if lowest is not None else now
            parts.append(PartitionView(
                part.tp, part.generation, part.committed, part.offsets.commit_offset, lowest,
                len(part.records), part.in_flight, now - oldest,
                part.gate.paused or part.tp in self.operator_paused or part.tp in self._holds,
                self.lag.get(part.tp),
            ))
        holders = [
            HolderView(h.name, h.worker_id, h.credits.messages, h.credits.max_messages,
                       h.credits.bytes, h.credits.max_bytes,
                       self.ledger.holder_msg_ids(h, STATUS_MSG_IDS))
            for h in self.ledger.holders.values()
        ]
        return StatusView(sorted(parts, key=lambda p: p.tp), holders, self.ledger.ready_count,
                          list(self.rebalances))

    def pending_page(self, tp: TopicPartition, after: int, limit: int) -> tuple[
        list[PendingView], int, bool
    ] | None:
        """Up to ``limit`` pending records of ``tp`` above offset ``after``, lowest first;
        with the partition's pending count and whether more follow. None: not assigned."""
        part = self.ledger.partitions.get(tp)
        if part is None or part.revoked:
            return None
        now = self._clock()
        out: list[PendingView] = []
        more = False
        for offset, rec in pending_records(part):  # in fetch order: increasing offsets
            if offset <= after:
                continue
            if len(out) == limit:
                more = True
                break
            lease = rec.lease if rec.state is LEASED else None
            out.append(PendingView(
                offset, rec.state.value, rec.attempt, 0 if lease is None else lease.msg_id,
                "" if lease is None else lease.holder.worker_id, now - rec.fetched_at,
                None if lease is None else lease.deadline - now))
        return out, len(part.records), more

    # -- lifecycle ----------------------------------------------------------

    async def run(self) -> None:
        """The timer task: lease expiry and due retries every TIMER_RESOLUTION, and commits
        every ``commit_interval`` on a schedule of their own (at a multiple of the tick, a
        100 ms interval came every 100 to 150 ms, and anything under 50 ms every 50 ms)."""
        interval = self._commit_interval
        now = self._clock()
        next_tick, next_commit = now + TIMER_RESOLUTION, now + interval
        while True:
            await asyncio.sleep(max(0.0, min(next_tick, next_commit) - self._clock()))
            now = self._clock()
            if now >= next_tick:
                next_tick = now + TIMER_RESOLUTION
                lapsed = self.ledger.tick(now)
                if lapsed:
                    self.counters["lapsed"] += lapsed
                    acks_log.info("%d lease(s) expired; redelivering", lapsed)
                self._after_change()
            if now >= next_commit:
                next_commit += interval  # a steady rate; after a stall, no burst to catch up
                if next_commit <= now:
                    next_commit = now + interval
                self.commit()
                self.ledger.drop_idle_pull_holders()

    def commit(self) -> None:
        """Hands every advanced commit point to the fetcher, asynchronously."""
        points = self.ledger.commit_points()
        if points:
            self._commands.submit(Commit(points))

    async def drain(self, timeout: float) -> bool:
        """Stops all deliveries, tells the workers, waits for every lease to be settled."""
        self._draining = True
        for session in self._sessions.values():
            session.notices.append(Draining(timeout))
            session.wake.set()
        self._ready.set()
        done = await self._wait(
            lambda: self.ledger.leased == 0 and self.handoffs_in_flight == 0, timeout)
        if not done:
            acks_log.warning("drain: %d lease(s) and %d hand-off(s) still out after %.1fs",
                             self.ledger.leased, self.handoffs_in_flight, timeout)
        return done

    async def final_commit(self) -> bool:
        """Commits every advanced partition synchronously; True when the broker took it."""
        points = self.ledger.commit_points()
        if not points:
            return True
        done: Future[Any] = Future()
        self._commands.submit(Commit(points, sync=True, done=done))
        return bool(await asyncio.wrap_future(done))

    # -- internals ------------------------------------------------------------

    def _after_change(self) -> None:
        """Applies gate changes and handoffs, and wakes whoever may now have work."""
        ledger = self.ledger
        changes = ledger.take_gate_changes()
        if changes:
            self._apply_gates(changes)
        for handoff in ledger.take_handoffs():
            self._hand_off(handoff)
        self._changed.set()
        if ledger.ready_count:
            self._ready.set()
            for session in self._sessions.values():
                if session.holder.credits.messages < session.holder.credits.max_messages:
                    session.wake.set()

    def _hand_off(self, handoff: Handoff) -> None:
        """Sends a dead-lettered or expired record to its subscription's topic; the record is
        finished when the topic has it. Without a topic it is finished at once: an expired
        record is counted, a dead letter is counted and dropped, with a warning."""
        rec = handoff.record
        tp = rec.part.tp
        lane = self._router.lane(tp.topic) if self._router is not None else None
        sub = None if lane is None else lane.subscription
        kind = handoff.kind
        counted = (kind, tp.topic if sub is None else sub.topic)
        by = self.handed_off
        by[counted] = by.get(counted, 0) + 1
        if kind is HandoffKind.RETRY:
            assert lane is not None  # only a lane's policy has retry tiers
            self._send_handoff(handoff, lane.retry_topics[handoff.delay])
            return
        expired = kind is HandoffKind.EXPIRED
        topic = None if sub is None else sub.expired_topic if expired else sub.dead_letter_topic
        if topic is None:
            if not expired:
                self.counters["dropped_dead_letters"] += 1
                handoff_log.warning("dropping dead letter %s[%d]@%d (%s): %s has no "
                                    "dead_letter_topic", tp.topic, tp.partition, rec.offset,
                                    handoff.reason, tp.topic)
            self.ledger.finish_handoff(rec)
            return
        self._send_handoff(handoff, topic)

    def _send_handoff(self, handoff: Handoff, topic: str) -> None:
        self.handoffs_in_flight += 1
        self._produce(handoff, topic)

    def _produce(self, handoff: Handoff, topic: str) -> None:
        """Produces until the topic has the record, or its partition is gone."""
        rec = handoff.record

        def report(error: str | None) -> None:  # on the loop
            if error is not None and not rec.part.revoked:
                handoff_log.error("hand-off of %s[%d]@%d to %s failed (%s); retrying in %.0fs",
                                  rec.part.tp.topic, rec.part.tp.partition, rec.offset, topic,
                                  error, HANDOFF_RETRY_S)
                asyncio.get_running_loop().call_later(
                    HANDOFF_RETRY_S, self._produce, handoff, topic)
                return
            self.handoffs_in_flight -= 1
            if error is None:
                self.ledger.finish_handoff(rec)  # a no-op if its partition was revoked meanwhile
            self._after_change()

        if self._handoffs is None:
            raise RuntimeError(f"a hand-off to {topic} needs a producer")
        payload: Payload = rec.payload  # type: ignore[assignment]  # what intake put there
        self._handoffs.send(topic, contents(payload),
                            origin=origin(payload, rec.part.tp, rec.offset),
                            kind=handoff.kind.value, reason=handoff.reason, attempts=rec.attempt,
                            report=report, extra=self._retry_headers(handoff))

    def _retry_headers(self, handoff: Handoff) -> list[tuple[str, bytes]]:
        """When a retry is due, when its record was first fetched and the record's timestamp
        (the TTL counts from it when the retry comes back), in epoch milliseconds."""
        if handoff.kind is not HandoffKind.RETRY:
            return []
        rec, wall, now = handoff.record, self._wall(), self._clock()
        payload: Payload = rec.payload  # type: ignore[assignment]  # what intake put there
        first_seen = (payload.first_seen_ms if isinstance(payload, Retried)
                      and payload.first_seen_ms else (wall - (now - rec.fetched_at)) * 1000.0)
        headers = [(HEADER_DUE, str(int((wall + handoff.delay) * 1000.0)).encode()),
                   (HEADER_FIRST_SEEN, str(int(first_seen)).encode())]
        timestamp_ms = contents(payload)[3]
        if timestamp_ms is not None:
            headers.append((HEADER_TIMESTAMP, str(timestamp_ms).encode()))
        return headers

    def _apply_gates(self, changes: list[tuple[TopicPartition, GateChange]]) -> None:
        last = dict(changes)  # a partition that paused and resumed in one batch ends resumed
        parts = self.ledger.partitions
        for change in GateChange:
            points = [(tp, parts[tp].generation) for tp, c in last.items()
                      if c is change and tp in parts
                      and not (change is GateChange.RESUME
                               and (tp in self._holds or tp in self.operator_paused))]
            if points:
                flow_log.info("%s %s", "pausing (pending cap reached)" if change is GateChange.PAUSE
                              else "resuming (below the resume mark)", points)
                self._commands.submit(Pause(points, resume=change is GateChange.RESUME))

    async def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = self._clock() + timeout
        while not done():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, TIMER_RESOLUTION * 4))
            except TimeoutError:
                pass
        return True


