"""AlignMix against the authors' code (shashankvkt/AlignMixup_CVPR22, ``cifar10_100/models/resnet18_classifier.py``
``mixup_aligned`` and ``cifar10_100/utils/OT.py`` ``SinkhornDistance``), computed by hand on small fixed tensors.

The code, for feature maps ``A = h_i``, ``A' = h_perm[i]`` as ``C x r`` matrices (``r = H·W`` positions):
``M_kl = ||a_k - a'_l||²`` (raw squared distances); log-domain Sinkhorn from ``u = v = 0`` with uniform
marginals ``μ = ν = 1/r`` and ``ε = 0.1``, at most 100 iterations of
``u ← ε(log μ − logsumexp_l((−M_kl + u_k + v_l)/ε)) + u`` then the same for ``v`` over ``k``, stopped
once ``mean_batch Σ_k |u_k − u_k(previous)| < 0.1``; plan ``P = exp((−M + u + v)/ε)``, ``R = r·P``;
one direction per batch: ``λA + (1−λ)A'Rᵀ`` or ``λAR + (1−λ)A'``; labels ``λ y_i + (1−λ) y_perm[i]``;
the batch is mixed at the input (plain mixup) or aligned after ``layer4`` with equal chance; ``λ ~ Beta(2, 2)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mixlab.errors import MixlabValueError, UnknownNameError
from mixlab.methods.feature import AlignMix, align_and_mix, alignment_cost, sinkhorn_plan
from mixlab.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def hand_cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``M[k, l] = Σ_c (a[k, c] − b[l, c])²`` for one pair of ``(r, C)`` position lists, element by element."""
    cost = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for k in range(a.shape[0]):
        for l in range(b.shape[0]):  # noqa: E741
            cost[k, l] = sum((float(a[k, c]) - float(b[l, c])) ** 2 for c in range(a.shape[1]))
    return cost


def hand_sinkhorn(cost: torch.Tensor, eps: float = 0.1, max_iter: int = 100, thresh: float = 0.1):
    """The authors' iteration on a batch ``(B, n, m)`` of costs, in float64; returns the plan and the iterations run."""
    cost = cost.double()
    batch, n, m = cost.shape
    u, v = torch.zeros(batch, n, dtype=torch.float64), torch.zeros(batch, m, dtype=torch.float64)

    def scaled(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (-cost + u[:, :, None] + v[:, None, :]) / eps

    done = 0
    for _ in range(max_iter):
        before = u
        u = eps * (math.log(1 / n) - torch.logsumexp(scaled(u, v), dim=2)) + u
        v = eps * (math.log(1 / m) - torch.logsumexp(scaled(u, v), dim=1)) + v
        done += 1
        if float((u - before).abs().sum(dim=1).mean()) < thresh:
            break
    return torch.exp(scaled(u, v)), done


# Two 2-channel maps on a 2x2 grid: the second is the first with its positions rotated and a little noise.
FIRST = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 0.5], [-1.0, 2.0]]])
SECOND = torch.tensor([[[2.1, 0.1], [2.9, 1.0]], [[-0.9, 1.1], [2.0, 0.4]]])
PAIR = torch.stack([FIRST, SECOND])  # (2, C=2, 2, 2)


def positions(h: torch.Tensor) -> torch.Tensor:
    """``(r, C)``: the columns of the ``C x r`` matrix of a ``(C, H, W)`` map, row-major positions."""
    return h.flatten(1).T.double()


def test_sinkhorn_of_a_2x2_cost_is_the_closed_form() -> None:
    # Uniform marginals 1/2: P = [[p, 1/2 − p], [1/2 − p, p]] with p² / (1/2 − p)² = exp(−Δ/ε),
    # Δ = M11 + M22 − M12 − M21, so p = s / (2(1 + s)) with s = exp(−Δ / (2ε)).
    cost = torch.tensor([[[0.3, 0.5], [0.6, 0.1]], [[1.0, 0.2], [0.4, 0.9]]])
    eps = 0.2
    plan = sinkhorn_plan(cost, epsilon=eps, iterations=200, stop_threshold=0)
    for b in range(2):
        delta = float(cost[b, 0, 0] + cost[b, 1, 1] - cost[b, 0, 1] - cost[b, 1, 0])
        s = math.exp(-delta / (2 * eps))
        p = s / (2 * (1 + s))
        expected = torch.tensor([[p, 0.5 - p], [0.5 - p, p]])
        torch.testing.assert_close(plan[b], expected, atol=1e-6, rtol=0)


def test_the_cost_is_the_raw_squared_distance_between_positions() -> None:
    a, b = positions(FIRST), positions(SECOND)
    cost = alignment_cost(a[None].float(), b[None].float())
    torch.testing.assert_close(cost[0].double(), hand_cost(a, b), atol=1e-5, rtol=0)
    normalised = alignment_cost(a[None].float(), b[None].float(), "normalised")
    torch.testing.assert_close(normalised[0].double(), hand_cost(a, b) / hand_cost(a, b).mean(), atol=1e-6, rtol=0)


def test_sinkhorn_follows_the_authors_iteration_and_stopping_rule() -> None:
    cost = torch.tensor(
        [[[0.0, 0.5, 2.0], [0.5, 0.0, 0.5], [2.0, 0.5, 0.0]], [[1.0, 0.25, 0.5], [0.15, 0.75, 1.25], [0.6, 0.4, 0.05]]]
    )
    expected, done = hand_sinkhorn(cost)
    assert 1 < done < 100  # the threshold, not the iteration cap, ended it: the rule is exercised
    plan = sinkhorn_plan(cost)
    torch.testing.assert_close(plan.double(), expected, atol=1e-6, rtol=0)
    # Running every iteration gives another plan: the early stop matters.
    full, _ = hand_sinkhorn(cost, thresh=0.0)
    assert float((full - expected).abs().max()) > 1e-3
    torch.testing.assert_close(sinkhorn_plan(cost, stop_threshold=0).double(), full, atol=1e-6, rtol=0)
    # The pair's own cost by hand, as the authors' raw squared distances: same rule, same plan.
    a, b = positions(FIRST), positions(SECOND)
    pair_cost = torch.stack([hand_cost(a, b), hand_cost(b, a)])
    torch.testing.assert_close(
        sinkhorn_plan(pair_cost.float()).double(), hand_sinkhorn(pair_cost)[0], atol=1e-6, rtol=0
    )


def test_sinkhorn_matches_the_authors_iteration_on_costs_far_above_epsilon() -> None:
    # Raw squared distances of 512-channel maps run to the hundreds, 1000s of epsilons: exp(-C/eps)
    # underflows in float32, so the first steps run in the log domain; the plan still follows the authors'.
    cost = 100 * torch.tensor(
        [
            [[0.0, 3.0, 4.5, 1.0], [2.0, 0.5, 3.5, 4.0], [1.5, 2.5, 0.2, 3.0], [4.0, 1.0, 2.0, 0.7]],
            [[2.2, 0.4, 1.0, 3.3], [0.9, 2.8, 3.1, 0.6], [3.4, 1.7, 0.8, 2.5], [1.2, 3.6, 2.4, 1.9]],
        ]
    )
    assert float(torch.exp(-cost / 0.1).sum(dim=2).amin()) == 0.0  # the kernel underflows entirely
    expected, _ = hand_sinkhorn(cost)
    # float32 resolves C / eps (up to 4500) to 5e-4, so entries (up to 1/4) agree to about 1e-4.
    torch.testing.assert_close(sinkhorn_plan(cost).double(), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        sinkhorn_plan(cost, stop_threshold=0).double(), hand_sinkhorn(cost, thresh=0)[0], atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("to_partner", [False, True])
def test_aligned_features_of_one_pair_by_hand(to_partner: bool) -> None:
    lam, r = 0.3, 4
    a, b = positions(FIRST), positions(SECOND)  # (r, C): A and A' transposed
    plans, _ = hand_sinkhorn(torch.stack([hand_cost(a, b), hand_cost(b, a)]))
    assignment = r * plans[0]  # R = r P for the pair (FIRST, SECOND)
    big_a, big_a_partner = a.T, b.T  # C x r
    if to_partner:  # λ A R + (1 − λ) A': FIRST moved to SECOND's geometry
        expected = lam * big_a @ assignment + (1 - lam) * big_a_partner
    else:  # λ A + (1 − λ) A' Rᵀ: SECOND moved to FIRST's geometry
        expected = lam * big_a + (1 - lam) * big_a_partner @ assignment.T
    flags = torch.tensor([to_partner, to_partner])
    mixed = align_and_mix(PAIR, torch.tensor([1, 0]), torch.tensor([lam, lam]), flags)
    torch.testing.assert_close(mixed[0].flatten(1).double(), expected, atol=1e-5, rtol=0)


def test_exact_marginals_rescales_the_rows_of_the_plan() -> None:
    lam = 0.6
    a, b = positions(FIRST), positions(SECOND)
    plans, _ = hand_sinkhorn(torch.stack([hand_cost(a, b), hand_cost(b, a)]))
    rows = plans[0] / plans[0].sum(dim=1, keepdim=True)
    expected = lam * a.T + (1 - lam) * b.T @ rows.T
    mixed = align_and_mix(PAIR, torch.tensor([1, 0]), torch.tensor([lam, lam]), exact_marginals=True)
    torch.testing.assert_close(mixed[0].flatten(1).double(), expected, atol=1e-5, rtol=0)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def test_the_hooked_forward_is_the_hand_alignment_then_the_rest_of_the_model() -> None:
    net = _net()
    x, y = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 0, 1])
    mixer = AlignMix(layers=["2"], model=net, input_mix_prob=0.0, direction="to_sample")
    mb = mixer(x, y, generator=torch.Generator().manual_seed(2), context={"model": net})
    h = net[:3](x).detach()  # (4, 4, 2, 2): the hooked layer's output
    own = [positions(h[i]) for i in range(4)]
    costs = torch.stack([hand_cost(own[i], own[int(j)]) for i, j in enumerate(mb.perm)])
    plans, _ = hand_sinkhorn(costs)  # the authors' rule runs over the whole batch at once
    lam = float(mb.lam[0])
    mixed = torch.stack([lam * own[i].T + (1 - lam) * own[int(j)].T @ (4 * plans[i]).T for i, j in enumerate(mb.perm)])
    expected = net[3:](mixed.float().view(4, 4, 2, 2))
    torch.testing.assert_close(mb.forward(net), expected, atol=1e-5, rtol=1e-5)


def test_defaults_are_the_authors_cifar_configuration() -> None:
    mixer = AlignMix(model=create_model("preact_resnet18", 10, in_channels=3))
    assert mixer.layers == ("layer4",)  # the last stage: 4x4 on 32x32 inputs
    assert mixer.input_mix_prob == 0.5 and mixer.epsilon == 0.1 and mixer.sinkhorn_iters == 100
    assert mixer.stop_threshold == 0.1 and mixer.cost == "squared" and mixer.direction == "random"
    assert not mixer.exact_marginals and mixer.lam_mode == "batch"
    lam = mixer.lam_sampler.sample(20000, np.random.default_rng(0))
    assert abs(lam.mean() - 0.5) < 0.01 and abs(lam.var() - 1 / 20) < 0.003  # Beta(2, 2): variance 1/20


def test_input_mixup_or_aligned_mixing_with_equal_chance_per_batch() -> None:
    net = _net()
    x, y = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.arange(6) % 2
    mixer = AlignMix(layers=["2"], model=net)
    generator = torch.Generator().manual_seed(0)
    at_input = 0
    for _ in range(400):
        mb = mixer(x, y, generator=generator, context={"model": net})
        if mb.forward_fn is None:  # plain mixup of the inputs, with the label weight lam
            at_input += 1
            torch.testing.assert_close(
                mb.inputs, mb.lam.view(-1, 1, 1, 1) * x + (1 - mb.lam.view(-1, 1, 1, 1)) * x[mb.perm]
            )
        else:
            assert torch.equal(mb.inputs, x)
    assert 160 < at_input < 240  # 200 expected; the binomial's sd is 10
    for prob, expected in ((0.0, 0), (1.0, 20)):
        always = AlignMix(layers=["2"], model=net, input_mix_prob=prob)
        count = sum(always(x, y, generator=generator, context={"model": net}).forward_fn is None for _ in range(20))
        assert count == expected


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"input_mix_prob": -0.1}, MixlabValueError, r"input_mix_prob.*-0.1"),
        ({"cost": "euclidean"}, UnknownNameError, r"euclidean.*normalised, squared"),
        ({"stop_threshold": float("inf")}, MixlabValueError, r"stop_threshold.*inf"),
        ({"sinkhorn_iters": 0}, MixlabValueError, r"sinkhorn_iters.*>= 1; got 0"),
    ],
)
def test_bad_options_are_refused_at_construction(options: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        AlignMix(**options)
