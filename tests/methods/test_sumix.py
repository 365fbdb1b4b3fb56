"""SUMix: a cutting mixer whose label ratio is corrected by the classifier's semantics, plus an uncertainty term.

The formulas against the authors' code are in tests/fidelity/test_sumix_fidelity.py."""

from __future__ import annotations

import pytest
import torch

from mixer_checks import (
    assert_mixer_contract,
    assert_parameters_changed,
    assert_trains,
    clone_mixer,
    digits,
    own_loop,
    small_cnn,
)
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.losses import mixed_cross_entropy
from mixlab.methods.context import MixContext
from mixlab.methods.sumix import SUMIX_BASES, SUMix, corrected_lambda, own_class_alpha, pooled
from mixlab.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def mixed_batch(mixer: SUMix, model: torch.nn.Module, n: int = 16, seed: int = 0) -> object:
    x, y = digits(n)
    return mixer(x, y, generator=torch.Generator().manual_seed(seed), context=MixContext(mixer, model)(x, y))


def test_contract() -> None:
    x, y = digits(24)
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0)
    mb = assert_mixer_contract(mixer, x, y, model, lam_is_mask_mean=True)
    assert mb.forward_fn is not None
    assert mixer.needs.model and mixer.needs.features == ()  # the clean pass runs in mb.forward, with gradient


def test_defaults_come_from_the_model_and_the_authors_code() -> None:
    model = small_cnn()
    mixer = SUMix(model=model)
    assert (mixer.layer, mixer.feature_dim, mixer.num_classes) == ("fc", 128, 10)
    assert mixer.base.name == "cutmix" and mixer.base.lam_sampler.alpha == 0.2  # the authors' CIFAR-100 α
    assert SUMix(model=model, base="resizemix").base.lam_sampler.alpha == 1.0
    assert SUMix(model=model, base="fmix").base.lam_sampler.alpha == 0.2
    assert SUMix(model=model, base="saliencymix").base.p == 1.0  # the code always mixes
    assert SUMix(model=model, alpha=2.0).base.lam_sampler.alpha == 2.0
    assert (mixer.gamma, mixer.semantic_scale, mixer.lam_pairing) == (0.5, None, "batch_mean")
    assert [group["lr_scale"] for group in mixer.optimizer_groups()] == [1.0]
    assert [tuple(p.shape) for p in mixer.trainable_parameters()] == [(10, 128), (10,)]  # the uncertainty head


def test_forward_sets_the_corrected_lambda_detached_and_in_range() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0, lam_mode="sample", lam_pairing="per_sample", seed=0)
    mb = mixed_batch(mixer, model)
    prior = mb.lam.clone()
    outputs = mb.forward(model)
    assert outputs.shape == (16, 10)
    assert mb.lam.shape == (16,) and mb.lam.dtype == torch.float32 and not mb.lam.requires_grad
    assert bool(((mb.lam >= 0) & (mb.lam <= 1)).all())
    assert not torch.allclose(mb.lam, prior)
    state = mb.aux["sumix"]
    torch.testing.assert_close(state["prior"], prior)
    torch.testing.assert_close(mb.lam, state["corrected_lam"])
    assert not state["corrected_lam"].requires_grad  # the code's semantics are the detached softmax


def test_batch_mean_pairing_gives_every_sample_the_mean_correction() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0, lam_mode="sample", seed=0)
    mb = mixed_batch(mixer, model)
    mb.forward(model)
    corrected = mb.aux["sumix"]["corrected_lam"]
    assert not torch.allclose(corrected, corrected.mean().expand(16))
    torch.testing.assert_close(mb.lam, corrected.mean().expand(16))


def test_corrected_lambda_properties() -> None:
    lam = torch.tensor([0.0, 0.3, 0.5, 1.0, 0.5, 0.5])
    alpha_a = torch.tensor([0.9, 0.2, 0.2, -0.5, 1.0, -1.0])
    alpha_b = torch.tensor([0.1, 0.2, 0.2, 0.7, 0.0, 0.0])
    out = corrected_lambda(lam, alpha_a, alpha_b)
    torch.testing.assert_close(out[:4], torch.tensor([0.0, 0.3, 0.5, 1.0]))  # equal terms, or 0 and 1, stay
    assert out[4] < 0.5 < out[5]  # the larger α of a source lowers its label weight
    large = corrected_lambda(torch.tensor([0.5]), torch.tensor([300.0]), torch.tensor([299.0]))
    torch.testing.assert_close(large, torch.sigmoid(torch.tensor([-1.0])))  # no 0/0 when both e^{-α} underflow
    soft = own_class_alpha(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(soft, -torch.log(0.5 * torch.exp(torch.tensor([-1.0])) + 0.5 * torch.exp(torch.tensor([-3.0]))))


def test_regulariser_is_finite_weighted_and_reaches_head_and_model() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0, gamma=0.3, semantic_scale=1.0, seed=4)  # α ~ 1: visible gradients
    mb = mixed_batch(mixer, model)
    outputs = mb.forward(model)
    terms = mixer.loss_terms(mb, outputs)
    assert list(terms) == ["sumix_uncertainty"] and terms["sumix_uncertainty"].ndim == 0
    terms["sumix_uncertainty"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.trainable_parameters())
    assert mixer.head.weight.grad.abs().sum() > 0
    assert model.block1[0].weight.grad.abs().sum() > 0  # through β of both passes
    mixed_cross_entropy(outputs, mb)  # the task loss is still available on the same outputs
    half = SUMix(model=model, alpha=1.0, gamma=0.15, semantic_scale=1.0)
    half.load_state_dict(mixer.state_dict())
    torch.testing.assert_close(half.loss_terms(mb, outputs)["sumix_uncertainty"] * 2, terms["sumix_uncertainty"])
    assert SUMix(model=model, gamma=0.0).loss_terms(mb, outputs) == {}


def test_no_loss_terms_for_unmixed_or_unforwarded_batches() -> None:
    model = small_cnn()
    unmixed_mixer = SUMix(model=model, p=0.0)
    mb = mixed_batch(unmixed_mixer, model)
    assert mb.forward_fn is None and unmixed_mixer.loss_terms(mb, mb.forward(model)) == {}
    mixer = SUMix(model=model)
    mb = mixed_batch(mixer, model)
    assert mixer.loss_terms(mb, model(mb.inputs)) == {}


def clean_cross_entropy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        loss = float(torch.nn.functional.cross_entropy(model(x), y))
    model.train()
    return loss


def test_trains_in_a_users_loop_and_learns_its_head() -> None:
    # The authors' correction moves the label towards the less visible source as the model grows confident,
    # so the loss on the corrected labels is a moving target: the model's clean loss is what must fall.
    x, y = digits()
    model = small_cnn()
    before = clean_cross_entropy(model, x, y)
    mixer = SUMix(model=model, alpha=1.0, seed=0)
    result = own_loop(mixer, model, x, y, steps=40)
    assert torch.isfinite(torch.tensor(result["total"])).all()
    assert clean_cross_entropy(model, x, y) < 0.6 * before
    assert_parameters_changed(result)


def test_with_a_mild_correction_the_mixed_loss_falls_as_for_any_mixer() -> None:
    x, y = digits()
    model = small_cnn()
    result = own_loop(SUMix(model=model, alpha=1.0, seed=0, semantic_scale=1.0), model, x, y, steps=40)
    assert_trains(result)


def test_state_round_trip() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, seed=5)
    state = mixer.state_dict()
    fresh = SUMix(model=model, seed=6)
    assert not torch.equal(fresh.head.weight, mixer.head.weight)
    fresh.load_state_dict(clone_mixer(mixer).state_dict())
    for key, value in fresh.state_dict()["uncertainty_head"].items():
        torch.testing.assert_close(value, state["uncertainty_head"][key])
    state["uncertainty_head"]["weight"].add_(1.0)  # the state is a copy
    assert not torch.equal(mixer.head.weight, state["uncertainty_head"]["weight"])
    with pytest.raises(MixlabValueError, match=r"sumix state must have the key 'uncertainty_head'; got keys \['x'\]"):
        fresh.load_state_dict({"x": 1})
    assert fresh.to("cpu") is fresh


@pytest.mark.parametrize("base", SUMIX_BASES)
def test_each_base_mixer(base: str) -> None:
    model = small_cnn()
    mixer = SUMix(model=model, base=base, alpha=1.0, seed=6)
    mb = mixed_batch(mixer, model, n=8)
    assert mb.inputs.shape == (8, 1, 16, 16) and mb.mask is not None
    outputs = mb.forward(model)
    assert bool(((mb.lam >= 0) & (mb.lam <= 1)).all())
    assert torch.isfinite(mixer.loss_terms(mb, outputs)["sumix_uncertainty"])


def test_unknown_base_lists_the_accepted_ones() -> None:
    with pytest.raises(
        UnknownNameError, match=r"unknown base mixer for sumix 'mixup'; known: cutmix, fmix, resizemix, saliencymix"
    ):
        SUMix(model=small_cnn(), base="mixup")
    with pytest.raises(MixlabValueError, match=r"give p to sumix itself, not in base_options"):
        SUMix(model=small_cnn(), base_options={"p": 0.5})
    assert SUMix(model=small_cnn(), base="resizemix", base_options={"scale": (0.2, 0.4)}).base.scale == (0.2, 0.4)


def test_spatial_features_are_pooled() -> None:
    torch.manual_seed(0)
    model = create_model("preact_resnet18", 5, in_channels=3)
    mixer = SUMix(model=model, alpha=1.0)
    assert (mixer.layer, mixer.feature_dim) == ("layer4", 512)
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(0), context=MixContext(mixer, model)(x, y))
    mb.forward(model)
    assert mb.aux["sumix"]["mixed_features"].shape == mb.aux["sumix"]["clean_features"].shape == (4, 512)
    assert pooled(torch.ones(2, 3, 4)).shape == (2, 3)


def test_a_chosen_layer_gets_its_width_from_a_dry_run() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, layer="block2")
    assert mixer.feature_dim == 64 and tuple(mixer.head.weight.shape) == (10, 64)
    mb = mixed_batch(mixer, model, n=8)
    mb.forward(model)
    assert mb.aux["sumix"]["mixed_features"].shape == (8, 64)


def test_soft_labels() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0, seed=7)
    x, y = digits(8)
    soft = torch.nn.functional.one_hot(y, 10).float() * 0.9 + 0.01
    mb = mixer(x, soft, generator=torch.Generator().manual_seed(0), context=MixContext(mixer, model)(x, soft))
    outputs = mb.forward(model)
    assert bool(((mb.lam >= 0) & (mb.lam <= 1)).all())
    assert torch.isfinite(mixer.loss_terms(mb, outputs)["sumix_uncertainty"])
    with pytest.raises(MixlabValueError, match=r"sumix needs class indices \(N,\) or soft labels \(N, 10\)"):
        mixer(x, torch.randn(8), context=MixContext(mixer, model)(x, y))


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"semantic_scale": 0.0}, MixlabValueError, r"semantic_scale must be a finite number > 0; got 0.0"),
        ({"lam_pairing": "sample"}, UnknownNameError, r"unknown sumix lam_pairing 'sample'; known: batch_mean, per_sample"),
        ({"sharpness": 2.0}, TypeError, r"sharpness"),  # the earlier κ is gone: the code has none
        ({"gamma": -1.0}, MixlabValueError, r"gamma must be a finite number >= 0; got -1.0"),
        ({"lr_scale": -1.0}, MixlabValueError, r"lr_scale must be a finite number >= 0"),
        ({"layer": "nope"}, UnknownNameError, r"unknown feature layer 'nope'; known: block1, .*fc.*input"),
        ({"layer": 3}, MixlabTypeError, r"layer must be a module name"),
        ({"feature_dim": 0}, MixlabValueError, r"feature_dim must be an int >= 1; got 0"),
        ({"num_classes": 1}, MixlabValueError, r"needs num_classes >= 2; got 1"),
        ({"base": 3}, MixlabTypeError, r"base must be a mixer name"),
    ],
)
def test_bad_parameters_are_refused_at_construction(kwargs: dict, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        SUMix(model=small_cnn(), **kwargs)


def test_built_without_the_model_it_binds_to_it_through_the_context() -> None:
    mixer = SUMix(alpha=1.0)  # as a config is validated: no model yet
    assert mixer.layer is None and mixer.trainable_parameters() == [] and mixer.state_dict() == {}
    x, y = digits(8)
    with pytest.raises(MixlabValueError, match=r"does not know its model yet: pass model= .*MixContext"):
        mixer(x, y)
    model = small_cnn()
    context = MixContext(mixer, model)
    assert (mixer.layer, mixer.feature_dim, mixer.num_classes) == ("fc", 128, 10)
    assert mixer.needs.model and len(mixer.trainable_parameters()) == 2
    mb = mixer(x, y, generator=torch.Generator().manual_seed(0), context=context(x, y))
    mb.forward(model)
    assert "sumix" in mb.aux
    explicit = SUMix(layer="fc", num_classes=10, feature_dim=128)
    assert len(explicit.trainable_parameters()) == 2
    with pytest.raises(MixlabValueError, match=r"names no stages: pass layer="):
        SUMix().bind_model(torch.nn.Linear(3, 4))
    with pytest.raises(MixlabValueError, match=r"has no num_classes: pass num_classes="):
        SUMix(layer="0").bind_model(torch.nn.Sequential(torch.nn.Linear(3, 4)))


def test_built_with_the_model_it_needs_no_context() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0, seed=0)
    x, y = digits(8)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(0))
    with_context = mixer(x, y, generator=torch.Generator().manual_seed(0), context={"model": model})
    assert torch.equal(mb.inputs, with_context.inputs) and torch.equal(mb.lam, with_context.lam)
    assert mb.forward(model).shape == (8, 10) and "sumix" in mb.aux


def test_in_place_mixing_keeps_the_clean_batch_for_the_clean_pass() -> None:
    model = small_cnn()
    x, y = digits(8)
    mixer = SUMix(model=model, alpha=1.0, seed=0, inplace=True)
    clean = x.clone()
    mb = mixer(x, y, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    mb.forward(model)
    handle.remove()
    assert torch.equal(seen[0], clean) and torch.equal(seen[1], mb.inputs)
