"""One fault run: a topic, traffic, sidecars and worker processes, faults, and the verdict.

Everything started here is stopped by :meth:`FaultRun.close`, by its own pid,
even when the run fails: use it as a context manager.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from coordinator.embedded import SidecarProcess, create_topic, unique_name
from tests.faults.checker import FaultWindow, Verdict, check
from tests.faults.journal import Tail
from tests.faults.sampler import Sampler
from tests.faults.traffic import Traffic
from tests.support.broker import committed_offsets, log_end_offsets

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
WORKER_STOP_TIMEOUT_S = 30.0
"""A worker that has not exited this long after SIGTERM is killed."""
HEALTHY_TIMEOUT_S = 120.0
"""How long the system may take to make progress again after a fault."""
PROGRESS_ROWS = 20
"""New journal rows that count as progress after a fault."""
POLL_S = 0.1
QUIET_S = 3.0
"""A consumer whose journal did not grow for this long has finished (see finish())."""


class RunFailed(AssertionError):
    """The run could not finish (no progress, a process died); carries the logs."""


@dataclass
class Outcome:
    """What a scenario reports: the verdict and the figures for the table."""

    name: str
    verdict: Verdict
    faults: int
    seconds: float
    notes: list[str] = field(default_factory=list)


class FaultRun:
    """Sidecars (by slot, each on a fixed port), workers (by name) and the traffic between them."""

    def __init__(self, bootstrap: str, workdir: Path, *, records: int, rate: float,
                 sidecar_args: list[str] | None = None, name: str = "faults",
                 create: Callable[[str, str, int], None] = create_topic,
                 linger_ms: int | None = None) -> None:
        """``create(bootstrap, topic, partitions)`` makes the topic (the mock cluster has its
        own way)."""
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.topic = unique_name(name)
        self.group = unique_name(f"{name}-g")
        self.sidecar_args = list(sidecar_args or [])
        self.journals = workdir / "journals"
        self.journals.mkdir(parents=True, exist_ok=True)
        create(bootstrap, self.topic, PARTITIONS)
        self.traffic = Traffic(bootstrap, self.topic, PARTITIONS, total=records, rate=rate,
                               linger_ms=linger_ms)
        self.sidecars: dict[int, SidecarProcess] = {}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.windows: list[FaultWindow] = []
        self.tail = Tail(self.journals)
        self.sampler = Sampler(bootstrap, self.group, self.topic, PARTITIONS, self.live_targets)
        self.started = time.monotonic()

    # -- processes ------------------------------------------------------------

    def start(self) -> Self:
        self.sampler.start()
        self.traffic.start()
        return self

    def live_targets(self) -> list[str]:
        return [s.target for s in list(self.sidecars.values())
                if s.proc is not None and s.proc.poll() is None]

    def start_sidecar(self, slot: int = 0, *, wait: bool = True) -> SidecarProcess:
        """Starts (or restarts, on the same port) the sidecar in ``slot``."""
        old = self.sidecars.get(slot)
        sidecar = SidecarProcess(self.bootstrap, self.group, [self.topic], extra=self.sidecar_args,
                                 log_dir=str(self.workdir))
        if old is not None:
            sidecar.port = old.port  # workers reconnect to the address they know
        self.sidecars[slot] = sidecar
        sidecar.start(wait_serving=wait)
        return sidecar

    def start_worker(self, name: str, target: str, *, max_in_flight: int = 50,
                     delay_ms: tuple[float, float] = (0.0, 5.0),
                     hang_after: int | None = None) -> None:
        """Starts an SDK worker process (:mod:`tests.faults.worker`) journaling as ``name``;
        each handler takes a uniform random time in ``delay_ms``."""
        args = ["--target", target, "--max-in-flight", str(max_in_flight),
                "--min-delay-ms", str(delay_ms[0]), "--max-delay-ms", str(delay_ms[1]),
                "--seed", str(len(self.workers))]
        if hang_after is not None:
            args += ["--hang-after", str(hang_after)]
        self._start("tests.faults.worker", name, args)

    def start_seed_consumer(self, *, threads: int, delay_ms: tuple[float, float],
                            name: str = "seed") -> None:
        """Starts the seed's auto-commit consumer (:mod:`tests.faults.seed_consumer`)."""
        self._start("tests.faults.seed_consumer", name, [
            "--bootstrap", self.bootstrap, "--group", self.group, "--topic", self.topic,
            "--threads", str(threads), "--min-delay-ms", str(delay_ms[0]),
            "--max-delay-ms", str(delay_ms[1])])

    def journal_of(self, name: str) -> Path:
        return self.journals / f"{name}.journal"

    def _start(self, module: str, name: str, args: list[str]) -> None:
        cmd = [sys.executable, "-m", module, "--journal", str(self.journal_of(name)),
               "--worker-id", name, *args]
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.workers[name] = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def kill_worker(self, name: str) -> None:
        proc = self.workers[name]
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop_workers(self, *names: str) -> None:
        """SIGTERM to each, then waits for all (SIGKILL after WORKER_STOP_TIMEOUT_S)."""
        procs = [p for n in names if (p := self.workers[n]).poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- faults and progress ----------------------------------------------------

    @contextmanager
    def fault(self, kind: str, *, bound: int | None = None,
              committed: Mapping[int, int | None] | None = None) -> Iterator[None]:
        """Marks a fault: from entering the block until the system made progress again.

        ``committed`` is the group's committed offsets read just before the
        fault: a record below them may not be processed again because of it.
        ``bound`` is the most duplicates the fault may cause; without it, the
        bound is the replay window from ``committed``: the records journaled
        at or above it by the time the system has recovered.
        """
        if bound is None and committed is None:
            raise ValueError("a fault needs a bound, or the committed offsets to replay from")
        floor = {p: o for p, o in (committed or {}).items() if o is not None}
        start = time.monotonic_ns()
        yield
        self.wait_progress(f"after {kind}")
        end = time.monotonic_ns()
        if bound is None:
            self.tail.poll()
            bound = len({(r.partition, r.offset) for r in self.tail.rows
                         if r.offset >= floor.get(r.partition, 0)})
        self.windows.append(FaultWindow(kind, start, end, bound, floor))

    def committed(self) -> dict[int, int | None]:
        """The group's committed offsets now, from the broker."""
        return committed_offsets(self.bootstrap, self.group, self.topic)

    def wait_progress(self, why: str, rows: int = PROGRESS_ROWS) -> None:
        """Waits until ``rows`` more records were journaled, or nothing is left to process."""
        self.tail.poll()
        goal = len(self.tail.rows) + rows
        since = time.monotonic_ns()
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while (len(self.tail.rows) < goal and not self._all_processed()
               and not self._caught_up(since)):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RunFailed(f"no progress {why} within {HEALTHY_TIMEOUT_S:g}s\n{self.logs()}")
            time.sleep(POLL_S)
            self.tail.poll()

    def wait_for(self, what: str, done: Callable[[], object]) -> None:
        """Waits until ``done()`` is true, for at most HEALTHY_TIMEOUT_S."""
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while not done():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RunFailed(f"waited {HEALTHY_TIMEOUT_S:g}s for {what}\n{self.logs()}")
            time.sleep(POLL_S)

    def processed_share(self) -> float:
        self.tail.poll()
        return len(self.tail.seqs) / self.traffic.total

    def wait_share(self, share: float) -> None:
        """Waits until ``share`` of all records were processed at least once."""
        while self.processed_share() < share:
            self._check_alive()
            time.sleep(POLL_S)

    def _caught_up(self, since_ns: int) -> bool:
        """The traffic is over and the group committed it all (seen after ``since_ns``): for a
        consumer that may have lost records, so that it will never process them all."""
        if not self.traffic.done:
            return False
        committed: dict[int, int] = {}
        for s in self.sampler.samples[-4 * PARTITIONS:]:
            if s.source == "broker" and s.t_ns > since_ns:
                committed[s.partition] = s.offset
        ends: dict[int, int] = {}
        for partition, offset in list(self.traffic.produced.values()):
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        return bool(ends) and all(committed.get(p, -1) >= end for p, end in ends.items())

    def _all_processed(self) -> bool:
        return self.traffic.done and len(self.tail.seqs) >= self.traffic.total

    def _check_alive(self) -> None:
        for slot, sidecar in self.sidecars.items():
            proc = sidecar.proc
            if proc is not None and proc.poll() not in (None, 0, -signal.SIGKILL):
                raise RunFailed(f"sidecar {slot} exited with {proc.returncode}\n{sidecar.log()}")

    def finish(self, timeout: float = HEALTHY_TIMEOUT_S, *, expect_all: bool = True) -> Verdict:
        """Waits for the end of the run and returns the verdict.

        With ``expect_all`` the end is every record processed and committed to
        the log end. Without it (a consumer that may lose records) the end is
        the traffic done, the commits at the log end and the journals quiet
        for QUIET_S.
        """
        deadline = time.monotonic() + timeout
        while not (self._all_processed() if expect_all else self.traffic.done):
            self._check_alive()
            if time.monotonic() > deadline:
                missing = self.traffic.total - len(self.tail.seqs)
                raise RunFailed(f"{missing} record(s) still unprocessed after {timeout:g}s\n"
                                f"{self.logs()}")
            time.sleep(POLL_S)
            self.tail.poll()
        self.traffic.stop()
        if self.traffic.failed:
            raise RunFailed(f"{len(self.traffic.failed)} record(s) were never produced, e.g. "
                            f"{self.traffic.failed[:3]}: the run cannot be judged")
        end = log_end_offsets(self.bootstrap, self.topic)
        quiet_since = time.monotonic()
        while True:
            committed = committed_offsets(self.bootstrap, self.group, self.topic)
            if self.tail.poll():
                quiet_since = time.monotonic()
            at_end = all(committed.get(p) == o for p, o in end.items())
            if (at_end and (expect_all or time.monotonic() - quiet_since > QUIET_S)
                    or time.monotonic() > deadline):
                break
            time.sleep(POLL_S)
        self.sampler.stop()
        self._check_sampled()
        self.tail.poll()
        return check(self.traffic.produced, self.tail.rows, self.sampler.samples, self.windows,
                     committed, end)

    def _check_sampled(self) -> None:
        """The early-commit invariant checks the samples: a run with none would pass it
        vacuously, so it fails instead."""
        sources = {s.source for s in self.sampler.samples}
        if "broker" not in sources:
            raise RunFailed("the sampler read no committed offsets from the broker: the "
                            "early-commit check would have checked nothing")
        if self.sidecars and not sources - {"broker"}:
            raise RunFailed("the sampler read no committed offsets from any sidecar's "
                            "Admin/GetStatus: the early-commit check would have checked nothing")

    def outcome(self, name: str, verdict: Verdict, notes: list[str] | None = None) -> Outcome:
        return Outcome(name, verdict, len(self.windows), time.monotonic() - self.started,
                       notes or [])

    def logs(self) -> str:
        parts = [f"--- sidecar {slot} ({s.log_path}):\n{s.log(30)}"
                 for slot, s in self.sidecars.items()]
        for name in self.workers:
            path = self.workdir / f"{name}.log"
            tail = path.read_text(errors="replace").splitlines()[-15:] if path.exists() else []
            parts.append(f"--- worker {name}:\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        self.stop_workers(*self.workers)
        for sidecar in self.sidecars.values():
            try:
                sidecar.stop()
            finally:
                sidecar.kill()
        self.traffic.stop()
        self.sampler.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
