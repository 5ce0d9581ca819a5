"""The Markdown reference table of every setting, embedded in ``docs/configuration.md``."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from coordinator.config.durations import format_duration
from coordinator.config.model import Settings
from coordinator.config.sources import (
    FILE_ONLY_SETTINGS,
    KAFKA_ENV_PREFIX,
    env_var_for,
    flag_for,
)


def _optional_of(annotation: object) -> object | None:
    """``X`` for ``X | None``; None for any other annotation."""
    args = typing.get_args(annotation)
    others = [a for a in args if a is not type(None)]
    return _bare(others[0]) if type(None) in args and len(others) == 1 else None


def _bare(annotation: object) -> object:
    """The type of ``Annotated[T, ...]``, however deeply nested."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _kind(annotation: object) -> str:
    args = typing.get_args(annotation)
    optional = _optional_of(annotation)
    if optional is int:  # an optional limit: None is no limit
        return 'integer or `"unlimited"`'
    if optional is not None:
        return _kind(optional)
    if annotation is timedelta:
        return "duration"
    if annotation is Path:
        return "file path"
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if annotation is str:
        return "string"
    if typing.get_origin(annotation) is Literal:
        return " / ".join(f"`{a}`" for a in args)
    if typing.get_origin(annotation) is tuple:
        item = _bare(args[0])
        if item is str:
            return "list of strings"
        return "list of durations" if item is timedelta else "list of tables"
    if typing.get_origin(annotation) is Mapping:
        return "table"
    raise TypeError(f"no documentation kind for {annotation!r}")


def default_text(setting: str) -> str:
    """A setting's default as a user would write it: ``30s``, ``unlimited``, ``unset``, ``empty``,
    ``required``."""
    field = Settings.model_fields[setting]
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, timedelta):
        return format_duration(default)
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, Mapping | tuple) and not default:
        return "empty"
    if default is None:
        return "unlimited" if _optional_of(field.annotation) is int else "unset"
    return str(default)


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
        elif name in FILE_ONLY_SETTINGS:
            key, flag, env = f"`[[{name}]]` tables", "none (TOML only)", "none (TOML only)"
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        kind = _kind(field.annotation)
        default = default_text(name)
        if default not in {"required", "empty", "unset"}:
            default = f"`{default}`"
        rows.append(f"| {key} | {flag} | {env} | {kind} | {default} | {meaning} |")
    return "\n".join(rows) + "\n"
