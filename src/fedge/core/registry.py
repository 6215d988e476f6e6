"""Name -> object registries; a miss lists the known names.

Besides its registered names, every registry accepts an import path
``"package.module:attr"`` naming a user's own object (an aggregator, algorithm, transform,
engine or model in the user's package); the registry's ``accepts`` check says whether the
object is of the right kind.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fedge.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories or functions, e.g. the aggregators."""

    def __init__(
        self, kind: str, accepts: Callable[[object], bool] = callable, what: str = "a callable"
    ) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}
        self._full: dict[str, str] = {}
        """The first paragraph of each description (``describe(full=True)``)."""
        self._accepts = accepts
        self._what = what

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
        self._full[name] = text.strip().split("\n\n")[0] if text.strip() else ""

    def get(self, name: str, field: str | None = None) -> T:
        """Look a name (or an import path) up; an unknown name raises ConfigError listing the
        known ones."""
        if name in self._items:
            return self._items[name]
        where = field or self.kind
        if isinstance(name, str) and ":" in name:
            obj = resolve_import_path(name, where)
            if not self._accepts(obj):
                raise ConfigError(where, name, f"an import path to {self._what}")
            return obj  # type: ignore[no-any-return]
        allowed = "one of " + ", ".join(self.names()) + ", or an import path 'package.module:attr'"
        raise ConfigError(where, name, allowed)

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self, full: bool = False) -> list[tuple[str, str]]:
        """(name, one-line description) pairs, sorted by name; ``full``: the description's
        whole first paragraph."""
        docs = self._full if full else self._docs
        return [(n, docs[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def resolve_import_path(path: str, field: str) -> Any:
    """The object named by ``"package.module:attr"`` (attr may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(field, path, "an import path of the form 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(field, path, f"an importable module ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(field, path, f"an attribute that exists in {module_name}")
        obj = getattr(obj, part)
    return obj
