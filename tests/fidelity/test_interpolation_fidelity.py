"""mixup, Midpoint Mixup and Manifold Mixup against their formulas and the authors' CIFAR setup.

mixup: Zhang et al., ICLR 2018, arXiv 1710.09412 (facebookresearch/mixup-cifar10 ``train.py``:
one λ ~ Beta(1, 1) and one permutation per batch). Midpoint Mixup: Chidambaram, Wang, Wu & Ge,
ICML 2023, arXiv 2210.13512 (λ = 1/2). Manifold Mixup: Verma et al., ICML 2019, arXiv 1806.05236
(vikasverma1077/manifold_mixup ``supervised/models/preresnet.py``: the layer drawn uniformly among
the input and the outputs of the first two residual stages, α = 2, one λ and one permutation).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import mixlab
from mixlab.errors import MixlabValueError
from mixlab.models import create_model
from mixlab.models.resnet import PreActResNet


def _images(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2][:n])


def test_mixup_default_is_the_authors_cifar_alpha_and_one_lam_per_batch():
    mixer = mixlab.Mixup()
    assert mixer.lam_sampler.alpha == 1.0 and mixer.lam_mode == "batch"
    x, y = _images()
    mb = mixer(x, y, generator=torch.Generator().manual_seed(1))
    lam = float(mb.lam[0])
    assert bool((mb.lam == lam).all()) and 0 < lam < 1
    assert sorted(mb.perm.tolist()) == list(range(6))
    for i, j in enumerate(mb.perm.tolist()):  # x~_i = λ x_i + (1 - λ) x_j, element by element
        torch.testing.assert_close(mb.inputs[i], lam * x[i] + (1 - lam) * x[j], rtol=0, atol=1e-6)
        target = torch.zeros(3)
        target[y[i]] += lam
        target[y[j]] += 1 - lam
        torch.testing.assert_close(mb.soft_targets(3)[i], target)


def test_midpoint_is_the_midpoint_of_inputs_and_labels():
    x, y = _images()
    mb = mixlab.Midpoint()(x, y, generator=torch.Generator().manual_seed(2))
    assert mb.lam.tolist() == [0.5] * 6
    torch.testing.assert_close(mb.inputs, (x + x[mb.perm]) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("option", [{"alpha": 1.0}, {"lam": 0.3}, {"lam_range": (0.4, 0.6)}])
def test_midpoint_refuses_any_other_lam_at_construction(option):
    with pytest.raises(MixlabValueError) as info:
        mixlab.Midpoint(**option)
    assert str(next(iter(option.values()))) in str(info.value) and "0.5" in str(info.value)


@pytest.mark.parametrize("name", ["preact_resnet18", "wrn_28_k"])
def test_manifold_defaults_are_the_authors_layers_and_alpha(name):
    net = create_model(name, num_classes=10)
    assert net.default_manifold_layers == ("input", "layer1", "layer2")
    mixer = mixlab.ManifoldMixup(model=net)
    assert mixer.layers == ("input", "layer1", "layer2")
    assert mixer.lam_sampler.alpha == 2.0 and mixer.lam_mode == "batch"


def _tiny_preact() -> PreActResNet:
    torch.manual_seed(0)
    return PreActResNet(3, widths=(4, 8, 8), depths=(1, 1, 1), strides=(1, 2, 2), stem_channels=4)


def _two_pass(net: PreActResNet, x: torch.Tensor, mb: mixlab.MixedBatch, layer: str) -> torch.Tensor:
    """Pass 1 up to ``layer``; mix the hidden state by hand; pass 2 from the mixed state to the logits."""
    lam = float(mb.lam[0])
    h = net.layer1(net.stem(x))
    if layer == "layer2":
        h = net.layer2(h)
    h = lam * h + (1 - lam) * h[mb.perm]
    if layer == "layer1":
        h = net.layer2(h)
    h = net.layer3(h)
    return net.head(net.pool(torch.relu(net.bn(h))).flatten(1))


@pytest.mark.parametrize("layer", ["layer1", "layer2"])
@pytest.mark.parametrize("train", [True, False])
def test_manifold_hidden_mix_equals_the_two_pass_computation(layer, train):
    net = _tiny_preact().train(train)
    x, y = _images()
    mb = mixlab.ManifoldMixup(layers=[layer], model=net)(x, y, generator=torch.Generator().manual_seed(4))
    assert bool((mb.lam == mb.lam[0]).all()), "one λ for the whole batch"
    torch.testing.assert_close(mb.forward(net), _two_pass(net, x, mb, layer), rtol=1e-5, atol=1e-5)
    assert torch.equal(mb.inputs, x), "a hidden-layer batch keeps the clean input"


def test_manifold_draws_the_layer_uniformly_among_the_defaults():
    net = _tiny_preact()
    mixer = mixlab.ManifoldMixup(model=net)
    x, y = _images()
    g = torch.Generator().manual_seed(5)
    counts = Counter(mixer.sample(x, y, g, context={"model": net}).extra["layer"] for _ in range(600))
    assert set(counts) == {"input", "layer1", "layer2"}
    assert all(150 <= c <= 250 for c in counts.values()), counts


def test_manifold_without_layers_takes_them_from_the_first_model_seen():
    net = _tiny_preact()
    mixer = mixlab.ManifoldMixup()
    x, y = _images()
    mixer.sample(x, y, torch.Generator().manual_seed(6), context={"model": net})
    assert mixer.layers == ("input", "layer1", "layer2")
