"""Adaptive, classwise and maximum calibration error, AURC and E-AURC pinned against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate.calibration import (
    CALIBRATION_KEYS,
    adaptive_ece,
    aurc,
    calibration_metrics,
    classwise_ece,
    eaurc,
    max_calibration_error,
    risk_coverage_curve,
)


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is ``probs`` (float64, so the probabilities come back to ~1e-16)."""
    return torch.tensor(probs, dtype=torch.float64).log()


def ranked_logits(n: int) -> torch.Tensor:
    """Two-class logits whose MSP strictly decreases with the row index, every argmax class 0."""
    return torch.stack([torch.linspace(5.0, 0.5, n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)], 1)


def test_adaptive_ece_two_equal_mass_bins_by_hand() -> None:
    # confidences (unsorted) 0.8, 0.6, 0.9, 0.7; sorted: bin 1 = {0.6 right, 0.7 wrong}, bin 2 = {0.8 right, 0.9 wrong}
    logits = logits_of([[0.8, 0.2], [0.6, 0.4], [0.9, 0.1], [0.7, 0.3]])
    targets = torch.tensor([0, 0, 1, 1])
    # bin 1: |0.5 - 0.65| = 0.15, bin 2: |0.5 - 0.85| = 0.35, each with weight 1/2
    assert adaptive_ece(logits, targets, n_bins=2) == pytest.approx(0.25, abs=1e-12)


def test_adaptive_ece_differs_from_equal_width_when_mass_is_uneven() -> None:
    # 3 samples; equal mass with 3 bins puts one sample per bin: AECE = mean |correct - confidence|
    logits = logits_of([[0.55, 0.45], [0.6, 0.4], [0.95, 0.05]])
    targets = torch.tensor([1, 0, 0])
    expected = (0.55 + 0.4 + 0.05) / 3
    assert adaptive_ece(logits, targets, n_bins=3) == pytest.approx(expected, abs=1e-12)
    # more bins than samples: the empty ones do not count, the result is the same
    assert adaptive_ece(logits, targets, n_bins=15) == pytest.approx(expected, abs=1e-12)


def test_classwise_ece_three_classes_by_hand() -> None:
    logits = logits_of([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    targets = torch.tensor([0, 2, 2])
    # n_bins=2, bins [0, 0.5) and [0.5, 1]:
    # class 0: p = .6 .2 .1, y==0: 1 0 0 -> low {.2,.1}: 2/3*|0-.15|, high {.6}: 1/3*|1-.6| -> 0.1 + 0.4/3
    # class 1: p = .3 .7 .2, y==1: 0 0 0 -> low {.3,.2}: 2/3*.25, high {.7}: 1/3*.7      -> 0.5/3 + 0.7/3
    # class 2: p = .1 .1 .7, y==2: 0 1 1 -> low {.1,.1}: 2/3*|.5-.1|, high {.7}: 1/3*.3   -> 0.8/3 + 0.3/3
    per_class = [0.1 + 0.4 / 3, 1.2 / 3, 1.1 / 3]
    assert classwise_ece(logits, targets, n_bins=2) == pytest.approx(sum(per_class) / 3, abs=1e-12)


def test_classwise_ece_zero_for_one_hot_predictions_that_are_right() -> None:
    logits = torch.tensor([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0], [0.0, 0.0, 50.0]], dtype=torch.float64)
    assert classwise_ece(logits, torch.tensor([0, 1, 2])) == pytest.approx(0.0, abs=1e-12)


def test_max_calibration_error_by_hand() -> None:
    # n_bins=4: bin [0.5, 0.75) = {0.6 right, 0.7 wrong, 0.55 right, 0.65 right}: |0.75 - 0.625| = 0.125 (4 samples)
    #           bin [0.75, 1] = {0.8 right, 0.9 wrong}: |0.5 - 0.85| = 0.35 (2 samples)
    logits = logits_of([[0.6, 0.4], [0.7, 0.3], [0.55, 0.45], [0.65, 0.35], [0.8, 0.2], [0.9, 0.1]])
    targets = torch.tensor([0, 1, 0, 0, 0, 1])
    assert max_calibration_error(logits, targets, n_bins=4) == pytest.approx(0.35, abs=1e-6)  # float32 inside


def test_max_calibration_error_puts_confidence_one_in_the_last_bin() -> None:
    # confidence exactly 1.0 (right) and 0.8 (wrong) share the closed last bin [0.75, 1]: |0.5 - 0.9| = 0.4;
    # a separate bin for 1.0 would give max(|0 - 0.8|, 0) = 0.8
    logits = torch.tensor([[100.0, 0.0], [math.log(0.8), math.log(0.2)]], dtype=torch.float64)
    assert float(logits.softmax(1)[0, 0]) == 1.0
    assert max_calibration_error(logits, torch.tensor([0, 1]), n_bins=4) == pytest.approx(0.4, abs=1e-6)


def test_risk_coverage_and_aurc_on_four_samples_by_hand() -> None:
    logits = ranked_logits(4)  # MSP decreasing: right, wrong, right, wrong
    targets = torch.tensor([0, 1, 0, 1])
    coverage, risk = risk_coverage_curve(logits, targets)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == pytest.approx([0.0, 1 / 2, 1 / 3, 1 / 2])
    assert aurc(logits, targets) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 4)
    # optimal order (right, right, wrong, wrong): risks 0, 0, 1/3, 1/2
    assert eaurc(logits, targets) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 4 - (1 / 3 + 1 / 2) / 4)


def test_aurc_does_not_depend_on_input_order() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 3, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (50,), generator=g)
    perm = torch.randperm(50, generator=g)
    assert aurc(logits[perm], targets[perm]) == pytest.approx(aurc(logits, targets), abs=1e-15)


def test_aurc_of_tied_confidences_is_the_expectation_over_orders() -> None:
    # two samples of equal MSP, one right, one wrong: orders (R, W) -> (0 + 1/2)/2, (W, R) -> (1 + 1/2)/2; mean 1/2
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    for targets in (torch.tensor([0, 1]), torch.tensor([1, 0])):
        assert aurc(logits, targets) == pytest.approx(0.5)


def test_eaurc_of_a_perfect_ranking_is_zero_and_its_aurc_the_closed_form() -> None:
    n, errors = 2000, 400  # every error ranked last
    targets = torch.cat([torch.zeros(n - errors), torch.ones(errors)]).long()
    logits = ranked_logits(n)
    assert eaurc(logits, targets) == pytest.approx(0.0, abs=1e-12)
    r = errors / n  # the large-N limit of the optimal AURC (Geifman et al. 2019): r + (1 - r) ln(1 - r)
    assert aurc(logits, targets) == pytest.approx(r + (1 - r) * math.log(1 - r), abs=1.0 / n)


def test_eaurc_of_the_worst_ranking_is_positive() -> None:
    targets = torch.tensor([1, 1, 0, 0])  # errors first: risks 1, 1, 2/3, 1/2
    logits = ranked_logits(4)
    assert aurc(logits, targets) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)
    assert eaurc(logits, targets) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4 - (1 / 3 + 1 / 2) / 4)


def test_calibration_metrics_agrees_with_the_single_functions() -> None:
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(200, 5, generator=g)
    targets = torch.randint(0, 5, (200,), generator=g)
    metrics = calibration_metrics(logits, targets, n_bins=10)
    assert tuple(metrics) == CALIBRATION_KEYS
    assert all(type(value) is float for value in metrics.values())
    assert metrics["aece"] == pytest.approx(adaptive_ece(logits, targets, 10))
    assert metrics["cw_ece"] == pytest.approx(classwise_ece(logits, targets, 10))
    assert metrics["mce"] == pytest.approx(max_calibration_error(logits, targets, 10))
    assert metrics["aurc"] == pytest.approx(aurc(logits, targets))
    assert metrics["eaurc"] == pytest.approx(eaurc(logits, targets))


@pytest.mark.parametrize(
    ("logits", "targets", "error", "message"),
    [
        (torch.zeros(4), torch.zeros(4).long(), MixlabValueError, r"shape \(N, K\).*got \(4,\)"),
        (torch.zeros(0, 3), torch.zeros(0).long(), MixlabValueError, r"N >= 1.*got \(0, 3\)"),
        (torch.zeros(3, 2), torch.zeros(2).long(), MixlabValueError, r"targets must have shape"),
        (torch.tensor([[float("nan"), 0.0]]), torch.zeros(1).long(), MixlabValueError, "1 NaN"),
        (torch.zeros(2, 2), torch.tensor([0, 2]), MixlabValueError, r"in \[0, 2\).*0 to 2"),
        (torch.zeros(2, 2), torch.zeros(2), MixlabTypeError, "integer class indices"),
    ],
)
@pytest.mark.parametrize("function", [adaptive_ece, classwise_ece, max_calibration_error, aurc, eaurc])
def test_bad_inputs_are_refused(function, logits, targets, error, message) -> None:
    with pytest.raises(error, match=message):
        function(logits, targets)


def test_bad_n_bins_is_refused() -> None:
    with pytest.raises(MixlabValueError, match="n_bins must be an int >= 1; got 0"):
        calibration_metrics(torch.zeros(2, 2), torch.zeros(2).long(), n_bins=0)
