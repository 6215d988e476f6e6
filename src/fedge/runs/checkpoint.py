"""Checkpoints: the live objects of a run between two rounds, so that it can go on elsewhere.

A checkpoint stores what changes from round to round (the global state, the coordinator,
its rng, the transport with its clock and ledger, the node apps with their state, whatever
the driver adds in ``extra``) and names, instead of storing them, the objects that are built
deterministically from the config: datasets, the system model, the config, local functions
(handler closures), torch modules and classes that set ``checkpoint_by_reference = True``.

How: right after building, :meth:`References.scan` walks the fresh objects with a pickler
that gives each such *static* object a key in traversal order. Saving pickles the live
objects with those keys in place of the static ones; loading rebuilds from the same config,
scans again (same build, same keys) and puts the fresh objects back in place of the keys.
Torch modules are named, but their parameters and buffers (and train / eval mode) are stored
by value and copied back in place: a module may be scratch space or persistent (split
learning), and optimizers keep pointing at the very parameters of the fresh module.
A local function's environment is as built: what it captures must not change in a run;
a tensor that is a view of a module's tensor (not a clone) comes back as a copy.

The file format (an atomic write, a JSON header with the payload's SHA-256) is in
``checkpoint_file``; the fields a driver passes in ``meta`` (config hash, library versions)
detect a checkpoint from another config or code version. Loading unpickles: only load
checkpoints you wrote yourself.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from fedge.core.update import ModelState
from fedge.learning import ArrayDataset
from fedge.runs.checkpoint_file import (
    TMP_SUFFIX,
    CheckpointError,
    read_checkpoint_file,
    read_checkpoint_header,
    write_checkpoint_file,
)
from fedge.system.model import SystemModel

__all__ = [
    "CHECKPOINT_NAME", "STATIC_TYPES", "TMP_SUFFIX", "Checkpoint", "CheckpointError", "References",
    "is_static", "load_checkpoint", "read_checkpoint_header", "save_checkpoint",
]  # fmt: skip

CHECKPOINT_NAME = "checkpoint.pkl"
PROTOCOL = 5
STATIC_TYPES: tuple[type, ...] = (ArrayDataset, SystemModel, BaseModel, nn.Module)
"""Types always named by reference (besides local functions and classes that opt in)."""


@dataclass
class Checkpoint:
    """What a driver needs to go on after round ``round``; None for what it does not own
    (a gRPC cloud has no in-process transport or node apps)."""

    round: int
    state: ModelState
    coordinator: Any
    rng: np.random.Generator
    transport: Any = None
    nodes: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_static(obj: object) -> bool:
    """True for objects a checkpoint names instead of storing (see the module docstring)."""
    if getattr(type(obj), "checkpoint_by_reference", False) is True:
        return True
    if isinstance(obj, STATIC_TYPES):
        return True
    return isinstance(obj, types.FunctionType) and "<" in obj.__qualname__


class References:
    """Static objects of a fresh build, keyed in the order a scan meets them."""

    def __init__(self) -> None:
        self._objects: list[Any] = []
        self._keys: dict[int, int] = {}
        self.tensors: list[int] = []
        """Keys of the parameters and buffers of named modules (stored by value)."""
        self.modules: list[int] = []

    @classmethod
    def scan(cls, *roots: object) -> References:
        """Walk ``roots`` (the live objects of a fresh build, plus any other static roots)."""
        refs = cls()
        _Scanner(refs).dump(roots)
        return refs

    def __len__(self) -> int:
        return len(self._objects)

    def key(self, obj: object) -> int | None:
        return self._keys.get(id(obj))

    def get(self, key: object) -> Any:
        if not isinstance(key, int) or not 0 <= key < len(self._objects):
            raise CheckpointError(f"checkpoint names object {key!r}; this build has {len(self)}")
        return self._objects[key]

    def add(self, obj: object) -> int:
        key = self._keys.get(id(obj))
        if key is None:
            key = len(self._objects)
            self._objects.append(obj)  # kept alive, so its id is never reused
            self._keys[id(obj)] = key
        return key

    def add_module(self, module: nn.Module) -> None:
        """Name a module's submodules and tensors too (optimizers point at the tensors)."""
        for _, sub in module.named_modules():
            if self.key(sub) is None:
                self.modules.append(self.add(sub))
        for _, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if self.key(tensor) is None:
                self.tensors.append(self.add(tensor))

    def signature(self) -> str:
        """SHA-256 of what each key names: a checkpoint from another build does not match."""
        digest = hashlib.sha256()
        for obj in self._objects:
            digest.update(_describe(obj).encode() + b"\n")
        return digest.hexdigest()


def _describe(obj: object) -> str:
    if isinstance(obj, types.FunctionType):
        return f"function {obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, torch.Tensor):
        return f"tensor {obj.dtype} {tuple(obj.shape)}"
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class _NullSink:
    def write(self, data: bytes) -> int:
        return len(data)


class _Scanner(pickle.Pickler):
    """Pickles to nowhere, giving every static object it meets the next key."""

    def __init__(self, refs: References) -> None:
        super().__init__(_NullSink(), protocol=PROTOCOL)
        self.refs = refs

    def persistent_id(self, obj: Any) -> int | None:
        key = self.refs.key(obj)
        if key is not None or not is_static(obj):
            return key
        if isinstance(obj, nn.Module):
            self.refs.add_module(obj)
        key = self.refs.add(obj)
        if isinstance(obj, types.FunctionType):
            self._scan_environment(obj)
        return key

    def _scan_environment(self, fn: types.FunctionType) -> None:
        """Name the static objects a local function captures (a module only it reaches)."""
        for value in _captured(fn):
            try:
                _Scanner(self.refs).dump(value)
            except (pickle.PicklingError, TypeError, AttributeError):
                continue  # not stored either way: the function is named, not stored


def _captured(fn: types.FunctionType) -> Iterator[Any]:
    for cell in fn.__closure__ or ():
        try:
            yield cell.cell_contents
        except ValueError:  # an empty cell
            continue
    yield from fn.__defaults__ or ()
    yield from (fn.__kwdefaults__ or {}).values()


class _Saver(pickle.Pickler):
    def __init__(self, file: Any, refs: References) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self.refs = refs

    def persistent_id(self, obj: Any) -> int | None:
        return self.refs.key(obj)


class _Loader(pickle.Unpickler):
    def __init__(self, file: Any, refs: References) -> None:
        super().__init__(file)
        self.refs = refs

    def persistent_load(self, pid: Any) -> Any:
        return self.refs.get(pid)


def _module_values(refs: References) -> dict[str, Any]:
    """Parameters, buffers and train/eval mode of the named modules."""
    return {
        "tensors": {k: refs.get(k).detach() for k in refs.tensors},
        "training": {k: bool(refs.get(k).training) for k in refs.modules},
    }


def _restore_modules(refs: References, values: Mapping[str, Any]) -> None:
    tensors, training = values["tensors"], values["training"]
    if set(tensors) != set(refs.tensors) or set(training) != set(refs.modules):
        raise CheckpointError("the checkpoint's modules differ from this build's")
    with torch.no_grad():
        for key, value in tensors.items():
            target = refs.get(key)
            if target.shape != value.shape or target.dtype != value.dtype:
                raise CheckpointError(
                    f"tensor {key}: checkpoint has {value.dtype} {tuple(value.shape)}, "
                    f"this build {target.dtype} {tuple(target.shape)}"
                )
            target.copy_(value)
    for key, flag in training.items():
        refs.get(key).training = flag


def save_checkpoint(
    path: str | Path, checkpoint: Checkpoint, refs: References, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``checkpoint`` atomically; ``meta`` (JSON data) goes into the header. Returns
    the header. Objects that cannot be pickled raise CheckpointError naming the cause."""
    buffer = io.BytesIO()
    try:
        _Saver(buffer, refs).dump({"checkpoint": checkpoint, "modules": _module_values(refs)})
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"cannot checkpoint round {checkpoint.round}: {exc} (an object made after the "
            "build that cannot be pickled; name its class with checkpoint_by_reference = True "
            "if it is built from the config)"
        ) from exc
    header = {
        **meta,
        "round": checkpoint.round,
        "references": len(refs),
        "references_sha256": refs.signature(),
    }
    return write_checkpoint_file(Path(path), header, buffer.getbuffer())


def load_checkpoint(
    path: str | Path, refs: References, meta: Mapping[str, Any]
) -> tuple[Checkpoint, dict[str, Any]]:
    """Read, check and unpickle a checkpoint onto the fresh static objects in ``refs``.

    Every ``meta`` field must equal the header's, and ``refs`` must name the same kinds of
    objects as when it was saved; else CheckpointError names what differs. Returns the
    checkpoint and its header. Modules of ``refs`` get the stored parameters and buffers.
    """
    p = Path(path)
    header, payload = read_checkpoint_file(p, with_payload=True)
    _check_meta(p, header, {**meta, "references_sha256": refs.signature()})
    try:
        data = _Loader(io.BytesIO(payload), refs).load()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{p}: cannot load the checkpoint ({exc!r})") from exc
    checkpoint = data.get("checkpoint") if isinstance(data, dict) else None
    if not isinstance(checkpoint, Checkpoint):
        raise CheckpointError(f"{p}: the file holds no checkpoint")
    _restore_modules(refs, data["modules"])
    return checkpoint, header


def _check_meta(path: Path, header: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    for key, want in meta.items():
        got = header.get(key)
        if got != want:
            raise CheckpointError(
                f"{path}: checkpoint {key} is {got!r}, this run has {want!r}; a checkpoint "
                "resumes only with the same config and the same fedge / torch / numpy versions"
            )
