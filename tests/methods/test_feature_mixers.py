"""AttentiveMix and AlignMix: contract, the pasted cells, the Sinkhorn plan, the hooked forward, training, errors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from mixer_checks import assert_mixer_contract, assert_trains, digits, own_loop, small_cnn, snapshot
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.methods.context import MixContext
from mixlab.methods.feature import (
    AlignMix,
    AttentiveMix,
    align_and_mix,
    alignment_cost,
    default_spatial_layer,
    sinkhorn_plan,
)

# The trained-model source warns once per mixer (tests/fidelity/test_attentivemix_fidelity.py checks it).
pytestmark = pytest.mark.filterwarnings("ignore:attentivemix takes its attention:UserWarning")


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ contract


def test_attentivemix_contract_on_digits() -> None:
    x, y = digits(48)
    net = small_cnn()
    mixer = AttentiveMix(model=net)
    assert mixer.layer == "block1"  # 16x16 inputs: block1 gives 8x8 cells, block2 only 4x4
    assert mixer.needs.features == ("block1",)
    mb = assert_mixer_contract(mixer, x, y, net, lam_is_mask_mean=True)
    # The paper's 7x7 grid: 6 of 49 cells pasted, each 2 or 3 pixels a side on 16x16 inputs.
    params = mixer.sample(x, y, generator=torch.Generator().manual_seed(3), context=MixContext(mixer, net)(x, y))
    assert params.extra["pasted_cells"].shape == (48, 7, 7)
    assert params.extra["pasted_cells"].flatten(1).sum(1).tolist() == [6] * 48
    assert bool((mb.lam >= 1 - 6 * 9 / 256).all()) and bool((mb.lam <= 1 - 6 * 4 / 256).all())
    assert mixer.state_dict() == {}


def test_alignmix_contract_on_digits() -> None:
    x, y = digits(48)
    net = small_cnn()
    mixer = AlignMix(model=net, input_mix_prob=0.0)
    assert mixer.layers == ("block2",) and mixer.needs.model and not mixer.needs.features  # the last spatial stage
    mb = assert_mixer_contract(mixer, x, y, net)
    assert torch.equal(mb.inputs, x) and mb.mask is None and mb.forward_fn is not None
    assert bool(((mb.lam > 0) & (mb.lam < 1)).all())


def test_default_layers_of_the_benchmark_models() -> None:
    from mixlab.models import create_model

    assert default_spatial_layer(create_model("cnn_small", 10, input_size=28)) == "block2"
    assert default_spatial_layer(create_model("preact_resnet18", 10, in_channels=3)) == "layer3"
    # AlignMix aligns at the last spatial stage, as the authors (4x4 on CIFAR).
    assert AlignMix(model=create_model("preact_resnet18", 10, in_channels=3)).layers == ("layer4",)
    assert AlignMix(model=create_model("wrn_28_k", 10, in_channels=3, widen_factor=1)).layers == ("layer3",)
    assert AlignMix(model=create_model("cnn_small", 10, input_size=28)).layers == ("block2",)


# ------------------------------------------------------------------ AttentiveMix


def _cell_images(n: int = 4, channels: int = 2, cells: int = 4, cell: int = 4, seed: int = 0) -> torch.Tensor:
    """Images made of constant cells with distinct values, so the attention ranking is known."""
    values = torch.rand(n, channels, cells, cells, generator=_generator(seed))
    return values.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)


def test_attentivemix_pastes_the_partners_top_cells() -> None:
    x, y, k = _cell_images(), torch.arange(4), 5
    extractor = nn.Sequential(nn.AvgPool2d(4))  # feature map = the cell values, attention = their channel mean
    mixer = AttentiveMix(layer="0", feature_model=extractor, top_k=k, grid=None)  # the map's own 4x4 grid
    mb = mixer(x, y, generator=_generator(1))
    attention = x[:, :, ::4, ::4].mean(dim=1).flatten(1)  # (N, 16)
    for i, j in enumerate(mb.perm.tolist()):
        expected = set(attention[j].argsort(descending=True)[:k].tolist())
        pasted = {c for c in range(16) if not bool(mb.mask[i, 0, (c // 4) * 4, (c % 4) * 4])}
        assert pasted == expected
        cell_mask = mb.mask[i].expand_as(x[i]).bool()
        assert torch.equal(mb.inputs[i][cell_mask], x[i][cell_mask])
        assert torch.equal(mb.inputs[i][~cell_mask], x[j][~cell_mask])
    torch.testing.assert_close(mb.lam, torch.full((4,), 1 - k / 16))


def test_attentivemix_from_the_trained_model_matches_the_feature_model_path() -> None:
    x, y = _cell_images(6, seed=3), torch.arange(6) % 3
    net = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(32, 3))
    by_model = AttentiveMix(layer="0", model=net, top_k=3)
    by_extractor = AttentiveMix(layer="0", feature_model=nn.Sequential(nn.AvgPool2d(4)), top_k=3)
    context = MixContext(by_model, net)(x, y)
    assert "0" in context["features"]
    a = by_model(x, y, generator=_generator(2), context=context)
    b = by_extractor(x, y, generator=_generator(2))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.lam, b.lam)


def test_attentivemix_top_k_from_lam_and_pooled_grid() -> None:
    x, y = torch.rand(5, 3, 14, 14, generator=_generator()), torch.arange(5)
    extractor = nn.Sequential(nn.AvgPool2d(2))  # a 7x7 grid on 14x14 inputs, pooled to 4x4 below
    mixer = AttentiveMix(layer="0", feature_model=extractor, top_k=None, lam=0.7, grid=4)
    params = mixer.sample(x, y, generator=_generator())
    pasted = params.extra["pasted_cells"]
    assert pasted.shape == (5, 4, 4) and pasted.flatten(1).sum(1).tolist() == [5] * 5  # round(0.3 * 16)
    mb = mixer.apply(x, y, params)
    kept = mb.mask.flatten(1).double().mean(1).float()
    torch.testing.assert_close(mb.lam, kept, atol=1e-6, rtol=0)
    assert bool((mb.lam < 0.75).all()) and bool((mb.lam > 0.6).all())  # uneven 4-of-14 cells: near 11/16


def test_attentivemix_with_a_frozen_feature_model_needs_nothing() -> None:
    x, y = digits(32)
    extractor = small_cnn(seed=1).eval()
    before = snapshot(extractor)
    mixer = AttentiveMix(feature_model=extractor, top_k=6, grid=None)  # the map's own 8x8 grid
    assert mixer.layer == "block1" and not mixer.needs.anything
    assert not any(p.requires_grad for p in extractor.parameters())
    mb = mixer(x, y, generator=_generator())  # no context at all
    again = mixer(x, y, generator=_generator(), context=MixContext(mixer, small_cnn())(x, y))
    assert torch.equal(mb.inputs, again.inputs)
    torch.testing.assert_close(mb.lam, torch.full((32,), 1 - 6 / 64))
    for key, value in snapshot(extractor).items():
        assert torch.equal(value, before[key])


def test_attentivemix_sample_mode_probability_leaves_samples_whole() -> None:
    x, y = digits(40)
    mixer = AttentiveMix(model=small_cnn(), lam_mode="sample", p=0.5, top_k=4, grid=None)
    mb = mixer(x, y, generator=_generator(5), context=MixContext(mixer, small_cnn())(x, y))
    whole = mb.lam == 1
    assert 0 < int(whole.sum()) < 40
    assert torch.equal(mb.inputs[whole], x[whole])
    torch.testing.assert_close(mb.lam[~whole], torch.full((int((~whole).sum()),), 1 - 4 / 64))


# ------------------------------------------------------------------ Sinkhorn


def _log_sinkhorn(cost: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """A plain log-domain Sinkhorn, as the textbook writes it (Peyre and Cuturi, 2019, Remark 4.23)."""
    n, m = cost.shape[1:]
    f = torch.zeros(cost.shape[0], n, 1, dtype=torch.float64)
    g = torch.zeros(cost.shape[0], 1, m, dtype=torch.float64)
    c = cost.double() / epsilon
    for _ in range(iterations):
        f = -math.log(n) - torch.logsumexp(g - c, dim=2, keepdim=True)
        g = -math.log(m) - torch.logsumexp(f - c, dim=1, keepdim=True)
    return torch.exp(f + g - c)


def test_sinkhorn_plan_has_the_marginals_and_matches_the_log_domain_solver() -> None:
    cost = torch.rand(3, 6, 5, generator=_generator()) * 2
    plan = sinkhorn_plan(cost, epsilon=0.1, iterations=300, stop_threshold=0)
    assert plan.shape == (3, 6, 5) and plan.dtype == torch.float32 and bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(dim=2), torch.full((3, 6), 1 / 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(plan.sum(dim=1), torch.full((3, 5), 1 / 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(plan.double(), _log_sinkhorn(cost, 0.1, 300), atol=1e-5, rtol=0)


def test_sinkhorn_recovers_a_spatial_permutation_and_stays_finite() -> None:
    features = torch.randn(4, 16, 8, generator=_generator())  # (B, positions, channels)
    orders = torch.stack([torch.randperm(16, generator=_generator(b)) for b in range(4)])
    permuted = torch.stack([features[b, orders[b]] for b in range(4)])  # position j holds features[orders[j]]
    plan = sinkhorn_plan(alignment_cost(features, permuted, "normalised"), epsilon=0.01, iterations=50)
    expected = torch.zeros(4, 16, 16)
    for b in range(4):
        expected[b, orders[b], torch.arange(16)] = 1.0
    torch.testing.assert_close(plan * 16, expected, atol=1e-3, rtol=0)
    # A tiny epsilon on unrelated maps: no overflow, no NaN, and the last (column) step fits.
    other = torch.randn(4, 16, 8, generator=_generator(9))
    hard = sinkhorn_plan(alignment_cost(features, other, "normalised"), epsilon=1e-3, iterations=7)
    assert bool(torch.isfinite(hard).all())
    torch.testing.assert_close(hard.sum(dim=1), torch.full((4, 16), 1 / 16), atol=1e-5, rtol=0)
    raw = sinkhorn_plan(alignment_cost(100 * features, other), epsilon=1e-4, iterations=7)
    assert bool(torch.isfinite(raw).all())


def test_align_and_mix_undoes_a_spatial_permutation() -> None:
    h = torch.randn(1, 8, 4, 4, generator=_generator())
    order = torch.randperm(16, generator=_generator(1))
    shuffled = h.flatten(2)[:, :, order].view(1, 8, 4, 4)
    pair, perm, lam = torch.cat([h, shuffled]), torch.tensor([1, 0]), torch.tensor([0.3, 0.3])
    to_sample = align_and_mix(pair, perm, lam, epsilon=0.01, iterations=50, cost="normalised")
    torch.testing.assert_close(to_sample, pair, atol=1e-4, rtol=0)  # the aligned partner is the sample itself
    to_partner = align_and_mix(
        pair, perm, lam, torch.tensor([True, True]), epsilon=0.01, iterations=50, cost="normalised"
    )
    torch.testing.assert_close(to_partner, pair[perm], atol=1e-4, rtol=0)


# ------------------------------------------------------------------ AlignMix forward


def _sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(80, 3),
    )


@pytest.mark.parametrize("direction", ["to_sample", "to_partner", "random"])
def test_alignmix_forward_equals_the_hand_computation(direction: str) -> None:
    net = _sequential()
    x, y = torch.randn(6, 2, 8, 8, generator=_generator()), torch.arange(6) % 3
    mixer = AlignMix(
        layers=["1"],
        model=net,
        input_mix_prob=0.0,
        epsilon=0.2,
        sinkhorn_iters=12,
        cost="normalised",
        exact_marginals=True,
        direction=direction,
        lam_mode="sample",
    )
    mb = mixer(x, y, generator=_generator(4), context={"model": net})
    out = mb.forward(net)

    h = net[:2](x)  # up to the hooked layer
    a = h.flatten(2).transpose(1, 2)  # (N, 64 positions, 4 channels)
    b = a[mb.perm]
    cost = torch.cdist(a, b).square()
    plan = sinkhorn_plan(cost / cost.mean(dim=(1, 2), keepdim=True), 0.2, 12)
    lam = mb.lam.view(-1, 1, 1)
    to_sample = lam * a + (1 - lam) * (plan / plan.sum(2, keepdim=True)) @ b
    to_partner = lam * (plan / plan.sum(1, keepdim=True)).transpose(1, 2) @ a + (1 - lam) * b
    flags = {"to_sample": torch.zeros(6, dtype=torch.bool), "to_partner": torch.ones(6, dtype=torch.bool)}
    flags["random"] = mb.forward_fn.to_partner  # drawn per sample in sample mode
    if direction == "random":
        assert 0 < int(flags["random"].sum()) < 6
    mixed = torch.where(flags[direction].view(-1, 1, 1), to_partner, to_sample)
    reference = net[2:](mixed.transpose(1, 2).reshape(h.shape))
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_alignmix_output_is_finite_gradients_flow_and_ddp_names_work() -> None:
    x, y = digits(32)
    net = small_cnn()

    class Wrapped(nn.Module):  # what DDP looks like to a hook: the model under "module."
        def __init__(self, module: nn.Module):
            super().__init__()
            self.module = module

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.module(inputs)

    wrapped = Wrapped(net)
    mixer = AlignMix(model=wrapped, layers=["block1", "module.block2"], input_mix_prob=0.0)
    for seed in (0, 1, 2):
        mb = mixer(x, y, generator=_generator(seed), context=MixContext(mixer, wrapped)(x, y))
        out = mb.forward(wrapped)
        assert out.shape == (32, 10) and bool(torch.isfinite(out).all())
        net.zero_grad()
        nn.functional.cross_entropy(out, y).backward()
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        assert float(net.block1[0].weight.grad.abs().sum()) > 0


def test_alignmix_unmixed_samples_keep_their_own_features() -> None:
    net = _sequential()
    x, y = torch.randn(20, 2, 8, 8, generator=_generator()), torch.arange(20) % 3
    mixer = AlignMix(layers=["1"], model=net, lam_mode="sample", p=0.5, direction="to_partner", input_mix_prob=0.0)
    mb = mixer(x, y, generator=_generator(1), context={"model": net})
    whole = mb.lam == 1
    assert 0 < int(whole.sum()) < 20
    torch.testing.assert_close(mb.forward(net)[whole], net(x)[whole])


def test_alignmix_at_the_input_is_mixup_and_amp_is_safe() -> None:
    net = _sequential()
    x, y = torch.randn(6, 2, 8, 8, generator=_generator()), torch.arange(6) % 3
    mb = AlignMix(layers=["input"], lam=0.25)(x, y, generator=_generator())  # no model needed at the input
    torch.testing.assert_close(mb.inputs, 0.25 * x + 0.75 * x[mb.perm])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = net[:2](x)
        mixed = align_and_mix(h, mb.perm, torch.full((6,), 0.25))
    assert mixed.dtype == h.dtype and bool(torch.isfinite(mixed.float()).all())


# ------------------------------------------------------------------ training


def test_attentivemix_trains_in_a_users_loop() -> None:
    x, y = digits(512)
    net = small_cnn()
    assert_trains(own_loop(AttentiveMix(model=net), net, x, y, steps=40))


def test_alignmix_trains_in_a_users_loop() -> None:
    x, y = digits(512)
    net = small_cnn()
    mixer = AlignMix(model=net)  # the defaults: block2, the last spatial stage; input mixup on half the batches
    assert mixer.layers == ("block2",)
    assert_trains(own_loop(mixer, net, x, y, steps=40))


# ------------------------------------------------------------------ errors


def test_unknown_layers_list_the_available_ones() -> None:
    net = small_cnn()
    for build in (lambda: AttentiveMix(layer="block9", model=net), lambda: AlignMix(layers=["block9"], model=net)):
        with pytest.raises(UnknownNameError, match=r"block9.*block1.*block2"):
            build()
    mixer = AlignMix(layers=["block9"])
    with pytest.raises(UnknownNameError, match="block1"):
        mixer(*digits(4), context={"model": net})


def test_model_less_use_says_how_to_pass_the_model() -> None:
    x, y = digits(4)
    with pytest.raises(MixlabValueError, match=r"MixContext\(mixer, model\).*model="):
        AlignMix(layers=["block1"])(x, y)
    with pytest.raises(MixlabValueError, match=r"MixContext\(mixer, model\).*feature_model="):
        AttentiveMix(layer="block1")(x, y)
    unbound = AttentiveMix()  # allowed, as a config is validated without a model; its use is not
    with pytest.raises(MixlabValueError, match=r"layer=.*model="):
        unbound(x, y)
    bound = AttentiveMix()
    MixContext(bound, small_cnn())  # the context binds the model: the default layer is chosen from it
    assert bound.layer == "block1"


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: AlignMix(epsilon=0.0), MixlabValueError, "epsilon.*> 0; got 0.0"),
        (lambda: AlignMix(epsilon=float("nan")), MixlabValueError, "epsilon"),
        (lambda: AlignMix(epsilon=-1), MixlabValueError, "epsilon"),
        (lambda: AlignMix(sinkhorn_iters=0), MixlabValueError, "sinkhorn_iters.*>= 1; got 0"),
        (lambda: AlignMix(sinkhorn_iters=2.5), MixlabTypeError, "sinkhorn_iters"),
        (lambda: AlignMix(input_mix_prob=1.5), MixlabValueError, "input_mix_prob.*1.5"),
        (lambda: AlignMix(stop_threshold=-0.1), MixlabValueError, "stop_threshold.*>= 0; got -0.1"),
        (lambda: AlignMix(cost="normalized"), UnknownNameError, "normalized.*known: normalised, squared"),
        (lambda: AlignMix(exact_marginals="yes"), MixlabTypeError, "exact_marginals"),
        (lambda: AlignMix(direction="sideways"), UnknownNameError, "sideways.*to_partner"),
        (lambda: AlignMix(layers="block1"), MixlabValueError, "layers"),
        (lambda: AttentiveMix(layer="f", top_k=0), MixlabValueError, "top_k.*>= 1; got 0"),
        (lambda: AttentiveMix(layer="f", grid=0), MixlabValueError, "grid"),
        (lambda: AttentiveMix(layer="f", grid="papers"), UnknownNameError, "papers.*paper"),
        (lambda: AttentiveMix(layer="f", feature_model="resnet"), MixlabTypeError, "feature_model"),
    ],
)
def test_out_of_range_parameters_are_refused_at_construction(
    build: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build()


def test_more_cells_than_the_grid_or_a_flat_layer_are_refused() -> None:
    x, y = digits(4)
    net = small_cnn()
    with pytest.raises(MixlabValueError, match=r"top_k=70.*49 cells"):  # the paper's 7x7 grid
        AttentiveMix(model=net, top_k=70)(x, y, context=MixContext(AttentiveMix(model=net), net)(x, y))
    with pytest.raises(MixlabValueError, match=r"'fc'.*convolutional"):
        AttentiveMix(layer="fc", model=net)(x, y, context={"model": net})
    mixer = AlignMix(layers=["fc"], model=net, input_mix_prob=0.0)
    mb = mixer(x, y, context={"model": net})
    with pytest.raises(MixlabValueError, match=r"'fc'.*convolutional"):
        mb.forward(net)
