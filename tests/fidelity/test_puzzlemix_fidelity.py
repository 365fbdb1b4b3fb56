"""PuzzleMix against its reference, computed by hand on small fixed tensors.

Reference: Kim, Choo and Song, ICML 2020, arXiv 2009.06962, and the authors' code
(snu-mllab/PuzzleMix ``mixup.py``: ``mixup_graph``, ``graphcut_multi``,
``neigh_penalty``, ``mask_transport``, ``cost_matrix``; ``main.py``; the README's
CIFAR-100 command). Each expected value below is written from those equations,
not taken from mixlab.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mixlab.batch import MixedBatch
from mixlab.methods.blocks import block_saliency
from mixlab.methods.puzzle import (
    BoundaryCosts,
    PuzzleMix,
    block_grid,
    boundary_costs,
    cell_pixels,
    label_prior,
    mask_energy,
    mask_energy_terms,
    puzzle_energy,
    transport_cells,
    transport_costs,
    transport_plan,
)

CPU = torch.device("cpu")


def test_defaults_are_the_authors_cifar_command() -> None:
    """README: --mixup_alpha 1.0 --n_labels 3 --eta 0.2 --beta 1.2 --gamma 0.5 --neigh_size 4 --transport True
    --t_size 4 --t_eps 0.8; main.py: clean_lam 0, adv_p 0, block_num = 2 ** randint(1, 5)."""
    mixer = PuzzleMix()
    assert mixer.lam_sampler.alpha == 1.0 and mixer.lam_mode == "batch"
    assert (mixer.beta, mixer.gamma, mixer.eta, mixer.n_labels) == (1.2, 0.5, 0.2, 3)
    assert (mixer.neighbour_size, mixer.transport, mixer.transport_size, mixer.transport_weight) == (4, True, 4, 0.8)
    assert mixer.blocks == (2, 4, 8, 16) and mixer.clean_weight == 0.0


# ------------------------------------------------------------------ the energy


def test_smoothness_is_beta_over_16k_per_edge() -> None:
    """``beta = beta / block_num / 16``: a cut edge costs β/(16k); a straight cut across the image β/16 on any k."""
    for k in (2, 4, 8):
        zero = torch.zeros(1, k, k)
        left = torch.zeros(1, k, k)
        left[..., : k // 2] = 1.0
        cut = puzzle_energy(left, zero, zero, 0.5, beta=1.2, eta=0.0, n_labels=2)
        torch.testing.assert_close(cut, torch.tensor([k * 1.2 / (16 * k)]))  # k cut edges
        terms = mask_energy_terms(zero, zero, 0.5, beta=1.2, eta=0.0, n_labels=3)
        assert torch.allclose(terms.right, torch.tensor(1.2 / (16 * k))) and torch.allclose(
            terms.down, terms.right[:, :1, :1]
        )
    # with three labels the pairwise cost is (i - j)² / (n_labels - 1)²: a step of 1/2 costs a quarter
    zero = torch.zeros(1, 2, 2)
    half = torch.tensor([[[1.0, 0.5], [1.0, 0.5]]])
    torch.testing.assert_close(
        puzzle_energy(half, zero, zero, 0.5, beta=1.2, eta=0.0), torch.tensor([2 * 0.25 * 1.2 / 32])
    )


def test_label_prior_is_the_binomial_of_the_mask_value() -> None:
    """``graphcut_multi``: -log(P + eps) with P = α, 1 - α (2 labels); α², 2α(1-α), (1-α)² (3);
    α³, 3α²(1-α), 3α(1-α)², (1-α)³ (4); the authors' label 0 is mask 1."""
    lam = 0.3
    expected = {
        2: [1 - lam, lam],
        3: [(1 - lam) ** 2, 2 * lam * (1 - lam), lam**2],
        4: [(1 - lam) ** 3, 3 * lam * (1 - lam) ** 2, 3 * lam**2 * (1 - lam), lam**3],
    }  # indexed by the mask value m = 0, ..., 1 (the weight of x_i)
    for n_labels, probs in expected.items():
        hand = torch.tensor([[-math.log(p + 1e-8) for p in probs]])
        torch.testing.assert_close(label_prior(lam, n_labels), hand)


def test_three_label_unary_costs_by_hand() -> None:
    """Unary for mask value m: m s_b + (1 - m) s_a (the saliency lost) + η / k² (-log P(m))."""
    sa = torch.tensor([[[0.4, 0.1], [0.3, 0.2]]])
    sb = torch.tensor([[[0.05, 0.15], [0.5, 0.3]]])
    lam, eta = 0.3, 0.2
    probs = [(1 - lam) ** 2, 2 * lam * (1 - lam), lam**2]
    terms = mask_energy_terms(sa, sb, lam, beta=1.2, eta=eta, n_labels=3)
    for r, c, j in itertools.product(range(2), range(2), range(3)):
        m = j / 2
        hand = m * sb[0, r, c] + (1 - m) * sa[0, r, c] + eta / 4 * -math.log(probs[j] + 1e-8)
        torch.testing.assert_close(terms.unary[0, r, c, j], torch.as_tensor(hand, dtype=torch.float32))
    # a whole 2x2 mask [[1, 1/2], [0, 0]]: unaries plus (1/2)² β/32 on the two edges next to the 1/2 block
    mask = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    unary = sum(
        float(mask[0, r, c] * sb[0, r, c] + (1 - mask[0, r, c]) * sa[0, r, c])
        + eta / 4 * -math.log(probs[int(mask[0, r, c] * 2)] + 1e-8)
        for r, c in itertools.product(range(2), range(2))
    )
    pairwise = 1.2 / 32 * ((1 - 0.5) ** 2 + (1 - 0) ** 2 + (0.5 - 0) ** 2 + 0.0)  # right r0, down c0, down c1, right r1
    torch.testing.assert_close(puzzle_energy(mask, sa, sb, lam, beta=1.2, eta=eta), torch.tensor([unary + pairwise]))


def test_local_statistics_split_as_the_authors_do() -> None:
    """Edge (p, q), labels (u, v), φ scaled by β'γ: p gets (φ(u,0)+φ(u,1))/2, q (φ(0,v)+φ(1,v))/2, and
    w (m_p - m_q)² with w = (φ(1,0)+φ(0,1)-φ(0,0)-φ(1,1))/2 added to β'. On binary labels: φ(u, v) + const.
    """
    g = torch.Generator().manual_seed(0)
    zero = torch.zeros(1, 1, 2)  # one row of two blocks: a single right edge
    phi = torch.rand(1, 2, 2, 1, 1, generator=g)
    boundary = BoundaryCosts(phi, torch.zeros(1, 2, 2, 0, 2))
    beta, gamma = 1.2, 0.5
    scale = beta / (16 * 2) * gamma  # k = max(1, 2) blocks per side
    f = phi[0, :, :, 0, 0] * scale
    w = (f[1, 0] + f[0, 1] - f[0, 0] - f[1, 1]) / 2
    with_stats = mask_energy_terms(zero, zero, 0.5, beta=beta, gamma=gamma, eta=0.0, n_labels=3, boundary=boundary)
    for i, j in itertools.product(range(3), range(3)):
        mp, mq = i / 2, j / 2
        hand = (
            mp * (f[1, 0] + f[1, 1]) / 2
            + (1 - mp) * (f[0, 0] + f[0, 1]) / 2
            + mq * (f[0, 1] + f[1, 1]) / 2
            + (1 - mq) * (f[0, 0] + f[1, 0]) / 2
            + (beta / 32 + w) * (mp - mq) ** 2
        )
        labels = torch.tensor([[[i, j]]])
        torch.testing.assert_close(mask_energy(labels, with_stats), hand.view(1))
        if mp in (0, 1) and mq in (0, 1):  # binary: exactly φ(u, v) plus the constant (φ(0,1) + φ(1,0)) / 2
            binary = f[int(mp), int(mq)] + (f[0, 1] + f[1, 0]) / 2 + beta / 32 * (mp - mq) ** 2
            torch.testing.assert_close(mask_energy(labels, with_stats), binary.view(1))


def test_boundary_costs_are_the_authors_neigh_penalty() -> None:
    """Average-pool the image by ``neigh_size``; across each block boundary compare the last pooled line of one block
    (source u) with the first of the next (source v): |difference|, mean over channels, mean along the block's edge."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 8, generator=g)
    perm = torch.tensor([1, 0])
    costs = boundary_costs(x, perm, block_grid(8, 8, 2, CPU), cell_size=2)  # 4-pixel blocks, 2-pixel cells
    pooled = F.avg_pool2d(x, 2)  # (2, 3, 4, 4): two cells per block
    for n, u, v, c in itertools.product(range(2), range(2), range(2), range(2)):
        first = pooled[n if u else perm[n]]  # source 1 is x_i, 0 its partner
        second = pooled[n if v else perm[n]]
        cols = slice(2 * c, 2 * c + 2)
        down = (first[:, 1, cols] - second[:, 2, cols]).abs().mean(0).mean()  # pooled rows 1 | 2: the boundary
        right = (first[:, cols, 1] - second[:, cols, 2]).abs().mean(0).mean()
        torch.testing.assert_close(costs.down[n, u, v, 0, c], down)
        torch.testing.assert_close(costs.right[n, u, v, c, 0], right)
    # the authors compare un-normalised pixels x * std + mean: only std survives a difference
    std = torch.tensor([0.25, 0.5, 2.0])
    scaled = boundary_costs(x, perm, block_grid(8, 8, 2, CPU), cell_size=2, input_std=std)
    expected = boundary_costs(x * std.view(1, 3, 1, 1), perm, block_grid(8, 8, 2, CPU), cell_size=2)
    torch.testing.assert_close(scaled.down, expected.down)
    # neigh_size = min(neigh_size, block_size): 2-pixel blocks compare single 2-pixel cells even with cell_size 4
    small = boundary_costs(x, perm, block_grid(8, 8, 4, CPU), cell_size=4)
    hand = (pooled[0, :, 0, 0] - pooled[1, :, 1, 0]).abs().mean()  # sample 0: x_i (u=1) over its partner (v=0)
    torch.testing.assert_close(small.down[0, 1, 0, 0, 0], hand)


def test_block_saliency_is_the_normalised_average_pool() -> None:
    """``grad1_pool = avg_pool2d(grad, block_size)`` divided by its sum, on sizes the blocks divide."""
    saliency = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    pooled = F.avg_pool2d(saliency.unsqueeze(1), 4).squeeze(1)
    torch.testing.assert_close(block_saliency(saliency, (4, 4)), pooled / pooled.sum((1, 2), keepdim=True))


# ------------------------------------------------------------------ transport


def test_transport_cost_matrix_by_hand() -> None:
    """``cost_matrix``: squared distance between cell positions divided by (width - 1)²."""
    cost, blocked = transport_costs(block_grid(12, 12, 3, CPU))
    positions = [(r, c) for r in range(3) for c in range(3)]
    hand = torch.tensor([[((a - c) ** 2 + (b - d) ** 2) / 4 for c, d in positions] for a, b in positions])
    torch.testing.assert_close(cost, hand)
    assert blocked is None, "one cell shape: no move is blocked"


def test_transport_grid_is_t_size_pixels_never_larger_than_the_blocks() -> None:
    """``t_size = min(t_size, block_size)``, ``t_block_num = width // t_size``: 8x8 cells on CIFAR, 16x16 for k=16."""
    assert [transport_cells(32, 32, (k, k), 4) for k in (2, 4, 8, 16)] == [(8, 8), (8, 8), (8, 8), (16, 16)]
    assert transport_cells(64, 64, (4, 4), 4) == (16, 16)  # Tiny-ImageNet
    assert transport_cells(32, 32, (4, 4), None) == (4, 4)  # t_size = -1: the mask's blocks


def _authors_transport(saliency: torch.Tensor, shown: torch.Tensor, cost: torch.Tensor, eps: float, n_iter: int):
    """Algorithm 1 as the authors' ``mask_transport`` states it, with dense plans: returns the winning plan."""
    c = eps * cost - saliency.unsqueeze(2) * shown.float().unsqueeze(1)
    plan_win = None
    for _ in range(n_iter):
        row_best = c.argmin(-1)
        plan = torch.zeros_like(c).scatter_(-1, row_best.unsqueeze(-1), 1.0)
        fight = plan * c  # non-choosers count 0
        col_best = fight.argmin(-2)
        plan_win = torch.zeros_like(c).scatter_(-2, col_best.unsqueeze(-2), 1.0) * plan
        c = c + (plan - plan_win)
    return plan_win


def test_transport_tiny_case_by_hand() -> None:
    """2x2 cells, ξ = 0.2, only the top-left shown, the salient content bottom right.

    Costs ``0.2 C - s_i z_j``: row 0 [-0.1, .2, .2, .4], row 3 [-0.5, .2, .2, 0], rows 1, 2 their own cell at 0.
    Round 1: rows 0 and 3 pick cell 0 and 3 wins (-0.5 < -0.1); rows 1 and 2 picked their own hidden cells at cost 0,
    where the non-choosing row 0 also counts 0 and comes first, so they lose too. Round 2: cell 0 still goes to 3; the
    others pick hidden cells at positive or zero cost and win nothing. Only cell 0 (the shown one) is filled: by 3.
    """
    cost, _ = transport_costs(block_grid(2, 2, 2, CPU))
    s = torch.tensor([[0.1, 0.0, 0.0, 0.9]])
    z = torch.tensor([[True, False, False, False]])
    assert transport_plan(s, z, cost, weight=0.2, iterations=2).tolist() == [[3, -1, -1, -1]]
    # with a high cost of moving, nothing moves into the shown cell: it keeps its own content
    assert transport_plan(s, z, cost, weight=2.0, iterations=2)[0, 0].item() == 0


def test_transport_is_the_authors_algorithm_on_random_cases() -> None:
    """Every cell's winner equals that of the dense transcription of ``mask_transport`` (n_iter = cells per side)."""
    g = torch.Generator().manual_seed(3)
    for side in (2, 4, 8):
        cost, _ = transport_costs(block_grid(side * 2, side * 2, side, CPU))
        saliency = torch.rand(64, side * side, generator=g) ** 4
        saliency = saliency / saliency.sum(1, keepdim=True)
        shown = torch.rand(64, side * side, generator=g) < 0.5
        for eps in (0.1, 0.8):
            plan = _authors_transport(saliency, shown, cost, eps, side)
            expected = torch.where(plan.sum(1) > 0, plan.argmax(1), -1)  # the row winning each column, -1 if none
            assert torch.equal(transport_plan(saliency, shown, cost, weight=eps, iterations=side), expected)


def test_moved_cells_carry_their_pixels() -> None:
    """``transport_image``: the content of cell ``plan[j]`` lands in cell ``j``, pixel for pixel."""
    grid = block_grid(4, 4, 2, CPU)  # four 2x2 cells
    image = torch.arange(16.0).view(1, 16)
    moved = image.gather(1, cell_pixels(torch.tensor([[3, -1, 0, 2]]), grid)).view(4, 4)
    expected = torch.tensor(
        [[10.0, 11.0, 2.0, 3.0], [14.0, 15.0, 6.0, 7.0], [0.0, 1.0, 8.0, 9.0], [4.0, 5.0, 12.0, 13.0]]
    )  # cell 0 <- cell 3, cell 1 keeps its own, cell 2 <- cell 0, cell 3 <- cell 2
    assert torch.equal(moved, expected)


# ------------------------------------------------------------------ the clean loss


@pytest.mark.parametrize("classes", [10, 100])
def test_clean_loss_scale_is_twice_clean_lam_over_num_classes(classes: int) -> None:
    """``main.py``: ``loss_batch = 2 * clean_lam * criterion_batch(output, target) / num_classes``, then its mean."""
    mb = MixedBatch.unmixed(torch.zeros(2, 1), torch.tensor([0, 1]))
    mb.aux["clean_loss"] = torch.tensor(2.5)
    terms = PuzzleMix(clean_weight=1.0).loss_terms(mb, torch.zeros(2, classes))
    torch.testing.assert_close(terms["clean"], torch.tensor(2 * 1.0 * 2.5 / classes))


def test_mixing_after_the_mask_is_the_authors_transport_and_blend() -> None:
    """Given the block mask, the output is ``mask * T(x) + (1 - mask) * T(x[perm])`` as in ``mixup_graph``: the mask
    nearest-upsampled to 4-pixel cells, each source's cell saliency ``avg_pool(grad, 4)`` normalised, the plans of
    ``mask_transport(mask, ·)`` and ``mask_transport(1 - mask, ·)``, and ``transport_image`` moving whole cells."""
    g = torch.Generator().manual_seed(4)
    n, size = 6, 32
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.arange(n)
    # saliency constant on 4-pixel cells and peaked, so that the mask takes all three labels and cells move
    saliency = F.interpolate(torch.rand(n, 1, 8, 8, generator=g) ** 4, size=size, mode="nearest").squeeze(1)
    mixer = PuzzleMix(blocks=(4,), lam=0.4)  # 8-pixel blocks, 4-pixel transport cells: an 8x8 cell grid
    params = mixer.sample(x, y, g, context={"saliency": saliency})
    mb = mixer.apply(x, y, params)
    perm = params.perm
    cell_mask = F.interpolate(params.extra["block_mask"].unsqueeze(1), size=8, mode="nearest").flatten(1)
    pooled = F.avg_pool2d(saliency.unsqueeze(1), 4).flatten(1)
    pooled = pooled / pooled.sum(1, keepdim=True)
    cost, _ = transport_costs(block_grid(size, size, 8, CPU))
    plan_a = _authors_transport(pooled, cell_mask > 0, cost, 0.8, 8)
    plan_b = _authors_transport(pooled[perm], (1 - cell_mask) > 0, cost, 0.8, 8)

    def transport_image(images: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        cells = images.unfold(2, 4, 4).unfold(3, 4, 4).reshape(n, 3, 64, 4, 4)  # row-major 4x4-pixel cells
        moved = torch.einsum("nij,ncipq->ncjpq", plan, cells).reshape(n, 3, 8, 8, 4, 4)
        return moved.permute(0, 1, 2, 4, 3, 5).reshape(n, 3, size, size)

    shown_moves = (plan_a.argmax(1) != torch.arange(64)) & (cell_mask > 0)
    labels = params.extra["block_mask"]
    assert bool(shown_moves.any()) and all(bool((labels == v).any()) for v in (0.0, 0.5, 1.0)), "moves, three labels"
    mask = F.interpolate(params.extra["block_mask"].unsqueeze(1), size=size, mode="nearest")
    expected = mask * transport_image(x, plan_a) + (1 - mask) * transport_image(x[perm], plan_b)
    torch.testing.assert_close(mb.inputs, expected)
    torch.testing.assert_close(mb.lam, mask.flatten(1).mean(1))
