"""``lowwater demo``: the whole product on one machine, with an embedded broker.

It starts Tansu on a free loopback port, creates a topic, runs ``lowwater
serve`` as a real sidecar process, produces "SMS verification code"
requests, and runs SDK workers whose handlers take random times, so acks
come back out of order. A live view shows the commit point catching up; the
summary shows that everything produced was processed and committed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field

import grpc
from confluent_kafka import Producer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

import lowwater
from coordinator.embedded import SidecarProcess, TansuBroker, create_topic
from lowwater.v1 import admin_pb2, admin_pb2_grpc

TOPIC = "sms.verification"
"""The demo's topic."""
REFRESH_PER_SECOND = 4
"""How often the live view redraws."""
PLAIN_PROGRESS_EVERY_S = 2.0
"""Seconds between progress lines when stdout is not a terminal."""
FINISH_TIMEOUT_S = 300.0
"""Seconds the demo waits for everything to be processed and committed."""
SIDECAR_FLAGS = ["--metrics-listen", "127.0.0.1:0", "--kafka", "statistics.interval.ms=1000"]
"""Metrics on, with librdkafka's statistics every second: ``lowwater top`` shows the lag."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=20_000,
                        help="SMS requests to produce (default: %(default)s)")
    parser.add_argument("--rate", type=int, default=4_000,
                        help="requests per second to produce (default: %(default)s)")
    parser.add_argument("--partitions", type=int, default=4,
                        help="partitions of the demo topic (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="SDK workers (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="records each worker handles at once (default: %(default)s)")
    parser.add_argument("--max-latency-ms", type=float, default=40.0,
                        help="a handler takes 0..this many ms (default: %(default)s)")


@dataclass
class Tally:
    """What the demo saw. Written by the producer thread and the workers' event loop."""

    produced: int = 0
    end_offsets: dict[int, int] = field(default_factory=dict)
    deliveries: collections.Counter[int] = field(default_factory=collections.Counter)
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def processed(self) -> int:
        return len(self.deliveries)

    @property
    def duplicates(self) -> int:
        return sum(self.deliveries.values()) - len(self.deliveries)


def run(args: argparse.Namespace) -> int:
    for name in ("records", "rate", "partitions", "workers", "concurrency"):
        if getattr(args, name) < 1:
            print(f"lowwater demo: --{name} must be at least 1", file=sys.stderr)
            return 2
    console = Console()
    with TansuBroker() as broker:
        bootstrap = broker.bootstrap_servers
        console.print(f"[bold]embedded broker[/] Tansu at {bootstrap}")
        create_topic(bootstrap, TOPIC, args.partitions)
        console.print(f"[bold]topic[/] {TOPIC} with {args.partitions} partitions")
        with SidecarProcess(bootstrap, "sms-senders", [TOPIC], extra=SIDECAR_FLAGS) as sidecar:
            console.print(f"[bold]sidecar[/] lowwater serve on {sidecar.target} "
                          f"(log: {sidecar.log_path})")
            tally = Tally()
            producer = threading.Thread(
                target=_produce, args=(bootstrap, args.records, args.rate, tally),
                name="demo-producer", daemon=True)
            producer.start()
            ok = asyncio.run(_consume(sidecar.target, args, tally, console))
            producer.join()
            code = sidecar.stop()
            console.print(f"[bold]sidecar[/] stopped with exit code {code} after draining")
    _summary(console, tally, ok)
    return 0 if ok and code == 0 else 1


def _produce(bootstrap: str, records: int, rate: int, tally: Tally) -> None:
    """Produces ``records`` SMS requests at ``rate`` per second."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def delivered(err: object, msg: object) -> None:
        if err is None:
            with tally.lock:
                part, offset = msg.partition(), msg.offset()  # type: ignore[attr-defined]
                tally.end_offsets[part] = max(tally.end_offsets.get(part, 0), offset + 1)
                tally.produced += 1

    rng = random.Random(42)
    start = time.monotonic()
    for n in range(records):
        phone = f"+86138{rng.randrange(10**8):08d}"
        body = {"request_id": n, "phone": phone, "code": f"{rng.randrange(10**6):06d}",
                "template": "login", "valid_for_s": 300}
        producer.produce(TOPIC, json.dumps(body).encode(), key=phone.encode(),
                         on_delivery=delivered)
        producer.poll(0)
        ahead = (n + 1) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(60)


async def _consume(target: str, args: argparse.Namespace, tally: Tally, console: Console) -> bool:
    rng = random.Random(7)
    max_latency = args.max_latency_ms / 1000

    async def send_sms(msg: lowwater.Message) -> None:
        request = json.loads(msg.value)
        await asyncio.sleep(rng.random() * max_latency)  # the SMS provider's API call
        tally.deliveries[request["request_id"]] += 1

    workers = [lowwater.AsyncWorker(target, send_sms, max_in_flight=args.concurrency,
                                    worker_id=f"sms-worker-{i + 1}") for i in range(args.workers)]
    for worker in workers:
        await worker.__aenter__()
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            return await _watch(admin, args.records, tally, console)
    finally:
        for worker in workers:
            await worker.__aexit__(None, None, None)


async def _watch(admin: admin_pb2_grpc.AdminStub, records: int, tally: Tally,
                 console: Console) -> bool:
    """Shows progress until everything is processed and committed; True if it got there."""
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    rates: collections.deque[tuple[float, int]] = collections.deque(maxlen=REFRESH_PER_SECOND * 2)
    last_plain = 0.0
    live = Live(console=console, refresh_per_second=REFRESH_PER_SECOND, transient=False) \
        if console.is_terminal else None
    if live is not None:
        live.start()
    try:
        while True:
            status = await admin.GetStatus(admin_pb2.GetStatusRequest())
            now = time.monotonic()
            rates.append((now, tally.processed))
            rate = _rate(rates)
            done = _finished(status, records, tally)
            if live is not None:
                live.update(_view(status, tally, records, rate))
            elif now - last_plain >= PLAIN_PROGRESS_EVERY_S or done:
                last_plain = now
                committed = sum(max(p.committed_offset, 0) for p in status.partitions)
                console.print(f"produced {tally.produced}/{records}  processed {tally.processed}"
                              f"  committed {committed}  {rate:,.0f}/s"
                              f"  duplicates {tally.duplicates}")
            if done:
                return True
            if now > deadline:
                return False
            await asyncio.sleep(1 / REFRESH_PER_SECOND)
    finally:
        if live is not None:
            live.stop()


def _finished(status: admin_pb2.GetStatusResponse, records: int, tally: Tally) -> bool:
    with tally.lock:
        if tally.produced < records or tally.processed < records:
            return False
        ends = dict(tally.end_offsets)
    committed = {p.partition: p.committed_offset for p in status.partitions}
    return all(committed.get(p) == end for p, end in ends.items())


def _rate(samples: collections.deque[tuple[float, int]]) -> float:
    if len(samples) < 2:
        return 0.0
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def _view(status: admin_pb2.GetStatusResponse, tally: Tally, records: int,
          rate: float) -> Group:
    head = Table.grid(padding=(0, 3))
    head.add_row(f"produced [bold]{tally.produced:,}[/]/{records:,}",
                 f"processed [bold]{tally.processed:,}[/]",
                 f"rate [bold]{rate:,.0f}[/]/s",
                 f"duplicates [bold]{tally.duplicates}[/]",
                 f"sidecar {status.health}")
    table = Table(title=f"group {status.group}: per partition", title_justify="left")
    for column in ("partition", "log end", "committed", "lowest pending", "pending",
                   "in flight", "oldest pending", "paused"):
        table.add_column(column, justify="right")
    with tally.lock:
        ends = dict(tally.end_offsets)
    for p in status.partitions:
        table.add_row(
            f"{p.topic}[{p.partition}]", f"{ends.get(p.partition, 0):,}",
            _offset(p.committed_offset), _offset(p.lowest_pending_offset),
            f"{p.pending_count:,}", f"{p.in_flight_count:,}",
            f"{p.oldest_pending_age.ToTimedelta().total_seconds():.1f}s",
            "yes" if p.paused else "",
        )
    workers = Table(title="workers", title_justify="left")
    for column in ("stream", "worker", "in flight", "limit"):
        workers.add_column(column, justify="right")
    for w in status.workers:
        workers.add_row(w.stream_id, w.worker_id, str(w.in_flight_count),
                        str(w.max_in_flight_messages))
    return Group(head, table, workers)


def _offset(value: int) -> str:
    return "-" if value < 0 else f"{value:,}"


def _summary(console: Console, tally: Tally, ok: bool) -> None:
    table = Table(title="lowwater demo: summary", title_justify="left")
    table.add_column("")
    table.add_column("records", justify="right")
    table.add_row("produced", f"{tally.produced:,}")
    table.add_row("processed (distinct)", f"{tally.processed:,}")
    table.add_row("committed (sum of partition commit offsets)",
                  f"{sum(tally.end_offsets.values()):,}" if ok else "incomplete")
    table.add_row("duplicates", f"{tally.duplicates:,}")
    table.add_row("lost", f"{tally.produced - tally.processed:,}")
    console.print(table)
    console.print(f"took {time.monotonic() - tally.started:.1f}s")
    if not ok:
        console.print("[bold red]did not finish: see the sidecar log[/]")
