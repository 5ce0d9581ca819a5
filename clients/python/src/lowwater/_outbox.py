"""What a stream has to send: settlements, lease extensions and flow control, coalesced."""

from __future__ import annotations

from lowwater.outcomes import Outcome
from lowwater.v1 import coordinator_pb2 as pb

MAX_SETTLEMENTS_PER_REQUEST = 2000
"""Settlement messages (non-ACK outcomes, reasons up to 1000 chars) in one StreamRequest at
most, to stay far below message-size limits."""

MAX_ACKS_PER_REQUEST = 8000
"""Packed ACK (or extended) msg_ids in one StreamRequest at most (at most ~80 KB of varints):
with a full load of settlements, within MAX_IDS_PER_REQUEST."""

MAX_IDS_PER_REQUEST = 10_000
"""msg_ids in one StreamRequest at most, settlements, acks and extensions together, unless
the sidecar says less when the stream opens: the sidecar's default ``max_settlement_batch``,
over which it refuses the request and ends the stream."""

MAX_REASON_BYTES_PER_REQUEST = 1 << 20
"""UTF-8 bytes of settlement reasons in one StreamRequest at most: 2000 reasons of 1000
characters can be 8 MB, and the sidecar refuses requests over 4 MiB."""


class Outbox:
    """Queued requests of one stream, drained into as few StreamRequests as possible.

    Owned by the stream's event loop; no I/O. The lists are appended to directly
    by the session's per-message fast path, and only ever mutated in place.
    """

    __slots__ = ("acks", "extends", "flow", "max_ids", "others")

    def __init__(self) -> None:
        self.acks: list[int] = []
        """msg_ids to ACK without a reason: the common case, sent as ranges of consecutive
        ids (``ack_ranges``) and packed (``ack_msg_ids``)."""
        self.others: list[tuple[int, Outcome, float | None, str]] = []
        """Other settlements: (msg_id, outcome, retry delay in seconds or None, reason)."""
        self.extends: dict[float | None, list[int]] = {}
        """msg_ids to extend, by extension in seconds (None: the sidecar's default lease)."""
        self.flow: tuple[int, int] | None = None
        """New flow-control limits (messages, bytes) to send, if any."""
        self.max_ids = MAX_IDS_PER_REQUEST
        """msg_ids one request may name: the sidecar's ``max_settlement_batch``."""

    def __bool__(self) -> bool:
        return bool(self.acks or self.others or self.extends or self.flow)

    def take(self) -> pb.StreamRequest | None:
        """The next request to send, or None when nothing is queued.

        One request carries every queued settlement (plain ACKs as ranges of
        consecutive ids in ``ack_ranges`` and the rest packed in ``ack_msg_ids``,
        the others as Settlement messages, each up to its cap), one group of
        extensions and the latest flow-control limits; call again until it
        returns None.
        """
        if not self:
            return None
        request = pb.StreamRequest()
        acks, others = self.acks, self.others
        budget = self.max_ids
        if acks:
            most = min(MAX_ACKS_PER_REQUEST, budget)
            acked = acks[:most]
            del acks[:most]
            singles, spans = ranges(acked)
            request.ack_msg_ids.extend(singles)
            add_range = request.ack_ranges.add
            for first, count in spans:
                add_range(first_msg_id=first, count=count)
            budget -= len(acked)
        if others and budget:
            add = request.settlements.add
            taken = reason_bytes = 0
            for msg_id, outcome, delay, reason in others[:min(MAX_SETTLEMENTS_PER_REQUEST,
                                                             budget)]:
                reason_bytes += len(reason.encode())
                if taken and reason_bytes > MAX_REASON_BYTES_PER_REQUEST:
                    break
                settlement = add(msg_id=msg_id, outcome=outcome, reason=reason)
                if delay is not None:
                    settlement.retry_delay.FromNanoseconds(round(delay * 1e9))
                taken += 1
            del others[:taken]
            budget -= taken
        if self.extends and budget:
            seconds = next(iter(self.extends))
            ids = self.extends[seconds]
            request.extend.msg_ids.extend(ids[:min(MAX_ACKS_PER_REQUEST, budget)])
            del ids[:min(MAX_ACKS_PER_REQUEST, budget)]
            if not ids:
                del self.extends[seconds]
            if seconds is not None:
                request.extend.extension.FromNanoseconds(round(seconds * 1e9))
        if self.flow:
            max_messages, max_bytes = self.flow
            self.flow = None
            request.flow_control.max_in_flight_messages = max_messages
            request.flow_control.max_in_flight_bytes = max_bytes
        return request


def ranges(msg_ids: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """``msg_ids`` as the ids alone and the (first, count) of each span of two or more
    consecutive ids, lowest first. The sidecar leases a batch's records under consecutive
    ids, and a range of them is settled as one."""
    singles: list[int] = []
    spans: list[tuple[int, int]] = []
    if not msg_ids:
        return singles, spans
    ordered = sorted(msg_ids)
    start = prev = ordered[0]
    for msg_id in ordered[1:]:
        if msg_id == prev + 1:
            prev = msg_id
            continue
        if prev > start:
            spans.append((start, prev - start + 1))
        else:
            singles.append(start)
        start = prev = msg_id
    if prev > start:
        spans.append((start, prev - start + 1))
    else:
        singles.append(start)
    return singles, spans
