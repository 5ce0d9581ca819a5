"""``health_listen`` and ``metrics_listen`` as an operator sees them when their port is taken.

Like ``listen`` (tests/e2e/test_serve.py): a taken address is a condition of the host, not a
bad setting, so the sidecar exits 1 with a message naming the address. It does so before it
calls Kafka, so a sidecar that cannot start never joins its group and never makes the others
rebalance.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

START_TIMEOUT_S = 60.0
"""Seconds for the sidecar to find the port taken and exit."""


@pytest.fixture
def quiet_broker() -> Iterator[socket.socket]:
    """A listening socket standing for Kafka, never accepting: a connection the sidecar makes
    to it waits in the backlog, where the test finds it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


@pytest.fixture
def taken() -> Iterator[str]:
    """An address that another process listens on, with ``SO_REUSEPORT``: a listener that set
    it too would share the port silently instead of failing."""
    with socket.create_server(("127.0.0.1", 0), reuse_port=True) as holder:
        yield f"127.0.0.1:{holder.getsockname()[1]}"


@pytest.mark.parametrize(("setting", "what"), [("health_listen", "health"),
                                               ("metrics_listen", "metrics")])
def test_a_taken_address_exits_1_naming_it_before_calling_kafka(
    setting: str, what: str, taken: str, quiet_broker: socket.socket
) -> None:
    broker = f"127.0.0.1:{quiet_broker.getsockname()[1]}"
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "serve", "--bootstrap-servers", broker,
         "--group", "g", "--topic", "t", "--listen", "127.0.0.1:0",
         f"--{setting.replace('_', '-')}", taken],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False)
    assert done.returncode == 1, done.stderr
    assert f"cannot serve {what} on {taken}: " in done.stderr
    with pytest.raises(BlockingIOError):  # nothing connected to the broker
        quiet_broker.accept()
