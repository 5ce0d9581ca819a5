"""Redis for the tests: the machine's shared server, and private ``redis-server`` processes.

The shared one (``127.0.0.1:6379`` unless ``LOWWATER_TEST_REDIS_URL`` says otherwise) is used
with a unique key prefix per test, deleted afterwards. A test that stops or freezes Redis
starts a :class:`RedisServer` of its own, so that other users of the shared one never notice.

This module must not import pytest.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import redis

from coordinator.embedded.tansu import pick_free_port

REDIS_URL_ENV: Final = "LOWWATER_TEST_REDIS_URL"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
START_TIMEOUT_S: Final = 10.0


def shared_redis_url() -> str:
    return os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)


def unique_prefix() -> str:
    return f"lwtest-{uuid.uuid4().hex[:12]}"


def delete_prefix(url: str, prefix: str) -> int:
    """Deletes every key under ``prefix:``; returns how many."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def ping(url: str) -> str | None:
    """None when Redis at ``url`` answers; otherwise why not."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


class RedisServer:
    """A private ``redis-server`` on a free loopback port, without persistence.

    ``stop()`` and ``start()`` again keep the port, as a restarted Redis would;
    ``freeze()``/``thaw()`` send SIGSTOP/SIGCONT. Every signal goes to this process's own pid.
    """

    def __init__(self, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH (Debian package redis-server)")
        self.binary = binary
        self.port = pick_free_port()
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while (why := ping(self.url)) is not None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on {self.port} did not start: {why}\n"
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Kills it (SIGKILL: a crash, nothing flushed); its data is gone."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a frozen process dies only once thawed
            proc.kill()
            proc.wait()

    def freeze(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
