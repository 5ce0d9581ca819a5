"""The pure parts of ``lowwater inspect``: redaction, durations, headings, rows, summary."""

from __future__ import annotations

import json

import pytest

from coordinator.config import redact_url
from coordinator.core.model import TopicPartition
from coordinator.core.pending import PartitionMeta, PendingEntry, encode_row
from coordinator.inspect import (
    COLUMNS,
    Inspection,
    PartitionReport,
    Summary,
    duration,
    entry_cells,
    heading,
    nothing_line,
    report,
    summarize,
    summary_line,
    to_json,
)

NOW = 1_700_000_000_000
TP = TopicPartition("orders", 3)


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
    ("redis://:secret@host", "redis://:***@host"),
    ("rediss://user:p@ss:w/rd@host/1", "rediss://user:***@host/1"),
    ("redis://user@host/0", "redis://user@host/0"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("unix:///run/redis.sock?db=0&password=secret", "unix:///run/redis.sock?db=0&password=***"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "secret" not in redact_url(url)


@pytest.mark.parametrize(("ms", "text"), [
    (0, "0.0 s"), (12_345, "12.3 s"), (59_949, "59.9 s"), (60_000, "1 m 00 s"),
    (307_000, "5 m 07 s"), (7_500_000, "2 h 05 m"), (273_600_000, "3 d 04 h"),
    (-1_500, "-1.5 s"),
])
def test_duration(ms: int, text: str) -> None:
    assert duration(ms) == text


def part(meta: PartitionMeta | None, *entries: PendingEntry, meta_raw: str | None = None,
         skipped: int = 0) -> PartitionReport:
    raw = meta_raw if meta_raw is not None or meta is None else meta.encode()
    return PartitionReport(TP, meta, raw, entries, skipped)


def test_heading() -> None:
    meta = PartitionMeta("host-a", 2, NOW - 12_300, 90, 95, 7, 2, 110)
    assert heading(part(meta), NOW) == (
        "orders[3]: written by instance host-a 12.3 s ago, committed 90, commit offset 95,"
        " 7 pending (2 never delivered, from offset 110)")


def test_heading_without_offsets() -> None:
    meta = PartitionMeta("host-a", 2, NOW + 1_000, None, None, 0, 0, None)
    assert heading(part(meta), NOW) == (
        "orders[3]: written by instance host-a in 1.0 s, nothing committed, no commit offset,"
        " 0 pending (0 never delivered)")


def test_heading_without_a_meta() -> None:
    entry = PendingEntry(5, "ready", 1, NOW)
    assert heading(part(None, entry), NOW) == "orders[3]: meta missing, 1 entry"
    newer = json.dumps({"v": 99})
    assert heading(part(None, meta_raw=newer), NOW) == (
        "orders[3]: meta of an unknown schema version (v99; this reader knows v1), 0 entries")
    assert heading(part(None, meta_raw="{"), NOW) == "orders[3]: meta malformed, 0 entries"


def test_cells_of_a_leased_entry() -> None:
    entry = PendingEntry(42, "leased", 3, NOW - 20_000, 17, "w-1", NOW - 4_000, NOW + 26_000)
    cells = dict(zip(COLUMNS, entry_cells(entry, NOW), strict=True))
    assert cells == {"offset": "42", "state": "leased", "worker": "w-1", "msg_id": "17",
                     "pending for": "20.0 s", "delivered": "4.0 s ago", "lease": "26.0 s left",
                     "attempts": "3"}
    expired = PendingEntry(42, "leased", 1, NOW - 90_000, 17, "w-1", NOW - 60_000, NOW - 3_000)
    assert entry_cells(expired, NOW)[4:7] == ("1 m 30 s", "1 m 00 s ago", "expired 3.0 s ago")


def test_cells_of_an_entry_not_leased_are_blank() -> None:
    entry = PendingEntry(7, "delayed", 2, NOW - 1_000)
    assert entry_cells(entry, NOW) == ("7", "delayed", "", "", "1.0 s", "", "", "2")


def test_summary_counts_every_entry_and_the_distinct_workers() -> None:
    parts = [
        part(None, PendingEntry(1, "leased", 1, NOW, 1, "w-1", NOW, NOW),
             PendingEntry(2, "ready", 2, NOW)),
        part(None, PendingEntry(3, "leased", 1, NOW, 2, "w-1", NOW, NOW),
             PendingEntry(4, "leased", 1, NOW, 3, "w-2", NOW, NOW)),
    ]
    summary = summarize(parts)
    assert summary == Summary(redelivered=4, in_flight=3, workers=2)
    assert summary_line(summary) == (
        "the next owner will redeliver 4 listed records in all, 3 of them in flight (leased)"
        " on 2 workers")
    assert summary_line(Summary(1, 0, 0)) == (
        "the next owner will redeliver 1 listed record in all, 0 of them in flight (leased)"
        " on 0 workers")


def test_report_orders_entries_and_counts_what_it_skips() -> None:
    meta = PartitionMeta("host-a", 1, NOW, 0, 0, 2, 0, None)
    fields = {
        b"meta": meta.encode().encode(),
        b"9": encode_row(("ready", 1, NOW, 0, "", 0, 0)).encode(),
        b"3": encode_row(("ready", 1, NOW, 0, "", 0, 0)).encode(),
        b"\xff": b"[]",
        b"4": b"\xff",
    }
    got = report(TP, fields)
    assert got.meta == meta
    assert [e.offset for e in got.entries] == [3, 9]
    assert got.skipped_fields == 2


def test_nothing_line() -> None:
    empty = Inspection("g", "lowwater", (), 0)
    assert nothing_line(empty, None, "redis://h/0") == (
        "no pending sets for group g under prefix lowwater in redis://h/0")
    assert nothing_line(empty, ["a", "b"], "redis://h/0") == (
        "no pending sets for topic a, b of group g under prefix lowwater in redis://h/0")


def test_json_document_shape() -> None:
    entry = PendingEntry(3, "ready", 1, NOW)
    doc = to_json(Inspection("g", "p", (part(None, entry, skipped=1),), 2))
    assert doc == {"group": "g", "prefix": "p", "skipped_members": 2, "partitions": [
        {"topic": "orders", "partition": 3, "meta": None, "skipped_fields": 1,
         "entries": [{"offset": 3, "state": "ready", "attempts": 1, "fetched_ms": NOW,
                      "msg_id": 0, "worker": "", "delivered_ms": 0, "deadline_ms": 0}]}]}
