"""The verdict of a run: lost records, duplicates, and commits that passed unprocessed records.

Pure: it takes what was produced, what the journals hold and the commit
samples, and returns numbers and violations. A record is named by its
(partition, offset): a producer retry may write the same sequence id twice,
and that is not the sidecar's duplicate.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tests.faults.journal import Processed

Position = tuple[int, int]
"""(partition, offset)."""


@dataclass(frozen=True, slots=True)
class CommitSample:
    """A committed offset seen at ``t_ns`` (read after the answer arrived) from ``source``."""

    t_ns: int
    source: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """A fault and the time until the system was seen healthy again, monotonic ns."""

    kind: str
    start_ns: int
    end_ns: int
    bound: int
    """Most duplicates this fault may cause (see docs/faults.md)."""
    floor: Mapping[int, int] = field(default_factory=dict)
    """partition -> the group's committed offset read as the fault began. Every record this
    fault may process again lies at or above it: nothing below was pending any more."""


@dataclass
class Verdict:
    records: int
    lost: list[Position] = field(default_factory=list)
    duplicates: int = 0
    unexplained: list[Position] = field(default_factory=list)
    """Records processed twice with no fault in between."""
    early_commits: list[str] = field(default_factory=list)
    """Samples whose committed offset passed a record not yet processed."""
    corrupt: list[str] = field(default_factory=list)
    """Journal rows whose sequence id is not the one produced at that position."""
    extra: int = 0
    """Processed positions that were never reported produced (producer retries)."""
    end_mismatch: dict[int, tuple[int | None, int]] = field(default_factory=dict)
    """partition -> (committed, log end) where they differ at the end."""
    bound: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexplained or self.early_commits or self.corrupt
                    or self.end_mismatch) and self.duplicates <= self.bound

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} record(s) lost, e.g. {self.lost[:5]}")
        if self.duplicates > self.bound:
            out.append(f"{self.duplicates} duplicates, above the bound {self.bound}")
        if self.unexplained:
            out.append(f"{len(self.unexplained)} duplicate(s) with no fault in between, "
                       f"e.g. {self.unexplained[:5]}")
        out += self.early_commits[:5] + self.corrupt[:5]
        if self.end_mismatch:
            out.append(f"committed != log end at the end: {self.end_mismatch}")
        return out


def check(
    produced: Mapping[int, Position],
    rows: Iterable[Processed],
    samples: Iterable[CommitSample],
    faults: Iterable[FaultWindow],
    committed_end: Mapping[int, int | None],
    log_end: Mapping[int, int],
) -> Verdict:
    by_position = {pos: seq for seq, pos in produced.items()}
    times: dict[Position, list[int]] = defaultdict(list)
    verdict = Verdict(records=len(produced))
    for row in rows:
        pos = (row.partition, row.offset)
        seq = by_position.get(pos)
        if seq is None:
            verdict.extra += 1
            continue
        if seq != row.seq:
            verdict.corrupt.append(f"{pos} holds seq {seq} but {row.worker} journaled {row.seq}")
        times[pos].append(row.t_ns)
    verdict.lost = sorted(set(by_position) - set(times))
    counts = Counter({pos: len(ts) for pos, ts in times.items()})
    verdict.duplicates = sum(n - 1 for n in counts.values())
    windows = sorted(faults, key=lambda f: f.start_ns)
    verdict.bound = sum(f.bound for f in windows)
    for pos, ts in times.items():
        if len(ts) > 1 and not _explained(pos, sorted(ts), windows):
            verdict.unexplained.append(pos)
    verdict.early_commits = _early_commits(by_position, times, samples)
    for partition, end in log_end.items():
        if committed_end.get(partition) != end:
            verdict.end_mismatch[partition] = (committed_end.get(partition), end)
    return verdict


def _explained(pos: Position, ts: list[int], windows: list[FaultWindow]) -> bool:
    """Every repeat processing follows the first across (or during) some fault window whose
    floor the record is not below."""
    first = ts[0]
    partition, offset = pos
    return all(any(w.start_ns < t and first < w.end_ns and offset >= w.floor.get(partition, 0)
                   for w in windows) for t in ts[1:])


def _early_commits(by_position: Mapping[Position, int], times: Mapping[Position, list[int]],
                   samples: Iterable[CommitSample]) -> list[str]:
    """Samples whose committed offset C had, below it, a record first processed after the sample.

    Per partition: offsets sorted, and the running maximum of first-processed
    times (infinite for a record never processed); a sample (t, C) is early
    when that maximum over the offsets below C exceeds t.
    """
    offsets: dict[int, list[int]] = defaultdict(list)
    for partition, offset in by_position:
        offsets[partition].append(offset)
    latest: dict[int, list[float]] = {}
    for partition, offs in offsets.items():
        offs.sort()
        running, out = -math.inf, []
        for offset in offs:
            ts = times.get((partition, offset))
            running = max(running, min(ts) if ts else math.inf)
            out.append(running)
        latest[partition] = out
    early = []
    for s in samples:
        offs = offsets.get(s.partition, [])
        below = bisect.bisect_left(offs, s.offset)
        if below and latest[s.partition][below - 1] > s.t_ns:
            early.append(f"{s.source} saw partition {s.partition} committed at {s.offset} "
                         f"before every record below it was processed")
    return early
