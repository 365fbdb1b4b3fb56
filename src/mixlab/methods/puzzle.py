"""PuzzleMix: a saliency-guided block mask found by energy minimisation, and block transport.

Kim, Choo and Song, "Puzzle Mix: Exploiting Saliency and Local Statistics for
Optimal Mixup", ICML 2020, arXiv 2009.06962.

Each batch draws a ``k x k`` block grid. The binary mask on the grid (1: the
block comes from ``x_i``, 0: from its partner ``x_j``) minimises the paper's
energy (:func:`puzzle_energy`): the saliency lost, a smoothness cost on
neighbouring blocks that disagree (``beta``), a local-statistics cost on the
pixels either side of each mask boundary (``gamma``) and a Bernoulli(λ) label
prior (``eta``). Then each source's salient blocks are moved into the blocks
its mask keeps (:func:`transport_blocks`). Everything is batched on the
device; no graph-cut library is used.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice, check_int, check_non_negative
from mixlab.methods.base import Mixer, MixParams, label_weight, ratios_to_device
from mixlab.methods.context import SALIENCY, MixerNeeds

#: Pairwise weights are divided by ``EDGE_SCALE * k``: a mask boundary across the whole
#: image then costs ``beta / EDGE_SCALE`` of the image's total saliency on any grid. Our
#: calibration: with the paper's weights the mask's mean then follows the drawn λ (about
#: 0.13 / 0.31 / 0.69 for λ = 0.1 / 0.3 / 0.7 on Fashion-MNIST with 8x8 blocks), where
#: 16 made most masks whole images whenever λ was far from 1/2.
EDGE_SCALE = 64.0
#: λ is clipped to ``[LAM_EPS, 1 - LAM_EPS]`` inside the log prior.
LAM_EPS = 1e-4
#: ``solver="auto"`` is exact (row-by-row dynamic programming, 2**k row states) up to this many blocks per side.
EXACT_MAX_SIDE = 5
#: The exact solver refuses larger grids (its tables grow as 4**k).
EXACT_LIMIT_SIDE = 10
#: Checkerboard ICM sweeps after the coarse starts (on 8x8 grids more sweeps change almost nothing).
ICM_SWEEPS = 3
SOLVERS = ("auto", "exact", "icm")
MIN_BLOCKS, MAX_BLOCKS = 2, 64


# ------------------------------------------------------------------ the block grid


@dataclass(frozen=True)
class BlockGrid:
    """How a ``k x k`` block grid partitions an ``H x W`` image: pixel row ``r`` is in block row ``⌊r k / H⌋``.

    This is nearest-neighbour upsampling of the block mask, computed in
    integers so that the mask covers the image exactly; blocks differ by at
    most one pixel per side when ``k`` does not divide the size.

    Attributes:
        size: ``k``, the blocks per side.
        row_block: ``(H,)`` long, the block row of each pixel row (``col_block`` likewise, ``(W,)``).
        row_start: ``(k,)`` long, the first pixel row of each block row (``col_start`` likewise).
        area: ``(k, k)`` float32, each block's share of the image's pixels (sums to 1).
        shape_id: ``(k, k)`` long, equal for blocks of equal pixel shape.
        rows_mean: ``(k, H)`` float32, averages pixel rows into block rows (``cols_mean`` ``(k, W)``).

    Example:
        >>> grid = block_grid(7, 7, 2, torch.device("cpu"))
        >>> grid.row_block.tolist(), grid.row_start.tolist()
        ([0, 0, 0, 0, 1, 1, 1], [0, 4])
    """

    size: int
    row_block: Tensor
    col_block: Tensor
    row_start: Tensor
    col_start: Tensor
    area: Tensor
    shape_id: Tensor
    rows_mean: Tensor
    cols_mean: Tensor


@functools.lru_cache(maxsize=64)
def block_grid(height: int, width: int, size: int, device: torch.device) -> BlockGrid:
    """The :class:`BlockGrid` of ``size x size`` blocks over a ``height x width`` image (cached).

    Example:
        >>> block_grid(28, 28, 8, torch.device("cpu")).area.sum().item()
        1.0
    """
    if size > min(height, width):
        raise MixlabValueError(
            f"a {size}x{size} block grid needs an image of at least {size}x{size}; got {height}x{width}"
        )
    rows, row_start, rows_mean, heights = _axis_partition(height, size, device)
    cols, col_start, cols_mean, widths = _axis_partition(width, size, device)
    area = (heights[:, None] * widths[None, :]).to(torch.float32) / (height * width)
    shape_id = heights[:, None] * (width + 1) + widths[None, :]
    return BlockGrid(size, rows, cols, row_start, col_start, area, shape_id, rows_mean, cols_mean)


def _axis_partition(length: int, size: int, device: torch.device) -> tuple[Tensor, ...]:
    """Block index of each position, block starts, averaging matrix and block lengths along one axis."""
    block = torch.arange(length, device=device) * size // length
    lengths = torch.bincount(block, minlength=size)
    start = torch.cumsum(lengths, 0) - lengths
    one_hot = F.one_hot(block, size).T.to(torch.float32)
    return block, start, one_hot / lengths[:, None], lengths


def block_saliency(saliency: Tensor, grid: BlockGrid) -> Tensor:
    """Sum a ``(N, H, W)`` saliency map over each block and normalise each sample to sum 1: ``(N, k, k)``.

    Summing over the exact pixel partition of the mask (rather than averaging
    overlapping pooling windows) makes the unary term equal to the saliency
    the final pixel mask keeps. The paper normalises the saliency per sample
    the same way. A sample with no saliency at all gets zeros.

    Example:
        >>> s = torch.zeros(1, 4, 4); s[0, 0, 0] = 3.0; s[0, 3, 3] = 1.0
        >>> block_saliency(s, block_grid(4, 4, 2, torch.device("cpu")))
        tensor([[[0.7500, 0.0000],
                 [0.0000, 0.2500]]])
    """
    sal = saliency.to(torch.float32)
    rows, cols = (grid.rows_mean > 0).to(torch.float32), (grid.cols_mean > 0).to(torch.float32)  # sums, not means
    sums = rows @ sal @ cols.T
    return sums / sums.sum((1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


class BoundaryCosts(NamedTuple):
    """The local-statistics cost ``φ(u, v)`` of every pair of neighbouring blocks, for each pair of labels.

    ``right[n, u, v, r, c]``: blocks ``(r, c)`` and ``(r, c + 1)`` labelled ``u`` and ``v``;
    ``down[n, u, v, r, c]``: blocks ``(r, c)`` and ``(r + 1, c)``. Label 1 is ``x_i``, 0 its partner.
    """

    right: Tensor
    down: Tensor


def boundary_costs(x: Tensor, perm: Tensor, grid: BlockGrid) -> BoundaryCosts:
    """The paper's local-statistics term: how different the pixels either side of each block boundary would be.

    For neighbouring blocks with labels ``(u, v)`` it is the mean absolute
    difference, over channels and along the shared edge, between the last
    pixel row (or column) of the first block taken from source ``u`` and the
    first one of the second block taken from source ``v``. Natural images are
    smooth, so ``φ(u, u)`` is usually small and a boundary between sources is
    cheaper where the two images match. Kim et al., ICML 2020, arXiv 2009.06962, Sec. 3.

    Args:
        x: ``(N, C, H, W)`` the samples ``x_i`` (label 1).
        perm: ``(N,)`` their partners' indices: ``x[perm]`` is label 0.
        grid: the block grid.

    Example:
        >>> x = torch.zeros(2, 1, 4, 4); x[0, ..., 2:] = 1.0; x[1] = 1.0  # sample 0 has an edge between the block columns
        >>> costs = boundary_costs(x, torch.tensor([1, 0]), block_grid(4, 4, 2, torch.device("cpu")))
        >>> costs.right[0, :, :, 0, 0]  # [u, v]: 0 is the all-ones partner, 1 is x[0]
        tensor([[0., 0.],
                [1., 1.]])
    """
    edge_cols, edge_rows = grid.col_start[1:], grid.row_start[1:]
    right = _edge_costs(x, perm, edge_cols - 1, edge_cols, dim=3) @ grid.rows_mean.T  # (N, 2, 2, k-1, k)
    down = _edge_costs(x, perm, edge_rows - 1, edge_rows, dim=2) @ grid.cols_mean.T
    return BoundaryCosts(right.transpose(-1, -2), down)


def _edge_costs(x: Tensor, perm: Tensor, before: Tensor, after: Tensor, dim: int) -> Tensor:
    """``(N, 2, 2, k - 1, L)``: mean |difference| over channels between pixel lines ``before`` and ``after``.

    ``L`` is the length of the lines (``W`` for rows, ``dim=2``; ``H`` for columns, ``dim=3``).
    """
    lines = x.index_select(dim, torch.cat([before, after])).to(torch.float32)  # (N, C, ..., 2(k-1), ...)
    sources = torch.stack([lines.index_select(0, perm), lines], dim=1)  # label 0 = partner, label 1 = x
    first, second = sources.chunk(2, dim=dim + 1)
    diff = (first.unsqueeze(2) - second.unsqueeze(1)).abs().mean(3)  # (N, u, v, H or k-1, k-1 or W)
    return diff if dim == 2 else diff.transpose(-1, -2)


# ------------------------------------------------------------------ the energy


def puzzle_energy(
    mask: Tensor,
    saliency_a: Tensor,
    saliency_b: Tensor,
    lam: Tensor | float,
    *,
    beta: float,
    gamma: float = 0.0,
    eta: float,
    area: Tensor | None = None,
    boundary: BoundaryCosts | None = None,
) -> Tensor:
    """The PuzzleMix energy of binary block masks (1: the block comes from ``x_i``), ``(..., N)``.

    With ``k`` blocks per side, edges ``p ~ q`` between 4-neighbours and ``w = 1 / (64 k)``::

        E(m) = - Σ_p [m_p s_a(p) + (1 - m_p) s_b(p)]            saliency kept (unary)
               + β w Σ_{p~q} [m_p != m_q]                       label smoothness
               + γ w Σ_{p~q} φ_pq(m_p, m_q)                     local statistics (``boundary``)
               - η Σ_p area_p log(λ^{m_p} (1 - λ)^{1 - m_p})    Bernoulli(λ) label prior

    The prior favours ``x_i``'s blocks when ``λ > 1/2``; λ is clipped to
    ``[1e-4, 1 - 1e-4]``. Kim et al., ICML 2020, arXiv 2009.06962, Sec. 3-4
    (the paper's multi-label energy with two labels).

    Args:
        mask: ``(..., N, k, k)`` binary masks (any leading dims, e.g. every mask of a small grid).
        saliency_a: ``(N, k, k)`` block saliency of ``x_i`` (see :func:`block_saliency`).
        saliency_b: ``(N, k, k)`` block saliency of the partners.
        lam: the drawn ratio, a float or ``(N,)``.
        beta: label-smoothness weight, >= 0.
        gamma: local-statistics weight, >= 0 (used with ``boundary``).
        eta: label-prior weight, >= 0.
        area: ``(k, k)`` share of the pixels in each block (default ``1 / k²`` each).
        boundary: the local-statistics costs (:func:`boundary_costs`), or ``None``.

    Example:
        >>> sa = torch.tensor([[[0.4, 0.1], [0.0, 0.0]]]); sb = torch.tensor([[[0.0, 0.1], [0.2, 0.2]]])
        >>> m = torch.tensor([[[1, 1], [0, 0]]])
        >>> round(puzzle_energy(m, sa, sb, 0.5, beta=0.0, eta=0.0).item(), 4)  # -(0.4 + 0.1 + 0.2 + 0.2)
        -0.9
    """
    m = mask.to(torch.float32)
    k = m.shape[-1]
    weight = 1.0 / (EDGE_SCALE * k)
    energy = -(m * saliency_a + (1.0 - m) * saliency_b).sum((-1, -2))
    cuts = (m[..., :, 1:] != m[..., :, :-1]).sum((-1, -2)) + (m[..., 1:, :] != m[..., :-1, :]).sum((-1, -2))
    energy = energy + beta * weight * cuts
    if boundary is not None and gamma:
        data = _bilinear(boundary.right, m[..., :, :-1], m[..., :, 1:]) + _bilinear(
            boundary.down, m[..., :-1, :], m[..., 1:, :]
        )
        energy = energy + gamma * weight * data
    log_lam, log_rest = _log_prior(lam, saliency_a.shape[0], m.device)
    shares = torch.full((k, k), 1.0 / k**2, device=m.device) if area is None else area
    prior = (shares * (m * log_lam + (1.0 - m) * log_rest)).sum((-1, -2))
    return energy - eta * prior


def _bilinear(costs: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """``Σ φ[u, v]`` over edges for binary ``u``, ``v`` (exact bilinear interpolation of the 2x2 table)."""
    table = (
        costs[:, 0, 0] * (1 - u) * (1 - v)
        + costs[:, 0, 1] * (1 - u) * v
        + costs[:, 1, 0] * u * (1 - v)
        + costs[:, 1, 1] * u * v
    )
    return table.sum((-1, -2))


def _log_prior(lam: Tensor | float, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``log λ`` and ``log(1 - λ)`` as ``(N, 1, 1)``, λ clipped away from 0 and 1."""
    lam = torch.as_tensor(lam, dtype=torch.float32, device=device).clamp(LAM_EPS, 1.0 - LAM_EPS)
    lam = lam.reshape(-1, 1, 1).expand(n, 1, 1)
    return lam.log(), (-lam).log1p()


class _Quadratic(NamedTuple):
    """The energy as ``const + Σ field_p m_p + Σ right_pq m_p m_q + Σ down_pq m_p m_q`` (const dropped)."""

    field: Tensor  # (N, k, k)
    right: Tensor  # (N, k, k - 1)
    down: Tensor  # (N, k - 1, k)


def _quadratic_form(
    saliency_a: Tensor,
    saliency_b: Tensor,
    lam: Tensor | float,
    beta: float,
    gamma: float,
    eta: float,
    area: Tensor | None,
    boundary: BoundaryCosts | None,
) -> _Quadratic:
    """Rewrite :func:`puzzle_energy` as a quadratic pseudo-Boolean function of the mask."""
    n, k, _ = saliency_a.shape
    device = saliency_a.device
    weight = 1.0 / (EDGE_SCALE * k)
    shares = torch.full((k, k), 1.0 / k**2, device=device) if area is None else area
    log_lam, log_rest = _log_prior(lam, n, device)
    # β [m_p != m_q] = β (m_p + m_q - 2 m_p m_q): each block pays β per neighbour, each pair gets -2β back.
    field = saliency_b - saliency_a + eta * shares * (log_rest - log_lam) + beta * weight * _degree(k, device)
    right = torch.full((n, k, k - 1), -2.0 * beta * weight, device=device)
    down = torch.full((n, k - 1, k), -2.0 * beta * weight, device=device)
    if boundary is not None and gamma:
        g = gamma * weight
        r, d = boundary.right, boundary.down
        # φ(u, v) = φ00 + u (φ10 - φ00) + v (φ01 - φ00) + u v (φ11 - φ10 - φ01 + φ00)
        field = field.clone()
        field[:, :, :-1] += g * (r[:, 1, 0] - r[:, 0, 0])
        field[:, :, 1:] += g * (r[:, 0, 1] - r[:, 0, 0])
        field[:, :-1, :] += g * (d[:, 1, 0] - d[:, 0, 0])
        field[:, 1:, :] += g * (d[:, 0, 1] - d[:, 0, 0])
        right = right + g * (r[:, 1, 1] - r[:, 1, 0] - r[:, 0, 1] + r[:, 0, 0])
        down = down + g * (d[:, 1, 1] - d[:, 1, 0] - d[:, 0, 1] + d[:, 0, 0])
    return _Quadratic(field, right, down)


@functools.lru_cache(maxsize=32)
def _degree(k: int, device: torch.device) -> Tensor:
    """``(k, k)`` number of 4-neighbours of each block."""
    inner = torch.full((k,), 2.0, device=device)
    inner[0] = inner[-1] = 1.0
    return inner[:, None] + inner[None, :]


def _quadratic_energy(mask: Tensor, form: _Quadratic) -> Tensor:
    """The quadratic form (without its constant) of ``(..., N, k, k)`` float masks."""
    return (
        (form.field * mask).sum((-1, -2))
        + (form.right * mask[..., :, :-1] * mask[..., :, 1:]).sum((-1, -2))
        + (form.down * mask[..., :-1, :] * mask[..., 1:, :]).sum((-1, -2))
    )


# ------------------------------------------------------------------ the mask solver


def solve_puzzle_mask(
    saliency_a: Tensor,
    saliency_b: Tensor,
    lam: Tensor | float,
    *,
    beta: float,
    gamma: float = 0.0,
    eta: float,
    area: Tensor | None = None,
    boundary: BoundaryCosts | None = None,
    method: str = "auto",
) -> Tensor:
    """Minimise :func:`puzzle_energy` over binary block masks for a whole batch at once: ``(N, k, k)`` bool.

    The energy is rewritten as a quadratic function of the mask (a field per
    block and a coupling per neighbouring pair). ``method="exact"``: dynamic
    programming over the grid's rows, each row one of ``2**k`` states
    (Viterbi along the rows), batched: the exact minimiser, for grids up to
    10x10. ``method="icm"``: coarse to fine. The energy of masks constant on
    pairs of blocks per side is a quadratic function on a ``⌈k/2⌉`` grid,
    minimised exactly (recursively beyond 5x5), for two alignments of the
    pairs; these optima and the thresholded field start up to three sweeps of
    checkerboard iterated conditional modes (each half-sweep sets every block
    of one colour to its best label given its neighbours, so the energy never
    rises); the lowest energy per sample is kept. ``"auto"``: exact up to 5x5
    blocks, ``"icm"`` beyond. The paper uses alpha-beta swap graph cuts
    instead (Kim et al., ICML 2020, arXiv 2009.06962).

    Args:
        saliency_a, saliency_b, lam, beta, gamma, eta, area, boundary: as for :func:`puzzle_energy`.
        method: ``"auto"``, ``"exact"`` or ``"icm"``.

    Example:
        >>> sa = torch.tensor([[[0.5, 0.0], [0.0, 0.0]]]); sb = torch.tensor([[[0.0, 0.0], [0.0, 0.5]]])
        >>> solve_puzzle_mask(sa, sb, 0.5, beta=0.1, eta=0.0).int()
        tensor([[[1, 0],
                 [0, 0]]], dtype=torch.int32)
    """
    method = check_choice("solver", method, SOLVERS)
    form = _quadratic_form(saliency_a, saliency_b, lam, beta, gamma, eta, area, boundary)
    k = saliency_a.shape[-1]
    if method == "auto":
        method = "exact" if k <= EXACT_MAX_SIDE else "icm"
    if method == "exact":
        if k > EXACT_LIMIT_SIDE:
            raise MixlabValueError(f"the exact solver takes grids up to {EXACT_LIMIT_SIDE} blocks per side; got {k}")
        return _solve_rows_exact(form)
    return _solve_icm(form)


@functools.lru_cache(maxsize=16)
def _row_states(k: int, device: torch.device) -> Tensor:
    """``(2**k, k)`` float32: every binary row."""
    codes = torch.arange(2**k, device=device)
    return ((codes[:, None] >> torch.arange(k, device=device)) & 1).to(torch.float32)


def _solve_rows_exact(form: _Quadratic) -> Tensor:
    """Exact minimiser by dynamic programming over rows (the row chain is a Markov chain of 2**k states)."""
    field, right, down = form
    k = field.shape[-1]
    bits = _row_states(k, field.device)
    row_cost = field @ bits.T + right @ (bits[:, :-1] * bits[:, 1:]).T  # (N, k, S)
    step_cost = (down.unsqueeze(-2) * bits) @ bits.T  # (N, k-1, S, S): coupling of row r state s, row r+1 state t
    cost, back = row_cost[:, 0], []
    for r in range(1, k):
        cost, arg = (cost.unsqueeze(-1) + step_cost[:, r - 1]).min(dim=1)
        cost = cost + row_cost[:, r]
        back.append(arg)
    state = cost.argmin(dim=1)
    rows = [state]
    for arg in reversed(back):
        state = arg.gather(1, state.unsqueeze(1)).squeeze(1)
        rows.append(state)
    return bits[torch.stack(rows[::-1], dim=1)].bool()


def _solve_icm(form: _Quadratic) -> Tensor:
    """Coarse-to-fine: exact optima on two ``⌈k/2⌉`` coarse grids and the unary threshold, refined by checkerboard ICM.

    The energy restricted to masks constant on pairs of blocks per side is
    itself a quadratic form on the coarse grid (:func:`_coarsen`), solved
    exactly (or recursively); two alignments of the pairs are used. The three
    starts are refined in parallel by up to ``ICM_SWEEPS`` sweeps: each
    half-sweep sets every block of one checkerboard colour to its best label
    given its neighbours, which never raises the energy. The lowest energy
    per sample wins.
    """
    k = form.field.shape[-1]
    starts = [_coarse_start(form, shift) for shift in (0, 1)]
    starts.append(form.field + 0.5 * _neighbour_field(torch.ones_like(form.field), form.right, form.down) < 0)
    masks = torch.stack(starts).to(form.field.dtype)  # (3, N, k, k)
    colours = _checkerboard(k, masks.device)
    for _ in range(ICM_SWEEPS):  # a sweep either changes nothing (then stop) or lowers the energy
        before = masks
        for colour in colours:
            local = form.field + _neighbour_field(masks, form.right, form.down)
            masks = torch.where(colour, (local < 0).to(masks.dtype), masks)
        if torch.equal(before, masks):
            break
    best = _quadratic_energy(masks, form).argmin(dim=0)  # (N,)
    return masks.gather(0, best.view(1, -1, 1, 1).expand(1, -1, k, k)).squeeze(0).bool()


def _coarse_start(form: _Quadratic, shift: int) -> Tensor:
    """The best mask among those constant on pairs of blocks (pairs start at block ``shift``), ``(N, k, k)`` bool."""
    coarse_form, groups = _coarsen(form, shift)
    solve = _solve_rows_exact if coarse_form.field.shape[-1] <= EXACT_MAX_SIDE else _solve_icm
    return solve(coarse_form)[:, groups][:, :, groups]


def _coarsen(form: _Quadratic, shift: int = 0) -> tuple[_Quadratic, Tensor]:
    """The quadratic form of masks constant on groups of 2 blocks per side (``⌈k/2⌉`` groups), and the groups.

    Pairs inside a group add their coupling to the group's field (both ends
    share its label); pairs across groups add to the coupling of the groups.
    """
    k = form.field.shape[-1]
    member, inner, cross, groups = _coarse_maps(k, shift, form.field.device)
    field = member @ form.field @ member.T
    field = (
        field
        + member @ (form.right * inner) @ member[:, :-1].T
        + member[:, :-1] @ (form.down * inner[:, None]) @ member.T
    )
    right = member @ form.right @ cross
    down = cross.T @ form.down @ member.T
    return _Quadratic(field, right, down), groups


@functools.lru_cache(maxsize=16)
def _coarse_maps(k: int, shift: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Group membership ``(kc, k)``, inner-pair flags ``(k-1,)``, crossing-pair map ``(k-1, kc-1)``, groups ``(k,)``."""
    coarse = (k + shift + 1) // 2
    groups = (torch.arange(k, device=device) + shift) // 2
    member = F.one_hot(groups, coarse).T.to(torch.float32)
    inner = (groups[1:] == groups[:-1]).to(torch.float32)
    cross = F.one_hot(groups[:-1], coarse)[:, :-1].to(torch.float32) * (1.0 - inner)[:, None]
    return member, inner, cross, groups


def _neighbour_field(mask: Tensor, right: Tensor, down: Tensor) -> Tensor:
    """``Σ_q w_pq m_q`` over the 4-neighbours ``q`` of each block."""
    horizontal = right * mask[..., :, 1:], right * mask[..., :, :-1]
    vertical = down * mask[..., 1:, :], down * mask[..., :-1, :]
    return (
        F.pad(horizontal[0], (0, 1))
        + F.pad(horizontal[1], (1, 0))
        + F.pad(vertical[0], (0, 0, 0, 1))
        + F.pad(vertical[1], (0, 0, 1, 0))
    )


@functools.lru_cache(maxsize=32)
def _checkerboard(k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The two colours of a ``k x k`` checkerboard, as bool masks."""
    index = torch.arange(k, device=device)
    black = (index[:, None] + index[None, :]) % 2 == 0
    return black, ~black


# ------------------------------------------------------------------ transport


def transport_blocks(
    saliency: Tensor,
    keep: Tensor,
    *,
    weight: float,
    radius: int = 1,
    rounds: int = 3,
    shape_id: Tensor | None = None,
) -> Tensor:
    """Move each source's salient blocks into the blocks its mask keeps: ``(N, k*k)`` long source block per block.

    The paper's transport minimises ``ξ <Π, C> - <keep, Π^T s>`` over block
    permutations ``Π`` (saliency-discounted optimal transport; ``C`` the
    distance between blocks). Here ``Π`` is built from swaps of a kept and a
    dropped block at most ``radius`` blocks apart (Chebyshev); a swap gains
    ``s(moved in) - s(moved out) - 2 ξ d`` with the saliency scaled to mean 1
    per block and ``d`` the Manhattan distance in blocks. Each round, every
    free block picks its best positive swap and mutual choices are made (a
    batched greedy matching); ``rounds`` rounds. Every swap lowers the
    transport objective, so the result is a permutation that never lowers the
    kept saliency. Blocks only swap with blocks of the same pixel shape
    (``shape_id``), so content is moved, never resized. Kim et al., ICML 2020,
    arXiv 2009.06962, Sec. 4 (Algorithm 1 is the paper's solver).

    Args:
        saliency: ``(N, k, k)`` block saliency of the source (any positive scale).
        keep: ``(N, k, k)`` bool, the blocks the mask takes from this source.
        weight: ``ξ``, the cost per block of distance, >= 0.
        radius: how far (in blocks) a swap may reach, >= 1.
        rounds: matching rounds, >= 1.
        shape_id: ``(k, k)`` blocks may swap only when equal (default: all equal).

    Example:
        >>> s = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])  # the salient block is bottom right ...
        >>> keep = torch.tensor([[[True, False], [False, False]]])  # ... but the mask keeps the top left
        >>> transport_blocks(s, keep, weight=0.1).tolist()  # blocks 0 and 3 swap
        [[3, 1, 2, 0]]
    """
    n, k, _ = saliency.shape
    device = saliency.device
    s = saliency.to(torch.float32).flatten(1)
    s = s * (k * k / s.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny))
    keep_f = keep.flatten(1).to(torch.float32)
    partners, cost, allowed = _swap_window(k, radius, device, shape_id)  # (O, n) each
    index = torch.arange(k * k, device=device).expand(n, -1)
    if partners.shape[0] == 0:
        return index
    near = _gather_window(torch.stack([s, keep_f], 1), partners)  # (N, 2, O, n)
    gain = (s.unsqueeze(1) - near[:, 0]) * (near[:, 1] - keep_f.unsqueeze(1)) - weight * cost
    gain = gain.masked_fill(~(allowed & (gain > 0)), -torch.inf)  # swaps of two kept/dropped blocks gain 0
    source, free = index, torch.ones(n, k * k, dtype=torch.bool, device=device)
    for _ in range(rounds):
        options = gain.masked_fill(~(free.unsqueeze(1) & _gather_window(free.unsqueeze(1), partners)[:, 0]), -torch.inf)
        best, choice = options.max(dim=1)
        partner = torch.where(torch.isfinite(best), partners.T[index, choice], index)  # (N, k*k)
        mutual = (partner != index) & (partner.gather(1, partner) == index)
        if not bool(mutual.any()):
            break
        source = torch.where(mutual, partner, source)
        free = free & ~mutual
    return source


def _gather_window(values: Tensor, partners: Tensor) -> Tensor:
    """``(N, C, O, n)``: ``values`` ``(N, C, n)`` at each block's window positions (``False``/0 outside)."""
    padded = F.pad(values, (0, 1))  # position n stands for "outside the grid"
    return padded.index_select(2, partners.flatten()).view(*values.shape[:2], *partners.shape)


def _swap_window(k: int, radius: int, device: torch.device, shape_id: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Each block's window partners ``(O, n)`` (``n`` outside), swap costs ``2 d`` and which swaps are allowed."""
    partners, cost = _window_table(k, radius, device)
    allowed = partners < k * k
    if shape_id is not None:
        shapes = F.pad(shape_id.flatten(), (0, 1), value=-1)
        allowed = allowed & (shapes[partners] == shapes[:-1])
    used = allowed.any(dim=1)  # offsets no block can use (e.g. between blocks of different heights) are dropped
    return partners[used], cost[used], allowed[used]


@functools.lru_cache(maxsize=32)
def _window_table(k: int, radius: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Flat index of the block at each offset within ``radius`` of each block (``k*k`` outside), and ``2 d``."""
    steps = torch.arange(-radius, radius + 1, device=device)
    dy, dx = steps.repeat_interleave(len(steps)), steps.repeat(len(steps))
    moved = (dy != 0) | (dx != 0)
    dy, dx = dy[moved], dx[moved]
    rows = torch.arange(k, device=device).repeat_interleave(k)
    cols = torch.arange(k, device=device).repeat(k)
    r, c = rows[None, :] + dy[:, None], cols[None, :] + dx[:, None]
    inside = (r >= 0) & (r < k) & (c >= 0) & (c < k)
    partners = torch.where(inside, r * k + c, k * k)
    cost = 2.0 * (dy.abs() + dx.abs()).to(torch.float32)[:, None].expand_as(partners)
    return partners, cost


def block_permutation_pixels(source_blocks: Tensor, grid: BlockGrid) -> Tensor:
    """Pixel indices realising a block permutation: ``(N, H*W)``, output pixel -> flat source pixel.

    ``source_blocks[n, b]`` is the block whose content lands in block ``b``
    (blocks of equal shape only, as :func:`transport_blocks` ensures).

    Example:
        >>> grid = block_grid(2, 4, 2, torch.device("cpu"))  # 1x2-pixel blocks
        >>> block_permutation_pixels(torch.tensor([[1, 0, 2, 3]]), grid).tolist()
        [[2, 3, 0, 1, 4, 5, 6, 7]]
    """
    return _expand_blocks(_block_shifts(source_blocks, grid), grid)


def _block_shifts(source_blocks: Tensor, grid: BlockGrid) -> Tensor:
    """``(N, k*k)``: how far, in flat pixels, each block's content comes from."""
    width = grid.col_block.shape[0]
    starts = (grid.row_start[:, None] * width + grid.col_start[None, :]).flatten()  # first pixel of each block
    return starts[source_blocks] - starts


def _expand_blocks(offsets: Tensor, grid: BlockGrid) -> Tensor:
    """``(N, H*W)``: pixel ``p`` plus the offset of its block."""
    k = grid.size
    pixel_block = (grid.row_block[:, None] * k + grid.col_block[None, :]).flatten()
    return torch.arange(pixel_block.shape[0], device=offsets.device) + offsets.index_select(1, pixel_block)


# ------------------------------------------------------------------ the mixer


class PuzzleMix(Mixer):
    """PuzzleMix: the saliency-optimal binary block mask between two images, with salient blocks transported.

    Per batch a grid of ``k x k`` blocks is drawn from ``blocks``. The saliency
    (``context["saliency"]``: the input-gradient magnitude of the clean loss,
    computed by :class:`~mixlab.methods.context.MixContext`) is summed per
    block and normalised per sample. The block mask minimises
    :func:`puzzle_energy` (kept saliency, ``beta`` smoothness, ``gamma`` local
    statistics, ``eta`` Bernoulli(λ) prior) and is upsampled by nearest
    neighbour to the image. With ``transport``, each source's salient blocks
    are then moved into the blocks its mask keeps (:func:`transport_blocks`).
    ``lam`` is the exact share of pixels from ``x_i`` (the mask mean) and
    ``mb.mask`` the pixel mask. Samples whose drawn λ is exactly 0 or 1 are
    left unmixed. Defaults follow the paper's CIFAR setting (``alpha=1``,
    ``beta=1.2``, ``gamma=0.5``, ``eta=0.2``, transport ``ξ=0.8``). Kim, Choo and
    Song, ICML 2020, arXiv 2009.06962.

    Deviations from the paper:

    - Solver: no graph cut. Grids up to 5x5 are solved exactly by dynamic
      programming over rows (``2**k`` row states, batched); larger ones coarse
      to fine: exact optima over masks constant on pairs of blocks (two
      alignments) and the thresholded unary field start up to three sweeps of
      checkerboard ICM, the lowest energy kept (:func:`solve_puzzle_mask`).
      The paper runs alpha-beta swap graph cuts per sample on the CPU; for two
      labels and the usual (submodular) weights these are exact, as the row
      DP is, while the coarse-to-fine ICM is approximate (8x8 masks on
      Fashion-MNIST: the exact optimum for 3 samples in 4, and on average 99%
      of the optimum's energy gain over the better uniform mask).
    - Two labels (the mask is binary); the paper's CIFAR setting also allows a
      half-half label.
    - Transport: batched greedy swaps of kept and dropped blocks within
      ``transport_radius`` blocks (a 2-cycle restriction of the paper's block
      transport, whose Algorithm 1 resolves row-wise argmins over all block
      pairs). Blocks move only between slots of the same pixel shape: when
      ``k`` does not divide the image (28x28 with 8 blocks alternates 4- and
      3-pixel blocks) the default radius 1 allows no swap and nothing moves
      (``transport_radius=2`` reaches the next block of the same shape).
    - Scales: pairwise weights are divided by ``64 k`` (a boundary across the
      image costs ``beta / 64`` of the total saliency on any grid; calibrated
      so that the mask's mean follows λ, see ``EDGE_SCALE``), the prior is
      weighted by block area, the transport cost is ``ξ`` per block of
      Manhattan distance against the saliency scaled to mean 1 per block; the
      local-statistics cost compares the pixel lines either side of each
      block boundary, on the inputs as given (normalised).
    - Block grids are the partition of nearest upsampling (works for sizes
      that ``k`` does not divide); the block saliency is the sum over it.
    - One pass (mask with no transport, then transport); no adversarial
      perturbation of the inputs (the paper's optional Algorithm 2).

    Args:
        blocks: the block counts per side to draw from, each in [2, 64]
            (default ``(2, 4, 8)``; fits 28x28 and 32x32 images alike).
        beta: label-smoothness weight >= 0.
        gamma: local-statistics weight >= 0 (0 skips computing it).
        eta: label-prior weight >= 0.
        transport: move salient blocks into the kept region.
        transport_weight: the transport cost ``ξ`` per block of distance, >= 0.
        transport_radius: how far a block may move, in blocks (>= 1).
        transport_rounds: matching rounds of the transport (>= 1).
        solver: ``"auto"``, ``"exact"`` or ``"icm"`` (see :func:`solve_puzzle_mask`).
        model: accepted, and type-checked, for the same call as other model-aware
            mixers; the saliency itself comes from ``context`` (``MixContext``).
        **kwargs: the base :class:`~mixlab.methods.base.Mixer` options (``alpha``, ``lam_mode``, ``p``, ...).

    Example:
        >>> import torch
        >>> from mixlab.methods.context import MixContext
        >>> from mixlab.models import create_model
        >>> net = create_model("cnn_small", num_classes=3, in_channels=1, input_size=16)
        >>> mixer = PuzzleMix(blocks=(4,))
        >>> x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
        >>> mb = mixer(x, y, torch.Generator().manual_seed(0), context=MixContext(mixer, net)(x, y))
        >>> torch.allclose(mb.lam, mb.mask.flatten(1).mean(1))
        True
    """

    name = "puzzlemix"
    spatial = True
    default_alpha = 1.0

    def __init__(
        self,
        *,
        blocks: Sequence[int] = (2, 4, 8),
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        transport: bool = True,
        transport_weight: float = 0.8,
        transport_radius: int = 1,
        transport_rounds: int = 3,
        solver: str = "auto",
        model: nn.Module | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if model is not None and not isinstance(model, nn.Module):
            raise MixlabTypeError(f"puzzlemix: model must be an nn.Module; got {type(model).__name__}")
        self.blocks = _check_blocks(blocks)
        self.beta = check_non_negative("beta", beta)
        self.gamma = check_non_negative("gamma", gamma)
        self.eta = check_non_negative("eta", eta)
        if not isinstance(transport, bool):
            raise MixlabTypeError(f"transport must be a bool; got {transport!r}")
        self.transport = transport
        self.transport_weight = check_non_negative("transport_weight", transport_weight)
        self.transport_radius = check_int("transport_radius", transport_radius, minimum=1)
        self.transport_rounds = check_int("transport_rounds", transport_rounds, minimum=1)
        self.solver = check_choice("solver", solver, SOLVERS)
        if self.solver == "exact" and max(self.blocks) > EXACT_LIMIT_SIDE:
            raise MixlabValueError(
                f"solver='exact' takes grids up to {EXACT_LIMIT_SIDE} blocks per side; got blocks={self.blocks}"
            )

    @property
    def needs(self) -> MixerNeeds:
        """The input saliency of the clean loss (``MixerNeeds(saliency=True)``).

        Example:
            >>> PuzzleMix().needs.saliency
            True
        """
        return MixerNeeds(saliency=True)

    def _check_context(self, context: dict[str, Any]) -> None:
        if context.get(SALIENCY) is None:
            raise MixlabValueError(
                "puzzlemix needs the input saliency: pass context=MixContext(mixer, model)(x, y) "
                "(from mixlab.methods.context), or context={'saliency': s} with s of shape (N, H, W)"
            )

    def check(self, x: Tensor, y: Tensor) -> None:
        """As for every mixer; ``x`` must also be a batch of 2-D images ``(N, C, H, W)``."""
        super().check(x, y)
        if x.ndim != 4:
            raise MixlabValueError(f"puzzlemix mixes 2-D images of shape (N, C, H, W); got shape {tuple(x.shape)}")

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        n, _, height, width = x.shape
        saliency = _checked_saliency(context[SALIENCY], x)
        grid = block_grid(height, width, self.blocks[int(rng.integers(len(self.blocks)))], x.device)
        ratio = ratios_to_device(lam, n, x.device)
        with torch.no_grad():
            sal_a = block_saliency(saliency, grid)
            sal_b = sal_a.index_select(0, perm)
            boundary = boundary_costs(x, perm, grid) if self.gamma else None
            keep = solve_puzzle_mask(
                sal_a, sal_b, ratio, beta=self.beta, gamma=self.gamma, eta=self.eta,
                area=grid.area, boundary=boundary, method=self.solver,
            )  # fmt: skip
            keep = torch.where(ratio.view(-1, 1, 1) >= 1.0, True, torch.where(ratio.view(-1, 1, 1) <= 0.0, False, keep))
            weight = keep.to(x.dtype).index_select(1, grid.row_block).index_select(2, grid.col_block).unsqueeze(1)
            extra: dict[str, Any] = {"blocks": grid.size, "keep": keep}
            if self.transport:
                extra["sources"] = self._transport(sal_a, sal_b, keep, perm, grid)
        return MixParams(perm=perm, lam=label_weight(weight, n), weight=weight, extra=extra)

    def _transport(self, sal_a: Tensor, sal_b: Tensor, keep: Tensor, perm: Tensor, grid: BlockGrid) -> Tensor | None:
        """Flat source pixel (in ``x`` as ``(N*H*W, C)`` rows) of every output pixel, ``(N, H*W)``; ``None`` if no move is possible."""
        if not _swap_window(grid.size, self.transport_radius, keep.device, grid.shape_id)[0].shape[0]:
            return None
        n = keep.shape[0]
        moves = transport_blocks(
            torch.cat([sal_a, sal_b]), torch.cat([keep, ~keep]), weight=self.transport_weight,
            radius=self.transport_radius, rounds=self.transport_rounds, shape_id=grid.shape_id,
        )  # fmt: skip
        shifts = _block_shifts(moves, grid)
        area = grid.row_block.shape[0] * grid.col_block.shape[0]
        own = torch.arange(n, device=keep.device)
        sample = torch.where(keep.flatten(1), own.unsqueeze(1), perm.unsqueeze(1))  # which image each block shows
        return _expand_blocks(sample * area + torch.where(keep.flatten(1), shifts[:n], shifts[n:]), grid)

    def _mix(self, x: Tensor, params: MixParams, context: dict[str, Any]) -> Tensor:
        sources = params.extra.get("sources")
        if sources is None:
            return super()._mix(x, params, context)
        n, c, height, width = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * height * width, c)  # a view for one channel or channels_last
        out = rows.index_select(0, sources.flatten()).view(n, height, width, c).permute(0, 3, 1, 2)
        out = out.contiguous(memory_format=torch.channels_last if _channels_last(x) else torch.contiguous_format)
        return x.copy_(out) if self.inplace else out

    def __repr__(self) -> str:
        return (
            f"PuzzleMix(lam={self.lam_sampler!r}, blocks={self.blocks}, beta={self.beta}, gamma={self.gamma}, "
            f"eta={self.eta}, transport={self.transport}, transport_weight={self.transport_weight}, "
            f"solver={self.solver!r}, lam_mode={self.lam_mode!r}, p={self.p})"
        )


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` is laid out channels-last (and not trivially so)."""
    return x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _check_blocks(blocks: Sequence[int]) -> tuple[int, ...]:
    """The block counts as a tuple of ints in [2, 64]."""
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
        raise MixlabValueError(f"blocks must be a non-empty list of block counts per side; got {blocks!r}")
    checked = tuple(check_int("blocks", b, minimum=MIN_BLOCKS) for b in blocks)
    if max(checked) > MAX_BLOCKS:
        raise MixlabValueError(f"blocks must be block counts per side in [{MIN_BLOCKS}, {MAX_BLOCKS}]; got {blocks!r}")
    return checked


def _checked_saliency(saliency: Any, x: Tensor) -> Tensor:
    """The context's saliency as a tensor of shape ``(N, H, W)`` matching ``x``, or a clear error."""
    if not isinstance(saliency, Tensor):
        raise MixlabTypeError(f"context['saliency'] must be a tensor (N, H, W); got {type(saliency).__name__}")
    expected = (x.shape[0], *x.shape[2:])
    if tuple(saliency.shape) != expected:
        raise MixlabValueError(
            f"context['saliency'] must have shape (N, H, W) = {expected} to match x {tuple(x.shape)}; "
            f"got {tuple(saliency.shape)}"
        )
    return saliency.detach()


__all__ = [
    "BlockGrid",
    "BoundaryCosts",
    "PuzzleMix",
    "block_grid",
    "block_permutation_pixels",
    "block_saliency",
    "boundary_costs",
    "puzzle_energy",
    "solve_puzzle_mask",
    "transport_blocks",
]
