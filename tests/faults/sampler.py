"""Samples the group's committed offsets while a run goes on, from the broker and the sidecars."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from lowwater.v1 import admin_pb2, admin_pb2_grpc
from tests.faults.checker import CommitSample

INTERVAL_S = 0.25
"""Seconds between samples."""
CALL_TIMEOUT_S = 2.0
"""A sample that takes longer (a frozen broker) is skipped."""


class Sampler:
    """Reads committed offsets every INTERVAL_S on its own thread until :meth:`stop`.

    ``targets()`` names the sidecars alive now; each answers Admin/GetStatus.
    A sample's time is taken after its answer arrived, so a commit it shows
    happened before that time.
    """

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int,
                 targets: Callable[[], list[str]]) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "enable.auto.commit": False})
        self._tps = [KafkaTopicPartition(topic, p) for p in range(partitions)]
        self._topic = topic
        self._targets = targets
        self.samples: list[CommitSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops sampling and closes the consumer; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            self._sample_broker()
            for target in self._targets():
                self._sample_sidecar(target)

    def _sample_broker(self) -> None:
        try:
            found = self._consumer.committed(self._tps, timeout=CALL_TIMEOUT_S)
        except KafkaException:
            return
        t = time.monotonic_ns()
        self.samples += [CommitSample(t, "broker", tp.partition, tp.offset)
                         for tp in found if tp.error is None and tp.offset >= 0]

    def _sample_sidecar(self, target: str) -> None:
        try:
            with grpc.insecure_channel(target) as channel:
                status = admin_pb2_grpc.AdminStub(channel).GetStatus(
                    admin_pb2.GetStatusRequest(), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError:
            return
        t = time.monotonic_ns()
        self.samples += [CommitSample(t, target, p.partition, p.committed_offset)
                         for p in status.partitions
                         if p.topic == self._topic and p.committed_offset >= 0]
