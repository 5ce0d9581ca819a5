"""The ``lowwater`` command. ``lowwater serve`` runs the sidecar; other subcommands plug into
:data:`SUBCOMMANDS`.

Exit codes: 0 on success; 2 on bad usage or a bad setting, with a one-line message on stderr
(``lowwater: invalid setting 'lease': ...``); otherwise what the subcommand returns.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from typing import TYPE_CHECKING, Final, NoReturn, TextIO

from coordinator import inspect as inspect_command
from coordinator import status as status_command
from coordinator.config import (
    CONFIG_ENV_VAR,
    FILE_ONLY_SETTINGS,
    LOG_CONCERNS,
    ConfigError,
    Problem,
    Settings,
    default_text,
    flag_for,
    is_sensitive_property,
    log_levels,
    resolve_settings,
    unknown_environment_variables,
)

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

__all__ = [
    "SUBCOMMANDS",
    "Subcommand",
    "add_settings_arguments",
    "build_parser",
    "configure_logging",
    "load_settings",
    "main",
    "settings_from_args",
]

EXIT_OK: Final = 0
"""Exit code of a clean run."""
EXIT_USAGE: Final = 2
"""Exit code of bad usage or a bad setting (argparse's own)."""
DISTRIBUTION: Final = "lowwater-sidecar"
"""The distribution whose version ``--version`` prints."""
LOG_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
"""One line per record; the logger name is the concern (``coordinator.acks``, ...)."""
OTHER_LOGGERS_LEVEL: Final = logging.WARNING
"""Least severe level logged by libraries other than ``coordinator.*``."""

config_log = logging.getLogger("coordinator.config")


class _Parser(argparse.ArgumentParser):
    """Reports a usage error in one line and exits 2 (plain argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --- settings from the command line -------------------------------------------------------------

_METAVARS: Final[Mapping[str, str]] = {
    "bootstrap_servers": "HOST:PORT[,...]",
    "group": "GROUP",
    "listen": "ADDRESS",
    "max_attempts": "N|unlimited",
    "dead_letter_topic": "TOPIC",
    "expired_topic": "TOPIC",
    "ttl": "DURATION",
    "expiry_header": "HEADER",
    "log_level": "LEVEL",
    "log_levels": "CONCERN=LEVEL[,...]",
    "token_file": "PATH",
    "token_env": "VARIABLE",
    "admin_token_file": "PATH",
    "admin_token_env": "VARIABLE",
    "tls_cert_file": "PATH",
    "tls_key_file": "PATH",
    "tls_client_ca_file": "PATH",
}


def _help(name: str, field: FieldInfo) -> str:
    text = " ".join((field.description or "").split()).replace("`", "").replace("%", "%%")
    default = default_text(name)
    if name == "topics":
        return f"{text} (repeatable)"
    return f"{text} ({'required' if default == 'required' else f'default: {default}'})"


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per setting but the file-only ones (``[[subscriptions]]``).
    Flags not given stay absent from the namespace.

    Flag values are kept as strings and validated with the other sources, so a bad flag is
    reported like any bad setting.
    """
    group = parser.add_argument_group(
        "settings",
        "Flags beat the --config file, which beats LOWWATER_* environment variables,"
        " which beat the defaults. See docs/configuration.md.",
    )
    group.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"TOML file of settings; unknown keys are errors (default: ${CONFIG_ENV_VAR})",
    )
    suppress = argparse.SUPPRESS
    for name, field in Settings.model_fields.items():
        flag, help_text = flag_for(name), _help(name, field)
        if name in FILE_ONLY_SETTINGS:
            continue
        if name == "topics":
            group.add_argument(
                flag, dest=name, default=suppress, action="append", metavar="TOPIC", help=help_text
            )
        elif name == "kafka":
            group.add_argument(
                flag,
                dest=name,
                default=suppress,
                action="append",
                metavar="KEY=VALUE",
                help="librdkafka consumer property, passed through unchanged (repeatable)",
            )
        elif field.annotation is bool:
            group.add_argument(
                flag,
                dest=name,
                default=suppress,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            metavar = _METAVARS.get(name, "DURATION" if field.annotation is timedelta else "N")
            group.add_argument(flag, dest=name, default=suppress, metavar=metavar, help=help_text)


def _kafka_pairs(items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            shown = "a property" if is_sensitive_property(item) else repr(item)
            raise ConfigError(Problem("kafka", f"expected KEY=VALUE, got {shown}", "--kafka"))
        pairs[key.strip()] = value
    return pairs


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Resolve the settings from parsed :func:`add_settings_arguments` flags and ``environ``.

    ``--topic`` values may also be comma-separated. The file is ``--config``, else
    ``$LOWWATER_CONFIG``, else none.

    Raises:
        ConfigError: naming the bad setting.
    """
    given = vars(args)
    flags: dict[str, object] = {
        name: given[name] for name in Settings.model_fields if name in given
    }
    if "topics" in flags:
        flags["topics"] = [t.strip() for item in given["topics"] for t in item.split(",")]
    if "kafka" in flags:
        flags["kafka"] = _kafka_pairs(given["kafka"])
    config_file = given.get("config") or environ.get(CONFIG_ENV_VAR) or None
    return resolve_settings(flags=flags, config_file=config_file, environ=environ)


def load_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """The settings for ``lowwater serve ARGV`` (``argv`` excludes ``serve``) in ``environ``.

    Args:
        argv: the serve arguments, e.g. ``["--group", "g", "--topic", "t"]``.
        environ: the environment; None for :data:`os.environ`.

    Raises:
        ConfigError: a setting is missing or bad; the error names it.
        SystemExit: the arguments do not parse (unknown flag, flag without its value): code 2.
    """
    parser = _Parser(prog="lowwater serve")
    add_settings_arguments(parser)
    args = parser.parse_args(list(argv))
    return settings_from_args(args, os.environ if environ is None else environ)


# --- logging ------------------------------------------------------------------------------------


class _Handler(logging.StreamHandler[TextIO]):
    """lowwater's own handler on the root logger; :func:`configure_logging` replaces it."""


def configure_logging(level: str, stream: TextIO | None = None, fmt: str = "text",
                      concerns: Mapping[str, str] | None = None) -> None:
    """Log one line per record to ``stream`` (stderr): time, level, logger name, message;
    with ``fmt="json"`` one JSON object per line (structlog's renderer) with the fields
    ``timestamp``, ``level``, ``logger``, ``event`` and, on errors, ``exception``.

    ``coordinator.*`` loggers log at ``level``; other libraries at WARNING and above (or
    ``level`` if that is higher). ``concerns`` sets single concern loggers apart, as
    {logger name: level} (see ``log_levels``). Calling it again replaces the previous
    configuration.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler(sys.stderr if stream is None else stream)
    handler.setFormatter(_json_formatter() if fmt == "json" else logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    number = logging.getLevelNamesMapping()[level]
    root.setLevel(max(number, OTHER_LOGGERS_LEVEL))
    logging.getLogger("coordinator").setLevel(number)
    for concern in LOG_CONCERNS:  # a concern follows `level` unless set apart
        logging.getLogger(f"coordinator.{concern}").setLevel(logging.NOTSET)
    for name, concern_level in (concerns or {}).items():
        logging.getLogger(name).setLevel(concern_level)


def _json_formatter() -> logging.Formatter:
    import structlog

    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # a string: no locals, no secrets
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
    )


# --- subcommands --------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, os.environ)
    configure_logging(settings.log_level, fmt=settings.log_format,
                      concerns=log_levels(settings.log_levels))
    token_vars = {settings.token_env, settings.admin_token_env}
    for name in unknown_environment_variables(os.environ):
        if name in token_vars:  # named by token_env or admin_token_env: not a typo
            continue
        config_log.warning("ignoring environment variable %s: no such setting", name)
    config_log.debug("settings: %r", settings)
    # Imported here so that the CLI, and its tests, work without the runtime's dependencies.
    from coordinator.runtime.sidecar import serve

    return serve(settings)


@dataclass(frozen=True)
class Subcommand:
    """One ``lowwater`` subcommand.

    Attributes:
        name: the word on the command line.
        help: one line for ``lowwater --help``.
        add_arguments: adds the subcommand's arguments to its parser.
        run: runs it and returns the exit code; a :class:`ConfigError` it raises exits 2.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from coordinator import demo

    demo.add_arguments(parser)


def _demo(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    from coordinator import demo

    return demo.run(args)


SUBCOMMANDS: Final[tuple[Subcommand, ...]] = (
    Subcommand(
        "serve",
        "run the sidecar: consume Kafka, stream records to workers, commit the low-water mark",
        add_settings_arguments,
        _serve,
    ),
    Subcommand(
        "demo",
        "run an embedded broker, a sidecar and SDK workers on SMS requests, with a live view",
        _demo_arguments,
        _demo,
    ),
    Subcommand(
        "status",
        "print a running sidecar's partitions, workers and latest rebalances (Admin/GetStatus)",
        status_command.add_arguments,
        status_command.run_status,
    ),
    Subcommand(
        "top",
        "a live view of a running sidecar: commit rates, lag, pending, workers, rebalances",
        status_command.add_top_arguments,
        status_command.run_top,
    ),
    Subcommand(
        "inspect",
        "show the pending sets a sidecar wrote to Redis: what the next owner will redeliver",
        inspect_command.add_arguments,
        inspect_command.run,
    ),
)
"""Every subcommand, in ``--help`` order. Add ``demo``, ``status``... here."""


def _version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``lowwater`` parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = _Parser(
        prog="lowwater",
        description="lowwater: a Kafka consumer sidecar that commits the lowest finished offset.",
    )
    parser.add_argument("--version", action="version", version=f"lowwater {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lowwater ARGV`` (default: ``sys.argv[1:]``) and return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ConfigError as exc:
        print(f"lowwater: {exc}", file=sys.stderr)
        return EXIT_USAGE
