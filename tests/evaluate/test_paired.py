"""Paired comparisons: hand computations, cases with known answers, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mixlab.errors import MixlabValueError
from mixlab.evaluate import classification_metrics
from mixlab.evaluate.paired import (
    bootstrap_weights,
    compare_predictions,
    mcnemar_exact,
    paired_bootstrap,
    t_interval,
)
from mixlab.evaluate.predictions import (
    SamplePredictions,
    classification_predictions,
    regression_predictions,
    statistic_values,
)


def _logits(n: int, k: int = 10, seed: int = 0, strength: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    return torch.randn(n, k, generator=g) + strength * torch.nn.functional.one_hot(y, k), y


def _with_accuracy(y: torch.Tensor, correct: torch.Tensor, k: int = 10) -> SamplePredictions:
    """Predictions right exactly where ``correct`` says (wrong ones predict the next class)."""
    predicted = torch.where(correct, y, (y + 1) % k)
    return classification_predictions(3.0 * torch.nn.functional.one_hot(predicted, k).float(), y)


def test_statistics_under_a_resample_equal_the_metrics_of_the_resampled_logits() -> None:
    logits, y = _logits(400)
    predictions = classification_predictions(logits, y)
    index = torch.randint(0, 400, (400,), generator=torch.Generator().manual_seed(3))
    weights = np.bincount(index.numpy(), minlength=400)[None, :].astype(float)
    by_hand = classification_metrics(logits[index], y[index])  # the resample, computed the direct way
    for name in ("top1", "nll", "brier", "ece"):
        assert statistic_values(predictions, name, weights)[0] == pytest.approx(by_hand[name], abs=2e-6), name


def test_bootstrap_interval_by_hand_on_four_samples() -> None:
    """Δ top-1 under each resample is Σ w·(a−b)/N; the interval is the 2.5/97.5 percentiles of those."""
    y = torch.zeros(4, dtype=torch.long)
    a = _with_accuracy(y, torch.tensor([True, True, False, True]))
    b = _with_accuracy(y, torch.tensor([True, False, False, False]))
    gap = np.array([0.0, 1.0, 0.0, 1.0])
    weights = np.concatenate(list(bootstrap_weights(4, 1000, seed=5)))
    by_hand = np.percentile(weights @ gap / 4, [2.5, 97.5])
    interval, per_seed = paired_bootstrap([a], [b], ["top1"], resamples=1000, seed=5)["top1"]
    assert per_seed == (0.5,) and interval.estimate == 0.5
    assert (interval.low, interval.high) == pytest.approx(tuple(by_hand))


def test_identical_predictions_give_zero_with_a_zero_width_interval() -> None:
    predictions = classification_predictions(*_logits(2000))
    comparison = compare_predictions([predictions, predictions], [predictions, predictions])
    for difference in comparison.differences.values():
        interval = difference.interval
        assert interval.estimate == interval.low == interval.high == 0.0
        assert not interval.excludes_zero
    assert comparison.mcnemar_p == (1.0, 1.0)


def test_a_five_point_gap_on_ten_thousand_samples_is_clear() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (10_000,), generator=g)
    better = torch.rand(10_000, generator=g) < 0.80
    worse = better & (torch.rand(10_000, generator=g) > 0.0625)  # loses 1/16 of 80 %: 5 points
    comparison = compare_predictions([_with_accuracy(y, better)], [_with_accuracy(y, worse)], ["top1"])
    interval = comparison["top1"].interval
    assert interval.estimate == pytest.approx(0.05, abs=0.01)
    assert interval.low > 0.0 and interval.excludes_zero
    assert comparison.mcnemar_p[0] < 1e-10


def test_a_small_gap_on_few_samples_is_not_clear() -> None:
    y = torch.zeros(40, dtype=torch.long)
    a = _with_accuracy(y, torch.arange(40) < 30)
    b = _with_accuracy(y, torch.arange(40) < 29)
    comparison = compare_predictions([a], [b], ["top1"])
    assert not comparison["top1"].interval.excludes_zero and comparison.mcnemar_p[0] == 1.0


def test_mcnemar_matches_an_exact_binomial_test() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (300,), generator=g)
    a = _with_accuracy(y, torch.rand(300, generator=g) < 0.7)
    b = _with_accuracy(y, torch.rand(300, generator=g) < 0.6)
    ahead = int((a.correct & ~b.correct).sum())
    behind = int((~a.correct & b.correct).sum())
    expected = stats.binomtest(ahead, ahead + behind, 0.5).pvalue
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-9)


def test_t_interval_by_hand() -> None:
    values = [0.010, 0.030, 0.020, 0.045]
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = 3.182446305284263 * sd / math.sqrt(4)  # t(0.975, 3)
    interval = t_interval(values)
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((mean, mean - half, mean + half))
    assert t_interval([0.02]) is None


def test_several_seeds_average_the_difference_and_widen_to_the_seed_interval() -> None:
    runs = [classification_predictions(*_logits(1000, seed=0, strength=s)) for s in (1.0, 2.0, 3.0, 1.5)]
    comparison = compare_predictions(runs[1:], [runs[0]] * 3, ["top1", "nll"])
    difference = comparison["top1"]
    per_seed = [r.metric("top1") - runs[0].metric("top1") for r in runs[1:]]
    assert difference.per_seed == pytest.approx(per_seed)
    assert difference.estimate == pytest.approx(np.mean(per_seed))
    assert difference.seeds is not None and difference.interval.method == "hull"
    assert difference.interval.low <= min(difference.bootstrap.low, difference.seeds.low)
    assert comparison.num_seeds == 3 and len(comparison.mcnemar_p) == 3


def test_regression_errors_are_compared() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.randn(500, generator=g)
    close = regression_predictions(target + 0.1 * torch.randn(500, generator=g), target)
    far = regression_predictions(target + 0.5 * torch.randn(500, generator=g), target)
    comparison = compare_predictions([close], [far])
    assert set(comparison.differences) == {"rmse", "mae", "mse"} and comparison.mcnemar_p is None
    assert comparison["rmse"].interval.high < 0
    assert comparison["rmse"].estimate == pytest.approx(close.metric("rmse") - far.metric("rmse"))


def test_bad_pairs_are_refused() -> None:
    a = classification_predictions(*_logits(100))
    with pytest.raises(MixlabValueError, match="100 and 50 test samples"):
        compare_predictions([a], [classification_predictions(*_logits(50))])
    with pytest.raises(MixlabValueError, match="test labels differ"):
        compare_predictions([a], [classification_predictions(*_logits(100, seed=9))])
    with pytest.raises(MixlabValueError, match="one baseline run per method run"):
        compare_predictions([a, a], [a])
    with pytest.raises(MixlabValueError, match=r"cannot be compared.*known: top1"):
        compare_predictions([a], [a], ["rmse"])
    with pytest.raises(MixlabValueError, match="level must be"):
        compare_predictions([a], [a], level=95)


def test_stored_bytes_round_trip_and_refuse_garbage() -> None:
    a = classification_predictions(*_logits(100))
    again = SamplePredictions.from_bytes(a.to_bytes())
    assert again.task == "classification" and all((again.columns[k] == v).all() for k, v in a.columns.items())
    with pytest.raises(MixlabValueError, match="not readable"):
        SamplePredictions.from_bytes(b"not an archive")
