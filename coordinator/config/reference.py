"""The Markdown reference table of every setting, embedded in ``docs/configuration.md``."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from datetime import timedelta
from typing import Literal

from coordinator.config.durations import format_duration
from coordinator.config.model import Settings
from coordinator.config.sources import KAFKA_ENV_PREFIX, env_var_for, flag_for


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
