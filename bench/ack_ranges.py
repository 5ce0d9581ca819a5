"""ACK ranges that cut leased runs, against ranges that cover them whole: the ledger alone.

A worker's ACKs come back as ranges of consecutive msg_ids (``StreamRequest.ack_ranges``),
cut wherever its requests happened to be sent: with handlers of different speeds the cuts
fall inside the sidecar's runs (records fetched in a row and leased as one). This times
``Ledger.ack_ranges`` per ACK both ways, on the same rounds: four runs of 500 records
leased at once, ACKed in four ranges cut at the run boundaries (aligned) or at three random
points (cut). Before runs could be finished a part at a time (2026-11-27), every member of
a cut run went through the one-by-one path: 877 against 11 ns an ACK (200,000 records).

    .venv/bin/python bench/ack_ranges.py [--records 400000]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from coordinator.core.ledger import Ledger
from coordinator.core.model import TopicPartition

RUN = 500
"""Records a run holds: a consume() batch of one partition."""
RUNS_PER_LEASE = 4
"""Runs leased at once: one stream message of 2,000 deliveries."""


def ns_per_ack(records: int, cut: bool, seed: int = 1) -> float:
    """Nanoseconds ``ack_ranges`` takes per ACK over ``records`` records."""
    rnd = random.Random(seed)
    led = Ledger(max_pending_per_partition=10**9)
    part = led.assign(TopicPartition("t", 0), 0)
    holder = led.open_holder("stream-1", "w", 10**9)
    leased = RUN * RUNS_PER_LEASE
    offset, elapsed = 0, 0.0
    while offset < records:
        for _ in range(RUNS_PER_LEASE):
            columns = ([None] * RUN, [b"x" * 100] * RUN, [None] * RUN, [0] * RUN)
            led.add_run(part, range(offset, offset + RUN), columns, [100] * RUN, 0.0)
            offset += RUN
        first = led.lease(holder, 0.0, leased)[0].msg_id
        cuts = sorted(rnd.sample(range(1, leased), RUNS_PER_LEASE - 1)) if cut \
            else list(range(RUN, leased, RUN))
        bounds = [0, *cuts, leased]
        started = time.perf_counter()
        for a, b in itertools.pairwise(bounds):
            if led.ack_ranges(holder, [(first + a, b - a)]):
                raise AssertionError("an ACK of a leased record was refused")
        elapsed += time.perf_counter() - started
    if part.offsets.commit_offset != offset:
        raise AssertionError("the commit did not reach the last ACKed record")
    return elapsed / offset * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=400_000)
    args = parser.parse_args(argv)
    aligned = min(ns_per_ack(args.records, cut=False) for _ in range(2))
    cut = min(ns_per_ack(args.records, cut=True) for _ in range(2))
    print(f"ACK ranges over runs of {RUN}, {args.records:,} records, best of two")
    print(f"  aligned with the runs: {aligned:7.1f} ns an ACK")
    print(f"  cut at random points:  {cut:7.1f} ns an ACK")
    print(f"  ratio cut / aligned:   {cut / aligned:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
