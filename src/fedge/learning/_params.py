"""Validation of keyword parameters passed by name from a config to a registered function."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from typing import Any

from fedge.core.errors import ConfigError


def check_params(
    what: str, fn: Callable[..., Any], params: dict[str, Any], reserved: Collection[str] = ()
) -> None:
    """Reject keyword parameters that ``fn`` does not take, naming them and the allowed ones.

    ``reserved`` names are positional arguments the caller supplies itself (not settable).
    """
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    known = set(sig.parameters) - set(reserved)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{what} parameters", unknown, ", ".join(sorted(known)) or "none")


def accepted_kwargs(fn: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``offered`` that ``fn`` accepts by keyword (all of it given ``**kwargs``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(offered)
    by_kw = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in offered.items() if k in by_kw}
