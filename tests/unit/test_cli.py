"""The ``lowwater`` command line: flags, precedence, exit codes, logging; in-process and as a user."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from datetime import timedelta
from importlib import metadata
from pathlib import Path

import pytest
import trustme

from coordinator import cli
from coordinator.config import (
    FILE_ONLY_SETTINGS,
    LOG_CONCERNS,
    ConfigError,
    Settings,
    SubscriptionPolicy,
    flag_for,
    log_levels,
    resolve_settings,
)
from tests.conftest import unavailable
from tests.support.certs import write_server_files

REQUIRED_ARGS = ["--bootstrap-servers", "kafka:9092", "--group", "g", "--topic", "t"]
LOWWATER_BIN = Path(sys.executable).parent / "lowwater"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main()`` reads ``os.environ``: keep this machine's ``LOWWATER_*`` out of it."""
    for name in list(os.environ):
        if name.startswith("LOWWATER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("coordinator")
    handlers, root_level, our_level = list(root.handlers), root.level, ours.level
    concerns = [logging.getLogger(f"coordinator.{c}") for c in LOG_CONCERNS]
    concern_levels = [c.level for c in concerns]
    yield
    root.handlers[:] = handlers
    root.setLevel(root_level)
    ours.setLevel(our_level)
    for concern, level in zip(concerns, concern_levels, strict=True):
        concern.setLevel(level)


@pytest.fixture
def fake_sidecar(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Stand in for ``coordinator.runtime.sidecar`` (written elsewhere); records what it got."""
    served: list[Settings] = []
    module = types.ModuleType("coordinator.runtime.sidecar")

    def serve(settings: Settings) -> int:
        served.append(settings)
        return 0

    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "coordinator.runtime.sidecar", module)
    return served


# --- load_settings ------------------------------------------------------------------------------


def test_flags() -> None:
    settings = cli.load_settings(
        [
            *REQUIRED_ARGS,
            "--topic",
            "u,v",
            "--listen",
            "unix:///tmp/lw.sock",
            "--lease",
            "45s",
            "--max-attempts",
            "3",
            "--dead-letter-topic",
            "t.dlq",
            "--expired-topic",
            "t.expired",
            "--ttl",
            "5m",
            "--expiry-header",
            "expires-at",
            "--create-topics",
            "--fetch-batch-size",
            "100",
            "--kafka",
            "fetch.wait.max.ms=50",
            "--kafka",
            "client.id=a=b",
            "--log-level",
            "debug",
        ],
        environ={},
    )
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.group == "g"
    assert settings.topics == ("t", "u", "v")
    assert settings.listen == "unix:///tmp/lw.sock"
    assert settings.lease == timedelta(seconds=45)
    assert settings.max_attempts == 3
    assert settings.create_topics is True
    assert settings.subscription_policies() == tuple(
        SubscriptionPolicy(topic, "at_least_once", "unordered", 3, "t.dlq", "t.expired", 300.0, "expires-at")
        for topic in ("t", "u", "v")
    )
    assert settings.fetch_batch_size == 100
    assert dict(settings.kafka) == {"fetch.wait.max.ms": "50", "client.id": "a=b"}
    assert settings.log_level == "DEBUG"


def test_every_setting_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    cli.add_settings_arguments(parser)
    help_text = parser.format_help()
    for name in Settings.model_fields:
        if name in FILE_ONLY_SETTINGS:
            assert flag_for(name) not in help_text
        else:
            assert flag_for(name) in help_text


def test_precedence_flag_file_environment_default(tmp_path: Path) -> None:
    config = tmp_path / "lowwater.toml"
    config.write_text('lease = "2s"\nmax_lease = "2m"\ndrain_timeout = "2s"\n')
    environ = {
        "LOWWATER_LEASE": "3s",
        "LOWWATER_MAX_LEASE": "3m",
        "LOWWATER_DRAIN_TIMEOUT": "3s",
        "LOWWATER_COMMIT_INTERVAL": "3s",
    }
    argv = [*REQUIRED_ARGS, "--config", str(config), "--lease", "1s", "--commit-interval", "1s"]
    settings = cli.load_settings(argv, environ)
    assert settings.lease == timedelta(seconds=1)  # flag > file > env
    assert settings.commit_interval == timedelta(seconds=1)  # flag > env
    assert settings.max_lease == timedelta(minutes=2)  # file > env
    assert settings.drain_timeout == timedelta(seconds=2)  # file > env
    assert cli.load_settings(REQUIRED_ARGS, environ).lease == timedelta(seconds=3)  # env > default
    assert cli.load_settings(REQUIRED_ARGS, {}).lease == timedelta(seconds=30)  # the default


def test_no_flag_beats_a_true_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "lowwater.toml"
    config.write_text('allow_remote_listen = true\nlisten = "0.0.0.0:50051"\n')
    argv = [*REQUIRED_ARGS, "--config", str(config)]
    assert cli.load_settings(argv, {}).allow_remote_listen is True
    with pytest.raises(ConfigError) as info:
        cli.load_settings([*argv, "--no-allow-remote-listen"], {})
    assert info.value.setting == "listen"


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "lowwater.toml"
    config.write_text('group = "from-file"\n')
    other = tmp_path / "other.toml"
    other.write_text('group = "from-other"\n')
    args = ["--bootstrap-servers", "k:1", "--topic", "t"]
    assert cli.load_settings(args, {"LOWWATER_CONFIG": str(config)}).group == "from-file"
    with_flag = cli.load_settings([*args, "--config", str(other)], {"LOWWATER_CONFIG": str(config)})
    assert with_flag.group == "from-other"


@pytest.mark.parametrize("pair", ["fetch.wait.max.ms", "=5", " =5"])
def test_kafka_flag_needs_key_equals_value(pair: str) -> None:
    with pytest.raises(ConfigError) as info:
        cli.load_settings([*REQUIRED_ARGS, "--kafka", pair], {})
    assert info.value.setting == "kafka"
    assert "KEY=VALUE" in str(info.value)


def test_kafka_flag_keeps_secrets_out_of_messages() -> None:
    with pytest.raises(ConfigError) as info:
        cli.load_settings([*REQUIRED_ARGS, "--kafka", "sasl.password:hunter2"], {})
    assert "hunter2" not in str(info.value)


def test_unparseable_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.load_settings([*REQUIRED_ARGS, "--lease"], {})
    assert info.value.code == 2
    assert "--lease" in capsys.readouterr().err


# --- main ---------------------------------------------------------------------------------------


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.usefixtures("fake_sidecar", "restore_logging")
@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["--group", "g"], "bootstrap_servers"),
        ([*REQUIRED_ARGS, "--lease", "0s"], "lease"),
        ([*REQUIRED_ARGS, "--lease", "soon"], "lease"),
        ([*REQUIRED_ARGS, "--lease", "20m"], "max_lease"),
        ([*REQUIRED_ARGS, "--listen", "0.0.0.0:50051"], "listen"),
        ([*REQUIRED_ARGS, "--topic", "t"], "topics"),
        ([*REQUIRED_ARGS, "--fetch-batch-size", "0"], "fetch_batch_size"),
        ([*REQUIRED_ARGS, "--log-level", "loud"], "log_level"),
        ([*REQUIRED_ARGS, "--kafka", "group.id=other"], "kafka.group.id"),
        ([*REQUIRED_ARGS, "--kafka", "enable.auto.commit=true"], "kafka.enable.auto.commit"),
        ([*REQUIRED_ARGS, "--config", "/nonexistent/lowwater.toml"], "config"),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(
    args: list[str], setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", *args]) == 2
    assert one_line_error(capsys).startswith(f"lowwater: invalid setting '{setting}': ")


INVALID_SETTINGS: list[tuple[str, list[str], dict[str, str]]] = [
    ("bootstrap_servers", [*REQUIRED_ARGS, "--bootstrap-servers", " "], {}),
    ("group", [*REQUIRED_ARGS, "--group", " "], {}),
    ("topics", [*REQUIRED_ARGS, "--topic", "has space"], {}),
    ("topics", [*REQUIRED_ARGS, "--topic", "^t("], {}),
    ("listen", [*REQUIRED_ARGS, "--listen", "50051"], {}),
    ("allow_remote_listen", REQUIRED_ARGS, {"LOWWATER_ALLOW_REMOTE_LISTEN": "maybe"}),
    ("lease", [*REQUIRED_ARGS, "--lease=-5s"], {}),
    ("max_lease", [*REQUIRED_ARGS, "--max-lease", "1s"], {}),
    ("default_retry_delay", [*REQUIRED_ARGS, "--default-retry-delay=-1s"], {}),
    ("max_retry_delay", [*REQUIRED_ARGS, "--max-retry-delay", "junk"], {}),
    ("max_attempts", [*REQUIRED_ARGS, "--max-attempts", "0"], {}),
    ("guarantee", [*REQUIRED_ARGS, "--guarantee", "exactly_once"], {}),
    ("ordering", [*REQUIRED_ARGS, "--ordering", "sorted"], {}),
    ("offset_map", [*REQUIRED_ARGS], {"LOWWATER_OFFSET_MAP": "perhaps"}),
    ("offset_map_max_bytes", [*REQUIRED_ARGS, "--offset-map-max-bytes", "10"], {}),
    ("redis_url", REQUIRED_ARGS, {"LOWWATER_REDIS_URL": "http://127.0.0.1:6379"}),
    ("metrics_listen", [*REQUIRED_ARGS, "--metrics-listen", "9464"], {}),
    ("log_format", [*REQUIRED_ARGS, "--log-format", "xml"], {}),
    ("socket_mode", [*REQUIRED_ARGS, "--socket-mode", "0666"], {}),
    ("socket_group", [*REQUIRED_ARGS, "--socket-group", " "], {}),
    ("socket_group", [*REQUIRED_ARGS, "--socket-group", "no-such-group"], {}),
    ("socket_group", [*REQUIRED_ARGS, "--socket-group", "4294967295"], {}),  # (gid_t) -1
    ("admin_operator_actions", REQUIRED_ARGS, {"LOWWATER_ADMIN_OPERATOR_ACTIONS": "sometimes"}),
    ("token_file", [*REQUIRED_ARGS, "--token-file", "/nonexistent/token"], {}),
    ("token_env", [*REQUIRED_ARGS, "--token-env", "NOT A NAME"], {}),
    ("token_env", [*REQUIRED_ARGS, "--token-file", __file__, "--token-env", "T"], {}),
    ("admin_token_file", [*REQUIRED_ARGS, "--admin-token-file", "/"], {}),  # a directory
    ("admin_token_env", REQUIRED_ARGS, {"LOWWATER_ADMIN_TOKEN_ENV": "1ST"}),
    ("admin_insecure", REQUIRED_ARGS, {"LOWWATER_ADMIN_INSECURE": "sometimes"}),
    ("tls_cert_file", [*REQUIRED_ARGS, "--tls-cert-file", "/nonexistent/tls.crt"], {}),
    ("tls_cert_file", [*REQUIRED_ARGS, "--tls-key-file", __file__], {}),
    ("tls_key_file", [*REQUIRED_ARGS, "--tls-cert-file", __file__], {}),
    ("tls_client_ca_file", [*REQUIRED_ARGS, "--tls-client-ca-file", "/nonexistent/ca.crt"], {}),
    ("health_listen", [*REQUIRED_ARGS, "--health-listen", "unix:/run/health.sock"], {}),
    ("redis_prefix", [*REQUIRED_ARGS, "--redis-prefix", " "], {}),
    ("redis_interval", [*REQUIRED_ARGS, "--redis-interval", "0s"], {}),
    ("redis_key_ttl", [*REQUIRED_ARGS, "--redis-key-ttl", "soon"], {}),
    ("retry", [*REQUIRED_ARGS, "--retry", "10s,1s"], {}),
    ("retry", [*REQUIRED_ARGS, "--topic", "t.retry.1s", "--retry", "1s"], {}),  # consumed
    ("retry_topic_format", [*REQUIRED_ARGS, "--retry-topic-format", "{topic}-retry"], {}),
    ("dead_letter_topic", [*REQUIRED_ARGS, "--dead-letter-topic", "^dlq"], {}),
    ("dead_letter_topic", [*REQUIRED_ARGS, "--max-attempts", "3"], {}),  # none to dead-letter to
    ("dead_letter_topic", [*REQUIRED_ARGS, "--dead-letter-topic", "t"], {}),  # consumed
    ("expired_topic", [*REQUIRED_ARGS, "--expired-topic", ".."], {}),
    ("expired_topic", [*REQUIRED_ARGS, "--topic", "^t", "--expired-topic", "t.expired"], {}),
    ("ttl", [*REQUIRED_ARGS, "--ttl", "0s"], {}),
    ("expiry_header", [*REQUIRED_ARGS, "--expiry-header", " "], {}),
    ("create_topics", REQUIRED_ARGS, {"LOWWATER_CREATE_TOPICS": "sometimes"}),
    ("commit_interval", [*REQUIRED_ARGS, "--commit-interval", "0"], {}),
    ("max_pending_per_partition", [*REQUIRED_ARGS, "--max-pending-per-partition", "0"], {}),
    ("fetch_batch_size", [*REQUIRED_ARGS, "--fetch-batch-size", "100001"], {}),
    ("max_streams", [*REQUIRED_ARGS, "--max-streams", "0"], {}),
    ("max_leases_per_stream", REQUIRED_ARGS, {"LOWWATER_MAX_LEASES_PER_STREAM": "lots"}),
    ("max_settlement_batch", [*REQUIRED_ARGS, "--max-settlement-batch", "1000001"], {}),
    ("max_receive_message_bytes", [*REQUIRED_ARGS, "--max-receive-message-bytes", "1024"], {}),
    ("max_send_message_bytes", [*REQUIRED_ARGS, "--max-send-message-bytes", "4GiB"], {}),
    ("stream_write_timeout", [*REQUIRED_ARGS, "--stream-write-timeout", "0s"], {}),
    ("max_pull_wait", [*REQUIRED_ARGS, "--max-pull-wait", "forever"], {}),
    ("max_concurrent_unary", REQUIRED_ARGS, {"LOWWATER_MAX_CONCURRENT_UNARY": "-1"}),
    ("max_streams_per_connection", [*REQUIRED_ARGS, "--max-streams-per-connection", "0"], {}),
    ("keepalive_min_ping_interval", [*REQUIRED_ARGS, "--keepalive-min-ping-interval", "30d"],
     {}),
    ("max_connection_idle", [*REQUIRED_ARGS, "--max-connection-idle", "0ms"], {}),
    ("rebalance_timeout", [*REQUIRED_ARGS, "--rebalance-timeout", "0s"], {}),
    ("drain_timeout", [*REQUIRED_ARGS, "--drain-timeout", "never"], {}),
    ("log_level", REQUIRED_ARGS, {"LOWWATER_LOG_LEVEL": "chatty"}),
    ("log_levels", [*REQUIRED_ARGS, "--log-levels", "acks"], {}),
    ("kafka", [*REQUIRED_ARGS, "--kafka", "=5"], {}),
]
"""(setting, argv, environment) giving the setting an invalid value; every setting but the
file-only ones (see INVALID_SUBSCRIPTIONS) has one."""


def test_every_setting_has_an_invalid_case() -> None:
    settings = {setting for setting, _, _ in INVALID_SETTINGS}
    settings |= {setting.partition("[")[0] for setting, _ in INVALID_SUBSCRIPTIONS}
    assert settings == set(Settings.model_fields)


@pytest.mark.usefixtures("fake_sidecar", "restore_logging")
@pytest.mark.parametrize(
    ("setting", "args", "environ"),
    INVALID_SETTINGS,
    ids=[setting for setting, _, _ in INVALID_SETTINGS],
)
def test_every_invalid_setting_exits_2_naming_it(
    setting: str,
    args: list[str],
    environ: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve", *args]) == 2
    assert one_line_error(capsys).startswith(f"lowwater: invalid setting '{setting}': ")


INVALID_SUBSCRIPTIONS: list[tuple[str, str]] = [
    ("subscriptions", "subscriptions = 5"),
    ("subscriptions[0].topic", '[[subscriptions]]\ntopic = "a b"'),
    ("subscriptions[0].topic", '[[subscriptions]]\nttl = "5m"'),
    ("subscriptions[0].topic", '[[subscriptions]]\ntopic = "t"'),  # --topic t already
    ("subscriptions[0].max_attempts", '[[subscriptions]]\ntopic = "a"\nmax_attempts = -1'),
    ("subscriptions[0].dead_letter_topic", '[[subscriptions]]\ntopic = "a"\nmax_attempts = 2'),
    ("subscriptions[0].expired_topic", '[[subscriptions]]\ntopic = "a"\nexpired_topic = "^e"'),
    ("subscriptions[0].ttl", '[[subscriptions]]\ntopic = "a"\nttl = "soon"'),
    ("subscriptions[0].guarantee", '[[subscriptions]]\ntopic = "a"\nguarantee = "exactly_once"'),
    ("subscriptions[0].expiry_header", '[[subscriptions]]\ntopic = "a"\nexpiry_header = ""'),
    ("subscriptions[0].ordering", '[[subscriptions]]\ntopic = "a"\nordering = "sorted"'),
    ("subscriptions[0].retry", '[[subscriptions]]\ntopic = "a"\nretry = ["1s", "soon"]'),
    ("subscriptions[0].retry", '[[subscriptions]]\ntopic = "a"\nordering = "key"\nretry = ["1s"]'),
    ("subscriptions[0].retry", '[[subscriptions]]\ntopic = "^a.*"\nretry = ["1s"]'),
    ("subscriptions[0].topic", '[[subscriptions]]\ntopic = "^a["'),
    ("subscriptions[0].dead_letter_topic",
     '[[subscriptions]]\ntopic = "^a.*"\ndead_letter_topic = "a.dlq"'),
    ("subscriptions[0].retry",
     '[[subscriptions]]\ntopic = "a"\nretry = ["1s"]\n[[subscriptions]]\ntopic = "a.retry.1s"'),
    ("subscriptions[0].unknown", '[[subscriptions]]\ntopic = "a"\nunknown = "key"'),
]
"""(setting named, config file) for the file-only settings."""


@pytest.mark.usefixtures("fake_sidecar", "restore_logging")
@pytest.mark.parametrize(("setting", "toml"), INVALID_SUBSCRIPTIONS)
def test_a_bad_subscription_exits_2_naming_it(
    setting: str, toml: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lowwater.toml"
    config.write_text(toml + "\n")
    assert cli.main(["serve", *REQUIRED_ARGS, "--config", str(config)]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"lowwater: invalid setting '{setting}': ")
    assert err.endswith(f"(from {config})\n")


@pytest.mark.usefixtures("restore_logging")
def test_subscriptions_alone_name_the_topics(tmp_path: Path, fake_sidecar: list[Settings]) -> None:
    config = tmp_path / "lowwater.toml"
    config.write_text('[[subscriptions]]\ntopic = "sms"\nttl = "5m"\n')
    args = ["--bootstrap-servers", "kafka:9092", "--group", "g", "--config", str(config)]
    assert cli.main(["serve", *args]) == 0
    [settings] = fake_sidecar
    assert settings.all_topics() == ("sms",)
    assert settings.subscription_policies()[0].ttl == 300.0


def test_reserved_kafka_key_message_says_what_to_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", *REQUIRED_ARGS, "--kafka", "bootstrap.servers=x:1"]) == 2
    assert "use the 'bootstrap_servers' setting (--bootstrap-servers)" in capsys.readouterr().err


def test_unknown_toml_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lowwater.toml"
    config.write_text('max_leese = "1m"\n')
    assert cli.main(["serve", *REQUIRED_ARGS, "--config", str(config)]) == 2
    err = one_line_error(capsys)
    assert err.startswith("lowwater: invalid setting 'max_leese': unknown setting")
    assert "did you mean 'max_lease'?" in err


def test_bad_environment_variable_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOWWATER_MAX_ATTEMPTS", "0")
    assert cli.main(["serve", *REQUIRED_ARGS]) == 2
    err = one_line_error(capsys)
    assert err.startswith("lowwater: invalid setting 'max_attempts': ")
    assert err.endswith("(from LOWWATER_MAX_ATTEMPTS)\n")


@pytest.mark.parametrize("argv", [[], ["serve", "--bogus"], ["bogus"], ["serve", "--lease"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "error:" in one_line_error(capsys)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"lowwater {metadata.version('lowwater-sidecar')}\n"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
    assert cli.main(["serve", "--help"]) == 0
    assert "--bootstrap-servers" in capsys.readouterr().out


def test_subcommands_are_registered() -> None:
    names = [command.name for command in cli.SUBCOMMANDS]
    assert "serve" in names
    assert len(set(names)) == len(names)


@pytest.mark.usefixtures("restore_logging")
def test_serve_runs_the_sidecar_with_the_settings(
    fake_sidecar: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOWWATER_DRAIN_TIMEOUT", "5s")
    assert cli.main(["serve", *REQUIRED_ARGS, "--log-level", "DEBUG"]) == 0
    [settings] = fake_sidecar
    assert settings.topics == ("t",)
    assert settings.drain_timeout == timedelta(seconds=5)
    assert logging.getLogger("coordinator.acks").isEnabledFor(logging.DEBUG)


@pytest.mark.usefixtures("restore_logging")
def test_serve_returns_the_sidecar_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("coordinator.runtime.sidecar")
    module.serve = lambda settings: 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "coordinator.runtime.sidecar", module)
    assert cli.main(["serve", *REQUIRED_ARGS]) == 3


@pytest.mark.usefixtures("restore_logging", "fake_sidecar")
def test_serve_warns_about_unknown_environment_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOWWATER_LEESE", "5s")
    assert cli.main(["serve", *REQUIRED_ARGS]) == 0
    assert "WARNING coordinator.config: ignoring environment variable LOWWATER_LEESE" in (
        capsys.readouterr().err
    )


# --- logging ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_logging_is_one_line_per_record_with_the_logger_name() -> None:
    stream = io.StringIO()
    cli.configure_logging("INFO", stream)
    cli.configure_logging("INFO", stream)  # replaces, does not add a second handler
    logging.getLogger("coordinator.commits").info("committed %d", 7)
    logging.getLogger("coordinator.flow").debug("hidden at INFO")
    logging.getLogger("some.library").info("hidden below WARNING")
    logging.getLogger("some.library").warning("shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" INFO    coordinator.commits: committed 7")
    assert lines[1].endswith(" WARNING some.library: shown")


@pytest.mark.usefixtures("restore_logging")
def test_log_level_error_quiets_everything_below() -> None:
    stream = io.StringIO()
    cli.configure_logging("ERROR", stream)
    logging.getLogger("coordinator.rebalance").warning("hidden")
    logging.getLogger("other").warning("hidden too")
    assert stream.getvalue() == ""


@pytest.mark.usefixtures("restore_logging")
def test_one_concern_is_turned_up_or_down_apart_from_the_rest() -> None:
    stream = io.StringIO()
    flags = {"bootstrap_servers": "kafka:9092", "group": "g", "topics": ["t"],
             "log_levels": " Acks=debug, coordinator.flow=error"}
    settings = resolve_settings(flags=flags)
    assert settings.log_levels == "acks=DEBUG,flow=ERROR"
    cli.configure_logging("INFO", stream, concerns=log_levels(settings.log_levels))
    logging.getLogger("coordinator.acks").debug("settled 3")
    logging.getLogger("coordinator.commits").debug("hidden: commits follow log_level")
    logging.getLogger("coordinator.flow").warning("hidden: flow is at ERROR")
    logging.getLogger("coordinator.flow").error("flow shown")
    assert [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()] == [
        "DEBUG   coordinator.acks: settled 3", "ERROR   coordinator.flow: flow shown"]
    cli.configure_logging("INFO", stream)  # again, without concerns: they follow log_level
    assert not logging.getLogger("coordinator.acks").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("coordinator.flow").isEnabledFor(logging.INFO)


def test_every_concern_logger_in_the_code_can_be_set() -> None:
    """log_levels lists the concerns: a new `coordinator.*` logger must be added to it."""
    names = set()
    for path in (Path(cli.__file__).parent).rglob("*.py"):
        names |= set(re.findall(r'getLogger\("coordinator\.([a-z._]+)"\)', path.read_text()))
    assert names and names == set(LOG_CONCERNS)


# --- as a user runs it --------------------------------------------------------------------------


def test_console_script_exits_2_naming_the_missing_setting(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOWWATER_")}
    result = subprocess.run(
        [str(LOWWATER_BIN), "serve", "--group", "g"],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("lowwater: invalid setting 'bootstrap_servers': not set")
    assert "'topics'" in result.stderr
    assert result.stderr.count("\n") == 1


def _without_file_permissions() -> list[str]:
    """A command prefix under which a mode 000 file cannot be read: none for a normal user;
    for root, setpriv dropping the capabilities that let root read any file."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        unavailable("root reads any file, and setpriv (util-linux) is not here to stop that")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}"]


def _files_read_at_start_up(directory: Path, case: str) -> list[str]:
    """Flags naming files that are valid settings (they exist) with bad contents."""
    ca = trustme.CA()
    write_server_files(ca, directory)
    tls = ["--tls-cert-file", str(directory / "tls.crt"), "--tls-key-file",
           str(directory / "tls.key")]
    token = directory / "token"
    if case == "cert not PEM":
        (directory / "tls.crt").write_text("not a certificate\n")
        return tls
    if case == "key of another certificate":
        (directory / "tls.key").write_bytes(ca.issue_cert("other").private_key_pem.bytes())
        return tls
    if case == "client CA not PEM":
        return [*tls, "--tls-client-ca-file", str(directory / "tls.key")]
    if case == "empty token":
        token.write_text(" \n")
        return ["--token-file", str(token)]
    token.write_text("secret\n")
    token.chmod(0)
    return ["--token-file", str(token)]


FILES_READ_AT_START_UP = [
    ("cert not PEM", "'tls_cert_file': {dir}/tls.crt holds no PEM certificate"),
    ("key of another certificate",
     "'tls_key_file': {dir}/tls.key is not the private key of the certificate in {dir}/tls.crt"),
    ("client CA not PEM", "'tls_client_ca_file': {dir}/tls.key holds no PEM certificate"),
    ("empty token", "'token_file': cannot read a token: {dir}/token holds no token"),
    ("unreadable token",
     "'token_file': cannot read a token: [Errno 13] Permission denied: '{dir}/token'"),
]
"""(case of :func:`_files_read_at_start_up`, the start of the message after "invalid
setting")."""


@pytest.mark.parametrize(("case", "message"), FILES_READ_AT_START_UP,
                         ids=[case for case, _ in FILES_READ_AT_START_UP])
def test_console_script_exits_2_naming_a_file_read_at_start_up(
    case: str, message: str, tmp_path: Path
) -> None:
    """Files are read when the sidecar starts, before it connects to Kafka or binds: a bad
    one is a bad setting like any other (gRPC would report a bad certificate as a failure to
    bind, exit 1)."""
    prefix = _without_file_permissions() if case == "unreadable token" else []
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOWWATER_")}
    result = subprocess.run(
        [*prefix, str(LOWWATER_BIN), "serve", *REQUIRED_ARGS, "--listen", "127.0.0.1:0",
         *_files_read_at_start_up(tmp_path, case)],
        capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"lowwater: invalid setting {message.format(dir=tmp_path)}")
    assert result.stderr.count("\n") == 1, result.stderr


DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
DOC_EXAMPLES = re.findall(r"^\$ lowwater (.*)\n(lowwater: .*)$", DOC.read_text(), re.MULTILINE)


DOC_SUBSCRIPTIONS_TOML = """
[[subscriptions]]
topic = "sms-verification"
ttl = "5m"

[[subscriptions]]
topic = "app-push"
ttl = "5 minutes"
"""
"""``subscriptions.toml`` of the docs' example: its second table has a bad ``ttl``."""
DOC_LOOP_TOML = """
[[subscriptions]]
topic = "^orders.*"
max_attempts = 5
dead_letter_topic = "orders.dlq"
"""
"""``loop.toml`` of the docs' example: its pattern matches its dead-letter topic."""


@pytest.mark.usefixtures("fake_sidecar", "restore_logging")
@pytest.mark.parametrize(("command", "message"), DOC_EXAMPLES)
def test_docs_console_examples_are_current(
    command: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "subscriptions.toml").write_text(DOC_SUBSCRIPTIONS_TOML)
    (tmp_path / "loop.toml").write_text(DOC_LOOP_TOML)
    assert cli.main(shlex.split(command)) == 2
    assert capsys.readouterr().err == message + "\n"


def test_docs_have_console_examples() -> None:
    assert len(DOC_EXAMPLES) >= 5
    assert any("subscriptions[1].ttl" in message for _, message in DOC_EXAMPLES)
