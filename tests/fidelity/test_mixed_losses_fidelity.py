"""Mixed cross-entropy and mixed BCE computed by hand.

Mixed CE: ``λ CE(z, y_a) + (1 - λ) CE(z, y_b)`` (Zhang et al., ICLR 2018, arXiv 1710.09412;
facebookresearch/mixup-cifar10 ``train.py``, ``mixup_criterion``). Mixed BCE: timm's
``BinaryCrossEntropy`` (``timm/loss/binary_cross_entropy.py``) on the mixed target of timm's
``Mixup`` (each source smoothed to ``1 - s + s/K`` on its class and ``s/K`` elsewhere), the
mean over all ``N * K`` terms; DeiT III (Touvron et al., ECCV 2022, arXiv 2204.07118;
facebookresearch/deit ``engine.py``) binarises the target at 0.0 with no smoothing.
"""

from __future__ import annotations

import math

import pytest
import torch

from mixlab import MixedBatch
from mixlab.errors import MixlabValueError
from mixlab.losses import mixed_bce, mixed_cross_entropy

LOGITS = [[1.5, -0.5, 0.0, 2.0], [0.0, 0.3, -1.2, 0.8], [2.5, 1.0, 0.5, -0.3]]
Y_A, Y_B = [0, 1, 2], [3, 1, 0]  # row 1 mixes class 1 with itself
LAM = [0.7, 0.4, 0.25]
K = 4


def _batch(lam=LAM) -> MixedBatch:
    return MixedBatch(
        torch.zeros(3, 1), torch.tensor(Y_A), torch.tensor(Y_B), torch.tensor(lam), torch.tensor([2, 1, 0])
    )


def _target(a: int, b: int, lam: float, smoothing: float) -> list[float]:
    def smoothed(c: int) -> list[float]:
        return [(1 - smoothing + smoothing / K) if j == c else smoothing / K for j in range(K)]

    return [lam * ta + (1 - lam) * tb for ta, tb in zip(smoothed(a), smoothed(b), strict=True)]


def _log_sigmoid(v: float) -> float:
    return -math.log1p(math.exp(-v))


def _bce(row: list[float], target: list[float]) -> list[float]:
    return [-(t * _log_sigmoid(z) + (1 - t) * _log_sigmoid(-z)) for z, t in zip(row, target, strict=True)]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_ce_equals_the_hand_computation(smoothing):
    expected = []
    for row, a, b, lam in zip(LOGITS, Y_A, Y_B, LAM, strict=True):
        log_p = [v - math.log(sum(math.exp(u) for u in row)) for v in row]
        expected.append(-sum(t * lp for t, lp in zip(_target(a, b, lam, smoothing), log_p, strict=True)))
    got = mixed_cross_entropy(torch.tensor(LOGITS), _batch(), smoothing=smoothing, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_bce_is_timms_mean_over_all_terms(smoothing):
    terms = [_bce(row, _target(a, b, lam, smoothing)) for row, a, b, lam in zip(LOGITS, Y_A, Y_B, LAM, strict=True)]
    got = mixed_bce(torch.tensor(LOGITS), _batch(), smoothing=smoothing)
    assert abs(float(got) - sum(map(sum, terms)) / (3 * K)) < 1e-6
    per_sample = mixed_bce(torch.tensor(LOGITS), _batch(), smoothing=smoothing, reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor([sum(t) / K for t in terms]), rtol=1e-6, atol=1e-6)


def test_mixed_bce_sum_over_classes_is_timms_sum_classes():
    terms = [_bce(row, _target(a, b, lam, 0.0)) for row, a, b, lam in zip(LOGITS, Y_A, Y_B, LAM, strict=True)]
    got = mixed_bce(torch.tensor(LOGITS), _batch(), class_reduction="sum")
    assert abs(float(got) - sum(map(sum, terms)) / 3) < 1e-5


def test_deit3_recipe_threshold_zero_makes_both_mixed_classes_positive():
    two_hot = [[1.0 if c in (a, b) else 0.0 for c in range(K)] for a, b in zip(Y_A, Y_B, strict=True)]
    terms = [_bce(row, t) for row, t in zip(LOGITS, two_hot, strict=True)]
    got = mixed_bce(torch.tensor(LOGITS), _batch(), target_threshold=0.0)
    assert abs(float(got) - sum(map(sum, terms)) / (3 * K)) < 1e-6


def test_threshold_above_the_smoothed_floor_keeps_the_mixed_classes():
    # smoothing 0.1 over 4 classes puts 0.025 on every class: a threshold of 0.05 keeps only the mixed ones
    expected = mixed_bce(torch.tensor(LOGITS), _batch(), target_threshold=0.0)
    got = mixed_bce(torch.tensor(LOGITS), _batch(), smoothing=0.1, target_threshold=0.05)
    torch.testing.assert_close(got, expected)


def test_threshold_below_the_smoothed_floor_is_refused():
    with pytest.raises(MixlabValueError) as info:
        mixed_bce(torch.tensor(LOGITS), _batch(), smoothing=0.1, target_threshold=0.0)
    assert "target_threshold=0.0" in str(info.value) and "0.1/4" in str(info.value)


def test_unknown_class_reduction_is_refused_naming_it():
    with pytest.raises(MixlabValueError) as info:
        mixed_bce(torch.tensor(LOGITS), _batch(), class_reduction="max")
    assert "max" in str(info.value) and "mean" in str(info.value) and "sum" in str(info.value)
