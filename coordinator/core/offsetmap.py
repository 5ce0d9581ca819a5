"""The offset map: which offsets above a commit are already finished, in the commit's metadata.

A commit carries the low-water mark: the smallest offset still pending. Records finished
out of order above it would be processed again after a crash. The map lists them, so that the
next owner of the partition can skip them. Its text form, a Kafka commit metadata string, is

    lw1:<base>:<b|r>:<base64url>

- ``base`` is the committed offset the map belongs to. A map read back with another committed
  offset is stale and ignored.
- ``b`` is a bitset: bit ``i`` (little-endian within each byte) set means offset ``base + i``
  is finished.
- ``r`` is run lengths, as unsigned LEB128 varints: alternately the counts of offsets not
  finished and finished, starting with not finished.

Whichever of ``b`` and ``r`` is shorter is written. A map that does not fit the limit is not
written at all: the commit goes without it, which is always safe. Decoding never raises on bad
input. Anything foreign, corrupt, from another version or for another base yields None, which
means skip nothing.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Final

VERSION: Final = "lw1"
DEFAULT_LIMIT: Final = 4096
"""Kafka's default ``offset.metadata.max.bytes``."""
MAX_SPAN: Final = 1 << 24
"""Most offsets a decoded map may cover: a map is never a reason to allocate without bound."""

_FORMAT: Final = re.compile(rf"{VERSION}:(?P<base>\d{{1,19}}):(?P<kind>[br]):(?P<data>[A-Za-z0-9_-]*)")


class FinishedOffsets:
    """The decoded map: offsets at or above ``base`` that are known to be finished."""

    __slots__ = ("_bits", "base", "end")

    def __init__(self, base: int, bits: int) -> None:
        self.base = base
        self._bits = bits
        self.end = base + bits.bit_length()
        """One past the highest finished offset: at and beyond it, nothing is known."""

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int) or offset < self.base or offset >= self.end:
            return False
        return bool(self._bits >> (offset - self.base) & 1)

    def __len__(self) -> int:
        return self._bits.bit_count()


def encode(base: int, pending: Iterable[int], end: int, limit: int = DEFAULT_LIMIT) -> str | None:
    """The map of the offsets in ``[base, end)`` that are not ``pending``.

    Args:
        base: the commit offset (the smallest pending offset, so itself never finished).
        pending: the offsets still pending, in increasing order; those outside
            ``[base, end)`` are ignored.
        end: the next offset to fetch; nothing at or beyond it is known.
        limit: the most characters the result may have.

    Returns:
        The metadata string, ``""`` when nothing above ``base`` is finished, or None when
        the map does not fit ``limit``. Its cost is linear in the pending offsets, and in
        the span only when a bitset could fit.
    """
    runs = _runs(base, pending, end, cap=limit)  # a run takes at least 1 byte, 4/3 in base64
    if runs is None:
        return None
    if len(runs) < 2:
        return ""
    rle = bytearray()
    for run in runs:
        _varint(rle, run)
    data = bytes(rle)
    kind = "r"
    span = sum(runs)
    if (span + 7) // 8 < len(data):  # a bitset is smaller: only then is it worth building
        bits = 0
        position = 0
        for index, run in enumerate(runs):
            if index % 2:
                bits |= ((1 << run) - 1) << position
            position += run
        data, kind = bits.to_bytes((span + 7) // 8, "little"), "b"
    text = f"{VERSION}:{base}:{kind}:{base64.urlsafe_b64encode(data).rstrip(b'=').decode()}"
    return text if len(text) <= limit else None


def _runs(base: int, pending: Iterable[int], end: int, cap: int) -> list[int] | None:
    """Run lengths over ``[base, end)``: not finished, finished, not finished, ...; the last
    run is a finished one (what follows it is not known, so not finished).

    None once there are more than ``cap`` runs: the map cannot fit then, and the caller
    must not pay for a long pending set."""
    runs: list[int] = []

    def add(finished: bool, length: int) -> None:
        if length <= 0:
            return
        if not runs and finished:  # the runs start with a (here empty) not-finished one
            runs.append(0)
        if len(runs) % 2 == int(finished):  # the next run has this state: a new run
            runs.append(length)
        else:  # the last run has this state: extend it
            runs[-1] += length

    position = base
    for offset in pending:
        if offset < position:
            continue
        if offset >= end:
            break
        if len(runs) > cap:  # too many runs to ever fit: do not pay for the rest
            return None
        add(True, offset - position)
        add(False, 1)
        position = offset + 1
    add(True, end - position)
    if len(runs) % 2:  # ends on a not-finished run: it says nothing
        runs.pop()
    return runs


def decode(metadata: str | None, committed: int | None) -> FinishedOffsets | None:
    """The map in ``metadata`` if it belongs to ``committed``; None for anything else."""
    if not metadata or committed is None:
        return None
    match = _FORMAT.fullmatch(metadata)
    if match is None or int(match["base"]) != committed:
        return None
    data = match["data"]
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return None
    if match["kind"] == "b":
        if len(raw) * 8 > MAX_SPAN:
            return None
        bits = int.from_bytes(raw, "little")
    else:
        decoded = _from_runs(raw)
        if decoded is None:
            return None
        bits = decoded
    if bits & 1:  # the base is the commit offset: pending by definition, never finished
        return None
    return FinishedOffsets(committed, bits)


def _from_runs(raw: bytes) -> int | None:
    bits, position, finished, index = 0, 0, False, 0
    while index < len(raw):
        run, index = _read_varint(raw, index)
        if run is None or position + run > MAX_SPAN:
            return None
        if finished and run:
            bits |= ((1 << run) - 1) << position
        position += run
        finished = not finished
    return bits


def _varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(raw: bytes, index: int) -> tuple[int | None, int]:
    value = shift = 0
    while index < len(raw):
        byte = raw[index]
        index += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index
        shift += 7
        if shift > 35:
            break
    return None, index
