"""Wires the sidecar together: the fetcher thread, the engine and the gRPC server.

This module is the one place with threads, queues and the event loop. The
fetcher thread owns the Kafka consumer; the event loop owns the engine (and
through it the ledger) and serves gRPC. They meet in :class:`Bridge`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import grp
import logging
import os
import signal
from collections.abc import Coroutine, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.config import (
    ConfigError,
    Problem,
    Settings,
    is_loopback_listen,
    redact_url,
    tcp_address,
)
from coordinator.core.ledger import CommitPoint, LeaseTimes, Ledger
from coordinator.core.model import TopicPartition
from coordinator.core.pending import KeySpace
from coordinator.core.policy import RetryPolicy
from coordinator.kafka.fetcher import Assignment, Fetcher, Resubscribe, Seek, StopFetching
from coordinator.kafka.producer import HandoffProducer
from coordinator.kafka.records import Segment
from coordinator.kafka.topics import TopicCheckError, ensure_topics
from coordinator.runtime.engine import Engine
from coordinator.runtime.metrics import EngineCollector, Metrics
from coordinator.runtime.pendingstore import PendingStore, StoreState, connect
from coordinator.runtime.subscriptions import Router
from coordinator.runtime.tls import CertificateFiles
from coordinator.service.admin import AdminService
from coordinator.service.auth import ServerGuard, token_source
from coordinator.service.coordinator import CoordinatorService
from coordinator.service.coordinator import add_to_server as add_coordinator
from coordinator.service.limits import Limits
from lowwater.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2

log = logging.getLogger("coordinator.sidecar")

REVOKE_GRACE = 5.0
"""Seconds the consumer thread waits beyond ``rebalance_timeout`` for the engine's revoke."""
CLOSE_TIMEOUT = 30.0
"""Seconds to wait for the consumer to close and leave the group."""
TOPIC_CHECK_RETRY = 5.0
"""Seconds before the hand-off topics are checked again when the broker could not be asked."""
STATISTICS_INTERVAL_MS = 5000
"""librdkafka's statistics interval when metrics are on, unless passed through."""
HEALTH_MAX_RPCS = 32
"""Calls the health-only server (``health_listen``) takes at once: probes, and a few watches."""
SERVER_GRACE = 1.0
"""Seconds open RPCs get when the gRPC server stops."""
LIVENESS_HEALTH = "lowwater.live"
"""The grpc.health.v1 service name for liveness and startup probes: SERVING from the moment
the server starts until shutdown begins, whatever Kafka does. Restarting a sidecar because
the broker is down would only drop its leases; readiness uses the overall status ("")."""
PENDING_STORE_HEALTH = "lowwater.redis"
"""The grpc.health.v1 service name that reports the pending-set writer: SERVING while Redis
takes its writes, NOT_SERVING while degraded. The overall status ("") does not depend on it:
Kafka, not Redis, is what the sidecar needs to do its job."""
SERVICES = (
    coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


class StartupError(Exception):
    """The sidecar could not start (for example, its address is taken)."""

    retriable = False


class Bridge:
    """The fetcher's sink: forwards what the consumer thread learns to the event loop.

    Methods are called on the fetcher thread and never touch the engine directly.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sidecar: Sidecar) -> None:
        self._loop = loop
        self._sidecar = sidecar

    def _post(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: we are exiting
            self._loop.call_soon_threadsafe(fn, *args)

    def on_records(self, segments: list[Segment], count: int) -> None:
        self._post(self._intake, segments, count)

    def _intake(self, segments: list[Segment], count: int) -> None:  # on the loop
        self._sidecar.engine.intake(segments)
        self._sidecar.fetcher.ingested(count)

    def on_assigned(self, parts: list[Assignment]) -> None:
        self._post(self._sidecar.engine.assigned, parts)

    def on_revoke(self, tps: list[TopicPartition], lost: bool) -> list[CommitPoint]:
        settings = self._sidecar.settings
        wait = settings.rebalance_timeout.total_seconds() + REVOKE_GRACE
        future = asyncio.run_coroutine_threadsafe(self._sidecar.engine.revoke(tps, lost), self._loop)
        try:
            return future.result(wait)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.error("revoke did not finish within %.1fs; committing nothing", wait)
            return []

    def on_committed(self, points: list[CommitPoint], ok: bool) -> None:
        self._post(self._sidecar.engine.committed, points, ok)

    def on_sought(self, command: Seek, generation: int | None, error: str | None) -> None:
        self._post(self._sidecar.engine.sought, command, generation, error)

    def on_commit_latency(self, seconds: float) -> None:
        metrics = self._sidecar.metrics
        if metrics is not None:
            metrics.commit_latency.observe(seconds)  # thread-safe: no need for the loop

    def on_lag(self, lags: dict[TopicPartition, int]) -> None:
        self._post(self._sidecar.engine.lags, lags)

    def on_health(self, serving: bool, reason: str) -> None:
        self._post(self._sidecar.broker_health, serving, reason)

    def on_stopped(self, error: BaseException | None) -> None:
        self._post(self._sidecar.fetcher_stopped, error)


class Sidecar:
    """One lowwater sidecar process.

    Lifecycle: ``await start()`` binds the server and starts consuming;
    ``await close()`` runs the drain sequence and is idempotent; ``closed`` is
    set when it is over. Not thread-safe: use it from its event loop.
    """

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        """Reads the tokens (from ``environ``, default :data:`os.environ`, for ``*_token_env``)
        and checks the TLS files: before anything connects to Kafka or binds a port.

        Raises:
            ConfigError: a token cannot be read, or both APIs have the same one; a TLS file
                cannot be read or does not parse.
        """
        self.settings = settings
        self.ledger = Ledger(
            leases=LeaseTimes(settings.lease.total_seconds(), settings.max_lease.total_seconds()),
            policy=RetryPolicy(
                settings.default_retry_delay.total_seconds(),
                settings.max_retry_delay.total_seconds(),
                settings.max_attempts,
            ),
            max_pending_per_partition=settings.max_pending_per_partition,
            offset_map_limit=settings.offset_map_max_bytes if settings.offset_map else None,
        )
        self.health = health.aio.HealthServicer()
        self.metrics: Metrics | None = Metrics() if settings.metrics_listen else None
        self.limits = Limits.of(settings)
        self.server = grpc.aio.server(options=self.limits.server_options(),
                                      maximum_concurrent_rpcs=self.limits.maximum_concurrent_rpcs,
                                      interceptors=[self._guard(environ or os.environ)])
        self.tls: CertificateFiles | None = None
        """The certificate files, when ``tls_cert_file`` is set."""
        self._credentials: grpc.ServerCredentials | None = None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            self.tls = CertificateFiles(settings.tls_cert_file, settings.tls_key_file,
                                        settings.tls_client_ca_file)
            self._credentials = self.tls.credentials()
        self.health_server: grpc.aio.Server | None = None
        """With ``health_listen``: a server of grpc.health.v1 alone, for probes."""
        self.port: int | None = None
        """The bound TCP port, once started (None for a unix socket)."""
        self.health_port: int | None = None
        self.closed = asyncio.Event()
        self._timers: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._broker_up = False
        self._broker_news = "waiting for the first answer from the broker"
        """What the consumer last said about the broker."""
        self._health_update: asyncio.Future[None] | None = None
        self._health_logged: bool | None = None
        """The overall health last logged; None before the first report."""
        self.failure: str | None = None
        """Why the sidecar shut itself down, if it did (the exit code is then 1)."""
        self.producer: HandoffProducer | None = None
        self._topics_checked = not settings.handoff_topics()
        """Whether the hand-off topics check has started (or there is nothing to check)."""
        self._topics_ready = self._topics_checked
        """Whether the hand-off topics exist: until then the consumer is not subscribed and
        health is NOT_SERVING."""
        self._tasks: set[asyncio.Future[None]] = set()
        """Background tasks, referenced until they end."""
        self.store: PendingStore | None = None
        self._store_task: asyncio.Task[None] | None = None

    def _guard(self, environ: Mapping[str, str]) -> ServerGuard:
        settings = self.settings
        worker = token_source("token_file", settings.token_file, "token_env", settings.token_env,
                              environ)
        admin = token_source("admin_token_file", settings.admin_token_file, "admin_token_env",
                             settings.admin_token_env, environ)
        if worker is not None and admin is not None and worker.current() == admin.current():
            raise ConfigError(Problem(
                "admin_token_file" if settings.admin_token_file else "admin_token_env",
                "the Admin token must differ from the workers' token"))
        metrics = self.metrics
        return ServerGuard(
            worker_token=worker, admin_token=admin,
            admin_mutations=settings.admin_authenticated or settings.admin_insecure,
            on_refused=(lambda api, reason: None) if metrics is None
            else lambda api, reason: metrics.auth_refused.labels(api, reason).inc())

    async def start(self) -> None:
        """Binds the gRPC server and starts the consumer thread. Call once."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        consumer_config = settings.consumer_config()
        if self.metrics is not None:  # librdkafka's statistics give the lag gauge
            consumer_config.setdefault("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        self.fetcher = Fetcher(
            consumer_config, settings.all_topics(), Bridge(loop, self),
            batch_size=settings.fetch_batch_size, subscribe=self._topics_ready,
        )
        if settings.handoff_topics():
            self.producer = HandoffProducer(settings.producer_config(), settings.group,
                                            loop.call_soon_threadsafe)
        if settings.redis_url is not None:
            self.store = PendingStore(
                connect(settings.redis_url), KeySpace(settings.redis_prefix, settings.group),
                self.ledger, interval=settings.redis_interval.total_seconds(),
                ttl=settings.redis_key_ttl.total_seconds(), on_state=self._store_state)
        self.engine = Engine(
            self.ledger, self.fetcher,
            router=Router(settings.subscription_policies(),
                          default_delay=settings.default_retry_delay.total_seconds(),
                          max_delay=settings.max_retry_delay.total_seconds(),
                          retry_topic=settings.retry_topic),
            handoffs=self.producer,
            commit_interval=settings.commit_interval.total_seconds(),
            rebalance_timeout=settings.rebalance_timeout.total_seconds(),
            leaving=None if self.store is None else self.store.write_final,
            max_leases_per_worker=settings.max_leases_per_stream,
        )
        add_coordinator(
            CoordinatorService(self.engine, lease=settings.lease.total_seconds(),
                               max_lease=settings.max_lease.total_seconds(), limits=self.limits),
            self.server,
        )
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminService(self.engine, group=settings.group, health=self.health_name,
                         store=self.store, operator_actions=settings.admin_operator_actions),
            self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        await self._set_health(False)
        await self.health.set(LIVENESS_HEALTH, health_pb2.HealthCheckResponse.SERVING)
        if self._credentials is None and not is_loopback_listen(settings.listen):
            log.warning("serving on %s without TLS: records, and any token, cross the network"
                        " in clear (set tls_cert_file and tls_key_file)", settings.listen)
        try:
            address = _bind_address(settings.listen)
            port = (self.server.add_insecure_port(address) if self._credentials is None
                    else self.server.add_secure_port(address, self._credentials))
        except RuntimeError as exc:  # grpc's only signal for a taken or invalid address
            raise StartupError(f"cannot listen on {settings.listen}: {exc}") from exc
        self.port = None if settings.listen.startswith("unix:") else port
        if self.port is None:  # bound, not listening yet: no one can connect before this
            try:
                _secure_socket(_socket_path(settings.listen), settings.socket_mode,
                               settings.socket_group)
            except (OSError, KeyError) as exc:  # KeyError: the group went since validation
                await self.server.stop(None)
                raise StartupError(f"cannot set the mode or group of {settings.listen}"
                                   f" (socket_mode, socket_group): {exc}") from exc
        if settings.health_listen is not None:
            self.health_server = grpc.aio.server(
                options=self.limits.server_options(), maximum_concurrent_rpcs=HEALTH_MAX_RPCS)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            try:
                self.health_port = self.health_server.add_insecure_port(
                    tcp_address(settings.health_listen))
            except RuntimeError as exc:
                await self.server.stop(None)
                raise StartupError(f"cannot serve health on {settings.health_listen}: {exc}"
                                   ) from exc
        if self.metrics is not None and settings.metrics_listen is not None:
            # Bound before Kafka is called: a sidecar that cannot start must not join the group.
            self.metrics.watch(EngineCollector(self.engine, loop, self.store))
            try:
                port = self.metrics.serve(settings.metrics_listen)
            except OSError as exc:
                await self.server.stop(None)
                raise StartupError(f"cannot serve metrics on {settings.metrics_listen}: {exc}"
                                   ) from exc
            log.info("metrics on http://%s:%d/metrics",
                     tcp_address(settings.metrics_listen).rpartition(":")[0], port)
        try:
            self.fetcher.start()  # librdkafka checks its configuration here
        except ConfigError:
            await self.server.stop(None)
            if self.metrics is not None:
                self.metrics.close()
            raise
        if self.producer is not None:
            self.producer.start()
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
            log.info("health (grpc.health.v1 only) on %s, port %d", settings.health_listen,
                     self.health_port)
        log.info("serving on %s%s", settings.listen if self.port is None
                 else f"{settings.listen.rpartition(':')[0]}:{self.port}", _security(settings))
        self._timers = asyncio.create_task(self.engine.run(), name="lowwater-timers")
        self._timers.add_done_callback(self._task_ended)
        if self.store is not None:
            log.info("writing pending sets to %s every %s (instance %s)",
                     redact_url(settings.redis_url or ""), settings.redis_interval,
                     self.store.instance)
            self._store_task = asyncio.create_task(self.store.run(), name="lowwater-redis")
            self._store_task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A task that runs until the sidecar closes ended: on its own, it failed (a bug).
        Leases would stop expiring, commits or snapshots stop: say so and shut down."""
        if task.cancelled() or task.exception() is None or self._closing is not None:
            return
        error = task.exception()
        log.error("%s failed; shutting down", task.get_name(), exc_info=error)
        self.failure = f"{task.get_name()} failed: {error!r}"
        self.request_close()

    def health_name(self) -> str:
        return "SERVING" if self._serving() else "NOT_SERVING"

    def _serving(self) -> bool:
        return self._broker_up and self._topics_ready and not self.engine.draining

    def _update_health(self) -> None:
        serving = self._serving()
        if serving is not self._health_logged:
            self._health_logged = serving
            if serving:
                log.info("health: SERVING")
            elif not self._broker_up:
                log.warning("health: NOT_SERVING (%s)", self._broker_news)
            else:
                log.info("health: NOT_SERVING (checking the hand-off topics before subscribing)")
        self._health_update = asyncio.ensure_future(self._set_health(serving))

    def broker_health(self, up: bool, news: str = "") -> None:
        """The consumer reached the broker (``up``) or lost it; ``news`` says how."""
        self._broker_up = up
        self._broker_news = news
        self._update_health()
        if up and not self._topics_checked:
            self._topics_checked = True
            self._spawn(self._check_handoff_topics())

    def _store_state(self, state: StoreState) -> None:
        status = health_pb2.HealthCheckResponse.NOT_SERVING if state is StoreState.DEGRADED \
            else health_pb2.HealthCheckResponse.SERVING
        self._spawn(self.health.set(PENDING_STORE_HEALTH, status))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Runs ``coro`` as a task that is kept referenced until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check_handoff_topics(self) -> None:
        """Once the broker answers: every dead-letter, expired and retry topic must exist, or
        be created (``create_topics``); then the consumer subscribes and health may turn
        SERVING. Otherwise the sidecar shuts down with exit code 1, having fetched nothing."""
        settings = self.settings
        try:
            created = await asyncio.to_thread(
                ensure_topics, settings.producer_config(), settings.handoff_topics(),
                create=settings.create_topics)
        except TopicCheckError as exc:
            if self._closing is not None:
                return
            if exc.retriable:
                log.warning("%s; checking the hand-off topics again in %.0fs", exc,
                            TOPIC_CHECK_RETRY)
                asyncio.get_running_loop().call_later(
                    TOPIC_CHECK_RETRY, lambda: self._spawn(self._check_handoff_topics()))
                return
            self.failure = str(exc)
            log.error("%s; shutting down", exc)
            self.request_close()
            return
        for topic in created:
            log.info("created hand-off topic %s (create_topics = true)", topic)
        if self._closing is not None:
            return
        log.info("hand-off topics present (%s); subscribing", ", ".join(settings.handoff_topics()))
        self._topics_ready = True
        self.fetcher.submit(Resubscribe())  # refreshes the metadata: it may miss created topics
        self._update_health()

    def fetcher_stopped(self, error: BaseException | None) -> None:
        if error is not None and self._closing is None:
            log.error("the consumer stopped unexpectedly (%s); shutting down", error)
            self.request_close()

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            await self.health.set(name, status)

    def request_close(self) -> asyncio.Task[None]:
        """Starts :meth:`close` (from a signal handler, say); later calls return the same task."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name="lowwater-close")
        return self._closing

    async def close(self) -> None:
        """Runs the drain sequence once; a second call waits for the first."""
        await asyncio.shield(self.request_close())

    async def _close(self) -> None:
        """The drain sequence of the contract: stop, NOT_SERVING, drain, commit, leave, exit."""
        settings = self.settings
        log.info("shutting down: draining for up to %s", settings.drain_timeout)
        self.fetcher.submit(StopFetching())
        await self.health.enter_graceful_shutdown()
        await self.engine.drain(settings.drain_timeout.total_seconds())
        try:
            ok = await asyncio.wait_for(self.engine.final_commit(), CLOSE_TIMEOUT)
            log.info("final commit %s", "done" if ok else "FAILED")
        except TimeoutError:
            log.error("final commit timed out after %.0fs", CLOSE_TIMEOUT)
        if self.producer is not None:
            await asyncio.to_thread(self.producer.close, CLOSE_TIMEOUT)
        self.fetcher.close()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self.fetcher.join, CLOSE_TIMEOUT):
            log.error("the consumer did not close within %.0fs", CLOSE_TIMEOUT)
        if self._timers is not None:
            self._timers.cancel()
        if self.store is not None:
            if self._store_task is not None:
                self._store_task.cancel()
            await self.store.close()
        await self.server.stop(SERVER_GRACE)
        if self.health_server is not None:
            await self.health_server.stop(SERVER_GRACE)
        if self.metrics is not None:
            self.metrics.close()
        if settings.listen.startswith("unix:"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_socket_path(settings.listen))
        log.info("shut down")
        self.closed.set()


def _security(settings: Settings) -> str:
    """What protects the server, for the start-up log line (never a token)."""
    tls = ("mTLS" if settings.tls_client_ca_file is not None
           else "TLS" if settings.tls_cert_file is not None else "plaintext")
    worker = "token" if settings.token_file or settings.token_env else "open"
    admin = "token" if settings.admin_token_file or settings.admin_token_env else "open"
    mutations = ("allowed" if settings.admin_authenticated
                 else "insecure" if settings.admin_insecure else "refused")
    return f" ({tls}; worker API {worker}; Admin API {admin}, mutating calls {mutations})"


def _secure_socket(path: str, mode: str, group: str | None) -> None:
    """Gives the worker socket its mode and group (grpc creates it with the umask's)."""
    if group is not None:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
    os.chmod(path, int(mode, 8))


def _socket_path(listen: str) -> str:
    path = listen.removeprefix("unix:")
    return "/" + path.lstrip("/") if path.startswith("//") else path


def _bind_address(listen: str) -> str:
    if listen.startswith("unix:"):
        path = _socket_path(listen)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket from a previous run
        return f"unix:{path}"
    return listen


async def _serve(settings: Settings) -> int:
    sidecar = Sidecar(settings)
    try:
        await sidecar.start()
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sidecar.request_close)
    await sidecar.closed.wait()
    return 1 if sidecar.fetcher.error is not None or sidecar.failure is not None else 0


GC_THRESHOLDS = (100_000, 50, 20)
"""The process's garbage-collector thresholds (Python's are 700, 10, 10). Every fetched record
makes a few objects that live until it is finished, and they are freed by reference counting
(the ledger breaks its record-lease and record-partition references when a record finishes or
its partition is dropped); the collector only scans them. At Python's thresholds it ran
every 700 allocations and took ~1 µs of the sidecar's ~7 µs of CPU per record (py-spy put
13-19% of the event loop on the line that makes the ledger's Record; bench/throughput.py's
sidecar went from 6.9-7.1 to 6.0-6.2 µs per record with these)."""


def serve(settings: Settings) -> int:
    """Runs the sidecar until SIGTERM or SIGINT; returns the process exit code.

    This is the process's entry point: it also sets the garbage collector (see
    GC_THRESHOLDS), after freezing what start-up made, so that full collections skip it.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return asyncio.run(_serve(settings))
