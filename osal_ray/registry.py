"""One small registry type shared by datasets, models, score columns and query strategies.

Every registry has one front door (``get``), refuses duplicate names and names what is
available when a lookup fails, so a typo in a config becomes a clear error.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from osal_ray.errors import InputError, shown

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping that refuses duplicates and explains failed lookups."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a second registration of a name is an error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers what it decorates under ``name``."""

        def register(entry: T) -> T:
            return self.add(name, entry)

        return register

    def get(self, name: str, field: str | None = None) -> T:
        """Look ``name`` up; an unknown name raises InputError listing the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise InputError(
                field or self.kind,
                f"unknown {self.kind} {shown(name)}; available: {', '.join(self.names())}",
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
