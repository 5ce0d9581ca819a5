"""Steady traffic: a producer thread writing unique sequence ids at a fixed rate.

Each record's value is its sequence id in decimal; records go round-robin
over the partitions. Delivery reports give each id its (partition, offset):
that map is what the checker compares the journals with.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from tests.support.broker import PRODUCER_CONFIG

TICK_S = 0.01
"""The producer writes a burst every tick: rate * TICK_S records."""
DELIVERY_TIMEOUT_MS = 300_000
"""Records wait out a broker outage in the producer instead of failing."""
FLUSH_TIMEOUT_S = 60.0
"""How long stop() waits for the last delivery reports (a frozen broker may hold them)."""


class Traffic:
    """Produces ``total`` records at ``rate`` per second on its own thread.

    ``produced`` maps seq -> (partition, offset) for every delivered record;
    read it after :meth:`stop`. ``stop()`` is idempotent and always joins.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, *, total: int,
                 rate: float, linger_ms: int | None = None) -> None:
        """``linger_ms`` overrides the producer's (PRODUCER_CONFIG's) linger.ms."""
        linger = {} if linger_ms is None else {"linger.ms": linger_ms}
        self._producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG, **linger,
                                   "message.timeout.ms": DELIVERY_TIMEOUT_MS})
        self._topic = topic
        self._partitions = partitions
        self.total = total
        self._rate = rate
        self.produced: dict[int, tuple[int, int]] = {}
        self.failed: list[str] = []
        self._sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def done(self) -> bool:
        """Every record was handed to the producer (delivery reports may still be due)."""
        return self._sent >= self.total

    def _report(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append(str(err))
            return
        value: Any = msg.value()
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        self.produced[int(value)] = (partition, offset)

    def _run(self) -> None:
        started = time.monotonic()
        while self._sent < self.total and not self._stop.is_set():
            due = min(self.total, int((time.monotonic() - started) * self._rate) + 1)
            while self._sent < due:
                seq = self._sent
                try:
                    self._producer.produce(self._topic, str(seq).encode(),
                                           partition=seq % self._partitions,
                                           on_delivery=self._report)
                except BufferError:
                    break  # the local queue is full (broker frozen): try again next tick
                self._sent += 1
            self._producer.poll(0)
            self._stop.wait(TICK_S)

    def stop(self) -> None:
        """Stops producing and waits for every delivery report."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        left = self._producer.flush(FLUSH_TIMEOUT_S)
        if left:
            self.failed.append(f"{left} record(s) without a delivery report")
