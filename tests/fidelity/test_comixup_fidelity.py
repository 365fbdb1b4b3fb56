"""Co-Mixup against its authors' equations, computed by hand on small tensors.

Kim, Choo, Jeong and Song, "Co-Mixup: Saliency Guided Joint Mixup with
Supermodular Diversity", ICLR 2021, arXiv 2102.03065; the authors' code,
snu-mllab/Co-Mixup: ``match.py`` (``get_onehot_matrix``, ``graphcut_wrapper``,
``graphcut_multi``, ``resolve_label``, ``mix_input``, ``obj_fn``), ``mixup.py``
(``mixup_process``: partitions, pooling, compatibility), ``main.py`` (defaults,
the clean loss, the BCE-on-softmax loss).

Everything below is written from those equations with NumPy loops, not from mixlab.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mixlab.methods.comixup import (
    CoMixup,
    CoMixupProblem,
    assignment_params,
    compatibility_matrix,
    solve_comixup,
)
from mixlab.methods.context import MixContext
from mixlab.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ the equations, by hand


def grid_edges(rows: int, cols: int) -> list[tuple[int, int]]:
    """Neighbouring blocks of a row-major ``rows x cols`` grid."""
    right = [(r * cols + c, r * cols + c + 1) for r in range(rows) for c in range(cols - 1)]
    down = [(r * cols + c, (r + 1) * cols + c) for r in range(rows - 1) for c in range(cols)]
    return right + down


def smoothness(one: tuple[int, int], other: tuple[int, int]) -> float:
    """``graphcut_multi``'s pairwise cost: 0 for equal labels, 1/4 between a 50/50 block and one of its inputs."""
    if one == other:
        return 0.0
    for whole, half in ((one, other), (other, one)):
        if whole[0] == whole[1] and half[0] != half[1] and whole[0] in half:
            return 0.25
    return 1.0


def reuse(others: np.ndarray, compat: np.ndarray, threshold: float, kind: str) -> np.ndarray:
    """The code's modular penalty (before ``2 gamma``): ``match.py``, ``get_onehot_matrix``."""
    pressure = compat @ others
    if kind == "hard":
        # Python reads (A @ p > thres).float() * A @ p as ((A @ p > thres) * A) @ p.
        return ((pressure > threshold).astype(float) * compat) @ others
    return (pressure > threshold) * (pressure - threshold)


def usage(labels: np.ndarray, inputs: int) -> np.ndarray:
    """``o_j``: blocks of each input in each output, for ``labels`` ``(outputs, K, 2)`` (a 50/50 block: 1/2 each)."""
    counts = np.zeros((labels.shape[0], inputs))
    for j, row in enumerate(labels):
        for a, b in row:
            counts[j, a] += 0.5
            counts[j, b] += 0.5
    return counts


def energy(
    labels: np.ndarray,
    saliency: np.ndarray,
    prior: np.ndarray,
    compat: np.ndarray,
    rows: int,
    cols: int,
    *,
    beta: float,
    gamma: float,
    eta: float,
    tau: float,
    kind: str,
) -> float:
    """The objective: saliency and prior, smoothness, ``D = sum_j o_j . phi(o_{-j})`` (divided by K as in the code)."""
    inputs, k = saliency.shape
    cost = -saliency - eta / k * np.log(prior + 1e-8)[:, None]
    total = 0.0
    for row in labels:
        for block, (a, b) in enumerate(row):
            total += 0.5 * (cost[a, block] + cost[b, block]) - (5e-4 if a != b else 0.0)
        total += beta / k * sum(smoothness(tuple(row[s]), tuple(row[t])) for s, t in grid_edges(rows, cols))
    counts = usage(labels, inputs)
    for j in range(len(labels)):
        others = counts.sum(0) - counts[j]
        total += gamma / k * float(counts[j] @ reuse(others, compat, tau * k, kind))
    return total


def emulate_without_smoothness(
    saliency: np.ndarray,
    prior: np.ndarray,
    compat: np.ndarray,
    start: np.ndarray,
    *,
    gamma: float,
    eta: float,
    tau: float,
    kind: str,
    sweeps: int,
) -> np.ndarray:
    """``get_onehot_matrix`` with ``beta = 0`` (each output's graph cut is then its per-block argmin), half
    blocks (``graphcut_wrapper``) and ``set_resolve`` (``resolve_label``); returns labels ``(m, K, 2)``."""
    m, k = saliency.shape
    cost = -saliency - eta / k * np.log(prior + 1e-8)[:, None]
    labels = np.stack([start, start], -1)
    add_cost = np.zeros((m, m))
    for sweep in range(sweeps):
        for j in range(m):
            counts = usage(labels, m)
            others = counts.sum(0) - counts[j]
            own = (
                cost + 2 * gamma / k * reuse(others, compat, tau * k, kind)[:, None] + gamma / k * add_cost[j][:, None]
            )
            options = [((i, i), own[i]) for i in range(m)]
            if sweep > 0:
                used = int((counts[j] > 0).sum())
                top = torch.topk(torch.tensor(counts[j], dtype=torch.float32), 3).indices.tolist()
                pairs = ([(top[0], top[1])] if used >= 2 else []) + (
                    [(top[0], top[2]), (top[1], top[2])] if used >= 3 else []
                )
                for a, b in pairs:
                    options.append(((min(a, b), max(a, b)), 0.5 * (own[a] + own[b]) - 5e-4))
            for block in range(k):
                labels[j, block] = min(options, key=lambda option, b=block: option[1][b])[0]
        if sweep == sweeps - 2:
            add_cost = np.zeros((m, m))
            sets = usage(labels, m) > 0
            for i1, i2 in itertools.combinations(range(m), 2):
                if (sets[i1] == sets[i2]).all() and sets[i1].sum() > 1:
                    inputs = np.flatnonzero(sets[i1])
                    add_cost[i1, inputs[0]] = 1.0
                    add_cost[i2, inputs[1]] = 1.0
    return labels


def pairs(first: torch.Tensor, second: torch.Tensor) -> np.ndarray:
    """mixlab's labels ``(m, K)`` x 2 as ``(m, K, 2)``."""
    return torch.stack([first, second], -1).numpy()


# ------------------------------------------------------------------ the objective


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_energy_is_the_objective_written_by_hand(kind: str) -> None:
    rng = np.random.default_rng(0)
    m, rows, cols = 4, 2, 3
    saliency = rng.gamma(0.5, size=(m, rows * cols))
    saliency /= saliency.sum(1, keepdims=True)
    prior = rng.dirichlet(np.full(m, 2.0))
    distance = rng.random((m, m))
    compat = 0.7 * np.eye(m) + 0.3 * (distance + distance.T) / (distance + distance.T).sum() * m
    weights = {"beta": 0.5, "gamma": 1.5, "eta": 0.2, "tau": 0.4}
    problem = CoMixupProblem.build(
        torch.tensor(saliency, dtype=torch.float32),
        (rows, cols),
        partition=m,
        prior=torch.tensor(prior, dtype=torch.float32)[None],
        compat=torch.tensor(compat, dtype=torch.float32)[None],
        threshold=kind,
        **weights,
    )
    for _ in range(20):
        first = torch.from_numpy(rng.integers(0, m, (m, rows * cols)))
        second = torch.where(
            torch.from_numpy(rng.random((m, rows * cols)) < 0.3),
            torch.from_numpy(rng.integers(0, m, (m, rows * cols))),
            first,
        )
        first, second = torch.minimum(first, second), torch.maximum(first, second)
        expected = energy(pairs(first, second), saliency, prior, compat, rows, cols, kind=kind, **weights)
        assert float(problem.energy(first[None], second[None])[0]) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_the_mixer_finds_the_brute_force_minimiser_and_labels_by_block_share() -> None:
    """3 inputs, a 2 x 2 grid, the authors' weights (no prior, A = I): every joint labelling is scored.

    Alone, each output would take input 2's salient block and input 1's other three
    (the collage). With the diversity term input 1 cannot be reused by a third output
    (the others' 6 blocks are past tau K = 3.32), so one output takes input 0's blocks.
    """
    saliency = np.array([[0.31, 0.39, 0.27, 0.03], [0.02, 0.48, 0.33, 0.17], [0.77, 0.12, 0.06, 0.06]])
    saliency /= saliency.sum(1, keepdims=True)
    weights = {"beta": 0.32, "gamma": 1.0, "eta": 0.0, "tau": 0.83}
    joint = np.array(list(itertools.product(range(3), repeat=12))).reshape(-1, 3, 4)
    blocks = np.arange(4)
    unary = -saliency[joint, blocks].sum((1, 2))
    cut = sum((joint[..., s] != joint[..., t]).sum(1) for s, t in grid_edges(2, 2))
    counts = np.stack([(joint == i).sum(2) for i in range(3)], -1).astype(float)
    others = counts.sum(1, keepdims=True) - counts
    diversity = (counts * others * (others > weights["tau"] * 4)).sum((1, 2))
    energies = unary + weights["beta"] / 4 * cut + weights["gamma"] / 4 * diversity
    best = joint[energies.argmin()]
    minimisers = {tuple(sorted(map(tuple, z.tolist()))) for z in joint[np.isclose(energies, energies.min())]}
    assert minimisers == {((2, 0, 0, 0), (2, 1, 1, 1), (2, 1, 1, 1))}  # unique up to the order of the outputs
    # Spot-check the vectorised brute force against the loop version of the objective.
    assert energies.min() == pytest.approx(
        energy(np.stack([best, best], -1), saliency, np.ones(3), np.eye(3), 2, 2, kind="hard", **weights), abs=1e-9
    )

    x = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()  # image i is the constant i
    pixel_saliency = torch.tensor(saliency, dtype=torch.float32).view(3, 2, 2).repeat_interleave(2, 1)
    pixel_saliency = pixel_saliency.repeat_interleave(2, 2) / 4
    mixer = CoMixup(grid=2, partition=3, omega=0.0, half_blocks=False, resolve=False, clean_weight=0.0, **weights)
    mb = mixer(x, torch.tensor([3, 5, 7]), torch.Generator().manual_seed(0), context={"saliency": pixel_saliency})
    found = mb.inputs[:, 0, ::2, ::2].reshape(3, 4).long()
    assert sorted(map(tuple, found.tolist())) == sorted(map(tuple, best.tolist()))
    # The label of each output is the share of each input's blocks in it (mix_input, sc=None).
    expected = torch.zeros(3, 10)
    for j, row in enumerate(found.tolist()):
        for source in row:
            expected[j, [3, 5, 7][source]] += 0.25
    torch.testing.assert_close(mb.soft_targets(10), expected)


# ------------------------------------------------------------------ the algorithm


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_sweeps_are_the_codes_output_by_output_modular_updates(kind: str) -> None:
    """``get_onehot_matrix`` step by step, with ``beta = 0`` so that each output's graph cut is exact by hand:
    the order of updates, ``2 gamma/K phi(o_{-j})``, ``tau K``, the compatibility, the prior, half blocks from
    the second sweep, and ``set_resolve`` after the second-to-last sweep."""
    rng = np.random.default_rng(1)
    m, rows, cols = 5, 2, 3
    for _ in range(6):
        saliency = rng.gamma(0.5, size=(m, rows * cols))
        saliency /= saliency.sum(1, keepdims=True)
        prior = rng.dirichlet(np.full(m, 2.0))
        distance = rng.random((m, m))
        compat = 0.8 * np.eye(m) + 0.2 * (distance + distance.T) / (distance + distance.T).sum() * m
        weights = {"gamma": float(rng.choice([0.5, 1.0, 3.0])), "eta": 0.3, "tau": float(rng.uniform(0.3, 0.9))}
        start = rng.integers(0, m, (m, rows * cols))
        problem = CoMixupProblem.build(
            torch.tensor(saliency, dtype=torch.float32),
            (rows, cols),
            partition=m,
            prior=torch.tensor(prior, dtype=torch.float32)[None],
            compat=torch.tensor(compat, dtype=torch.float32)[None],
            beta=0.0,
            threshold=kind,
            **weights,
        )
        first, second = solve_comixup(problem, torch.from_numpy(start)[None], sweeps=4)
        expected = emulate_without_smoothness(saliency, prior, compat, start, kind=kind, sweeps=4, **weights)
        np.testing.assert_array_equal(pairs(first[0], second[0]), expected)


def test_each_outputs_labelling_is_near_its_exact_optimum() -> None:
    """The code solves each output's Potts problem with gco's alpha-beta swap; mixlab with ICM from each block's
    cheapest label. On random 2 x 2 problems with 3 inputs (the authors' weights), against enumeration."""
    rng = np.random.default_rng(2)
    edges = grid_edges(2, 2)
    gaps = []
    for _ in range(200):
        saliency = rng.gamma(0.5, size=(3, 4))
        saliency /= saliency.sum(1, keepdims=True)
        problem = CoMixupProblem.build(torch.tensor(saliency, dtype=torch.float32), (2, 2), partition=3, gamma=0.0)
        start = torch.from_numpy(rng.integers(0, 3, (1, 3, 4)))
        first, _ = solve_comixup(problem, start, sweeps=1, half_blocks=False)
        cost = problem.unary[0].double().numpy()  # no diversity: each output solves the same problem
        best = min(
            sum(cost[z[b], b] for b in range(4)) + 0.08 * sum(z[s] != z[t] for s, t in edges)
            for z in itertools.product(range(3), repeat=4)
        )
        z = first[0, 0].tolist()
        gaps.append(sum(cost[z[b], b] for b in range(4)) + 0.08 * sum(z[s] != z[t] for s, t in edges) - best)
    gaps = np.array(gaps)
    assert (gaps >= -1e-6).all()
    assert (gaps < 1e-6).mean() >= 0.93 and gaps.mean() < 5e-3  # measured: exact on 94.5 %, mean gap 0.002


def test_half_blocks_follow_graphcut_wrapper() -> None:
    """From the second sweep: two inputs in use give their 50/50 label; three or more, the 50/50 labels of
    each pair of the three most used; a 50/50 label costs the mean of its inputs' costs minus 5e-4, and 1/4
    of the smoothness next to one of its inputs (``graphcut_wrapper``, ``graphcut_multi``)."""
    from mixlab.methods.comixup import _HalfLabels

    m, k, beta_k = 4, 3, 0.1
    costs = torch.randn(3, m, k, generator=torch.Generator().manual_seed(0))
    counts = torch.tensor([[3.0, 1.0, 0.0, 0.0], [1.0, 2.0, 0.5, 4.0], [4.0, 0.0, 0.0, 0.0]])
    whole = torch.arange(m).expand(3, m)
    apart = (beta_k * (1 - torch.eye(m))).expand(3, m, m)
    (first, second, label_costs), between = _HalfLabels(m, beta_k, torch.device("cpu"))(costs, counts, whole, apart)
    allowed = label_costs[:, m:, 0] < 1e3
    halves = [
        {(int(a), int(b)) for a, b, ok in zip(first[p, m:], second[p, m:], allowed[p], strict=True) if ok}
        for p in range(3)
    ]
    assert halves == [{(0, 1)}, {(1, 3), (0, 3), (0, 1)}, set()]
    for p in range(2):
        for h in range(3):
            if allowed[p, h]:
                a, b = int(first[p, m + h]), int(second[p, m + h])
                torch.testing.assert_close(label_costs[p, m + h], 0.5 * (costs[p, a] + costs[p, b]) - 5e-4)
                expected = [beta_k * (0.25 if i in (a, b) else 1.0) for i in range(m)]
                torch.testing.assert_close(between[p, m + h, :m], torch.tensor(expected))
                torch.testing.assert_close(between[p, :m, m + h], torch.tensor(expected))
    torch.testing.assert_close(between[:, :m, :m], apart)


def test_resolve_follows_resolve_label() -> None:
    """``resolve_label``: for outputs ``i1 < i2`` using exactly the same (two or more) inputs, the first pays on
    its first input and the second on its second; single-input outputs are left alone."""
    from mixlab.methods.comixup import _resolve_cost

    used = torch.tensor(
        [
            [1, 1, 0, 0, 1],  # same as output 2
            [0, 0, 1, 0, 0],  # same as output 4, but a single input
            [1, 1, 0, 0, 1],
            [0, 1, 1, 0, 0],
            [0, 0, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    expected = np.zeros((5, 5))
    for i1, i2 in itertools.combinations(range(5), 2):
        if torch.equal(used[i1], used[i2]) and int(used[i1].sum()) > 1:
            inputs = np.flatnonzero(used[i1].numpy())
            expected[i1, inputs[0]] = expected[i2, inputs[1]] = 1.0
    assert expected[0, 0] == 1 and expected[2, 1] == 1 and expected.sum() == 2
    cost = _resolve_cost(used[None], torch.ones(1, 5, dtype=torch.bool))[0]
    np.testing.assert_array_equal(cost.numpy(), expected)


# ------------------------------------------------------------------ inputs, labels and losses


def test_compatibility_is_the_l1_distance_of_saliency_peaks_scaled_per_partition() -> None:
    """``main.py``: peaks of the saliency averaged over a window, L1 distances; ``mixup.py``: ``A_dist / sum * m``."""
    saliency = torch.zeros(4, 8, 8)
    peaks = [(1, 1), (6, 2), (3, 5), (6, 6)]
    for i, (r, c) in enumerate(peaks):
        saliency[i, r, c] = 1.0
    compat = compatibility_matrix(saliency, (4, 4), 0.25, parts=2)  # two partitions of two, 2 x 2-pixel windows
    for part in range(2):
        (r0, c0), (r1, c1) = peaks[2 * part], peaks[2 * part + 1]
        # a window of 2 x 2 pixels at stride 1: the top-left corner of the first window holding the peak
        d = abs(max(r0 - 1, 0) - max(r1 - 1, 0)) + abs(max(c0 - 1, 0) - max(c1 - 1, 0))
        scaled = np.array([[0.0, d], [d, 0.0]]) / (2 * d) * 2
        torch.testing.assert_close(compat[part], torch.tensor(0.75 * np.eye(2) + 0.25 * scaled, dtype=torch.float32))


def test_label_weights_and_outputs_follow_mix_input() -> None:
    """``mix_input``: the output is ``sum_i mask_i * x_i`` and the label the share of each input's blocks
    (a 50/50 block gives 1/2 to each); mixlab lists the output's own input first."""
    x = torch.randn(3, 2, 4, 6)
    first = torch.tensor([[[0, 0, 1, 2, 2, 2], [1, 1, 1, 1, 1, 1], [0, 1, 2, 0, 1, 2]]])
    second = torch.tensor([[[0, 2, 1, 2, 2, 2], [1, 1, 1, 1, 1, 2], [0, 1, 2, 0, 1, 2]]])
    params = assignment_params(first, second, (2, 3), (4, 6), 3, x.dtype)
    mb = CoMixup(partition=3, clean_weight=0.0).apply(x, torch.tensor([4, 6, 8]), params)
    masks = torch.zeros(3, 3, 2, 3)  # (output, input, grid)
    for j in range(3):
        for block in range(6):
            masks[j, first[0, j, block], block // 3, block % 3] += 0.5
            masks[j, second[0, j, block], block // 3, block % 3] += 0.5
    pixel_masks = masks.repeat_interleave(2, 2).repeat_interleave(2, 3)  # 2 x 2-pixel blocks
    torch.testing.assert_close(mb.inputs, (pixel_masks.unsqueeze(2) * x.unsqueeze(0)).sum(1))
    share = masks.flatten(2).mean(2)  # (output, input)
    expected = torch.zeros(3, 10)
    expected[:, [4, 6, 8]] = share
    torch.testing.assert_close(mb.soft_targets(10), expected)
    assert mb.sources[:, 0].tolist() == [0, 1, 2] and mb.lam.tolist() == share.diagonal().tolist()
    assert mb.sources[0].tolist() == [0, 2, 1]  # then by decreasing weight


def test_clean_loss_has_the_scale_of_main_py() -> None:
    """``main.py`` back-propagates ``mean(2 * clean_lam * CE(model(x), y) / num_classes)`` next to
    ``BCELoss(softmax(model(x_mix)), target)``; mixlab's term is that value, from the saliency pass in train mode."""
    torch.manual_seed(0)
    net = create_model("cnn_small", num_classes=7, in_channels=1, input_size=8)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    mixer = CoMixup(partition=3, clean_weight=0.5)
    context = MixContext(mixer, net)(x, y)
    mb = mixer(x, y, torch.Generator().manual_seed(1), context=context)
    term = mixer.loss_terms(mb, mb.forward(net))["clean"]
    net.train()
    expected = (2 * 0.5 * torch.nn.functional.cross_entropy(net(x), y, reduction="none") / 7).mean()
    torch.testing.assert_close(term, expected)
    term.backward()  # the graph of the saliency pass was kept
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_prior_is_minus_eta_over_k_log_of_the_dirichlet_draw() -> None:
    saliency = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    prior = torch.tensor([[0.7, 0.3]])
    problem = CoMixupProblem.build(saliency, (2, 2), partition=2, prior=prior, eta=0.05)
    expected = -saliency - 0.05 / 4 * torch.log(prior[0] + 1e-8).unsqueeze(1)
    torch.testing.assert_close(problem.unary[0], expected)
    # The mixer draws one Dirichlet(alpha) prior over the inputs of each partition (the last one shorter here).
    draws = CoMixup(partition=20)._prior(np.array([20, 20, 5]), 20, np.random.default_rng(0), 1.0)
    np.testing.assert_allclose(draws[:, :5].sum(1) + draws[:, 5:].sum(1) * [1, 1, 0], 1.0, rtol=1e-5)
    assert (draws > 0).all() and (draws[2, 5:] == 1.0).all() and not np.allclose(draws[0], draws[1])
    many = CoMixup(partition=20, alpha=2.0)._prior(np.full(4000, 3), 3, np.random.default_rng(1), 1.0)
    np.testing.assert_allclose(many.var(0), 2.0 * 4.0 / (36.0 * 7.0), rtol=0.1)  # Dirichlet(2, 2, 2) variance


def test_defaults_are_the_published_cifar_command() -> None:
    """README / checkpoint log: m_block_num 4, m_part 20, m_beta 0.32, m_gamma 1, m_eta 0.05, m_thres 0.83 (hard),
    m_omega 0.001, mixup_alpha 2, m_niter 4, set_resolve True, clean_lam 1."""
    mixer = CoMixup()
    assert (mixer.grid, mixer.partition, mixer.beta, mixer.gamma, mixer.eta) == (4, 20, 0.32, 1.0, 0.05)
    assert (mixer.tau, mixer.threshold, mixer.omega, mixer.lam_sampler.alpha) == (0.83, "hard", 0.001, 2.0)
    assert (mixer.sweeps, mixer.resolve, mixer.half_blocks, mixer.clean_weight) == (4, True, True, 1.0)
    assert mixer.needs.clean_loss and mixer.num_sources == 20
