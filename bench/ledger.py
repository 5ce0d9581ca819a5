"""The ledger's cost per record, alone: fetch, lease, settle out of order, commit.

No Kafka, no gRPC: the pure core that every record goes through on the sidecar's event loop.
Records are added in batches per partition, leased to one holder, acknowledged out of order
(every other outstanding one per round, so that gaps stay open below the acknowledged ones) and
committed, and the cost per record is printed as the number of partitions and the
records in flight grow. It should stay flat: every step is O(1) amortized, or O(log n) at worst.

    .venv/bin/python bench/ledger.py [--n 200000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from rich.console import Console
from rich.table import Table

from coordinator.core.ledger import Ledger
from coordinator.core.model import TopicPartition

PARTITIONS = (1, 4, 64, 256)
IN_FLIGHT = (1_000, 10_000, 100_000)


def cost_per_record(n: int, partitions: int, in_flight: int) -> float:
    """Microseconds per record through add, lease, an out-of-order ack and a commit."""
    led = Ledger(max_pending_per_partition=10**9)
    tps = [TopicPartition("t", p) for p in range(partitions)]
    for generation, tp in enumerate(tps, start=1):
        led.assign(tp, 0, generation)
    holder = led.open_holder("stream-1", "w", in_flight)
    parts = [led.partitions[tp] for tp in tps]
    offsets = [0] * partitions
    per_part = max(1, in_flight // partitions)
    outstanding: list[int] = []
    done = 0
    started = time.perf_counter()
    while done < n:
        for i, part in enumerate(parts):
            for _ in range(per_part):
                led.add_to(part, offsets[i], 100, None, 0.0)
                offsets[i] += 1
        outstanding += [lease.msg_id for lease in led.lease(holder, 0.0, in_flight)]
        # Every other one is acknowledged; the rest stay in flight, holding the marks back.
        half, outstanding = outstanding[1::2], outstanding[0::2]
        led.ack_many(holder, half)
        done += len(half)
        led.commit_points()
    return (time.perf_counter() - started) / done * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="records per cell")
    args = parser.parse_args(argv)
    table = Table(title=f"ledger cost per record, us (N = {args.n:,} per cell, one run)",
                  title_justify="left")
    table.add_column("partitions")
    for size in IN_FLIGHT:
        table.add_column(f"{size:,} in flight", justify="right")
    console = Console()
    for partitions in PARTITIONS:
        cells = []
        for size in IN_FLIGHT:
            cells.append(f"{cost_per_record(args.n, partitions, size):.2f}")
            console.print(f"  {partitions} partition(s), {size:,} in flight: {cells[-1]} us",
                          highlight=False)
        table.add_row(str(partitions), *cells)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
