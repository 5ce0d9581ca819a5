"""A tiny lowwater worker, the one in docker/worker-example.Dockerfile: it logs each record and
acknowledges it.

It connects to the sidecar at ``LOWWATER_TARGET`` (the Helm chart sets it; by default the Unix
socket in the pod's shared emptyDir) and shuts down gracefully on SIGTERM, waiting up to
``LOWWATER_SHUTDOWN_TIMEOUT_SECONDS`` (the chart's ``worker.shutdownTimeout``) for running
handlers. Replace :func:`handle` with your own; it must be idempotent, since delivery is at
least once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from datetime import timedelta

import lowwater

DEFAULT_TARGET = "unix:/var/run/lowwater/lowwater.sock"
DEFAULT_SHUTDOWN_TIMEOUT = timedelta(seconds=30)

log = logging.getLogger("example_worker")


async def handle(msg: lowwater.Message) -> None:
    """Logs the record; returning acknowledges it."""
    log.info("%s[%d]@%d attempt %d: %d bytes", msg.topic, msg.partition, msg.offset,
             msg.attempt, len(msg.value))


def make_worker(environ: Mapping[str, str]) -> lowwater.AsyncWorker:
    """The worker, configured from ``environ``."""
    target = environ.get("LOWWATER_TARGET") or DEFAULT_TARGET
    timeout = environ.get("LOWWATER_SHUTDOWN_TIMEOUT_SECONDS")
    shutdown = timedelta(seconds=float(timeout)) if timeout else DEFAULT_SHUTDOWN_TIMEOUT
    return lowwater.AsyncWorker(target, handle, max_in_flight=64, shutdown_timeout=shutdown)


async def main() -> None:
    worker = make_worker(os.environ)
    log.info("worker %s: sidecar at %s", worker.worker_id, os.environ.get("LOWWATER_TARGET")
             or DEFAULT_TARGET)
    await worker.run(install_signal_handlers=True)  # until SIGTERM or SIGINT


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(main())
