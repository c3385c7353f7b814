"""Typed parameters: the base of every strategy's and every training objective's parameter dataclass.

A parameter class is a frozen dataclass whose field defaults are the one place its defaults live;
``check`` refuses impossible values. A parameter added after the first release is declared with
``added_later(default, legacy=...)``: a run saved before it existed resumes with the legacy value,
the one that reproduces how it ran (``legacy``). ``build`` turns a job's mapping into an instance with the same
coercion as the config (an unknown key or a wrong type names the dotted key) and then checks it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from osal_ray.config import added_later, build_dataclass, legacy_values
from osal_ray.errors import InputError

P = TypeVar("P", bound="Params")
__all__ = ["NoParams", "Params", "added_later", "positive_int", "refuse"]


@dataclass(frozen=True)
class Params:
    """Parameters of a strategy or objective; subclasses add fields and override ``check``."""

    def check(self, where: str) -> None:
        """Raise InputError (``where.key``) for an impossible value; ``where`` is e.g. ``strategy_params.jsosal``."""

    @classmethod
    def build(cls: type[P], raw: "Mapping[str, Any] | Params | None", where: str) -> P:
        """``raw`` over the defaults, coerced and checked; an instance of ``cls`` is checked and returned."""
        if isinstance(raw, cls):
            params = raw
        elif isinstance(raw, Params):
            raise TypeError(f"{where}: expected {cls.__name__}, got {type(raw).__name__}")
        else:
            params = build_dataclass(cls, dict(raw or {}), where)
        params.check(where)
        return params

    def to_dict(self) -> dict[str, Any]:
        """The parameters as plain values (what run state records and compares)."""
        return dataclasses.asdict(self)

    @classmethod
    def legacy(cls) -> dict[str, Any]:
        """Parameters added after the first release, each with the value a run saved without it keeps."""
        return legacy_values(cls)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The parameter names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class NoParams(Params):
    """A strategy or objective without parameters."""


def refuse(where: str, key: str, message: str) -> None:
    """Raise the InputError of parameter ``key`` (the error names ``where.key``)."""
    raise InputError(f"{where}.{key}", message)


def positive_int(value: Any) -> bool:
    """True for an int >= 1 (bool excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
