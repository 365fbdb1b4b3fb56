"""Properties every mixlab backbone must have: shapes, the features/head split, usable stages, Manifold Mixup."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

import mixlab
from mixlab.models import Backbone, create_model


@dataclass(frozen=True)
class Case:
    name: str
    num_classes: int
    x_shape: tuple[int, ...]
    in_channels: int = 1
    input_size: Any = None
    kwargs: dict[str, Any] = field(default_factory=dict)


CASES = {
    "cnn_small": Case("cnn_small", 10, (4, 1, 28, 28)),
    "cnn_small_rgb_rect": Case(
        "cnn_small", 3, (3, 3, 20, 12), in_channels=3, input_size=(3, 20, 12), kwargs={"dropout": 0.1}
    ),
    "cnn1d": Case("cnn1d", 10, (4, 1, 40)),
    "cnn1d_len64": Case("cnn1d", 4, (3, 2, 64), in_channels=2, input_size=64),
    "mlp": Case("mlp", 3, (4, 7), in_channels=7),
    "mlp_regression_bn": Case("mlp", 1, (4, 5), input_size=5, kwargs={"hidden": (16, 8, 4), "batch_norm": True}),
    "preact_resnet18": Case("preact_resnet18", 10, (2, 3, 16, 16), in_channels=3),
    "wrn_28_2": Case("wrn_28_2", 10, (2, 3, 16, 16), in_channels=3, kwargs={"dropout": 0.1}),
}

_CACHE: dict[str, Backbone] = {}


def build(key: str) -> tuple[Backbone, torch.Tensor]:
    """A fresh (deep-copied) model for ``key`` in eval mode and a fixed input batch."""
    case = CASES[key]
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = create_model(case.name, case.num_classes, case.in_channels, case.input_size, **case.kwargs)
    model = copy.deepcopy(_CACHE[key]).eval()
    x = torch.randn(case.x_shape, generator=torch.Generator().manual_seed(1))
    return model, x


def targets(model: Backbone, n: int) -> torch.Tensor:
    if model.num_classes == 1:
        return torch.randn(n, 1, generator=torch.Generator().manual_seed(2))
    return torch.randint(0, model.num_classes, (n,), generator=torch.Generator().manual_seed(2))


def loss_fn(model: Backbone, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(out, y) if model.num_classes == 1 else nn.functional.cross_entropy(out, y)


keys = pytest.mark.parametrize("key", list(CASES))


@keys
def test_forward_is_head_of_features(key: str) -> None:
    model, x = build(key)
    assert isinstance(model, Backbone)
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (model.feature_dim, model.num_classes)
    with torch.no_grad():
        out, feats = model(x), model.features(x)
    assert out.shape == (x.shape[0], CASES[key].num_classes)
    assert feats.shape == (x.shape[0], model.feature_dim)
    torch.testing.assert_close(out, model.head(feats))
    assert torch.isfinite(out).all()


@keys
def test_stages_resolve_and_run_in_forward_order(key: str) -> None:
    model, x = build(key)
    modules = dict(model.named_modules())
    assert model.stages, "every built-in model names its stages"
    assert all(name in modules for name in model.stages)
    assert set(model.default_manifold_layers) <= {"input", *model.stages}
    assert model.default_manifold_layers[0] == "input"
    order: list[str] = []
    handles = [
        modules[name].register_forward_hook(lambda _m, _a, _o, name=name: order.append(name)) for name in model.stages
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    assert order == list(model.stages)
    with torch.no_grad():
        outputs = model.stage_features(x)
    assert list(outputs) == list(model.stages)
    assert all(isinstance(t, torch.Tensor) and t.shape[0] == x.shape[0] for t in outputs.values())
    assert not any(module._forward_hooks for module in model.modules()), "stage_features must remove its hooks"


@pytest.mark.parametrize("key", ["cnn_small", "cnn1d", "mlp"])
def test_last_stage_output_is_the_features(key: str) -> None:
    model, x = build(key)
    with torch.no_grad():
        torch.testing.assert_close(model.stage_features(x)[model.stages[-1]], model.features(x))


@keys
def test_zeroing_any_stage_changes_the_logits(key: str) -> None:
    model, x = build(key)
    modules = dict(model.named_modules())
    with torch.no_grad():
        reference = model(x)
        for name in model.stages:
            handle = modules[name].register_forward_hook(lambda _m, _a, output: torch.zeros_like(output))
            try:
                changed = model(x)
            finally:
                handle.remove()
            assert not torch.allclose(changed, reference), f"zeroing {name!r} did not change the output"


@keys
def test_manifold_mixup_at_each_default_layer(key: str) -> None:
    model, x = build(key)
    y = targets(model, x.shape[0])
    with torch.no_grad():
        reference = model(x)
        full = mixlab.ManifoldMixup(layers=model.default_manifold_layers, model=model, lam=0.5)
        assert full(x, y, generator=torch.Generator().manual_seed(0)).forward(model).shape == reference.shape
        for layer in model.default_manifold_layers:
            mixer = mixlab.ManifoldMixup(layers=[layer], model=model, lam=0.5)
            mb = mixer(x, y, generator=torch.Generator().manual_seed(3))
            out = mb.forward(model)
            assert out.shape == reference.shape
            assert torch.isfinite(out).all()
            if not torch.equal(mb.perm, torch.arange(x.shape[0])):
                assert not torch.allclose(out, reference), f"mixing at {layer!r} changed nothing"


@pytest.mark.parametrize("key", [k for k, case in CASES.items() if len(case.x_shape) == 4])
def test_channels_last_gives_the_same_output(key: str) -> None:
    model, x = build(key)
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), reference)
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x.contiguous(memory_format=torch.channels_last)), reference)


def test_cnn1d_accepts_a_non_contiguous_input() -> None:
    model, x = build("cnn1d")
    strided = torch.stack([x, -x], dim=-1)[..., 0]  # every other element of a wider tensor
    assert not strided.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(model(strided), model(x))


@keys
def test_one_sgd_step_updates_parameters(key: str) -> None:
    model, x = build(key)
    model.train()
    y = targets(model, x.shape[0])
    before = [p.detach().clone() for p in model.parameters()]
    head_before = model.head.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = loss_fn(model, model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert not torch.equal(head_before, model.head.weight)


def test_manifold_mixup_trains_with_gradients_through_the_mix() -> None:
    model, x = build("cnn_small")
    model.train()
    y = targets(model, x.shape[0])
    mixer = mixlab.ManifoldMixup(layers=["block2"], model=model)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(0))
    loss = mixlab.losses.mixed_cross_entropy(mb.forward(model), mb)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.block1[0].weight.grad is not None and model.block1[0].weight.grad.abs().sum() > 0
