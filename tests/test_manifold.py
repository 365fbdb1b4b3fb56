"""Manifold Mixup: the hooked forward equals mixing the hidden state by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixlab


class Net(nn.Module):
    """A small conv net with nested module names."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean(dim=(2, 3)))


def mix(h: torch.Tensor, mb: mixlab.MixedBatch) -> torch.Tensor:
    lam = mb.lam.view(-1, *([1] * (h.ndim - 1)))
    return lam * h + (1 - lam) * h[mb.perm]


def by_hand(net: Net, x: torch.Tensor, mb: mixlab.MixedBatch, layer: str) -> torch.Tensor:
    """Run the layers one by one, mixing after ``layer``."""
    h = mix(x, mb) if layer == "input" else x
    h = net.stem(h)
    if layer == "stem":
        h = mix(h, mb)
    for i, module in enumerate(net.block):
        h = module(h)
        if layer == f"block.{i}":
            h = mix(h, mb)
    if layer == "block":
        h = mix(h, mb)
    return net.head(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("layer", ["input", "stem", "block.0", "block.1", "block"])
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_mixed_forward_equals_the_reference(layer: str, lam_mode: str) -> None:
    torch.manual_seed(0)
    net = Net()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    mixer = mixlab.ManifoldMixup(layers=[layer], model=net, lam_mode=lam_mode)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(1))
    out = mb.forward(net)
    torch.testing.assert_close(out, by_hand(net, x, mb, layer), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, net(x)), "the forward pass really mixed"
    # the hook is gone afterwards: a plain forward is unmixed
    torch.testing.assert_close(net(x), by_hand(net, x, mixlab.MixedBatch.unmixed(x, y), "input"))


def test_layer_is_drawn_among_the_candidates_and_gradients_flow() -> None:
    net = Net()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    layers = ["input", "stem", "block.1"]
    mixer = mixlab.create_mixer("manifold_mixup", layers=layers, alpha=2.0)
    g = torch.Generator().manual_seed(0)
    seen = {mixer.sample(x, y, g, context={"model": net}).extra["layer"] for _ in range(40)}
    assert seen == set(layers)
    mb = mixer(x, y, generator=g, context={"model": net})
    loss = mixlab.losses.mixed_cross_entropy(mb.forward(net), mb)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_works_under_ddp_style_module_prefix() -> None:
    class Wrapper(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    net = Net()
    wrapped = Wrapper(net)
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    mb = mixlab.ManifoldMixup(layers=["stem"], model=wrapped)(x, y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mb.forward(wrapped), by_hand(net, x, mb, "stem"), atol=1e-5, rtol=1e-5)


def test_unknown_layer_lists_the_model_modules() -> None:
    with pytest.raises(mixlab.errors.UnknownNameError) as info:
        mixlab.ManifoldMixup(layers=["stem", "blok"], model=Net())
    assert "blok" in str(info.value) and "block.1" in str(info.value) and isinstance(info.value, ValueError)


def test_hidden_layer_mixing_accepts_token_ids() -> None:
    net = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(8 * 5, 3))
    tokens, y = torch.randint(0, 20, (4, 5)), torch.arange(4) % 3
    mixer = mixlab.ManifoldMixup(layers=["0"], model=net)
    mb = mixer(tokens, y, generator=torch.Generator().manual_seed(0))
    h = net[0](tokens)
    lam = mb.lam.view(-1, 1, 1)
    expected = net[2](net[1](lam * h + (1 - lam) * h[mb.perm]))
    torch.testing.assert_close(mb.forward(net), expected)
    with pytest.raises(mixlab.errors.MixlabTypeError):
        mixlab.ManifoldMixup(layers=["input", "0"], model=net)(tokens, y)
