"""Subscriptions: per-topic policies declared as ``[[subscriptions]]`` tables in the TOML file.

A :class:`Subscription` is what the file says: a topic and the policy settings it sets itself.
Each setting it leaves out is :data:`INHERIT`, and the global setting of the same name applies.
A :class:`SubscriptionPolicy` is the result: every value filled in, plain Python types, ready for
the runtime.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Final, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

from coordinator.config.durations import PositiveDuration
from coordinator.config.fields import (
    Guarantee,
    Ordering,
    _check_tiers,
    _MaxAttempts,
    _NonBlank,
    _to_choice,
    _to_list,
    _TopicName,
    _TopicOrPattern,
)

_T = TypeVar("_T")


class Inherit(enum.Enum):
    """The type of :data:`INHERIT`, a :class:`Subscription` setting left out."""

    INHERIT = "inherit"

    def __repr__(self) -> str:
        return "INHERIT"


INHERIT: Final = Inherit.INHERIT
"""A :class:`Subscription` setting that is not set there: the global setting applies. Distinct
from None, which for ``max_attempts`` means unlimited."""

RetryTiers = Annotated[
    tuple[PositiveDuration, ...], BeforeValidator(_to_list), AfterValidator(_check_tiers)]
"""Retry delay tiers: distinct, increasing durations; a comma-separated string from a flag."""

_Inherited = Annotated[Inherit, Strict()]
"""Only :data:`INHERIT` itself: no value from a file or a flag validates as it."""


def _left_out() -> Any:  # Any, as Field() itself: a default of any field type
    """The default of a setting left out: :data:`INHERIT`, also left out of dumps so that a dump
    validates back to the same subscription."""
    return Field(default=INHERIT, exclude_if=lambda value: value is INHERIT)


@dataclass(frozen=True, slots=True)
class SubscriptionPolicy:
    """How the records of one topic (or pattern) are handled: every value resolved.

    Attributes:
        topic: a topic name, or ``^regex`` for a pattern subscription.
        guarantee: ``at_least_once`` or ``at_most_once`` (finished when dispatched).
        ordering: ``unordered``, ``key`` or ``partition``.
        max_attempts: deliveries of a record before it is dead-lettered; None: unlimited.
        dead_letter_topic: where dead-lettered records are produced; None: nowhere.
        expired_topic: where records past their TTL are produced; None: they are only counted.
        ttl: maximum age of a record in seconds, from its timestamp; None: no TTL.
        expiry_header: header holding a record's absolute expiry time (decimal milliseconds since
            the Unix epoch), which wins over ``ttl``; None: no such header.
        retry: the delays of its retry topics, seconds, increasing; empty: retries wait in
            memory.
    """

    topic: str
    guarantee: Guarantee
    ordering: Ordering
    max_attempts: int | None
    dead_letter_topic: str | None
    expired_topic: str | None
    ttl: float | None
    expiry_header: str | None
    retry: tuple[float, ...] = ()


class Subscription(BaseModel):
    """One ``[[subscriptions]]`` table: a topic and the policy settings set for it.

    Every setting but ``topic`` defaults to :data:`INHERIT`; :meth:`policy` fills those in.
    Frozen; unknown keys are errors.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    topic: _TopicOrPattern
    """The topic, or `^regex` for a pattern; consumed by no other subscription nor `topics`."""
    guarantee: Annotated[Guarantee, BeforeValidator(_to_choice)] | _Inherited = _left_out()
    """As the global `guarantee`: `at_least_once` or `at_most_once`."""
    ordering: Annotated[Ordering, BeforeValidator(_to_choice)] | _Inherited = _left_out()
    """As the global `ordering`: `unordered`, `key` or `partition`."""
    max_attempts: _MaxAttempts | _Inherited = _left_out()
    """As the global `max_attempts`: at least 1, or `"unlimited"`."""
    dead_letter_topic: _TopicName | None | _Inherited = _left_out()
    """As the global `dead_letter_topic`, for this topic."""
    expired_topic: _TopicName | None | _Inherited = _left_out()
    """As the global `expired_topic`, for this topic."""
    ttl: PositiveDuration | None | _Inherited = _left_out()
    """As the global `ttl`, for this topic."""
    expiry_header: _NonBlank | None | _Inherited = _left_out()
    """As the global `expiry_header`, for this topic."""
    retry: RetryTiers | _Inherited = _left_out()
    """As the global `retry`, for this topic; `[]` retries in memory."""

    def policy(self, defaults: SubscriptionPolicy) -> SubscriptionPolicy:
        """This subscription's policy: what it sets, and the rest from ``defaults``.

        Args:
            defaults: the global policy; its ``topic`` is not used.
        """
        ttl = defaults.ttl if isinstance(self.ttl, Inherit) else _seconds(self.ttl)
        return SubscriptionPolicy(
            topic=self.topic,
            guarantee=_pick(self.guarantee, defaults.guarantee),
            ordering=_pick(self.ordering, defaults.ordering),
            max_attempts=_pick(self.max_attempts, defaults.max_attempts),
            dead_letter_topic=_pick(self.dead_letter_topic, defaults.dead_letter_topic),
            expired_topic=_pick(self.expired_topic, defaults.expired_topic),
            ttl=ttl,
            expiry_header=_pick(self.expiry_header, defaults.expiry_header),
            retry=defaults.retry if isinstance(self.retry, Inherit) else tuple(
                tier.total_seconds() for tier in self.retry),
        )


def consumes(subscribed: str, topic: str) -> bool:
    """Whether a subscription's ``topic`` setting (a name, or ``^regex``) consumes ``topic``:
    the same name, or a pattern that :func:`re.search` finds in it. The runtime's router
    resolves a fetched record's subscription by the same rule (exact names first)."""
    if subscribed.startswith("^"):
        return re.search(subscribed, topic) is not None
    return subscribed == topic


def _pick(value: _T | Inherit, inherited: _T) -> _T:
    return inherited if isinstance(value, Inherit) else value


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()
