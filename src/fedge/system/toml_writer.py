"""A minimal TOML writer (the standard library only reads TOML): enough for topology files."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def to_toml(data: Mapping[str, Any]) -> str:
    """A minimal TOML writer for the topology schema: tables, arrays of flat tables, scalars."""
    lines: list[str] = []
    _toml_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _toml_table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    subtables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    arrays = {k: v for k, v in table.items() if _is_table_list(v)}
    for key, value in table.items():
        if key not in subtables and key not in arrays and value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, sub in subtables.items():
        lines += ["", f"[{'.'.join([*path, key])}]"]
        _toml_table(sub, [*path, key], lines)
    for key, items in arrays.items():
        for item in items:
            lines += ["", f"[[{'.'.join([*path, key])}]]"]
            _toml_table(item, [*path, key], lines)


def _is_table_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
