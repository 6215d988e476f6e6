"""Name -> object registries; a miss lists the known names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedge.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories or functions, e.g. the aggregators."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str = "") -> Callable[[T], T]:
        """Decorator that registers an object under ``name``."""

        def deco(obj: T) -> T:
            self.add(name, obj, doc)
            return obj

        return deco

    def add(self, name: str, obj: T, doc: str = "") -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        text = doc or (getattr(obj, "__doc__", None) or "")
        self._docs[name] = text.strip().splitlines()[0] if text.strip() else ""

    def get(self, name: str, field: str | None = None) -> T:
        """Look a name up; an unknown name raises ConfigError listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                field or self.kind, name, "one of " + ", ".join(self.names())
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> list[tuple[str, str]]:
        """(name, one-line description) pairs, sorted by name."""
        return [(n, self._docs[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
