"""Per-message CPU cost of AsyncWorker with a no-op handler.

A minimal Coordinator server runs in a *separate process* and streams batches
of deliveries (up to the declared flow-control limit, at most --batch per
response) as fast as settlements free credit. The worker process measures its
own CPU time (``time.process_time()``: every thread of the process, including
gRPC's C-core threads) from the first delivery to the last handler call, and
prints microseconds of CPU per message, plus the wall-clock rate.

    .venv/bin/python clients/python/bench/bench_worker.py --messages 500000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import grpc

from lowwater.v1 import coordinator_pb2 as pb
from lowwater.v1 import coordinator_pb2_grpc as pb_grpc


class _BenchServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, total: int, batch: int, value_size: int) -> None:
        self._total = total
        self._batch = batch
        self._value = b"x" * value_size

    async def Pull(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the benchmark")

    async def Acknowledge(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the benchmark")

    async def Stream(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        first = await request_iterator.__anext__()
        limit = first.open.flow_control.max_in_flight_messages
        await context.write(pb.StreamResponse(opened=pb.StreamOpened(stream_id="bench")))
        template = pb.StreamResponse(
            deliveries=[
                pb.Delivery(
                    topic="bench",
                    partition=i % 8,
                    value=self._value,
                    key=b"key-%d" % i,
                    attempt=1,
                    timestamp_ms=1_700_000_000_000,
                    lease_deadline_ms=int(time.time() * 1000) + 3_600_000,
                )
                for i in range(self._batch)
            ]
        )
        credit = asyncio.Event()
        state = {"outstanding": 0, "settled": 0}

        async def read() -> None:
            async for request in request_iterator:
                settled = len(request.settlements) + len(request.ack_msg_ids)
                state["outstanding"] -= settled
                state["settled"] += settled
                credit.set()

        reader = asyncio.ensure_future(read())
        sent = 0
        next_id = 1
        while sent < self._total:
            room = min(limit - state["outstanding"], self._batch, self._total - sent)
            if room <= 0:
                credit.clear()
                await credit.wait()
                continue
            response = pb.StreamResponse()
            response.CopyFrom(template)
            if room < self._batch:
                del response.deliveries[room:]
            for d in response.deliveries:
                d.msg_id = next_id
                d.offset = next_id
                next_id += 1
            state["outstanding"] += room
            sent += room
            await context.write(response)
        await reader


async def _serve(port_file: str, total: int, batch: int, value_size: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_CoordinatorServicer_to_server(_BenchServicer(total, batch, value_size), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _write_port(port_file, port)
    await server.wait_for_termination()


def _write_port(port_file: str, port: int) -> None:
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(port_file + ".tmp", port_file)


async def _work(target: str, total: int, max_in_flight: int) -> tuple[float, float]:
    import lowwater

    count = 0
    done = asyncio.Event()
    marks: dict[str, float] = {}

    async def handler(msg: lowwater.Message) -> None:
        nonlocal count
        count += 1
        if count == 1:
            marks["cpu0"], marks["wall0"] = time.process_time(), time.perf_counter()
        if count == total:
            marks["cpu1"], marks["wall1"] = time.process_time(), time.perf_counter()
            done.set()

    async with lowwater.AsyncWorker(target, handler, max_in_flight=max_in_flight):
        await done.wait()
    return marks["cpu1"] - marks["cpu0"], marks["wall1"] - marks["wall0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--serve", metavar="PORT_FILE")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.messages, args.batch, args.value_size))
        return
    port_file = f"/tmp/lowwater-bench-{os.getpid()}.port"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", port_file, "--messages", str(args.messages),
         "--batch", str(args.batch), "--value-size", str(args.value_size)]
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("bench server did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            target = f"127.0.0.1:{f.read()}"
        cpu, wall = asyncio.run(_work(target, args.messages, args.max_in_flight))
        n = args.messages
        print(
            f"{n} messages, batch {args.batch}, max_in_flight {args.max_in_flight}:"
            f" {cpu / n * 1e6:.2f} us CPU/message in the worker process,"
            f" {n / wall:,.0f} messages/s wall"
        )
    finally:
        server.kill()
        server.wait()
        if os.path.exists(port_file):
            os.remove(port_file)


if __name__ == "__main__":
    main()
