"""The client-side pipeline as node middleware: which updates it touches, the delta form,
per-node memory, its own random streams, and the Ray split of respond / finish."""

from __future__ import annotations

import torch

from fedge.core.message import Message
from fedge.core.node import NodeApp
from fedge.core.update import Update, apply_delta
from fedge.runtime import NodeSet
from fedge.transforms import COMPRESSORS, ClientPipeline, make_transform

TIERS = {"cloud": "cloud", "edge0": "edge", "dev0": "device", "dev1": "device"}
GLOBAL = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}


def trained(msg, ctx):
    """A device that adds a fixed, dense change to the model it received."""
    start = msg.payload["model"].state
    step = torch.linspace(-1.0, 1.0, 12).reshape(3, 4)
    return msg.reply("update", {"update": Update({"w": start["w"] + step}, 1.0, origin="dev0")})


def _device(links, handler=trained):
    app = NodeApp("dev0", "device", {"train": handler})
    app.use(ClientPipeline(links, TIERS.__getitem__))
    return NodeSet({"dev0": app}, seed=7), app


def _ask(src="edge0", r=1):
    return Message(src, "dev0", "train", r, {"model": Update(GLOBAL, origin=src)})


def test_a_link_without_transforms_sends_the_state_as_it_is():
    nodes, _ = _device({"device-cloud": [make_transform("fp16", {}, "c", COMPRESSORS)]})
    reply, _ = nodes.deliver(_ask("edge0"), None)  # device-edge: nothing configured
    update = reply.payload["update"]
    assert update.kind == "state" and update.encoding is None


def test_topk_sends_the_delta_and_keeps_the_rest_for_later():
    topk = make_transform("topk", {"ratio": 0.25}, "c", COMPRESSORS)
    nodes, app = _device({"device-edge": [topk]})
    reply, _ = nodes.deliver(_ask(), None)
    sent = reply.payload["update"]
    assert sent.kind == "delta" and sent.encoding.codec == "sparse"
    change = torch.linspace(-1.0, 1.0, 12).reshape(3, 4)
    assert int((sent.state["w"] != 0).sum()) == 3  # ceil(0.25·12)
    residual = app.state["transforms"]["device-edge/0"]["residual"]["w"]
    torch.testing.assert_close(sent.state["w"] + residual, change)
    decoded = Message.decode(reply.encode()).payload["update"]
    assert torch.equal(decoded.state["w"], sent.state["w"])  # what arrives is what was sent
    model = apply_delta(GLOBAL, sent.state)
    assert torch.equal(model["w"] - GLOBAL["w"], sent.state["w"])


def test_transforms_run_in_order_and_draw_from_their_own_streams():
    chain = [
        make_transform("randk", {"ratio": 0.5}, "c", COMPRESSORS),
        make_transform("qsgd", {"levels": 3}, "c", COMPRESSORS),
    ]
    first = _device({"device-edge": chain})[0].deliver(_ask(r=4), None)[0]
    again = _device({"device-edge": chain})[0].deliver(_ask(r=4), None)[0]
    other = _device({"device-edge": chain})[0].deliver(_ask(r=5), None)[0]
    a, b, c = (m.payload["update"] for m in (first, again, other))
    assert a.encoding.codec == "qsgd"
    assert torch.equal(a.state["w"], b.state["w"])  # same seed, node, round, link
    assert not torch.equal(a.state["w"], c.state["w"])  # another round, another draw


def test_the_handler_rng_is_untouched_by_transforms():
    draws = []

    def noisy(msg, ctx):
        draws.append(ctx.rng.integers(1 << 30))
        return trained(msg, ctx)

    _device({}, noisy)[0].deliver(_ask(), None)
    qsgd = make_transform("qsgd", {"levels": 3}, "c", COMPRESSORS)
    _device({"device-edge": [qsgd]}, noisy)[0].deliver(_ask(), None)
    assert draws[0] == draws[1]


def test_respond_then_finish_equals_handle():
    """Ray runs the handler on a worker (respond) and the middleware where the node's state
    lives (finish): the result and the node's memory are those of one local delivery."""
    topk = make_transform("topk", {"ratio": 0.25}, "c", COMPRESSORS)
    local_nodes, local_app = _device({"device-edge": [topk]})
    split_nodes, split_app = _device({"device-edge": [topk]})
    whole, _ = local_nodes.deliver(_ask(), None)
    raw, _ = split_nodes.respond(_ask())
    assert raw.payload["update"].kind == "state"  # no middleware on the worker side
    assert "transforms" not in split_app.state
    msg = _ask()
    done = split_app.finish(msg, raw, split_app.context(split_nodes.seed, msg, None))
    assert torch.equal(done.payload["update"].state["w"], whole.payload["update"].state["w"])
    mem = split_app.state["transforms"]["device-edge/0"]["residual"]["w"]
    assert torch.equal(mem, local_app.state["transforms"]["device-edge/0"]["residual"]["w"])
