"""RankMixup (Noh et al., ICCV 2023, arXiv 2308.11990): MRL and M-NDCG computed by hand.

The reference is the authors' code, cvlab-yonsei/RankMixup: ``calibrate/losses/rankmixup.py``
(``RankMixup_MRL``, ``RankMixup_MNDCG``) with ``configs/loss/mrl.yaml`` (margin 2.0 on
CIFAR, weight 0.1) and ``configs/model/resnet50_mixup.yaml`` (mixing α = 2, 1 mixed batch
for MRL, 3 for M-NDCG). The total is the clean CE plus the weighted ranking term.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import mixlab
from mixlab import MixedBatch
from mixlab.errors import MixlabValueError
from mixlab.losses import rankmixup_loss

CLEAN = [[3.0, 0.5, -1.0], [0.2, 1.0, 0.4], [1.0, 1.5, 0.0], [-0.5, 0.0, 2.5]]
MIXED = [[1.0, 0.8, -0.2], [0.9, 1.8, 0.1], [0.3, 0.2, 0.1], [0.0, 0.4, 3.0]]
Y = [0, 1, 1, 2]
PARTNER = [1, 0, 1, 0]  # row 2 mixes class 1 with itself
LAM = [0.6, 0.3, 0.8, 0.9]


def _batch(lam=LAM, partner=PARTNER) -> MixedBatch:
    n = len(lam)
    return MixedBatch(torch.zeros(n, 1), torch.tensor(Y), torch.tensor(partner), torch.tensor(lam), torch.arange(n))


def _softmax(row: list[float]) -> list[float]:
    total = sum(math.exp(v) for v in row)
    return [math.exp(v) / total for v in row]


def _clean_ce() -> list[float]:
    return [-math.log(_softmax(row)[y]) for row, y in zip(CLEAN, Y, strict=True)]


def test_defaults_are_the_authors_cifar_settings():
    defaults = {name: p.default for name, p in inspect.signature(rankmixup_loss).parameters.items()}
    assert (defaults["mode"], defaults["eta"], defaults["margin"], defaults["score"]) == ("mrl", 0.1, 2.0, "logit")


def test_mrl_equals_the_hand_computation():
    expected = []
    for ce, clean, mixed, y, b in zip(_clean_ce(), CLEAN, MIXED, Y, PARTNER, strict=True):
        hinge = max(0.0, max(mixed) - max(clean) + 2.0)  # the largest logit, margin 2
        expected.append(ce + 0.1 * (hinge if y != b else 0.0))
    got = rankmixup_loss(torch.tensor(CLEAN), torch.tensor(MIXED), torch.tensor(Y), _batch(), reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    mean = rankmixup_loss(torch.tensor(CLEAN), torch.tensor(MIXED), torch.tensor(Y), _batch())
    assert abs(float(mean) - sum(expected) / 4) < 1e-6


def test_mrl_masks_same_class_samples_per_sample_not_by_broadcast():
    # The authors' (N,) mask times (N, 1) hinges broadcasts to (N, N): mean(mask) * mean(all hinges).
    # mixlab keeps the per-sample mask the code builds: mean(mask * hinge).
    hinges = [max(0.0, max(m) - max(c) + 2.0) for c, m in zip(CLEAN, MIXED, strict=True)]
    mask = [1.0 if y != b else 0.0 for y, b in zip(Y, PARTNER, strict=True)]
    per_sample = sum(h * m for h, m in zip(hinges, mask, strict=True)) / 4
    broadcast = (sum(mask) / 4) * (sum(hinges) / 4)
    assert abs(per_sample - broadcast) > 1e-3, "the fixture must tell the two apart"
    args = torch.tensor(CLEAN), torch.tensor(MIXED), torch.tensor(Y), _batch()
    ranking = rankmixup_loss(*args, eta=1.0) - rankmixup_loss(*args, eta=0.0)
    assert abs(float(ranking) - per_sample) < 1e-5


def test_mrl_with_confidence_scores_uses_the_largest_probability():
    expected = [
        max(0.0, max(_softmax(m)) - max(_softmax(c)) + 0.5) * (y != b)
        for c, m, y, b in zip(CLEAN, MIXED, Y, PARTNER, strict=True)
    ]
    args = torch.tensor(CLEAN), torch.tensor(MIXED), torch.tensor(Y), _batch()
    got = rankmixup_loss(*args, eta=1.0, margin=0.5, score="confidence", reduction="none")
    got = got - rankmixup_loss(*args, eta=0.0, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)


MIXED_M = [
    [[0.5, 0.4, 0.0], [0.0, 2.0, 0.5], [0.2, 0.9, 0.3], [0.1, 0.0, 1.2]],
    [[2.0, 0.0, 0.1], [0.3, 0.3, 0.3], [1.0, 2.5, 0.0], [0.0, 0.2, 0.4]],
    [[0.8, 0.9, 0.0], [0.5, 0.6, 0.2], [0.0, 3.0, 0.0], [1.0, 0.0, 1.5]],
]
LAMS_M = [0.55, 0.9, 0.3]  # one λ per mixed batch, as the authors' code draws them
PARTNERS_M = [[1, 0, 2, 2], [2, 1, 0, 0], [1, 1, 1, 0]]


def _ndcg_by_hand() -> list[float]:
    losses = []
    for i, (ce, clean, y) in enumerate(zip(_clean_ce(), CLEAN, Y, strict=True)):
        items = []  # (relevance, confidence) of each mixed sample of row i
        for logits, lam, partners in zip(MIXED_M, LAMS_M, PARTNERS_M, strict=True):
            relevance = 1.0 if partners[i] == y else max(lam, 1 - lam)  # the max of the mixed label
            items.append((relevance, max(_softmax(logits[i]))))
        items.sort(key=lambda item: -item[0])  # stable: ties keep the batch order
        relevances = [1.0] + [r for r, _ in items]
        scores = [max(_softmax(clean))] + [s for _, s in items]
        dcg = sum(s / math.log2(k + 2) for k, s in enumerate(scores))
        idcg = sum(r / math.log2(k + 2) for k, r in enumerate(relevances))
        ndcg = dcg / idcg if idcg > dcg else idcg / dcg
        losses.append(ce + 0.1 * (1.0 - ndcg))
    return losses


def test_mndcg_equals_the_hand_computation():
    batches = [
        MixedBatch(torch.zeros(4, 1), torch.tensor(Y), torch.tensor(p), torch.full((4,), lam), torch.arange(4))
        for lam, p in zip(LAMS_M, PARTNERS_M, strict=True)
    ]
    mixed = [torch.tensor(m) for m in MIXED_M]
    got = rankmixup_loss(torch.tensor(CLEAN), mixed, torch.tensor(Y), batches, mode="ndcg", reduction="none")
    torch.testing.assert_close(got, torch.tensor(_ndcg_by_hand()), rtol=1e-5, atol=1e-6)


def test_mndcg_inverts_the_ratio_when_the_scores_beat_the_relevances():
    # a confident mixed sample (relevance 0.55): DCG > IDCG, so the loss uses IDCG / DCG
    clean, mixed = [5.0, 0.0, 0.0], [6.0, 0.0, 0.0]
    mb = MixedBatch(torch.zeros(1, 1), torch.tensor([0]), torch.tensor([1]), torch.tensor([0.55]), torch.tensor([0]))
    dcg = max(_softmax(clean)) + max(_softmax(mixed)) / math.log2(3)
    idcg = 1.0 + 0.55 / math.log2(3)
    assert dcg > idcg
    args = torch.tensor([clean]), [torch.tensor([mixed])], torch.tensor([0]), [mb]
    ranking = rankmixup_loss(*args, mode="ndcg", eta=1.0) - rankmixup_loss(*args, mode="ndcg", eta=0.0)
    assert abs(float(ranking) - (1.0 - idcg / dcg)) < 1e-6


def test_mixup_alpha_2_draws_one_lam_and_one_permutation_per_mixed_batch():
    # the authors' mixup_process: λ ~ Beta(2, 2) and one permutation for the whole batch
    mixer = mixlab.Mixup(alpha=2.0)
    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    mb = mixer(x, y, generator=torch.Generator().manual_seed(3))
    assert bool((mb.lam == mb.lam[0]).all())
    torch.testing.assert_close(mb.inputs, mb.lam[0] * x + (1 - mb.lam[0]) * x[mb.perm])


@pytest.mark.parametrize(("option", "value"), [("mode", "listnet"), ("score", "margin"), ("margin", -2.0)])
def test_bad_options_are_refused_naming_the_value(option, value):
    args = torch.tensor(CLEAN), torch.tensor(MIXED), torch.tensor(Y), _batch()
    with pytest.raises(MixlabValueError) as info:
        rankmixup_loss(*args, **{option: value})
    assert str(value) in str(info.value)
