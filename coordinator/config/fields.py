"""Field types of :class:`~coordinator.config.model.Settings` and their one-value validators.

Scalars (integers, booleans, log levels), topic names, listen addresses, the librdkafka
passthrough and which of it the hand-off producer shares. Checks that relate two settings live on
the model itself.
"""

from __future__ import annotations

import grp
import ipaddress
import re
from collections.abc import Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Annotated, Final, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field

from coordinator.config.errors import _setting_error

# --- scalar field types -------------------------------------------------------------------------
# Validators raise ValueError even for a wrong type (TRY004): pydantic converts no other exception.

_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})


def _to_int(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")  # noqa: TRY004
    return value.strip() if isinstance(value, str) else value


def _to_bool(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")  # noqa: TRY004
    return value


def _to_max_attempts(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in {"unlimited", "none"}:
        return None
    return _to_int(value)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _to_log_level(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")
_TOPIC_NAME_RULE: Final = "use 1-249 of ASCII letters, digits, '.', '_', '-'"


def _is_pattern(topic: str) -> bool:
    return topic.startswith("^") and len(topic) > 1


def _is_topic_name(topic: str) -> bool:
    return bool(_TOPIC_NAME.fullmatch(topic)) and topic not in {".", ".."}


def _check_topic(topic: str) -> str:
    """A topic to consume: a Kafka topic name, or ``^regex`` for a pattern subscription."""
    if _is_pattern(topic):
        try:
            re.compile(topic)
        except re.error as exc:
            raise ValueError(f"invalid pattern {topic!r}: {exc}") from None
    elif not _is_topic_name(topic):
        raise ValueError(
            f"invalid topic name {topic!r}: {_TOPIC_NAME_RULE} (or '^regex' for a pattern"
            " subscription)"
        )
    return topic


def _check_topic_name(topic: str) -> str:
    """A topic to produce to: a Kafka topic name, never a pattern."""
    if not topic.strip():
        raise ValueError("must not be empty")
    if _is_pattern(topic):
        raise ValueError(f"{topic!r} is a pattern: name one topic to produce to")
    if not _is_topic_name(topic):
        raise ValueError(f"invalid topic name {topic!r}: {_TOPIC_NAME_RULE}")
    return topic


def _check_topics(topics: tuple[str, ...]) -> tuple[str, ...]:
    for topic in topics:
        _check_topic(topic)
    duplicates = sorted({t for t in topics if topics.count(t) > 1})
    if duplicates:
        raise ValueError(f"duplicate topics: {', '.join(duplicates)}")
    return topics


_HOST_PORT: Final = re.compile(
    r"\[(?P<ipv6>[^\]]+)\]:(?P<port6>\d+)|(?P<host>[^:\[\]]*):(?P<port>\d+)"
)
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _listen_host(listen: str) -> str | None:
    """The host of a ``HOST:PORT`` address (``""`` means every interface), None for unix sockets."""
    if listen.startswith("unix:"):
        return None
    match = _HOST_PORT.fullmatch(listen)
    if match is None:
        raise ValueError(f"not a listen address: {listen!r}")
    return match["ipv6"] if match["ipv6"] is not None else match["host"]


def _check_listen(value: str) -> str:
    if value.startswith("unix://"):
        if not value[len("unix://") :].startswith("/"):
            raise ValueError(
                f"{value!r}: 'unix://' needs an absolute path, as in unix:///run/lw.sock"
            )
        return value
    if value.startswith("unix:"):
        if not value[len("unix:") :]:
            raise ValueError("'unix:' needs a socket path, as in unix:/run/lowwater.sock")
        return value
    match = _HOST_PORT.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not HOST:PORT, [IPV6]:PORT or unix:PATH")
    port = int(match["port6"] or match["port"])
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            raise ValueError(f"{match['ipv6']!r} is not an IPv6 address") from None
    elif match["host"] and not _HOSTNAME.fullmatch(match["host"]):
        raise ValueError(f"{match['host']!r} is not a host name or IPv4 address")
    return value


def is_loopback_listen(listen: str) -> bool:
    """Whether a valid ``listen`` address is reachable only from this host (or a unix socket)."""
    host = _listen_host(listen)
    if host is None or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or "" (every interface)


# --- the librdkafka passthrough -----------------------------------------------------------------

RESERVED_KAFKA_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "bootstrap.servers": "use the 'bootstrap_servers' setting (--bootstrap-servers)",
        "group.id": "use the 'group' setting (--group)",
        "enable.auto.commit": (
            "lowwater commits the low-water mark itself, see 'commit_interval' (--commit-interval)"
        ),
        "enable.auto.offset.store": (
            "lowwater stores offsets itself from the low-water mark, it cannot be turned on"
        ),
    }
)
"""librdkafka properties that lowwater sets itself, with the advice given when one is passed."""

PRODUCER_PASSTHROUGH_PREFIXES: Final[tuple[str, ...]] = (
    "security.",
    "sasl.",
    "ssl.",
    "socket.",
    "broker.",
    "client.",
    "connections.",
    "reconnect.",
    "metadata.",
    "topic.metadata.",
    "api.version.",
    "log.",
)
"""Passthrough properties with these prefixes also configure the hand-off producer: how to reach
and authenticate to the brokers, and how to log. Consumer tuning is not copied."""
PRODUCER_PASSTHROUGH_NAMES: Final = frozenset(
    {"debug", "enable.ssl.certificate.verification", "enable.sasl.oauthbearer.unsecure.jwt"}
)
"""Passthrough properties copied to the hand-off producer by exact name (security ones outside
the prefixes). ``allow.auto.create.topics`` (consumer-only) and ``statistics.interval.ms``
(lowwater registers no statistics callback on the producer) are deliberately absent."""


def is_producer_property(key: str) -> bool:
    """Whether a passthrough property is copied to the hand-off producer (see the constants)."""
    name = key.lower()
    return name in PRODUCER_PASSTHROUGH_NAMES or name.startswith(PRODUCER_PASSTHROUGH_PREFIXES)


KafkaValue = str | int | float | bool
"""A librdkafka property value; librdkafka properties are scalars."""

_SENSITIVE: Final = re.compile(r"password|secret|\.pem$|sasl\.oauthbearer\.config", re.IGNORECASE)


def is_sensitive_property(key: str) -> bool:
    """Whether a librdkafka property holds a secret, kept out of reprs and error messages."""
    return bool(_SENSITIVE.search(key))


def _check_kafka(value: object) -> object:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of librdkafka properties")  # noqa: TRY004
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip() or key != key.strip():
            raise _setting_error(f"kafka.{key}", "not a librdkafka property name")
        advice = RESERVED_KAFKA_KEYS.get(key.lower())
        if advice is not None:
            raise _setting_error(f"kafka.{key}", f"is set by lowwater: {advice}")
        if not isinstance(item, KafkaValue):
            raise _setting_error(f"kafka.{key}", "must be a string, number or boolean")
    return dict(value)


def _freeze(value: Mapping[str, KafkaValue]) -> Mapping[str, KafkaValue]:
    return MappingProxyType(dict(value))


REDIS_SCHEMES: Final = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """``url`` without its password: ``redis://user:secret@host`` becomes
    ``redis://user:***@host``, and a ``password=`` query value becomes ``***``."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        # The last '@' ends the credentials even when an unescaped '@' is in the password.
        userinfo, _, location = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if colon:
            rest = f"{user}:***@{location}"
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\g<1>***", f"{scheme}{sep}{rest}")


def _check_redis_url(value: str) -> str:
    shown = redact_url(value)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{shown!r} is not a URL ({exc})") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"{shown!r} is not a redis://, rediss:// or unix:// URL")
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ValueError(f"{shown!r} needs an absolute socket path, as in unix:///run/redis.sock")
        return value
    if not parts.hostname:
        raise ValueError(f"{shown!r} names no host")
    if port == 0:
        raise ValueError(f"{shown!r}: port 0 is no Redis port")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"{shown!r}: the path must be a database number, as in /0")
    return value


_NonBlank = Annotated[str, AfterValidator(_not_blank)]
_AtLeastOne = Annotated[int, BeforeValidator(_to_int), Field(ge=1)]
_MaxAttempts = Annotated[_AtLeastOne | None, BeforeValidator(_to_max_attempts)]
"""At least 1, or None (``"unlimited"`` or ``"none"`` in text) for no limit."""
_TopicName = Annotated[str, AfterValidator(_check_topic_name)]
_RedisUrl = Annotated[str, AfterValidator(_check_redis_url)]


def tcp_address(listen: str) -> str:
    """A ``health_listen`` or ``metrics_listen`` value to bind: ``:PORT`` (every interface)
    becomes ``0.0.0.0:PORT``; anything else is as it is."""
    return "0.0.0.0" + listen if listen.startswith(":") else listen


def _check_tcp_listen(value: str) -> str:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (every interface)."""
    if value.startswith("unix:"):
        raise ValueError("needs a TCP address (HOST:PORT or :PORT), not a unix socket")
    _check_listen(tcp_address(value))
    return value


_TcpListen = Annotated[str, AfterValidator(_check_tcp_listen)]


def _check_socket_mode(value: object) -> object:
    """An octal file mode such as ``"0660"``; owner read and write are required."""
    text = value.strip() if isinstance(value, str) else value
    if not isinstance(text, str) or not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f"expected an octal mode such as \"0600\" or \"0660\", got {value!r}")
    mode = int(text, 8)
    if mode & 0o600 != 0o600:
        raise ValueError(f"{text}: the sidecar's own user needs read and write (0600)")
    if mode & 0o007:
        raise ValueError(f"{text}: other users may not use the socket; use a group instead")
    return f"0{mode:03o}"


_SocketMode = Annotated[str, BeforeValidator(_check_socket_mode)]
MAX_GID: Final = 2**32 - 2
"""Largest group id; 2**32 - 1 is ``(gid_t) -1``, which ``chown`` takes for "unchanged"."""


def _check_socket_group(value: str) -> str:
    """A group of this host, by name, or any group id (a gid needs no name in ``/etc/group``,
    as in a container that shares a volume with another by number)."""
    group = value.strip()
    if group.isdigit():
        if int(group) > MAX_GID:
            raise ValueError(f"group id {group} is out of range 0-{MAX_GID}")
        return group
    try:
        grp.getgrnam(group)
    except KeyError:
        raise ValueError(f"no group named {group!r} on this host; give its number instead"
                         " if it has no name here") from None
    return group


_SocketGroup = Annotated[str, AfterValidator(_not_blank), AfterValidator(_check_socket_group)]
_TopicOrPattern = Annotated[str, AfterValidator(_check_topic)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]
LOG_CONCERNS: Final = ("acks", "auth", "commits", "config", "flow", "handoff", "kafka",
                       "kafka.client", "limits", "metrics", "rebalance", "records", "redis",
                       "retry", "sidecar", "streams", "tls")
"""The concern loggers under ``coordinator.``, each of which ``log_levels`` can set."""


def _check_log_levels(value: object) -> object:
    """``concern=LEVEL[,concern=LEVEL...]`` -> the same, normalized (``acks=DEBUG``)."""
    if not isinstance(value, str):
        return value
    levels: dict[str, str] = {}
    for item in (i.strip() for i in value.split(",")):
        if not item:
            continue
        concern, eq, level = (part.strip() for part in item.partition("="))
        concern = concern.lower().removeprefix("coordinator.")
        if not eq or concern not in LOG_CONCERNS:
            raise ValueError(f"{item!r}: use concern=LEVEL, with a concern of "
                             f"{', '.join(LOG_CONCERNS)}")
        if level.upper() not in get_args(LogLevel):
            raise ValueError(f"{item!r}: the level must be one of {', '.join(get_args(LogLevel))}")
        if concern in levels:
            raise ValueError(f"{concern!r} is given twice")
        levels[concern] = level.upper()
    return ",".join(f"{c}={lv}" for c, lv in levels.items())


def log_levels(spec: str) -> dict[str, str]:
    """A valid ``log_levels`` value as {concern logger name: level}."""
    pairs = (item.split("=") for item in spec.split(",") if item)
    return {f"coordinator.{concern}": level for concern, level in pairs}


_LogLevels = Annotated[str, BeforeValidator(_check_log_levels)]
Guarantee = Literal["at_least_once", "at_most_once"]
"""What a subscription promises about its records (see the `guarantee` setting)."""


def _to_list(value: object) -> object:
    """A list as a flag or an environment variable writes it: comma-separated."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _check_tiers(tiers: tuple[timedelta, ...]) -> tuple[timedelta, ...]:
    if list(tiers) != sorted(set(tiers)):
        raise ValueError("retry tiers must be distinct and in increasing order")
    return tiers


DEFAULT_RETRY_TOPIC_FORMAT: Final = "{topic}.retry.{delay}"
"""How a retry tier's topic is named: ``orders.retry.10s``."""


def _check_retry_topic_format(value: str) -> str:
    try:
        name = value.format(topic="t", delay="1s")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"use only the fields {{topic}} and {{delay}}: {exc}") from None
    if "{topic}" not in value or "{delay}" not in value:
        raise ValueError("must contain both {topic} and {delay}")
    _check_topic_name(name)
    return value


Ordering = Literal["unordered", "key", "partition"]
"""How a subscription orders the delivery of its records (see the `ordering` setting)."""


def _to_choice(value: object) -> object:
    """A choice as written by hand: any case, dashes for underscores, spaces around."""
    return value.strip().lower().replace("-", "_") if isinstance(value, str) else value


_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_env_name(value: str) -> str:
    """The name of an environment variable (not its value: a token never goes in a setting)."""
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an environment variable name (letters, digits, '_')")
    return value


_EnvName = Annotated[str, AfterValidator(_check_env_name)]
