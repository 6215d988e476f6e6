"""The client-side update pipeline: transforms configured per link, applied as middleware.

A link is named by the tiers of the sender and the receiver of a reply: ``device-edge``,
``device-cloud``, ``edge-cloud``, ``edge-edge``, ``device-device``. Each link has an ordered
list of transforms (compression; attacks, local DP and masking use the same seat).
When a node replies, every ``Update`` in the reply's payload goes through the transforms of
the reply's link, in order.

Order on an attacker's link: its ``[[attack]]`` transforms come first, then the link's
``[[compression]]`` transforms, so an attacker poisons the update it computed and then
compresses it like every honest sender (the receiver cannot tell it from the wire form).

Delta form: when the request carried a model (an ``Update`` of kind "state"), a "state"
update is first turned into the delta from that model, since compression and error feedback
work on what changed; the receiving aggregator adds it back (``ServerPipeline.prepare``).
Without a reference model (a neighbour asking for a published model) the state is sent as
it is.

State and randomness: a transform keeps what it must remember (an error-feedback residual)
in ``memory``, a dict that lives in the node's own state under ``"transforms"``, keyed by
link and position, so checkpoints carry it and every engine keeps it where the node lives.
Its random draws come from a generator derived from (node seed, node, round, link,
position), never from the handler's generator, so adding a transform does not change
training.

Local differential privacy (``fedge.transforms.privacy``, configured by ``[privacy]``) is put
first on the device's uplink: the device clips and noises its delta before any compressor
sees it, so compression is post-processing of a private release.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.node import NodeContext, derive_seed
from fedge.core.registry import Registry
from fedge.core.update import ModelState, Update, delta

LINKS = ("device-edge", "device-cloud", "edge-cloud", "edge-edge", "device-device")


class Transform(Protocol):
    """One entry of a link's pipeline: ``send`` maps an outgoing update to what travels."""

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        """``update`` is a delta when the request carried a reference model, else a state.
        ``memory`` persists at this node for this link and position; ``rng`` is this
        transform's own stream for this node, round and link."""
        ...


TRANSFORMS: Registry[Callable[..., Transform]] = Registry("transform")
"""Transform factories by name; a factory's keyword arguments are its parameters."""


def make_transform(
    name: str,
    params: Mapping[str, Any],
    where: str,
    registry: Registry[Callable[..., Transform]] = TRANSFORMS,
    name_field: str = "method",
) -> Transform:
    """Build transform ``name`` (from ``registry``) with ``params``; a name or parameter that
    is not known, or a bad value, raises ConfigError naming ``where`` (``compression[0]``)
    and the key that named it (``name_field``: ``method``, or ``kind`` for an attack)."""
    factory = registry.get(name, f"{where}.{name_field}")
    signature = inspect.signature(factory)
    allowed = [p for p in signature.parameters if p != "self"]
    for key in params:
        if key not in allowed:
            choices = "one of " + ", ".join(allowed) if allowed else "no parameters"
            raise ConfigError(f"{where}.{key}", params[key], f"a parameter of {name!r}: {choices}")
    try:
        return factory(**params)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.field}", exc.value, exc.allowed) from None
    except TypeError as exc:
        raise ConfigError(where, dict(params), f"parameters of {name!r} ({exc})") from None


def reference_model(request: Message) -> ModelState | None:
    """The model a request carried (its first ``Update`` of kind "state"), if any."""
    for value in request.payload.values():
        if isinstance(value, Update) and value.kind == "state":
            return value.state
    return None


@dataclass
class ClientPipeline:
    """Middleware that applies each link's transforms to the updates a node sends."""

    links: Mapping[str, Sequence[Transform]]
    tier_of: Callable[[str], str]
    """Tier of a node id, to name the link of a reply."""

    def __call__(self, request: Message, reply: Message, ctx: NodeContext) -> Message:
        link = f"{ctx.tier}-{self.tier_of(reply.dst)}"
        transforms = self.links.get(link, ())
        if not transforms or not any(isinstance(v, Update) for v in reply.payload.values()):
            return reply
        reference = reference_model(request)
        payload = dict(reply.payload)
        for key, value in reply.payload.items():
            if isinstance(value, Update):
                payload[key] = self._send(value, reference, link, transforms, ctx, request)
        return Message(reply.src, reply.dst, reply.kind, reply.round, payload)

    def _send(
        self,
        update: Update,
        reference: ModelState | None,
        link: str,
        transforms: Sequence[Transform],
        ctx: NodeContext,
        request: Message,
    ) -> Update:
        if update.kind == "state" and reference is not None:
            update = update.with_state(delta(update.state, reference), "delta")
        memories = ctx.state.setdefault("transforms", {})
        for i, transform in enumerate(transforms):
            memory = memories.setdefault(f"{link}/{i}", {})
            seed = derive_seed(ctx.seed, ctx.node_id, request.round, request.kind, link, i)
            update = transform.send(update, memory, np.random.default_rng(seed))
        return update
