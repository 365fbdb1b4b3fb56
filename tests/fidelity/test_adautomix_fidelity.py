"""AdAutoMix against the authors' code, by hand on small fixed tensors.

Reference: JinXins/Adversarial-AutoMixup ``openmixup/models/classifiers/AdAutoMix.py`` (``forward_train``:
``co_lam = lam / lam.sum()`` over ``mix_samples`` Beta draws, ``co_mixup`` with ``lam_margin``, ``forward_k``
(the momentum encoder's mixed CE and ``cos_simi_weight = mean(sum_i cos(pred_mix_k, pred_i) * lam_i)``),
``forward_q`` (``(1 - mixup_radio) CE_clean + mixup_radio CE(sum_i lam_i x[index_i])`` plus the masked mix),
and on even iterations ``loss_mix_k = -beta_radio * loss_mix_k + (1 - beta_radio) * cos_simi_weight``),
``openmixup/models/heads/Ada_mix_pine.py`` (``AdaptiveMask.co_mix``) and the CIFAR config
``configs/classification/cifar100/basic/r18_adautomix_bilinear.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixlab.losses import mixed_cross_entropy
from mixlab.methods.context import forward_until
from mixlab.methods.learned import AUX_KEY, AdaptiveMixBlock, AdAutoMix
from mixlab.models import create_model

N, CLASSES = 8, 3


class Draws:
    """A λ sampler returning fixed draws (the reference's ``np.random.beta(alpha, alpha, mix_samples)``)."""

    def __init__(self, *values: float):
        self.values = np.asarray(values, dtype=np.float64)

    def sample(self, n: int, rng: object, alpha_scale: float = 1.0) -> np.ndarray:
        return np.resize(self.values, n)


def tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cnn_small", num_classes=CLASSES, input_size=16)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 1, 16, 16, generator=g), torch.randint(0, CLASSES, (N,), generator=g)


def mixer_with_draws(*draws: float, **options) -> tuple[AdAutoMix, torch.nn.Module]:
    model = tiny_cnn()
    mixer = AdAutoMix(model=model, **options)
    mixer.lam_sampler = Draws(*draws)
    return mixer, model


# ------------------------------------------------------------------ label weights


def test_three_source_label_weights_are_the_normalised_draws() -> None:
    mixer, _ = mixer_with_draws(0.1, 0.3, 0.4)
    x, y = batch()
    mb = mixer(x, y, torch.Generator().manual_seed(0))
    weights = torch.tensor([0.1, 0.3, 0.4]) / 0.8  # [0.125, 0.375, 0.5]
    torch.testing.assert_close(mb.weights, weights.expand(N, 3))
    assert torch.equal(mb.sources[:, 0], torch.arange(N)) and mb.lam.tolist() == [0.125] * N
    # the soft target and the mixed cross-entropy use every source: sum_k w_k CE(z, y[s_k])
    soft = torch.zeros(N, CLASSES)
    for k in range(3):
        soft[torch.arange(N), y[mb.sources[:, k]]] += weights[k]
    torch.testing.assert_close(mb.soft_targets(CLASSES), soft)
    logits = torch.randn(N, CLASSES, generator=torch.Generator().manual_seed(1))
    log_p = logits.log_softmax(1)
    by_hand = -sum(weights[k] * log_p[torch.arange(N), y[mb.sources[:, k]]] for k in range(3)).mean()
    torch.testing.assert_close(mixed_cross_entropy(logits, mb), by_hand)
    # the generator's sample: the same ratios (drawn once for three sources), its own partners
    generated = mb.aux[AUX_KEY]
    torch.testing.assert_close(generated.weights, mb.weights)
    assert not torch.equal(generated.sources, mb.sources)


def test_two_sources_use_lambda_and_one_minus_lambda() -> None:
    mixer, _ = mixer_with_draws(0.6, sources=2)
    x, y = batch()
    mb = mixer(x, y, torch.Generator().manual_seed(0))
    assert mb.num_sources == 2
    torch.testing.assert_close(mb.weights, torch.tensor([[0.6, 0.4]]).expand(N, 2))


# ------------------------------------------------------------------ the generator's block


def adaptive_mask_by_hand(features: torch.Tensor, sources: list[list[int]], w: list[list[float]], b: list[float]):
    """``AdaptiveMask.co_mix`` with width 1 (rows: query, key, value), one spatial row, no upsampling:
    ``m_i = softmax_t(q_i[p] * sum_{j != i} k_j[t]) @ v_i``, then a softmax over the sources."""
    n, c, _, length = features.shape
    k_count = len(sources[0])

    def project(row: int, sample: int, pos: int) -> float:
        return sum(w[row][ch] * float(features[sample, ch, 0, pos]) for ch in range(c)) + b[row]

    out = torch.zeros(n, k_count, length, dtype=torch.float64)
    for i in range(n):
        for p in range(length):
            logits = []
            for src in range(k_count):
                q = project(0, sources[i][src], p)
                scores = [
                    q * sum(project(1, sources[i][j], t) for j in range(k_count) if j != src) for t in range(length)
                ]
                top = max(scores)
                expo = [math.exp(s - top) for s in scores]
                logits.append(sum(e / sum(expo) * project(2, sources[i][src], t) for t, e in enumerate(expo)))
            top = max(logits)
            expo = [math.exp(z - top) for z in logits]
            for src in range(k_count):
                out[i, src, p] = expo[src] / sum(expo)
    return out


def test_adaptive_mix_block_by_hand() -> None:
    features = torch.tensor(
        [
            [[[0.5, -1.0]], [[1.5, 0.3]]],
            [[[-0.2, 0.8]], [[0.4, -1.3]]],
            [[[1.1, 0.2]], [[-0.6, 0.9]]],
        ]
    )  # (3, 2, 1, 2)
    w, b = [[1.0, 0.5], [0.7, -0.4], [0.3, -0.2]], [0.1, -0.05, 0.2]
    block = AdaptiveMixBlock(2, reduction=2, upsample="linear")  # width 1
    with torch.no_grad():
        block.projection.weight.copy_(torch.tensor(w))
        block.projection.bias.copy_(torch.tensor(b))
    sources = [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    mask = block(features, torch.tensor(sources), torch.full((3, 3), 1 / 3), (1, 2))  # same size: no resampling
    want = adaptive_mask_by_hand(features, sources, w, b).float()
    torch.testing.assert_close(mask[:, :, 0], want, atol=1e-6, rtol=1e-6)
    # bilinear upsampling of the logits, then the softmax over sources
    bigger = block(features, torch.tensor(sources), torch.full((3, 3), 1 / 3), (2, 4))
    logits = want.log().view(3, 3, 1, 2)  # log-softmax values: logits up to a per-position constant
    resampled = F.interpolate(logits, size=(2, 4), mode="bilinear", align_corners=False).softmax(dim=1)
    torch.testing.assert_close(bigger, resampled, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ the generator's objective


def teacher_by_hand(mixer: AdAutoMix, x: torch.Tensor, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The momentum encoder's logits, in train mode (batch statistics), on the clean and the mixed batch."""
    clean = forward_until(mixer.encoder, x, ["output"], train=True)["output"].detach()
    return clean, forward_until(mixer.encoder, mixed, ["output"], train=True)["output"]


def mixed_ce(logits: torch.Tensor, y: torch.Tensor, sources: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    log_p = logits.log_softmax(1)
    rows = torch.arange(logits.shape[0])
    return -sum(weights[:, k] * log_p[rows, y[sources[:, k]]] for k in range(sources.shape[1])).mean()


def test_adversarial_step_ascends_the_teacher_and_minimises_the_cosine() -> None:
    mixer, model = mixer_with_draws(0.2, 0.5, 0.3)
    x, y = batch()
    mb = mixer(x, y, torch.Generator().manual_seed(0))
    assert mixer.adversarial_step  # the first step (iter 0) is adversarial
    generated = mb.aux[AUX_KEY]
    terms = mixer.loss_terms(mb, mb.forward(model))
    clean, mixed = teacher_by_hand(mixer, x, generated.mixed)
    ce = mixed_ce(mixed, y, generated.sources, generated.weights)
    torch.testing.assert_close(terms["mix_block"], -0.3 * ce, atol=1e-5, rtol=1e-5)
    cosine = sum(
        generated.weights[:, k] * F.cosine_similarity(mixed, clean[generated.sources[:, k]], dim=1) for k in range(3)
    ).mean()
    torch.testing.assert_close(terms["similarity"], 0.7 * cosine, atol=1e-5, rtol=1e-5)
    # the sign reaches the generator: its gradient is -0.3 that of the teacher's loss, +0.7 that of the cosine
    block = list(mixer.mix_block.parameters())
    got = torch.autograd.grad(terms["mix_block"] + terms["similarity"], block, retain_graph=True)
    want = torch.autograd.grad(-0.3 * ce + 0.7 * cosine, block, retain_graph=True)
    for g, h in zip(got, want, strict=True):
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-4)
    # "preserve": the cosine distance instead (1 - cos, weighted; the weights sum to 1)
    mixer.similarity = "preserve"
    preserved = mixer.loss_terms(mb, mb.forward(model))["similarity"]
    torch.testing.assert_close(preserved, 0.7 * (1.0 - cosine), atol=1e-5, rtol=1e-5)


def test_cooperative_step_descends_the_teacher() -> None:
    mixer, model = mixer_with_draws(0.2, 0.5, 0.3)
    mixer.after_step()  # iter 1: not adversarial
    x, y = batch()
    mb = mixer(x, y, torch.Generator().manual_seed(0))
    generated = mb.aux[AUX_KEY]
    terms = mixer.loss_terms(mb, mb.forward(model))
    _, mixed = teacher_by_hand(mixer, x, generated.mixed)
    assert set(terms) == {"mix_block", "clean", "linear_mix"}
    torch.testing.assert_close(terms["mix_block"], mixed_ce(mixed, y, generated.sources, generated.weights))
    pattern = []
    for _ in range(4):
        pattern.append(mixer.adversarial_step)
        mixer.after_step()
    assert pattern == [False, True, False, True]


# ------------------------------------------------------------------ the classifier's terms


def test_classifier_terms_clean_and_linear_mix() -> None:
    """``"clean"`` = 0.5 CE(clean), ``"linear_mix"`` = 0.5 CE on ``sum_k w_k x[s_k]`` with the batch's labels."""
    mixer, model = mixer_with_draws(0.1, 0.3, 0.4)
    x, y = batch()
    mb = mixer(x, y, torch.Generator().manual_seed(0))
    terms = mixer.loss_terms(mb, mb.forward(model))
    w = mb.weights
    linear = sum(w[:, k].view(N, 1, 1, 1) * x[mb.sources[:, k]] for k in range(3))
    with torch.no_grad():
        _, clean_logits, linear_logits = model(torch.cat([mb.inputs, x, linear])).split(N)
    torch.testing.assert_close(terms["clean"], 0.5 * F.cross_entropy(clean_logits, y), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        terms["linear_mix"], 0.5 * mixed_ce(linear_logits, y, mb.sources, w), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(("draws", "linear"), [((0.02, 0.5, 0.48), True), ((0.2, 0.5, 0.3), False)])
def test_lam_margin_mixes_linearly(draws: tuple[float, ...], linear: bool) -> None:
    """A first weight within 0.03 of 0 or 1: the classifier's sample is the linear mix (the reference's rule)."""
    mixer, _ = mixer_with_draws(*draws)
    x, y = batch()
    mb = mixer(x, y, torch.Generator().manual_seed(0))
    plain = sum(mb.weights[:, k].view(N, 1, 1, 1) * x[mb.sources[:, k]] for k in range(3))
    assert torch.allclose(mb.inputs, plain, atol=1e-6) == linear
