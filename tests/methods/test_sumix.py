"""SUMix: a cutting mixer whose label ratio is corrected by learned semantics, plus an uncertainty regulariser."""

from __future__ import annotations

import pytest
import torch
from mixer_checks import (
    assert_parameters_changed,
    assert_trains,
    check_contract,
    clone_mixer,
    digits,
    own_loop,
    small_cnn,
)

from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.losses import mixed_cross_entropy
from mixlab.methods.context import MixContext
from mixlab.methods.sumix import SUMIX_BASES, SUMix, corrected_lambda, pooled
from mixlab.models import create_model


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """Small models run fastest on one thread, the more so on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomise(mixer: SUMix, seed: int = 0, scale: float = 0.5) -> None:
    """Give the heads non-zero weights, as after some training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in mixer.heads.parameters():
            param.copy_(scale * torch.randn(param.shape, generator=generator))


def mixed_batch(mixer: SUMix, model: torch.nn.Module, n: int = 16, seed: int = 0) -> object:
    x, y = digits(n)
    return mixer(x, y, generator=torch.Generator().manual_seed(seed), context=MixContext(mixer, model)(x, y))


def test_contract() -> None:
    x, y = digits(24)
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0)
    mb = check_contract(mixer, x, y, model, lam_is_mask_mean=True)
    assert mb.forward_fn is not None
    assert mixer.needs.model and mixer.needs.features == ("fc",)


def test_defaults_come_from_the_model_and_the_paper() -> None:
    model = small_cnn()
    mixer = SUMix(model=model)
    assert (mixer.layer, mixer.feature_dim, mixer.num_classes) == ("fc", 128, 10)
    assert mixer.base.name == "cutmix" and mixer.base.lam_sampler.alpha == 0.2  # the base's own default
    assert SUMix(model=model, base="resizemix").base.lam_sampler.alpha == 1.0
    assert mixer.gamma == 0.1
    assert [group["lr_scale"] for group in mixer.optimizer_groups()] == [1.0]
    assert len(mixer.trainable_parameters()) == 4


def test_forward_sets_the_corrected_lambda_detached_and_in_range() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0, lam_mode="sample")
    randomise(mixer)
    mb = mixed_batch(mixer, model)
    prior = mb.lam.clone()
    outputs = mb.forward(model)
    assert outputs.shape == (16, 10)
    assert mb.lam.shape == (16,) and mb.lam.dtype == torch.float32 and not mb.lam.requires_grad
    assert bool(((mb.lam >= 0) & (mb.lam <= 1)).all())
    assert not torch.allclose(mb.lam, prior)
    state = mb.aux["sumix"]
    torch.testing.assert_close(state["prior"], prior)
    torch.testing.assert_close(mb.lam, state["learned_lam"].detach())


def test_zero_heads_leave_lambda_as_drawn() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0, lam_mode="sample")
    mb = mixed_batch(mixer, model)
    prior = mb.lam.clone()
    mb.forward(model)
    torch.testing.assert_close(mb.lam, prior)


def test_corrected_lambda_by_hand_from_the_features() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0, lam_mode="sample", sharpness=3.0)
    randomise(mixer, seed=1)
    x, y = digits(16)
    context = MixContext(mixer, model)(x, y)
    clean = context["features"]["fc"].clone()  # the clean batch's features, before the training forward
    mb = mixer(x, y, generator=torch.Generator().manual_seed(2), context=context)
    prior = mb.lam.clone()
    seen: list[torch.Tensor] = []
    handle = model.fc.register_forward_hook(lambda _m, _a, out: seen.append(out.detach()))
    mb.forward(model)
    handle.remove()
    weight, bias = mixer.heads.semantic_weight.detach(), mixer.heads.semantic_bias.detach()
    semantics = (clean @ weight.T + bias).softmax(1)
    mixed = (seen[0] @ weight.T + bias).softmax(1)
    rows, ya, yb = torch.arange(16), y, y[mb.perm]
    lost_a = semantics[rows, ya] * (ya != yb) - mixed[rows, ya]
    lost_b = semantics[mb.perm, yb] * (ya != yb) - mixed[rows, yb]
    kept_a, kept_b = prior * torch.exp(-3 * lost_a), (1 - prior) * torch.exp(-3 * lost_b)
    torch.testing.assert_close(mb.lam, kept_a / (kept_a + kept_b), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mb.lam, prior)


def test_corrected_lambda_is_differentiable_in_the_learned_heads() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0, lam_mode="sample")
    randomise(mixer, seed=3)
    mb = mixed_batch(mixer, model)
    mb.forward(model)
    learned = mb.aux["sumix"]["learned_lam"]
    assert learned.requires_grad
    (grad,) = torch.autograd.grad(learned.sum(), [mixer.heads.semantic_weight])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_corrected_lambda_properties() -> None:
    lam = torch.tensor([0.0, 0.3, 0.5, 1.0, 0.5, 0.5])
    lost_a = torch.tensor([0.9, 0.2, 0.2, -0.5, 1.0, -1.0])
    lost_b = torch.tensor([0.1, 0.2, 0.2, 0.7, 0.0, 0.0])
    out = corrected_lambda(lam, lost_a, lost_b, 2.0)
    torch.testing.assert_close(out[:4], torch.tensor([0.0, 0.3, 0.5, 1.0]))  # equal losses, or 0 and 1, stay
    assert out[4] < 0.5 < out[5]  # the source that lost its class evidence loses label weight


def test_regulariser_is_finite_weighted_and_reaches_heads_and_model() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0, gamma=0.3)
    randomise(mixer, seed=4, scale=0.1)
    mb = mixed_batch(mixer, model)
    outputs = mb.forward(model)
    terms = mixer.loss_terms(mb, outputs)
    assert list(terms) == ["sumix_uncertainty"] and terms["sumix_uncertainty"].ndim == 0
    (terms["sumix_uncertainty"] + mixed_cross_entropy(outputs, mb)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.trainable_parameters())
    assert mixer.heads.uncertainty_weight.grad.abs().sum() > 0 and mixer.heads.semantic_weight.grad.abs().sum() > 0
    assert model.block1[0].weight.grad.abs().sum() > 0
    half = SUMix(model=model, alpha=1.0, gamma=0.15)
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


def test_trains_in_a_users_loop_and_learns_its_heads() -> None:
    x, y = digits()
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0)
    result = own_loop(mixer, model, x, y, steps=40)
    assert_trains(result)
    assert_parameters_changed(result)


def test_state_round_trip() -> None:
    model = small_cnn()
    mixer = SUMix(model=model)
    randomise(mixer, seed=5)
    state = mixer.state_dict()
    fresh = SUMix(model=model)
    fresh.load_state_dict(clone_mixer(mixer).state_dict())
    for key, value in fresh.state_dict()["heads"].items():
        torch.testing.assert_close(value, state["heads"][key])
    state["heads"]["semantic_weight"].add_(1.0)  # the state is a copy
    assert not torch.equal(mixer.heads.semantic_weight, state["heads"]["semantic_weight"])
    with pytest.raises(MixlabValueError, match=r"sumix state must have the key 'heads'; got keys \['x'\]"):
        fresh.load_state_dict({"x": 1})
    assert fresh.to("cpu") is fresh


@pytest.mark.parametrize("base", SUMIX_BASES)
def test_each_base_mixer(base: str) -> None:
    model = small_cnn()
    mixer = SUMix(model=model, base=base, alpha=1.0)
    randomise(mixer, seed=6, scale=0.2)
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
    assert mb.aux["sumix"]["mixed"].shape == (4, 512)
    assert pooled(torch.ones(2, 3, 4)).shape == (2, 3)


def test_a_chosen_layer_gets_its_width_from_a_dry_run() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, layer="block2")
    assert mixer.feature_dim == 64 and mixer.needs.features == ("block2",)
    mb = mixed_batch(mixer, model, n=8)
    mb.forward(model)
    assert mb.aux["sumix"]["mixed"].shape == (8, 64)


def test_soft_labels() -> None:
    model = small_cnn()
    mixer = SUMix(model=model, alpha=1.0)
    randomise(mixer, seed=7, scale=0.2)
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
        ({"sharpness": 0.0}, MixlabValueError, r"sharpness must be a finite number > 0; got 0.0"),
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
    assert mixer.needs.features == ("fc",) and len(mixer.trainable_parameters()) == 4
    mb = mixer(x, y, generator=torch.Generator().manual_seed(0), context=context(x, y))
    mb.forward(model)
    assert "sumix" in mb.aux
    explicit = SUMix(layer="fc", num_classes=10, feature_dim=128)
    assert len(explicit.trainable_parameters()) == 4
    with pytest.raises(MixlabValueError, match=r"names no stages: pass layer="):
        SUMix().bind_model(torch.nn.Linear(3, 4))
    with pytest.raises(MixlabValueError, match=r"has no num_classes: pass num_classes="):
        SUMix(layer="0").bind_model(torch.nn.Sequential(torch.nn.Linear(3, 4)))


def test_missing_context_says_how_to_pass_it() -> None:
    mixer = SUMix(model=small_cnn())
    x, y = digits(4)
    with pytest.raises(MixlabValueError, match=r"sumix needs the clean batch's features at 'fc'.*MixContext"):
        mixer(x, y)
    with pytest.raises(MixlabValueError, match=r"features at 'fc'"):
        mixer(x, y, context={"model": small_cnn()})
