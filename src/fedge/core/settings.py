"""Settings sections: one pydantic model per section is both the TOML schema and the input
of the code it configures (no mirror classes).

A section forbids unknown keys and is frozen. Built directly in Python, a bad value raises
``ConfigError`` naming ``<section>.<field>``; inside a whole config, the config's loader
names the dotted path the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from fedge.core.errors import ConfigError


class Section(BaseModel):
    """A frozen settings section; ``section`` is its key in the experiment config."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    section: ClassVar[str] = ""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error(exc, type(self), self.section) from None


def known_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys allowed where ``loc`` (a pydantic error location) points inside ``model``."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(f.alias or name for name, f in model.model_fields.items())


def config_error(
    exc: ValidationError, model: type[BaseModel] | None = None, prefix: str = ""
) -> ConfigError:
    """The first error of a pydantic validation as a one-line ConfigError; an unknown key
    lists the known keys of ``model`` at that place."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    parts = [prefix] if prefix else []
    parts += [str(p) for p in err["loc"]]
    field = ".".join(parts) or "config"
    if err["type"] == "extra_forbidden":
        keys = known_keys(model, err["loc"]) if model is not None else []
        known = "; known keys here: " + ", ".join(keys) if keys else ""
        return ConfigError(field, err["input"], "unknown key" + known)
    if err["type"] == "missing":
        return ConfigError(field, None, "a value: this key is required")
    allowed = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    return ConfigError(field, err.get("input"), allowed)
