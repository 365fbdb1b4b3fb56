"""Accuracy and calibration metrics against hand computations, reliability bins, temperature scaling."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate import (
    classification_metrics,
    fit_temperature,
    reliability_bins,
    temperature_scaled_metrics,
)


def softmax_row(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def calibrated_sample(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a perfectly calibrated model and labels drawn from its own softmax."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, k, generator=g)
    targets = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    return logits, targets


# ------------------------------------------------------------------ classification_metrics


def test_metrics_match_a_hand_computation():
    rows = [[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 3.0], [0.5, -1.0, 0.25]]
    targets = [0, 2, 2, 1]
    metrics = classification_metrics(torch.tensor(rows), torch.tensor(targets))
    probs = [softmax_row(r) for r in rows]
    nll = sum(-math.log(p[t]) for p, t in zip(probs, targets, strict=True)) / 4
    brier = sum(sum((pk - (k == t)) ** 2 for k, pk in enumerate(p)) for p, t in zip(probs, targets, strict=True)) / 4
    assert metrics["top1"] == 0.5  # rows 0 and 2 are right
    assert metrics["nll"] == pytest.approx(nll, abs=1e-12)
    assert metrics["brier"] == pytest.approx(brier, abs=1e-12)
    assert "top5" not in metrics
    assert all(isinstance(v, float) for v in metrics.values())


def test_ece_matches_a_hand_computation_with_equal_width_bins():
    gaps = [0.1, 0.3, 1.0, 2.0, 4.0, -0.5]  # logit of class 0 minus class 1
    targets = [0, 1, 0, 0, 1, 1]
    logits = torch.tensor([[g, 0.0] for g in gaps])
    n_bins = 5
    bins: dict[int, list[tuple[float, bool]]] = {}
    for gap, target in zip(gaps, targets, strict=True):
        p0 = 1 / (1 + math.exp(-gap))
        confidence, predicted = max(p0, 1 - p0), 0 if gap > 0 else 1
        bins.setdefault(min(int(confidence * n_bins), n_bins - 1), []).append((confidence, predicted == target))
    expected = sum(
        len(items) / len(gaps) * abs(sum(ok for _, ok in items) / len(items) - sum(c for c, _ in items) / len(items))
        for items in bins.values()
    )
    ece = classification_metrics(logits, torch.tensor(targets), n_bins=n_bins)["ece"]
    assert ece == pytest.approx(expected, abs=1e-6)


def test_top5_counts_the_target_among_the_five_highest_logits():
    logits = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(4, 1)
    metrics = classification_metrics(logits, torch.tensor([4, 5, 6, 0]))  # ranks 5, 6, 7 and 1
    assert metrics["top5"] == 0.5
    assert metrics["top1"] == 0.25


@pytest.mark.parametrize(("k", "has_top5"), [(2, False), (5, False), (6, True)])
def test_top5_is_reported_only_beyond_five_classes(k, has_top5):
    metrics = classification_metrics(torch.randn(8, k), torch.arange(8) % k)
    assert ("top5" in metrics) == has_top5


def test_perfect_confident_predictions_have_no_calibration_error():
    targets = torch.arange(20) % 4
    logits = 50.0 * F.one_hot(targets, 4).float()  # confidence 1.0 in float32
    metrics = classification_metrics(logits, targets)
    assert metrics["top1"] == 1.0
    assert metrics["ece"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["brier"] < 1e-12
    assert metrics["nll"] < 1e-12


def test_uniform_logits_are_read_as_logits_not_probabilities():
    # all-zero logits lie in [0, 1]; torchmetrics alone would take them for probabilities of 0
    k, targets = 4, torch.tensor([0, 1, 2, 3, 0, 0])
    metrics = classification_metrics(torch.zeros(6, k), targets)
    accuracy = 0.5  # argmax of a tie is class 0
    assert metrics["top1"] == accuracy
    assert metrics["nll"] == pytest.approx(math.log(k))
    assert metrics["brier"] == pytest.approx((k - 1) / k)
    assert metrics["ece"] == pytest.approx(abs(accuracy - 1 / k), abs=1e-6)


def test_a_confidence_of_exactly_one_falls_in_the_last_bin():
    # float32 softmax saturates to 1.0; both samples belong to the bin [14/15, 1]
    logits = torch.tensor([[100.0, 0.0], [math.log(0.95 / 0.05), 0.0]])
    targets = torch.tensor([1, 0])
    confidence = (1.0 + 0.95) / 2
    assert classification_metrics(logits, targets)["ece"] == pytest.approx(abs(0.5 - confidence), abs=1e-6)
    assert reliability_bins(logits, targets)["count"][-1] == 2


def test_metrics_accept_integer_targets_of_any_width():
    logits = torch.randn(5, 3)
    targets = torch.tensor([0, 1, 2, 1, 0])
    assert classification_metrics(logits, targets.int()) == classification_metrics(logits, targets)


@pytest.mark.parametrize(
    ("logits", "targets", "error", "seen"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), MixlabValueError, r"\(4,\)"),
        (torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), MixlabValueError, r"\(3, 1\)"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), MixlabValueError, r"\(0, 3\)"),
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long), MixlabTypeError, "torch.int64"),
        (torch.zeros(3, 2), torch.zeros(3), MixlabTypeError, "torch.float32"),
        (torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), MixlabValueError, r"\(4,\)"),
        (torch.zeros(3, 5), torch.tensor([0, 5, 2]), MixlabValueError, "from 0 to 5"),
        (torch.zeros(3, 5), torch.tensor([-1, 0, 2]), MixlabValueError, "from -1 to 2"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), MixlabValueError, "1 NaN"),
        ([[0.0, 1.0]], torch.tensor([0]), MixlabTypeError, "list"),
    ],
)
def test_bad_inputs_are_refused_naming_what_was_seen(logits, targets, error, seen):
    with pytest.raises(error, match=seen):
        classification_metrics(logits, targets)


def test_bad_bin_count_is_refused():
    with pytest.raises(MixlabValueError, match="got 0"):
        classification_metrics(torch.zeros(2, 2), torch.tensor([0, 1]), n_bins=0)


# ------------------------------------------------------------------ reliability_bins


def test_reliability_bins_add_up_to_torchmetrics_ece():
    logits, targets = calibrated_sample(600, 10, seed=1)
    logits = logits * torch.linspace(0.2, 12.0, 600)[:, None]  # from near-uniform to saturated confidences
    n = len(targets)
    bins = reliability_bins(logits, targets)
    ece = classification_metrics(logits, targets)["ece"]
    weighted_gap = sum(
        c / n * abs(a - p) for c, a, p in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
    )
    assert weighted_gap == pytest.approx(ece, abs=1e-5)
    assert sum(bins["count"]) == n


def test_reliability_bins_are_plain_json_with_equal_width_edges():
    bins = reliability_bins(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), torch.tensor([1, 0]), n_bins=4)
    assert json.loads(json.dumps(bins)) == bins
    assert bins["lower"] == [0.0, 0.25, 0.5, 0.75]
    assert bins["upper"] == [0.25, 0.5, 0.75, 1.0]
    assert bins["count"] == [0, 0, 1, 1]
    assert bins["accuracy"] == [0.0, 0.0, 0.0, 1.0]  # the tie predicts class 0; the target is 1
    assert bins["confidence"][2] == pytest.approx(0.5)
    assert bins["confidence"][3] == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert all(type(c) is int for c in bins["count"])


# ------------------------------------------------------------------ temperature scaling


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_scale_of_calibrated_logits(scale):
    logits, targets = calibrated_sample(5000, 10, seed=2)
    temperature = fit_temperature(scale * logits, targets)
    assert temperature == pytest.approx(scale, rel=0.05)
    assert fit_temperature(scale * logits, targets) == temperature  # deterministic


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_temperature_scaling_never_raises_the_nll(scale):
    logits, targets = calibrated_sample(400, 5, seed=3)
    logits = scale * logits
    temperature = fit_temperature(logits, targets)
    after = temperature_scaled_metrics(logits, targets, temperature)
    assert after["nll_ts"] <= classification_metrics(logits, targets)["nll"] + 1e-12
    assert after["temperature"] == temperature


def test_overconfident_logits_get_a_lower_ece_after_scaling():
    val_logits, val_targets = calibrated_sample(2000, 10, seed=4)
    test_logits, test_targets = calibrated_sample(2000, 10, seed=5)
    temperature = fit_temperature(4.0 * val_logits, val_targets)
    scaled = temperature_scaled_metrics(4.0 * test_logits, test_targets, temperature)
    assert scaled["ece_ts"] < classification_metrics(4.0 * test_logits, test_targets)["ece"] / 2


def test_temperature_scaled_metrics_are_the_metrics_of_the_divided_logits():
    logits, targets = calibrated_sample(300, 6, seed=6)
    scaled = temperature_scaled_metrics(logits, targets, 2.5, n_bins=10)
    direct = classification_metrics(logits / 2.5, targets, n_bins=10)
    assert scaled["nll_ts"] == pytest.approx(direct["nll"], abs=1e-6)
    assert scaled["ece_ts"] == pytest.approx(direct["ece"], abs=1e-6)


def test_uniform_logits_keep_a_temperature_of_one():
    assert fit_temperature(torch.zeros(10, 3), torch.arange(10) % 3) == 1.0


def test_temperature_arguments_are_checked():
    with pytest.raises(MixlabValueError, match=r"got -1\.0"):
        temperature_scaled_metrics(torch.zeros(2, 2), torch.tensor([0, 1]), -1.0)
    with pytest.raises(MixlabValueError, match="max_iter must be an int >= 1; got 0"):
        fit_temperature(torch.zeros(2, 2), torch.tensor([0, 1]), max_iter=0)
