"""Neural collapse, Hessian trace and sharpness pinned against cases with a known answer and hand computations.

Neural collapse: features placed at a simplex ETF (NC1 = NC2 = 0, the centred means are the ETF, so a head equal
to it gives NC3 = 0 and its negation NC3 = 4), a hand-computed NC1 of two classes, hand-computed NC2 of three
chosen means, NC1 against a naive implementation (per-class covariances, the D×D pseudo-inverse of Σ_B), NC4 of a
nearest-class-mean head (0) and of a constant head (counted by hand), and streaming over batch sizes.
Hessian trace: a diagonal quadratic (Rademacher probes are exact), a least-squares loss and a softmax regression
whose Hessians are written in closed form (within four Monte-Carlo standard errors). Sharpness: zero weights and
weights the loss ignores (exactly 0), a convex quadratic at its minimum (>= 0, and ½σ² Σ a_i c_i² in expectation).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate.geometry import (
    geometry_metrics,
    hessian_trace,
    neural_collapse,
    neural_collapse_from_features,
    sharpness_avg,
)
from mixlab.models import create_model
from mixlab.models.base import Backbone


def _identity(batch: Tensor) -> Tensor:
    return batch


class _IdentityFeatures(Backbone):
    """The input is the feature: the tests choose the features exactly."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(num_classes=num_classes, in_channels=dim)
        self.feature_dim = dim
        self.head = nn.Linear(dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return x


def _simplex_etf(k: int, dim: int, scale: float = 3.0, seed: int = 0) -> Tensor:
    """K equal-norm vectors with pairwise cosine −1/(K−1), embedded in ``dim`` dimensions by a random rotation."""
    basis, _ = torch.linalg.qr(torch.randn(dim, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return scale * (torch.eye(k, dtype=torch.float64) - 1.0 / k) @ basis.T  # (K, dim), rows sum to 0


def _noisy_classes(n: int, k: int, dim: int, noise: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    centres = 2.0 * torch.randn(k, dim, generator=g, dtype=torch.float64)
    return centres[labels] + noise * torch.randn(n, dim, generator=g, dtype=torch.float64), labels


# ------------------------------------------------------------------ neural collapse


def test_features_at_a_simplex_etf_are_collapsed_and_self_dual() -> None:
    k, dim = 4, 6
    etf = _simplex_etf(k, dim)
    cosines = F.normalize(etf, dim=1) @ F.normalize(etf, dim=1).T
    off_diagonal = cosines[~torch.eye(k, dtype=torch.bool)]
    assert torch.allclose(off_diagonal, torch.full_like(off_diagonal, -1.0 / (k - 1)))  # the construction is an ETF
    labels = torch.arange(40) % k
    offset = torch.full((dim,), 50.0, dtype=torch.float64)  # features far from the origin: μ_G must be removed
    features = etf[labels] + offset
    nc = neural_collapse_from_features(features, labels, 0.5 * etf, k)
    assert nc["nc1"] == pytest.approx(0.0, abs=1e-12)
    assert nc["nc2_norm"] == pytest.approx(0.0, abs=1e-12)
    assert nc["nc2_angle"] == pytest.approx(0.0, abs=1e-12)
    # NC3 = 0 against the ETF itself: the centred class means are the ETF, whose cosines are −1/(K−1)
    assert nc["nc3"] == pytest.approx(0.0, abs=1e-12)
    assert neural_collapse_from_features(features, labels, -etf, k)["nc3"] == pytest.approx(4.0, abs=1e-12)
    assert "nc4" not in nc  # no logits given: the model's prediction is unknown


def test_nc1_of_two_classes_by_hand() -> None:
    # class means (∓1, 0); each class has the 4 points mean + (±s, ±t): Σ_W = diag(s², t²), Σ_B = diag(1, 0)
    # tr(Σ_W Σ_B^†) / K = s² / 2 (the spread t lies outside the between-class span and does not count)
    s, t = 0.5, 3.0
    corners = torch.tensor([[s, t], [s, -t], [-s, t], [-s, -t]], dtype=torch.float64)
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    features = torch.cat([means[0] + corners, means[1] + corners])
    labels = torch.tensor([0] * 4 + [1] * 4)
    nc = neural_collapse_from_features(features, labels, means, 2)
    assert nc["nc1"] == pytest.approx(s**2 / 2, rel=1e-12)
    assert nc["nc2_norm"] == pytest.approx(0.0, abs=1e-12)
    assert nc["nc2_angle"] == pytest.approx(0.0, abs=1e-12)  # K = 2: one pair, nothing to spread


def test_nc2_of_three_chosen_means_by_hand() -> None:
    centred = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)  # sums to 0
    features, labels = centred + torch.tensor([7.0, -4.0], dtype=torch.float64), torch.arange(3)
    nc = neural_collapse_from_features(features, labels, centred, 3)
    norms = [2.0, math.sqrt(2), math.sqrt(2)]
    assert nc["nc2_norm"] == pytest.approx(statistics.pstdev(norms) / statistics.mean(norms), rel=1e-12)
    cosines = [-1 / math.sqrt(2), -1 / math.sqrt(2), 0.0]  # pairs (0,1), (0,2), (1,2)
    assert nc["nc2_angle"] == pytest.approx(statistics.pstdev(cosines), rel=1e-12)
    assert nc["nc1"] == pytest.approx(0.0, abs=1e-12)
    orthogonal = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)  # ⟨W, M⟩_F = 0
    assert neural_collapse_from_features(features, labels, orthogonal, 3)["nc3"] == pytest.approx(2.0, rel=1e-12)


def test_nc1_matches_a_naive_implementation() -> None:
    features, labels = _noisy_classes(60, 3, 5, noise=1.0, seed=1)
    k, n = 3, features.shape[0]
    means = torch.stack([features[labels == c].mean(0) for c in range(k)])
    global_mean = means.mean(0)
    within = sum(((features[labels == c] - means[c]).T @ (features[labels == c] - means[c])) for c in range(k)) / n
    between = sum(torch.outer(means[c] - global_mean, means[c] - global_mean) for c in range(k)) / k
    expected = float(torch.trace(within @ torch.linalg.pinv(between, hermitian=True, rtol=1e-10))) / k
    assert neural_collapse_from_features(features, labels, means, k)["nc1"] == pytest.approx(expected, rel=1e-9)


def test_nc4_is_zero_for_a_nearest_class_mean_head_and_counted_for_a_constant_head() -> None:
    features, labels = _noisy_classes(90, 3, 4, noise=1.5, seed=2)
    means = torch.stack([features[labels == c].mean(0) for c in range(3)])
    model = _IdentityFeatures(4, 3).double()
    with torch.no_grad():  # argmax_c (μ_c·h − ½‖μ_c‖²) = argmin_c ‖h − μ_c‖
        model.head.weight.copy_(means)
        model.head.bias.copy_(-0.5 * means.pow(2).sum(1))
    nearest = torch.cdist(features, means).argmin(1)
    assert bool((nearest != labels).any())  # noisy enough that NC4 = 0 is not just 100% accuracy
    assert neural_collapse(model, features, labels, preprocess=_identity, num_classes=3)["nc4"] == 0.0
    with torch.no_grad():  # always class 0
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    expected = int((nearest != 0).sum()) / 90
    assert neural_collapse(model, features, labels, preprocess=_identity, num_classes=3)["nc4"] == expected


def test_streaming_does_not_depend_on_the_batch_size() -> None:
    features, labels = _noisy_classes(101, 4, 5, noise=0.7, seed=3)
    model = _IdentityFeatures(5, 4).double()
    results = [
        neural_collapse(model, features, labels, preprocess=_identity, num_classes=4, batch_size=size)
        for size in (1, 7, 1000)
    ]
    logits = model(features).detach()
    whole = neural_collapse_from_features(features, labels, model.head.weight, 4, logits=logits)
    for result in results:
        assert result.keys() == whole.keys() == {"nc1", "nc2_norm", "nc2_angle", "nc3", "nc4"}
        for key, value in whole.items():
            assert result[key] == pytest.approx(value, rel=1e-9, abs=1e-12)


def test_neural_collapse_leaves_modes_and_refuses_bad_input() -> None:
    model = _IdentityFeatures(3, 3)
    model.train()
    x, y = torch.randn(12, 3), torch.arange(12) % 3
    neural_collapse(model, x, y, preprocess=_identity, num_classes=3)
    assert model.training
    with pytest.raises(MixlabValueError, match=r"classes \[2\] have no sample"):
        neural_collapse(model, x, y % 2, preprocess=_identity, num_classes=3)
    with pytest.raises(MixlabTypeError, match="Linear"):
        neural_collapse(nn.Linear(3, 3), x, y, preprocess=_identity, num_classes=3)
    with pytest.raises(MixlabValueError, match="head's 3 outputs; got 4"):
        neural_collapse(model, x, y, preprocess=_identity, num_classes=4)
    with pytest.raises(MixlabValueError, match=r"\[0, 3\); got values from 3 to 5"):
        neural_collapse(model, x, y + 3, preprocess=_identity, num_classes=3)


def test_identical_class_means_leave_the_collapse_measures_absent() -> None:
    features = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).repeat(2, 1)  # both classes have mean 0: Σ_B = 0
    labels = torch.tensor([0, 0, 1, 1])
    assert neural_collapse_from_features(features, labels, torch.eye(2), 2) == {}


# ------------------------------------------------------------------ Hessian trace


class _Scaled(nn.Module):
    """out = x ⊙ w (per feature): with loss mean_n ½‖out_n‖², H = diag(mean_n x_n²)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.0, 2.0, dim, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.w


def _half_square(out: Tensor, _target: Tensor) -> Tensor:
    return 0.5 * out.pow(2).sum(1).mean()


def test_hessian_trace_of_a_diagonal_quadratic_is_exact_with_one_probe() -> None:
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = float(x.pow(2).mean(0).sum())
    for batch_size in (4, 30):
        estimate = hessian_trace(_Scaled(5), _half_square, x, torch.zeros(30), preprocess=_identity, n_probes=1,
                                 batch_size=batch_size)  # fmt: skip
        assert estimate == pytest.approx(expected, rel=1e-12)


def test_hessian_trace_of_least_squares_within_monte_carlo_error() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    y = torch.randn(40, generator=g, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()
    mse = lambda out, target: 0.5 * (out.squeeze(1) - target).pow(2).mean()  # noqa: E731
    hessian = x.T @ x / 40  # of ½ mean (x·w − y)²
    n_probes = 200
    off_diagonal = hessian - torch.diag(torch.diagonal(hessian))
    standard_error = math.sqrt(2 * float(off_diagonal.pow(2).sum()) / n_probes)
    estimate = hessian_trace(model, mse, x, y, preprocess=_identity, n_probes=n_probes, batch_size=16, seed=5)
    assert abs(estimate - float(torch.trace(hessian))) < 4 * standard_error
    assert standard_error > 0.01 * float(torch.trace(hessian))  # not a case where the probes are exact


def test_hessian_trace_of_softmax_regression_against_the_closed_form() -> None:
    # CE of softmax(W x): H = mean_i (diag(p_i) − p_i p_iᵀ) ⊗ x_i x_iᵀ over W (K×D) flattened by rows
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (50,), generator=g)
    model = nn.Linear(3, 4, bias=False).double()
    probs = torch.softmax(model(x), dim=1).detach()
    hessian = sum(
        torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(xi, xi)) for p, xi in zip(probs, x, strict=True)
    )
    hessian = hessian / 50
    n_probes = 300
    off_diagonal = hessian - torch.diag(torch.diagonal(hessian))
    standard_error = math.sqrt(2 * float(off_diagonal.pow(2).sum()) / n_probes)
    estimate = hessian_trace(model, F.cross_entropy, x, y, preprocess=_identity, n_probes=n_probes, batch_size=20)
    assert abs(estimate - float(torch.trace(hessian))) < 4 * standard_error


def test_hessian_trace_counts_only_trainable_parameters_and_leaves_the_model_as_it_was() -> None:
    model = nn.Sequential(_Scaled(4), nn.BatchNorm1d(4, affine=False), _Scaled(4)).double()
    model[2].w.requires_grad_(False)
    model.train()
    model[1].eval()
    grad = torch.full((4,), 7.0, dtype=torch.float64)
    model[0].w.grad = grad
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    estimate = hessian_trace(model, _half_square, x, torch.zeros(20), preprocess=_identity, n_probes=1)
    # eval BatchNorm at its initial running statistics (mean 0, var 1): out = x ⊙ w1 / √(1 + eps) ⊙ w2
    scale = model[2].w.detach().pow(2) / (1 + model[1].eps)
    assert estimate == pytest.approx(float((x.pow(2).mean(0) * scale).sum()), rel=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert model[0].w.grad is grad and torch.equal(grad, torch.full((4,), 7.0, dtype=torch.float64))
    assert model[2].w.grad is None and not model[2].w.requires_grad and model[0].w.requires_grad
    assert model.training and not model[1].training


def test_hessian_trace_is_deterministic_given_the_seed() -> None:
    model = create_model("cnn_small", num_classes=3)
    x, y = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8), torch.arange(12) % 3
    to_float = lambda b: b.float() / 255  # noqa: E731
    first = hessian_trace(model, F.cross_entropy, x, y, preprocess=to_float, n_probes=2, seed=4, batch_size=5)
    again = hessian_trace(model, F.cross_entropy, x, y, preprocess=to_float, n_probes=2, seed=4, batch_size=5)
    other = hessian_trace(model, F.cross_entropy, x, y, preprocess=to_float, n_probes=2, seed=5, batch_size=5)
    assert first == again != other


# ------------------------------------------------------------------ sharpness


class _ShiftedQuadratic(nn.Module):
    """out = (w − c) ⊙ x: with loss mean ½‖out‖² and rows x = √a, L = ½ Σ a_i (w_i − c_i)², minimal at w = c."""

    def __init__(self, c: Tensor) -> None:
        super().__init__()
        self.register_buffer("c", c)
        self.w = nn.Parameter(c.clone())

    def forward(self, x: Tensor) -> Tensor:
        return (self.w - self.c) * x


def test_sharpness_is_zero_where_the_loss_ignores_the_weights() -> None:
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    zero = nn.Linear(3, 2)
    nn.init.zeros_(zero.weight), nn.init.zeros_(zero.bias)  # relative noise of zero weights is zero
    assert sharpness_avg(zero, F.cross_entropy, x, y, preprocess=_identity) == 0.0
    dead = nn.Sequential(nn.Linear(3, 2), nn.ReLU())  # every pre-activation far below 0: locally constant loss
    nn.init.constant_(dead[0].weight, 0.1)
    nn.init.constant_(dead[0].bias, -100.0)
    assert sharpness_avg(dead, F.cross_entropy, x.clamp(-3, 3), y, preprocess=_identity, sigma=0.1) == 0.0


def test_sharpness_at_a_convex_minimum_is_non_negative_and_matches_its_expectation() -> None:
    c = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    a = torch.tensor([2.0, 1.0, 4.0, 0.5], dtype=torch.float64)
    x = a.sqrt().repeat(6, 1)
    sigma, draws = 0.05, 400
    # each draw: ΔL = ½ σ² Σ a_i c_i² z_i², z ~ N(0, 1): mean ½σ² Σ a c², variance ½ σ⁴ Σ a² c⁴
    expected = 0.5 * sigma**2 * float((a * c**2).sum())
    standard_error = math.sqrt(0.5 * sigma**4 * float((a**2 * c**4).sum()) / draws)
    model = _ShiftedQuadratic(c)
    one = sharpness_avg(model, _half_square, x, torch.zeros(6), preprocess=_identity, sigma=sigma, n_draws=1)
    assert one > 0.0
    estimate = sharpness_avg(model, _half_square, x, torch.zeros(6), preprocess=_identity, sigma=sigma, n_draws=draws)
    assert abs(estimate - expected) < 4 * standard_error


def test_sharpness_restores_the_weights_bitwise_and_is_deterministic() -> None:
    model = create_model("cnn_small", num_classes=3)
    model.train()
    model.fc[0].weight.requires_grad_(False)
    grad = torch.ones_like(model.head.weight)
    model.head.weight.grad = grad
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x, y = torch.randn(10, 1, 28, 28), torch.arange(10) % 3
    first = sharpness_avg(model, F.cross_entropy, x, y, preprocess=_identity, sigma=0.05, n_draws=2, seed=1)
    again = sharpness_avg(model, F.cross_entropy, x, y, preprocess=_identity, sigma=0.05, n_draws=2, seed=1)
    other = sharpness_avg(model, F.cross_entropy, x, y, preprocess=_identity, sigma=0.05, n_draws=2, seed=2)
    assert first == again != other
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert model.head.weight.grad is grad and model.training and not model.fc[0].weight.requires_grad


def test_sharpness_restores_the_weights_when_the_loss_fails() -> None:
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def failing_after_one(out: Tensor, target: Tensor) -> Tensor:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("boom")
        return F.cross_entropy(out, target)

    with pytest.raises(RuntimeError, match="boom"):
        sharpness_avg(model, failing_after_one, torch.randn(4, 3), torch.arange(4) % 2, preprocess=_identity)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# ------------------------------------------------------------------ geometry_metrics


def test_geometry_metrics_on_cnn_small() -> None:
    model = create_model("cnn_small", num_classes=3)
    x, y = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8), torch.arange(30) % 3
    to_float = lambda b: b.float() / 255  # noqa: E731
    options = {"preprocess": to_float, "num_classes": 3, "hessian_samples": 8, "n_probes": 2, "batch_size": 16}
    metrics = geometry_metrics(model, x, y, **options)
    assert metrics.keys() == {"nc1", "nc2_norm", "nc2_angle", "nc3", "nc4", "hessian_trace", "sharpness_avg"}
    assert all(math.isfinite(value) for value in metrics.values())
    assert geometry_metrics(model, x, y, **options) == metrics
    assert 0.0 <= metrics["nc4"] <= 1.0 and metrics["nc1"] >= 0.0 and 0.0 <= metrics["nc3"] <= 4.0


def test_geometry_metrics_refuses_a_model_without_features() -> None:
    with pytest.raises(MixlabTypeError, match="got Sequential, which has no features"):
        geometry_metrics(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.randn(6, 4), torch.arange(6) % 2,
                         preprocess=_identity, num_classes=2)  # fmt: skip


def test_geometry_metrics_agree_across_devices(device: torch.device) -> None:
    x, y = torch.randn(24, 5, generator=torch.Generator().manual_seed(6)), torch.arange(24) % 3
    model = create_model("mlp", num_classes=3, in_channels=5)
    options = {"preprocess": _identity, "num_classes": 3, "hessian_samples": 12, "n_probes": 3, "batch_size": 10}
    on_cpu = geometry_metrics(model, x, y, **options, device="cpu")
    on_device = geometry_metrics(model, x.to(device), y.to(device), **options, device=device)
    assert on_device.keys() == on_cpu.keys()
    for key, value in on_cpu.items():
        assert on_device[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
