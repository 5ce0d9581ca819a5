"""The confluent-kafka edge: one consumer, on one thread, driven by commands.

Everything that touches the ``Consumer`` runs on the fetcher's own thread:
``consume()``, commits, pause/resume, the rebalance callbacks and ``close()``; so does
reading the fetched messages, which never leave it (the sink gets
:class:`~coordinator.kafka.records.Segment` objects). Other threads reach it only through
:meth:`Fetcher.submit`. Kafka errors are
translated here into log lines, health changes and project errors.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition

from coordinator.config import ConfigError, Problem
from coordinator.core.ledger import CommitPoint
from coordinator.core.model import TopicPartition
from coordinator.kafka.records import Segment, segments

log = logging.getLogger("coordinator.kafka")
rebalance_log = logging.getLogger("coordinator.rebalance")
commit_log = logging.getLogger("coordinator.commits")
client_log = logging.getLogger("coordinator.kafka.client")

POLL_TIMEOUT = 0.02
"""Seconds the fetcher waits for a record when none is ready: this bounds how late a command
(commit, pause) is served."""
PROBE_INTERVAL = 2.0
"""Seconds between reachability probes while the broker is unreachable."""
PROBE_TIMEOUT = 2.0
"""Seconds one metadata probe may take."""
COMMITTED_TIMEOUT = 10.0
"""Seconds to wait for the group's committed offsets when partitions are assigned."""
SYNC_COMMIT_TIMEOUT = 10.0
"""Librdkafka bounds a synchronous commit by its own timeouts; this bounds our wait for it."""
HANDOFF_BATCHES = 8
"""Fetched batches that may wait for the event loop at once; past that the fetcher waits.

This bounds the memory between the consumer thread and the loop when the loop is slower
than the broker: the pending cap then pauses partitions before more is fetched."""
BROKER_DOWN_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})
"""Client error codes that mean the broker cannot be reached."""
MISSING_TOPIC_CODES = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})
"""Error codes with which librdkafka reports a subscribed topic that does not exist (yet)."""


def take_ready(consumer: Consumer, most: int, timeout: float) -> list[Message]:
    """Up to ``most`` records: those ready now, or else the first to arrive within ``timeout``
    with whatever came with it.

    librdkafka's consume(n, timeout) returns early only once n records are ready, so a single
    call with a timeout would hold each record of a slow stream until that timeout.
    """
    records: list[Message] = consumer.consume(most, 0)
    if records:
        return records
    records = consumer.consume(1, timeout)
    if records and most > 1:
        records += consumer.consume(most - 1, 0)
    return records


class FetchSink(Protocol):
    """Where the fetcher sends what it learns. Every method is called on the fetcher thread."""

    def on_records(self, segments: list[Segment], count: int) -> None:
        """``count`` records fetched, as segments of consecutive records of one partition."""

    def on_assigned(self, parts: list[Assignment]) -> None:
        """Each new partition: its generation, committed offset and the commit's metadata."""

    def on_revoke(self, tps: list[TopicPartition], lost: bool) -> list[CommitPoint]:
        """Blocks (boundedly) until the partitions are released; returns the final commit."""
        ...

    def on_committed(self, points: list[CommitPoint], ok: bool) -> None: ...

    def on_sought(self, command: Seek, generation: int | None, error: str | None) -> None:
        """The answer to a :class:`Seek`: the partition's new generation, or why not."""

    def on_commit_latency(self, seconds: float) -> None:
        """How long one asynchronous commit took, from the request to the broker's answer."""

    def on_lag(self, lags: dict[TopicPartition, int]) -> None:
        """Consumer lag per assigned partition, from librdkafka's statistics (``-1``:
        unknown). Only with ``statistics.interval.ms`` set."""

    def on_health(self, serving: bool, reason: str) -> None: ...

    def on_stopped(self, error: BaseException | None) -> None:
        """The consumer is closed; ``error`` says why if it was not asked to stop."""


Assignment = tuple[TopicPartition, int, int | None, str | None]
"""(partition, generation, committed offset or None, the commit's metadata or None)."""


@dataclass
class Commit:
    points: list[CommitPoint]
    sync: bool = False
    done: Future[Any] | None = None


@dataclass
class Pause:
    points: list[tuple[TopicPartition, int]]
    """(partition, generation) pairs; a stale generation is ignored."""
    resume: bool = False
    done: Future[Any] | None = None
    """Set once the consumer has been told (or the points were stale): after a pause, no
    record of those partitions fetched later reaches ``consume()``."""


@dataclass(frozen=True)
class Seek:
    """Move the consumer of ``tp`` to ``offset``, if ``tp`` is still in ``generation``: the
    partition then starts a new generation (answered through ``FetchSink.on_sought``), and
    commits of the old one are dropped. Records fetched before the seek are discarded by
    librdkafka."""

    tp: TopicPartition
    generation: int
    offset: int


@dataclass
class StopFetching:
    """Pause everything now and everything assigned later; keep polling."""


@dataclass
class Resubscribe:
    """Subscribe to the topics now, after refreshing the metadata: the first subscription of a
    fetcher started with ``subscribe=False``, or again when some topics were just created, which
    librdkafka would only notice at its next periodic metadata refresh (5 minutes by default)."""


Command = Commit | Pause | Seek | StopFetching | Resubscribe


class Fetcher:
    """Runs one confluent-kafka consumer on a dedicated thread.

    Lifecycle: :meth:`start` once; :meth:`close` (idempotent) asks the thread to
    close the consumer, which leaves the group; :meth:`join` waits for it.
    ``submit`` is thread-safe; everything else is internal to the thread.
    """

    def __init__(
        self,
        config: dict[str, Any],
        topics: Sequence[str],
        sink: FetchSink,
        *,
        batch_size: int = 500,
        subscribe: bool = True,
    ) -> None:
        """``subscribe=False`` starts the consumer without a subscription: it probes the broker
        (and reports health) but joins no group and fetches nothing until a
        :class:`Resubscribe` command."""
        self._config = dict(config)
        self._topics = list(topics)
        self._subscribe_at_start = subscribe
        self._only_topic = topics[0] if len(topics) == 1 and not topics[0].startswith("^") \
            else None
        """The one topic every fetched message is from, when the subscription is one topic
        named outright: segments() then reads no message's topic."""
        self._sink = sink
        self._batch_size = batch_size
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lowwater-fetcher", daemon=True)
        self._generations = itertools.count(1)
        # Owned by the fetcher thread:
        self._assigned: dict[TopicPartition, int] = {}
        self._stopped_fetching = False
        self._serving: bool | None = None
        """None until the first probe has answered."""
        self._next_probe = 0.0
        self._outstanding: dict[tuple[TopicPartition, int], CommitPoint] = {}
        self._commit_sent: dict[tuple[TopicPartition, int], float] = {}
        """When each outstanding asynchronous commit was sent (monotonic)."""
        self._handed = 0
        """Records given to the sink; written by the fetcher thread only."""
        self._ingested = 0
        """Records the sink has taken in; written by the ingesting thread only."""
        self._room = threading.Event()
        self._created = threading.Event()
        self._create_error: KafkaException | None = None
        self._max_backlog = HANDOFF_BATCHES * batch_size
        self.error: BaseException | None = None

    # -- any thread ---------------------------------------------------------

    def start(self) -> None:
        """Starts the consumer thread once its consumer exists.

        Raises:
            ConfigError: librdkafka refused the configuration (an unknown
                property, a bad value); the message is librdkafka's, naming it.
        """
        self._thread.start()
        self._created.wait()
        if self._create_error is not None:
            self._thread.join()
            raise ConfigError(Problem("kafka", self._create_error.args[0].str()))

    def submit(self, command: Command) -> None:
        self._commands.put(command)

    def ingested(self, count: int) -> None:
        """The sink took ``count`` handed records in (call from one thread only)."""
        self._ingested += count
        # Only a cleared Event can have a waiter, and the fetcher clears it before it looks at
        # the counts again: skipping set() on a set Event (its Condition's lock and
        # notify_all, on every hand-off) loses no wake-up.
        if self._handed - self._ingested < self._max_backlog and not self._room.is_set():
            self._room.set()

    def close(self) -> None:
        self._closing.set()
        self._room.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- fetcher thread -------------------------------------------------------

    def _run(self) -> None:
        config = dict(self._config)
        config["error_cb"] = self._on_error
        config["on_commit"] = self._on_commit
        if config.get("statistics.interval.ms"):
            config["stats_cb"] = self._on_stats
        config.setdefault("logger", client_log)  # librdkafka's own log lines, through logging
        try:
            consumer = Consumer(config)
        except KafkaException as exc:
            self._create_error = exc
            return
        finally:
            self._created.set()
        try:
            if self._subscribe_at_start:
                self._subscribe(consumer)
            self._probe(consumer)
            while not self._closing.is_set():
                self._serve_commands(consumer)
                if not self._serving and time.monotonic() >= self._next_probe:
                    self._probe(consumer)
                if self._handed - self._ingested >= self._max_backlog:
                    # The loop is behind: wait for it instead of fetching more. Heartbeats go
                    # on in librdkafka's own thread; max.poll.interval.ms is minutes away.
                    self._room.clear()
                    if self._handed - self._ingested >= self._max_backlog:
                        self._room.wait(POLL_TIMEOUT)
                    continue
                records = take_ready(consumer, self._batch_size, POLL_TIMEOUT)
                if records:
                    self._deliver(records)
            self._serve_commands(consumer)
        except Exception as exc:  # reported to the runtime through on_stopped
            self.error = exc
            log.exception("the consumer thread failed")
        finally:
            self._close(consumer)
            self._sink.on_stopped(self.error)

    def _subscribe(self, consumer: Consumer) -> None:
        consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)

    def _deliver(self, records: list[Message]) -> None:
        error_of = type(records[0]).error  # map over it runs at C speed: see records.segments
        if not any(map(error_of, records)):  # the usual case (a KafkaError is always true; and
            good = records                   # a count of None would call KafkaError.__eq__,
        else:                                # which raises)
            good = []
            for msg in records:
                err = msg.error()
                if err is None:
                    good.append(msg)
                elif err.code() != KafkaError._PARTITION_EOF:
                    self._report_error(err)
        if good:
            self._set_serving(True, "records arrived")
            self._handed += len(good)
            self._sink.on_records(segments(good, self._only_topic), len(good))  # Messages end

    def _serve_commands(self, consumer: Consumer) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, Commit):
                self._commit(consumer, command)
            elif isinstance(command, Pause):
                self._pause(consumer, command)
            elif isinstance(command, Seek):
                self._seek(consumer, command)
            elif isinstance(command, Resubscribe):
                try:  # refreshes librdkafka's metadata cache, so the new topics are seen
                    consumer.list_topics(timeout=PROBE_TIMEOUT)
                except KafkaException as exc:
                    log.warning("metadata refresh before resubscribing failed: %s", exc)
                self._subscribe(consumer)
            else:
                self._stopped_fetching = True
                self._pause_all(consumer)

    def _current(self, points: list[CommitPoint]) -> list[CommitPoint]:
        """Drops points whose generation is no longer the partition's current one."""
        keep = [p for p in points if self._assigned.get(p.tp) == p.generation]
        if len(keep) != len(points):
            commit_log.info("dropped %d commit(s) of revoked generations", len(points) - len(keep))
        return keep

    def _commit(self, consumer: Consumer, command: Commit) -> None:
        points = self._current(command.points)
        ok = self._commit_points(consumer, points, command.sync) if points else True
        if command.done is not None:
            command.done.set_result(ok)

    def _commit_points(self, consumer: Consumer, points: list[CommitPoint], sync: bool) -> bool:
        offsets = [KafkaTopicPartition(p.tp.topic, p.tp.partition, p.offset, metadata=p.metadata)
                   for p in points]
        if not sync:
            sent = time.monotonic()
            for p in points:
                self._outstanding[(p.tp, p.offset)] = p
                self._commit_sent[(p.tp, p.offset)] = sent
            try:
                consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                self._commit_failed(points, exc)
                return False
            return True
        try:
            result = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._commit_failed(points, exc)
            return False
        failed = {(tp.topic, tp.partition) for tp in result or [] if tp.error is not None}
        ok_points = [p for p in points if (p.tp.topic, p.tp.partition) not in failed]
        if ok_points:
            self._sink.on_committed(ok_points, True)
        if failed:
            self._commit_failed([p for p in points if p not in ok_points], None)
        commit_log.debug("committed synchronously: %s", _describe(points))
        return not failed

    def _commit_failed(self, points: list[CommitPoint], exc: BaseException | None) -> None:
        commit_log.warning("commit of %s failed: %s", _describe(points), exc or "partition error")
        for p in points:
            self._outstanding.pop((p.tp, p.offset), None)
            self._commit_sent.pop((p.tp, p.offset), None)
        self._sink.on_committed(points, False)

    def _on_commit(self, err: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        ok: list[CommitPoint] = []
        bad: list[CommitPoint] = []
        sent: float | None = None
        for tp in partitions:
            key = (TopicPartition(tp.topic, tp.partition), tp.offset)
            point = self._outstanding.pop(key, None)
            if point is None:
                continue  # a synchronous commit, already reported
            sent = self._commit_sent.pop(key, sent)
            (bad if err is not None or tp.error is not None else ok).append(point)
        if sent is not None:
            self._sink.on_commit_latency(time.monotonic() - sent)
        if ok:
            self._sink.on_committed(ok, True)
        if bad:
            commit_log.warning("commit of %s failed: %s", _describe(bad), err)
            self._sink.on_committed(bad, False)

    def _on_stats(self, text: str) -> None:
        """librdkafka's statistics (JSON): the consumer lag of each assigned partition."""
        try:
            topics = json.loads(text).get("topics", {})
            lags = {
                TopicPartition(name, int(number)): int(part.get("consumer_lag", -1))
                for name, topic in topics.items()
                for number, part in topic.get("partitions", {}).items()
                if int(number) >= 0 and TopicPartition(name, int(number)) in self._assigned
            }
        except (ValueError, TypeError, AttributeError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)
            return
        self._sink.on_lag(lags)

    def _pause(self, consumer: Consumer, command: Pause) -> None:
        tps = [
            KafkaTopicPartition(tp.topic, tp.partition)
            for tp, gen in command.points
            if self._assigned.get(tp) == gen
        ]
        try:
            if not tps or (self._stopped_fetching and command.resume):
                return
            if command.resume:
                consumer.resume(tps)
                self._fetch_now(consumer, tps)
            else:
                consumer.pause(tps)
        except KafkaException as exc:
            log.warning("%s failed: %s", "resume" if command.resume else "pause", exc)
        finally:
            if command.done is not None:
                command.done.set_result(None)

    @staticmethod
    def _fetch_now(consumer: Consumer, tps: list[KafkaTopicPartition]) -> None:
        """Seeks each resumed partition to its own position, so that its next fetch starts now.

        librdkafka does not wake its broker thread on a resume: the partition's next fetch
        waited for the thread's next periodic turn, 0.8-0.9 s measured on Tansu (the same
        wait is reported against Kafka, confluent-kafka-go#630), while the workers drained the
        pending set to nothing. A seek starts the fetcher at once (15-20 ms measured). The
        pause dropped librdkafka's prefetched records, so the position (the offset after the
        last record ``consume()`` returned) is where the resumed fetch starts anyway. A
        partition without a position (nothing returned since its assignment or a seek) is
        left alone: a seek to that invalid offset would restart it from the committed one.
        """
        for tp in consumer.position(tps):
            if tp.error is None and tp.offset >= 0:
                consumer.seek(tp)

    def _seek(self, consumer: Consumer, command: Seek) -> None:
        tp = command.tp
        if self._assigned.get(tp) != command.generation:
            self._sink.on_sought(command, None, "the partition was reassigned meanwhile")
            return
        try:
            consumer.seek(KafkaTopicPartition(tp.topic, tp.partition, command.offset))
        except KafkaException as exc:
            self._sink.on_sought(command, None, exc.args[0].str())
            return
        generation = next(self._generations)
        self._assigned[tp] = generation
        rebalance_log.info("%s[%d] moved to offset %d (generation %d)", tp.topic, tp.partition,
                           command.offset, generation)
        self._sink.on_sought(command, generation, None)

    def _pause_all(self, consumer: Consumer) -> None:
        tps = [KafkaTopicPartition(tp.topic, tp.partition) for tp in self._assigned]
        if tps:
            consumer.pause(tps)

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        committed: dict[TopicPartition, tuple[int, str | None]] = {}
        try:
            for found in consumer.committed(partitions, timeout=COMMITTED_TIMEOUT):
                if found.offset >= 0 and found.error is None:
                    key = TopicPartition(found.topic, found.partition)
                    committed[key] = (found.offset, found.metadata)
        except KafkaException as exc:
            rebalance_log.warning("could not read committed offsets: %s", exc)
        parts: list[Assignment] = []
        for ktp in partitions:
            tp = TopicPartition(ktp.topic, ktp.partition)
            gen = next(self._generations)
            self._assigned[tp] = gen
            offset, metadata = committed.get(tp, (None, None))
            parts.append((tp, gen, offset, metadata))
        rebalance_log.info("assigned %s", ", ".join(f"{t}[{p}]" for (t, p), *_ in parts))
        self._sink.on_assigned(parts)
        consumer.assign(partitions)
        if self._stopped_fetching:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)  # a re-assigned partition may keep an old pause

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        self._release(consumer, partitions, lost=False)

    def _on_lost(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        self._release(consumer, partitions, lost=True)

    def _release(self, consumer: Consumer, partitions: list[KafkaTopicPartition], lost: bool) -> None:
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        tps = [tp for tp in tps if tp in self._assigned]
        what = "lost" if lost else "revoking"
        rebalance_log.info("%s %s", what, ", ".join(f"{t}[{p}]" for t, p in tps) or "nothing")
        if tps:
            final = self._sink.on_revoke(tps, lost)
            if final and not lost:
                self._commit_points(consumer, self._current(final), sync=True)
            for tp in tps:
                del self._assigned[tp]
        if lost:
            consumer.unassign()

    def _on_error(self, err: KafkaError) -> None:
        self._report_error(err)

    def _report_error(self, err: KafkaError) -> None:
        if err.code() in BROKER_DOWN_CODES:
            self._set_serving(False, f"broker unreachable: {err.str()}")
            self._next_probe = time.monotonic() + PROBE_INTERVAL
        elif err.code() in MISSING_TOPIC_CODES:
            # Not fatal and not a health problem: librdkafka keeps the subscription and
            # assigns the topic's partitions within seconds of its creation.
            log.warning("%s; waiting for it to be created (health is unaffected; other topics "
                        "are consumed meanwhile)", err.str())
        elif err.fatal():
            log.error("fatal Kafka error: %s", err.str())
            raise KafkaException(err)
        else:
            log.warning("Kafka error: %s", err.str())

    def _probe(self, consumer: Consumer) -> None:
        try:
            consumer.list_topics(timeout=PROBE_TIMEOUT)
        except KafkaException as exc:
            self._next_probe = time.monotonic() + PROBE_INTERVAL
            self._set_serving(False, f"cannot reach the broker: {exc}")
            return
        self._set_serving(True, "broker reachable")

    def _set_serving(self, serving: bool, reason: str) -> None:
        """Reports health on each change (the first report included), not on every probe."""
        if serving is self._serving:
            return
        self._serving = serving
        if serving:
            log.info("Kafka: %s", reason)
        else:
            log.warning("Kafka: %s; retrying every %.0fs", reason, PROBE_INTERVAL)
        self._sink.on_health(serving, reason)

    def _close(self, consumer: Consumer) -> None:
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the consumer failed: %s", exc)
        rebalance_log.info("consumer closed")


def _describe(points: list[CommitPoint]) -> str:
    return ", ".join(f"{p.tp.topic}[{p.tp.partition}]@{p.offset}" for p in points)


__all__ = ["Assignment", "Commit", "FetchSink", "Fetcher", "Pause", "Resubscribe", "StopFetching",
           "take_ready"]
