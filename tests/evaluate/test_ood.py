"""OOD scores, AUROC, FPR at 95 % TPR and ROC points pinned against hand computations and scikit-learn."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate.ood import (
    OOD_KEYS,
    auroc,
    energy_score,
    fpr_at_tpr,
    msp_score,
    ood_curves,
    ood_metrics,
    roc_points,
)


def test_auroc_is_one_for_separable_scores_and_half_for_identical_ones() -> None:
    assert auroc(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0, 2.9])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    assert auroc(torch.full((7,), 0.3), torch.full((4,), 0.3)) == 0.5


def test_auroc_small_case_with_ties_by_hand() -> None:
    # pairs (in, out): 2>1, 2>0, 2=2 (1/2); 1=1 (1/2), 1>0, 1<2; 0<1, 0=0 (1/2), 0<2  -> 4.5 of 9
    assert auroc(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 2.0])) == pytest.approx(4.5 / 9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_sklearn_on_random_scores_with_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    in_scores = (torch.randn(300, generator=g) + 0.5).round(decimals=1)  # rounding makes many ties
    out_scores = torch.randn(200, generator=g).round(decimals=1)
    labels = [1] * 300 + [0] * 200
    expected = roc_auc_score(labels, torch.cat([in_scores, out_scores]).numpy())
    assert auroc(in_scores, out_scores) == pytest.approx(expected, abs=1e-12)


def test_fpr_at_tpr_hand_case() -> None:
    in_scores = torch.arange(1.0, 21.0)  # 20 ID scores; k = ceil(0.95 * 20) = 19 -> threshold = 19th largest = 2
    out_scores = torch.tensor([0.5, 1.5, 2.0, 3.0])  # 2.0 and 3.0 are >= 2
    assert fpr_at_tpr(in_scores, out_scores) == 0.5
    # tpr = 1: threshold = the lowest ID score 1 -> 3 of 4 OOD scores are >= 1
    assert fpr_at_tpr(in_scores, out_scores, tpr=1.0) == 0.75
    # tpr = 0.5: k = 10, threshold 11 -> none
    assert fpr_at_tpr(in_scores, out_scores, tpr=0.5) == 0.0


def test_fpr_at_tpr_rounds_the_id_count_up() -> None:
    # 10 ID scores: 95 % of 10 = 9.5 -> keep 10 -> threshold 1 (the lowest), so the OOD score 1.5 counts
    assert fpr_at_tpr(torch.arange(1.0, 11.0), torch.tensor([1.5, 0.5])) == 0.5


def test_energy_score_is_temperature_times_logsumexp() -> None:
    assert float(energy_score(torch.zeros(1, 4))[0]) == pytest.approx(math.log(4))
    logits = torch.tensor([[1.0, 2.0, 3.0], [-5.0, 0.0, 5.0]], dtype=torch.float64)
    by_hand = [2 * math.log(sum(math.exp(v / 2) for v in row)) for row in logits.tolist()]
    assert energy_score(logits, temperature=2.0).tolist() == pytest.approx(by_hand)
    assert energy_score(logits).tolist() == pytest.approx(torch.logsumexp(logits, dim=1).tolist())


def test_msp_score_by_hand() -> None:
    logits = torch.tensor([[math.log(0.7), math.log(0.2), math.log(0.1)], [0.0, 0.0, 0.0]])
    assert msp_score(logits).tolist() == pytest.approx([0.7, 1 / 3])


def test_roc_points_hand_case_and_shape() -> None:
    # scores descending: 3 (in), 2 (in, out tied), 1 (out) -> vertices (0,0), (0,1/2), (1/2,1), (1,1)
    roc = roc_points(torch.tensor([3.0, 2.0]), torch.tensor([2.0, 1.0]))
    assert roc == {"fpr": [0.0, 0.0, 0.5, 1.0], "tpr": [0.0, 0.5, 1.0, 1.0]}


def test_roc_points_thinned_are_monotone_from_origin_to_corner_and_match_the_auroc() -> None:
    g = torch.Generator().manual_seed(0)
    in_scores, out_scores = torch.randn(500, generator=g) + 1.0, torch.randn(400, generator=g)
    full = roc_points(in_scores, out_scores, max_points=10_000)
    assert len(full["fpr"]) == 901  # distinct scores + the origin
    # the trapezoid area under the unthinned curve is the AUROC (Mann-Whitney form)
    segments = zip(itertools.pairwise(full["fpr"]), itertools.pairwise(full["tpr"]), strict=True)
    area = sum((fpr_b - fpr_a) * (tpr_a + tpr_b) / 2 for (fpr_a, fpr_b), (tpr_a, tpr_b) in segments)
    assert area == pytest.approx(auroc(in_scores, out_scores), abs=1e-12)
    thin = roc_points(in_scores, out_scores, max_points=50)
    assert len(thin["fpr"]) == len(thin["tpr"]) == 50
    assert (thin["fpr"][0], thin["tpr"][0], thin["fpr"][-1], thin["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    for values in (thin["fpr"], thin["tpr"]):
        assert all(a <= b for a, b in itertools.pairwise(values))
    assert set(zip(thin["fpr"], thin["tpr"], strict=True)) <= set(zip(full["fpr"], full["tpr"], strict=True))


def test_ood_metrics_and_curves() -> None:
    in_logits = torch.tensor([[6.0, 0.0], [0.0, 5.0], [4.0, 0.0]])
    out_logits = torch.tensor([[0.2, 0.0], [0.0, 0.1], [3.0, 0.0]])  # the last OOD beats no ID sample
    metrics = ood_metrics(in_logits, out_logits)
    assert tuple(metrics) == OOD_KEYS
    assert all(type(value) is float for value in metrics.values())
    assert metrics["ood_auroc_msp"] == 1.0
    assert metrics["ood_auroc_energy"] == 1.0
    # k = ceil(0.95 * 3) = 3 -> threshold = the lowest ID MSP sigmoid(4); no OOD MSP reaches it
    assert metrics["ood_fpr95_msp"] == 0.0
    curves = ood_curves(in_logits, out_logits, max_points=3)
    assert set(curves) == {"msp", "energy"}
    assert curves["msp"] == {"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 1.0, 1.0]}


def test_ood_metrics_energy_sees_what_msp_cannot() -> None:
    # same softmax (MSP 1/2 everywhere), larger logits in distribution: MSP AUROC 1/2, energy AUROC 1
    in_logits, out_logits = torch.full((4, 2), 5.0), torch.zeros(3, 2)
    metrics = ood_metrics(in_logits, out_logits)
    assert metrics["ood_auroc_msp"] == 0.5
    assert metrics["ood_auroc_energy"] == 1.0


@pytest.mark.parametrize(
    ("in_scores", "out_scores", "error", "message"),
    [
        (torch.zeros(0), torch.zeros(3), MixlabValueError, r"in_scores must have shape \(n,\).*got \(0,\)"),
        (torch.zeros(3), torch.zeros(2, 2), MixlabValueError, r"out_scores must have shape \(n,\).*got \(2, 2\)"),
        (torch.tensor([0.0, float("nan")]), torch.zeros(3), MixlabValueError, "in_scores must be finite; got 1 NaN"),
        ([0.1, 0.2], torch.zeros(3), MixlabTypeError, "in_scores must be a torch.Tensor.*got list"),
        (torch.zeros(2, dtype=torch.bool), torch.zeros(3), MixlabTypeError, "real numbers; got dtype torch.bool"),
    ],
)
@pytest.mark.parametrize("function", [auroc, fpr_at_tpr, roc_points])
def test_bad_scores_are_refused(function, in_scores, out_scores, error, message) -> None:
    with pytest.raises(error, match=message):
        function(in_scores, out_scores)


def test_bad_options_are_refused() -> None:
    with pytest.raises(MixlabValueError, match=r"tpr must be in \(0, 1\]; got 0.0"):
        fpr_at_tpr(torch.zeros(3), torch.zeros(3), tpr=0.0)
    with pytest.raises(MixlabValueError, match="tpr must be a probability"):
        fpr_at_tpr(torch.zeros(3), torch.zeros(3), tpr=1.5)
    with pytest.raises(MixlabValueError, match="max_points must be an int >= 2; got 1"):
        roc_points(torch.zeros(3), torch.zeros(3), max_points=1)
    with pytest.raises(MixlabValueError, match=r"temperature must be a finite number > 0; got 0\.0"):
        energy_score(torch.zeros(2, 2), temperature=0.0)


def test_bad_logits_are_refused_naming_which() -> None:
    with pytest.raises(MixlabValueError, match=r"out_logits: logits must have shape \(N, K\).*got \(3,\)"):
        ood_metrics(torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(MixlabValueError, match="in_logits: logits must be finite; got 1 NaN"):
        ood_metrics(torch.tensor([[0.0, float("nan")]]), torch.zeros(2, 2))
    with pytest.raises(MixlabValueError, match="same number of classes; got 2 and 3"):
        ood_curves(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(MixlabTypeError, match=r"logits must be a torch\.Tensor"):
        msp_score([[0.0, 1.0]])
    with pytest.raises(MixlabValueError, match=r"got \(0, 2\)"):
        energy_score(torch.zeros(0, 2))
