"""Transferability scores pinned against hand computations and independent naive implementations.

LogME against a grid search over (alpha, beta) of the Gaussian marginal likelihood written directly (no SVD);
H-score against hand-computed 2-class cases; LEEP against a loop over samples and against cases with a known
value; the probe on separable features and on random labels.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate.transfer import (
    extract_features,
    hscore,
    leep,
    logme,
    probe_accuracy,
    transfer_metrics,
)
from mixlab.models.base import Backbone


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _labelled_features(n: int, classes: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot labels plus Gaussian noise: features that contain the labels."""
    g = _generator(seed)
    labels = torch.arange(n) % classes
    features = nn.functional.one_hot(labels, classes).double() + noise * torch.randn(
        n, classes, generator=g, dtype=torch.float64
    )
    return features, labels


# ------------------------------------------------------------------ LogME


def _naive_log_evidence(features: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor):
    """log N(t; 0, I/beta + F Fᵀ/alpha) for each (alpha, beta): the marginal likelihood written as one Gaussian."""
    n = features.shape[0]
    gram = features @ features.T
    covariance = torch.eye(n, dtype=torch.float64) / beta[:, None, None] + gram / alpha[:, None, None]
    _, log_det = torch.linalg.slogdet(covariance)
    quadratic = (target * torch.linalg.solve(covariance, target.expand(alpha.shape[0], n))).sum(dim=1)
    return -0.5 * quadratic - 0.5 * log_det - n / 2 * math.log(2 * math.pi)


def _grid_max_evidence(features: torch.Tensor, target: torch.Tensor) -> float:
    """The largest naive evidence over a log-spaced (alpha, beta) grid, refined three times around its best point."""
    centre, half_width = torch.zeros(2, dtype=torch.float64), 12.0
    best = -math.inf
    for _ in range(4):
        axis = torch.linspace(-half_width, half_width, 61, dtype=torch.float64)
        log_alpha, log_beta = torch.meshgrid(centre[0] + axis, centre[1] + axis, indexing="ij")
        values = _naive_log_evidence(features, target, log_alpha.exp().flatten(), log_beta.exp().flatten())
        index = int(values.argmax())
        best = max(best, float(values[index]))
        centre = torch.stack([log_alpha.flatten()[index], log_beta.flatten()[index]])
        half_width = 2 * half_width / 60  # two grid steps either side
    return best


@pytest.mark.parametrize(("n", "dim"), [(30, 4), (8, 12)], ids=["N>D", "D>N"])
def test_logme_fixed_point_reaches_the_grid_maximum_of_the_naive_evidence(n: int, dim: int) -> None:
    g = _generator(1)
    features = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % 2
    # signal for both classes, so that each class's optimum is interior (without it alpha -> infinity: no fit)
    features[:, 0] += 1.5 * labels
    features[:, 1] += 1.5 * (1 - labels)
    per_class = [_grid_max_evidence(features, (labels == c).double()) / n for c in (0, 1)]
    grid_best = sum(per_class) / 2
    fixed_point = logme(features, labels)
    # the grid can only fall short of the true maximum; a fixed point below it would not be the maximum
    assert grid_best <= fixed_point + 1e-9
    assert fixed_point - grid_best < 1e-6


def test_logme_ranks_features_containing_the_labels_above_random_features() -> None:
    features, labels = _labelled_features(500, 5, noise=0.1)
    random = torch.randn(500, 5, generator=_generator(2), dtype=torch.float64)
    informative, uninformative = logme(features, labels), logme(random, labels)
    assert informative > uninformative + 0.5, (informative, uninformative)


def test_logme_uses_float64_whatever_the_input_dtype() -> None:
    features, labels = _labelled_features(200, 3, noise=0.2)
    assert logme(features.float(), labels) == pytest.approx(logme(features.float().double(), labels), abs=1e-12)


# ------------------------------------------------------------------ H-score


def test_hscore_one_dimension_by_hand() -> None:
    # f = 0, 2, 4, 6 with classes 0, 0, 1, 1: var(f) = 5, class means 1 and 5 around 3: var(E[f|y]) = 4; H = 4/5
    features = torch.tensor([[0.0], [2.0], [4.0], [6.0]], dtype=torch.float64)
    assert hscore(features, torch.tensor([0, 0, 1, 1]), shrinkage=False) == pytest.approx(0.8, abs=1e-12)


def test_hscore_two_dimensions_by_hand() -> None:
    # second feature 1, -1, 1, -1: class means 0, but it covaries with the first: cov(f) = [[5, -1], [-1, 1]],
    # cov(E[f|y]) = [[4, 0], [0, 0]], cov(f)^-1 = [[1, 1], [1, 5]] / 4, so H = 4/4 = 1
    features = torch.tensor([[0.0, 1.0], [2.0, -1.0], [4.0, 1.0], [6.0, -1.0]], dtype=torch.float64)
    assert hscore(features, torch.tensor([0, 0, 1, 1]), shrinkage=False) == pytest.approx(1.0, abs=1e-12)


def test_hscore_with_shrinkage_follows_the_regularised_formula_and_is_at_most_the_plain_one() -> None:
    from sklearn.covariance import ledoit_wolf_shrinkage

    g = _generator(3)
    labels = torch.arange(40) % 3
    features = torch.randn(40, 6, generator=g, dtype=torch.float64) + labels[:, None].double()
    centred = features - features.mean(dim=0)
    covariance = centred.T @ centred / 40
    shrink = float(ledoit_wolf_shrinkage(centred.numpy(), assume_centered=True))
    assert 0.0 < shrink < 1.0
    shrunk = (1 - shrink) * covariance + shrink * torch.trace(covariance) / 6 * torch.eye(6, dtype=torch.float64)
    between = torch.zeros(6, 6, dtype=torch.float64)
    for i in range(40):  # each sample replaced by its class mean
        mean = centred[labels == labels[i]].mean(dim=0)
        between += torch.outer(mean, mean) / 40
    expected = float(torch.trace(torch.linalg.inv(shrunk) @ ((1 - shrink) * between)))
    assert hscore(features, labels) == pytest.approx(expected, rel=1e-10)
    assert hscore(features, labels) <= hscore(features, labels, shrinkage=False)


# ------------------------------------------------------------------ LEEP


def _loop_leep(probs: torch.Tensor, labels: torch.Tensor) -> float:
    n, z_count = probs.shape
    classes = sorted(set(labels.tolist()))
    joint = {
        (y, z): sum(float(probs[i, z]) for i in range(n) if int(labels[i]) == y) / n
        for y in classes
        for z in range(z_count)
    }
    marginal = {z: sum(joint[(y, z)] for y in classes) for z in range(z_count)}
    total = 0.0
    for i in range(n):
        y = int(labels[i])
        total += math.log(sum(joint[(y, z)] / marginal[z] * float(probs[i, z]) for z in range(z_count)))
    return total / n


def test_leep_equals_a_loop_over_samples() -> None:
    g = _generator(4)
    probs = torch.softmax(2 * torch.randn(15, 4, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2, 0, 1, 0, 0, 1, 2, 1])
    assert leep(probs, labels) == pytest.approx(_loop_leep(probs, labels), abs=1e-12)


def test_leep_is_zero_when_the_source_class_is_the_label() -> None:
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    # a third source class that no sample uses must not produce 0/0
    assert leep(torch.eye(3)[labels], labels) == 0.0


def test_leep_of_uniform_source_probabilities_is_minus_the_label_entropy() -> None:
    # P(y|z) = n_y / N for every z, so each sample scores log(n_{y_i} / N)
    labels = torch.tensor([0, 0, 0, 1])
    expected = (3 * math.log(3 / 4) + math.log(1 / 4)) / 4
    assert leep(torch.full((4, 5), 0.2), labels) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ linear probe


def test_probe_accuracy_is_one_on_separable_features() -> None:
    g = _generator(5)
    labels = torch.arange(400) % 4
    centres = 5 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    features = centres[labels] + 0.1 * torch.randn(400, 8, generator=g, dtype=torch.float64)
    assert probe_accuracy(features, labels) == 1.0


def test_probe_accuracy_is_chance_on_random_labels() -> None:
    g = _generator(6)
    features = torch.randn(1000, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (1000,), generator=g)
    # 300 test samples: the standard error of an accuracy near 0.1 is about 0.017
    assert abs(probe_accuracy(features, labels) - 0.1) < 0.07


def test_probe_and_metrics_are_deterministic_given_the_seed() -> None:
    g = _generator(7)
    labels = torch.arange(300) % 3
    features = torch.randn(300, 10, generator=g) + 0.5 * labels[:, None]
    probs = torch.softmax(torch.randn(300, 5, generator=g), dim=1)
    assert probe_accuracy(features, labels, seed=3) == probe_accuracy(features, labels, seed=3)
    first = transfer_metrics(features, labels, probs, seed=3)
    assert first == transfer_metrics(features, labels, probs, seed=3)
    assert sorted(first) == ["hscore", "leep", "logme", "probe_acc"]
    assert first["logme"] == logme(features, labels) and first["leep"] == leep(probs, labels)


# ------------------------------------------------------------------ extract_features


class _Tiny(Backbone):
    def __init__(self) -> None:
        super().__init__(num_classes=3, in_channels=4)
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5))
        self.feature_dim, self.head = 6, nn.Linear(6, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_extract_features_runs_in_eval_mode_and_restores_the_mode() -> None:
    torch.manual_seed(0)  # the layers' initialisation only; the test's inputs come from a generator
    model = _Tiny().train()
    x = torch.randn(7, 4, generator=_generator(8))
    features, probs = extract_features(model, x, preprocess=lambda b: b, batch_size=3)
    assert model.training and model.body[1].training
    expected = model.body[0](x)  # no dropout: eval mode
    assert features.dtype == probs.dtype == torch.float32
    assert torch.allclose(features, expected, atol=1e-6)
    assert torch.allclose(probs, torch.softmax(model.head(expected), dim=1), atol=1e-6)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("score", [logme, hscore, probe_accuracy])
def test_feature_scores_refuse_bad_input(score) -> None:
    features, labels = _labelled_features(20, 2, noise=0.1)
    with pytest.raises(MixlabValueError, match="20 rows and 19 labels"):
        score(features, labels[:19])
    with pytest.raises(MixlabValueError, match="at least 2 distinct classes; got only class 1"):
        score(features, torch.ones(20, dtype=torch.long))
    nan = features.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(MixlabValueError, match="finite; got NaN or infinite values in 1 of 20 rows"):
        score(nan, labels)
    with pytest.raises(MixlabValueError, match="integer class indices"):
        score(features, labels.double())


def test_leep_refuses_bad_input() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    probs = torch.eye(2)[labels]
    with pytest.raises(MixlabValueError, match="4 rows and 3 labels"):
        leep(probs, labels[:3])
    with pytest.raises(MixlabValueError, match="got only class 0"):
        leep(probs, torch.zeros(4, dtype=torch.long))
    with pytest.raises(MixlabValueError, match="sum to 1"):
        leep(3 * probs, labels)  # logits passed by mistake
    with pytest.raises(MixlabValueError, match="finite and >= 0"):
        leep(torch.full((4, 2), float("nan")), labels)


def test_probe_refuses_bad_settings_and_unsplittable_classes() -> None:
    features, labels = _labelled_features(20, 2, noise=0.1)
    with pytest.raises(MixlabValueError, match=r"test_fraction must be strictly between 0 and 1; got 1\.0"):
        probe_accuracy(features, labels, test_fraction=1.0)
    with pytest.raises(MixlabValueError, match="cs must be a non-empty"):
        probe_accuracy(features, labels, cs=())
    with pytest.raises(MixlabValueError, match=r"cs entry must be a finite number > 0; got -1\.0"):
        probe_accuracy(features, labels, cs=(1.0, -1.0))
    lonely = labels.clone()
    lonely[0] = 2  # a class with one sample cannot be stratified
    with pytest.raises(MixlabValueError, match="class counts"):
        probe_accuracy(features, lonely)


def test_extract_features_refuses_a_model_without_features() -> None:
    with pytest.raises(MixlabTypeError, match=r"callable \.features .* Linear has none"):
        extract_features(nn.Linear(4, 2), torch.randn(3, 4), preprocess=lambda b: b)


def test_the_scores_leave_the_thread_pools_as_they_found_them() -> None:
    from threadpoolctl import threadpool_info

    before = [(pool["internal_api"], pool["num_threads"]) for pool in threadpool_info()]
    features, labels = _labelled_features(60, 3, noise=0.3)
    transfer_metrics(features, labels, torch.eye(3)[labels])
    assert [(pool["internal_api"], pool["num_threads"]) for pool in threadpool_info()] == before
