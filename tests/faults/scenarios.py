"""The fault scenarios. Each one runs traffic through sidecars and workers, injects its
fault a few times at random moments, and returns an :class:`Outcome` with the verdict.

Every scenario has a short scale (CI) and a long one (``--soak``). The
duplicate bound of each fault is described in docs/faults.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc

from coordinator.embedded import TansuBroker, create_topic
from lowwater.v1 import admin_pb2, admin_pb2_grpc
from tests.faults.proxy import CuttingProxy, Side
from tests.faults.run import PARTITIONS, FaultRun, Outcome
from tests.faults.worker import hung_rows

WORKER_IN_FLIGHT = 50


@dataclass(frozen=True)
class Scale:
    records: int
    rate: float
    """Records produced per second: the run lasts about records / rate seconds."""
    faults: int
    outage_s: tuple[float, float] = (10.0, 10.0)
    """Range of one broker freeze, seconds."""
    linger_ms: int | None = None
    """The traffic producer's linger.ms, if not the tests' usual one."""


SHORT = Scale(records=12_000, rate=1_000, faults=3)
SOAK = Scale(records=600_000, rate=2_000, faults=25, outage_s=(10.0, 30.0), linger_ms=100)
"""Tansu's fetch slows down as a partition's batch count grows (docs/faults.md): at 2,000/s
with the usual 20 ms linger a partition would hold 15,000 batches of 10 records. A 100 ms
linger makes 3,000 batches of 50."""
COMPARE = Scale(records=90_000, rate=1_500, faults=3)
"""The side-by-side run: the rate is near the handlers' capacity (see seed_vs_lowwater)."""


@dataclass
class Context:
    bootstrap: str
    workdir: Path
    scale: Scale
    rng: random.Random
    broker: TansuBroker | None = None
    """A broker of the scenario's own, for the ones that freeze it."""
    sidecar_args: tuple[str, ...] = ()
    """Extra `lowwater serve` arguments for every sidecar of the scenario."""
    create: Callable[[str, str, int], None] = create_topic
    """How topics are made (the mock cluster auto-creates them instead)."""


def _run(ctx: Context, *, bootstrap: str | None = None, workdir: Path | None = None,
         sidecar_args: tuple[str, ...] = (), name: str = "faults") -> FaultRun:
    """A FaultRun for ``ctx`` with the scenario's own extra sidecar arguments."""
    return FaultRun(bootstrap or ctx.bootstrap, workdir or ctx.workdir,
                    records=ctx.scale.records, rate=ctx.scale.rate,
                    sidecar_args=[*ctx.sidecar_args, *sidecar_args], name=name,
                    create=ctx.create, linger_ms=ctx.scale.linger_ms)


Scenario = Callable[[Context], Outcome]


def _moments(ctx: Context, count: int) -> list[float]:
    """``count`` shares of the run, sorted, at which to inject faults."""
    return sorted(ctx.rng.uniform(0.1, 0.85) for _ in range(count))


def _two_workers(run: FaultRun, target: str) -> None:
    run.start_worker("w1", target, max_in_flight=WORKER_IN_FLIGHT)
    run.start_worker("w2", target, max_in_flight=WORKER_IN_FLIGHT)


def sidecar_crash(ctx: Context) -> Outcome:
    """kill -9 the sidecar at random moments and restart it on the same port."""
    with _run(ctx) as run:
        sidecar = run.start_sidecar()
        _two_workers(run, sidecar.target)
        for share in _moments(ctx, ctx.scale.faults):
            run.wait_share(share)
            run.sidecars[0].kill()
            with run.fault("kill -9 sidecar", committed=run.committed()):
                run.start_sidecar()
        return run.outcome("sidecar kill -9", run.finish())


def worker_crash(ctx: Context) -> Outcome:
    """kill -9 a worker mid-batch; its leases must be redelivered when its stream breaks.

    The lease is far longer than the run may take, so a run that finishes
    proves the records did not wait for their leases to lapse.
    """
    with _run(ctx, sidecar_args=("--lease", "10m")) as run:
        sidecar = run.start_sidecar()
        _two_workers(run, sidecar.target)
        for share in _moments(ctx, ctx.scale.faults):
            run.wait_share(share)
            with run.fault("kill -9 worker", bound=WORKER_IN_FLIGHT, committed=run.committed()):
                run.kill_worker("w1")
                _wait_streams(sidecar.target, lambda ids: "w1" not in ids)
                run.start_worker("w1", sidecar.target, max_in_flight=WORKER_IN_FLIGHT)
        return run.outcome("worker kill -9", run.finish(timeout=300))


def hung_worker(ctx: Context) -> Outcome:
    """A worker stops settling but keeps its stream open: its leases lapse and are redelivered."""
    lease_s = 3
    with _run(ctx, sidecar_args=("--lease", f"{lease_s}s")) as run:
        sidecar = run.start_sidecar()
        run.start_worker("w1", sidecar.target, max_in_flight=WORKER_IN_FLIGHT)
        for n, share in enumerate(_moments(ctx, ctx.scale.faults)):
            run.wait_share(share)
            # A hung worker journals nothing it hangs on: no duplicates at all.
            with run.fault("hung worker", bound=0):
                run.start_worker(f"hung{n}", sidecar.target, max_in_flight=WORKER_IN_FLIGHT,
                                 hang_after=ctx.rng.randrange(0, 40))
                run.wait_for(f"hung{n} to hang on a record",
                             partial(hung_rows, run.journal_of(f"hung{n}")))
        verdict = run.finish()
        hung = sum(len(hung_rows(run.journal_of(f"hung{n}"))) for n in range(ctx.scale.faults))
        # Nothing is lost, so every record a hung worker held was redelivered, and only a
        # lapsed lease frees it: the hung stream stays open.
        return run.outcome("hung worker", verdict,
                           [f"hung workers held {hung:,} records until their leases lapsed"])


def broker_outage(ctx: Context) -> Outcome:
    """SIGSTOP the broker for a while, then SIGCONT, at random moments."""
    broker = ctx.broker
    if broker is None:
        raise RuntimeError("broker_outage needs a broker of its own (Context.broker)")
    with _run(ctx, bootstrap=broker.bootstrap_servers) as run:
        sidecar = run.start_sidecar()
        _two_workers(run, sidecar.target)
        for share in _moments(ctx, ctx.scale.faults):
            run.wait_share(share)
            with run.fault("broker frozen", committed=run.committed()):
                broker.freeze()
                try:
                    time.sleep(ctx.rng.uniform(*ctx.scale.outage_s))
                finally:
                    broker.thaw()
        return run.outcome("broker SIGSTOP", run.finish(timeout=300))


def rebalance_storm(ctx: Context) -> Outcome:
    """Three sidecars in one group, added and removed at random while traffic flows."""
    with _run(ctx) as run:
        for slot in range(3):
            sidecar = run.start_sidecar(slot)
            run.start_worker(f"w{slot}", sidecar.target, max_in_flight=WORKER_IN_FLIGHT)
        live = {0, 1, 2}
        for share in _moments(ctx, ctx.scale.faults * 2):
            run.wait_share(share)
            committed = run.committed()
            add = len(live) < 3 and (len(live) == 1 or ctx.rng.random() < 0.5)
            slot = min({0, 1, 2} - live) if add else ctx.rng.choice(sorted(live))
            with run.fault("sidecar joins" if add else "sidecar leaves",
                           committed=committed):
                if add:
                    run.start_sidecar(slot)
                    live.add(slot)
                else:
                    code = run.sidecars[slot].stop()
                    live.discard(slot)
                    if code != 0:
                        raise AssertionError(f"sidecar {slot} exited {code}\n{run.logs()}")
            # Tansu bend: a member that leaves while a rebalance is under way can leave
            # partitions unassigned for minutes (docs/faults.md), so the next change waits
            # for the group to settle.
            run.wait_for("the group to settle", partial(_settled, run))
        return run.outcome("rebalance storm", run.finish(timeout=300))


def _settled(run: FaultRun) -> bool:
    """Whether every live sidecar's latest rebalance event is an assignment, and their
    assignments (Admin/GetStatus) cover every partition."""
    owned: set[int] = set()
    for target in run.live_targets():
        try:
            with grpc.insecure_channel(target) as channel:
                status = admin_pb2_grpc.AdminStub(channel).GetStatus(
                    admin_pb2.GetStatusRequest(), timeout=5)
        except grpc.RpcError:
            return False
        if not status.rebalances or status.rebalances[-1].event != "assigned":
            return False
        owned |= {p.partition for p in status.partitions if p.topic == run.topic}
    return owned == set(range(PARTITIONS))


def cut_streams(ctx: Context) -> Outcome:
    """Cut the worker streams again and again, alternately from the server and the client side."""
    with _run(ctx) as run:
        sidecar = run.start_sidecar()
        proxy = CuttingProxy(("127.0.0.1", sidecar.port)).start()
        try:
            _two_workers(run, proxy.target)
            for n, share in enumerate(_moments(ctx, ctx.scale.faults * 2)):
                run.wait_share(share)
                side: Side = "server" if n % 2 == 0 else "client"
                with run.fault(f"stream cut ({side} side)", bound=2 * WORKER_IN_FLIGHT,
                               committed=run.committed()):
                    if not proxy.cut(side):
                        raise AssertionError("no worker stream to cut: the fault was not injected")
            return run.outcome("cut streams", run.finish())
        finally:
            proxy.close()


def graceful_restart(ctx: Context) -> Outcome:
    """SIGTERM the sidecar under load and restart it: workers finish in time, so no duplicates."""
    with _run(ctx) as run:
        sidecar = run.start_sidecar()
        _two_workers(run, sidecar.target)
        for share in _moments(ctx, ctx.scale.faults):
            run.wait_share(share)
            with run.fault("SIGTERM sidecar", bound=0):
                code = run.sidecars[0].stop()
                if code != 0:
                    raise AssertionError(f"graceful stop exited {code}\n{run.logs()}")
                run.start_sidecar()
        return run.outcome("graceful restart", run.finish())


COMPARE_CONCURRENCY = 64
"""Handlers running at once, the same on both sides: pool threads, or in-flight per worker x 2."""
COMPARE_DELAY_MS = (20.0, 40.0)
"""Each record takes this long to handle on both sides, like a call to an SMS provider."""
COMPARE_STEADY_S = 8.0
"""Each kill comes this long after the consumer was seen processing again: past the seed's
5 s auto-commit, as a crash in the middle of a working day would be."""


def seed_vs_lowwater(ctx: Context, delay_ms: tuple[float, float] = COMPARE_DELAY_MS
                     ) -> list[Outcome]:
    """The seed's auto-commit consumer and lowwater under the same kill -9 schedule.

    Both handle records alike (``delay_ms`` each, COMPARE_CONCURRENCY at once),
    with traffic near their capacity, as at the platform's peak. A kill takes
    the whole application: the seed's one process, or lowwater's sidecar and
    its two workers together; it restarts at once. Kills come COMPARE_STEADY_S
    into steady processing, ``faults`` times.
    """
    with _run(ctx, workdir=ctx.workdir / "seed", name="seed") as run:
        def start_seed() -> None:
            run.start_seed_consumer(threads=COMPARE_CONCURRENCY, delay_ms=delay_ms)
        start_seed()
        run.wait_progress("at the start")
        for _ in range(ctx.scale.faults):
            time.sleep(COMPARE_STEADY_S)  # the schedule, not a wait for a condition
            run.kill_worker("seed")
            with run.fault("kill -9 application", bound=0):
                start_seed()
        seed = run.outcome("seed: auto-commit + thread pool", run.finish(expect_all=False))
    with _run(ctx, workdir=ctx.workdir / "lowwater") as run:
        sidecar = run.start_sidecar()

        def start_workers() -> None:
            for name in ("w1", "w2"):
                run.start_worker(name, sidecar.target, max_in_flight=COMPARE_CONCURRENCY // 2,
                                 delay_ms=delay_ms)
        start_workers()
        run.wait_progress("at the start")
        for _ in range(ctx.scale.faults):
            time.sleep(COMPARE_STEADY_S)
            for name in ("w1", "w2"):
                run.kill_worker(name)
            run.sidecars[0].kill()
            with run.fault("kill -9 application", committed=run.committed()):
                run.start_sidecar()
                start_workers()
        ours = run.outcome("lowwater: sidecar + SDK workers", run.finish(timeout=300))
    return [seed, ours]


def _wait_streams(target: str, done: Callable[[set[str]], bool], timeout: float = 10.0) -> None:
    """Waits until the sidecar's set of worker ids satisfies ``done``."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        while True:
            workers = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5).workers
            if done({w.worker_id for w in workers}):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"worker streams still {sorted(w.worker_id for w in workers)}"
                                     f" after {timeout:g}s")
            time.sleep(0.05)


SCENARIOS: dict[str, Scenario] = {
    "sidecar-crash": sidecar_crash,
    "worker-crash": worker_crash,
    "hung-worker": hung_worker,
    "broker-outage": broker_outage,
    "rebalance-storm": rebalance_storm,
    "cut-streams": cut_streams,
    "graceful-restart": graceful_restart,
}
"""Every scenario, by the name the command line and the tests use."""

__all__ = ["PARTITIONS", "SCENARIOS", "SHORT", "SOAK", "Context", "Scale", "Scenario"]
