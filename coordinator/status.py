"""``lowwater status`` (one table, once) and ``lowwater top`` (the same, live), from
``Admin/GetStatus`` of a running sidecar.

Per partition: the committed offset, lag, pending and in-flight records, the commit rate
(from two readings) and the age of the oldest pending record. Then the worker streams and
the latest rebalances. Reading (:func:`fetch`, the only I/O) is apart from drawing
(:func:`render`, pure: it takes the time and the rates).

A sidecar with an Admin token or TLS needs the flags of :mod:`coordinator.admin_client`
(``--token-file``, ``--tls-ca-file``...).

Exit codes: 0; 1 when the sidecar cannot be asked or refuses; 2 on bad usage (a security flag
naming a missing file or an empty variable, too).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from typing import Final

import grpc
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from coordinator import admin_client
from coordinator.inspect import duration
from lowwater.security import ChannelSecurity
from lowwater.v1 import admin_pb2, admin_pb2_grpc

TARGET_ENV: Final = "LOWWATER_LISTEN"
DEFAULT_TARGET: Final = "127.0.0.1:50051"
CALL_TIMEOUT_S: Final = 5.0
REBALANCES_SHOWN: Final = 5
PLAINTEXT: Final = ChannelSecurity()
"""No token, no TLS."""

Rates = Mapping[tuple[str, int], float]
"""Committed records per second, per (topic, partition)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default=os.environ.get(TARGET_ENV, DEFAULT_TARGET), metavar="ADDRESS",
        help=f"the sidecar's listen address: HOST:PORT or unix:PATH (default: ${TARGET_ENV},"
             f" else {DEFAULT_TARGET})")
    admin_client.add_arguments(parser)


def add_top_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)
    parser.add_argument("--interval", type=_positive, default=1.0, metavar="SECONDS",
                        help="seconds between refreshes (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=0, metavar="N",
                        help="stop after N refreshes; 0 runs until Ctrl-C (default: 0)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def fetch(target: str, security: ChannelSecurity = PLAINTEXT) -> admin_pb2.GetStatusResponse:
    """Admin/GetStatus of the sidecar at ``target``. Raises grpc.RpcError."""
    with security.channel(target) as channel:
        resp: admin_pb2.GetStatusResponse = admin_pb2_grpc.AdminStub(channel).GetStatus(
            admin_pb2.GetStatusRequest(), timeout=CALL_TIMEOUT_S,
            metadata=security.call_metadata())
        return resp


def rates(before: admin_pb2.GetStatusResponse, after: admin_pb2.GetStatusResponse,
          seconds: float) -> dict[tuple[str, int], float]:
    """Committed records per second between two readings, per partition in both."""
    old = {(p.topic, p.partition): p.committed_offset for p in before.partitions}
    out: dict[tuple[str, int], float] = {}
    for p in after.partitions:
        was = old.get((p.topic, p.partition))
        if was is not None and was >= 0 and p.committed_offset >= was and seconds > 0:
            out[(p.topic, p.partition)] = (p.committed_offset - was) / seconds
    return out


def _num(value: int) -> str:
    return "-" if value < 0 else f"{value:,}"


def _age(seconds: float) -> str:
    return duration(int(seconds * 1000))


def render(status: admin_pb2.GetStatusResponse, now_ms: int,
           partition_rates: Rates | None = None) -> RenderableType:
    """The status as rich tables. ``partition_rates`` None: no rate column (one reading)."""
    parts = Table(title=f"group {status.group}: {status.health}, "
                        f"{status.buffered_count:,} buffered", title_justify="left")
    for name in ("partition", "committed", "lag", "pending", "in flight"):
        parts.add_column(name, justify="left" if name == "partition" else "right")
    if partition_rates is not None:
        parts.add_column("commits/s", justify="right")
    parts.add_column("oldest pending", justify="right")
    any_paused = any(p.paused for p in status.partitions)
    if any_paused:
        parts.add_column("fetching", justify="left")
    for p in status.partitions:
        age = p.oldest_pending_age.seconds + p.oldest_pending_age.nanos / 1e9
        row = [f"{p.topic}[{p.partition}]", _num(p.committed_offset), _num(p.lag),
               f"{p.pending_count:,}", f"{p.in_flight_count:,}"]
        if partition_rates is not None:
            rate = partition_rates.get((p.topic, p.partition))
            row.append("-" if rate is None else f"{rate:,.0f}")
        row.append(_age(age) if p.pending_count else "-")
        if any_paused:
            row.append("paused" if p.paused else "")
        parts.add_row(*row)
    workers = Table(title=f"{len(status.workers)} worker stream(s)", title_justify="left")
    for name in ("stream", "worker", "in flight", "max"):
        workers.add_column(name, justify="right" if name in ("in flight", "max") else "left")
    for w in status.workers:
        workers.add_row(w.stream_id, w.worker_id, f"{w.in_flight_count:,}",
                        f"{w.max_in_flight_messages:,}")
    shown: list[RenderableType] = [parts, workers]
    if status.rebalances:
        lines = Text("latest rebalances:\n", style="bold")
        for event in list(status.rebalances)[-REBALANCES_SHOWN:]:
            names = ", ".join(f"{r.topic}[{r.partition}]" for r in event.partitions)
            lines.append(f"  {_age(max(0, now_ms - event.at_ms) / 1000)} ago  "
                         f"{event.event}  {names}\n")
        shown.append(lines)
    if status.HasField("pending_store"):
        store = status.pending_store
        state = admin_pb2.PendingStoreStatus.State.Name(store.state).removeprefix("STATE_")
        text = f"redis pending sets: {state.lower()}"
        if store.last_error:
            text += f" ({store.last_error})"
        shown.append(Text(text))
    return Group(*shown)


def _unreachable(target: str, exc: grpc.RpcError, security: ChannelSecurity) -> int:
    print(f"lowwater: cannot get the status of the sidecar at {target}:"
          f" {admin_client.explain(exc, security)}", file=sys.stderr)
    return 1


def _security(command: str, args: argparse.Namespace) -> ChannelSecurity | int:
    """The checked security flags, or exit code 2 after a one-line message naming the flag."""
    try:
        return admin_client.security_from_args(args)
    except admin_client.OptionError as exc:
        print(f"lowwater {command}: error: {exc} (see 'lowwater {command} --help')",
              file=sys.stderr)
        return 2


def run_status(args: argparse.Namespace, console: Console | None = None) -> int:
    security = _security("status", args)
    if isinstance(security, int):
        return security
    try:
        status = fetch(args.target, security)
    except grpc.RpcError as exc:
        return _unreachable(args.target, exc, security)
    (console or Console()).print(render(status, int(time.time() * 1000)))
    return 0


def run_top(args: argparse.Namespace, console: Console | None = None) -> int:
    security = _security("top", args)
    if isinstance(security, int):
        return security
    console = console or Console()
    try:
        before = fetch(args.target, security)
    except grpc.RpcError as exc:
        return _unreachable(args.target, exc, security)
    taken = time.monotonic()
    shown = 0
    try:
        with Live(render(before, int(time.time() * 1000)), console=console,
                  auto_refresh=False, transient=False) as live:
            while not args.iterations or shown < args.iterations:
                time.sleep(args.interval)
                try:
                    after = fetch(args.target, security)
                except grpc.RpcError as exc:
                    live.stop()
                    return _unreachable(args.target, exc, security)
                now = time.monotonic()
                live.update(render(after, int(time.time() * 1000),
                                   rates(before, after, now - taken)), refresh=True)
                before, taken = after, now
                shown += 1
    except KeyboardInterrupt:
        pass
    return 0
