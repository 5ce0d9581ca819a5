"""Settings: durations, validation, the sources and their precedence, and the reference doc."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from coordinator.config import (
    INHERIT,
    PRODUCER_PASSTHROUGH_NAMES,
    PRODUCER_PASSTHROUGH_PREFIXES,
    RESERVED_KAFKA_KEYS,
    ConfigError,
    Settings,
    Subscription,
    SubscriptionPolicy,
    format_duration,
    parse_duration,
    resolve_settings,
    settings_reference,
    unknown_environment_variables,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REQUIRED = {"bootstrap_servers": "kafka:9092", "group": "g", "topics": ["t"]}


def resolve(
    flags: Mapping[str, object] | None = None,
    toml: str | None = None,
    environ: Mapping[str, str] | None = None,
    tmp_path: Path | None = None,
) -> Settings:
    config_file = None
    if toml is not None:
        assert tmp_path is not None
        config_file = tmp_path / "lowwater.toml"
        config_file.write_text(toml)
    return resolve_settings(flags=flags, config_file=config_file, environ=environ)


def config_error(**flags: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resolve_settings(flags={**REQUIRED, **flags})
    return info.value


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(minutes=90)),
        ("1m30.5s", timedelta(seconds=90.5)),
        ("2.5s", timedelta(seconds=2.5)),
        (".5s", timedelta(milliseconds=500)),
        ("250us", timedelta(microseconds=250)),
        ("30", timedelta(seconds=30)),
        ("0.25", timedelta(milliseconds=250)),
        (" 7s ", timedelta(seconds=7)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration_accepts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "s",
        "abc",
        "5sec",
        "5 s",
        "5S",
        "-5s",
        "1h-5m",
        "5d",
        "1e3s",
        "PT30S",
        "nan",
        "inf",
        "5.s.s",
    ],
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_duration_refuses_overflow() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_duration("99999999999999999h")


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=100_000)))
def test_formatted_durations_parse_back(value: timedelta) -> None:
    text = format_duration(value)
    assert re.fullmatch(r"(\d+(h|m|s|ms|us))+", text)
    assert parse_duration(text) == value


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["h", "m", "s", "ms", "us"]))
def test_a_single_term_is_its_number_of_units(count: int, unit: str) -> None:
    size = {
        "h": timedelta(hours=1),
        "m": timedelta(minutes=1),
        "s": timedelta(seconds=1),
        "ms": timedelta(milliseconds=1),
        "us": timedelta(microseconds=1),
    }[unit]
    assert parse_duration(f"{count}{unit}") == count * size


def test_format_duration() -> None:
    assert format_duration(timedelta(0)) == "0s"
    assert format_duration(timedelta(minutes=10)) == "10m"
    assert format_duration(timedelta(hours=1, seconds=1.5)) == "1h1s500ms"
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(45, timedelta(seconds=45)), (0.5, timedelta(milliseconds=500)), ("1m", timedelta(minutes=1))],
)
def test_durations_accept_numbers_of_seconds(value: object, expected: timedelta) -> None:
    assert resolve_settings(flags={**REQUIRED, "lease": value}).lease == expected


@pytest.mark.parametrize(
    "setting", ["lease", "max_lease", "commit_interval", "rebalance_timeout", "drain_timeout"]
)
@pytest.mark.parametrize("value", ["0s", 0, -1, "junk", True])
def test_positive_durations_refuse_zero_negative_and_junk(setting: str, value: object) -> None:
    error = config_error(**{setting: value})
    assert error.setting == setting


def test_retry_delays_may_be_zero() -> None:
    settings = resolve_settings(
        flags={**REQUIRED, "default_retry_delay": "0s", "max_retry_delay": 0}
    )
    assert settings.default_retry_delay == settings.max_retry_delay == timedelta(0)


# --- the model ----------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = Settings.model_validate(REQUIRED)
    assert settings.topics == ("t",)
    assert settings.listen == "127.0.0.1:50051"
    assert settings.allow_remote_listen is False
    assert settings.lease == timedelta(seconds=30)
    assert settings.max_lease == timedelta(minutes=10)
    assert settings.default_retry_delay == timedelta(seconds=1)
    assert settings.max_retry_delay == timedelta(minutes=15)
    assert settings.max_attempts is None
    assert settings.dead_letter_topic is None
    assert settings.expired_topic is None
    assert settings.ttl is None
    assert settings.expiry_header is None
    assert settings.create_topics is False
    assert settings.commit_interval == timedelta(seconds=1)
    assert settings.max_pending_per_partition == 10_000
    assert settings.fetch_batch_size == 500
    assert settings.rebalance_timeout == timedelta(seconds=10)
    assert settings.drain_timeout == timedelta(seconds=30)
    assert (settings.max_streams, settings.max_leases_per_stream, settings.max_settlement_batch,
            settings.max_concurrent_unary, settings.max_streams_per_connection) == (
        100, 1000, 10_000, 64, 100)
    assert settings.max_receive_message_bytes == 4 * 1024 * 1024  # gRPC's own default
    assert settings.max_send_message_bytes == 64 * 1024 * 1024
    assert settings.stream_write_timeout == timedelta(seconds=10)
    assert settings.max_pull_wait == timedelta(seconds=30)
    assert settings.keepalive_min_ping_interval == timedelta(seconds=10)
    assert settings.max_connection_idle == timedelta(minutes=5)
    assert settings.log_level == "INFO"
    assert dict(settings.kafka) == {}
    assert settings.subscriptions == ()


def test_every_field_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no docstring"


def test_settings_are_frozen() -> None:
    settings = Settings.model_validate({**REQUIRED, "kafka": {"fetch.wait.max.ms": 50}})
    with pytest.raises(ValidationError):
        settings.lease = timedelta(seconds=1)
    with pytest.raises(TypeError):
        settings.kafka["fetch.wait.max.ms"] = 1  # type: ignore[index]
    assert isinstance(settings.topics, tuple)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({**REQUIRED, "leese": "5s"})


def test_max_lease_must_cover_lease() -> None:
    assert config_error(lease="20m").setting == "max_lease"
    assert "must be >= lease (20m)" in str(config_error(lease="20m"))
    assert config_error(lease="1m", max_lease="30s").setting == "max_lease"
    settings = resolve_settings(flags={**REQUIRED, "lease": "1m", "max_lease": "1m"})
    assert settings.max_lease == settings.lease


def test_max_retry_delay_must_cover_default_retry_delay() -> None:
    error = config_error(default_retry_delay="1m", max_retry_delay="30s")
    assert error.setting == "max_retry_delay"


def test_rebalance_timeout_must_stay_below_max_poll_interval() -> None:
    assert config_error(rebalance_timeout="5m").setting == "rebalance_timeout"
    error = config_error(rebalance_timeout="10s", kafka={"max.poll.interval.ms": "10000"})
    assert error.setting == "rebalance_timeout"
    settings = resolve_settings(
        flags={**REQUIRED, "rebalance_timeout": "6m", "kafka": {"max.poll.interval.ms": 600_000}}
    )
    assert settings.rebalance_timeout == timedelta(minutes=6)


@pytest.mark.parametrize(
    ("value", "expected"), [("unlimited", None), ("None", None), ("3", 3), (1, 1), (None, None)]
)
def test_max_attempts(value: object, expected: int | None) -> None:
    flags = {**REQUIRED, "max_attempts": value, "dead_letter_topic": "dlq"}
    assert resolve_settings(flags=flags).max_attempts == expected


BAD_VALUES: list[tuple[str, object]] = [
    ("guarantee", "exactly_once"),
    ("ordering", "by_key"),
    ("offset_map", "perhaps"),
    ("offset_map_max_bytes", 63),
    ("offset_map_max_bytes", 2_000_000),
    ("redis_url", "http://127.0.0.1:6379"),
    ("redis_url", "redis://:pw@"),
    ("redis_url", "redis://127.0.0.1:99999"),
    ("redis_url", "redis://127.0.0.1:6379/zero"),
    ("redis_url", "unix://relative.sock"),
    ("redis_prefix", ""),
    ("metrics_listen", "9464"),
    ("log_format", "logfmt"),
    ("socket_mode", "0666"),
    ("socket_mode", "0400"),
    ("socket_mode", "rw-rw----"),
    ("socket_mode", 432),
    ("socket_group", ""),
    ("admin_operator_actions", "perhaps"),
    ("token_file", "/nonexistent/token"),
    ("token_file", "/"),
    ("token_env", ""),
    ("token_env", "MY-TOKEN"),
    ("admin_token_file", "/nonexistent/token"),
    ("admin_token_env", "A TOKEN"),
    ("admin_insecure", "perhaps"),
    ("tls_cert_file", "/nonexistent/tls.crt"),
    ("tls_key_file", "/nonexistent/tls.key"),
    ("tls_client_ca_file", "/"),
    ("health_listen", "localhost"),
    ("metrics_listen", "unix:/run/metrics.sock"),
    ("metrics_listen", "127.0.0.1:99999"),
    ("redis_interval", "-1s"),
    ("redis_key_ttl", 0),
    ("retry", "1s,1s"),
    ("retry", ["10s", "1s"]),
    ("retry_topic_format", "{topic}.retry"),
    ("retry_topic_format", "{topic}.{delay}.{when}"),
    ("retry_topic_format", "{topic} retry {delay}"),
    ("guarantee", ""),
    ("max_attempts", 0),
    ("max_attempts", True),
    ("max_attempts", "many"),
    ("max_pending_per_partition", 0),
    ("max_pending_per_partition", "1.5"),
    ("fetch_batch_size", 0),
    ("fetch_batch_size", 100_001),
    ("fetch_batch_size", False),
    ("max_streams", 0),
    ("max_streams", 100_001),
    ("max_streams", True),
    ("max_leases_per_stream", 0),
    ("max_leases_per_stream", 1_000_001),
    ("max_settlement_batch", 0),
    ("max_settlement_batch", "many"),
    ("max_receive_message_bytes", 65_535),  # below 64 KiB: not even one settlement batch
    ("max_receive_message_bytes", 2**31),  # gRPC's option is a C int
    ("max_send_message_bytes", 0),
    ("max_send_message_bytes", -1),  # gRPC's "no limit" is not offered
    ("stream_write_timeout", "0s"),
    ("stream_write_timeout", "soon"),
    ("max_pull_wait", 0),
    ("max_pull_wait", "-1s"),
    ("max_concurrent_unary", 0),
    ("max_concurrent_unary", 100_001),
    ("max_streams_per_connection", 0),
    ("max_streams_per_connection", "1.5"),
    ("keepalive_min_ping_interval", "0s"),
    ("keepalive_min_ping_interval", "25d"),  # over 2**31 - 1 ms
    ("max_connection_idle", -5),
    ("max_connection_idle", "25d"),
    ("log_level", "TRACE"),
    ("log_levels", "acks=TRACE"),
    ("log_levels", "acks"),
    ("log_levels", "chatter=DEBUG"),
    ("log_levels", "acks=DEBUG,acks=INFO"),
    ("log_levels", 3),
    ("allow_remote_listen", "maybe"),
    ("allow_remote_listen", 1),
    ("bootstrap_servers", "  "),
    ("group", ""),
    ("topics", []),
    ("topics", ["a", "b", "a"]),
    ("topics", ["has space"]),
    ("topics", [""]),
    ("topics", "a"),
    ("listen", "junk"),
    ("listen", "127.0.0.1:70000"),
    ("lease", "-1s"),
    ("max_lease", "1s"),  # below the default lease
    ("max_lease", 0),
    ("default_retry_delay", "-1s"),
    ("default_retry_delay", "soon"),
    ("max_retry_delay", -1),
    ("max_retry_delay", "0.5s"),  # below the default default_retry_delay
    ("commit_interval", "0ms"),
    ("rebalance_timeout", "10m"),  # not below librdkafka's max.poll.interval.ms
    ("drain_timeout", "never"),
    ("kafka", "fetch.wait.max.ms=50"),  # not a table of properties
    ("dead_letter_topic", ""),
    ("dead_letter_topic", "^dlq-.*"),  # a pattern: nothing to produce to
    ("dead_letter_topic", "has space"),
    ("dead_letter_topic", ".."),
    ("expired_topic", "  "),
    ("expired_topic", "x" * 250),
    ("expired_topic", "."),
    ("ttl", "0s"),
    ("ttl", "-5m"),
    ("ttl", "5 minutes"),
    ("expiry_header", ""),
    ("expiry_header", " "),
    ("create_topics", "maybe"),
    ("create_topics", 1),
]
"""(setting, invalid value); every setting of the model has at least one."""


BAD_FILE_VALUES: list[tuple[str, str]] = [
    ("subscriptions", 'subscriptions = "t"'),
    ("subscriptions[0]", "subscriptions = [1]"),
    ("subscriptions[0].topic", "[[subscriptions]]\nttl = 5"),
    ("subscriptions[0].topic", '[[subscriptions]]\ntopic = "has space"'),
    ("subscriptions[0].max_attempts", '[[subscriptions]]\ntopic = "a"\nmax_attempts = 0'),
    (
        "subscriptions[0].dead_letter_topic",
        '[[subscriptions]]\ntopic = "a"\ndead_letter_topic = "^d"',
    ),
    ("subscriptions[0].expired_topic", '[[subscriptions]]\ntopic = "a"\nexpired_topic = ""'),
    ("subscriptions[0].ttl", '[[subscriptions]]\ntopic = "a"\nttl = "0s"'),
    ("subscriptions[0].expiry_header", '[[subscriptions]]\ntopic = "a"\nexpiry_header = " "'),
    ("subscriptions[0].guarantee", '[[subscriptions]]\ntopic = "a"\nguarantee = "x"'),
]
"""(the setting named, TOML text) for the settings only the file can set."""


def test_every_setting_has_a_bad_value_case() -> None:
    file_only = {setting.partition("[")[0] for setting, _ in BAD_FILE_VALUES}
    assert {setting for setting, _ in BAD_VALUES} | file_only == set(Settings.model_fields)


@pytest.mark.parametrize(("setting", "toml"), BAD_FILE_VALUES)
def test_bad_file_values_name_their_setting(setting: str, toml: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(flags=REQUIRED, toml=toml, tmp_path=tmp_path)
    assert info.value.setting == setting
    assert str(info.value).startswith(f"invalid setting '{setting}': ")
    assert str(info.value).endswith(f"(from {tmp_path / 'lowwater.toml'})")


@pytest.mark.parametrize(("setting", "value"), BAD_VALUES)
def test_bad_values_name_their_setting(setting: str, value: object) -> None:
    error = config_error(**{setting: value})
    assert error.setting == setting
    assert str(error).startswith(f"invalid setting '{setting}': ")
    assert "\n" not in str(error)


def test_ranges_are_inclusive() -> None:
    for size in (1, 100_000):
        assert (
            resolve_settings(flags={**REQUIRED, "fetch_batch_size": size}).fetch_batch_size == size
        )


def test_log_level_is_case_insensitive() -> None:
    assert resolve_settings(flags={**REQUIRED, "log_level": "debug"}).log_level == "DEBUG"


def test_topic_patterns_are_allowed() -> None:
    settings = resolve_settings(flags={**REQUIRED, "topics": ["^push-.*", "sms.v1"]})
    assert settings.topics == ("^push-.*", "sms.v1")


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1:50051",
        "127.1.2.3:0",
        "localhost:1",
        "LocalHost:1",
        "[::1]:50051",
        "unix:/tmp/lowwater.sock",
        "unix:lowwater.sock",
        "unix:///tmp/lowwater.sock",
    ],
)
def test_loopback_and_unix_listen_addresses_are_accepted(listen: str) -> None:
    assert resolve_settings(flags={**REQUIRED, "listen": listen}).listen == listen


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:50051", "[::]:50051", ":50051", "10.0.0.1:1", "sidecar.example:80"]
)
def test_remote_listen_addresses_need_allow_remote_listen(listen: str) -> None:
    error = config_error(listen=listen)
    assert error.setting == "listen"
    assert "allow_remote_listen" in str(error)
    settings = resolve_settings(flags={**REQUIRED, "listen": listen, "allow_remote_listen": "true"})
    assert settings.listen == listen


@pytest.mark.parametrize(
    "listen",
    [
        "50051",
        "127.0.0.1",
        "::1:50051",
        "[not-ipv6]:1",
        "unix:",
        "unix://tmp/x.sock",
        "127.0.0.1:70000",
        "bad host:1",
    ],
)
def test_malformed_listen_addresses_are_refused(listen: str) -> None:
    assert config_error(listen=listen, allow_remote_listen=True).setting == "listen"


# --- subscriptions ------------------------------------------------------------------------------

EXAMPLE = """
bootstrap_servers = "kafka:9092"
group = "g"
topics = ["app-push", "^promo-.*"]
max_attempts = 5
dead_letter_topic = "push.dlq"
expiry_header = "expires-at"

[[subscriptions]]
topic = "sms-verification"
ttl = "5m"
expired_topic = "sms.expired"

[[subscriptions]]
topic = "^wechat-.*"
max_attempts = "unlimited"
dead_letter_topic = "wechat.dlq"
expiry_header = "x-expiry"
"""


def test_subscriptions_resolve_to_policies(tmp_path: Path) -> None:
    settings = resolve(toml=EXAMPLE, tmp_path=tmp_path)
    assert settings.subscription_policies() == (
        SubscriptionPolicy("app-push", "at_least_once", "unordered", 5, "push.dlq", None, None, "expires-at"),
        SubscriptionPolicy("^promo-.*", "at_least_once", "unordered", 5, "push.dlq", None, None, "expires-at"),
        SubscriptionPolicy("sms-verification", "at_least_once", "unordered", 5, "push.dlq", "sms.expired", 300.0, "expires-at"),
        SubscriptionPolicy("^wechat-.*", "at_least_once", "unordered", None, "wechat.dlq", None, None, "x-expiry"),
    )
    assert settings.all_topics() == ("app-push", "^promo-.*", "sms-verification", "^wechat-.*")
    assert settings.handoff_topics() == ("push.dlq", "sms.expired", "wechat.dlq")


def test_handoff_topics_are_those_of_the_policies(tmp_path: Path) -> None:
    toml = (
        'dead_letter_topic = "unused.dlq"\nexpired_topic = "shared"\n'
        '[[subscriptions]]\ntopic = "a"\ndead_letter_topic = "a.dlq"\n'
        '[[subscriptions]]\ntopic = "b"\ndead_letter_topic = "shared"\n'
    )
    settings = resolve(
        flags={"bootstrap_servers": "k:1", "group": "g"}, toml=toml, tmp_path=tmp_path
    )
    assert settings.handoff_topics() == ("a.dlq", "shared")


def test_left_out_is_not_unlimited(tmp_path: Path) -> None:
    settings = resolve(toml=EXAMPLE, tmp_path=tmp_path)
    left_out, unlimited = settings.subscriptions
    assert left_out.max_attempts is INHERIT
    assert left_out.dead_letter_topic is INHERIT
    assert unlimited.max_attempts is None
    assert Subscription.model_validate({"topic": "a", "max_attempts": "none"}).max_attempts is None
    with pytest.raises(ValidationError):  # the sentinel has no spelling in a file
        Subscription.model_validate({"topic": "a", "max_attempts": "inherit"})


def test_a_dump_validates_back(tmp_path: Path) -> None:
    settings = resolve(toml=EXAMPLE, tmp_path=tmp_path)
    dumped = settings.model_dump(mode="json")
    assert dumped["subscriptions"][0] == {
        "topic": "sms-verification",
        "expired_topic": "sms.expired",
        "ttl": "5m",
    }
    assert Settings.model_validate(dumped) == settings


def test_subscriptions_are_frozen(tmp_path: Path) -> None:
    settings = resolve(toml=EXAMPLE, tmp_path=tmp_path)
    assert isinstance(settings.subscriptions, tuple)
    with pytest.raises(ValidationError):
        settings.subscriptions[0].ttl = None
    policy = settings.subscription_policies()[0]
    with pytest.raises(AttributeError):
        policy.ttl = 1.0  # type: ignore[misc]
    assert not hasattr(policy, "__dict__")  # slots


def test_subscriptions_may_stand_in_for_topics(tmp_path: Path) -> None:
    toml = '[[subscriptions]]\ntopic = "a"\n'
    settings = resolve(
        flags={"bootstrap_servers": "k:1", "group": "g"}, toml=toml, tmp_path=tmp_path
    )
    assert settings.topics == ()
    assert settings.all_topics() == ("a",)
    assert settings.handoff_topics() == ()


@pytest.mark.parametrize("toml", ["", "topics = []", "topics = []\nsubscriptions = []"])
def test_no_topics_and_no_subscriptions_names_topics(toml: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(flags={"bootstrap_servers": "k:1", "group": "g"}, toml=toml, tmp_path=tmp_path)
    assert info.value.setting == "topics"
    assert "[[subscriptions]]" in str(info.value)


def test_errors_in_a_subscription_name_it_by_index(tmp_path: Path) -> None:
    toml = (
        '[[subscriptions]]\ntopic = "a"\n'
        '[[subscriptions]]\ntopic = "b"\nttl = "5 minutes"\nttll = "5m"\n'
    )
    with pytest.raises(ConfigError) as info:
        resolve(flags=REQUIRED, toml=toml, tmp_path=tmp_path)
    ttl, unknown = info.value.problems
    assert ttl.setting == "subscriptions[1].ttl"
    assert "invalid duration '5 minutes'" in ttl.reason
    assert ttl.source == str(tmp_path / "lowwater.toml")
    assert unknown.setting == "subscriptions[1].ttll"
    assert unknown.reason == "unknown setting, did you mean 'ttl'?"


@pytest.mark.parametrize(
    ("topics", "subscribed", "setting", "earlier"),
    [
        (["a"], ["a"], "subscriptions[0].topic", "topics"),
        (["a"], ["b", "a"], "subscriptions[1].topic", "topics"),
        ([], ["a", "b", "a"], "subscriptions[2].topic", "subscriptions[0]"),
        (["^x.*"], ["^x.*"], "subscriptions[0].topic", "topics"),
    ],
)
def test_a_topic_appears_once(
    topics: list[str], subscribed: list[str], setting: str, earlier: str, tmp_path: Path
) -> None:
    toml = f"topics = {topics!r}\n" + "".join(
        f'[[subscriptions]]\ntopic = "{t}"\n' for t in subscribed
    )
    with pytest.raises(ConfigError) as info:
        resolve(flags={"bootstrap_servers": "k:1", "group": "g"}, toml=toml, tmp_path=tmp_path)
    assert info.value.setting == setting
    assert f"is already consumed by {earlier}" in str(info.value)


def test_max_attempts_needs_a_dead_letter_topic() -> None:
    error = config_error(max_attempts=3)
    assert error.setting == "dead_letter_topic"
    assert "max_attempts is 3" in str(error)
    assert resolve_settings(flags={**REQUIRED, "max_attempts": "unlimited"}).max_attempts is None


@pytest.mark.parametrize(
    ("globals_", "subscription", "error"),
    [
        ("", "max_attempts = 2", "subscriptions[0].dead_letter_topic"),
        ("max_attempts = 2", "", "subscriptions[0].dead_letter_topic"),  # inherited
        ("max_attempts = 2", 'dead_letter_topic = "d"', None),
        ('max_attempts = 2\ndead_letter_topic = "d"', "", None),  # both inherited
        ("max_attempts = 2", 'max_attempts = "unlimited"', None),
        ('dead_letter_topic = "d"', "max_attempts = 2", None),
    ],
)
def test_a_subscription_with_max_attempts_needs_a_dead_letter_topic(
    globals_: str, subscription: str, error: str | None, tmp_path: Path
) -> None:
    # No topics: the global max_attempts alone then needs no dead-letter topic.
    toml = f'{globals_}\n[[subscriptions]]\ntopic = "a"\n{subscription}\n'
    flags = {"bootstrap_servers": "k:1", "group": "g"}
    if error is None:
        assert resolve(flags=flags, toml=toml, tmp_path=tmp_path).subscriptions
        return
    with pytest.raises(ConfigError) as info:
        resolve(flags=flags, toml=toml, tmp_path=tmp_path)
    assert info.value.setting == error
    assert "max_attempts is 2" in str(info.value)


@pytest.mark.parametrize("topic", ["^dlq.*", "has space", "", ".", "x" * 250])
def test_dead_letter_and_expired_topics_are_topic_names(topic: str, tmp_path: Path) -> None:
    assert config_error(dead_letter_topic=topic).setting == "dead_letter_topic"
    toml = f'[[subscriptions]]\ntopic = "a"\nexpired_topic = "{topic}"\n'
    with pytest.raises(ConfigError) as info:
        resolve(flags=REQUIRED, toml=toml, tmp_path=tmp_path)
    assert info.value.setting == "subscriptions[0].expired_topic"


def test_blank_expiry_header_is_refused(tmp_path: Path) -> None:
    assert "must not be empty" in str(config_error(expiry_header="  "))
    toml = '[[subscriptions]]\ntopic = "a"\nexpiry_header = ""\n'
    with pytest.raises(
        ConfigError, match=r"'subscriptions\[0\]\.expiry_header': must not be empty"
    ):
        resolve(flags=REQUIRED, toml=toml, tmp_path=tmp_path)


def test_subscriptions_come_from_the_file_only() -> None:
    with pytest.raises(ConfigError, match="can only be set in the config file") as info:
        resolve_settings(flags={**REQUIRED, "subscriptions": [{"topic": "a"}]})
    assert info.value.setting == "subscriptions"
    environ = {"LOWWATER_SUBSCRIPTIONS": "a", "LOWWATER_TTL": "5m"}
    assert resolve_settings(flags=REQUIRED, environ=environ).subscriptions == ()
    assert unknown_environment_variables(environ) == ["LOWWATER_SUBSCRIPTIONS"]


def test_policy_settings_from_the_environment() -> None:
    environ = {
        "LOWWATER_MAX_ATTEMPTS": "4",
        "LOWWATER_DEAD_LETTER_TOPIC": "dlq",
        "LOWWATER_EXPIRED_TOPIC": "expired",
        "LOWWATER_TTL": "5m",
        "LOWWATER_EXPIRY_HEADER": "expires-at",
        "LOWWATER_CREATE_TOPICS": "yes",
    }
    settings = resolve_settings(flags=REQUIRED, environ=environ)
    assert settings.subscription_policies() == (
        SubscriptionPolicy("t", "at_least_once", "unordered", 4, "dlq", "expired", 300.0, "expires-at"),
    )
    assert settings.create_topics is True
    assert settings.handoff_topics() == ("dlq", "expired")


_names = st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True)
_handoff_names = _names.map(lambda name: f"{name}.out")
"""Topics to hand records off to: never a topic consumed here (`t`, `s0`, ...)."""
_POLICY_VALUES = {
    "guarantee": st.sampled_from(["at_least_once", "at_most_once"]),
    "ordering": st.sampled_from(["unordered", "key", "partition"]),
    "max_attempts": st.one_of(st.integers(1, 10), st.just("unlimited")),
    "dead_letter_topic": _handoff_names,
    "expired_topic": _handoff_names,
    "ttl": st.integers(1, 10**6).map(lambda ms: f"{ms}ms"),
    "expiry_header": _names,
}


def _expected(key: str, raw: object) -> object:
    """The policy value of a raw setting value (None: not set anywhere)."""
    if raw is None and key in ("guarantee", "ordering"):
        return {"guarantee": "at_least_once", "ordering": "unordered"}[key]  # the defaults
    if key == "ttl" and raw is not None:
        return parse_duration(str(raw)).total_seconds()
    return None if raw == "unlimited" else raw


@given(
    globals_=st.fixed_dictionaries({}, optional=_POLICY_VALUES),
    subscribed=st.lists(st.fixed_dictionaries({}, optional=_POLICY_VALUES), max_size=4),
)
def test_policies_inherit_what_a_subscription_leaves_out(
    globals_: dict[str, object], subscribed: list[dict[str, object]]
) -> None:
    # Always a dead-letter topic, so that any max_attempts is valid.
    globals_ = {"dead_letter_topic": "dlq", **globals_}
    subscriptions = [{"topic": f"s{i}", **own} for i, own in enumerate(subscribed)]
    settings = Settings.model_validate({**REQUIRED, **globals_, "subscriptions": subscriptions})
    topic_policy, *policies = settings.subscription_policies()
    assert topic_policy.topic == "t"
    for key in _POLICY_VALUES:
        assert getattr(topic_policy, key) == _expected(key, globals_.get(key))
    assert len(policies) == len(subscriptions)
    for policy, own in zip(policies, subscriptions, strict=True):
        assert policy.topic == own["topic"]
        for key in _POLICY_VALUES:
            assert getattr(policy, key) == _expected(key, own.get(key, globals_.get(key)))


# --- the librdkafka passthrough -----------------------------------------------------------------


def test_consumer_config() -> None:
    settings = Settings.model_validate(
        {**REQUIRED, "kafka": {"fetch.wait.max.ms": 50, "enable.partition.eof": True}}
    )
    config = settings.consumer_config()
    assert config == {
        "bootstrap.servers": "kafka:9092",
        "group.id": "g",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 50,
        "enable.partition.eof": True,
    }
    config["extra"] = 1
    assert "extra" not in settings.consumer_config()


def test_auto_offset_reset_can_be_passed_through() -> None:
    settings = Settings.model_validate({**REQUIRED, "kafka": {"auto.offset.reset": "latest"}})
    assert settings.consumer_config()["auto.offset.reset"] == "latest"


def test_lowwater_shortens_the_fetch_wait_unless_it_is_passed_through() -> None:
    assert Settings.model_validate(REQUIRED).consumer_config()["fetch.wait.max.ms"] == 100


def test_producer_config() -> None:
    kafka = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.password": "hunter2",
        "ssl.ca.location": "/ca.pem",
        "client.id": "lw",
        "debug": "broker",
        "fetch.wait.max.ms": 50,
        "session.timeout.ms": 6000,
        "auto.offset.reset": "latest",
    }
    settings = Settings.model_validate({**REQUIRED, "kafka": kafka})
    config = settings.producer_config()
    assert config == {
        "bootstrap.servers": "kafka:9092",
        "enable.idempotence": True,
        "acks": "all",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.password": "hunter2",
        "ssl.ca.location": "/ca.pem",
        "client.id": "lw",
        "debug": "broker",
    }
    config["extra"] = 1
    assert "extra" not in settings.producer_config()


@pytest.mark.parametrize(
    "key",
    [
        *(prefix + "x" for prefix in PRODUCER_PASSTHROUGH_PREFIXES),
        *PRODUCER_PASSTHROUGH_NAMES,
        "socket.keepalive.enable",
        "broker.address.family",
        "topic.metadata.refresh.interval.ms",
        "api.version.request",
        "log.connection.close",
        "SSL.Key.Location",
    ],
)
def test_connection_security_and_logging_properties_reach_the_producer(key: str) -> None:
    settings = Settings.model_validate({**REQUIRED, "kafka": {key: "v"}})
    assert settings.producer_config()[key] == "v"


@pytest.mark.parametrize(
    "key",
    [
        "allow.auto.create.topics",
        "statistics.interval.ms",
        "fetch.wait.max.ms",
        "session.timeout.ms",
        "max.poll.interval.ms",
        "auto.offset.reset",
        "partition.assignment.strategy",
        "enable.partition.eof",
        "acks",
        "enable.idempotence",
        "linger.ms",
        "debugging",
    ],
)
def test_consumer_tuning_stays_out_of_the_producer(key: str) -> None:
    settings = Settings.model_validate({**REQUIRED, "kafka": {key: "600000"}})
    config = settings.producer_config()
    assert config.get(key) == {"acks": "all", "enable.idempotence": True}.get(key)


@pytest.mark.parametrize("key", sorted(RESERVED_KAFKA_KEYS))
@pytest.mark.parametrize("source", ["flag", "toml", "env"])
def test_reserved_kafka_keys_are_refused(key: str, source: str, tmp_path: Path) -> None:
    expected_advice = {
        "bootstrap.servers": "'bootstrap_servers'",
        "group.id": "'group'",
        "enable.auto.commit": "'commit_interval'",
        "enable.auto.offset.store": "lowwater stores offsets itself",
    }[key]
    with pytest.raises(ConfigError) as info:
        if source == "flag":
            resolve(flags={**REQUIRED, "kafka": {key: "x"}})
        elif source == "toml":
            resolve(REQUIRED, f'[kafka]\n"{key}" = "x"\n', tmp_path=tmp_path)
        else:
            env = "LOWWATER_KAFKA__" + key.upper().replace(".", "_")
            resolve(REQUIRED, environ={env: "x"})
    assert info.value.setting == f"kafka.{key}"
    assert expected_advice in str(info.value)


def test_reserved_kafka_keys_are_refused_in_any_case() -> None:
    assert config_error(kafka={"Group.Id": "x"}).setting == "kafka.Group.Id"


def test_kafka_values_must_be_scalars_and_secrets_stay_out_of_messages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(toml='[kafka]\n"sasl.password" = ["hunter2"]\n', flags=REQUIRED, tmp_path=tmp_path)
    assert info.value.setting == "kafka.sasl.password"
    assert "hunter2" not in str(info.value)


def test_secrets_are_redacted_from_repr() -> None:
    settings = Settings.model_validate(
        {**REQUIRED, "kafka": {"sasl.password": "hunter2", "ssl.key.pem": "KEY", "acks": 1}}
    )
    assert "hunter2" not in repr(settings)
    assert "KEY" not in str(settings)
    assert "'acks': 1" in repr(settings)
    assert settings.consumer_config()["sasl.password"] == "hunter2"


def test_a_redis_password_stays_out_of_repr_and_of_errors() -> None:
    settings = Settings.model_validate({**REQUIRED, "redis_url": "redis://lw:hunter2@r:6379/1"})
    assert settings.redis_url == "redis://lw:hunter2@r:6379/1"
    assert "hunter2" not in repr(settings) and "redis://lw:***@r:6379/1" in repr(settings)
    error = config_error(redis_url="redis://lw:hunter2@r:6379/db")
    assert error.setting == "redis_url"
    assert "hunter2" not in str(error) and "database number" in str(error)


@pytest.mark.parametrize("listen", [":9464", "0.0.0.0:9464", "127.0.0.1:0", "[::]:9464"])
def test_metrics_listen_addresses_that_are_accepted(listen: str) -> None:
    assert Settings.model_validate({**REQUIRED, "metrics_listen": listen}).metrics_listen == listen


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379", "rediss://cache.internal/2",
                                 "redis://:pw@[::1]:7000/0", "unix:///run/redis/redis.sock"])
def test_redis_urls_that_are_accepted(url: str) -> None:
    assert Settings.model_validate({**REQUIRED, "redis_url": url}).redis_url == url


def test_toml_dotted_kafka_keys_are_flattened(tmp_path: Path) -> None:
    toml = '[kafka]\nfetch.wait.max.ms = 50\n"session.timeout.ms" = 6000\n'
    settings = resolve(flags=REQUIRED, toml=toml, tmp_path=tmp_path)
    assert dict(settings.kafka) == {"fetch.wait.max.ms": 50, "session.timeout.ms": 6000}


def test_kafka_environment_names() -> None:
    environ = {
        "LOWWATER_KAFKA__FETCH_WAIT_MAX_MS": "50",
        "LOWWATER_KAFKA__SSL_ENGINE__CALLBACK__DATA": "x",
    }
    settings = resolve_settings(flags=REQUIRED, environ=environ)
    assert dict(settings.kafka) == {"fetch.wait.max.ms": "50", "ssl.engine_callback_data": "x"}


# --- sources and precedence ---------------------------------------------------------------------

# setting -> (flag value, TOML text, environment value, what each gives, the default)
CASES: dict[str, tuple[object, str, str, tuple[object, object, object], object]] = {
    "lease": (
        "1s",
        'lease = "2s"',
        "3s",
        (timedelta(seconds=1), timedelta(seconds=2), timedelta(seconds=3)),
        timedelta(seconds=30),
    ),
    "fetch_batch_size": ("1", "fetch_batch_size = 2", "3", (1, 2, 3), 500),
    "topics": (["f"], 'topics = ["file"]', "e1,e2", (("f",), ("file",), ("e1", "e2")), None),
    "log_level": ("ERROR", 'log_level = "WARNING"', "debug", ("ERROR", "WARNING", "DEBUG"), "INFO"),
}


@pytest.mark.parametrize("setting", sorted(CASES))
@pytest.mark.parametrize(
    ("flag", "file", "env", "winner"),
    [
        (True, True, True, "flag"),
        (True, True, False, "flag"),
        (True, False, True, "flag"),
        (False, True, True, "file"),
        (False, False, True, "env"),
        (False, True, False, "file"),
        (False, False, False, "default"),
    ],
)
def test_precedence(
    setting: str, flag: bool, file: bool, env: bool, winner: str, tmp_path: Path
) -> None:
    flag_value, toml, env_value, (from_flag, from_file, from_env), default = CASES[setting]
    base = {k: v for k, v in REQUIRED.items() if k != setting}
    sources = {
        "flags": {**base, **({setting: flag_value} if flag else {})},
        "toml": toml if file else None,
        "environ": {f"LOWWATER_{setting.upper()}": env_value} if env else {},
        "tmp_path": tmp_path,
    }
    if default is None and winner == "default":  # required: nothing to fall back to
        with pytest.raises(ConfigError, match=f"'{setting}': not set"):
            resolve(**sources)  # type: ignore[arg-type]
        return
    settings = resolve(**sources)  # type: ignore[arg-type]
    expected = {"flag": from_flag, "file": from_file, "env": from_env, "default": default}[winner]
    assert getattr(settings, setting) == expected


def test_kafka_passthrough_merges_property_by_property(tmp_path: Path) -> None:
    toml = '[kafka]\n"fetch.wait.max.ms" = 20\n"session.timeout.ms" = 6000\n'
    environ = {
        "LOWWATER_KAFKA__FETCH_WAIT_MAX_MS": "30",
        "LOWWATER_KAFKA__SESSION_TIMEOUT_MS": "7000",
        "LOWWATER_KAFKA__CLIENT_ID": "from-env",
    }
    flags = {**REQUIRED, "kafka": {"fetch.wait.max.ms": "10"}}
    settings = resolve(flags=flags, toml=toml, environ=environ, tmp_path=tmp_path)
    assert dict(settings.kafka) == {
        "fetch.wait.max.ms": "10",
        "session.timeout.ms": 6000,
        "client.id": "from-env",
    }


def test_the_whole_configuration_can_come_from_the_environment() -> None:
    environ = {
        "LOWWATER_BOOTSTRAP_SERVERS": "kafka:9092",
        "LOWWATER_GROUP": "g",
        "LOWWATER_TOPICS": "a, b",
        "LOWWATER_LISTEN": "0.0.0.0:50051",
        "LOWWATER_ALLOW_REMOTE_LISTEN": "YES",
        "LOWWATER_MAX_ATTEMPTS": "unlimited",
        "LOWWATER_DRAIN_TIMEOUT": "",  # empty: unset
        "PATH": "/bin",
    }
    settings = resolve_settings(environ=environ)
    assert settings.topics == ("a", "b")
    assert settings.allow_remote_listen is True
    assert settings.drain_timeout == timedelta(seconds=30)


def test_missing_required_settings_are_all_named() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_settings(flags={"group": "g"})
    assert [p.setting for p in info.value.problems] == ["bootstrap_servers", "topics"]
    message = str(info.value)
    assert "\n" not in message
    assert "--bootstrap-servers" in message and "LOWWATER_TOPICS" in message


def test_errors_say_where_the_value_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'lease'.*\(from --lease\)"):
        resolve_settings(flags={**REQUIRED, "lease": "0"})
    with pytest.raises(ConfigError, match=r"'lease'.*\(from LOWWATER_LEASE\)"):
        resolve_settings(flags=REQUIRED, environ={"LOWWATER_LEASE": "soon"})
    with pytest.raises(ConfigError, match=r"'lease'.*lowwater\.toml\)"):
        resolve(flags=REQUIRED, toml="lease = -1", tmp_path=tmp_path)
    with pytest.raises(ConfigError, match=r"'max_lease'.*\(from default\)"):
        resolve_settings(flags={**REQUIRED, "lease": "1h"})


def test_unknown_toml_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(
            flags=REQUIRED, toml='leese = "5s"\ntopic = "t"\n[kafak]\nx = 1\n', tmp_path=tmp_path
        )
    assert [p.setting for p in info.value.problems] == ["leese", "topic", "kafak"]
    assert "did you mean 'lease'?" in str(info.value)
    assert "did you mean 'topics'?" in str(info.value)


def test_kafka_in_toml_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(flags=REQUIRED, toml='kafka = "fetch.wait.max.ms=5"', tmp_path=tmp_path)
    assert info.value.setting == "kafka"


def test_unreadable_or_invalid_toml_names_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        resolve_settings(flags=REQUIRED, config_file=tmp_path / "missing.toml")
    assert info.value.setting == "config"
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        resolve(flags=REQUIRED, toml="lease = ", tmp_path=tmp_path)
    assert info.value.setting == "config"


def test_unknown_environment_variables() -> None:
    environ = {
        "LOWWATER_LEASE": "1s",
        "LOWWATER_LEESE": "1s",
        "LOWWATER_KAFKA": "x",
        "LOWWATER_KAFKA__CLIENT_ID": "x",
        "LOWWATER_CONFIG": "x.toml",
        "HOME": "/root",
    }
    assert unknown_environment_variables(environ) == ["LOWWATER_KAFKA", "LOWWATER_LEESE"]


def test_config_error_needs_a_problem() -> None:
    with pytest.raises(ValueError):
        ConfigError()


# --- the reference documentation ----------------------------------------------------------------

BEGIN, END = "<!-- settings-table:begin -->\n", "<!-- settings-table:end -->\n"


def test_docs_settings_table_is_current() -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN)
    table, tail = rest.split(END)
    if os.environ.get("LOWWATER_UPDATE_DOCS") and table != settings_reference():
        DOC.write_text(head + BEGIN + settings_reference() + END + tail)
        table = settings_reference()
    assert table == settings_reference(), (
        "docs/configuration.md is out of date; rerun with LOWWATER_UPDATE_DOCS=1"
    )


def test_docs_example_toml_is_valid(tmp_path: Path) -> None:
    examples = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert examples
    for example in examples:
        settings = resolve(toml=example, tmp_path=tmp_path)
        assert settings.all_topics()


def test_retry_tiers_name_retry_topics_that_are_consumed_and_checked() -> None:
    settings = resolve_settings(flags={**REQUIRED, "retry": "1s, 10s,1m", "dead_letter_topic": "d"})
    [policy] = settings.subscription_policies()
    assert policy.retry == (1.0, 10.0, 60.0)
    retries = ("t.retry.1s", "t.retry.10s", "t.retry.1m")
    assert settings.retry_topics() == retries
    assert settings.all_topics() == ("t", *retries)
    assert settings.handoff_topics() == tuple(sorted(("d", *retries)))
    named = resolve_settings(flags={**REQUIRED, "retry": "5s", "retry_topic_format": "r-{delay}-{topic}"})
    assert named.retry_topics() == ("r-5s-t",)


def test_a_zero_retry_tier_is_named_by_its_index() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_settings(flags={**REQUIRED, "retry": "1s,0s"})
    assert info.value.problems[0].setting == "retry[1]"


def test_ordered_or_pattern_subscriptions_get_no_retry_topics() -> None:
    for flags in ({"ordering": "key"}, {"topics": ["^t.*"]}):
        with pytest.raises(ConfigError) as info:
            resolve_settings(flags={**REQUIRED, **flags, "retry": "1s"})
        assert info.value.problems[0].setting == "retry"


LOOPS: list[tuple[str, str, str]] = [
    ('topics = ["a"]\ndead_letter_topic = "a"',
     "dead_letter_topic",
     "'a', the dead_letter_topic of topics ('a'), is consumed by topics ('a')"),
    ('[[subscriptions]]\ntopic = "a"\nexpired_topic = "a"',
     "subscriptions[0].expired_topic",
     "'a', the expired_topic of subscriptions[0] ('a'), is consumed by subscriptions[0]"),
    ('[[subscriptions]]\ntopic = "^orders.*"\nmax_attempts = 3\ndead_letter_topic = "orders.dlq"',
     "subscriptions[0].dead_letter_topic",
     "matches the pattern of subscriptions[0] ('^orders.*')"),
    # Subscription a inherits the global dead-letter topic, which subscription b consumes.
    ('dead_letter_topic = "b"\n[[subscriptions]]\ntopic = "a"\nmax_attempts = 3\n'
     + '[[subscriptions]]\ntopic = "b"\ndead_letter_topic = "b.dlq"',
     "dead_letter_topic",
     "the dead_letter_topic of subscriptions[0] ('a'), is consumed by subscriptions[1] ('b')"),
    ('[[subscriptions]]\ntopic = "a"\nretry = ["1s"]\n[[subscriptions]]\ntopic = "a.retry.1s"',
     "subscriptions[0].retry",
     "'a.retry.1s', a retry topic of subscriptions[0] ('a'), is consumed by subscriptions[1]"),
    ('retry = ["1s"]\ntopics = ["a"]\n'
     + '[[subscriptions]]\ntopic = "b"\nretry = []\ndead_letter_topic = "a.retry.1s"',
     "subscriptions[0].dead_letter_topic",
     "is a retry topic of topics ('a')"),
]
"""(config file, setting named, what it clashes with): hand-off topics the sidecar consumes."""


@pytest.mark.parametrize(("toml", "setting", "clash"), LOOPS)
def test_a_topic_records_are_handed_off_to_is_not_consumed_as_a_main_topic(
    toml: str, setting: str, clash: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(flags={"bootstrap_servers": "k:1", "group": "g"}, toml=toml, tmp_path=tmp_path)
    [problem] = info.value.problems
    assert problem.setting == setting
    assert clash in problem.reason
    assert "the sidecar would take the records it hands off there back" in problem.reason


def test_a_pattern_may_match_retry_topics_and_hand_off_topics_may_be_shared(
    tmp_path: Path
) -> None:
    """Retry topics are consumed, but as retries: the router finds them by name first."""
    toml = (
        'dead_letter_topic = "dlq"\n'
        '[[subscriptions]]\ntopic = "orders"\nretry = ["1s"]\nmax_attempts = 3\n'
        '[[subscriptions]]\ntopic = "^orders.*"\nmax_attempts = 1\n'
        '[[subscriptions]]\ntopic = "^payments-.*"\nexpired_topic = "dlq"\n'
    )
    settings = resolve(flags={"bootstrap_servers": "k:1", "group": "g"}, toml=toml,
                       tmp_path=tmp_path)
    assert settings.all_topics() == ("orders", "^orders.*", "^payments-.*", "orders.retry.1s")
    assert settings.handoff_topics() == ("dlq", "orders.retry.1s")


def test_a_pattern_must_compile(tmp_path: Path) -> None:
    assert config_error(topics=["^sms-(.*"]).setting == "topics"
    toml = '[[subscriptions]]\ntopic = "^push-[a-z"\n'
    with pytest.raises(ConfigError, match=r"'subscriptions\[0\]\.topic': invalid pattern"):
        resolve(flags=REQUIRED, toml=toml, tmp_path=tmp_path)


def test_guarantee_is_case_and_dash_insensitive() -> None:
    settings = resolve_settings(flags={**REQUIRED, "guarantee": " At-Most-Once "})
    assert [p.guarantee for p in settings.subscription_policies()] == ["at_most_once"]


def test_docs_mention_every_setting() -> None:
    text = DOC.read_text()
    for name in Settings.model_fields:
        assert f"`{name}`" in text or name == "kafka"


def test_docs_mention_every_subscription_key() -> None:
    section = DOC.read_text().split("## Subscriptions")[1].split("\n## ")[0]
    for name in Subscription.model_fields:
        assert f"`{name}`" in section


def test_the_subscriptions_setting_lists_every_subscription_key() -> None:
    """Its docstring is the settings table's row, which must not fall behind the model."""
    doc = Settings.model_fields["subscriptions"].description or ""
    for name in Subscription.model_fields:
        assert f"`{name}`" in doc


def test_docs_subscriptions_example_gives_the_policies_in_its_table(tmp_path: Path) -> None:
    section = DOC.read_text().split("## Subscriptions")[1].split("\n## ")[0]
    [example] = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)
    settings = resolve(toml=example, tmp_path=tmp_path)
    rows = re.findall(r"^\| `([^`]+)` \| (.*) \|$", section, re.MULTILINE)

    def cell(value: object) -> str:
        if isinstance(value, float):
            return format_duration(timedelta(seconds=value))
        if isinstance(value, str):
            return f"`{value}`"
        return str(value)

    assert [
        (
            p.topic,
            " | ".join(
                cell(v) if v is not None else ("unlimited" if k == "max_attempts" else "none")
                for k, v in [
                    ("guarantee", p.guarantee),
                    ("ordering", p.ordering),
                    ("max_attempts", p.max_attempts),
                    ("dead_letter_topic", p.dead_letter_topic),
                    ("expired_topic", p.expired_topic),
                    ("ttl", p.ttl),
                    ("expiry_header", p.expiry_header),
                ]
            ),
        )
        for p in settings.subscription_policies()
    ] == rows


# --- channel security ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "setting", "says"),
    [
        ({"token_file": "F", "token_env": "T"}, "token_env", "token_file is set too"),
        ({"admin_token_file": "F", "admin_token_env": "T"}, "admin_token_env",
         "admin_token_file is set too"),
        ({"tls_cert_file": "F"}, "tls_key_file", "tls_cert_file is"),
        ({"tls_key_file": "F"}, "tls_cert_file", "tls_key_file is"),
        ({"tls_client_ca_file": "F"}, "tls_cert_file", "mutual TLS needs TLS"),
    ],
)
def test_security_settings_that_go_together(
    given: dict[str, str], setting: str, says: str, tmp_path: Path
) -> None:
    (tmp_path / "F").write_text("x")
    flags = {k: str(tmp_path / v) if k.endswith("_file") else v for k, v in given.items()}
    error = config_error(**flags)
    assert error.setting == setting
    assert says in str(error)


def test_admin_is_authenticated_by_a_token_or_client_certificates(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    assert not resolve_settings(flags=REQUIRED).admin_authenticated
    assert not resolve_settings(flags={**REQUIRED, "token_env": "T"}).admin_authenticated
    assert not resolve_settings(flags={**REQUIRED, "admin_insecure": "true"}).admin_authenticated
    for flags in ({"admin_token_env": "T"}, {"admin_token_file": str(file)},
                  {"tls_cert_file": str(file), "tls_key_file": str(file),
                   "tls_client_ca_file": str(file)}):
        assert resolve_settings(flags={**REQUIRED, **flags}).admin_authenticated
