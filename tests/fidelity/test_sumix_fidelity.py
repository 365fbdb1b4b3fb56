"""SUMix against the authors' code (JinXins/SUMix, ``ClsUncertainMixupHead.IN_loss`` and the ``is_IN`` branch of
``MixUpClassification.forward_mix``), computed by hand from its equations on small fixed tensors.

The code: ``p``, ``p̂`` the classifier's detached softmax on the clean and the mixed batch;
``α_a = N·l2norm(softmax(p̂ − p_i·(1 − t_j)))``, ``α_b = N·l2norm(softmax(p̂ − p_j·(1 − t_i)))``;
``λ̂ = λe^{-α_a[y_i]} / (λe^{-α_a[y_i]} + (1-λ)e^{-α_b[y_j]})``; loss
``mean(λ̂·mean CE(z, y_i) + (1-λ̂)·mean CE(z, y_j)) + γ(λ·mean CE(e^{-(α_a+β_a)}, y_i) + (1-λ)·mean CE(e^{-(α_b+β_b)}, y_j))``
with ``β_a = u(z_i) + u(ẑ)``, ``β_b = u(z_j) + u(ẑ)``, ``u = l2norm(softmax(linear))``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from mixlab import MixedBatch
from mixlab.errors import MixlabValueError, UnknownNameError
from mixlab.losses import mixed_cross_entropy
from mixlab.methods.sumix import SUMix
from mixlab.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def code_lambda(p: float, lam: float, classes: int, batch: int) -> float:
    """λ̂ by hand for one-hot sources and ``p̂ = p·t_i + (1-p)·t_j`` (different classes).

    ``p̂ − p_i(1 − t_j) = (p - 1)t_i + (1 - p)t_j``: its softmax is ``∝ (e^{p-1}, e^{1-p}, 1, ..., 1)``;
    ``p̂ − p_j(1 − t_i) = p·t_i − p·t_j``: ``∝ (e^{p}, e^{-p}, 1, ..., 1)``; the L2 norm removes the sum.
    """
    alpha_a = batch * math.exp(p - 1) / math.sqrt(math.exp(2 * (p - 1)) + math.exp(2 * (1 - p)) + classes - 2)
    alpha_b = batch * math.exp(-p) / math.sqrt(math.exp(2 * p) + math.exp(-2 * p) + classes - 2)
    kept_a, kept_b = lam * math.exp(-alpha_a), (1 - lam) * math.exp(-alpha_b)
    return kept_a / (kept_a + kept_b)


def constructed_batch(shares: list[float], classes: int, lam: float = 0.5) -> tuple[MixedBatch, dict]:
    """Sample ``i`` of class ``i``, partner ``i+1``; clean softmax one-hot; mixed softmax ``p·t_i + (1-p)·t_j``."""
    n = len(shares)
    y = torch.arange(n) % classes
    perm = (torch.arange(n) + 1) % n
    clean = torch.nn.functional.one_hot(y, classes).float()
    share = torch.tensor(shares).unsqueeze(1)
    mixed = share * clean + (1 - share) * clean[perm]
    mb = MixedBatch(torch.zeros(n, 1, 1, 1), y, y[perm], torch.full((n,), lam), perm)
    features = torch.zeros(n, 2)
    passes = {"clean_logits": clean.log(), "mixed_logits": mixed.log(), "clean_features": features}
    passes["mixed_features"] = features
    return mb, passes


def test_the_correction_follows_the_code_in_direction_and_magnitude():
    # K = N = 100, λ = 0.5, a mixed image that is mostly class a (p̂ = 0.85 t_a + 0.15 t_b).
    mixer = SUMix(layer="fc", num_classes=100, feature_dim=2, seed=0)
    mb, passes = constructed_batch([0.85] * 100, 100)
    mixer.relabel(mb, passes, mb.lam.clone())
    expected = code_lambda(0.85, 0.5, 100, 100)
    assert abs(expected - 0.012067) < 1e-5  # the hand value: the code moves λ towards the partner
    corrected = mb.aux["sumix"]["corrected_lam"]
    torch.testing.assert_close(corrected, torch.full((100,), expected), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mb.lam, torch.full((100,), expected), atol=1e-5, rtol=1e-4)
    assert not mb.lam.requires_grad
    # the α terms themselves: N/√(e^{-0.3} + e^{0.3} + 98)·e^{-0.15} at class a, N·e^{-0.85}/√(e^{1.7}+e^{-1.7}+98) at b
    alpha_a, alpha_b = mb.aux["sumix"]["alpha_a"], mb.aux["sumix"]["alpha_b"]
    assert abs(float(alpha_a[0, 0]) - 8.603180) < 1e-4 and abs(float(alpha_b[0, 1]) - 4.198084) < 1e-4


def test_the_label_weight_is_the_batch_mean_of_the_corrections_and_per_sample_on_request():
    shares = [0.85, 0.6, 0.3, 0.15, 0.5, 0.95]
    expected = torch.tensor([code_lambda(p, 0.3, 10, 6) for p in shares])
    mb, passes = constructed_batch(shares, 10, lam=0.3)
    SUMix(layer="fc", num_classes=10, feature_dim=2, seed=0).relabel(mb, passes, mb.lam.clone())
    torch.testing.assert_close(mb.aux["sumix"]["corrected_lam"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mb.lam, expected.mean().expand(6), atol=1e-5, rtol=1e-4)
    mb, passes = constructed_batch(shares, 10, lam=0.3)
    SUMix(layer="fc", num_classes=10, feature_dim=2, seed=0, lam_pairing="per_sample").relabel(
        mb, passes, mb.lam.clone()
    )
    torch.testing.assert_close(mb.lam, expected, atol=1e-5, rtol=1e-4)


def test_a_fixed_semantic_scale_replaces_the_batch_size():
    mb, passes = constructed_batch([0.85] * 4, 10)
    SUMix(layer="fc", num_classes=10, feature_dim=2, seed=0, semantic_scale=100.0).relabel(mb, passes, mb.lam.clone())
    torch.testing.assert_close(mb.lam, torch.full((4,), code_lambda(0.85, 0.5, 10, 100)), atol=1e-6, rtol=1e-4)


def test_batch_mean_label_gives_the_codes_loss():
    # mean(λ̂_a·mean_i CE_a + λ̂_b·mean_i CE_b) with λ̂_b = 1 − λ̂_a, as the code writes it
    torch.manual_seed(0)
    logits, corrected = torch.randn(5, 4), torch.tensor([0.1, 0.7, 0.4, 0.9, 0.2])
    y_a, y_b = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 2, 3, 0, 1])
    ce_a = nn.functional.cross_entropy(logits, y_a)
    ce_b = nn.functional.cross_entropy(logits, y_b)
    code_loss = (ce_a * corrected + ce_b * (1 - corrected)).mean()
    mb = MixedBatch(torch.zeros(5, 1), y_a, y_b, corrected.mean().expand(5), torch.tensor([1, 2, 3, 4, 0]))
    torch.testing.assert_close(mixed_cross_entropy(logits, mb), code_loss)


def test_uncertainty_regulariser_by_hand():
    classes, dim = 3, 2
    mixer = SUMix(layer="fc", num_classes=classes, feature_dim=dim, seed=0, gamma=0.5)
    weight = torch.tensor([[0.5, -1.0], [1.5, 0.2], [-0.3, 0.8]])
    bias = torch.tensor([0.1, -0.2, 0.0])
    with torch.no_grad():
        mixer.head.weight.copy_(weight)
        mixer.head.bias.copy_(bias)
    y, perm = torch.tensor([0, 2, 1]), torch.tensor([1, 2, 0])
    mb = MixedBatch(torch.zeros(3, 1, 1, 1), y, y[perm], torch.tensor([0.7, 0.7, 0.7]), perm)
    clean_logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.3, 1.2], [-0.5, 1.0, 0.2]])
    mixed_logits = torch.tensor([[1.0, 0.2, 0.4], [0.3, -0.7, 0.9], [0.1, 0.8, -0.2]])
    clean_features = torch.tensor([[1.0, 0.5], [-0.4, 2.0], [0.3, -1.1]], requires_grad=True)
    mixed_features = torch.tensor([[0.2, 0.1], [1.5, -0.3], [-0.8, 0.6]], requires_grad=True)
    passes = {"clean_logits": clean_logits, "mixed_logits": mixed_logits}
    passes |= {"clean_features": clean_features, "mixed_features": mixed_features}
    mixer.relabel(mb, passes, torch.full((3,), 0.7))
    got = mixer.loss_terms(mb, mixed_logits)["sumix_uncertainty"]

    def softmax(row: list[float]) -> list[float]:
        total = sum(math.exp(v) for v in row)
        return [math.exp(v) / total for v in row]

    def l2norm(row: list[float]) -> list[float]:
        norm = math.sqrt(sum(v * v for v in row))
        return [v / norm for v in row]

    def u(features: list[float]) -> list[float]:
        scores = [sum(w * f for w, f in zip(weight[k].tolist(), features, strict=True)) + float(bias[k]) for k in range(3)]
        return l2norm(softmax(scores))

    def cross_entropy(logits: list[float], label: int) -> float:
        return -math.log(softmax(logits)[label])

    n = 3
    total_a = total_b = 0.0
    for i in range(n):
        j, a, b = int(perm[i]), int(y[i]), int(y[perm[i]])
        p_i, p_j = softmax(clean_logits[i].tolist()), softmax(clean_logits[j].tolist())
        p_mix = softmax(mixed_logits[i].tolist())
        src_i = [0.0 if k == b else p_i[k] for k in range(classes)]
        src_j = [0.0 if k == a else p_j[k] for k in range(classes)]
        alpha_a = [n * v for v in l2norm(softmax([m - s for m, s in zip(p_mix, src_i, strict=True)]))]
        alpha_b = [n * v for v in l2norm(softmax([m - s for m, s in zip(p_mix, src_j, strict=True)]))]
        u_mix = u(mixed_features[i].tolist())
        beta_a = [c + m for c, m in zip(u(clean_features[i].tolist()), u_mix, strict=True)]
        beta_b = [c + m for c, m in zip(u(clean_features[j].tolist()), u_mix, strict=True)]
        total_a += cross_entropy([math.exp(-(al + be)) for al, be in zip(alpha_a, beta_a, strict=True)], a)
        total_b += cross_entropy([math.exp(-(al + be)) for al, be in zip(alpha_b, beta_b, strict=True)], b)
    expected = 0.5 * (0.7 * total_a / n + 0.3 * total_b / n)
    assert abs(float(got.detach()) - expected) < 1e-5
    got.backward()  # α is detached: the gradient reaches the head and both passes' features only through β
    assert clean_features.grad.abs().sum() > 0 and mixed_features.grad.abs().sum() > 0
    assert mixer.head.weight.grad.abs().sum() > 0


def test_the_model_runs_on_the_clean_then_the_mixed_batch_in_train_mode_with_gradient():
    torch.manual_seed(0)
    model = create_model("cnn_small", 4, in_channels=1, input_size=12).train()
    reference = copy.deepcopy(model)
    mixer = SUMix(model=model, alpha=1.0, seed=0)
    x, y = torch.randn(8, 1, 12, 12, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3] * 2)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(2))
    prior = mb.lam.clone()
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    outputs = mb.forward(model)
    handle.remove()
    assert len(seen) == 2 and torch.equal(seen[0], x) and torch.equal(seen[1], mb.inputs)
    state = mb.aux["sumix"]
    assert state["clean_features"].requires_grad and state["mixed_features"].requires_grad
    # two separate train-mode passes: BatchNorm statistics as after reference(x), reference(mixed)
    clean_logits, mixed_logits = reference(x), reference(mb.inputs)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    torch.testing.assert_close(outputs, mixed_logits)
    # λ̂ by hand from the model's own softmax
    p, p_mix = clean_logits.detach().softmax(1), mixed_logits.detach().softmax(1)
    onehot = nn.functional.one_hot(y, 4).float()
    rows = torch.arange(8)
    alpha_a = 8 * nn.functional.normalize((p_mix - p * (1 - onehot[mb.perm])).softmax(1), dim=1)
    alpha_b = 8 * nn.functional.normalize((p_mix - p[mb.perm] * (1 - onehot)).softmax(1), dim=1)
    kept_a = prior * torch.exp(-alpha_a[rows, y])
    kept_b = (1 - prior) * torch.exp(-alpha_b[rows, y[mb.perm]])
    expected = kept_a / (kept_a + kept_b)
    torch.testing.assert_close(state["corrected_lam"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mb.lam, expected.mean().expand(8), atol=1e-5, rtol=1e-5)
    # the regulariser reaches the model through the clean pass too
    model.zero_grad()
    clean_only = mixer.head(state["clean_features"]).sum()
    clean_only.backward()
    assert model.block1[0].weight.grad.abs().sum() > 0


def test_defaults_are_the_authors_cifar100_configuration():
    mixer = SUMix(layer="fc", num_classes=100, feature_dim=512)
    assert mixer.gamma == 0.5 and mixer.semantic_scale is None and mixer.lam_pairing == "batch_mean"
    assert mixer.base.name == "cutmix" and mixer.base.lam_sampler.alpha == 0.2
    for base, alpha in (("resizemix", 1.0), ("fmix", 0.2), ("saliencymix", 0.2)):  # the README table's α
        other = SUMix(layer="fc", num_classes=100, feature_dim=512, base=base)
        assert other.base.lam_sampler.alpha == alpha and other.base.p == 1.0
    # the uncertainty head keeps nn.Linear's default range U(-1/sqrt(D), 1/sqrt(D)), drawn from the mixer's seed
    bound = 512**-0.5
    largest = float(mixer.head.weight.detach().abs().max())
    assert 0.9 * bound < largest <= bound
    seeded = [SUMix(layer="fc", num_classes=100, feature_dim=512, seed=3).head.weight for _ in range(2)]
    assert torch.equal(*seeded)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"lam_pairing": "paper"}, UnknownNameError, r"unknown sumix lam_pairing 'paper'; known: batch_mean, per_sample"),
        ({"semantic_scale": 0.0}, MixlabValueError, r"semantic_scale must be a finite number > 0; got 0.0"),
        ({"semantic_scale": float("inf")}, MixlabValueError, r"semantic_scale must be a finite number > 0; got inf"),
        ({"gamma": -0.5}, MixlabValueError, r"gamma must be a finite number >= 0; got -0.5"),
    ],
)
def test_bad_options_are_refused_at_construction(kwargs: dict, error: type[Exception], pattern: str):
    with pytest.raises(error, match=pattern):
        SUMix(layer="fc", num_classes=10, feature_dim=4, **kwargs)
