"""Checking (and creating) the topics lowwater produces to, before it relies on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

ADMIN_TIMEOUT = 15.0
"""Seconds for the metadata request, and for each topic creation."""
PRODUCER_ONLY = frozenset({"enable.idempotence", "acks"})
"""Producer properties an admin client has no use for."""


class TopicCheckError(Exception):
    """A topic lowwater must produce to is missing and may not be created, or creating failed;
    ``retriable`` when the broker could not be asked at all (try again later)."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


def ensure_topics(config: Mapping[str, Any], topics: Sequence[str], *, create: bool) -> list[str]:
    """Checks that every one of ``topics`` exists; with ``create``, creates the missing ones
    with the broker's default partitions and replication. Returns the topics created.

    Lists every topic rather than asking for these ones: a metadata request that names a
    topic makes some brokers create it (Tansu does), and a check must not.

    Raises:
        TopicCheckError: a topic is missing and ``create`` is false, or creating it failed.
    """
    admin = AdminClient({k: v for k, v in config.items() if k not in PRODUCER_ONLY})
    try:
        existing = admin.list_topics(timeout=ADMIN_TIMEOUT).topics
    except KafkaException as exc:
        raise TopicCheckError(f"cannot list the broker's topics: {exc}", retriable=True) from exc
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    if not create:
        raise TopicCheckError(
            f"hand-off topic(s) {', '.join(missing)} do not exist: create them, or set "
            "create_topics = true")
    futures = admin.create_topics([NewTopic(t) for t in missing], operation_timeout=ADMIN_TIMEOUT)
    for topic, future in futures.items():
        try:
            future.result(ADMIN_TIMEOUT)
        except KafkaException as exc:
            if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:
                raise TopicCheckError(f"cannot create hand-off topic {topic}: {exc}") from exc
    return missing
