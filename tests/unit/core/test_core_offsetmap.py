"""The offset map codec: round trips, the size bound, and hostile metadata."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.offsetmap import DEFAULT_LIMIT, VERSION, decode, encode


@st.composite
def states(draw: st.DrawFn) -> tuple[int, list[int], int]:
    """(base, pending offsets in increasing order with base first, end)."""
    base = draw(st.integers(0, 2**40))
    span = draw(st.integers(2, 3000))
    others = draw(st.sets(st.integers(base + 1, base + span - 1), max_size=400))
    return base, [base, *sorted(others)], base + span


@given(states(), st.sampled_from([DEFAULT_LIMIT, 300, 40]))
def test_a_map_round_trips_exactly_and_never_marks_a_pending_offset(
    state: tuple[int, list[int], int], limit: int
) -> None:
    base, pending, end = state
    text = encode(base, pending, end, limit)
    if text is None:  # too big for the limit: the commit goes without it
        return
    assert len(text) <= limit
    finished = set(range(base, end)) - set(pending)
    decoded = decode(text, base)
    if not text:
        assert decoded is None and not finished
        return
    assert decoded is not None
    assert {o for o in range(base - 2, end + 2) if o in decoded} == finished
    assert len(decoded) == len(finished)


def test_the_smaller_encoding_is_chosen() -> None:
    dense = encode(100, [100, *range(101, 1100, 2)], 1100)  # every other offset finished
    sparse = encode(100, [100, 5000], 100_000)  # one long finished run
    assert dense is not None and dense.startswith(f"{VERSION}:100:b:")
    assert sparse is not None and sparse.startswith(f"{VERSION}:100:r:") and len(sparse) < 30


def test_nothing_finished_above_the_base_is_an_empty_map_and_too_big_is_none() -> None:
    assert encode(7, [7, 8, 9], 10) == ""
    assert encode(0, [0, *range(2, 100_000, 2)], 100_000) is None


@given(st.text(max_size=200), st.one_of(st.none(), st.integers(0, 2**63)))
def test_any_metadata_decodes_to_a_map_or_none_without_raising(text: str, committed: int | None
                                                                 ) -> None:
    decoded = decode(text, committed)
    if decoded is not None:
        assert committed is not None and committed not in decoded  # the base is never skipped


@given(st.binary(max_size=64), st.sampled_from(["b", "r"]), st.integers(0, 1000))
def test_fuzzed_payloads_never_raise_nor_skip_the_base(data: bytes, kind: str, base: int) -> None:
    import base64

    text = f"{VERSION}:{base}:{kind}:{base64.urlsafe_b64encode(data).rstrip(b'=').decode()}"
    decoded = decode(text, base)
    assert decoded is None or base not in decoded


def test_foreign_stale_and_newer_maps_are_ignored() -> None:
    text = encode(10, [10, 12], 14)
    assert text is not None and decode(text, 10) is not None
    assert decode(text, 11) is None  # committed moved: the map is stale
    assert decode(text.replace(VERSION, "lw2"), 10) is None  # a newer version
    assert decode("spring-kafka:whatever", 10) is None  # someone else's metadata
    assert decode(text + "!", 10) is None
