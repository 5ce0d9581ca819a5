"""The hand-off producer: dead-lettered, expired and retried records go to their topics.

One idempotent confluent-kafka producer with its own thread, which serves the
delivery reports. ``send`` is thread-safe and never blocks; each report is
handed to the caller's callback on the event loop (through ``post``). A record
handed off stays pending in the ledger until its report says the topic has it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from coordinator.kafka.records import (
    HEADER_ATTEMPTS,
    HEADER_GROUP,
    HEADER_KIND,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
    Fetched,
)

log = logging.getLogger("coordinator.handoff")

POLL_TIMEOUT = 0.1
"""Seconds one ``poll()`` for delivery reports may wait."""

Report = Callable[[str | None], None]
"""Called with None when the topic has the record, or with the error."""


class HandoffProducer:
    """Produces records to dead-letter, expired and retry topics; reports each delivery.

    Lifecycle: :meth:`start`, then :meth:`send` from any thread; :meth:`close`
    flushes (boundedly) and stops the report thread.
    """

    def __init__(self, config: dict[str, Any], group: str,
                 post: Callable[..., object]) -> None:
        """``post(fn, arg)`` runs ``fn(arg)`` on the event loop (``call_soon_threadsafe``)."""
        self._producer = Producer({**config, "error_cb": self._on_error})
        self._group = group.encode()
        self._post = post
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lowwater-handoff", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, topic: str, record: Fetched, *, origin: tuple[str, int, int], kind: str,
             reason: str, attempts: int, report: Report,
             extra: Sequence[tuple[str, bytes]] = ()) -> None:
        """Produces ``record`` (a payload's :func:`~coordinator.kafka.records.contents`) to
        ``topic`` with its key, value, headers and timestamp, plus the hand-off headers and
        ``extra``. ``origin`` is (topic, partition, offset) where it was first consumed
        (:func:`~coordinator.kafka.records.origin`). ``report`` is called once."""
        key, value, own, ts = record
        source, partition, offset = origin
        headers: list[tuple[str, str | bytes | None]] = list(own or ())
        headers += [
            (HEADER_TOPIC, source.encode()),
            (HEADER_PARTITION, str(partition).encode()),
            (HEADER_OFFSET, str(offset).encode()),
            (HEADER_ATTEMPTS, str(attempts).encode()),
            (HEADER_REASON, reason.encode()),
            (HEADER_KIND, kind.encode()),
            (HEADER_GROUP, self._group),
            *extra,
        ]
        timestamp = ts if ts is not None and ts > 0 else 0  # 0: the time of producing

        def delivered(err: KafkaError | None, _: Message) -> None:  # on the report thread
            self._post(report, None if err is None else err.str())

        try:
            self._producer.produce(topic, value=value, key=key, headers=headers,
                                   on_delivery=delivered, timestamp=timestamp)
        except (BufferError, KafkaException) as exc:  # local queue full, or refused at once
            report(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(POLL_TIMEOUT)

    def _on_error(self, err: KafkaError) -> None:
        log.warning("hand-off producer: %s", err.str())

    def close(self, timeout: float) -> int:
        """Waits up to ``timeout`` seconds for outstanding deliveries; returns how many are left."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join()
        left: int = self._producer.flush(timeout)
        if left:
            log.error("%d hand-off(s) undelivered at shutdown; their records stay uncommitted "
                      "and are fetched again", left)
        return left
