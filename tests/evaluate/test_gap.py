"""The mixed-vs-real gap: MMD, its permutation test, KID and intrusion rate against hand computations and known cases."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch
from torch import nn

from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate.gap import (
    _mixed_features,
    intrusion_rate,
    kid,
    median_bandwidth,
    mixed_real_gap,
    mmd2_unbiased,
    mmd_test,
)
from mixlab.evaluate.running import eval_mode
from mixlab.methods import create_mixer
from mixlab.models import create_model


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 255.0


def naive_mmd2(x: torch.Tensor, y: torch.Tensor, kernel) -> float:
    """Gretton et al. (2012) Eq. 3 written as double loops."""
    n, m = len(x), len(y)
    xx = sum(kernel(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(kernel(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def rbf(bandwidth: float):
    return lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / (2 * bandwidth**2))


# ------------------------------------------------------------------ median bandwidth


def test_median_bandwidth_odd_count_by_hand() -> None:
    # pooled 0 1 3 7 12 20: 15 distances 1 3 7 12 20 2 6 11 19 4 9 17 5 13 8 -> sorted, the 8th is 8
    x, y = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([[7.0], [12.0], [20.0]])
    assert median_bandwidth(x, y) == pytest.approx(8.0)
    # in 2-D: (0,0)-(3,4) = 5, (0,0)-(0,1) = 1 twice, (3,4)-(0,1) = sqrt(18) twice, (0,1)-(0,1) = 0
    x, y = torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert median_bandwidth(x, y) == pytest.approx((1.0 + math.sqrt(18)) / 2, abs=1e-12)
    with pytest.raises(MixlabValueError, match="n >= 2"):
        median_bandwidth(x, y[:1])


def test_median_bandwidth_even_count_is_the_mean_of_the_middle_pair() -> None:
    # pooled 0, 1, 3, 7: distances 1, 3, 7, 2, 6, 4 -> sorted 1 2 3 4 6 7 -> (3 + 4) / 2
    assert median_bandwidth(torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0], [7.0]])) == pytest.approx(3.5)


def test_median_bandwidth_of_five_points() -> None:
    # pooled 0, 1, 2 | 10, 20: 10 distances 1 2 10 20 1 9 19 8 18 10 -> sorted 1 1 2 8 9 10 10 18 19 20 -> (9 + 10) / 2
    x, y = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[10.0], [20.0]])
    assert median_bandwidth(x, y) == pytest.approx(9.5)


# ------------------------------------------------------------------ MMD and its test


def test_mmd2_unbiased_equals_the_double_loop() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.randn(7, 3, generator=g, dtype=torch.float64) + 0.5,
    )
    assert mmd2_unbiased(x, y, bandwidth=1.3) == pytest.approx(naive_mmd2(x, y, rbf(1.3)), abs=1e-12)
    # the default bandwidth is the pooled median distance, computed here independently
    pooled = torch.cat([x, y]).double()
    distances = sorted(float((pooled[i] - pooled[j]).norm()) for i, j in itertools.combinations(range(12), 2))
    median = (distances[32] + distances[33]) / 2  # 66 pairs
    assert mmd2_unbiased(x, y) == pytest.approx(naive_mmd2(x, y, rbf(median)), abs=1e-12)


def test_same_distribution_gives_mmd_near_zero_and_no_significance() -> None:
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(150, 4, generator=g), torch.randn(150, 4, generator=g)
    mmd2, p = mmd_test(x, y, n_permutations=200, seed=0)
    assert abs(mmd2) < 0.01
    assert p > 0.05
    assert mmd2 == pytest.approx(mmd2_unbiased(x, y), abs=1e-12)


def test_separated_gaussians_are_detected() -> None:
    g = torch.Generator().manual_seed(12)
    x, y = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g) + 1.5
    mmd2, p = mmd_test(x, y, n_permutations=200, seed=0)
    assert p < 0.01
    assert p == pytest.approx(1 / 201)  # no permutation reaches the observed MMD²
    assert mmd2 > 0.3


def test_permutation_p_value_matches_the_exact_enumeration() -> None:
    """Two points against two: 6 labellings, of which the observed one and its mirror are the most extreme."""
    x, y = torch.tensor([[0.0], [0.1]]), torch.tensor([[5.0], [5.2]])
    pooled = torch.cat([x, y])
    observed = mmd2_unbiased(x, y, bandwidth=1.0)
    labellings = list(itertools.combinations(range(4), 2))
    stats = [
        mmd2_unbiased(pooled[list(a)], pooled[[i for i in range(4) if i not in a]], bandwidth=1.0) for a in labellings
    ]
    exact = sum(s >= observed - 1e-12 for s in stats) / len(stats)
    assert exact == pytest.approx(2 / 6)
    permutations = 3000
    _, p = mmd_test(x, y, n_permutations=permutations, seed=5, bandwidth=1.0)
    # binomial s.d. of the estimate sqrt(1/3 * 2/3 / 3000) = 0.0086
    assert p == pytest.approx(exact, abs=0.03)


def test_p_values_are_roughly_uniform_under_the_null() -> None:
    ps = []
    for seed in range(40):
        g = torch.Generator().manual_seed(100 + seed)
        ps.append(
            mmd_test(torch.randn(30, 2, generator=g), torch.randn(30, 2, generator=g), n_permutations=49, seed=seed)[1]
        )
    assert 0.35 < sum(ps) / len(ps) < 0.65
    assert sum(p <= 0.05 for p in ps) <= 6  # about 2 expected; a biased test rejects far more often


def test_mmd_test_is_deterministic_given_seed() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 2, generator=g), torch.randn(30, 2, generator=g) + 0.3
    assert mmd_test(x, y, seed=4) == mmd_test(x, y, seed=4)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(MixlabValueError, match="same feature width"):
        mmd2_unbiased(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(MixlabValueError, match="bandwidth 0"):
        mmd2_unbiased(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(MixlabValueError, match="bandwidth"):
        mmd2_unbiased(torch.randn(3, 2), torch.randn(3, 2), bandwidth=-1.0)
    with pytest.raises(MixlabValueError, match="finite"):
        mmd_test(torch.tensor([[0.0], [float("nan")]]), torch.zeros(2, 1))
    with pytest.raises(MixlabValueError, match="n_permutations"):
        mmd_test(torch.randn(3, 2), torch.randn(3, 2), n_permutations=0)


# ------------------------------------------------------------------ KID


def test_kid_equals_the_naive_polynomial_computation_on_the_whole_sample() -> None:
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g) * 2.0
    cubic = lambda a, b: (float(a @ b) / 3 + 1.0) ** 3  # noqa: E731
    expected = naive_mmd2(x.double(), y.double(), cubic)
    # subset_size = n = m: every subset is the whole sample, reordered, so each round gives the same value
    assert kid(x, y, n_subsets=3) == pytest.approx(expected, rel=1e-10)
    assert kid(x, y, subset_size=6, n_subsets=1, seed=9) == pytest.approx(expected, rel=1e-10)


def test_kid_of_subsets_is_the_mean_of_the_subset_estimates() -> None:
    # With subsets of 2 from 3 points, the value is a mean of naive estimates on pairs: bounded by their extremes.
    x, y = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[3.0], [4.0], [6.0]])
    cubic = lambda a, b: (float(a @ b) + 1.0) ** 3  # noqa: E731
    pairs = list(itertools.combinations(range(3), 2))
    values = [naive_mmd2(x[list(a)], y[list(b)], cubic) for a in pairs for b in pairs]
    result = kid(x, y, subset_size=2, n_subsets=4)
    assert min(values) - 1e-9 <= result <= max(values) + 1e-9
    # subsets drawn uniformly: over many of them the mean tends to the mean of the 9 pair estimates
    many = kid(x, y, subset_size=2, n_subsets=4000, seed=1)
    standard_error = statistics.pstdev(values) / math.sqrt(4000)
    assert abs(many - statistics.mean(values)) < 4 * standard_error


def test_kid_refuses_subsets_larger_than_a_sample() -> None:
    with pytest.raises(MixlabValueError, match="subset_size"):
        kid(torch.randn(5, 2), torch.randn(8, 2), subset_size=6)


# ------------------------------------------------------------------ intrusion rate


def test_intrusion_rate_by_hand() -> None:
    probs = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # predicted 0, sources 1 and 2, confident: intrusion
            [0.7, 0.2, 0.1],  # predicted 0 = target_a: none
            [0.4, 0.35, 0.25],  # predicted 0 but at 0.4 <= 0.5: none
            [0.1, 0.1, 0.8],  # predicted 2, sources 0 and 1: intrusion
            [0.5, 0.3, 0.2],  # exactly 0.5 is not > 0.5: none
        ]
    )
    target_a, target_b = torch.tensor([1, 0, 1, 0, 1]), torch.tensor([2, 2, 2, 1, 2])
    assert intrusion_rate(probs, target_a, target_b) == pytest.approx(2 / 5)
    assert intrusion_rate(probs, target_a, target_b, threshold=0.0) == pytest.approx(4 / 5)
    soft_a = torch.nn.functional.one_hot(target_a, 3).float() * 0.9 + 0.1 / 3
    assert intrusion_rate(probs, soft_a, target_b) == pytest.approx(2 / 5)
    with pytest.raises(MixlabValueError, match="target_b"):
        intrusion_rate(probs, target_a, target_b[:3])
    with pytest.raises(MixlabValueError, match="threshold"):
        intrusion_rate(probs, target_a, target_b, threshold=1.5)


# ------------------------------------------------------------------ mixed_real_gap on a small CNN


@pytest.fixture(scope="module")
def fashion_like() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (240, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (240,), generator=g)
    torch.manual_seed(0)  # the model's initialisation only
    return create_model("cnn_small", num_classes=10), x, y


BIN_NAMES = {"0.0_0.2", "0.2_0.4", "0.4_0.6", "0.6_0.8", "0.8_1.0"}


@pytest.mark.parametrize(
    "name, params",
    [
        ("mixup", {"alpha": 1.0, "lam_mode": "sample"}),
        ("cutmix", {"alpha": 1.0}),
        ("manifold_mixup", {"alpha": 1.0, "lam_mode": "sample"}),
    ],
)
def test_gap_keys_and_determinism(fashion_like, name: str, params: dict) -> None:
    model, x, y = fashion_like
    model.train()
    run = lambda seed: mixed_real_gap(  # noqa: E731
        model,
        create_mixer(name, **params),
        x,
        y,
        preprocess=to_unit,
        samples=100,
        n_permutations=50,
        seed=seed,
        batch_size=25,
        min_per_bin=10,
    )
    result = run(0)
    assert model.training and all(module.training for module in model.modules())
    metrics, curve = result.metrics, result.curve
    bins = sorted(key.removeprefix("mmd/lam_") for key in metrics if key.startswith("mmd/lam_"))
    assert bins and set(bins) <= BIN_NAMES
    assert set(metrics) == {
        "intrusion_rate",
        "kid",
        "mmd_mixed_real",
        *(f"mmd/lam_{b}" for b in bins),
        *(f"mmd_p/lam_{b}" for b in bins),
    }
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert all(1 / 51 <= metrics[f"mmd_p/lam_{b}"] <= 1.0 for b in bins)
    assert 0.0 <= metrics["intrusion_rate"] <= 1.0
    assert metrics["mmd_mixed_real"] == pytest.approx(sum(metrics[f"mmd/lam_{b}"] for b in bins) / len(bins))
    assert set(curve) == {"lam_mid", "mmd", "p", "count"} and all(len(v) == len(bins) for v in curve.values())
    assert curve["lam_mid"] == sorted(curve["lam_mid"]) and all(c >= 10 for c in curve["count"])
    assert sum(curve["count"]) <= 100
    again = run(0)
    assert again.metrics == metrics and again.curve == curve
    assert run(1).metrics != metrics


def test_fixed_lambda_fills_one_bin_and_the_others_are_absent(fashion_like) -> None:
    model, x, y = fashion_like
    result = mixed_real_gap(
        model, create_mixer("mixup", lam=0.5), x, y, preprocess=to_unit, samples=80, n_permutations=30
    )
    assert sorted(result.metrics) == ["intrusion_rate", "kid", "mmd/lam_0.4_0.6", "mmd_mixed_real", "mmd_p/lam_0.4_0.6"]
    assert result.curve == {
        "lam_mid": [pytest.approx(0.5)],
        "mmd": [result.metrics["mmd/lam_0.4_0.6"]],
        "p": [result.metrics["mmd_p/lam_0.4_0.6"]],
        "count": [80.0],
    }
    assert result.metrics["mmd_mixed_real"] == result.metrics["mmd/lam_0.4_0.6"]


def test_bins_below_min_per_bin_are_absent(fashion_like) -> None:
    model, x, y = fashion_like
    # lam 0.5 where mixed, 1.0 (unmixed, in the last bin) elsewhere: two bins whose counts sum to the sample
    mixer = create_mixer("mixup", lam=0.5, lam_mode="sample", p=0.5)
    result = mixed_real_gap(model, mixer, x, y, preprocess=to_unit, samples=100, n_permutations=10, min_per_bin=2)
    assert result.curve["lam_mid"] == [pytest.approx(0.5), pytest.approx(0.9)]
    low, high = result.curve["count"]
    assert low + high == 100
    fewest = int(min(low, high))
    sparse = mixed_real_gap(
        model, mixer, x, y, preprocess=to_unit, samples=100, n_permutations=10, min_per_bin=fewest + 1
    )
    assert sparse.curve["count"] == [max(low, high)]
    none = mixed_real_gap(model, mixer, x, y, preprocess=to_unit, samples=100, n_permutations=10, min_per_bin=101)
    assert sorted(none.metrics) == ["intrusion_rate", "kid"] and none.curve["mmd"] == []


def test_unmixed_samples_are_not_told_apart_and_heavy_mixing_is(fashion_like) -> None:
    """λ = 1 leaves the 'mixed' subset real (the null holds); λ = 0.5 halves the pixel noise's variance."""
    model, x, y = fashion_like
    common = {"preprocess": to_unit, "samples": 100, "n_permutations": 100}
    real = mixed_real_gap(model, create_mixer("mixup", lam=1.0), x, y, **common).metrics
    assert real["mmd_p/lam_0.8_1.0"] > 0.05 and abs(real["mmd/lam_0.8_1.0"]) < 0.02
    mixed = mixed_real_gap(model, create_mixer("mixup", lam=0.5), x, y, **common).metrics
    assert mixed["mmd_p/lam_0.4_0.6"] < 0.01
    assert mixed["mmd/lam_0.4_0.6"] > 10 * abs(real["mmd/lam_0.8_1.0"])


def test_features_are_the_head_input_after_mixing_inside_the_model(fashion_like) -> None:
    """Manifold Mixup at the feature layer: the caught features are exactly the λ-blend of the real features."""
    model, x, y = fashion_like
    mixer = create_mixer("manifold_mixup", lam=0.25, layers=["fc"])
    inputs, labels = to_unit(x[:12]), y[:12]
    generator = torch.Generator().manual_seed(0)
    with eval_mode(model):
        mixed = _mixed_features(model, mixer, x[:12], labels, to_unit, 12, torch.device("cpu"), generator)
        plain = model.features(inputs)
    perm = mixer(inputs, labels, torch.Generator().manual_seed(0), context={"model": model}).perm
    assert torch.allclose(mixed.features, 0.25 * plain + 0.75 * plain[perm], atol=1e-6)
    assert torch.equal(mixed.target_b, labels[perm]) and torch.all(mixed.lam == 0.25)
    assert torch.allclose(mixed.probs, (model.head(mixed.features)).softmax(1), atol=1e-6)


def test_mixed_real_gap_refusals(fashion_like) -> None:
    model, x, y = fashion_like
    mixer = create_mixer("mixup")
    with pytest.raises(MixlabTypeError, match="Sequential"):
        mixed_real_gap(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), mixer, x, y, preprocess=to_unit)
    with pytest.raises(MixlabValueError, match="float32"):
        mixed_real_gap(model, mixer, x, y.float(), preprocess=to_unit)
    with pytest.raises(MixlabValueError, match="n_bins"):
        mixed_real_gap(model, mixer, x, y, preprocess=to_unit, n_bins=20)
    with pytest.raises(MixlabTypeError, match="Mixer"):
        mixed_real_gap(model, lambda a, b: a, x, y, preprocess=to_unit)
