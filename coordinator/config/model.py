"""The :class:`Settings` model: typed, frozen, and validated field by field and as a whole."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from coordinator.config.durations import NonNegativeDuration, PositiveDuration, format_duration
from coordinator.config.errors import _setting_error
from coordinator.config.fields import (
    KafkaValue,
    LogLevel,
    _AtLeastOne,
    _check_kafka,
    _check_listen,
    _check_topics,
    _freeze,
    _NonBlank,
    _to_bool,
    _to_log_level,
    _to_max_attempts,
    is_loopback_listen,
    is_sensitive_property,
)

DEFAULT_AUTO_OFFSET_RESET: Final = "earliest"
"""``auto.offset.reset`` unless passed through: a new group loses nothing produced before it."""
LIBRDKAFKA_MAX_POLL_INTERVAL: Final = timedelta(milliseconds=300_000)
"""librdkafka's default ``max.poll.interval.ms``; ``rebalance_timeout`` must stay below it."""


class Settings(BaseModel):
    """Everything ``lowwater serve`` needs; validated on construction and frozen afterwards.

    Build it from flags, a TOML file and the environment with :func:`resolve_settings`, or
    directly with keyword arguments (durations accept ``timedelta``, numbers of seconds or
    strings such as ``"500ms"``). Construction raises :class:`pydantic.ValidationError`;
    :func:`resolve_settings` turns that into a :class:`ConfigError`. Thread-safe: immutable.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    bootstrap_servers: _NonBlank
    """Kafka brokers to bootstrap from, `host:port[,host:port...]` (librdkafka
    `bootstrap.servers`)."""
    group: _NonBlank
    """Consumer group id (librdkafka `group.id`); committed offsets belong to it."""
    topics: Annotated[tuple[str, ...], AfterValidator(_check_topics)]
    """Topics to consume: at least one, no duplicates; `^regex` subscribes to a pattern."""
    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:50051"
    """gRPC address for workers: `HOST:PORT`, `[IPV6]:PORT` (port 0 picks a free one),
    `unix:PATH` or `unix:///ABS/PATH`. Anything but loopback or a unix socket needs
    `allow_remote_listen`."""
    allow_remote_listen: Annotated[bool, BeforeValidator(_to_bool)] = False
    """Allow `listen` on a non-loopback address. The gRPC API has no authentication of its own."""
    lease: PositiveDuration = timedelta(seconds=30)
    """Lease of each delivery: unless the worker settles or extends it in time, the record is
    redelivered with its attempt number incremented."""
    max_lease: PositiveDuration = timedelta(minutes=10)
    """Furthest from now that a worker may extend a lease; at least `lease`."""
    default_retry_delay: NonNegativeDuration = timedelta(seconds=1)
    """Delay before redelivery when a worker answers RETRY without a delay."""
    max_retry_delay: NonNegativeDuration = timedelta(minutes=15)
    """Cap on the delay a worker may ask for with RETRY; at least `default_retry_delay`."""
    max_attempts: Annotated[_AtLeastOne | None, BeforeValidator(_to_max_attempts)] = None
    """Deliveries of a record before it goes to the dead-letter topic: at least 1, or
    `"unlimited"`."""
    commit_interval: PositiveDuration = timedelta(seconds=1)
    """How often the low-water marks are committed to Kafka."""
    max_pending_per_partition: _AtLeastOne = 10_000
    """Pending (fetched, not finished) records at which fetching from a partition pauses; it
    resumes below 80% of this."""
    fetch_batch_size: Annotated[_AtLeastOne, Field(le=100_000)] = 500
    """Most records taken from the consumer per `consume()` call, 1 to 100000."""
    rebalance_timeout: PositiveDuration = timedelta(seconds=10)
    """On revoke, the longest wait for in-flight settlements before the final commit; below
    librdkafka's `max.poll.interval.ms`, since the wait runs inside the poll."""
    drain_timeout: PositiveDuration = timedelta(seconds=30)
    """On SIGTERM or SIGINT, the longest wait for workers to finish before the final commit;
    keep the pod's termination grace period longer."""
    log_level: Annotated[LogLevel, BeforeValidator(_to_log_level)] = "INFO"
    """Level of lowwater's `coordinator.*` loggers; other libraries log WARNING and above."""
    kafka: Annotated[
        Mapping[str, KafkaValue],
        BeforeValidator(_check_kafka),
        AfterValidator(_freeze),
        PlainSerializer(dict),
    ] = Field(default_factory=dict, validate_default=True)
    """librdkafka consumer properties, passed through unchanged, e.g. `"fetch.wait.max.ms" = 50`;
    not the ones lowwater sets itself."""

    @model_validator(mode="after")
    def _check_together(self) -> Settings:
        if not self.allow_remote_listen and not is_loopback_listen(self.listen):
            raise _setting_error(
                "listen",
                f"{self.listen!r} is not a loopback address or unix socket"
                " (set allow_remote_listen = true to serve workers on other hosts)",
            )
        if self.max_lease < self.lease:
            raise _setting_error(
                "max_lease",
                f"must be >= lease ({format_duration(self.lease)}),"
                f" got {format_duration(self.max_lease)}",
            )
        if self.max_retry_delay < self.default_retry_delay:
            raise _setting_error(
                "max_retry_delay",
                f"must be >= default_retry_delay ({format_duration(self.default_retry_delay)}),"
                f" got {format_duration(self.max_retry_delay)}",
            )
        poll_interval = _max_poll_interval(self.kafka)
        if poll_interval is not None and self.rebalance_timeout >= poll_interval:
            raise _setting_error(
                "rebalance_timeout",
                f"must be below max.poll.interval.ms ({poll_interval // timedelta(milliseconds=1)}"
                f" ms): the revoke wait runs inside the poll, got"
                f" {format_duration(self.rebalance_timeout)}",
            )
        return self

    def consumer_config(self) -> dict[str, KafkaValue]:
        """The full librdkafka consumer configuration: the passthrough plus lowwater's own keys.

        ``auto.offset.reset`` is ``earliest`` unless passed through, so a new group starts at
        the beginning and loses nothing produced before its first start. Offsets are committed
        and stored by lowwater only (``enable.auto.commit`` and ``enable.auto.offset.store`` are
        false). Returns a new dict on each call; the caller may add callbacks to it.
        """
        config: dict[str, KafkaValue] = {"auto.offset.reset": DEFAULT_AUTO_OFFSET_RESET}
        config.update(self.kafka)
        config.update(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": self.group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        return config

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name == "kafka":
                value = {k: "***" if is_sensitive_property(k) else v for k, v in self.kafka.items()}
            yield name, value


def _max_poll_interval(kafka: Mapping[str, KafkaValue]) -> timedelta | None:
    raw = kafka.get("max.poll.interval.ms")
    if raw is None:
        return LIBRDKAFKA_MAX_POLL_INTERVAL
    try:
        return timedelta(milliseconds=int(raw))
    except (TypeError, ValueError, OverflowError):
        return None  # not a number: librdkafka reports it when the consumer is created
