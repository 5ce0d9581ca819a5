"""The processed-id journal: what a worker did, durable before it settles.

Each worker process appends one line per processed record to its own file and
fsyncs before the handler returns (so before the record is settled). Lines
are ``seq partition offset t_ns worker``, with ``t_ns`` taken just before the
write. After each fsync the journal appends ``synced t_ns``, taken once the
fsync returned: the rows above it were durable from then on. The marker is not
fsynced itself; it only has to outlive a ``kill -9`` of the worker, which the
page cache does. A worker restarted under the same name appends to the same
file, after an ``opened t_ns`` line: a marker never covers the rows of an
earlier process. Times are ``time.monotonic_ns()``: CLOCK_MONOTONIC is one clock
for every process on the machine, so the checker can compare them with its own
samples.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

SYNCED = "synced"
"""The first word of the marker line written after each fsync."""
OPENED = "opened"
"""The first word of the line a journal writes when it is opened."""


@dataclass(frozen=True, slots=True)
class Processed:
    """One journal line: one processing of one record."""

    seq: int
    partition: int
    offset: int
    t_ns: int
    """When the row was durable: the time of the ``synced`` marker after it, or, when the
    worker died between its fsync and the marker, the time taken before the write."""
    worker: str


class Journal:
    """Appends lines and fsyncs them in groups: every waiter of a group resumes after its fsync.

    Owned by one event loop. The write and the fsync run on a thread so that
    the loop keeps serving the stream meanwhile.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self._fd, f"{OPENED} {time.monotonic_ns()}\n".encode())
        self._lines: list[str] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def record(self, line: str) -> None:
        """Returns once ``line`` is written and fsynced."""
        waiter = asyncio.get_running_loop().create_future()
        self._lines.append(line)
        self._waiters.append(waiter)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        while self._lines:
            data = "".join(self._lines).encode()
            waiters, self._lines, self._waiters = self._waiters, [], []
            try:
                await asyncio.to_thread(self._write, data)
            except OSError as exc:
                for waiter in waiters:
                    waiter.set_exception(exc)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        os.write(self._fd, f"{SYNCED} {time.monotonic_ns()}\n".encode())

    def close(self) -> None:
        os.close(self._fd)


def line(seq: int, partition: int, offset: int, t_ns: int, worker: str) -> str:
    return f"{seq} {partition} {offset} {t_ns} {worker}\n"


class Tail:
    """Reads the journals in a directory incrementally, as they grow."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._pos: dict[Path, int] = {}
        self._unsynced: dict[Path, list[int]] = {}
        """Per journal, the indexes in ``rows`` of the rows no ``synced`` marker followed yet."""
        self.rows: list[Processed] = []
        self.seqs: set[int] = set()

    def poll(self) -> int:
        """Reads what was appended since the last call; returns how many new rows."""
        before = len(self.rows)
        for path in sorted(self._dir.glob("*.journal")):
            pos = self._pos.get(path, 0)
            with path.open("rb") as f:
                f.seek(pos)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # leave a partial last line for the next call
            if not end:
                continue
            self._pos[path] = pos + end
            unsynced = self._unsynced.setdefault(path, [])
            for raw in chunk[:end].decode().splitlines():
                fields = raw.split()
                if fields[0] == SYNCED:
                    for i in unsynced:
                        self.rows[i] = replace(self.rows[i], t_ns=int(fields[1]))
                    unsynced.clear()
                    continue
                if fields[0] == OPENED:  # the rows before were another process's
                    unsynced.clear()
                    continue
                seq, partition, offset, t_ns, worker = fields
                row = Processed(int(seq), int(partition), int(offset), int(t_ns), worker)
                unsynced.append(len(self.rows))
                self.rows.append(row)
                self.seqs.add(row.seq)
        return len(self.rows) - before
