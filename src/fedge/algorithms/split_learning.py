"""The cloud-side round driver of split learning: ``split``, ``splitfed`` and ``ushaped``.

See ``fedge.algorithms.split`` for the edge and cloud apps and the interpretations. The
coordinator runs at the cloud, next to the cloud app that holds the tail: it shares the
``SplitModel`` with it (same node, same process) to read the tail for evaluation.

Round r: ``split`` sends the edge parts to one edge after the other (each continues from the
previous one's weights); ``splitfed`` / ``ushaped`` send them to every edge at once and
aggregate the returned parts with U_i = samples_i / (arrival time of edge i's reply − the
round's start). Evaluated rounds report ``accuracy`` (and precision, recall, F1, loss) of
the full model (head + tail), ``edge_accuracy`` / ``edge_loss`` of the edge model (head +
early-exit head), and per round ``cloud_batches``, ``dormant_batches``, ``mode_switches``
(summed over edges), ``dormant_edges`` (edges dormant at the round's end).

At the end of a run ``final_outputs(run_dir)`` calls the ``final`` hook (the experiment's
early-exit report, ``fedge.learning.early_exit``) with the simulated clock of the last round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fedge.aggregation.mean import weighted_mean
from fedge.algorithms.base import RoundLoop, RoundRecord
from fedge.algorithms.dormancy import throughput_weights
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update, as_state
from fedge.learning import load_state, state_of
from fedge.learning.split import SplitModel

Evaluate = Callable[[nn.Module], Mapping[str, float]]
Final = Callable[[Path, float], Mapping[str, Any]]
"""(run directory, simulated time at the end) -> figures for the run's summary."""
COUNTERS = ("cloud_batches", "dormant_batches", "mode_switches")


@dataclass
class SplitLearning(RoundLoop):
    """Rounds of split training over the edges; ``parallel`` = SplitFed, else vanilla SL."""

    parts: SplitModel | None = None
    evaluate: Evaluate | None = None
    parallel: bool = True
    ushaped: bool = False
    evaluate_every: int = 1
    deadline_s: float | None = None
    final: Final | None = None
    _edge_state: ModelState | None = field(default=None, repr=False)
    _clock_s: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if self.evaluate_every < 1:
            raise ConfigError("federation.evaluate_every", self.evaluate_every, "an integer >= 1")

    def step(
        self, transport: Transport, state: ModelState, rng: np.random.Generator, r: int, rounds: int
    ) -> RoundRecord:
        parts = self.parts
        if parts is None:
            raise ConfigError("split", None, "a SplitModel (build the experiment with build())")
        if self._edge_state is None:
            load_state(parts.full, state)
            self._edge_state = parts.edge_state()
        edges = transport.nodes("edge")
        if self.parallel:
            replies = self._parallel(transport, edges, r)
        else:
            replies = self._sequential(transport, edges, r)
        parts.load_edge_state(self._edge_state)
        self._clock_s = transport.now()
        metrics = _counters([m for m, _ in replies])
        if self.parallel and replies:
            metrics["u_weight_max"] = max(u for _, u in replies) / sum(u for _, u in replies)
        due = r % self.evaluate_every == 0 or r == rounds
        if due and self.evaluate is not None:
            metrics.update(self.evaluate(parts.full))
            edge = self.evaluate(parts.edge_model())
            metrics.update(edge_accuracy=edge["accuracy"], edge_loss=edge["loss"])
        return RoundRecord(r, state_of(parts.full), metrics, evaluated=due and bool(self.evaluate))

    def final_outputs(self, run_dir: Path) -> Mapping[str, Any]:
        """The ``final`` hook's files in ``run_dir`` and summary figures ({} without one)."""
        return {} if self.final is None else self.final(run_dir, self._clock_s)

    def _ask(self, transport: Transport, edge: str, r: int) -> Message:
        assert self._edge_state is not None
        model = Update(self._edge_state, origin=transport.node_id, round=r)
        return Message(transport.node_id, edge, "split_train", r, {"model": model})

    def _sequential(
        self, transport: Transport, edges: list[str], r: int
    ) -> list[tuple[Message, float]]:
        """Vanilla SL: each edge continues from the previous edge's weights."""
        out = []
        for e in edges:
            replies = transport.send([self._ask(transport, e, r)], self.deadline_s)
            if replies and "update" in replies[0].payload:
                assert self._edge_state is not None
                self._edge_state = as_state(replies[0].payload["update"], self._edge_state)
                out.append((replies[0], float(replies[0].payload["tasks"])))
        return out

    def _parallel(
        self, transport: Transport, edges: list[str], r: int
    ) -> list[tuple[Message, float]]:
        """SplitFed: every edge at once, then the U_i-weighted average of the edge parts."""
        start_s = transport.now()
        transport.submit([self._ask(transport, e, r) for e in edges])
        got: list[Message] = []
        elapsed: list[float] = []
        while (reply := transport.next_reply()) is not None:
            late = self.deadline_s is not None and transport.now() - start_s > self.deadline_s
            if "update" in reply.payload and not late:
                got.append(reply)
                elapsed.append(transport.now() - start_s)
        if not got:
            return []
        u = throughput_weights([float(m.payload["tasks"]) for m in got], elapsed)
        base = self._edge_state
        assert base is not None
        states = [as_state(m.payload["update"], base) for m in got]
        self._edge_state = weighted_mean(states, u)
        return list(zip(got, u, strict=True))


def _counters(replies: list[Message]) -> dict[str, Any]:
    metrics: dict[str, float] = {
        k: float(sum(m.payload["metrics"][k] for m in replies)) for k in COUNTERS
    }
    metrics["dormant_edges"] = float(sum(m.payload["metrics"]["dormant_now"] for m in replies))
    metrics["edges"] = float(len(replies))
    losses = [m.payload["metrics"]["train_loss"] for m in replies]
    losses = [v for v in losses if v == v]
    metrics["train_loss"] = float(np.mean(losses)) if losses else float("nan")
    return metrics
