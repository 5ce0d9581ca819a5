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
    FilePath,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)

from coordinator.config.durations import (
    GrpcDuration,
    NonNegativeDuration,
    PositiveDuration,
    format_duration,
)
from coordinator.config.errors import _missing_error, _setting_error
from coordinator.config.fields import (
    DEFAULT_RETRY_TOPIC_FORMAT,
    Guarantee,
    KafkaValue,
    LogFormat,
    LogLevel,
    Ordering,
    _AtLeastOne,
    _check_kafka,
    _check_listen,
    _check_retry_topic_format,
    _check_topics,
    _EnvName,
    _freeze,
    _LogLevels,
    _MaxAttempts,
    _NonBlank,
    _RedisUrl,
    _SocketGroup,
    _SocketMode,
    _TcpListen,
    _to_bool,
    _to_choice,
    _to_log_level,
    _TopicName,
    is_loopback_listen,
    is_producer_property,
    is_sensitive_property,
    redact_url,
)
from coordinator.config.subscriptions import (
    INHERIT,
    RetryTiers,
    Subscription,
    SubscriptionPolicy,
    consumes,
)

DEFAULT_AUTO_OFFSET_RESET: Final = "earliest"
"""``auto.offset.reset`` unless passed through: a new group loses nothing produced before it."""
DEFAULT_FETCH_WAIT_MAX_MS: Final = 100
"""``fetch.wait.max.ms`` unless passed through (librdkafka's own default is 500). A fetch at the
log end waits this long for new records, and a partition resumed meanwhile (its pending set
fell below the resume mark) cannot fetch again until that fetch returns: at 500 ms the workers
of a fast partition drained its whole pending set and waited (measured with 20 ms handlers and
1,280 records in flight). The cost is more empty fetches while idle: ten a second per broker."""
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
    topics: Annotated[tuple[str, ...], AfterValidator(_check_topics)] = ()
    """Topics to consume with the global policy settings below; `^regex` subscribes to a pattern.
    No duplicates; at least one unless `[[subscriptions]]` names topics."""
    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:50051"
    """gRPC address for workers: `HOST:PORT`, `[IPV6]:PORT` (port 0 picks a free one),
    `unix:PATH` or `unix:///ABS/PATH`. Anything but loopback or a unix socket needs
    `allow_remote_listen`."""
    socket_mode: _SocketMode = "0600"
    """File mode of the Unix socket when `listen` is one: `0600` (only the sidecar's user)
    or `0660` with `socket_group`, for a worker that runs as another user. Other users never
    get access."""
    socket_group: _SocketGroup | None = None
    """Group (name or number) the Unix socket belongs to, for `socket_mode = "0660"`. Unset:
    the sidecar's own group."""
    allow_remote_listen: Annotated[bool, BeforeValidator(_to_bool)] = False
    """Allow `listen` on a non-loopback address. Without `tls_cert_file` this logs a warning:
    tokens and records would cross the network in clear."""
    token_file: FilePath | None = None
    """File holding the bearer token that workers must send (gRPC metadata `authorization:
    Bearer <token>`) to use the worker API; surrounding whitespace is ignored. Re-read when
    it changes (a rotated Kubernetes Secret): new calls need the new token, open streams go on.
    Unset, with no `token_env`: workers need no token."""
    token_env: _EnvName | None = None
    """Name of an environment variable holding the workers' bearer token, read at start-up;
    instead of `token_file`. The name, never the token: a flag shows in `ps`."""
    admin_token_file: FilePath | None = None
    """File holding the bearer token of the Admin API, which must differ from the workers'
    token; every Admin call then needs it. Re-read when it changes, like `token_file`."""
    admin_token_env: _EnvName | None = None
    """Name of an environment variable holding the Admin bearer token, read at start-up;
    instead of `admin_token_file`."""
    admin_insecure: Annotated[bool, BeforeValidator(_to_bool)] = False
    """Allow the Admin calls that change what gets processed (`PausePartitions`,
    `ResumePartitions`, `SkipRecord`, `SeekPartition`) without Admin authentication (an Admin
    token, or `tls_client_ca_file`). Off: they answer PERMISSION_DENIED. Only for a sidecar
    that nobody else can reach."""
    tls_cert_file: FilePath | None = None
    """PEM certificate chain that the gRPC server (worker and Admin API) presents: TLS on
    `listen`. Needs `tls_key_file`. Reloaded, with the key, when the files change (as
    cert-manager rotates them), for new connections."""
    tls_key_file: FilePath | None = None
    """PEM private key of `tls_cert_file`."""
    tls_client_ca_file: FilePath | None = None
    """PEM bundle of the CAs that sign client certificates: mutual TLS. Every client must then
    present a certificate signed by one of them. Needs `tls_cert_file`; reloaded like it."""
    lease: PositiveDuration = timedelta(seconds=30)
    """Lease of each delivery: unless the worker settles or extends it in time, the record is
    redelivered with its attempt number incremented."""
    max_lease: PositiveDuration = timedelta(minutes=10)
    """Furthest from now that a worker may extend a lease; at least `lease`."""
    default_retry_delay: NonNegativeDuration = timedelta(seconds=1)
    """Delay before redelivery when a worker answers RETRY without a delay."""
    max_retry_delay: NonNegativeDuration = timedelta(minutes=15)
    """Cap on the delay a worker may ask for with RETRY; at least `default_retry_delay`."""
    guarantee: Annotated[Guarantee, BeforeValidator(_to_choice)] = "at_least_once"
    """For records of `topics`: `at_least_once` finishes a record when a worker settles it;
    `at_most_once` finishes it as soon as it is sent to a worker, so it is never redelivered and
    is lost if the worker fails before handling it (the fast lane)."""
    ordering: Annotated[Ordering, BeforeValidator(_to_choice)] = "unordered"
    """For records of `topics`: `unordered` delivers them concurrently in any order; `key`
    delivers the records of one Kafka key one at a time, in offset order (a retry holds back the
    key's later records; records with a null key are unordered); `partition` does so for the
    whole partition."""
    max_attempts: _MaxAttempts = None
    """Deliveries of a record of `topics` before it goes to the dead-letter topic: at least 1
    (needs `dead_letter_topic`), or `"unlimited"`."""
    dead_letter_topic: _TopicName | None = None
    """Topic that dead-lettered records of `topics` are produced to, with the reason in their
    headers; a topic name, not a pattern."""
    expired_topic: _TopicName | None = None
    """Topic that records of `topics` past their TTL are produced to; unset: they are only
    counted."""
    ttl: PositiveDuration | None = None
    """Maximum age of a record of `topics`, from its timestamp; an older record is never
    delivered. Unset: no TTL."""
    expiry_header: _NonBlank | None = None
    """Name of a record header holding an absolute expiry time, decimal milliseconds since the Unix
    epoch; a record that has it expires then, whatever `ttl` says. A value that is no integer
    (empty, `1767225600000.5`, a date) is ignored: the record expires by `ttl`, or never without
    one."""
    retry: RetryTiers = ()
    """Delay tiers of retry topics for records of `topics`, e.g. `["1s", "10s", "60s"]` (a flag
    takes `1s,10s,60s`). A RETRY answer sends the record to the retry topic of the first tier at
    least as long as the delay asked for (without a delay: the tier of its attempt number),
    where it waits without holding up its partition. Empty: retries wait in memory. Not for
    ordered subscriptions or patterns."""
    retry_topic_format: Annotated[str, AfterValidator(_check_retry_topic_format)] = (
        DEFAULT_RETRY_TOPIC_FORMAT)
    """How retry topics are named, from `{topic}` and `{delay}` (a duration such as `10s`)."""
    create_topics: Annotated[bool, BeforeValidator(_to_bool)] = False
    """Create missing dead-letter, expired and retry topics at start-up (with the broker's
    default partitions and replication) instead of exiting with code 1."""
    commit_interval: PositiveDuration = timedelta(seconds=1)
    """How often the low-water marks are committed to Kafka."""
    offset_map: Annotated[bool, BeforeValidator(_to_bool)] = True
    """Carry in each commit's metadata the offsets finished above it, so that after a crash
    the next owner skips them: replays shrink to what was truly in flight. Maps written
    earlier are honoured even when this is off."""
    offset_map_max_bytes: Annotated[_AtLeastOne, Field(ge=64, le=1_048_576)] = 4096
    """Most characters of an offset map, 64 to 1048576: keep it within the broker's
    `offset.metadata.max.bytes` (4096 by default). A map that does not fit is left out of that
    commit (counted), never waited for."""
    redis_url: _RedisUrl | None = None
    """Redis that pending sets are written to, for crash diagnostics (`lowwater inspect`):
    `redis://[USER:PASSWORD@]HOST:PORT/DB`, `rediss://` for TLS, or `unix:///PATH`. Unset: none.
    Writes are batched and off the hot path; Kafka stays the source of truth, and a Redis
    outage only degrades the diagnostics. Put a password in `LOWWATER_REDIS_URL` or the config
    file, not in a flag that `ps` shows."""
    redis_prefix: _NonBlank = "lowwater"
    """First part of every Redis key: `<prefix>:<group>:...`."""
    redis_interval: PositiveDuration = timedelta(seconds=1)
    """How often the pending sets are written to Redis: a crash shows them as they were at most
    this long before it."""
    redis_key_ttl: PositiveDuration = timedelta(days=1)
    """How long a partition's pending set stays in Redis after its last write, so that dead
    groups do not leak memory."""
    admin_operator_actions: Annotated[bool, BeforeValidator(_to_bool)] = False
    """Allow the Admin calls that change what gets processed: `SkipRecord` (finish a poison
    record without a worker) and `SeekPartition` (move a partition's consumer to an offset).
    Off: they answer FAILED_PRECONDITION. Like pausing and resuming, they also need Admin
    authentication or `admin_insecure`."""
    health_listen: _TcpListen | None = None
    """A second gRPC address that serves only `grpc.health.v1` (no worker or Admin API), for
    probes that must reach the pod IP on a numeric port: `HOST:PORT`, `[IPV6]:PORT` or `:PORT`
    for every interface. The worker API stays on `listen`. Unset: health is served on `listen`
    only."""
    metrics_listen: _TcpListen | None = None
    """Where Prometheus metrics are served over HTTP (`/metrics`): `HOST:PORT`, `[IPV6]:PORT`
    or `:PORT` for every interface, as a scraper on the pod IP needs. Unset: no metrics
    server. With it, librdkafka's statistics are on (`statistics.interval.ms`, 5000 unless
    passed through) for the lag gauge."""
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
    max_streams: Annotated[_AtLeastOne, Field(le=100_000)] = 100
    """Worker streams (open `Stream` calls, over all connections) served at once, 1 to 100000;
    one more is refused with RESOURCE_EXHAUSTED. Each stream costs two coroutines, a send
    buffer (see `max_send_message_bytes`) and up to `max_leases_per_stream` leases; a pod's
    workers need a handful, so 100 leaves room for many processes and stops a runaway client
    before it costs more than a few hundred MiB."""
    max_leases_per_stream: Annotated[_AtLeastOne, Field(le=1_000_000)] = 1000
    """Most records one worker may hold leased at once, 1 to 1000000: a stream's
    `max_in_flight_messages`, and a Pull caller's leases, are cut to this. The default is 16
    times the SDK's `max_in_flight` (64) and keeps up with 100k records/s at 10 ms each, while
    a worker that hoards leases withholds at most this many records from the others."""
    max_settlement_batch: Annotated[_AtLeastOne, Field(le=1_000_000)] = 10_000
    """Most msg_ids in one request, 1 to 1000000: a `Stream` request's settlements, packed acks
    and extended ids together, or an `Acknowledge` request's settlements. A bigger one is
    refused whole (RESOURCE_EXHAUSTED; a stream is closed and its leases redelivered at once)
    and settles nothing. 10000 ids cost the event loop a few milliseconds; batching more saves
    nothing (a stream message costs ~100 µs) and would stall every other stream meanwhile."""
    max_receive_message_bytes: Annotated[_AtLeastOne, Field(ge=65_536, le=2**31 - 1)] = (
        4 * 1024 * 1024)
    """Largest request the sidecar reads, in bytes (gRPC `grpc.max_receive_message_length`);
    a bigger one ends its call with RESOURCE_EXHAUSTED. gRPC's own default, 4 MiB, holds
    `max_settlement_batch` settlements many times over."""
    max_send_message_bytes: Annotated[_AtLeastOne, Field(ge=65_536, le=2**31 - 1)] = (
        64 * 1024 * 1024)
    """Largest message the sidecar sends, in bytes (gRPC `grpc.max_send_message_length`).
    Deliveries are packed into stream messages of up to 1 MiB; only a record bigger than that
    goes alone in a bigger one. A record whose delivery does not fit this limit is never
    sent: it is answered RETRY, so its subscription's retry policy (and `max_attempts`)
    decides. 64 MiB is far above what brokers take by default (Kafka's `message.max.bytes` is
    1 MB) and bounds what one such record costs a worker that stops reading (see
    `stream_write_timeout`)."""
    stream_write_timeout: PositiveDuration = timedelta(seconds=10)
    """How long a message to a worker stream may wait to be taken by the worker: a stream that
    stops reading is closed (DEADLINE_EXCEEDED) and its leases are redelivered at once, instead
    of when they expire. The SDK reads all the time, and a loopback connection moves 4 MiB in
    milliseconds, so 10 s means a wedged or hostile worker."""
    max_pull_wait: PositiveDuration = timedelta(seconds=30)
    """Longest a `Pull` waits for records; a longer `wait` is shortened to this (a long poll
    returns empty and is called again)."""
    max_concurrent_unary: Annotated[_AtLeastOne, Field(le=100_000)] = 64
    """`Pull` and `Acknowledge` calls served at once, 1 to 100000; one more is refused with
    RESOURCE_EXHAUSTED. A waiting Pull holds a coroutine and a deadline for up to
    `max_pull_wait`: 64 is many more than a pod's workers need."""
    max_streams_per_connection: Annotated[_AtLeastOne, Field(le=100_000)] = 100
    """Concurrent HTTP/2 streams (calls) per client connection (gRPC
    `grpc.max_concurrent_streams`), 1 to 100000; the client queues the ones over it. 100 is
    the HTTP/2 specification's recommended minimum."""
    keepalive_min_ping_interval: GrpcDuration = timedelta(seconds=10)
    """Shortest interval between a client's keepalive pings that is tolerated (gRPC
    `grpc.http2.min_ping_interval_without_data_ms`); a client pinging more often is sent
    GOAWAY (too_many_pings) after 2 strikes, and pings with no call open always count as
    strikes. 10 s lets any sane client keepalive through and stops a ping flood."""
    max_connection_idle: GrpcDuration = timedelta(minutes=5)
    """A client connection with no call open for this long is closed gracefully (gRPC
    `grpc.max_connection_idle_ms`); clients reconnect on their next call. Streams keep their
    connection busy, so only abandoned connections are closed."""
    log_level: Annotated[LogLevel, BeforeValidator(_to_log_level)] = "INFO"
    """Level of lowwater's `coordinator.*` loggers; other libraries log WARNING and above."""
    log_levels: _LogLevels = ""
    """Levels for single concern loggers, beating `log_level` for them:
    `concern=LEVEL[,concern=LEVEL...]`, for example `acks=DEBUG,commits=DEBUG` to follow
    settlements and commits without the rest. Concerns: `acks`, `auth`, `commits`, `config`,
    `flow`, `handoff`, `kafka`, `kafka.client` (librdkafka's own lines), `limits`, `metrics`,
    `rebalance`, `records`, `redis`, `retry`, `sidecar`, `streams`, `tls`."""
    log_format: Annotated[LogFormat, BeforeValidator(_to_choice)] = "text"
    """`text`: one line per event for people; `json`: one JSON object per line for log
    pipelines, with the fields `timestamp` (ISO 8601, UTC), `level`, `logger` (the concern:
    `coordinator.acks`, `coordinator.flow`, `coordinator.rebalance`, `coordinator.commits`,
    ...), `event` (the message) and, on errors, `exception`."""
    kafka: Annotated[
        Mapping[str, KafkaValue],
        BeforeValidator(_check_kafka),
        AfterValidator(_freeze),
        PlainSerializer(dict),
    ] = Field(default_factory=dict, validate_default=True)
    """librdkafka consumer properties, passed through unchanged, e.g. `"fetch.wait.max.ms" = 50`;
    not the ones lowwater sets itself. Connection, security and logging ones also configure the
    producer of dead-letter, expired and retry records."""
    subscriptions: tuple[Subscription, ...] = Field(default=(), validate_default=True)
    """Per-topic policies: each table names a `topic` (or `^regex`) and may set `guarantee`,
    `ordering`, `max_attempts`, `dead_letter_topic`, `expired_topic`, `ttl`, `expiry_header` and
    `retry`; what it leaves out is inherited from the global setting. TOML only: no flag, no
    environment variable."""

    @field_validator("subscriptions", mode="after")
    @classmethod
    def _check_subscription_topics(
        cls, subscriptions: tuple[Subscription, ...], info: ValidationInfo
    ) -> tuple[Subscription, ...]:
        if "topics" not in info.data:  # invalid, and reported as such
            return subscriptions
        topics: tuple[str, ...] = info.data["topics"]
        if not topics and not subscriptions:
            raise _missing_error("topics", "[[subscriptions]] tables in the config file")
        seen = {topic: "topics" for topic in topics}
        for index, subscription in enumerate(subscriptions):
            where = f"subscriptions[{index}]"
            earlier = seen.setdefault(subscription.topic, where)
            if earlier != where:
                raise _setting_error(
                    f"{where}.topic", f"{subscription.topic!r} is already consumed by {earlier}"
                )
        return subscriptions

    @model_validator(mode="after")
    def _check_together(self) -> Settings:
        if not self.allow_remote_listen and not is_loopback_listen(self.listen):
            raise _setting_error(
                "listen",
                f"{self.listen!r} is not a loopback address or unix socket"
                " (set allow_remote_listen = true to serve workers on other hosts)",
            )
        self._check_security()
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
        self._check_dead_letter_topics()
        self._check_retry_tiers()
        self._check_handoff_loops()
        return self

    def _check_security(self) -> None:
        for file, env in (("token_file", "token_env"), ("admin_token_file", "admin_token_env")):
            if getattr(self, file) is not None and getattr(self, env) is not None:
                raise _setting_error(env, f"{file} is set too: the token comes from one of them")
        if self.tls_cert_file is not None and self.tls_key_file is None:
            raise _setting_error("tls_key_file", "not set, but tls_cert_file is")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise _setting_error("tls_cert_file", "not set, but tls_key_file is")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise _setting_error("tls_cert_file",
                                 "not set, but tls_client_ca_file is: mutual TLS needs TLS")

    @property
    def admin_authenticated(self) -> bool:
        """Whether Admin callers prove who they are: an Admin token, or client certificates."""
        return (self.admin_token_file is not None or self.admin_token_env is not None
                or self.tls_client_ca_file is not None)

    def _check_retry_tiers(self) -> None:
        """Retry topics reorder records, and a pattern has no topic name to derive theirs from."""
        for index, policy in enumerate(self.subscription_policies()):
            if not policy.retry:
                continue
            where = ("retry" if index < len(self.topics)
                     else f"subscriptions[{index - len(self.topics)}].retry")
            if policy.ordering != "unordered":
                raise _setting_error(where, f"{policy.topic!r} is ordered by {policy.ordering}:"
                                     " its retries wait in place, not in retry topics")
            if policy.topic.startswith("^"):
                raise _setting_error(where, f"{policy.topic!r} is a pattern: name its topics to"
                                     " give them retry topics")

    def _check_handoff_loops(self) -> None:
        """No topic that records are handed off to may be consumed as a main topic, by name or by
        pattern, nor be a retry topic: the sidecar would take its own dead letters, expired
        records or retries back as new records. A pattern may match a retry topic, which is
        routed by its name to the subscription it retries (see :func:`consumes`)."""
        policies = self.subscription_policies()
        retry_topics = {self.retry_topic(p.topic, tier): index
                        for index, p in enumerate(policies) for tier in p.retry}
        for index, policy in enumerate(policies):
            handoffs = [(key, getattr(policy, key)) for key in ("dead_letter_topic", "expired_topic")]
            handoffs += [("retry", self.retry_topic(policy.topic, tier)) for tier in policy.retry]
            for key, topic in handoffs:
                if topic is None:
                    continue
                consumer = next((i for i, p in enumerate(policies) if consumes(p.topic, topic)
                                 and not (key == "retry" and p.topic.startswith("^"))), None)
                if consumer is not None:
                    how = "is consumed by" if policies[consumer].topic == topic \
                        else "matches the pattern of"
                    clash = f"{how} {self._entry(consumer)}"
                elif key != "retry" and topic in retry_topics:
                    clash = f"is a retry topic of {self._entry(retry_topics[topic])}"
                else:
                    continue
                what = "a retry topic" if key == "retry" else f"the {key}"
                fix = ("rename the topic or change retry_topic_format" if key == "retry"
                       else "name a topic that no subscription consumes")
                raise _setting_error(
                    self._policy_setting(index, key),
                    f"{topic!r}, {what} of {self._entry(index)}, {clash}: the sidecar would"
                    f" take the records it hands off there back as new records ({fix})")

    def _entry(self, index: int) -> str:
        """Policy ``index`` as the settings declare it, for messages: ``topics ('a')`` or
        ``subscriptions[0] ('^b.*')``."""
        policy = self.subscription_policies()[index]
        where = "topics" if index < len(self.topics) else f"subscriptions[{index - len(self.topics)}]"
        return f"{where} ({policy.topic!r})"

    def _policy_setting(self, index: int, key: str) -> str:
        """The setting that gives policy ``index`` its ``key``: its subscription's own, or the
        global one it inherits."""
        own = index - len(self.topics)
        if own >= 0 and getattr(self.subscriptions[own], key) is not INHERIT:
            return f"subscriptions[{own}].{key}"
        return key

    def _check_dead_letter_topics(self) -> None:
        """Every policy with a limit on attempts needs somewhere to put the records past it."""
        if self.topics and self.max_attempts is not None and self.dead_letter_topic is None:
            raise _setting_error(
                "dead_letter_topic",
                f"not set, but max_attempts is {self.max_attempts}: a record of topics out of"
                ' attempts goes to the dead-letter topic (or set max_attempts = "unlimited")',
            )
        for index, subscription in enumerate(self.subscriptions):
            policy = subscription.policy(self._global_policy(subscription.topic))
            if policy.max_attempts is not None and policy.dead_letter_topic is None:
                raise _setting_error(
                    f"subscriptions[{index}].dead_letter_topic",
                    f"not set here nor globally, but max_attempts is {policy.max_attempts}: a"
                    f" record of {subscription.topic!r} out of attempts goes to the dead-letter"
                    ' topic (or set max_attempts = "unlimited")',
                )

    def _global_policy(self, topic: str) -> SubscriptionPolicy:
        return SubscriptionPolicy(
            topic=topic,
            guarantee=self.guarantee,
            ordering=self.ordering,
            max_attempts=self.max_attempts,
            dead_letter_topic=self.dead_letter_topic,
            expired_topic=self.expired_topic,
            ttl=None if self.ttl is None else self.ttl.total_seconds(),
            expiry_header=self.expiry_header,
            retry=tuple(tier.total_seconds() for tier in self.retry),
        )

    def retry_topic(self, topic: str, delay: float) -> str:
        """The retry topic of ``topic`` for the tier of ``delay`` seconds."""
        return self.retry_topic_format.format(
            topic=topic, delay=format_duration(timedelta(seconds=delay)))

    def retry_topics(self) -> tuple[str, ...]:
        """Every retry topic of every policy, in policy and tier order."""
        return tuple(self.retry_topic(p.topic, d) for p in self.subscription_policies()
                     for d in p.retry)

    def subscription_policies(self) -> tuple[SubscriptionPolicy, ...]:
        """The policy of every topic consumed: one per entry of ``topics`` (the global settings),
        then one per subscription (its own settings, the global ones where it sets none)."""
        return tuple(self._global_policy(topic) for topic in self.topics) + tuple(
            s.policy(self._global_policy(s.topic)) for s in self.subscriptions
        )

    def all_topics(self) -> tuple[str, ...]:
        """What the consumer subscribes to: ``topics``, each subscription's topic, and the retry
        topics (the sidecar consumes its own retries)."""
        return self.topics + tuple(s.topic for s in self.subscriptions) + self.retry_topics()

    def handoff_topics(self) -> tuple[str, ...]:
        """The distinct dead-letter, expired and retry topics of every policy, sorted: the
        topics the sidecar produces to, which must exist."""
        policies = self.subscription_policies()
        topics = {p.dead_letter_topic for p in policies} | {p.expired_topic for p in policies}
        return tuple(sorted({t for t in topics if t is not None} | set(self.retry_topics())))

    def consumer_config(self) -> dict[str, KafkaValue]:
        """The full librdkafka consumer configuration: the passthrough plus lowwater's own keys.

        ``auto.offset.reset`` is ``earliest`` unless passed through, so a new group starts at
        the beginning and loses nothing produced before its first start; ``fetch.wait.max.ms``
        is DEFAULT_FETCH_WAIT_MAX_MS unless passed through. Offsets are committed
        and stored by lowwater only (``enable.auto.commit`` and ``enable.auto.offset.store`` are
        false). Returns a new dict on each call; the caller may add callbacks to it.
        """
        config: dict[str, KafkaValue] = {"auto.offset.reset": DEFAULT_AUTO_OFFSET_RESET,
                                         "fetch.wait.max.ms": DEFAULT_FETCH_WAIT_MAX_MS}
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

    def producer_config(self) -> dict[str, KafkaValue]:
        """The librdkafka configuration of the producer that hands records off to dead-letter,
        expired and retry topics.

        Idempotent, acknowledged by all in-sync replicas, and connected like the consumer: it
        shares the passthrough properties that :func:`is_producer_property` selects (security,
        connection, metadata and logging), and no consumer tuning. Returns a new dict on each
        call; the caller may add callbacks to it.
        """
        config: dict[str, KafkaValue] = {
            k: v for k, v in self.kafka.items() if is_producer_property(k)
        }
        config.update(
            {"bootstrap.servers": self.bootstrap_servers, "enable.idempotence": True, "acks": "all"}
        )
        return config

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name == "kafka":
                value = {k: "***" if is_sensitive_property(k) else v for k, v in self.kafka.items()}
            elif name == "redis_url" and isinstance(value, str):
                value = redact_url(value)
            yield name, value


def _max_poll_interval(kafka: Mapping[str, KafkaValue]) -> timedelta | None:
    raw = kafka.get("max.poll.interval.ms")
    if raw is None:
        return LIBRDKAFKA_MAX_POLL_INTERVAL
    try:
        return timedelta(milliseconds=int(raw))
    except (TypeError, ValueError, OverflowError):
        return None  # not a number: librdkafka reports it when the consumer is created
