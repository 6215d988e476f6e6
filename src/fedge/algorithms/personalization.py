"""Personalization (SPEC §3H): local fine-tuning after any federated algorithm, FedPer, Ditto.

Every method here is evaluated the way the decentralized methods are: each device keeps
``data.local_test_fraction`` of its samples (default 0.2) as its own test split, and a round's
``accuracy`` (precision, recall, F1, loss) is the mean over the devices of each device's
*personal* model on its own split, with the spread across devices: ``accuracy_std``
(population), ``accuracy_min``, ``accuracy_p10``, ``accuracy_p90``, ``accuracy_max``
(``fedge.algorithms.hierarchical.spread_summary``, the summary DPMN reports). Where the
algorithm has a global model (FedAvg and its family, HierFAVG, Ditto) the same global model
on the shared test set is ``global_model_accuracy`` / ``global_model_loss``.

- **Local fine-tuning** (``[personalization] finetune_epochs = N``, optional
  ``finetune_lr``): at every evaluated round each device starts from the current global
  model (FedPer: the global body with its own head; Ditto: its personal model), trains N
  epochs on its own training split with the ``[training]`` optimizer (``finetune_lr``
  instead of ``training.lr`` when set) and evaluates the result on its own test split. N = 0
  evaluates the model as received. The fine-tuned model is thrown away: it never feeds back
  into training.
- **FedPer** (Arivazhagan et al. 2019, arXiv:1912.00818): the model's last
  ``head_layers`` layers (modules with parameters, in registration order) are a personal
  head that never leaves the device; the cloud runs FedAvg on the body only, so the
  requests and updates carry the body's tensors alone. Each device keeps its head in its
  node state (checkpointed with the run).
- **Ditto** (Li et al. 2021, ICML, arXiv:2012.04221, Algorithm 1): every selected device
  trains the received global model w as in FedAvg (the update it sends), and its personal
  model v with ``ditto_lambda``/2·‖v − w‖² towards the w it received, for the same local
  epochs or steps (``[training]``). v starts as the agreed initial model and is kept in the
  node state.

Interpretations: a personalized evaluation is a protocol step, not a free measurement. The
cloud sends every reachable device an ``personal_eval`` request (carrying the model a device
needs: the global model for fine-tuning, the body for FedPer, nothing for Ditto, whose
personal model is on the device) at the rounds ``federation.evaluate_every`` selects and the
last one; its bytes and time are charged as any message, and the device's fine-tuning
(training FLOPs per sample) and own-split forward passes (forward FLOPs per sample) are
charged to the device as the request's work, so energy and simulated time include them.
Evaluating less often costs less. Devices a round cannot reach (dropout) are left out of
that round's summary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedge.algorithms.apps import LocalTrainer
from fedge.algorithms.base import (
    EVAL_BATCH,
    AlgorithmSpec,
    Assembly,
    BuildContext,
    Evaluator,
    RoundLoop,
    RoundRecord,
    register_algorithm,
)
from fedge.algorithms.federation import FederationSettings, assemble_fedavg
from fedge.algorithms.hierarchical import spread_summary
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.node import Handler, LazyApps, NodeApp, NodeContext, each_app
from fedge.core.settings import Section
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update, Work, clone_state
from fedge.learning import ArrayDataset, TrainConfig, evaluate, load_state, local_train, state_of


class PersonalizationSettings(Section):
    """``[personalization]``: fine-tuning after any federated algorithm, FedPer's head, Ditto's
    λ."""

    section: ClassVar[str] = "personalization"

    finetune_epochs: int | None = Field(
        None,
        ge=0,
        description="local epochs on each device's own training split before its own-split "
        "evaluation; None: no fine-tuning (0: evaluate the received model per device)",
    )
    finetune_lr: float | None = Field(None, gt=0, description="None: training.lr")
    head_layers: int = Field(1, ge=1, description="FedPer: the model's last layers kept local")
    ditto_lambda: float = Field(1.0, ge=0, description="Ditto: weight of λ/2·‖v − w‖²")


def head_keys(
    model: nn.Module, layers: int, field: str = "personalization.head_layers"
) -> list[str]:
    """The state keys of the model's last ``layers`` layers: modules that hold parameters
    directly, in registration order (for a Sequential CNN, the last Linear layers)."""
    owners = [
        name
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    if layers >= len(owners):
        allowed = f"an integer in [1, {len(owners) - 1}] (the model has {len(owners)} layers)"
        raise ConfigError(field, layers, allowed)
    chosen = owners[-layers:]
    keys = list(model.state_dict())
    return [k for k in keys if any(k.startswith(f"{name}.") for name in chosen)]


def without(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> ModelState:
    """``state`` without ``keys`` (FedPer's body)."""
    drop = set(keys)
    return {k: v for k, v in state.items() if k not in drop}


@dataclass
class PersonalDevice:
    """A device's personal side: FedPer's head or Ditto's personal model in its node state,
    and its own-split evaluation after optional fine-tuning.

    ``kind`` is what the device evaluates: ``global`` the model a ``personal_eval`` request
    carries, ``fedper`` the received body with its own head, ``ditto`` its personal model.
    The model object is shared by every device of a process: each handler loads what it
    needs first. ``initial`` is the agreed initial model (nothing is sent for it).
    """

    trainer: LocalTrainer
    test: ArrayDataset
    settings: PersonalizationSettings
    flops_forward: float
    initial: ModelState
    kind: str = "global"
    head: tuple[str, ...] = ()

    # -- FedPer ---------------------------------------------------------------------------
    def _with_head(self, message: Message, ctx: NodeContext) -> Message:
        """``message`` with its body completed by this device's head."""
        head = ctx.state.get("head") or {k: self.initial[k] for k in self.head}
        received: Update = message.payload["model"]
        full = received.with_state({**received.state, **head})
        payload = {**message.payload, "model": full}
        return Message(message.src, message.dst, message.kind, message.round, payload)

    def fedper_train(self, message: Message, ctx: NodeContext) -> Message:
        """Train body + own head from the received body; keep the head, send the body."""
        reply = self.trainer.train(self._with_head(message, ctx), ctx)
        update: Update = reply.payload["update"]
        ctx.state["head"] = {k: update.state[k].clone() for k in self.head}
        body = update.with_state(without(update.state, self.head))
        return message.reply("update", {"update": body})

    def fedper_loss(self, message: Message, ctx: NodeContext) -> Message:
        """The device's loss under the received body with its own head (power-of-choice)."""
        return self.trainer.loss(self._with_head(message, ctx), ctx)

    # -- Ditto ----------------------------------------------------------------------------
    def ditto_train(self, message: Message, ctx: NodeContext) -> Message:
        """FedAvg's local update of w, then the personal model v with λ/2·‖v − w‖²."""
        reply = self.trainer.train(message, ctx)
        personal, samples = ditto_step(
            self.trainer.model,
            ctx.state.get("personal", self.initial),
            message.payload["model"].state,
            self.trainer.data,
            self.trainer.config,
            self.settings.ditto_lambda,
            torch.Generator().manual_seed(int(ctx.rng.integers(2**62))),
        )
        ctx.state["personal"] = personal
        ctx.add_work(Work(samples, samples * self.trainer.flops_per_sample))
        return reply

    # -- evaluation -----------------------------------------------------------------------
    def start(self, message: Message, ctx: NodeContext) -> ModelState:
        """The model this device evaluates (before fine-tuning)."""
        if self.kind == "ditto":
            personal: ModelState = ctx.state.get("personal", self.initial)
            return personal
        if self.kind == "fedper":
            state: ModelState = self._with_head(message, ctx).payload["model"].state
            return state
        received: ModelState = message.payload["model"].state
        return received

    def personal_eval(self, message: Message, ctx: NodeContext) -> Message:
        """Fine-tune (``finetune_epochs``, 0 when unset) from ``start``, then evaluate on
        the own test split; both charged as this request's work."""
        model, data = self.trainer.model, self.trainer.data
        load_state(model, self.start(message, ctx))
        epochs = self.settings.finetune_epochs or 0
        samples = 0
        if epochs > 0:
            cfg = finetune_config(self.trainer.config, epochs, self.settings.finetune_lr)
            gen = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
            samples = local_train(model, data, cfg, gen).samples
        n = len(self.test)
        flops = samples * self.trainer.flops_per_sample + n * self.flops_forward
        ctx.add_work(Work(samples + n, flops))
        out: dict[str, Any] = {}
        if n:
            out["eval"] = evaluate(model, self.test, batch_size=EVAL_BATCH).as_dict()
        return message.reply("personal_eval", out)

    def handlers(self) -> dict[str, Handler]:
        """The device's handlers for its kind (``global`` adds only ``personal_eval``)."""
        out: dict[str, Handler] = {"personal_eval": self.personal_eval}
        if self.kind == "fedper":
            out.update(train=self.fedper_train, loss=self.fedper_loss)
        elif self.kind == "ditto":
            out.update(train=self.ditto_train, loss=self.trainer.loss)
        return out


def finetune_config(cfg: TrainConfig, epochs: int, lr: float | None) -> TrainConfig:
    """``cfg`` for ``epochs`` whole epochs (not steps), no proximal term, ``lr`` if given."""
    changes: dict[str, Any] = {"epochs": epochs, "steps": 0, "proximal_mu": 0.0}
    if lr is not None:
        changes["lr"] = lr
    return cfg.model_copy(update=changes)


def ditto_step(
    model: nn.Module,
    personal: ModelState,
    global_state: ModelState,
    data: ArrayDataset,
    cfg: TrainConfig,
    lam: float,
    generator: torch.Generator,
) -> tuple[ModelState, int]:
    """Ditto's personal update: ``cfg``'s local training of v from ``personal`` with
    λ/2·‖v − w‖² (FedProx's proximal term, ``training.proximal_mu`` = λ) towards
    ``global_state``; λ = 0 is plain local SGD. Returns (v, samples processed)."""
    load_state(model, personal)
    prox = cfg.model_copy(update={"proximal_mu": lam})
    result = local_train(model, data, prox, generator, global_params=global_state if lam else None)
    return clone_state(state_of(model)), result.samples


@dataclass
class Personalized(RoundLoop):
    """Wraps a coordinator: its rounds, then, at evaluated rounds, every reachable device's
    own-split evaluation (``personal_eval``) summarised with its spread.

    ``head`` names keys that never leave the cloud's hands towards devices nor come back
    (FedPer's head): the inner coordinator runs on the state without them, and the cloud's
    copy of them stays the initial one. ``send`` is what a ``personal_eval`` request
    carries: the global model (fine-tuning), the body (FedPer) or nothing (Ditto).
    """

    inner: RoundLoop
    evaluate_every: int = 1
    head: tuple[str, ...] = ()
    send: bool = True
    global_model: Evaluator | None = None
    """Evaluates the global model on the shared test set (``global_model_*``); None when
    there is no global model (FedPer)."""

    def step(
        self, transport: Transport, state: ModelState, rng: np.random.Generator, r: int, rounds: int
    ) -> RoundRecord:
        record = self.inner.step(transport, without(state, self.head), rng, r, rounds)
        full = {**state, **record.state}
        if not (r % self.evaluate_every == 0 or r == rounds):
            return RoundRecord(r, full, record.metrics)
        payload: dict[str, Any] = {}
        if self.send:
            payload["model"] = Update(without(full, self.head), origin=transport.node_id, round=r)
        here = transport.node_id
        asks = [Message(here, d, "personal_eval", r, payload) for d in transport.nodes("device")]
        evals = [m.payload["eval"] for m in transport.send(asks) if "eval" in m.payload]
        metrics = {**record.metrics, **spread_summary(evals), "evaluated_devices": len(evals)}
        if self.global_model is not None:
            result = self.global_model(full)
            metrics.update(
                global_model_accuracy=result["accuracy"], global_model_loss=result["loss"]
            )
        return RoundRecord(r, full, metrics, evaluated=True)


def personal_device(
    ctx: BuildContext, kind: str = "global", head: Sequence[str] = ()
) -> Callable[[str], PersonalDevice]:
    """Makes a device's ``PersonalDevice`` over its own training and test splits, when the
    device is first reached (a large population stays lazy)."""
    initial = clone_state(state_of(ctx.model))
    flops = ctx.profile.flops_train
    topology = ctx.system.topology

    def make(device: str) -> PersonalDevice:
        i = topology.device_index(device)
        return PersonalDevice(
            LocalTrainer(ctx.model, ctx.device_dataset(i), ctx.training, flops),
            ctx.train.subset(ctx.local_tests[i]),
            ctx.config.personalization,
            ctx.profile.flops_forward,
            initial,
            kind,
            tuple(head),
        )

    return make


def _personal_fedavg(ctx: BuildContext, kind: str, head: Sequence[str] = ()) -> Assembly:
    """FedAvg (the cloud's coordinator as ``fedavg`` builds it) over personal devices."""
    base = assemble_fedavg(ctx)
    assert isinstance(base.coordinator, RoundLoop)
    device = personal_device(ctx, kind, head)

    def make(d: str) -> NodeApp:
        return NodeApp(d, "device", device(d).handlers())

    topology = ctx.system.topology
    apps = LazyApps(
        {"cloud": base.apps["cloud"]}, ctx.system.ids("device"), make, topology.is_device
    )
    coordinator = Personalized(
        base.coordinator,
        ctx.config.federation.evaluate_every,
        tuple(head),
        send=kind == "fedper",
        global_model=ctx.evaluator() if kind == "ditto" else None,
    )
    return Assembly(apps, coordinator)


def assemble_fedper(ctx: BuildContext) -> Assembly:
    """FedPer: FedAvg on the body; each device's head stays on the device."""
    head = head_keys(ctx.model, ctx.config.personalization.head_layers)
    return _personal_fedavg(ctx, "fedper", head)


def assemble_ditto(ctx: BuildContext) -> Assembly:
    """Ditto: FedAvg on w; every selected device also trains its personal v towards w."""
    return _personal_fedavg(ctx, "ditto")


def finetuning(config: Any) -> bool:
    """Whether ``[personalization] finetune_epochs`` is set."""
    return config.personalization.finetune_epochs is not None


def check_personalization(config: Any, spec: AlgorithmSpec) -> None:
    """Before any work: fine-tuning needs an algorithm with a global model (or one that
    fine-tunes its own personal models) and a non-empty own test split."""
    personal = spec.finetune == "own"
    if not (finetuning(config) or personal):
        return
    if finetuning(config) and spec.finetune == "none":
        allowed = f"unset for algorithm {spec.name!r}, whose rounds carry no global model"
        raise ConfigError(
            "personalization.finetune_epochs", config.personalization.finetune_epochs, allowed
        )
    if config.data.local_test_fraction == 0:
        why = "fine-tuning" if finetuning(config) else f"algorithm {spec.name!r}"
        allowed = f"a share in (0, 1) for {why}: each device is evaluated on its own test split"
        raise ConfigError("data.local_test_fraction", 0, allowed)


def personalize(ctx: BuildContext, spec: AlgorithmSpec, assembly: Assembly) -> Assembly:
    """With fine-tuning set and an algorithm whose records carry the global model: every
    device answers ``personal_eval`` and the coordinator evaluates through it."""
    if not finetuning(ctx.config) or spec.finetune != "global":
        return assembly
    assert isinstance(assembly.coordinator, RoundLoop), "fine-tuning wraps a round loop"
    device = personal_device(ctx)

    def install(app: NodeApp) -> None:
        if app.tier == "device":
            app.on("personal_eval", device(app.node_id).personal_eval)
            app.portable = app.portable | {"personal_eval"}  # a function of the message alone

    each_app(assembly.apps, install)
    coordinator = Personalized(
        assembly.coordinator, ctx.config.federation.evaluate_every, global_model=ctx.evaluator()
    )
    return Assembly(assembly.apps, coordinator, assembly.driver)


_FEDPER = "FedPer: FedAvg on the body, each device keeps its head (personalization.head_layers)"
_DITTO = "Ditto: FedAvg plus a personal model per device pulled to the global one"
for _name, _text, _hook in (
    ("fedper", _FEDPER, assemble_fedper),
    ("ditto", _DITTO + " (personalization.ditto_lambda)", assemble_ditto),
):
    register_algorithm(
        AlgorithmSpec(
            _name,
            _text,
            _hook,
            FederationSettings,
            {"server_optimizer": "none"},
            links=("device-cloud",),
            personalized=True,
            finetune="own",
        )
    )
