"""When a record expires: a subscription's TTL or its expiry header (pure: no broker, no loop).
Which subscription a topic belongs to: tests/unit/test_router.py."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from coordinator.config import SubscriptionPolicy
from coordinator.core.ledger import NEVER
from coordinator.kafka.records import Fetched, Headers
from coordinator.runtime.subscriptions import Lane, Router

HEADER = "expires-at"
MS = st.integers(min_value=0, max_value=2**53)
"""Milliseconds since the epoch, as far as a float holds them exactly."""
TTLS = st.none() | st.floats(min_value=0.001, max_value=30 * 86400.0)
TIMESTAMPS = st.none() | MS
OTHER_HEADERS = st.lists(st.tuples(st.text(max_size=12).filter(lambda k: k != HEADER),
                                   st.none() | st.binary(max_size=16)), max_size=4)
NOT_A_NUMBER = st.none() | st.binary(max_size=24).filter(
    lambda v: re.fullmatch(rb"\s*[+-]?[\d_]+\s*", v) is None)
"""Header values that are no integer in any spelling: None, empty, text, decimals, bytes that
are not ASCII."""


def lane(ttl: float | None, expiry_header: str | None = HEADER) -> Lane:
    policy = SubscriptionPolicy("codes", "at_least_once", "unordered", None, None, None, ttl,
                                expiry_header)
    return Router([policy], default_delay=0.0, max_delay=60.0).lane("codes")


def record(headers: Headers | None, timestamp_ms: int | None) -> Fetched:
    return b"phone", b"123456", headers, timestamp_ms


def by_ttl(ttl: float | None, timestamp_ms: int | None) -> float:
    """What the TTL alone says: the timestamp plus the TTL; never without either."""
    if ttl is None or timestamp_ms is None:
        return NEVER
    return timestamp_ms + ttl * 1000.0


@given(ttl=TTLS, timestamp_ms=TIMESTAMPS, before=OTHER_HEADERS, after=OTHER_HEADERS)
def test_without_the_header_a_record_expires_its_ttl_after_its_timestamp(
    ttl: float | None, timestamp_ms: int | None, before: Headers, after: Headers
) -> None:
    headers = before + after or None
    assert lane(ttl).expiry_ms(record(headers, timestamp_ms)) == by_ttl(ttl, timestamp_ms)
    assert lane(ttl, None).expiry_ms(record(headers, timestamp_ms)) == by_ttl(ttl, timestamp_ms)


@given(expiry=MS, ttl=TTLS, timestamp_ms=TIMESTAMPS, before=OTHER_HEADERS, after=OTHER_HEADERS)
@example(expiry=1767225600000, ttl=300.0, timestamp_ms=1767225000000, before=[], after=[])
def test_the_header_decimal_milliseconds_win_over_the_ttl(
    expiry: int, ttl: float | None, timestamp_ms: int | None, before: Headers, after: Headers
) -> None:
    """Earlier or later than the TTL says, with or without a TTL or a timestamp."""
    headers: Headers = [*before, (HEADER, str(expiry).encode()), *after]
    assert lane(ttl).expiry_ms(record(headers, timestamp_ms)) == float(expiry)


@given(value=NOT_A_NUMBER, ttl=TTLS, timestamp_ms=TIMESTAMPS, before=OTHER_HEADERS)
@example(value=b"1767225600000.5", ttl=300.0, timestamp_ms=1, before=[])
@example(value=b"2026-01-01T00:00:00Z", ttl=300.0, timestamp_ms=1, before=[])
@example(value=b"soon", ttl=None, timestamp_ms=1, before=[])
@example(value=b"", ttl=300.0, timestamp_ms=1, before=[])
@example(value=b"\xd9\xa1\xd9\xa2", ttl=300.0, timestamp_ms=1, before=[])  # Arabic-Indic 12
def test_a_header_that_holds_no_number_falls_back_to_the_ttl(
    value: bytes | None, ttl: float | None, timestamp_ms: int | None, before: Headers
) -> None:
    headers: Headers = [*before, (HEADER, value)]
    assert lane(ttl).expiry_ms(record(headers, timestamp_ms)) == by_ttl(ttl, timestamp_ms)


def test_a_header_of_another_name_or_case_is_not_the_expiry_header() -> None:
    headers: Headers = [("Expires-At", b"1"), ("expires", b"1")]
    assert lane(300.0).expiry_ms(record(headers, 1_000)) == 301_000.0


def test_a_lane_expires_with_a_ttl_or_an_expiry_header_only() -> None:
    assert lane(None).expires and lane(5.0, None).expires and lane(5.0).expires
    assert not lane(None, None).expires
