"""The errors of bad settings: :class:`Problem` names one, :class:`ConfigError` stops start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic_core import PydanticCustomError


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


def _missing_error(setting: str, alternative: str) -> PydanticCustomError:
    """Like pydantic's ``missing``, for a setting that ``alternative`` may stand in for."""
    return PydanticCustomError(
        "lowwater_missing", "{setting}: not set", {"setting": setting, "alternative": alternative}
    )
