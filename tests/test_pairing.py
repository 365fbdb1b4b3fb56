"""Pair selection: random permutations, C-Mixup's kernel and class-aware partners."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

import mixlab
from mixlab.errors import MixlabTypeError, UnknownNameError
from mixlab.sampling import ClassAwarePairing, CMixupPairing, RandomPairing, make_pair_sampler


def _draws(sampler, y: torch.Tensor, calls: int, seed: int) -> torch.Tensor:
    """``(calls, N)`` partner indices from repeated calls with one generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([sampler.sample(y, g) for _ in range(calls)])


def _counts(column: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(column, minlength=n).to(torch.float64)


def _kernel(y: list[list[float]], sigma: float, exclude_self: bool = False) -> list[list[float]]:
    """exp(-||y_i - y_j||^2 / 2 sigma^2), row-normalised, by hand."""
    rows = []
    for i, yi in enumerate(y):
        w = []
        for j, yj in enumerate(y):
            d2 = sum((a - b) ** 2 for a, b in zip(yi, yj, strict=True))
            w.append(0.0 if exclude_self and i == j else math.exp(-d2 / (2 * sigma**2)))
        total = sum(w)
        rows.append([v / total for v in w])
    return rows


# ---------------------------------------------------------------- C-Mixup probabilities


def test_cmixup_probabilities_1d_hand_example():
    y = [0.0, 0.5, 2.0]
    got = CMixupPairing(sigma=1.0).probabilities(torch.tensor(y))
    expected = torch.tensor(_kernel([[v] for v in y], 1.0), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # spelled out for row 0: weights 1, exp(-0.125), exp(-2)
    w = [1.0, math.exp(-0.125), math.exp(-2.0)]
    assert got[0].tolist() == pytest.approx([v / sum(w) for v in w], rel=1e-12)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_cmixup_probabilities_2d_hand_example():
    y = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 2.0]]
    sigma = 0.7
    got = CMixupPairing(sigma=sigma).probabilities(torch.tensor(y))
    expected = torch.tensor(_kernel(y, sigma), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # the distance is the Euclidean norm over both columns, not per column
    d2 = 1.0 + 4.0
    assert got[0, 3] / got[0, 0] == pytest.approx(math.exp(-d2 / (2 * sigma**2)), rel=1e-10)
    assert torch.allclose(got, got.T)  # equal kernel rows sums here: the four points are a rectangle


def test_cmixup_probabilities_exclude_self():
    y = [0.0, 0.3, 0.4, 1.5]
    got = CMixupPairing(sigma=0.5, exclude_self=True).probabilities(torch.tensor(y, dtype=torch.float64))
    assert torch.equal(got.diagonal(), torch.zeros(4, dtype=torch.float64))
    expected = torch.tensor(_kernel([[v] for v in y], 0.5, exclude_self=True), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_cmixup_tiny_sigma_does_not_underflow_to_nan():
    y = torch.tensor([0.0, 1.0, 3.0])
    p = CMixupPairing(sigma=0.01).probabilities(y)
    assert torch.equal(p, torch.eye(3, dtype=torch.float64))
    p = CMixupPairing(sigma=0.01, exclude_self=True).probabilities(y)
    assert p.isfinite().all()
    assert p.argmax(dim=1).tolist() == [1, 0, 1]  # the nearest other sample
    g = torch.Generator().manual_seed(0)
    assert CMixupPairing(sigma=0.01, exclude_self=True, scope="batch").sample(y, g).tolist() == [1, 0, 1]


# ---------------------------------------------------------------- C-Mixup sampling within the batch (scope="batch")

Y6 = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0, 1.6])


@pytest.mark.parametrize(("sigma", "exclude_self"), [(0.6, False), (0.5, True)])
def test_cmixup_sample_frequencies_match_the_kernel(sigma, exclude_self):
    sampler = CMixupPairing(sigma=sigma, exclude_self=exclude_self, scope="batch")
    probs = sampler.probabilities(Y6)
    calls = 3500  # 3500 draws per row, 21000 in all
    draws = _draws(sampler, Y6, calls, seed=123)
    assert draws.dtype == torch.long and draws.shape == (calls, 6)
    for i in range(6):
        counts = _counts(draws[:, i], 6)
        expected = probs[i] * calls
        keep = expected > 0
        if exclude_self:
            assert counts[i] == 0 and not keep[i]
        assert counts[~keep].sum() == 0
        assert (expected[keep] >= 5).all()  # the chi-square approximation holds
        p_value = chisquare(counts[keep].numpy(), expected[keep].numpy()).pvalue
        assert p_value > 1e-3, (i, counts.tolist(), expected.tolist())


def test_cmixup_sample_is_reproducible_and_draws_near_partners():
    sampler = CMixupPairing(sigma=0.5, scope="batch")
    a = _draws(sampler, Y6, 20, seed=4)
    b = _draws(sampler, Y6, 20, seed=4)
    assert torch.equal(a, b)
    y = torch.tensor([0.0, 0.1, 0.2, 10.0, 10.1, 10.2])
    d = _draws(sampler, y, 200, seed=5)
    assert (d[:, :3] < 3).all() and (d[:, 3:] >= 3).all()


# ---------------------------------------------------------------- C-Mixup in a mixer (within-batch kernel)


@pytest.mark.parametrize("target_shape", [(8,), (8, 2)])
def test_cmixup_mixer_mixes_float_targets(target_shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g)
    y = torch.randn(*target_shape, generator=g)
    mixer = mixlab.create_mixer("mixup", pairing="c_mixup_batch", sigma=0.5, lam_mode="sample")
    assert isinstance(mixer.pairing, CMixupPairing) and mixer.pairing.sigma == 0.5
    assert mixer.pairing.scope == "batch"
    mb = mixer(x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mb.target_a, y)
    assert torch.equal(mb.target_b, y[mb.perm])
    lam = mb.lam.view(-1, *([1] * (y.ndim - 1)))
    torch.testing.assert_close(mb.mixed_target(), lam * y + (1 - lam) * y[mb.perm])
    torch.testing.assert_close(mb.inputs, mb.lam.view(-1, 1) * x + (1 - mb.lam.view(-1, 1)) * x[mb.perm])


def test_cmixup_mixer_uses_the_kernel():
    y = torch.tensor([0.0, 0.1, 0.2, 10.0, 10.1, 10.2])
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    mixer = mixlab.create_mixer("mixup", pairing="c_mixup_batch", sigma=0.5)
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        perm = mixer(x, y, generator=g).perm
        assert ((perm < 3) == (torch.arange(6) < 3)).all()


def test_cmixup_rejects_integer_targets():
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 1])
    x0 = x.clone()
    mixer = mixlab.create_mixer("mixup", pairing="c_mixup", sigma=0.5, inplace=True)
    with pytest.raises(MixlabTypeError) as info:
        mixer(x, y, generator=torch.Generator().manual_seed(0))
    assert isinstance(info.value, TypeError)
    assert "int64" in str(info.value)
    assert torch.equal(x, x0)
    with pytest.raises(MixlabTypeError, match="int64"):
        CMixupPairing().probabilities(y)


# ---------------------------------------------------------------- class-aware pairing

Y_CLS = torch.tensor([0, 0, 0, 1, 2, 2])


def test_same_class_partners():
    draws = _draws(ClassAwarePairing("same"), Y_CLS, 3000, seed=0)
    assert (Y_CLS[draws] == Y_CLS).all()
    assert (draws[:, 3] == 3).all()  # alone in its class: itself
    assert (draws[:, 4] == 5).all() and (draws[:, 5] == 4).all()
    for i in range(3):  # two allowed partners each, never itself
        counts = _counts(draws[:, i], 6)
        assert counts[i] == 0
        others = [j for j in range(3) if j != i]
        assert counts[others].sum() == 3000
        assert chisquare(counts[others].numpy()).pvalue > 1e-3


def test_different_class_partners():
    draws = _draws(ClassAwarePairing("different"), Y_CLS, 3000, seed=1)
    assert (Y_CLS[draws] != Y_CLS).all()
    for i in range(6):
        allowed = (Y_CLS[i] != Y_CLS).nonzero().squeeze(1)
        counts = _counts(draws[:, i], 6)
        assert counts[allowed].sum() == 3000
        assert chisquare(counts[allowed].numpy()).pvalue > 1e-3, (i, counts.tolist())


def test_different_class_with_a_single_class_pairs_each_with_itself():
    y = torch.tensor([4, 4, 4])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert ClassAwarePairing("different").sample(y, g).tolist() == [0, 1, 2]
    # two classes: the lone sample 2 is drawn by both others and draws either of them
    y = torch.tensor([1, 1, 2])
    d = _draws(ClassAwarePairing("different"), y, 50, seed=3)
    assert (d[:, 0] == 2).all() and (d[:, 1] == 2).all()
    assert set(d[:, 2].tolist()) == {0, 1}


def test_class_aware_compares_soft_labels_by_argmax():
    # rows of one class differ in value but share their arg-max
    noise = 0.05 * torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    soft = torch.nn.functional.one_hot(Y_CLS, 3).float() * 0.7 + 0.1 + noise
    assert torch.equal(soft.argmax(dim=1), Y_CLS) and not torch.equal(soft[0], soft[1])
    for mode in ("same", "different"):
        a = _draws(ClassAwarePairing(mode), Y_CLS, 30, seed=7)
        b = _draws(ClassAwarePairing(mode), soft, 30, seed=7)
        assert torch.equal(a, b)


@pytest.mark.parametrize(("pairing", "same"), [("same_class", True), ("different_class", False)])
def test_class_aware_pairing_through_the_mixer(pairing, same):
    y = torch.tensor([0, 1, 0, 1, 2, 2, 1, 0])
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    mixer = mixlab.create_mixer("mixup", pairing=pairing)
    assert isinstance(mixer.pairing, ClassAwarePairing)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        mb = mixer(x, y, generator=g)
        assert torch.equal(mb.target_b, y[mb.perm])
        assert bool((mb.target_b == mb.target_a).all()) is same
        assert bool((mb.target_b != mb.target_a).all()) is not same
        assert (mb.perm != torch.arange(8)).all()


def test_class_aware_unknown_mode():
    with pytest.raises(UnknownNameError, match="sideways") as info:
        ClassAwarePairing("sideways")
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownNameError, match="c_mixup"):
        make_pair_sampler("nearest")


# ---------------------------------------------------------------- random pairing


def test_random_pairing_is_a_permutation():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(9)
    perms = [RandomPairing().sample(y, g) for _ in range(30)]
    for perm in perms:
        assert perm.dtype == torch.long
        assert sorted(perm.tolist()) == list(range(9))
    assert len({tuple(p.tolist()) for p in perms}) > 25


def test_random_pairing_is_reproducible_and_uniform():
    y = torch.zeros(5)
    a, b = _draws(RandomPairing(), y, 4000, seed=11), _draws(RandomPairing(), y, 4000, seed=11)
    assert torch.equal(a, b)
    for i in range(5):
        assert chisquare(_counts(a[:, i], 5).numpy()).pvalue > 1e-3
