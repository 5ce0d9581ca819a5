"""lowwater's settings: one typed, frozen object, validated at start-up, and where it comes from.

Sources, highest precedence first:

1. command-line flags (built by :mod:`coordinator.cli` from the fields below);
2. the TOML file named by ``--config`` (or ``LOWWATER_CONFIG``); unknown keys are errors;
3. ``LOWWATER_<SETTING>`` environment variables (``LOWWATER_KAFKA__<PROPERTY>`` for librdkafka);
4. the defaults declared on :class:`Settings`.

Our own settings and the librdkafka passthrough (``kafka``) are kept apart; the passthrough cannot
hold the keys lowwater sets itself. Every bad value becomes a :class:`ConfigError` that names the
setting and where its value came from. ``docs/configuration.md`` embeds
:func:`settings_reference`, and a unit test keeps it current.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "ConfigError",
    "KafkaValue",
    "Problem",
    "Settings",
    "default_text",
    "env_var_for",
    "flag_for",
    "format_duration",
    "is_loopback_listen",
    "is_sensitive_property",
    "parse_duration",
    "resolve_settings",
    "settings_reference",
    "unknown_environment_variables",
]

ENV_PREFIX: Final = "LOWWATER_"
"""Prefix of the environment variables that carry settings."""
KAFKA_ENV_PREFIX: Final = "LOWWATER_KAFKA__"
"""Prefix of the environment variables that carry librdkafka properties."""
CONFIG_ENV_VAR: Final = "LOWWATER_CONFIG"
"""Environment variable naming the TOML file when ``--config`` is not given."""
DEFAULT_AUTO_OFFSET_RESET: Final = "earliest"
"""``auto.offset.reset`` unless passed through: a new group loses nothing produced before it."""
LIBRDKAFKA_MAX_POLL_INTERVAL: Final = timedelta(milliseconds=300_000)
"""librdkafka's default ``max.poll.interval.ms``; ``rebalance_timeout`` must stay below it."""
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

KafkaValue = str | int | float | bool
"""A librdkafka property value; librdkafka properties are scalars."""


# --- problems -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One bad setting: its name, what is wrong, and where the value came from."""

    setting: str
    reason: str
    source: str | None = None

    def __str__(self) -> str:
        where = f" (from {self.source})" if self.source else ""
        return f"invalid setting '{self.setting}': {self.reason}{where}"


class ConfigError(Exception):
    """The settings are unusable; start-up must stop. ``str()`` is one line naming each setting.

    Attributes:
        problems: every problem found, in the order found; never empty.
        setting: the name of the first bad setting.
    """

    retriable: ClassVar[bool] = False

    def __init__(self, *problems: Problem) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__("; ".join(str(p) for p in problems))
        self.problems: tuple[Problem, ...] = problems

    @property
    def setting(self) -> str:
        return self.problems[0].setting


def _setting_error(setting: str, reason: str) -> PydanticCustomError:
    """A validation error attributed to ``setting`` even when raised by a cross-field check."""
    return PydanticCustomError(
        "lowwater_setting", "{setting}: {reason}", {"setting": setting, "reason": reason}
    )


# --- durations ----------------------------------------------------------------------------------

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


def _check_topics(topics: tuple[str, ...]) -> tuple[str, ...]:
    if not topics:
        raise ValueError("at least one topic is required")
    for topic in topics:
        is_pattern = topic.startswith("^") and len(topic) > 1
        if not is_pattern and (not _TOPIC_NAME.fullmatch(topic) or topic in {".", ".."}):
            raise ValueError(
                f"invalid topic name {topic!r}: use 1-249 of ASCII letters, digits, '.', '_', '-'"
                " (or '^regex' for a pattern subscription)"
            )
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


_NonBlank = Annotated[str, AfterValidator(_not_blank)]
_AtLeastOne = Annotated[int, BeforeValidator(_to_int), Field(ge=1)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


# --- the settings -------------------------------------------------------------------------------


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


# --- names per source ---------------------------------------------------------------------------

_FLAGS: Final[Mapping[str, str]] = MappingProxyType({"topics": "--topic", "kafka": "--kafka"})


def flag_for(setting: str) -> str:
    """The command-line flag of a setting: ``--max-lease``; ``--topic`` and ``--kafka`` repeat."""
    return _FLAGS.get(setting, "--" + setting.replace("_", "-"))


def env_var_for(setting: str) -> str:
    """The environment variable of a setting: ``LOWWATER_MAX_LEASE``."""
    return ENV_PREFIX + setting.upper()


def _kafka_key_from_env(suffix: str) -> str:
    """``FETCH_WAIT_MAX_MS`` -> ``fetch.wait.max.ms``; ``__`` stands for a literal ``_``."""
    return "_".join(part.replace("_", ".") for part in suffix.lower().split("__"))


def unknown_environment_variables(environ: Mapping[str, str]) -> list[str]:
    """``LOWWATER_*`` variables that are no setting (ignored, but probably typos), sorted."""
    known = {env_var_for(name) for name in Settings.model_fields if name != "kafka"}
    known.add(CONFIG_ENV_VAR)
    return sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name not in known
        and not name.startswith(KAFKA_ENV_PREFIX)
    )


# --- sources and precedence ---------------------------------------------------------------------

_Layer = dict[str, tuple[object, str]]
"""Setting (``kafka.<property>`` for the passthrough) -> (raw value, where it came from)."""


def _environment_layer(environ: Mapping[str, str]) -> _Layer:
    layer: _Layer = {}
    for name in Settings.model_fields:
        var = env_var_for(name)
        raw = environ.get(var, "")
        if name != "kafka" and raw.strip():
            layer[name] = ([t.strip() for t in raw.split(",")] if name == "topics" else raw, var)
    for var, raw in environ.items():
        if var.startswith(KAFKA_ENV_PREFIX) and raw.strip():
            key = _kafka_key_from_env(var[len(KAFKA_ENV_PREFIX) :])
            if not key:
                raise ConfigError(Problem("kafka", "no property name after LOWWATER_KAFKA__", var))
            layer["kafka." + key] = (raw, var)
    return layer


def _flatten(table: Mapping[str, object], prefix: str = "") -> Iterable[tuple[str, object]]:
    """TOML reads an unquoted ``fetch.wait.max.ms = 50`` as nested tables: give the name back."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _file_layer(path: Path) -> _Layer:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(Problem("config", f"cannot read {path}: {exc.strerror}")) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem("config", f"{path} is not valid TOML: {exc}")) from None
    source = str(path)
    layer: _Layer = {}
    problems = []
    for key, value in data.items():
        if key == "kafka" and isinstance(value, dict):
            layer.update(("kafka." + k, (v, source)) for k, v in _flatten(value))
        elif key == "kafka":
            problems.append(Problem(key, "must be a table of librdkafka properties", source))
        elif key in Settings.model_fields:
            layer[key] = (value, source)
        else:
            close = difflib.get_close_matches(key, list(Settings.model_fields), n=1)
            hint = f", did you mean '{close[0]}'?" if close else ""
            problems.append(Problem(key, f"unknown setting{hint}", source))
    if problems:
        raise ConfigError(*problems)
    return layer


def _flag_layer(flags: Mapping[str, object]) -> _Layer:
    layer: _Layer = {}
    for name, value in flags.items():
        if name == "kafka":
            if not isinstance(value, Mapping):
                raise ConfigError(Problem(name, "expected KEY=VALUE pairs", flag_for(name)))
            layer.update(("kafka." + k, (v, flag_for(name))) for k, v in value.items())
        else:
            layer[name] = (value, flag_for(name))
    return layer


def resolve_settings(
    *,
    flags: Mapping[str, object] | None = None,
    config_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge flags over the TOML file over the environment over the defaults, and validate.

    Each setting is taken whole from the highest source that has it (a ``topics`` list from a
    flag replaces the file's); the ``kafka`` passthrough is merged property by property.

    Args:
        flags: setting name -> value as given on the command line; ``kafka`` maps property ->
            value. Absent names are not set.
        config_file: a TOML file; None for none.
        environ: the environment (``LOWWATER_*`` variables are read; others are ignored).

    Raises:
        ConfigError: naming each bad setting and the source of its value.
    """
    merged: _Layer = {}
    merged.update(_environment_layer(environ or {}))
    if config_file is not None:
        merged.update(_file_layer(Path(config_file)))
    merged.update(_flag_layer(flags or {}))
    data: dict[str, Any] = {k: v for k, (v, _) in merged.items() if not k.startswith("kafka.")}
    data["kafka"] = {
        k[len("kafka.") :]: v for k, (v, _) in merged.items() if k.startswith("kafka.")
    }
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(*_problems(exc, {k: src for k, (_, src) in merged.items()})) from None


def _problems(exc: ValidationError, sources: Mapping[str, str]) -> list[Problem]:
    problems: dict[str, Problem] = {}  # the first problem of each setting
    for error in exc.errors(include_url=False):
        kind, ctx, loc = error["type"], error.get("ctx") or {}, error["loc"]
        if kind == "lowwater_setting":
            setting, reason = str(ctx["setting"]), str(ctx["reason"])
        else:
            setting = str(loc[0]) if loc else "settings"
            reason = error["msg"].removeprefix("Value error, ")
            reason = reason[:1].lower() + reason[1:]
            if kind != "value_error" and isinstance(error["input"], str | int | float):
                reason += f", got {error['input']!r}"
        source = sources.get(setting, "default" if setting in Settings.model_fields else None)
        if kind == "missing":
            where = f"{flag_for(setting)}, '{setting}' in the config file or {env_var_for(setting)}"
            reason, source = f"not set (use {where})", None
        problems.setdefault(setting, Problem(setting, reason, source))
    return list(problems.values())


# --- reference documentation --------------------------------------------------------------------


def _kind(annotation: object) -> str:
    args = typing.get_args(annotation)
    if annotation is timedelta:
        return "duration"
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if annotation is str:
        return "string"
    if typing.get_origin(annotation) is Literal:
        return " / ".join(f"`{a}`" for a in args)
    if typing.get_origin(annotation) is tuple:
        return "list of strings"
    if typing.get_origin(annotation) is Mapping:
        return "table"
    if type(None) in args:
        return 'integer or `"unlimited"`'
    raise TypeError(f"no documentation kind for {annotation!r}")


def default_text(setting: str) -> str:
    """A setting's default as a user would write it: ``30s``, ``unlimited``, ``required``."""
    field = Settings.model_fields[setting]
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, timedelta):
        return format_duration(default)
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, Mapping):
        return "empty"
    return "unlimited" if default is None else str(default)


def settings_reference() -> str:
    """The Markdown table of every setting, as embedded in ``docs/configuration.md``."""
    rows = [
        "| TOML key | Flag | Environment variable | Type | Default | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        key, flag, env = f"`{name}`", f"`{flag_for(name)}`", f"`{env_var_for(name)}`"
        if name == "topics":
            flag = "`--topic` (repeatable)"
        elif name == "kafka":
            key, flag = "`[kafka]` table", "`--kafka KEY=VALUE` (repeatable)"
            env = f"`{KAFKA_ENV_PREFIX}KEY`"
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        kind = _kind(field.annotation)
        default = default_text(name)
        if default not in {"required", "empty"}:
            default = f"`{default}`"
        rows.append(f"| {key} | {flag} | {env} | {kind} | {default} | {meaning} |")
    return "\n".join(rows) + "\n"
