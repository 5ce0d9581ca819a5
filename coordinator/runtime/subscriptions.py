"""Which subscription a fetched record belongs to, and what that means for it.

The consumer subscribes to every topic and pattern at once; records then find
their subscription by topic name (exact names first, then patterns in the
order they were declared). The answer is cached per topic.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from coordinator.config import SubscriptionPolicy
from coordinator.core.ledger import NEVER
from coordinator.core.policy import RetryPolicy
from coordinator.kafka.records import Fetched

log = logging.getLogger("coordinator.config")


@dataclass(frozen=True, slots=True)
class Lane:
    """A subscription as the engine applies it to one topic."""

    subscription: SubscriptionPolicy
    retry: RetryPolicy
    retry_topics: Mapping[float, str] = field(default_factory=dict)
    """Retry tier (seconds) -> the topic its retries go to."""

    @property
    def expires(self) -> bool:
        """Whether its records can expire (a TTL or an expiry header)."""
        return self.subscription.ttl is not None or self.subscription.expiry_header is not None

    def expiry_ms(self, record: Fetched) -> float:
        """When a record expires, milliseconds since the Unix epoch; NEVER if it cannot.

        The expiry header (decimal milliseconds since the epoch) wins over the record
        timestamp plus the TTL; a header that is not a number is ignored.
        """
        _, _, headers, timestamp_ms = record
        sub = self.subscription
        if sub.expiry_header is not None:
            for key, value in headers or ():
                if key == sub.expiry_header and value:
                    try:
                        return float(int(value))
                    except ValueError:
                        break
        if sub.ttl is not None and timestamp_ms is not None:
            return float(timestamp_ms) + sub.ttl * 1000.0
        return NEVER


class Router:
    """Maps topic names to :class:`Lane` objects. Owned by the event loop."""

    def __init__(self, subscriptions: Sequence[SubscriptionPolicy], *, default_delay: float,
                 max_delay: float, retry_topic: Callable[[str, float], str] | None = None) -> None:
        """``retry_topic(topic, tier)`` names a retry topic (``Settings.retry_topic``); needed
        when a subscription has retry tiers."""
        if not subscriptions:
            raise ValueError("at least one subscription is needed")
        self._lanes: list[Lane] = []
        self._tiers: dict[str, float] = {}
        """Retry topic -> its tier."""
        for sub in subscriptions:
            topics = {}
            if sub.retry:
                if retry_topic is None:
                    raise ValueError(f"{sub.topic} has retry tiers: a retry_topic namer is needed")
                topics = {tier: retry_topic(sub.topic, tier) for tier in sub.retry}
            retry = RetryPolicy(default_delay, max_delay, sub.max_attempts, sub.retry)
            self._lanes.append(Lane(sub, retry, topics))
            self._tiers.update({name: tier for tier, name in topics.items()})
        self._exact = {lane.subscription.topic: lane for lane in self._lanes
                       if not lane.subscription.topic.startswith("^")}
        self._exact.update({name: lane for lane in self._lanes
                            for name in lane.retry_topics.values()})
        self._patterns = [(re.compile(lane.subscription.topic), lane) for lane in self._lanes
                          if lane.subscription.topic.startswith("^")]
        self._cache: dict[str, Lane] = {}

    @property
    def subscriptions(self) -> list[str]:
        """Each subscription's ``topic`` setting as written (a topic, or a ``^regex``), in the
        order they were declared."""
        return [lane.subscription.topic for lane in self._lanes]

    def lane(self, topic: str) -> Lane:
        """The lane of ``topic``: its subscription by name (a retry topic's is the subscription
        it retries), else the first pattern subscription whose pattern ``re.search`` finds in it.

        The broker only sends subscribed topics, so a topic that matches nothing was matched by
        librdkafka's regex engine and not by ``re``: it came through a pattern subscription,
        and the first pattern subscription takes it, with a warning (once per topic)."""
        lane = self._cache.get(topic)
        if lane is None:
            lane = self._exact.get(topic) or next(
                (lane for pattern, lane in self._patterns if pattern.search(topic)), None)
            if lane is None:
                lane = self._patterns[0][1] if self._patterns else self._lanes[0]
                log.warning("topic %s matches no subscription by Python's re; handling it as %s",
                            topic, lane.subscription.topic)
            self._cache[topic] = lane
        return lane

    def retry_tier(self, topic: str) -> float | None:
        """The tier of ``topic`` if it is one of the retry topics, else None."""
        return self._tiers.get(topic)
