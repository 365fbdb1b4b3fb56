"""patch_cnn: the patch-wise two-layer network of the feature-learning theory of mixup."""

from __future__ import annotations

import pytest
import torch

from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.models import create_model
from mixlab.models.patch import PatchCNN, relu_power, smoothed_relu


def test_logits_are_each_class_filters_activations_summed_over_patches() -> None:
    torch.manual_seed(0)
    net = create_model("patch_cnn", 3, in_channels=4, input_size=6, filters_per_class=2, power=3.0, threshold=0.5)
    x = torch.randn(5, 4, 6)
    w = net.filters.weight.detach()  # (3 * 2, 6), filters grouped by class
    per_filter = smoothed_relu(torch.einsum("npd,rd->npr", x, w), 3.0, 0.5).sum(dim=1)
    expected = per_filter.view(5, 3, 2).sum(dim=2)
    assert torch.allclose(net(x), expected, atol=1e-6)
    averaged = PatchCNN(3, 4, 6, filters_per_class=2, power=3.0, threshold=0.5, average_filters=True)
    averaged.filters.weight.data.copy_(w)
    assert torch.allclose(averaged(x), expected / 2, atol=1e-6)


def test_only_the_filters_train() -> None:
    net = create_model("patch_cnn", 2, in_channels=3, input_size=8)
    trainable = [name for name, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["filters.weight"] and not net.head.weight.requires_grad
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 8)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert net.filters.weight.grad is not None and net.head.weight.grad is None


def test_activations() -> None:
    z = torch.linspace(-1, 2, 301, dtype=torch.float64, requires_grad=True)
    y = smoothed_relu(z, 4.0, 0.5)
    (slope,) = torch.autograd.grad(y.sum(), z)
    assert (y[z <= 0] == 0).all()
    assert torch.allclose(y[z >= 0.5], z[z >= 0.5] - 0.75 * 0.5)  # linear with slope 1 above the threshold
    assert torch.allclose(slope[(z > 0) & (z < 0.5)], (z[(z > 0) & (z < 0.5)] / 0.5) ** 3)  # (z/t)^(q-1) below
    near = torch.tensor([-1e-7, 1e-7, 0.5 - 1e-7, 0.5 + 1e-7], dtype=torch.float64, requires_grad=True)
    (edges,) = torch.autograd.grad(smoothed_relu(near, 4.0, 0.5).sum(), near)
    assert torch.allclose(edges, torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64), atol=1e-5)  # no jumps
    assert relu_power(torch.tensor([-2.0, 0.5, 2.0]), 3.0).tolist() == [0.0, 0.125, 8.0]


def test_default_threshold_is_one_over_the_classes_and_init_scale_is_used() -> None:
    torch.manual_seed(0)
    net = PatchCNN(num_classes=4, in_channels=3, input_size=500, init_std=0.05)
    assert net.filters.threshold == 0.25
    assert net.filters.weight.std().item() == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize("input_size", [7, (7,), (3, 7)])
def test_input_size_forms(input_size) -> None:
    net = create_model("patch_cnn", 2, in_channels=3, input_size=input_size)
    assert net.patch_dim == 7 and net(torch.zeros(1, 3, 7)).shape == (1, 2)


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"input_size": None}, MixlabTypeError, "needs input_size"),
    ({"input_size": (4, 7)}, MixlabValueError, "4 patches"),
    ({"activation": "gelu"}, UnknownNameError, "relu_power"),
    ({"power": 0.5}, MixlabValueError, "power must be >= 1"),
    ({"filters_per_class": 0}, MixlabValueError, "filters_per_class"),
    ({"init_std": 0.0}, MixlabValueError, "init_std"),
    ({"average_filters": 1}, MixlabTypeError, "average_filters"),
])  # fmt: skip
def test_bad_options_are_refused(options: dict, error: type, message: str) -> None:
    kwargs = {"in_channels": 3, "input_size": 7, **options}
    with pytest.raises(error, match=message):
        create_model("patch_cnn", 2, **kwargs)


def test_wrong_input_shape_says_what_is_expected() -> None:
    net = create_model("patch_cnn", 2, in_channels=3, input_size=7)
    with pytest.raises(MixlabValueError, match=r"\(N, 3, 7\)"):
        net(torch.zeros(2, 3, 8))
