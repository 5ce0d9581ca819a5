"""Durations: parsed from ``"500ms"``, ``"1h30m"`` or seconds, formatted back the same way."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from types import MappingProxyType
from typing import Annotated, Final

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_MICROS: Final[Mapping[str, int]] = MappingProxyType(
    {"h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000, "ms": 1_000, "us": 1}
)
_NUMBER: Final = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_TERM: Final = re.compile(rf"({_NUMBER})(ms|us|h|m|s)")
_DURATION: Final = re.compile(rf"(?:{_NUMBER}(?:ms|us|h|m|s))+")
_DURATION_HINT: Final = "(use e.g. '500ms', '30s', '5m', '1h30m' or a number of seconds)"


def parse_duration(text: str) -> timedelta:
    """Parse ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1m30s"``, ``"2.5s"`` or ``"30"`` (s).

    Units: ``h``, ``m``, ``s``, ``ms``, ``us``. Values are rounded to the microsecond.

    Raises:
        ValueError: the text is not a duration.
    """
    s = text.strip()
    if re.fullmatch(_NUMBER, s):
        return _from_micros(Decimal(s) * _MICROS["s"], text)
    if _DURATION.fullmatch(s):
        terms = _DURATION_TERM.findall(s)
        return _from_micros(sum((Decimal(n) * _MICROS[u] for n, u in terms), Decimal(0)), text)
    raise ValueError(f"invalid duration {text!r} {_DURATION_HINT}")


def _from_micros(micros: Decimal, text: object) -> timedelta:
    try:
        return timedelta(microseconds=int(micros.to_integral_value(ROUND_HALF_EVEN)))
    except OverflowError:
        raise ValueError(f"duration {text!r} is too large") from None


def format_duration(value: timedelta) -> str:
    """Format a non-negative duration so that :func:`parse_duration` gives it back: ``1h30m``."""
    micros = value // timedelta(microseconds=1)
    if micros < 0:
        raise ValueError(f"cannot format a negative duration: {value}")
    parts = []
    for unit, size in _MICROS.items():
        count, micros = divmod(micros, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _to_duration(value: object) -> object:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return _from_micros(Decimal(str(value)) * _MICROS["s"], value)
    raise ValueError(f"expected a duration, got {value!r} {_DURATION_HINT}")


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"must be > 0, got {format_duration(abs(value))}")
    return value


def _non_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must be >= 0")
    return value


_Duration = Annotated[
    timedelta,
    BeforeValidator(_to_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
PositiveDuration = Annotated[_Duration, AfterValidator(_positive)]
NonNegativeDuration = Annotated[_Duration, AfterValidator(_non_negative)]


GRPC_MAX_MILLIS = 2**31 - 1
"""gRPC's channel arguments are C ints: the longest duration one can carry, in milliseconds."""


def _fits_grpc(value: timedelta) -> timedelta:
    if value > timedelta(milliseconds=GRPC_MAX_MILLIS):
        raise ValueError(f"must be at most {format_duration(timedelta(milliseconds=GRPC_MAX_MILLIS))}"
                         f" (a gRPC option in milliseconds), got {format_duration(value)}")
    return value


GrpcDuration = Annotated[PositiveDuration, AfterValidator(_fits_grpc)]
"""A positive duration that is passed to gRPC as a number of milliseconds."""
