"""Checking keyword parameters against a function's signature before calling it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fedge.core.errors import ConfigError


def check_params(
    owner: str,
    fn: Callable[..., Any],
    params: Mapping[str, object],
    skip: int,
    inputs: tuple[str, ...] = (),
) -> None:
    """Raise ConfigError for a parameter ``fn`` does not take or a required one that is missing.

    The first ``skip`` parameters of ``fn``, and those named in ``inputs`` (e.g. the
    reference model an aggregator is given), are inputs, not user parameters.
    """
    sig = [
        p for p in list(inspect.signature(fn).parameters.values())[skip:] if p.name not in inputs
    ]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig):
        return
    named = [p for p in sig if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    allowed = [p.name for p in named]
    for key in params:
        if key not in allowed:
            choices = "one of " + ", ".join(allowed) if allowed else "no parameters"
            raise ConfigError(f"{owner} parameter", key, choices)
    for p in named:
        if p.default is inspect.Parameter.empty and p.name not in params:
            raise ConfigError(f"{owner} parameter {p.name}", "missing", "a value is required")
