"""Reference models, build_model by name or import path, and the block structure."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from fedge.core.errors import ConfigError, FedgeError
from fedge.learning.models import MODELS, blocks, build_model, count_params

SMALL = ["mlp", "fedavg_cnn", "lenet5", "resnet_small", "resnet20"]


@pytest.fixture
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user module on sys.path with a class, a no-argument factory and a bad factory."""
    (tmp_path / "my_user_models.py").write_text(
        textwrap.dedent(
            """
            import math
            from torch import nn

            class Net(nn.Module):
                def __init__(self, input_shape, n_classes, width=8):
                    super().__init__()
                    self.body = nn.Sequential(
                        nn.Flatten(), nn.Linear(math.prod(input_shape), width),
                        nn.ReLU(), nn.Linear(width, n_classes),
                    )

                def forward(self, x):
                    return self.body(x)

            def tiny():
                return nn.Linear(4, 2)

            def not_a_model(input_shape, n_classes):
                return 42

            class Holder:
                Inner = Net
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_user_models"
    sys.modules.pop("my_user_models", None)


def test_reference_models_are_registered() -> None:
    assert set(SMALL) | {"resnet34"} <= set(MODELS.names())


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_forward_equals_blocks_in_order(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, 10).eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    out = x
    for block in blocks(model):
        out = block(out)
    assert out.shape == (2, 10)
    assert torch.equal(model(x), out)


@pytest.mark.parametrize(
    ("name", "params"),
    [("fedavg_cnn", 1_663_370), ("lenet5", 61_706), ("mlp", 784 * 200 + 200 * 200 + 2010 + 400)],
)
def test_parameter_counts_on_28x28(name: str, params: int) -> None:
    assert count_params(build_model(name, (1, 28, 28), 10)) == params


def test_resnet34_has_21_8_million_parameters() -> None:
    model = build_model("resnet34", (3, 224, 224), 1000)
    assert count_params(model) == pytest.approx(21.8e6, rel=0.01)
    assert count_params(model) == 21_797_672  # torchvision's resnet34


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone() -> None:
    before = torch.get_rng_state()
    a = build_model("lenet5", (1, 28, 28), 10, seed=3)
    b = build_model("lenet5", (1, 28, 28), 10, seed=3)
    c = build_model("lenet5", (1, 28, 28), 10, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.state_dict()["conv1.weight"], c.state_dict()["conv1.weight"])


def test_build_by_import_path(user_models: str) -> None:
    net = build_model(f"{user_models}:Net", (1, 4, 4), 3, width=5)
    assert net(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    assert count_params(net) == 16 * 5 + 5 + 5 * 3 + 3
    assert isinstance(build_model(f"{user_models}:tiny", (4,), 2), nn.Linear)
    assert isinstance(build_model(f"{user_models}:Holder.Inner", (4,), 2), nn.Module)
    assert isinstance(build_model("torch.nn:Identity", (4,), 2), nn.Identity)


@pytest.mark.parametrize(
    "path",
    ["no_such_package_xyz.models:Net", "torch.nn:NoSuchLayer", ":Net", "torch.nn:"],
)
def test_bad_import_path_is_named(path: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(path, (1, 28, 28), 10)
    assert info.value.field == "model" and info.value.value == path


def test_factory_errors_are_reported(user_models: str) -> None:
    with pytest.raises(ConfigError, match="not_a_model"):
        build_model(f"{user_models}:not_a_model", (4,), 2)
    with pytest.raises(ConfigError, match="depth"):
        build_model(f"{user_models}:Net", (4,), 2, depth=3)
    with pytest.raises(FedgeError, match="building it failed"):
        build_model(f"{user_models}:Net", (4,), 2, width=-1)


def test_unknown_name_lists_models_and_the_import_path_form() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet18", (1, 28, 28), 10)
    assert "fedavg_cnn" in info.value.allowed and "module:Attr" in info.value.allowed


@pytest.mark.parametrize(
    ("name", "shape", "n_classes", "field"),
    [
        ("fedavg_cnn", (784,), 10, "input_shape"),
        ("lenet5", (1, 2, 2), 10, "input_shape"),
        ("resnet34", (3, 16, 16), 10, "input_shape"),
        ("mlp", (0, 4), 10, "input_shape"),
        ("mlp", (4,), 1, "n_classes"),
    ],
)
def test_bad_shapes_are_rejected(
    name: str, shape: tuple[int, ...], n_classes: int, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(name, shape, n_classes)
    assert info.value.field == field


def test_unknown_model_parameter_is_named() -> None:
    with pytest.raises(ConfigError, match="hiden"):
        build_model("mlp", (4,), 2, hiden=(10,))
    assert count_params(build_model("mlp", (4,), 2, hidden=(3,))) == 4 * 3 + 3 + 3 * 2 + 2


def test_blocks_needs_a_sequential_structure() -> None:
    class Opaque(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    assert len(blocks(nn.Sequential(nn.ReLU(), nn.ReLU()))) == 2
    with pytest.raises(ConfigError, match="layers"):
        blocks(Opaque())
