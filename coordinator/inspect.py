"""``lowwater inspect``: read back the pending sets a sidecar wrote to Redis, after a crash.

It lists, per partition, the records the previous owner had delivered and not finished: the
ones the next owner will deliver again. The layout and the encoding are
:mod:`coordinator.core.pending`'s.

Reading (:func:`gather`, the only I/O) is kept apart from the pure formatting
(:func:`heading`, :func:`entry_cells`, :func:`summarize`, :func:`summary_line`,
:func:`to_json`), which takes ``now`` explicitly.

Exit codes: 0 (also when there is nothing to show), 1 when Redis cannot be read, 2 on bad
usage (``--redis-url`` or ``--group`` missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from coordinator.config import redact_url
from coordinator.core.model import TopicPartition
from coordinator.core.pending import (
    META_FIELD,
    SCHEMA,
    KeySpace,
    PartitionMeta,
    PendingEntry,
    decode_hash,
)
from coordinator.core.records import LEASED

if TYPE_CHECKING:
    import redis

PROG: Final = "lowwater inspect"
REDIS_URL_ENV: Final = "LOWWATER_REDIS_URL"
GROUP_ENV: Final = "LOWWATER_GROUP"
DEFAULT_PREFIX: Final = "lowwater"
DEFAULT_LIMIT: Final = 50
SOCKET_TIMEOUT_S: Final = 5.0
"""Seconds to connect to Redis, and to wait for each answer."""
PLAIN_WIDTH: Final = 160
"""Columns of the output when stdout is not a terminal and ``COLUMNS`` is unset: wide
enough that a table row is never wrapped in a file or a pipe."""
EXIT_OK: Final = 0
EXIT_UNREADABLE: Final = 1
EXIT_USAGE: Final = 2


# --- arguments ----------------------------------------------------------------------------------


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url", metavar="URL",
        help=f"the Redis the sidecar wrote to, e.g. redis://127.0.0.1:6379/0"
             f" (default: ${REDIS_URL_ENV})")
    parser.add_argument(
        "--group", metavar="GROUP", help=f"the consumer group (default: ${GROUP_ENV})")
    parser.add_argument(
        "--prefix", metavar="PREFIX", default=DEFAULT_PREFIX,
        help="the key prefix the sidecar wrote under (default: %(default)s)")
    parser.add_argument(
        "--topic", dest="topics", metavar="TOPIC", action="append",
        help="show only this topic; repeatable, or comma-separated (default: every topic)")
    parser.add_argument(
        "--json", action="store_true",
        help="print one JSON document with every entry, instead of tables")
    parser.add_argument(
        "--limit", type=_limit, default=DEFAULT_LIMIT, metavar="N",
        help="rows shown per partition; the summary counts them all (default: %(default)s)")


# --- what was read ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionReport:
    """One partition's hash as read back."""

    tp: TopicPartition
    meta: PartitionMeta | None
    meta_raw: str | None
    """The ``meta`` field as stored, None when the hash has none."""
    entries: tuple[PendingEntry, ...]
    """In offset order."""
    skipped_fields: int
    """Fields that could not be decoded: malformed entries, and a meta of an unknown schema."""


@dataclass(frozen=True, slots=True)
class Inspection:
    """Everything read for one group."""

    group: str
    prefix: str
    partitions: tuple[PartitionReport, ...]
    """Sorted by topic and partition."""
    skipped_members: int
    """Members of the ``partitions`` set that name no partition."""


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def report(tp: TopicPartition, fields: Mapping[Any, Any]) -> PartitionReport:
    """A partition's ``HGETALL`` as a :class:`PartitionReport`."""
    # Field names are decoded leniently: one that is not UTF-8 is a malformed entry, not a crash.
    named = {_text(name): value for name, value in fields.items()}
    meta, entries = decode_hash(named)
    raw = named.get(META_FIELD)
    meta_raw = None if raw is None else _text(raw)
    skipped = len(named) - len(entries) - (1 if meta is not None else 0)
    ordered = tuple(entries[offset] for offset in sorted(entries))
    return PartitionReport(tp, meta, meta_raw, ordered, skipped)


def gather(client: redis.Redis, keys: KeySpace, topics: Iterable[str] | None = None
           ) -> Inspection:
    """Read the group's pending sets: the ``partitions`` set, then every hash in one pipeline.

    Args:
        client: a synchronous client (bytes responses or decoded ones).
        keys: the group's key names.
        topics: keep only these topics; None for all.

    Raises:
        redis.RedisError: Redis could not be read.
    """
    wanted = None if topics is None else frozenset(topics)
    skipped = 0
    tps: set[TopicPartition] = set()
    for member in client.smembers(keys.partitions):
        tp = KeySpace.parse_member(member)
        if tp is None:
            skipped += 1
        elif wanted is None or tp.topic in wanted:
            tps.add(tp)
    ordered = sorted(tps)
    pipe = client.pipeline(transaction=False)
    for tp in ordered:
        pipe.hgetall(keys.partition(tp))
    hashes: list[Any] = pipe.execute() if ordered else []
    partitions = tuple(report(tp, fields) for tp, fields in zip(ordered, hashes, strict=True))
    return Inspection(keys.group, keys.prefix, partitions, skipped)


# --- formatting (pure) --------------------------------------------------------------------------


def duration(ms: int) -> str:
    """A span of milliseconds for a person: ``12.3 s``, ``5 m 07 s``, ``2 h 05 m``, ``3 d 04 h``."""
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    seconds = ms / 1000
    if seconds < 60:
        return f"{sign}{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{sign}{whole // 60} m {whole % 60:02d} s"
    if whole < 86400:
        return f"{sign}{whole // 3600} h {whole % 3600 // 60:02d} m"
    return f"{sign}{whole // 86400} d {whole % 86400 // 3600:02d} h"


def ago(now_ms: int, then_ms: int) -> str:
    """``12.3 s ago``; ``in 1.0 s`` when ``then_ms`` is ahead of this clock."""
    delta = now_ms - then_ms
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def _plural(n: int, word: str, words: str = "") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


def meta_problem(raw: str | None) -> str:
    """Why a partition has no readable meta, given the field as stored (None: absent)."""
    if raw is None:
        return "meta missing"
    try:
        version = json.loads(raw).get("v")
    except (ValueError, AttributeError):
        version = None
    if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA:
        return f"meta of an unknown schema version (v{version}; this reader knows v{SCHEMA})"
    return "meta malformed"


def heading(part: PartitionReport, now_ms: int) -> str:
    """``topic[partition]: written by instance X 12.3 s ago, committed N, ...``."""
    name = f"{part.tp.topic}[{part.tp.partition}]"
    meta = part.meta
    if meta is None:
        entries = _plural(len(part.entries), "entry", "entries")
        return f"{name}: {meta_problem(part.meta_raw)}, {entries}"
    committed = "nothing committed" if meta.committed is None else f"committed {meta.committed}"
    commit = "no commit offset" if meta.commit_offset is None \
        else f"commit offset {meta.commit_offset}"
    undelivered = f"{meta.undelivered} never delivered"
    if meta.undelivered and meta.lowest_undelivered is not None:
        undelivered += f", from offset {meta.lowest_undelivered}"
    return (f"{name}: written by instance {meta.instance} {ago(now_ms, meta.written_ms)},"
            f" {committed}, {commit}, {meta.pending} pending ({undelivered})")


COLUMNS: Final = ("offset", "state", "worker", "msg_id", "pending for", "delivered", "lease",
                  "attempts")
"""The table's columns, as :func:`entry_cells` fills them."""


def entry_cells(entry: PendingEntry, now_ms: int) -> tuple[str, ...]:
    """One table row, in :data:`COLUMNS` order. Delivery and lease cells are blank when the
    entry has none (it is not leased)."""
    delivered = ago(now_ms, entry.delivered_ms) if entry.delivered_ms else ""
    lease = ""
    if entry.deadline_ms:
        left = entry.deadline_ms - now_ms
        lease = f"{duration(left)} left" if left > 0 else f"expired {duration(-left)} ago"
    return (str(entry.offset), entry.state, entry.worker, str(entry.msg_id or ""),
            duration(now_ms - entry.fetched_ms), delivered, lease, str(entry.attempts))


@dataclass(frozen=True, slots=True)
class Summary:
    """What the next owners will deliver again, over the listed entries."""

    redelivered: int
    """Listed entries: every one is delivered again by the partition's next owner."""
    in_flight: int
    """Of those, entries that were leased to a worker."""
    workers: int
    """Distinct workers holding the in-flight entries."""


def summarize(partitions: Iterable[PartitionReport]) -> Summary:
    redelivered = in_flight = 0
    workers: set[str] = set()
    for part in partitions:
        for entry in part.entries:
            redelivered += 1
            if entry.state == LEASED.value:
                in_flight += 1
                workers.add(entry.worker)
    return Summary(redelivered, in_flight, len(workers))


def summary_line(summary: Summary) -> str:
    return (f"the next owner will redeliver {_plural(summary.redelivered, 'listed record')}"
            f" in all, {summary.in_flight} of them in flight (leased)"
            f" on {_plural(summary.workers, 'worker')}")


def nothing_line(inspection: Inspection, topics: Sequence[str] | None, url: str) -> str:
    """What to say when no partition is left to show; ``url`` is already redacted."""
    where = f"under prefix {inspection.prefix} in {url}"
    if topics:
        return (f"no pending sets for topic {', '.join(topics)} of group {inspection.group}"
                f" {where}")
    return f"no pending sets for group {inspection.group} {where}"


def to_json(inspection: Inspection) -> dict[str, Any]:
    """The ``--json`` document: every entry, partitions by topic and partition, entries by
    offset; a meta as stored (``"v"`` is its schema), or null when it is missing or unknown."""
    return {
        "group": inspection.group,
        "prefix": inspection.prefix,
        "partitions": [
            {
                "topic": part.tp.topic,
                "partition": part.tp.partition,
                "meta": None if part.meta is None else json.loads(part.meta.encode()),
                "entries": [dataclasses.asdict(entry) for entry in part.entries],
                "skipped_fields": part.skipped_fields,
            }
            for part in inspection.partitions
        ],
        "skipped_members": inspection.skipped_members,
    }


# --- the command --------------------------------------------------------------------------------


def _usage_error(message: str) -> int:
    print(f"{PROG}: error: {message} (see '{PROG} --help')", file=sys.stderr)
    return EXIT_USAGE


def _topics(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [t.strip() for item in values for t in item.split(",") if t.strip()] or None


def _connect(url: str) -> redis.Redis:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), retries=0))


def run(args: argparse.Namespace) -> int:
    url: str | None = args.redis_url or os.environ.get(REDIS_URL_ENV) or None
    group: str | None = args.group or os.environ.get(GROUP_ENV) or None
    if url is None:
        return _usage_error(f"--redis-url is required (or set {REDIS_URL_ENV})")
    if group is None:
        return _usage_error(f"--group is required (or set {GROUP_ENV})")
    shown_url = redact_url(url)
    topics = _topics(args.topics)
    import redis

    try:
        client = _connect(url)
    except ValueError as exc:
        return _usage_error(f"invalid --redis-url {shown_url}: {_scrub(str(exc), url)}")
    try:
        with client:
            inspection = gather(client, KeySpace(args.prefix, group), topics)
    except (redis.RedisError, OSError) as exc:
        reason = _scrub(str(exc), url) or type(exc).__name__
        print(f"{PROG}: cannot read {shown_url}: {reason}", file=sys.stderr)
        return EXIT_UNREADABLE
    now_ms = int(time.time() * 1000)
    if args.json:
        print(json.dumps(to_json(inspection), indent=2))
        return EXIT_OK
    render(inspection, now_ms, args.limit, topics, shown_url)
    return EXIT_OK


def _scrub(message: str, url: str) -> str:
    """``message`` on one line, without the URL's password should a library have quoted it."""
    message = " ".join(message.split())
    redacted = redact_url(url)
    if redacted != url:
        message = message.replace(url, redacted)
        userinfo = url.partition("://")[2].rpartition("@")[0]
        password = userinfo.partition(":")[2]
        if password:
            message = message.replace(password, "***")
    return message


def render(inspection: Inspection, now_ms: int, limit: int, topics: Sequence[str] | None,
           shown_url: str) -> None:
    """Print ``inspection`` for a person, on stdout."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, soft_wrap=True, width=PLAIN_WIDTH)
    if inspection.skipped_members:
        console.print(Text(
            f"skipped {_plural(inspection.skipped_members, 'member')} of"
            f" {KeySpace(inspection.prefix, inspection.group).partitions}"
            " that name no partition", style="yellow"))
    if not inspection.partitions:
        console.print(Text(nothing_line(inspection, topics, shown_url)))
        return
    for part in inspection.partitions:
        console.print(Text(heading(part, now_ms), style="bold"))
        if part.skipped_fields:
            console.print(Text(f"  {_plural(part.skipped_fields, 'malformed field')} skipped",
                               style="yellow"))
        if not part.entries:
            console.print("  no delivered record listed")
            continue
        table = Table()
        for column in COLUMNS:
            table.add_column(column, justify="left" if column in ("state", "worker") else "right",
                             no_wrap=True)
        for entry in part.entries[:limit]:
            table.add_row(*(Text(cell) for cell in entry_cells(entry, now_ms)))
        if limit:
            console.print(table)
        more = len(part.entries) - limit
        if more > 0:
            console.print(f"... and {more} more")
    console.print(Text(summary_line(summarize(inspection.partitions)), style="bold"))
