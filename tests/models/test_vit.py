"""vit_tiny: shapes, readable attention maps, input checks, stages, and a short training run on real digits."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import mixlab
from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.models import Backbone, ViTTiny, create_model
from mixlab.models.vit import sincos_positions


@functools.cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits (real 8x8 handwriting) upsampled to (N, 1, 16, 16), normalised."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return (x - 0.3) / 0.4, torch.tensor(data.target, dtype=torch.long)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**options: object) -> ViTTiny:
    torch.manual_seed(0)
    return create_model("vit_tiny", 10, 1, 16, **{"dim": 32, "depth": 2, "heads": 2, **options})  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("size", "channels", "grid"), [(28, 1, (7, 7)), (32, 3, (8, 8)), (28, 3, (7, 7)), (32, 1, (8, 8))]
)
def test_shapes_for_28_and_32_inputs(size: int, channels: int, grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = create_model("vit_tiny", 7, in_channels=channels, input_size=size)
    assert isinstance(net, Backbone) and net.patch_size == 4 and net.grid_size == grid
    x = torch.randn(3, channels, size, size)
    with torch.no_grad():
        out, feats = net(x), net.features(x)
    assert out.shape == (3, 7) and feats.shape == (3, net.feature_dim) == (3, 96)
    torch.testing.assert_close(out, net.head(feats))
    assert net.pos_embed.shape == (1, grid[0] * grid[1] + 1, 96)


def test_default_size_width_depth_and_heads() -> None:
    net = ViTTiny()
    assert net.input_size == (28, 28) and net.in_channels == 1
    assert (net.feature_dim, len(net.blocks), net.blocks[0].attn.heads) == (96, 4, 3)
    assert net.attention_layers == tuple(f"blocks.{i}.attn.map" for i in range(4))
    assert net.stages == ("patch_embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "pool")


def test_rectangular_input_and_explicit_patch_size() -> None:
    net = create_model("vit_tiny", 2, in_channels=2, input_size=(2, 16, 24), patch_size=8, dim=16, depth=1, heads=2)
    assert net.grid_size == (2, 3)
    assert net(torch.randn(2, 2, 16, 24)).shape == (2, 2)


def test_attention_maps_read_by_hooks_sum_to_one_over_keys() -> None:
    net = tiny()
    modules = dict(net.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda _m, _a, out, name=name: seen.__setitem__(name, out))
        for name in net.attention_layers
    ]
    with torch.no_grad():
        net(torch.randn(5, 1, 16, 16))
    for handle in handles:
        handle.remove()
    assert list(seen) == list(net.attention_layers)
    tokens = 4 * 4 + 1
    for weights in seen.values():
        assert weights.shape == (5, 2, tokens, tokens)
        assert bool((weights >= 0).all())
        torch.testing.assert_close(weights.sum(-1), torch.ones(5, 2, tokens))


def test_attention_depends_on_the_input() -> None:
    net = tiny()
    seen: list[torch.Tensor] = []
    net.blocks[-1].attn.map.register_forward_hook(lambda _m, _a, out: seen.append(out))
    with torch.no_grad():
        net(torch.randn(2, 1, 16, 16))
    assert not torch.allclose(seen[0][0], seen[0][1])


def test_wrong_spatial_size_says_what_is_expected() -> None:
    net = create_model("vit_tiny", 10)
    with pytest.raises(MixlabValueError, match=r"\(N, 1, 28, 28\).*input_size"):
        net(torch.randn(2, 1, 32, 32))
    with pytest.raises(MixlabValueError, match=r"in_channels=1 but the input has 3 channels"):
        net(torch.randn(2, 3, 28, 28))
    with pytest.raises(MixlabValueError, match=r"\(N, 1, 28, 28\)"):
        net(torch.randn(28, 28))


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"input_size": 28, "patch_size": 5}, MixlabValueError, r"patch_size=5 must divide the input size \(28, 28\)"),
        ({"input_size": 30}, MixlabValueError, r"no default patch size fits input size \(30, 30\).*patch_size="),
        ({"input_size": 2}, MixlabValueError, r"input_size must be >= 4"),
        ({"dim": 32, "heads": 3}, MixlabValueError, r"heads=3 must divide dim=32"),
        ({"depth": 0}, MixlabValueError, r"depth must be an int >= 1; got 0"),
        ({"dropout": 1.5}, MixlabValueError, r"dropout must be a probability"),
        ({"patch_size": 2.0}, MixlabTypeError, r"patch_size must be an int"),
    ],
)
def test_bad_options_are_refused_at_construction(kwargs: dict, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        create_model("vit_tiny", 10, **kwargs)


def test_unknown_option_lists_the_accepted_ones() -> None:
    with pytest.raises(MixlabTypeError, match=r"does not take width; it accepts: depth, dim, dropout, heads"):
        create_model("vit_tiny", 10, width=3)


def test_default_patch_size_follows_the_input_size() -> None:
    sizes = {16: 4, 28: 4, 32: 4, 64: 4, 96: 8, 224: 16}
    for size, patch in sizes.items():
        assert ViTTiny(input_size=size, dim=8, depth=1, heads=1).patch_size == patch


def test_stages_run_in_order_and_each_matters() -> None:
    net = tiny().eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        outputs = net.stage_features(x)
        reference = net(x)
    assert list(outputs) == list(net.stages)
    torch.testing.assert_close(outputs["pool"], net.features(x))
    modules = dict(net.named_modules())
    for name in net.stages:
        handle = modules[name].register_forward_hook(lambda _m, _a, out: torch.zeros_like(out))
        with torch.no_grad():
            changed = net(x)
        handle.remove()
        assert not torch.allclose(changed, reference), name


def test_manifold_mixup_at_every_default_layer() -> None:
    net = tiny().eval()
    x, y = torch.randn(4, 1, 16, 16), torch.arange(4)
    assert net.default_manifold_layers == ("input", "patch_embed", "blocks.0")
    for layer in net.default_manifold_layers:
        mb = mixlab.ManifoldMixup(layers=[layer], model=net, lam=0.5)(x, y, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.isfinite(mb.forward(net)).all()


def test_channels_last_gives_the_same_output() -> None:
    net = tiny().eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), net(x))


def test_sincos_positions_are_distinct_and_bounded() -> None:
    codes = sincos_positions((4, 5), 32)
    assert codes.shape == (20, 32) and bool((codes.abs() <= 1).all())
    assert torch.cdist(codes, codes).add(torch.eye(20)).min() > 0  # every position has its own code


def test_trains_on_digits_and_gradients_reach_every_parameter() -> None:
    x, y = digits()
    net = tiny(dim=48)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(80):
        index = torch.randint(0, x.shape[0], (64,), generator=generator)
        loss = nn.functional.cross_entropy(net(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.6 * first, losses
