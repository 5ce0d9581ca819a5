"""``lowwater inspect`` against a real Redis: pending sets written with the pure encoders of
:mod:`coordinator.core.pending` are read back as tables, as JSON, and malformed data is
reported without a crash.

Redis is the shared one of the ``redis_keys`` fixture (``tests/conftest.py``): skipped when it
does not answer, a failure when ``CI`` is set. Every test writes under its own prefix, whose
keys are all deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from coordinator import cli
from coordinator.core.model import TopicPartition
from coordinator.core.pending import KeySpace, PartitionMeta, PendingEntry, encode_row
from coordinator.embedded.tansu import pick_free_port

GROUP = "sms-senders"
SUBPROCESS_TIMEOUT_S = 60
TERMINAL_VARIABLES = ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")
"""Kept out of the environment: the output under test is plain and wide."""
UNUSED_KEYS = KeySpace("lwtest-unused", GROUP)
"""For the tests that never reach Redis."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``inspect`` reads ``LOWWATER_REDIS_URL`` and ``LOWWATER_GROUP``: keep this machine's
    out, and its terminal settings, so the output is plain and wide."""
    for name in list(os.environ):
        test_setting = name.startswith("LOWWATER_TEST_")
        if (name.startswith("LOWWATER_") and not test_setting) or name in TERMINAL_VARIABLES:
            monkeypatch.delenv(name)


@pytest.fixture
def url(redis_keys: tuple[str, str]) -> str:
    """The shared Redis (see ``redis_keys``)."""
    return redis_keys[0]


@pytest.fixture
def keys(redis_keys: tuple[str, str]) -> KeySpace:
    """The key names of :data:`GROUP` under this test's own prefix, deleted after the test."""
    return KeySpace(redis_keys[1], GROUP)


@pytest.fixture
def client(url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as conn:
        yield conn


@dataclass
class Written:
    """A partition as a test wrote it."""

    tp: TopicPartition
    meta: PartitionMeta | None
    entries: list[PendingEntry]


def write(client: redis.Redis, keys: KeySpace, tp: TopicPartition, meta: PartitionMeta | None,
          entries: list[PendingEntry], extra: Mapping[str, str] | None = None) -> Written:
    """Store a partition's hash and its ``partitions`` member, as the sidecar does."""
    fields: dict[Any, Any] = {str(e.offset): encode_row(e.row()) for e in entries}  # hset's type
    if meta is not None:
        fields["meta"] = meta.encode()
    fields.update(extra or {})
    client.hset(keys.partition(tp), mapping=fields)
    client.sadd(keys.partitions, KeySpace.member(tp))
    return Written(tp, meta, entries)


def now_ms() -> int:
    return int(time.time() * 1000)


def meta(pending: int, undelivered: int = 0, lowest: int | None = None,
         committed: int | None = 100, commit_offset: int | None = 100) -> PartitionMeta:
    return PartitionMeta("host-a-4242", 3, now_ms() - 2_000, committed, commit_offset, pending,
                         undelivered, lowest)


def leased(offset: int, worker: str, msg_id: int) -> PendingEntry:
    t = now_ms()
    return PendingEntry(offset, "leased", 1, t - 9_000, msg_id, worker, t - 4_000, t + 26_000)


def waiting(offset: int, state: str = "ready", attempts: int = 2) -> PendingEntry:
    return PendingEntry(offset, state, attempts, now_ms() - 9_000)


def fixture_data(client: redis.Redis, keys: KeySpace) -> list[Written]:
    """Two topics, three partitions, six entries: four leased on two workers."""
    return [
        write(client, keys, TopicPartition("orders", 0), meta(5, 2, 140),
              [leased(101, "worker-1", 7), waiting(103), leased(102, "worker-2", 8)]),
        write(client, keys, TopicPartition("orders", 1), meta(1),
              [leased(100, "worker-1", 9)]),
        write(client, keys, TopicPartition("payments", 0), meta(2, committed=None),
              [waiting(5, "delayed"), leased(6, "worker-2", 10)]),
    ]


def inspect(*args: str, keys: KeySpace, url: str) -> list[str]:
    return ["inspect", "--redis-url", url, "--group", keys.group, "--prefix", keys.prefix, *args]


def table_rows(out: str) -> list[list[str]]:
    """The body rows of every table in ``out``, as cells (rich draws them between '│')."""
    return [[cell.strip() for cell in line.strip().strip("│").split("│")]
            for line in out.splitlines() if line.startswith("│")]


def run_json(capsys: pytest.CaptureFixture[str], *args: str, keys: KeySpace, url: str
             ) -> dict[str, Any]:
    assert cli.main(inspect("--json", *args, keys=keys, url=url)) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


# --- human output -------------------------------------------------------------------------------


def test_tables_list_exactly_the_written_entries_and_the_summary_counts_them(
    client: redis.Redis, keys: KeySpace, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    written = fixture_data(client, keys)
    assert cli.main(inspect(keys=keys, url=url)) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rows = table_rows(captured.out)
    expected = [e for w in written for e in sorted(w.entries, key=lambda e: e.offset)]
    assert [(int(r[0]), r[1], r[2], r[3], r[7]) for r in rows] == [
        (e.offset, e.state, e.worker, str(e.msg_id or ""), str(e.attempts)) for e in expected
    ]
    leased_rows = [r for r in rows if r[1] == "leased"]
    assert all(r[5].endswith(" s ago") and r[6].endswith(" s left") for r in leased_rows)
    assert all(r[5] == r[6] == "" for r in rows if r[1] != "leased")
    lines = captured.out.splitlines()
    assert any(line.startswith("orders[0]: written by instance host-a-4242 ")
               and line.endswith(", committed 100, commit offset 100,"
                                 " 5 pending (2 never delivered, from offset 140)")
               for line in lines)
    assert any(line.startswith("payments[0]: ") and "nothing committed" in line
               for line in lines)
    assert lines[-1] == ("the next owner will redeliver 6 listed records in all,"
                         " 4 of them in flight (leased) on 2 workers")


def test_limit_shows_the_first_rows_and_counts_the_rest(
    client: redis.Redis, keys: KeySpace, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = [waiting(offset) for offset in range(10, 15)]
    write(client, keys, TopicPartition("orders", 0), meta(5), entries)
    assert cli.main(inspect("--limit", "2", keys=keys, url=url)) == 0
    out = capsys.readouterr().out
    assert [r[0] for r in table_rows(out)] == ["10", "11"]
    assert "... and 3 more" in out.splitlines()
    assert "redeliver 5 listed records in all, 0 of them in flight" in out


def test_topic_filter(
    client: redis.Redis, keys: KeySpace, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture_data(client, keys)
    assert cli.main(inspect("--topic", "payments", keys=keys, url=url)) == 0
    out = capsys.readouterr().out
    assert [r[0] for r in table_rows(out)] == ["5", "6"]
    assert "orders[" not in out
    assert out.splitlines()[-1].startswith("the next owner will redeliver 2 listed records")
    doc = run_json(capsys, "--topic", "orders", keys=keys, url=url)
    assert [(p["topic"], p["partition"]) for p in doc["partitions"]] == [("orders", 0),
                                                                          ("orders", 1)]


def test_no_pending_sets(keys: KeySpace, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(inspect(keys=keys, url=url)) == 0
    assert capsys.readouterr().out == (
        f"no pending sets for group {GROUP} under prefix {keys.prefix} in {url}\n")


# --- JSON ---------------------------------------------------------------------------------------


def test_json_round_trips_what_was_written(
    client: redis.Redis, keys: KeySpace, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    written = fixture_data(client, keys)
    doc = run_json(capsys, "--limit", "1", keys=keys, url=url)  # --limit is for tables only
    assert doc == {
        "group": GROUP,
        "prefix": keys.prefix,
        "partitions": [
            {
                "topic": w.tp.topic,
                "partition": w.tp.partition,
                "meta": None if w.meta is None else json.loads(w.meta.encode()),
                "entries": [dataclasses.asdict(e)
                            for e in sorted(w.entries, key=lambda e: e.offset)],
                "skipped_fields": 0,
            }
            for w in written
        ],
        "skipped_members": 0,
    }
    read_back = [PartitionMeta.decode(json.dumps(p["meta"])) for p in doc["partitions"]]
    assert read_back == [w.meta for w in written]


# --- malformed data -----------------------------------------------------------------------------


def test_malformed_fields_and_a_newer_meta_are_reported_not_fatal(
    client: redis.Redis, keys: KeySpace, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    newer = json.dumps({"v": 99, "instance": "from-the-future", "shape": "unknown"})
    good = leased(12, "worker-1", 3)
    bad_fields = {"13": "not json", "14": "[1,2]", "-1": encode_row(good.row()),
                  "x": encode_row(good.row()), "15": '["ready",true,0,0,"",0,0]'}
    write(client, keys, TopicPartition("orders", 0), None, [good],
          extra={"meta": newer, **bad_fields})
    write(client, keys, TopicPartition("orders", 1), None, [waiting(4)])

    assert cli.main(inspect(keys=keys, url=url)) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "orders[0]: meta of an unknown schema version (v99; this reader knows v1), 1 entry" \
        in lines
    assert "  6 malformed fields skipped" in lines  # five entries and the meta
    assert "orders[1]: meta missing, 1 entry" in lines
    assert [r[0] for r in table_rows(captured.out)] == ["12", "4"]
    assert lines[-1].startswith("the next owner will redeliver 2 listed records in all,"
                                " 1 of them in flight (leased) on 1 worker")

    doc = run_json(capsys, keys=keys, url=url)
    first, second = doc["partitions"]
    assert first["meta"] is None and first["skipped_fields"] == 6
    assert first["entries"] == [dataclasses.asdict(good)]
    assert second["meta"] is None and second["skipped_fields"] == 0


def test_unparsable_partition_members_are_counted(
    client: redis.Redis, keys: KeySpace, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write(client, keys, TopicPartition("orders", 2), meta(1), [waiting(1)])
    client.sadd(keys.partitions, "no-partition", "orders:abc", ":3")
    doc = run_json(capsys, keys=keys, url=url)
    assert doc["skipped_members"] == 3
    assert [(p["topic"], p["partition"]) for p in doc["partitions"]] == [("orders", 2)]
    assert cli.main(inspect(keys=keys, url=url)) == 0
    assert (f"skipped 3 members of {keys.partitions} that name no partition"
            in capsys.readouterr().out.splitlines())


# --- errors -------------------------------------------------------------------------------------


def test_unreachable_redis_exits_1_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = pick_free_port()
    url = f"redis://operator:s3cret-pw@127.0.0.1:{port}/0"
    assert cli.main(inspect(keys=UNUSED_KEYS, url=url)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        f"lowwater inspect: cannot read redis://operator:***@127.0.0.1:{port}/0: ")
    assert "s3cret" not in captured.err


@pytest.mark.parametrize(("args", "missing"), [
    (["--redis-url", "redis://127.0.0.1:6379/0"], "--group"),
    (["--group", GROUP], "--redis-url"),
])
def test_missing_url_or_group_exits_2(
    args: list[str], missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["inspect", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"lowwater inspect: error: {missing} is required")


def test_url_and_group_from_the_environment(
    client: redis.Redis, keys: KeySpace, url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    write(client, keys, TopicPartition("orders", 0), meta(1), [waiting(1)])
    monkeypatch.setenv("LOWWATER_REDIS_URL", url)
    monkeypatch.setenv("LOWWATER_GROUP", GROUP)
    assert cli.main(["inspect", "--prefix", keys.prefix, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["partitions"]) == 1


# --- as a user runs it --------------------------------------------------------------------------


def test_as_a_subprocess(client: redis.Redis, keys: KeySpace, url: str) -> None:
    fixture_data(client, keys)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOWWATER_")}
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", *inspect(keys=keys, url=url)],
        capture_output=True, text=True, env=environ, timeout=SUBPROCESS_TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.partition(":")[0] for line in lines if ": written by instance " in line] == [
        "orders[0]", "orders[1]", "payments[0]"]
    assert lines[-1] == ("the next owner will redeliver 6 listed records in all,"
                         " 4 of them in flight (leased) on 2 workers")
