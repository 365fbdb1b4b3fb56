"""AutoMix and AdAutoMix: the contract, training in a user's loop, the generators' gradients, state, bad input.

The formulas (mask loss, momentum schedule, Mix Blocks, generator objectives, label weights) are pinned
by hand in ``tests/fidelity/test_automix_fidelity.py`` and ``tests/fidelity/test_adautomix_fidelity.py``.
"""

from __future__ import annotations

import io
import re

import pytest
import torch
from torch import nn

from mixer_checks import assert_mixer_contract, assert_parameters_changed, assert_trains, digits, own_loop, small_cnn
from mixlab.errors import MixlabError, MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.losses import mixed_cross_entropy
from mixlab.methods.context import MixContext, forward_until
from mixlab.methods.learned import AUX_KEY, AdaptiveMixBlock, AdAutoMix, AutoMix, MixBlock
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


def classifier_masks(mixer, x, mb) -> torch.Tensor:
    """The Mix Block's masks for the classifier's sources, recomputed from the encoder's features."""
    with torch.no_grad():
        features = forward_until(mixer.encoder, x, [mixer.layer], train=True)[mixer.layer]
        return mixer.mix_block(features, mb.sources, mb.weights, x.shape[2:])


# ------------------------------------------------------------------ contract and mixing


@pytest.mark.parametrize("cls", CLASSES)
def test_contract_and_mask(cls) -> None:
    model = small_cnn()
    x, y = digits(24)
    mixer = cls(model=model, lam_margin=0.0)
    mb = assert_mixer_contract(mixer, x, y, model)
    # lam is the drawn weight (one per batch), not the mask mean; the mask is the weight of x in the inputs.
    assert torch.all(mb.lam == mb.lam[0]) and 0 < float(mb.lam[0]) < 1
    assert mb.num_sources == (2 if cls is AutoMix else 3)
    assert mb.mask is not None and mb.mask.shape == (24, 1, 16, 16)
    masks = classifier_masks(mixer, x, mb)
    torch.testing.assert_close(masks.sum(1), torch.ones(24, 16, 16))
    torch.testing.assert_close(mb.mask, masks[:, :1])
    want = sum(masks[:, k : k + 1] * x[mb.sources[:, k]] for k in range(mb.num_sources))
    torch.testing.assert_close(mb.inputs, want, atol=1e-5, rtol=1e-5)


def test_defaults_follow_the_model() -> None:
    cnn = small_cnn()
    mixer = AutoMix(model=cnn)
    assert mixer.layer == "block2" and mixer.mix_block.in_channels == 64
    assert isinstance(mixer.mix_block, MixBlock) and not mixer.mix_block.lam_concat
    assert mixer.mix_block.upsample == "nearest" and mixer.lam_margin == 0.08
    assert (mixer.momentum, mixer.end_momentum, mixer.momentum_delay) == (0.999, 0.999999, 0.1)
    needs = mixer.needs
    assert needs.model and not needs.ema and not needs.features  # the mixer keeps its own momentum encoder
    resnet = create_model("preact_resnet18", num_classes=10)
    assert AutoMix(model=resnet).layer == "layer3" and AutoMix(model=resnet).mix_block.in_channels == 256
    ad = AdAutoMix(model=cnn, momentum=0.99)
    assert ad.num_sources == 3 and isinstance(ad.mix_block, AdaptiveMixBlock) and ad.mix_block.upsample == "linear"
    assert ad.momentum == 0.99 and ad.lam_margin == 0.03 and ad.similarity_weight == pytest.approx(0.7)
    assert AutoMix(layer="block1", in_channels=32).mix_block.in_channels == 32  # no model: the caller says


@pytest.mark.parametrize("cls", CLASSES)
def test_built_without_model_the_context_binds_it(cls) -> None:
    """As a config is validated: no model at construction; MixContext picks the layer, builds the Mix Block
    and the momentum encoder."""
    mixer = cls()
    assert mixer.layer is None and mixer.trainable_parameters() == [] and mixer.optimizer_groups() == []
    assert mixer.needs.model and mixer.encoder is None
    model = small_cnn()
    x, y = digits(8)
    with pytest.raises(MixlabValueError, match="does not know its model"):
        mixer(x, y, context={"model": model})
    context = MixContext(mixer, model)
    assert mixer.layer == "block2" and len(mixer.trainable_parameters()) == 2
    assert mixer.encoder is not None and mixer.encoder is not model
    assert all(not p.requires_grad for p in mixer.encoder.parameters())
    assert mixer(x, y, context=context(x, y)).inputs.shape == x.shape
    encoder = mixer.encoder
    MixContext(mixer, model)  # the same model binds again: the encoder is kept
    assert mixer.encoder is encoder


def test_optimizer_group_is_the_mix_block() -> None:
    mixer = AutoMix(model=small_cnn(), lr_scale=0.5, weight_decay=0.0)
    (group,) = mixer.optimizer_groups()
    assert group["lr_scale"] == 0.5 and group["weight_decay"] == 0.0
    assert [id(p) for p in group["params"]] == [id(p) for p in mixer.mix_block.parameters()]
    assert mixer.to("cpu") is mixer


@pytest.mark.parametrize("cls", CLASSES)
def test_whole_samples_stay_whole(cls) -> None:
    """In sample mode with p < 1 the samples left unmixed (weight 1 on themselves) are copied exactly."""
    model = small_cnn()
    mixer = cls(model=model, lam_mode="sample", p=0.5)
    x, _, _, mb = mixed_step(mixer, model, n=32)
    kept = mb.lam == 1.0
    assert 0 < int(kept.sum()) < 32
    assert torch.equal(mb.inputs[kept], x[kept])


@pytest.mark.parametrize("cls", CLASSES)
def test_one_draw_when_asked(cls) -> None:
    """separate_draws=False: the classifier trains on the generator's own sample, detached."""
    model = small_cnn()
    mixer = cls(model=model, separate_draws=False, lam_margin=0.0)
    _, _, _, mb = mixed_step(mixer, model)
    generated = mb.aux[AUX_KEY]
    assert torch.equal(generated.sources, mb.sources) and torch.equal(generated.weights, mb.weights)
    torch.testing.assert_close(mb.inputs, generated.mixed.detach())
    assert not mb.inputs.requires_grad and generated.mixed.requires_grad


def test_adaptive_block_is_symmetric_in_its_sources() -> None:
    """Permuting the sources (and their weights) permutes the masks the same way."""
    torch.manual_seed(0)
    block = AdaptiveMixBlock(6, lam_concat=True)
    nn.init.normal_(block.projection.weight, std=0.5)
    features = torch.randn(4, 6, 3, 3)
    sources = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 0], [3, 0, 1]])
    weights = torch.tensor([[0.2, 0.5, 0.3]]).expand(4, 3)
    mask = block(features, sources, weights, (6, 6))
    assert float(mask.detach().std()) > 0.01
    order = torch.tensor([2, 0, 1])
    swapped = block(features, sources[:, order], weights[:, order], (6, 6))
    torch.testing.assert_close(swapped, mask[:, order], atol=1e-6, rtol=0)


# ------------------------------------------------------------------ training in a user's loop


@pytest.mark.parametrize(("cls", "lr"), [(AutoMix, 0.025), (AdAutoMix, 0.025)])
def test_trains_in_own_loop(cls, lr: float) -> None:
    """Default settings except one ratio per sample (a steadier loss over a short run); both add the clean
    cross-entropy to the mixed one, so the classifier takes half the learning rate."""
    x, y = digits(384)
    model = small_cnn()
    mixer = cls(model=model, lam_mode="sample", seed=0)
    mixer.start_training(24)
    result = own_loop(mixer, model, x, y, steps=24, batch=48, lr=lr)
    assert_trains(result)
    assert_parameters_changed(result)
    assert mixer.steps == 24 and mixer.current_momentum == pytest.approx(0.999999)


@pytest.mark.parametrize("cls", CLASSES)
def test_one_backward_reaches_classifier_and_generator_not_encoder(cls) -> None:
    model = small_cnn()
    mixer = cls(model=model)
    _, _, _, mb = mixed_step(mixer, model)
    outputs = mb.forward(model)
    loss = mixed_cross_entropy(outputs, mb) + sum(mixer.loss_terms(mb, outputs).values())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.trainable_parameters())
    assert all(p.grad is None and not p.requires_grad for p in mixer.encoder.parameters())


@pytest.mark.parametrize("cls", CLASSES)
def test_loss_terms_train_only_the_generator_and_the_clean_term_only_the_classifier(cls) -> None:
    model = small_cnn()
    mixer = cls(model=model)
    _, _, _, mb = mixed_step(mixer, model)
    assert not mb.inputs.requires_grad  # the classifier's masks are detached
    terms = mixer.loss_terms(mb, mb.forward(model))
    generator_terms = sum(value for key, value in terms.items() if key not in ("clean", "linear_mix"))
    assert all(g is None for g in grads(generator_terms, list(model.parameters())))
    assert all(g is None for g in grads(terms["clean"], list(mixer.mix_block.parameters())))


def test_momentum_encoder_keeps_its_own_batchnorm_statistics() -> None:
    """The encoder runs in train mode (batch statistics) and after_step moves only its weights."""
    model = small_cnn()
    mixer = AutoMix(model=model)
    x, y = digits(16)
    running = [b.clone() for name, b in mixer.encoder.named_buffers() if name.endswith("running_mean")]
    mixer(x, y, torch.Generator().manual_seed(0))
    moved = [b for name, b in mixer.encoder.named_buffers() if name.endswith("running_mean")]
    assert any(not torch.equal(a, b) for a, b in zip(running, moved, strict=True))  # its forwards update them
    with torch.no_grad():
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(1.0)
    before = {k: v.clone() for k, v in mixer.encoder.state_dict().items()}
    mixer.after_step()
    for name, value in mixer.encoder.named_buffers():
        assert torch.equal(value, before[name]), name  # not copied from the model
    assert mixer.steps == 1


# ------------------------------------------------------------------ AdAutoMix's alternation


def test_adautomix_alternates_adversarial_and_cooperative_steps() -> None:
    model = small_cnn()
    mixer = AdAutoMix(model=model)
    _, _, _, mb = mixed_step(mixer, model)
    assert mixer.adversarial_step and set(mixer.loss_terms(mb, mb.forward(model))) == {
        "mix_block",
        "similarity",
        "clean",
        "linear_mix",
    }
    mixer.after_step()
    assert not mixer.adversarial_step
    _, _, _, mb = mixed_step(mixer, model)
    assert set(mixer.loss_terms(mb, mb.forward(model))) == {"mix_block", "clean", "linear_mix"}
    always = AdAutoMix(model=model, adversarial_every=1)
    always.after_step()
    assert always.adversarial_step
    two = AdAutoMix(model=model, sources=2)
    _, _, _, mb = mixed_step(two, model)
    assert mb.num_sources == 2 and set(two.loss_terms(mb, mb.forward(model))) == {"mix_block", "similarity", "clean"}


# ------------------------------------------------------------------ state


@pytest.mark.parametrize("cls", CLASSES)
def test_state_dict_round_trip(cls) -> None:
    model = small_cnn()
    x, y = digits(16)
    trained = cls(model=model)
    with torch.no_grad():
        for p in [*trained.mix_block.parameters(), *trained.encoder.parameters()]:
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    trained.after_step()
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    fresh = cls(model=model)
    fresh.load_state_dict(torch.load(buffer))
    assert fresh.steps == 1 and set(fresh.state_dict()) == {"steps", "mix_block", "encoder"}
    a = trained(x, y, torch.Generator().manual_seed(5))
    b = fresh(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.lam, b.lam) and torch.equal(a.mask, b.mask)
    untrained = cls(model=model)(x, y, torch.Generator().manual_seed(5))
    assert not torch.equal(a.inputs, untrained.inputs)
    with pytest.raises(MixlabValueError, match="mix_block"):
        fresh.load_state_dict({"steps": 0})
    with pytest.raises(MixlabValueError, match="encoder"):
        fresh.load_state_dict({"steps": 0, "mix_block": trained.state_dict()["mix_block"]})
    with pytest.raises(MixlabValueError, match="steps"):
        fresh.load_state_dict({})
    unbound = cls()
    assert unbound.state_dict() == {"steps": 0}
    with pytest.raises(MixlabValueError, match="does not know its model"):
        unbound.load_state_dict(trained.state_dict())


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("cls", CLASSES)
def test_unbound_mixer_says_how_to_bind_it(cls) -> None:
    x, y = digits(8)
    with pytest.raises(MixlabValueError, match=r"MixContext\(mixer, model\)"):
        cls()(x, y)


@pytest.mark.parametrize("cls", CLASSES)
def test_unknown_layer_lists_the_available_ones(cls) -> None:
    with pytest.raises(UnknownNameError, match="block2"):
        cls(model=small_cnn(), layer="block9")


@pytest.mark.parametrize(
    ("cls", "params", "error", "says"),
    [
        (AutoMix, {"momentum": 1.0}, MixlabValueError, "1.0"),
        (AutoMix, {"momentum": -0.1}, MixlabValueError, "-0.1"),
        (AutoMix, {"end_momentum": 0.99}, MixlabValueError, "0.99"),
        (AutoMix, {"end_momentum": 1.5}, MixlabValueError, "1.5"),
        (AutoMix, {"momentum_delay": 1.5}, MixlabValueError, "1.5"),
        (AutoMix, {"lam_margin": 0.5}, MixlabValueError, "0.5"),
        (AutoMix, {"lam_margin": -0.1}, MixlabValueError, "-0.1"),
        (AutoMix, {"generator_weight": 0.0}, MixlabValueError, "0.0"),
        (AutoMix, {"mask_weight": -1.0}, MixlabValueError, "-1.0"),
        (AutoMix, {"mask_margin": 2.0}, MixlabValueError, "2.0"),
        (AutoMix, {"mask_loss": "pixel"}, UnknownNameError, "batch"),
        (AutoMix, {"clean_weight": -1.0}, MixlabValueError, "-1.0"),
        (AutoMix, {"lr_scale": 0.0}, MixlabValueError, "0.0"),
        (AutoMix, {"reduction": 0}, MixlabValueError, "0"),
        (AutoMix, {"upsample": "cubic"}, UnknownNameError, "nearest"),
        (AutoMix, {"lam_concat": "yes"}, MixlabTypeError, "yes"),
        (AutoMix, {"separate_draws": 1}, MixlabTypeError, "1"),
        (AutoMix, {"inplace": True}, MixlabValueError, "inplace"),
        (AutoMix, {"layer": "input"}, MixlabValueError, "input"),
        (AutoMix, {"layer": "output"}, MixlabValueError, "output"),
        (AutoMix, {"layer": 3}, MixlabTypeError, "3"),
        (AutoMix, {"teacher_fraction": 0.0}, MixlabValueError, "teacher_fraction"),
        (AdAutoMix, {"sources": 1}, MixlabValueError, "1"),
        (AdAutoMix, {"sources": 2.5}, MixlabTypeError, "2.5"),
        (AdAutoMix, {"adversarial_weight": 0.0}, MixlabValueError, "0.0"),
        (AdAutoMix, {"similarity_weight": -0.5}, MixlabValueError, "-0.5"),
        (AdAutoMix, {"similarity": "maximise"}, UnknownNameError, "preserve"),
        (AdAutoMix, {"adversarial_every": 0}, MixlabValueError, "0"),
        (AdAutoMix, {"cooperative_weight": 0.0}, MixlabValueError, "0.0"),
        (AdAutoMix, {"mixup_ratio": 1.5}, MixlabValueError, "1.5"),
        (AdAutoMix, {"clean_weight": -1.0}, MixlabValueError, "-1.0"),
        (AdAutoMix, {"output_layer": "logits"}, UnknownNameError, "head"),
        (AdAutoMix, {"output_layer": "output"}, MixlabValueError, "output"),
    ],
)
def test_bad_parameters_are_refused_at_construction(cls, params, error, says) -> None:
    with pytest.raises(error, match=re.escape(says)):
        cls(model=small_cnn(), **params)


def test_total_steps_must_be_a_positive_int() -> None:
    with pytest.raises(MixlabValueError, match="0"):
        AutoMix().start_training(0)
    with pytest.raises(MixlabTypeError, match=r"10\.5"):
        AdAutoMix().start_training(10.5)


def test_layer_and_channels_that_cannot_be_inferred_are_asked_for() -> None:
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    with pytest.raises(MixlabValueError, match="layer="):
        AutoMix(model=plain)  # no stages to pick a layer from
    assert AutoMix(model=plain, layer="0").mix_block.in_channels == 4
    with pytest.raises(MixlabValueError, match="in_channels="):
        AdAutoMix(model=plain, layer="1")  # a ReLU says nothing of its channels
    assert AdAutoMix(model=plain, layer="1", output_layer="3", in_channels=4).mix_block.in_channels == 4


def test_layer_without_a_feature_map_is_refused() -> None:
    model = small_cnn()
    mixer = AutoMix(model=model, layer="fc")
    x, y = digits(8)
    with pytest.raises(MixlabValueError, match="feature map"):
        mixer(x, y, context=MixContext(mixer, model)(x, y))


@pytest.mark.parametrize("cls", CLASSES)
def test_clean_loss_needs_the_batch_forward(cls) -> None:
    model = small_cnn()
    mixer = cls(model=model)
    _, _, _, mb = mixed_step(mixer, model)
    with pytest.raises(MixlabError, match=r"mb.forward\(model\)"):
        mixer.loss_terms(mb, model(mb.inputs))
    quiet = cls(model=model, clean_weight=0.0)
    _, _, _, mb = mixed_step(quiet, model)
    assert mb.forward_fn is None and "clean" not in quiet.loss_terms(mb, model(mb.inputs))
