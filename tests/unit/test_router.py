"""Router: which subscription a fetched record's topic belongs to."""

from __future__ import annotations

import logging

import pytest

from coordinator.config import Settings
from coordinator.runtime.subscriptions import Router


def router(*subscriptions: dict[str, object], **globals_: object) -> Router:
    settings = Settings.model_validate({"bootstrap_servers": "k:1", "group": "g", **globals_,
                                        "subscriptions": subscriptions})
    return Router(settings.subscription_policies(), default_delay=1.0, max_delay=60.0,
                  retry_topic=settings.retry_topic)


def test_names_beat_patterns_and_patterns_go_in_declared_order() -> None:
    lanes = router({"topic": "^orders.*"}, {"topic": "orders"}, {"topic": "^ord.*"},
                   {"topic": "^refunds-.*"})
    assert lanes.lane("orders").subscription.topic == "orders"
    assert lanes.lane("orders-eu").subscription.topic == "^orders.*"
    assert lanes.lane("ordinals").subscription.topic == "^ord.*"
    assert lanes.lane("refunds-eu").subscription.topic == "^refunds-.*"


def test_a_retry_topic_belongs_to_the_subscription_it_retries_whatever_pattern_matches_it() -> None:
    lanes = router({"topic": "orders", "retry": ["1s", "10s"], "max_attempts": 3,
                    "dead_letter_topic": "dlq"},
                   {"topic": "^orders.*", "guarantee": "at_most_once"})
    for name, tier in (("orders.retry.1s", 1.0), ("orders.retry.10s", 10.0)):
        lane = lanes.lane(name)
        assert lane.subscription.topic == "orders"
        assert lane.retry.max_attempts == 3
        assert lanes.retry_tier(name) == tier
    assert lanes.retry_tier("orders") is None
    assert lanes.retry_tier("orders-eu") is None


def test_a_topic_no_pattern_matches_goes_to_the_first_pattern_subscription_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """librdkafka's regex engine matched it and Python's did not: it came through a pattern."""
    lanes = router({"topic": "sms"}, {"topic": "^push-[a-z]+$", "max_attempts": 1,
                                      "dead_letter_topic": "push.dlq"}, {"topic": "^wechat-.*"})
    with caplog.at_level(logging.WARNING, logger="coordinator.config"):
        assert lanes.lane("push-EU").subscription.topic == "^push-[a-z]+$"
        assert lanes.lane("push-EU").retry.max_attempts == 1
    assert [r.getMessage() for r in caplog.records] == [
        "topic push-EU matches no subscription by Python's re; handling it as ^push-[a-z]+$"]


def test_subscriptions_are_named_as_written_and_retry_topics_map_to_theirs() -> None:
    routed = router({"topic": "orders", "retry": ["1s"]}, {"topic": "^sms\\..*"})
    assert routed.subscriptions == ["orders", "^sms\\..*"]
    assert routed.lane("orders.retry.1s").subscription.topic == "orders"
    assert routed.lane("sms.login").subscription.topic == "^sms\\..*"
