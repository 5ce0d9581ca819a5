"""The seed's "before": auto-commit, and a thread pool fed from a large bounded queue.

    python -m tests.faults.seed_consumer --bootstrap HOST:PORT --group G --topic T --journal PATH

This is how the seed document's platform consumed, written the plain way: the
poll loop puts every record on a ``queue.Queue(maxsize=10_000)`` and pool
threads take them off, process them (a random few milliseconds) and journal
them. Offsets are auto-committed every 5 s (librdkafka's default), counting a
record as done as soon as ``poll()`` returned it. So ``kill -9`` loses
whatever sat in the queue: those offsets were already committed.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, Message

from tests.faults.journal import line

QUEUE_SIZE = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--worker-id", default="seed")
    parser.add_argument("--min-delay-ms", type=float, default=0.0)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    fd = os.open(args.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    lock = threading.Lock()
    work: queue.Queue[Message] = queue.Queue(maxsize=QUEUE_SIZE)

    def process() -> None:
        rng = random.Random()
        while True:
            msg = work.get()
            time.sleep(rng.uniform(args.min_delay_ms, args.max_delay_ms) / 1000)
            text = line(int(msg.value() or b"0"), msg.partition() or 0, msg.offset() or 0,
                        time.monotonic_ns(), args.worker_id)
            with lock:
                os.write(fd, text.encode())
                os.fsync(fd)

    pool = ThreadPoolExecutor(args.threads)
    for _ in range(args.threads):
        pool.submit(process)
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap, "group.id": args.group,
        "enable.auto.commit": True, "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
    })
    consumer.subscribe([args.topic])
    while True:
        msg = consumer.poll(0.1)
        if msg is None or msg.error() is not None:
            continue
        work.put(msg)


if __name__ == "__main__":
    main()
