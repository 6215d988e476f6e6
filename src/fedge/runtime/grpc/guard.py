"""What a gRPC node checks in every message before it acts on it: run, replay, model shape.

- **Run id.** The cloud's run has an id (its run directory's name). The cloud stamps it on
  every request it sends; a child learns it from its first request, stamps it on its
  replies and on the requests it sends further down (an edge to its devices), and says it
  in its HELLO when it attaches again. A request, reply or HELLO of another run is refused:
  a process left over from an earlier run, or a replayed recording of one, never mixes into
  this run. An empty id means "not known yet" (a node that has not served a request).
- **Replay.** A reply is taken only for a call that is outstanding; a child takes a request
  only once per stream (``ReplayGuard``). Chunks of a refused call are never buffered.
- **Model shape.** Every model or update a message carries (``Update`` values of its
  payload, also inside lists) must use the receiving node's parameter names with their
  shapes and dtypes (``ModelCheck``), checked once per message against a template made
  from the node's own initial model. A state may hold a subset of the keys (algorithms that
  share only part of the model). The opaque forms of secure aggregation (``masked``) and
  homomorphic encryption (``ciphertexts``) carry no parameter names and are left to their
  protocols' own checks. NaN and infinity are not refused here: they are well-formed
  tensors that a diverging client really produces, and what happens to them (robust
  aggregation, clipping) must be the same on every engine, so it is the aggregator's call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedge.core.message import Message
from fedge.core.update import Update

OPAQUE_FORMS = frozenset({"masked", "ciphertexts"})
"""Single-key states of protected updates (``algorithms.secure`` / ``algorithms.homomorphic``)."""


@dataclass
class RunIdentity:
    """The id of the run a node process serves, shared by its hub and its attachments."""

    value: str = ""

    def refusal(self, run: str) -> str | None:
        """None when ``run`` belongs to this run (or either is not known yet), else why not."""
        if not run or not self.value or run == self.value:
            return None
        return f"run id {run!r}, this node serves run {self.value!r}"

    def learn(self, run: str) -> None:
        """Take the run id of the first request (later ones are checked by ``refusal``)."""
        if run and not self.value:
            self.value = run


@dataclass
class ReplayGuard:
    """The call ids a child has taken on one stream: a second request with one is a replay.

    Keeps the last ``window`` ids; an id older than all of them is a replay too (a parent's
    call ids only grow), so memory stays bounded however long the stream lives.
    """

    window: int = 4096
    _seen: set[int] = field(default_factory=set)
    _order: deque[int] = field(default_factory=deque)
    _floor: int = 0

    def refusal(self, call_id: int) -> str | None:
        """None the first time ``call_id`` starts a request, else why it is refused."""
        if call_id in self._seen or call_id < self._floor:
            return "already asked on this stream (a replay)"
        self._seen.add(call_id)
        self._order.append(call_id)
        if len(self._order) > self.window:
            oldest = self._order.popleft()
            self._seen.discard(oldest)
            self._floor = max(self._floor, oldest + 1)
        return None


def _updates(payload: Mapping[str, Any]) -> Iterator[tuple[str, Update]]:
    for name, value in payload.items():
        if isinstance(value, Update):
            yield name, value
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, Update):
                    yield f"{name}[{i}]", item


class ModelCheck:
    """Checks the models a message carries against a template (names, shapes, dtypes)."""

    def __init__(self, template: Mapping[str, torch.Tensor]) -> None:
        self.spec = {k: (tuple(v.shape), v.dtype) for k, v in template.items()}

    def refusal(self, message: Message) -> str | None:
        """None when every model in ``message`` fits the template, else the first mismatch."""
        for name, update in _updates(message.payload):
            state = update.state
            if len(state) == 1 and next(iter(state)) in OPAQUE_FORMS:
                continue
            for key, tensor in state.items():
                reason = self._mismatch(key, tensor)
                if reason is not None:
                    return f"{message.kind} from {message.src}: {name}: {reason}"
        return None

    def _mismatch(self, key: str, tensor: Any) -> str | None:
        if key not in self.spec:
            known = ", ".join(list(self.spec)[:6]) + (" ..." if len(self.spec) > 6 else "")
            return f"unknown parameter {key!r} (this node's model has {known})"
        if not isinstance(tensor, torch.Tensor):
            return f"parameter {key!r} is a {type(tensor).__name__}, not a tensor"
        shape, dtype = self.spec[key]
        if tuple(tensor.shape) != shape:
            return (
                f"parameter {key!r} has shape {list(tensor.shape)}, "
                f"this node's model has {list(shape)}"
            )
        if tensor.dtype != dtype:
            return f"parameter {key!r} has dtype {tensor.dtype}, this node's model has {dtype}"
        return None
