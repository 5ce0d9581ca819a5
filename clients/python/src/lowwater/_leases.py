"""Automatic lease extension: which unsettled messages need a longer lease, now."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from lowwater.message import Message

_log = logging.getLogger("lowwater.lease")

EXTEND_WHEN_LEFT = 1 / 3
"""A lease is extended once less than this share of it is left (at 2/3 of the lease)."""

LEASE_TICK_MAX = 1.0
"""Longest pause, seconds, between two looks at the leases."""

LEASE_TICK_MIN = 0.01
"""Shortest pause, seconds, between two looks at the leases."""


def lease_tick(lease: float) -> float:
    """How often to look at the leases, for a lease of ``lease`` seconds."""
    return min(max(lease / 6, LEASE_TICK_MIN), LEASE_TICK_MAX)


def due_for_extension(
    messages: Iterable[Message], *, now: float, wall: float, lease: float, max_extension: float
) -> list[int]:
    """Picks the messages whose lease should be extended by one default lease now.

    A message's deadline is estimated on the local monotonic clock, as the
    earlier of the delivered deadline (sidecar wall clock, converted with
    ``wall``) and arrival + ``lease``, so that clock skew cannot make it late.
    A message held ``max_extension`` seconds since it arrived is not extended
    any more: its lease lapses and the sidecar redelivers it.

    Args:
        messages: unsettled messages of one stream.
        now: ``time.monotonic()``.
        wall: ``time.time()``, taken together with ``now``.
        lease: the stream's default lease, seconds.
        max_extension: how long after arrival a lease is still extended, seconds.

    Returns:
        msg_ids to extend by the default lease; their local deadlines are updated.
    """
    threshold = lease * EXTEND_WHEN_LEFT
    offset = wall - now
    due: list[int] = []
    for msg in messages:
        deadline = getattr(msg, "_deadline", 0.0)
        if not deadline:
            delivered = msg._batch.lease_deadline_ms / 1000 - offset
            deadline = msg._deadline = min(delivered, msg._received + lease)
        if deadline - now > threshold:
            continue
        if now - msg._received >= max_extension:
            msg._deadline = float("inf")
            _log.log(
                logging.WARNING if max_extension else logging.DEBUG,
                "stopped extending the lease of %s[%d]@%d (msg_id=%d) after %.0f s;"
                " the sidecar will redeliver it",
                msg.topic, msg.partition, msg.offset, msg._id, now - msg._received,
            )
            continue
        msg._deadline = now + lease
        due.append(msg._id)
    return due
