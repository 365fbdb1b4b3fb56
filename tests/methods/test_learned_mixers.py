"""AutoMix and AdAutoMix: the contract, training in a user's loop, the generators' gradients, state, bad input."""

from __future__ import annotations

import io

import pytest
import torch
from mixer_checks import assert_parameters_changed, assert_trains, check_contract, digits, own_loop, small_cnn
from torch import nn

from mixlab.batch import MixedBatch
from mixlab.errors import MixlabError, MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.losses import mixed_cross_entropy
from mixlab.methods.context import MixContext
from mixlab.methods.learned import AUX_KEY, AdAutoMix, AutoMix, MixBlock, reverse_gradient
from mixlab.models import create_model

CLASSES = [AutoMix, AdAutoMix]


def mixed_step(mixer, model, n: int = 16, seed: int = 3):
    """A context and a mixed batch of the first ``n`` digits."""
    x, y = digits(n)
    context = MixContext(mixer, model)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(seed), context=context(x, y))
    return x, y, context, mb


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


# ------------------------------------------------------------------ contract and mixing


@pytest.mark.parametrize("cls", CLASSES)
def test_contract_and_mask(cls) -> None:
    model = small_cnn()
    x, y = digits(24)
    mixer = cls(model=model)
    mb = check_contract(mixer, x, y, model)
    # lam is the drawn λ (one per batch), not the mask mean; the mask is the weight of x in the inputs.
    assert torch.all(mb.lam == mb.lam[0]) and 0 < float(mb.lam[0]) < 1
    assert mb.mask is not None and mb.mask.shape == (24, 1, 16, 16)
    assert bool(((mb.mask >= 0) & (mb.mask <= 1)).all())
    torch.testing.assert_close(mb.inputs, mb.mask * x + (1 - mb.mask) * x[mb.perm])


def test_defaults_follow_the_model() -> None:
    cnn = small_cnn()
    mixer = AutoMix(model=cnn)
    assert mixer.layer == "block2" and mixer.mix_block.in_channels == 64
    needs = mixer.needs
    assert needs.features == ("block2",) and needs.features_from == "ema" and needs.ema
    assert needs.ema_momentum == 0.999
    resnet = create_model("preact_resnet18", num_classes=10)
    assert AutoMix(model=resnet).layer == "layer3" and AutoMix(model=resnet).mix_block.in_channels == 256
    ad = AdAutoMix(model=cnn, momentum=0.99)
    assert ad.needs.features == ("block2", "head") and ad.needs.ema_momentum == 0.99
    assert AutoMix(layer="block1", in_channels=32).mix_block.in_channels == 32  # no model: the caller says


@pytest.mark.parametrize("cls", CLASSES)
def test_built_without_model_the_context_binds_it(cls) -> None:
    """As a config is validated: no model at construction; MixContext picks the layer and builds the Mix Block."""
    mixer = cls()
    assert mixer.layer is None and mixer.trainable_parameters() == [] and mixer.optimizer_groups() == []
    assert mixer.needs.ema and mixer.needs.features_from == "ema"
    model = small_cnn()
    x, y = digits(8)
    with pytest.raises(MixlabValueError, match="does not know its model"):
        mixer(x, y, context={"model": model})
    context = MixContext(mixer, model)
    assert mixer.layer == "block2" and len(mixer.trainable_parameters()) == 2
    assert mixer(x, y, context=context(x, y)).inputs.shape == x.shape


def test_optimizer_group_is_the_mix_block() -> None:
    mixer = AutoMix(model=small_cnn(), lr_scale=0.5, weight_decay=0.0)
    (group,) = mixer.optimizer_groups()
    assert group["lr_scale"] == 0.5 and group["weight_decay"] == 0.0
    assert [id(p) for p in group["params"]] == [id(p) for p in mixer.mix_block.parameters()]
    assert mixer.to("cpu") is mixer


def test_whole_samples_stay_whole() -> None:
    """In sample mode with p < 1 the samples left unmixed (λ = 1) are copied exactly."""
    model = small_cnn()
    mixer = AutoMix(model=model, lam_mode="sample", p=0.5)
    x, _, _, mb = mixed_step(mixer, model, n=32)
    kept = mb.lam == 1.0
    assert 0 < int(kept.sum()) < 32
    assert torch.equal(mb.inputs[kept], x[kept])


def test_mix_block_is_symmetric_in_adautomix() -> None:
    """Swapping the two sources and λ -> 1 - λ gives the complementary mask."""
    torch.manual_seed(0)
    block = MixBlock(6, symmetric=True)
    nn.init.normal_(block.projection.weight, std=0.5)
    features, perm, lam = torch.randn(4, 6, 3, 3), torch.tensor([1, 0, 3, 2]), torch.tensor([0.2, 0.8, 0.3, 0.7])
    mask = block(features, perm, lam, (6, 6))
    assert float(mask.detach().std()) > 0.01
    torch.testing.assert_close(mask[perm], 1 - mask, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ training in a user's loop


@pytest.mark.parametrize(("cls", "lr"), [(AutoMix, 0.05), (AdAutoMix, 0.025)])
def test_trains_in_own_loop(cls, lr: float) -> None:
    """Default settings except one λ per sample (a steadier loss over a short run); AdAutoMix adds the
    clean cross-entropy to the mixed one, so its classifier takes half the learning rate."""
    x, y = digits(384)
    model = small_cnn()
    mixer = cls(model=model, lam_mode="sample", seed=0)
    result = own_loop(mixer, model, x, y, steps=24, batch=48, lr=lr)
    assert_trains(result)
    assert_parameters_changed(result)


@pytest.mark.parametrize("cls", CLASSES)
def test_one_backward_reaches_classifier_and_generator_not_ema(cls) -> None:
    model = small_cnn()
    mixer = cls(model=model)
    _, _, context, mb = mixed_step(mixer, model)
    outputs = mb.forward(model)
    loss = mixed_cross_entropy(outputs, mb) + sum(mixer.loss_terms(mb, outputs).values())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.trainable_parameters())
    assert context.ema_model is not None
    assert all(p.grad is None and not p.requires_grad for p in context.ema_model.parameters())


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_automix_terms(fraction: float) -> None:
    """The classifier's input is detached; the terms are the EMA's mixed loss and the mask loss, and
    train only the Mix Block."""
    model = small_cnn()
    mixer = AutoMix(model=model, mask_margin=0.0, teacher_fraction=fraction)
    _, _, context, mb = mixed_step(mixer, model)
    assert not mb.inputs.requires_grad  # the online classifier gets the mask detached
    terms = mixer.loss_terms(mb, model(mb.inputs))
    assert set(terms) == {"mix_block", "mask"}
    model_grads = grads(sum(terms.values()), list(model.parameters()))
    assert all(g is None for g in model_grads)  # the loss terms do not train the classifier
    kept = mb.aux[AUX_KEY].mask.flatten(1).mean(1)
    torch.testing.assert_close(terms["mask"], 0.1 * (kept - mb.lam).abs().mean())
    rows = int(16 * fraction)
    part = MixedBatch(mb.inputs[:rows], mb.target_a[:rows], mb.target_b[:rows], mb.lam[:rows], mb.perm[:rows])
    with torch.no_grad():
        want = mixed_cross_entropy(context.ema_model.eval()(part.inputs), part)
    torch.testing.assert_close(terms["mix_block"], want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ AdAutoMix's adversary


def test_adautomix_generator_gets_the_reversed_classifier_gradient() -> None:
    torch.manual_seed(0)
    model = small_cnn()
    mixer = AdAutoMix(model=model, clean_weight=0.0, adversarial_weight=0.3)
    _, _, _, mb = mixed_step(mixer, model, n=8)
    assert mixer.adversarial_step and mb.inputs.requires_grad
    block = list(mixer.mix_block.parameters())
    reversed_ = grads(mixed_cross_entropy(model(mb.inputs), mb), block + list(model.parameters()))
    plain = grads(mixed_cross_entropy(model(mb.aux[AUX_KEY].mixed), mb), block + list(model.parameters()))
    for got, want in zip(reversed_[: len(block)], plain[: len(block)], strict=True):
        torch.testing.assert_close(got, -0.3 * want)
    flat_got = torch.cat([g.flatten() for g in reversed_[: len(block)]])
    flat_want = torch.cat([g.flatten() for g in plain[: len(block)]])
    assert float(flat_got @ flat_want) < 0  # opposite sign: the generator ascends the classifier's loss
    for got, want in zip(reversed_[len(block) :], plain[len(block) :], strict=True):
        torch.testing.assert_close(got, want)  # the classifier descends its loss as usual


def test_adautomix_similarity_term_is_present_and_differentiable() -> None:
    model = small_cnn()
    mixer = AdAutoMix(model=model, teacher_fraction=1.0)
    x, _, context, mb = mixed_step(mixer, model)
    outputs = mb.forward(model)
    terms = mixer.loss_terms(mb, outputs)
    assert set(terms) == {"similarity", "clean"}
    similarity = terms["similarity"]
    assert similarity.requires_grad and torch.isfinite(similarity) and float(similarity.detach()) >= 0
    block_grads = grads(similarity, list(mixer.mix_block.parameters()))
    assert all(g is not None and torch.isfinite(g).all() for g in block_grads)
    assert sum(float(g.abs().sum()) for g in block_grads) > 0
    assert all(g is None for g in grads(similarity, list(model.parameters())))
    # the value: λ-weighted cosine distances of the EMA teacher's logits (in eval mode, as the context's)
    ema = context.ema_model.eval()
    with torch.no_grad():
        mixed, clean = ema(mb.inputs), ema(x)
    cos = nn.functional.cosine_similarity
    lam = mb.lam
    want = 0.7 * (lam * (1 - cos(mixed, clean)) + (1 - lam) * (1 - cos(mixed, clean[mb.perm]))).mean()
    torch.testing.assert_close(similarity, want, atol=1e-5, rtol=1e-4)
    # the clean term is the classifier's cross-entropy on the clean batch, from the same forward
    with torch.no_grad():
        clean_logits = model(torch.cat([mb.inputs, x]))[x.shape[0] :]
    torch.testing.assert_close(terms["clean"], nn.functional.cross_entropy(clean_logits, mb.target_a))


def test_adautomix_alternates_with_cooperative_steps() -> None:
    model = small_cnn()
    mixer = AdAutoMix(model=model)
    mixer.after_step()
    assert not mixer.adversarial_step
    _, _, _, mb = mixed_step(mixer, model)
    assert not mb.inputs.requires_grad
    assert set(mixer.loss_terms(mb, mb.forward(model))) == {"mix_block", "clean"}
    always = AdAutoMix(model=model, alternate=False)
    always.after_step()
    assert always.adversarial_step


# ------------------------------------------------------------------ state


@pytest.mark.parametrize("cls", CLASSES)
def test_state_dict_round_trip(cls) -> None:
    model = small_cnn()
    x, y = digits(16)
    trained = cls(model=model)
    with torch.no_grad():
        for p in trained.mix_block.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    trained.after_step()
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    fresh = cls(model=model)
    fresh.load_state_dict(torch.load(buffer))
    context = MixContext(trained, model)
    a = trained(x, y, torch.Generator().manual_seed(5), context=context(x, y))
    b = fresh(x, y, torch.Generator().manual_seed(5), context=context(x, y))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.lam, b.lam) and torch.equal(a.mask, b.mask)
    untrained = cls(model=model)(x, y, torch.Generator().manual_seed(5), context=context(x, y))
    assert not torch.equal(a.inputs, untrained.inputs)
    if cls is AdAutoMix:
        assert fresh.steps == 1 and fresh.adversarial_step == trained.adversarial_step
    with pytest.raises(MixlabValueError, match="mix_block"):
        fresh.load_state_dict({"steps": 0} if cls is AdAutoMix else {})
    unbound = cls()
    assert unbound.state_dict() == ({"steps": 0} if cls is AdAutoMix else {})
    with pytest.raises(MixlabValueError, match="does not know its model"):
        unbound.load_state_dict(trained.state_dict())


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("cls", CLASSES)
def test_missing_context_says_how_to_build_it(cls) -> None:
    model = small_cnn()
    mixer = cls(model=model)
    x, y = digits(8)
    with pytest.raises(MixlabValueError, match=r"MixContext\(mixer, model\)"):
        mixer(x, y)
    features = MixContext(mixer, model)(x, y)["features"]
    with pytest.raises(MixlabValueError, match="EMA model"):
        mixer(x, y, context={"model": model, "features": features})


@pytest.mark.parametrize("cls", CLASSES)
def test_unknown_layer_lists_the_available_ones(cls) -> None:
    with pytest.raises(UnknownNameError, match="block2"):
        cls(model=small_cnn(), layer="block9")


@pytest.mark.parametrize(
    ("cls", "params", "error"),
    [
        (AutoMix, {"momentum": 1.0}, MixlabValueError),
        (AutoMix, {"momentum": -0.1}, MixlabValueError),
        (AutoMix, {"generator_weight": 0.0}, MixlabValueError),
        (AutoMix, {"mask_weight": -1.0}, MixlabValueError),
        (AutoMix, {"mask_margin": 2.0}, MixlabValueError),
        (AutoMix, {"lr_scale": 0.0}, MixlabValueError),
        (AutoMix, {"reduction": 0}, MixlabValueError),
        (AutoMix, {"upsample": "cubic"}, UnknownNameError),
        (AutoMix, {"inplace": True}, MixlabValueError),
        (AutoMix, {"layer": "input"}, MixlabValueError),
        (AutoMix, {"layer": 3}, MixlabTypeError),
        (AdAutoMix, {"adversarial_weight": 0.0}, MixlabValueError),
        (AdAutoMix, {"similarity_weight": -0.5}, MixlabValueError),
        (AdAutoMix, {"clean_weight": -1.0}, MixlabValueError),
        (AdAutoMix, {"cooperative_weight": 0.0}, MixlabValueError),
        (AdAutoMix, {"alternate": "yes"}, MixlabTypeError),
        (AdAutoMix, {"output_layer": "logits"}, UnknownNameError),
    ],
)
def test_bad_parameters_are_refused(cls, params, error) -> None:
    with pytest.raises(error):
        cls(model=small_cnn(), **params)


def test_layer_and_channels_that_cannot_be_inferred_are_asked_for() -> None:
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    with pytest.raises(MixlabValueError, match="layer="):
        AutoMix(model=plain)  # no stages to pick a layer from
    assert AutoMix(model=plain, layer="0").mix_block.in_channels == 4
    with pytest.raises(MixlabValueError, match="in_channels="):
        AdAutoMix(model=plain, layer="1", output_layer="3")  # a ReLU says nothing of its channels
    assert AdAutoMix(model=plain, layer="1", output_layer="3", in_channels=4).mix_block.in_channels == 4
    with pytest.raises(MixlabValueError, match="teacher_fraction"):
        AutoMix(model=small_cnn(), teacher_fraction=0.0)


def test_layer_without_a_feature_map_is_refused() -> None:
    model = small_cnn()
    mixer = AutoMix(model=model, layer="fc")
    x, y = digits(8)
    with pytest.raises(MixlabValueError, match="feature map"):
        mixer(x, y, context=MixContext(mixer, model)(x, y))


def test_adautomix_clean_loss_needs_the_batch_forward() -> None:
    model = small_cnn()
    mixer = AdAutoMix(model=model)
    _, _, _, mb = mixed_step(mixer, model)
    with pytest.raises(MixlabError, match=r"mb.forward\(model\)"):
        mixer.loss_terms(mb, model(mb.inputs))


def test_reverse_gradient_scales_and_flips() -> None:
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    (reverse_gradient(w, 2.0) * torch.tensor([3.0, 5.0])).sum().backward()
    assert w.grad.tolist() == [-6.0, -10.0]
