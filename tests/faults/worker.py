"""A fault-suite worker process: an SDK ``AsyncWorker`` that journals every record it processes.

    python -m tests.faults.worker --target 127.0.0.1:PORT --journal DIR/w1.journal --worker-id w1

Each handler waits a random time (so acks come back out of order), journals
``seq partition offset t_ns worker`` durably, then returns (ACK). With
``--hang-after N`` every handler after the N-th never returns: the worker keeps
its stream open and stops settling, and writes ``seq partition offset`` of each
record it hangs on to ``<journal>.hung`` (see :func:`hung_rows`). SIGTERM shuts
it down gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import timedelta
from pathlib import Path
from typing import TextIO

import lowwater
from tests.faults.journal import Journal, line

HUNG_SUFFIX = ".hung"


async def serve(args: argparse.Namespace, hung_log: TextIO) -> None:
    journal = Journal(Path(args.journal))
    rng = random.Random(args.seed)
    handled = 0
    hung = asyncio.Event()  # never set: what a hung handler waits on
    low, high = args.min_delay_ms / 1000, args.max_delay_ms / 1000

    async def handle(msg: lowwater.Message) -> None:
        nonlocal handled
        handled += 1
        if args.hang_after is not None and handled > args.hang_after:
            hung_log.write(f"{msg.value.decode()} {msg.partition} {msg.offset}\n")
            await hung.wait()
        await asyncio.sleep(rng.uniform(low, high))
        await journal.record(line(int(msg.value), msg.partition, msg.offset,
                                  time.monotonic_ns(), args.worker_id))

    hangs = args.hang_after is not None
    worker = lowwater.AsyncWorker(
        args.target, handle, max_in_flight=args.max_in_flight, worker_id=args.worker_id,
        reconnect_backoff=lowwater.Backoff(
            initial=timedelta(milliseconds=50), maximum=timedelta(milliseconds=500)),
        # A hung worker must not keep its leases alive, nor hold up the end of the run.
        max_lease_extension=timedelta(0) if hangs else timedelta(minutes=10),
        shutdown_timeout=timedelta(seconds=1 if hangs else 30))
    try:
        await worker.run(install_signal_handlers=True)
    finally:
        journal.close()


def hung_rows(journal: Path) -> list[str]:
    """The records a hung worker journaling to ``journal`` hung on, one line each."""
    path = Path(f"{journal}{HUNG_SUFFIX}")
    return path.read_text().splitlines() if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--max-in-flight", type=int, default=50)
    parser.add_argument("--min-delay-ms", type=float, default=0.0)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--hang-after", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with Path(f"{args.journal}{HUNG_SUFFIX}").open("a", buffering=1) as hung_log:
        asyncio.run(serve(args, hung_log))


if __name__ == "__main__":
    main()
