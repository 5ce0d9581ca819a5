"""Where settings come from: flags over the TOML file over the environment over the defaults.

Each source is read into a layer of raw values that remembers where each value came from, so
that :func:`resolve_settings` can name the source of every bad value in its :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from coordinator.config.errors import ConfigError, Problem
from coordinator.config.model import Settings
from coordinator.config.subscriptions import Subscription

ENV_PREFIX: Final = "LOWWATER_"
"""Prefix of the environment variables that carry settings."""
KAFKA_ENV_PREFIX: Final = "LOWWATER_KAFKA__"
"""Prefix of the environment variables that carry librdkafka properties."""
CONFIG_ENV_VAR: Final = "LOWWATER_CONFIG"
"""Environment variable naming the TOML file when ``--config`` is not given."""
FILE_ONLY_SETTINGS: Final = frozenset({"subscriptions"})
"""Settings only the TOML file can set: they have no flag and no environment variable."""


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
    known = {env_var_for(name) for name in _ENV_SETTINGS}
    known.add(CONFIG_ENV_VAR)
    return sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name not in known
        and not name.startswith(KAFKA_ENV_PREFIX)
    )


# --- sources and precedence ---------------------------------------------------------------------

_ENV_SETTINGS: Final = tuple(
    name for name in Settings.model_fields if name != "kafka" and name not in FILE_ONLY_SETTINGS
)
"""Settings with a ``LOWWATER_<SETTING>`` variable; the passthrough has one per property."""

_Layer = dict[str, tuple[object, str]]
"""Setting (``kafka.<property>`` for the passthrough) -> (raw value, where it came from)."""


def _environment_layer(environ: Mapping[str, str]) -> _Layer:
    layer: _Layer = {}
    for name in _ENV_SETTINGS:
        var = env_var_for(name)
        raw = environ.get(var, "")
        if raw.strip():
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
        elif name in FILE_ONLY_SETTINGS:
            raise ConfigError(Problem(name, "can only be set in the config file"))
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


_TABLES: Final[Mapping[str, type[BaseModel]]] = MappingProxyType({"subscriptions": Subscription})
"""Settings that are lists of tables -> the model of each table."""


def _problems(exc: ValidationError, sources: Mapping[str, str]) -> list[Problem]:
    problems: dict[str, Problem] = {}  # the first problem of each setting
    for error in exc.errors(include_url=False):
        kind, ctx, loc = error["type"], error.get("ctx") or {}, error["loc"]
        if kind in {"lowwater_setting", "lowwater_missing"}:
            setting, reason = str(ctx["setting"]), str(ctx.get("reason", ""))
        else:
            setting = _setting_at(loc)
            reason = error["msg"].removeprefix("Value error, ")
            reason = reason[:1].lower() + reason[1:]
            if kind != "value_error" and isinstance(error["input"], str | int | float):
                reason += f", got {error['input']!r}"
        top = _top_level(setting)
        default = "default" if setting in Settings.model_fields else None
        source = sources.get(setting) or sources.get(top) or default
        if kind in {"missing", "lowwater_missing"} and top != setting:
            reason = f"not set (required in every [[{top}]] table)"
        elif kind in {"missing", "lowwater_missing"}:
            ways = [flag_for(setting), f"'{setting}' in the config file", env_var_for(setting)]
            ways += [str(ctx["alternative"])] if "alternative" in ctx else []
            reason, source = f"not set (use {', '.join(ways[:-1])} or {ways[-1]})", None
        elif kind == "extra_forbidden" and top in _TABLES:
            key = setting.rpartition(".")[2]
            close = difflib.get_close_matches(key, list(_TABLES[top].model_fields), n=1)
            reason = "unknown setting" + (f", did you mean '{close[0]}'?" if close else "")
        problems.setdefault(setting, Problem(setting, reason, source))
    return list(problems.values())


def _setting_at(loc: tuple[int | str, ...]) -> str:
    """``("subscriptions", 1, "ttl", <union member>)`` -> ``subscriptions[1].ttl``."""
    if not loc:
        return "settings"
    setting = str(loc[0])
    if len(loc) > 1 and isinstance(loc[1], int):
        setting += f"[{loc[1]}]"
        if len(loc) > 2 and isinstance(loc[2], str):
            setting += f".{loc[2]}"
    return setting


def _top_level(setting: str) -> str:
    """``subscriptions[1].ttl`` -> ``subscriptions``; ``kafka.x`` and ``lease`` are their own."""
    return setting.partition("[")[0]
