"""lowwater's settings: one typed, frozen object, validated at start-up, and where it comes from.

Sources, highest precedence first:

1. command-line flags (built by :mod:`coordinator.cli` from the fields below);
2. the TOML file named by ``--config`` (or ``LOWWATER_CONFIG``); unknown keys are errors;
3. ``LOWWATER_<SETTING>`` environment variables (``LOWWATER_KAFKA__<PROPERTY>`` for librdkafka);
4. the defaults declared on :class:`Settings`.

``[[subscriptions]]`` tables come from the TOML file only. :meth:`Settings.subscription_policies`
resolves each topic's policy, a subscription's settings over the global ones.

Our own settings and the librdkafka passthrough (``kafka``) are kept apart; the passthrough cannot
hold the keys lowwater sets itself. Every bad value becomes a :class:`ConfigError` that names the
setting and where its value came from. ``docs/configuration.md`` embeds
:func:`settings_reference`, and a unit test keeps it current.
"""

from __future__ import annotations

# `X as X` re-exports (for mypy --strict) the public names that importers use outside __all__.
from coordinator.config.durations import NonNegativeDuration as NonNegativeDuration
from coordinator.config.durations import PositiveDuration as PositiveDuration
from coordinator.config.durations import format_duration, parse_duration
from coordinator.config.errors import ConfigError, Problem
from coordinator.config.fields import LOG_CONCERNS as LOG_CONCERNS
from coordinator.config.fields import PRODUCER_PASSTHROUGH_NAMES as PRODUCER_PASSTHROUGH_NAMES
from coordinator.config.fields import (
    PRODUCER_PASSTHROUGH_PREFIXES as PRODUCER_PASSTHROUGH_PREFIXES,
)
from coordinator.config.fields import RESERVED_KAFKA_KEYS as RESERVED_KAFKA_KEYS
from coordinator.config.fields import (
    KafkaValue,
    is_loopback_listen,
    is_producer_property,
    is_sensitive_property,
    log_levels,
    redact_url,
    tcp_address,
)
from coordinator.config.fields import LogLevel as LogLevel
from coordinator.config.model import DEFAULT_AUTO_OFFSET_RESET as DEFAULT_AUTO_OFFSET_RESET
from coordinator.config.model import LIBRDKAFKA_MAX_POLL_INTERVAL as LIBRDKAFKA_MAX_POLL_INTERVAL
from coordinator.config.model import Settings
from coordinator.config.reference import default_text, settings_reference
from coordinator.config.sources import CONFIG_ENV_VAR as CONFIG_ENV_VAR
from coordinator.config.sources import ENV_PREFIX as ENV_PREFIX
from coordinator.config.sources import FILE_ONLY_SETTINGS as FILE_ONLY_SETTINGS
from coordinator.config.sources import KAFKA_ENV_PREFIX as KAFKA_ENV_PREFIX
from coordinator.config.sources import (
    env_var_for,
    flag_for,
    resolve_settings,
    unknown_environment_variables,
)
from coordinator.config.subscriptions import INHERIT as INHERIT
from coordinator.config.subscriptions import Inherit, Subscription, SubscriptionPolicy

__all__ = [
    "ConfigError",
    "Inherit",
    "KafkaValue",
    "Problem",
    "Settings",
    "Subscription",
    "SubscriptionPolicy",
    "default_text",
    "env_var_for",
    "flag_for",
    "format_duration",
    "is_loopback_listen",
    "is_producer_property",
    "is_sensitive_property",
    "log_levels",
    "parse_duration",
    "redact_url",
    "resolve_settings",
    "settings_reference",
    "tcp_address",
    "unknown_environment_variables",
]
