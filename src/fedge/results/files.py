"""Plain-file exports of a run: atomic JSON and per-round CSV.

Every writer goes through :func:`atomic_write_text`, so a crash or a bad value never leaves a
half-written file behind: the text is built first, written to a temporary file in the same
directory, fsynced and moved over the target with ``os.replace``.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedge.core.errors import FedgeError
from fedge.core.files import atomic_write_bytes

_INT_RE = re.compile(r"[+-]?\d+")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any, where: str = "$") -> Any:
    """Plain JSON data from ``obj``: numpy scalars/arrays, paths, enums and dataclasses are
    converted, NaN and infinities become ``None``; anything else raises FedgeError."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | float | np.integer | np.floating | np.bool_):
        return _json_number(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=repr) if isinstance(obj, set | frozenset) else obj
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), where)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), where)
    raise FedgeError(
        f"cannot write {where} as JSON: a {type(obj).__name__} is not JSON data "
        "(allowed: mappings, sequences, str, numbers, bool, None, numpy values, paths)"
    )


def _json_number(value: Any) -> int | float | bool | None:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def dumps_json(obj: Any) -> str:
    """Indented JSON text of ``obj`` (see :func:`to_jsonable`), ending with a newline."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"


def write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as JSON atomically; NaN becomes null, numpy scalars become numbers."""
    atomic_write_text(path, dumps_json(obj))


def read_json(path: str | Path, expected: str = "JSON") -> Any:
    """Read a JSON file; a missing or corrupt file raises FedgeError naming it and ``expected``."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedgeError(f"{p}: file not found; expected {expected}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FedgeError(f"{p}: cannot read it ({exc}); expected {expected}") from None


def row_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Union of the rows' keys: ``round`` first, then in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    columns = list(seen)
    if "round" in seen:
        columns.remove("round")
        columns.insert(0, "round")
    return columns


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write per-round rows as CSV (atomically); a key a row lacks is an empty cell."""
    columns = row_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(col)) for col in columns])
    atomic_write_text(path, buffer.getvalue())


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, np.integer | np.bool_):
        return str(value.item())
    return str(value)


def read_rows_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read rows written by :func:`write_rows_csv`; numbers come back as int / float and
    empty cells are left out of the row."""
    p = Path(path)
    try:
        with p.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise FedgeError(f"{p}: empty file; expected a CSV header line of metric names")
            return [_parse_row(p, header, cells, n) for n, cells in enumerate(reader, start=2)]
    except FileNotFoundError:
        raise FedgeError(f"{p}: file not found; expected per-round metrics as CSV") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FedgeError(
            f"{p}: cannot read it ({exc}); expected per-round metrics as CSV"
        ) from None


def _parse_row(path: Path, header: list[str], cells: list[str], line: int) -> dict[str, Any]:
    if len(cells) != len(header):
        raise FedgeError(
            f"{path}: line {line} has {len(cells)} cells but the header has {len(header)}; "
            "expected one cell per column"
        )
    return {key: parse_cell(cell) for key, cell in zip(header, cells, strict=True) if cell != ""}


def parse_cell(text: str) -> int | float | str:
    """A CSV cell as int, float (including nan / inf) or, failing both, the string itself."""
    if _INT_RE.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text
