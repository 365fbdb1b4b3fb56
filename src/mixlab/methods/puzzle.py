"""PuzzleMix: a saliency-guided multi-label block mask found by energy minimisation, and saliency transport.

Kim, Choo and Song, "Puzzle Mix: Exploiting Saliency and Local Statistics for
Optimal Mixup", ICML 2020, arXiv 2009.06962; the authors' code is
snu-mllab/PuzzleMix (``mixup.py``: ``mixup_graph``, ``graphcut_multi``,
``neigh_penalty``, ``mask_transport``; ``main.py``; the README's CIFAR-100 command).

Each batch draws a ``k x k`` block grid (``k`` in {2, 4, 8, 16}). Every block
gets a label ``m`` in ``{0, 1/2, 1}`` (the weight of ``x_i``; the partner gets
``1 - m``) minimising the energy of :func:`mask_energy_terms`: the saliency
lost, a smoothness cost ``β/(16k) (m_p - m_q)²`` between neighbours, a
local-statistics cost on the pixels either side of each boundary (also scaled
by ``β/(16k)``, times ``γ``) and a binomial(λ) label prior (``η``). Then each
source's salient cells are moved into the cells its mask shows (the authors'
transport algorithm, on 4-pixel cells). Everything is batched on the device;
no graph-cut library is used.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.batch import MixedBatch
from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice, check_int, check_non_negative
from mixlab.methods.base import Mixer, MixParams, label_weight, ratios_to_device
from mixlab.methods.blocks import block_index, block_saliency, expand_blocks
from mixlab.methods.context import SALIENCY, MixerNeeds, clean_loss_terms, keep_clean_loss

#: The smoothness weight is ``beta / (SMOOTHNESS_SCALE * k)`` on a ``k x k`` grid, as in the authors'
#: ``mixup_graph`` (``beta / block_num / 16``); the local-statistics term is also multiplied by it.
SMOOTHNESS_SCALE = 16.0
#: Added to the label probabilities inside the log prior (the authors' ``graphcut_multi``).
PRIOR_EPS = 1e-8
#: ``solver="auto"`` is exact (dynamic programming over rows) while a row has at most this many labellings.
AUTO_EXACT_STATES = 81
#: ``solver="exact"`` refuses grids whose rows have more labellings than this (its tables grow as their square).
EXACT_LIMIT_STATES = 512
#: Sweeps of row/column ICM (each half-sweep solves whole rows or columns exactly) after the starts.
ICM_SWEEPS = 3
#: Sweeps at the coarser levels, which only give starts.
COARSE_SWEEPS = 2
#: Transport cost of moving content between cells of different pixel shapes: never chosen.
FORBIDDEN = 1.0e4
#: Alignments of the 2x2 groups of the coarse starts (the coarser levels use the first only).
COARSE_SHIFTS = (0, 1)
SOLVERS = ("auto", "exact", "icm")
MIN_BLOCKS, MAX_BLOCKS = 2, 64
MIN_LABELS, MAX_LABELS = 2, 4


# ------------------------------------------------------------------ the block grid


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: block_grid caches one per shape
class BlockGrid:
    """A ``kh x kw`` block partition of an ``H x W`` image (:func:`mixlab.masks.block_index` along each axis).

    A cached view of the one block partition of :mod:`mixlab.methods.blocks`:
    pixel row ``r`` is in block row ``⌊r kh / H⌋``; blocks differ by at most one pixel per side.

    Attributes:
        counts: ``(kh, kw)``, the blocks per side.
        row_block: ``(H,)`` long, the block row of each pixel row (``col_block`` likewise, ``(W,)``).
        row_start: ``(kh,)`` long, the first pixel row of each block row (``col_start`` likewise).
        row_length: ``(kh,)`` long, the pixel rows of each block row (``col_length`` likewise).
        area: ``(kh, kw)`` float32, each block's share of the image's pixels (sums to 1).
        shape_id: ``(kh * kw,)`` long, equal for blocks of equal pixel shape.

    Example:
        >>> grid = block_grid(7, 7, 2, torch.device("cpu"))
        >>> grid.row_block.tolist(), grid.row_start.tolist()
        ([0, 0, 0, 0, 1, 1, 1], [0, 4])
    """

    counts: tuple[int, int]
    row_block: Tensor
    col_block: Tensor
    row_start: Tensor
    col_start: Tensor
    row_length: Tensor
    col_length: Tensor
    area: Tensor
    shape_id: Tensor

    @property
    def cells(self) -> int:
        """The number of blocks, ``kh * kw``."""
        return self.counts[0] * self.counts[1]


@functools.lru_cache(maxsize=64)
def block_grid(height: int, width: int, counts: int | tuple[int, int], device: torch.device) -> BlockGrid:
    """The :class:`BlockGrid` of ``counts`` blocks per side (one int, or ``(kh, kw)``) over ``height x width`` (cached).

    Example:
        >>> block_grid(28, 28, 8, torch.device("cpu")).area.sum().item()
        1.0
    """
    kh, kw = (counts, counts) if isinstance(counts, int) else counts
    if kh > height or kw > width:
        raise MixlabValueError(f"a {kh}x{kw} block grid needs an image of at least {kh}x{kw}; got {height}x{width}")
    rows, row_start, heights = _axis(height, kh, device)
    cols, col_start, widths = _axis(width, kw, device)
    area = (heights[:, None] * widths[None, :]).to(torch.float32) / (height * width)
    shape_id = (heights[:, None] * (width + 1) + widths[None, :]).flatten()
    return BlockGrid((kh, kw), rows, cols, row_start, col_start, heights, widths, area, shape_id)


def _axis(length: int, count: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Block of each position, first position of each block and block lengths along one axis."""
    block = block_index(length, count, device)
    lengths = torch.bincount(block, minlength=count)
    return block, torch.cumsum(lengths, 0) - lengths, lengths


def cells_per_block(block_length: float, cell_size: int) -> int:
    """How many cells of about ``cell_size`` pixels split a block of ``block_length`` pixels (at least 1).

    The fine grid is then ``k * cells_per_block`` per side, and
    :func:`~mixlab.masks.block_index` nests it in the block grid (every cell lies in
    one block). When ``cell_size`` divides the block it is the authors' ``block_size // t_size``
    (or ``// neigh_size``); blocks smaller than a cell are one cell, as the authors'
    ``min(t_size, block_size)``.

    Example:
        >>> cells_per_block(16, 4), cells_per_block(2, 4), cells_per_block(3.5, 4)
        (4, 1, 1)
    """
    return max(1, math.floor(block_length / cell_size + 0.5))


def transport_cells(height: int, width: int, blocks: tuple[int, int], cell_size: int | None) -> tuple[int, int]:
    """The transport grid for a ``blocks`` mask grid: cells of about ``cell_size`` pixels, nested in the blocks.

    The authors transport on cells of ``t_size = min(t_size, block_size)``
    pixels (``width // t_size`` per side); ``None`` (their ``t_size=-1``) uses the mask's blocks.

    Example:
        >>> [transport_cells(32, 32, (k, k), 4) for k in (2, 4, 8, 16)]
        [(8, 8), (8, 8), (8, 8), (16, 16)]
    """
    if cell_size is None:
        return blocks
    return (
        blocks[0] * cells_per_block(height / blocks[0], cell_size),
        blocks[1] * cells_per_block(width / blocks[1], cell_size),
    )


# ------------------------------------------------------------------ local statistics


class BoundaryCosts(NamedTuple):
    """The local-statistics cost ``φ(u, v)`` of every pair of neighbouring blocks, for each pair of sources.

    ``right[n, u, v, r, c]``: blocks ``(r, c)`` and ``(r, c + 1)`` taken from sources ``u`` and ``v``;
    ``down[n, u, v, r, c]``: blocks ``(r, c)`` and ``(r + 1, c)``. Source 1 is ``x_i``, 0 its partner.
    """

    right: Tensor
    down: Tensor


def boundary_costs(
    x: Tensor, perm: Tensor, grid: BlockGrid, *, cell_size: int = 4, input_std: Tensor | None = None
) -> BoundaryCosts:
    """The local-statistics term: how different the pixels either side of each block boundary would be.

    As the authors' ``neigh_penalty``: the image is averaged over cells of
    ``n = min(cell_size, block size)`` pixels; for two neighbouring blocks taken
    from sources ``u`` and ``v``, ``φ(u, v)`` is the mean over the cells along
    their shared edge of the channel-mean absolute difference between the
    last cell of the first block (from ``u``) and the first cell of the second
    (from ``v``). The authors compare un-normalised pixels (``x * std + mean``);
    the mean cancels in a difference, so pass ``input_std`` (per channel) to
    compare normalised inputs on the pixel scale. Kim et al., ICML 2020, arXiv 2009.06962, Sec. 3.

    Args:
        x: ``(N, C, H, W)`` the samples ``x_i`` (source 1).
        perm: ``(N,)`` their partners' indices: ``x[perm]`` is source 0.
        grid: the block grid.
        cell_size: the authors' ``neigh_size`` in pixels.
        input_std: ``(C,)`` the per-channel scale the inputs were divided by, or ``None``.

    Example:
        >>> x = torch.zeros(2, 1, 4, 4); x[0, ..., 2:] = 1.0; x[1] = 1.0  # sample 0: an edge between block columns
        >>> costs = boundary_costs(x, torch.tensor([1, 0]), block_grid(4, 4, 2, torch.device("cpu")))
        >>> costs.right[0, :, :, 0, 0]  # [u, v]: 0 is the all-ones partner, 1 is x[0]
        tensor([[0., 0.],
                [1., 1.]])
    """
    image = x.to(torch.float32)
    if input_std is not None:
        image = image * input_std.to(image).view(1, -1, 1, 1)
    down = _edge_costs(image, perm, grid.row_start, grid.row_length, grid.counts[1], cell_size)
    right = _edge_costs(
        image.transpose(2, 3), perm, grid.col_start, grid.col_length, grid.counts[0], cell_size
    ).transpose(-1, -2)
    return BoundaryCosts(right, down)


def _edge_costs(
    image: Tensor, perm: Tensor, start: Tensor, length: Tensor, along_blocks: int, cell_size: int
) -> Tensor:
    """``(N, 2, 2, k - 1, along_blocks)``: φ across the boundaries between consecutive block rows of ``image``."""
    width = image.shape[-1]
    band = min(cell_size, int(length.min()))  # the authors' neigh_size = min(neigh_size, block_size)
    offsets = torch.arange(band, device=image.device)
    edges = start[1:]
    before = image.index_select(2, (edges[:, None] - band + offsets).flatten())
    after = image.index_select(2, (edges[:, None] + offsets).flatten())
    lines = torch.stack([before, after]).unflatten(3, (edges.numel(), band)).mean(4)  # (2, N, C, k-1, W)
    per_block = cells_per_block(width / along_blocks, band)
    cell = F.one_hot(block_index(width, along_blocks * per_block, image.device)).to(torch.float32)
    cells = lines @ (cell / cell.sum(0))  # (2, N, C, k-1, G): cell means along the edge
    first, second = cells[0], cells[1]
    first = torch.stack([first.index_select(0, perm), first], 1)  # (N, u, C, k-1, G): source 0 = partner
    second = torch.stack([second.index_select(0, perm), second], 1)
    diff = (first.unsqueeze(2) - second.unsqueeze(1)).abs().mean(3)  # (N, u, v, k-1, G)
    return diff.unflatten(-1, (along_blocks, per_block)).mean(-1)


# ------------------------------------------------------------------ the energy


class MaskEnergy(NamedTuple):
    """The PuzzleMix energy of block labels: ``Σ_p unary[p, l_p] + Σ_{p~q} w_pq (v[l_p] - v[l_q])²``.

    Attributes:
        unary: ``(N, kh, kw, L)`` the cost of each label at each block.
        right: ``(N, kh, kw - 1)`` the weight ``w`` between horizontal neighbours.
        down: ``(N, kh - 1, kw)`` the weight between vertical neighbours.
        levels: ``(L,)`` the mask value of each label (the weight of ``x_i``): ``0, 1/(L-1), ..., 1``.
    """

    unary: Tensor
    right: Tensor
    down: Tensor
    levels: Tensor


def label_prior(lam: Tensor | float, n_labels: int, device: torch.device | None = None) -> Tensor:
    """``-log(P(m) + 1e-8)`` for each label: ``(N, L)``, ``m = j/(L-1)`` with ``j ~ Binomial(L - 1, λ)``.

    With three labels: ``-log λ²``, ``-log 2λ(1-λ)``, ``-log (1-λ)²`` for ``m = 1, 1/2, 0``
    (the authors' ``graphcut_multi``), indexed here from ``m = 0``.

    Example:
        >>> label_prior(0.5, 3).neg().exp().round(decimals=4)  # P(m = 0, 1/2, 1)
        tensor([[0.2500, 0.5000, 0.2500]])
    """
    lam = torch.as_tensor(lam, dtype=torch.float64, device=device).reshape(-1, 1)
    j = torch.arange(n_labels, dtype=torch.float64, device=lam.device)
    ways = torch.tensor([math.comb(n_labels - 1, int(i)) for i in range(n_labels)], dtype=torch.float64)
    prob = ways.to(lam.device) * lam**j * (1.0 - lam) ** (n_labels - 1 - j)
    return -torch.log(prob + PRIOR_EPS).to(torch.float32)


def mask_energy_terms(
    saliency_a: Tensor,
    saliency_b: Tensor,
    lam: Tensor | float,
    *,
    beta: float,
    gamma: float = 0.0,
    eta: float,
    n_labels: int = 3,
    area: Tensor | None = None,
    boundary: BoundaryCosts | None = None,
) -> MaskEnergy:
    """The authors' mask energy on a ``kh x kw`` grid, as unary and pairwise terms over ``n_labels`` labels.

    With ``k`` blocks per side, ``β' = β / (16 k)``, ``s_a``, ``s_b`` the block
    saliencies of ``x_i`` and its partner (each summing to 1) and ``m`` the
    weight of ``x_i`` in a block::

        E(m) = Σ_p [m_p U1_p + (1 - m_p) U0_p]                       saliency lost (+ local statistics)
               + Σ_p η area_p (-log P(m_p))                          binomial(λ) label prior
               + Σ_{p~q} (β' + β' γ w_pq) (m_p - m_q)²                smoothness (+ local statistics)

    where ``U1 = s_b + ...`` and ``U0 = s_a + ...`` carry the local-statistics
    cost ``β' γ φ(u, v)`` of each edge (:func:`boundary_costs`) split as the
    authors' ``mixup_graph`` does: the first block of an edge gets
    ``(φ(u, 0) + φ(u, 1)) / 2`` for its label ``u``, the second
    ``(φ(0, v) + φ(1, v)) / 2``, and ``w = (φ(1, 0) + φ(0, 1) - φ(0, 0) - φ(1, 1)) / 2``.
    On binary labels this is exactly ``β' γ Σ φ(m_p, m_q)`` up to a constant;
    the ``1/2`` label interpolates it, as in the code. Kim et al., ICML 2020,
    arXiv 2009.06962, Sec. 3; ``graphcut_multi`` in snu-mllab/PuzzleMix.

    Args:
        saliency_a: ``(N, kh, kw)`` block saliency of ``x_i`` (see :func:`~mixlab.methods.blocks.block_saliency`).
        saliency_b: ``(N, kh, kw)`` block saliency of the partners.
        lam: the drawn ratio (weight of ``x_i``), a float or ``(N,)``.
        beta: label-smoothness weight, >= 0.
        gamma: local-statistics weight, >= 0 (used with ``boundary``).
        eta: label-prior weight, >= 0.
        n_labels: 2 (binary masks), 3 (the authors' CIFAR setting: adds ``m = 1/2``) or 4.
        area: ``(kh, kw)`` share of the pixels in each block (default ``1 / (kh kw)`` each, the authors' ``1/k²``).
        boundary: the local-statistics costs, or ``None``.

    Example:
        >>> s = torch.full((1, 2, 2), 0.25)
        >>> terms = mask_energy_terms(s, s, 0.5, beta=1.6, eta=0.0, n_labels=3)
        >>> terms.unary.shape, round(terms.right[0, 0, 0].item(), 4)  # β / (16 · 2)
        (torch.Size([1, 2, 2, 3]), 0.05)
    """
    n, kh, kw = saliency_a.shape
    device = saliency_a.device
    smooth = beta / (SMOOTHNESS_SCALE * max(kh, kw))
    levels = torch.linspace(0.0, 1.0, n_labels, device=device)
    shares = torch.full((kh, kw), 1.0 / (kh * kw), device=device) if area is None else area.to(device)
    lost_if_a = saliency_b.to(torch.float32).clone()  # U1: the cost of showing x_i (m = 1)
    lost_if_b = saliency_a.to(torch.float32).clone()  # U0: the cost of showing the partner (m = 0)
    right = torch.full((n, kh, kw - 1), smooth, device=device)
    down = torch.full((n, kh - 1, kw), smooth, device=device)
    if boundary is not None and gamma:
        right = right + _split_edges(lost_if_a, lost_if_b, boundary.right * (smooth * gamma), dim=2)
        down = down + _split_edges(lost_if_a, lost_if_b, boundary.down * (smooth * gamma), dim=1)
    prior = label_prior(lam, n_labels, device).expand(n, n_labels)  # (N, L)
    unary = levels * lost_if_a.unsqueeze(-1) + (1.0 - levels) * lost_if_b.unsqueeze(-1)
    unary = unary + eta * shares.unsqueeze(-1) * prior.view(n, 1, 1, n_labels)
    return MaskEnergy(unary, right, down, levels)


def _split_edges(lost_if_a: Tensor, lost_if_b: Tensor, phi: Tensor, dim: int) -> Tensor:
    """Add each edge's φ to the unaries of its two blocks (in place); return the edges' pairwise weights.

    ``phi``: ``(N, u, v, ...)`` with the edge between positions ``i`` and ``i + 1`` along ``dim`` (1 rows, 2 columns).
    """
    first = [slice(None)] * 3
    second = [slice(None)] * 3
    first[dim], second[dim] = slice(None, -1), slice(1, None)
    lost_if_a[tuple(first)] += (phi[:, 1, 0] + phi[:, 1, 1]) / 2
    lost_if_b[tuple(first)] += (phi[:, 0, 0] + phi[:, 0, 1]) / 2
    lost_if_a[tuple(second)] += (phi[:, 0, 1] + phi[:, 1, 1]) / 2
    lost_if_b[tuple(second)] += (phi[:, 0, 0] + phi[:, 1, 0]) / 2
    return (phi[:, 1, 0] + phi[:, 0, 1] - phi[:, 0, 0] - phi[:, 1, 1]) / 2


def mask_energy(labels: Tensor, terms: MaskEnergy) -> Tensor:
    """The energy of ``(..., N, kh, kw)`` label indices (any leading dims): ``(..., N)``.

    Example:
        >>> s = torch.tensor([[[0.5, 0.0], [0.0, 0.5]]])
        >>> terms = mask_energy_terms(s, s.flip(-1), 0.5, beta=0.0, eta=0.0, n_labels=2)
        >>> mask_energy(torch.tensor([[[1, 0], [0, 1]]]), terms)  # keeps all of x_i's saliency: loses 0 of it
        tensor([0.])
    """
    shape = torch.broadcast_shapes(labels.shape, terms.unary.shape[:-1])
    unary = terms.unary.expand(*shape, terms.unary.shape[-1])
    energy = unary.gather(-1, labels.expand(shape).unsqueeze(-1)).squeeze(-1).sum((-1, -2))
    mask = terms.levels[labels]
    energy = energy + (terms.right * (mask[..., :, 1:] - mask[..., :, :-1]).square()).sum((-1, -2))
    return energy + (terms.down * (mask[..., 1:, :] - mask[..., :-1, :]).square()).sum((-1, -2))


def puzzle_energy(
    mask: Tensor,
    saliency_a: Tensor,
    saliency_b: Tensor,
    lam: Tensor | float,
    *,
    beta: float,
    gamma: float = 0.0,
    eta: float,
    n_labels: int = 3,
    area: Tensor | None = None,
    boundary: BoundaryCosts | None = None,
) -> Tensor:
    """The energy of :func:`mask_energy_terms` for ``(..., N, kh, kw)`` block masks with values in ``{j/(L-1)}``.

    Example:
        >>> sa = torch.tensor([[[0.4, 0.1], [0.0, 0.0]]]); sb = torch.tensor([[[0.0, 0.1], [0.2, 0.2]]])
        >>> m = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
        >>> round(puzzle_energy(m, sa, sb, 0.5, beta=0.0, eta=0.0).item(), 4)  # loses 0.1 of s_b (its top row)
        0.1
    """
    terms = mask_energy_terms(
        saliency_a, saliency_b, lam, beta=beta, gamma=gamma, eta=eta, n_labels=n_labels, area=area, boundary=boundary
    )
    scaled = mask.to(torch.float32) * (n_labels - 1)
    labels = scaled.round().long()
    if not torch.allclose(scaled, labels.to(torch.float32), atol=1e-4):
        raise MixlabValueError(f"mask values must be multiples of 1/{n_labels - 1} for n_labels={n_labels}")
    return mask_energy(labels, terms)


# ------------------------------------------------------------------ the mask solver


def solve_puzzle_mask(terms: MaskEnergy, method: str = "auto") -> Tensor:
    """Minimise a :class:`MaskEnergy` over block labels for a whole batch at once: ``(N, kh, kw)`` label indices.

    ``method="exact"``: dynamic programming over the grid's rows (Viterbi
    over the ``L**kw`` labellings of a row), batched: the exact minimiser, for
    rows of at most 512 labellings (binary up to 9 blocks, three labels up to
    5). ``method="icm"``: starts from the optimum over masks constant on
    2x2 groups of blocks (two alignments, solved recursively) and from the
    per-block best label, then up to three sweeps of iterated conditional
    modes over whole rows and columns: each half-sweep solves every other row
    (or column) exactly given its neighbours (a chain, by Viterbi), so the
    energy never rises; the lowest energy per sample is kept (with the
    authors' weights: the optimum on about 9 instances in 10 of random 8x8
    binary problems, 99% of its energy gain over a uniform mask). ``"auto"``:
    exact while a row has at most 81 labellings (binary up to 6 blocks per
    side, three labels up to 4: CIFAR's 2x2 and 4x4 grids), ``"icm"`` beyond.
    The authors run alpha-beta swap graph cuts per sample on the CPU (pyGCO),
    on integer-rounded costs; for three labels that is approximate too.

    Example:
        >>> sa = torch.tensor([[[0.5, 0.0], [0.0, 0.0]]]); sb = torch.tensor([[[0.0, 0.0], [0.0, 0.5]]])
        >>> terms = mask_energy_terms(sa, sb, 0.5, beta=0.1, eta=0.0, n_labels=2)
        >>> solve_puzzle_mask(terms)
        tensor([[[1, 0],
                 [0, 0]]])
    """
    method = check_choice("solver", method, SOLVERS)
    n_labels, width = terms.levels.numel(), terms.unary.shape[2]
    if method == "auto":
        method = "exact" if n_labels**width <= AUTO_EXACT_STATES else "icm"
    if method == "exact":
        if n_labels**width > EXACT_LIMIT_STATES:
            raise MixlabValueError(
                f"the exact solver takes rows of at most {EXACT_LIMIT_STATES} labellings; "
                f"got {n_labels} labels on {width} blocks per row ({n_labels**width})"
            )
        return _solve_rows_exact(terms)
    return _solve_icm(terms)


@functools.lru_cache(maxsize=16)
def _row_states(n_labels: int, width: int, device: torch.device) -> Tensor:
    """``(L**width, width)`` long: every labelling of a row."""
    codes = torch.arange(n_labels**width, device=device)
    powers = n_labels ** torch.arange(width, device=device)
    return torch.div(codes[:, None], powers, rounding_mode="floor") % n_labels


def _solve_rows_exact(terms: MaskEnergy) -> Tensor:
    """Exact minimiser by dynamic programming over rows (the rows form a chain of ``L**kw`` states)."""
    unary, right, down, levels = terms
    n_labels, height = levels.numel(), unary.shape[1]
    states = _row_states(n_labels, unary.shape[2], unary.device)  # (S, kw)
    values = levels[states]
    one_hot = F.one_hot(states, n_labels).to(unary.dtype)  # (S, kw, L)
    row_cost = unary.flatten(2) @ one_hot.flatten(1).T + right @ (values[:, 1:] - values[:, :-1]).square().T
    states_n = states.shape[0]
    jumps = (values[:, None, :] - values[None, :, :]).square().flatten(0, 1)  # (S*S, kw): row r state s, r+1 state t
    cost, back = row_cost[:, 0], []
    for r in range(1, height):
        step = (down[:, r - 1] @ jumps.T).view(-1, states_n, states_n)
        cost, arg = (cost.unsqueeze(-1) + step).min(dim=1)
        cost = cost + row_cost[:, r]
        back.append(arg)
    state = cost.argmin(dim=1)
    rows = [state]
    for arg in reversed(back):
        state = arg.gather(1, state.unsqueeze(1)).squeeze(1)
        rows.append(state)
    return states[torch.stack(rows[::-1], dim=1)]


def _solve_icm(terms: MaskEnergy, shifts: tuple[int, ...] = COARSE_SHIFTS, sweeps: int = ICM_SWEEPS) -> Tensor:
    """Coarse starts and the per-block best label, refined by row/column ICM; the lowest energy per sample."""
    n, height, width, _ = terms.unary.shape
    coarse = min(height, width) >= 3  # a 2x2 grid has no coarser level
    starts = [terms.unary.argmin(-1)] + ([_coarse_start(terms, shift) for shift in shifts] if coarse else [])
    labels = torch.cat(starts)  # (S * N, kh, kw): every start refined in one batch
    stacked = _repeat(terms, len(starts))
    transposed = _transpose(stacked)
    for _ in range(sweeps):
        before = labels
        for parity in (0, 1):
            labels = _chain_sweep(labels, stacked, parity)
        for parity in (0, 1):
            labels = _chain_sweep(labels.transpose(1, 2), transposed, parity).transpose(1, 2)
        if torch.equal(before, labels):
            break
    energies = mask_energy(labels, stacked).view(len(starts), n)
    best = energies.argmin(dim=0)
    return labels.view(len(starts), n, height, width)[best, torch.arange(n, device=best.device)]


def _repeat(terms: MaskEnergy, times: int) -> MaskEnergy:
    return MaskEnergy(*(t.repeat(times, *([1] * (t.ndim - 1))) for t in terms[:3]), terms.levels)


def _transpose(terms: MaskEnergy) -> MaskEnergy:
    """The same energy with rows and columns swapped."""
    return MaskEnergy(
        terms.unary.transpose(1, 2), terms.down.transpose(1, 2), terms.right.transpose(1, 2), terms.levels
    )


def _chain_sweep(labels: Tensor, terms: MaskEnergy, parity: int) -> Tensor:
    """Relabel every row of the given parity optimally, the rows above and below (the other parity) held fixed."""
    unary, right, down, levels = terms
    values = levels[labels].unsqueeze(-1)
    conditioned = unary.clone()
    conditioned[:, 1:] += down.unsqueeze(-1) * (levels - values[:, :-1]).square()  # the row above
    conditioned[:, :-1] += down.unsqueeze(-1) * (levels - values[:, 1:]).square()  # the row below
    out = labels.clone()
    out[:, parity::2] = _chain_argmin(conditioned[:, parity::2], right[:, parity::2], levels)
    return out


def _chain_argmin(unary: Tensor, pair: Tensor, levels: Tensor) -> Tensor:
    """Viterbi on each row as a chain: ``unary`` ``(B, R, C, L)``, ``pair`` ``(B, R, C - 1)`` -> ``(B, R, C)``."""
    jump = (levels[:, None] - levels[None, :]).square()
    # the cost of each step from label l at column c to label l' at c + 1, that label's unary included
    steps = pair[..., None, None] * jump + unary[:, :, 1:].unsqueeze(-2)  # (B, R, C - 1, L, L)
    cost, back = unary[:, :, 0], []
    for c in range(steps.shape[2]):
        cost, arg = (cost.unsqueeze(-1) + steps[:, :, c]).min(dim=-2)
        back.append(arg)
    label = cost.argmin(dim=-1)
    out = [label]
    for arg in reversed(back):
        label = arg.gather(-1, label.unsqueeze(-1)).squeeze(-1)
        out.append(label)
    return torch.stack(out[::-1], dim=-1)


def _coarse_start(terms: MaskEnergy, shift: int) -> Tensor:
    """The best labels among those constant on 2x2 groups of blocks (groups start at block ``shift``)."""
    coarse, row_groups, col_groups = _coarsen(terms, shift)
    exact = coarse.levels.numel() ** coarse.unary.shape[2] <= AUTO_EXACT_STATES
    labels = _solve_rows_exact(coarse) if exact else _solve_icm(coarse, COARSE_SHIFTS[:1], COARSE_SWEEPS)
    return labels[:, row_groups][:, :, col_groups]


def _coarsen(terms: MaskEnergy, shift: int) -> tuple[MaskEnergy, Tensor, Tensor]:
    """The energy of labels constant on groups of 2 blocks per side: unaries add up, edges inside a group vanish."""
    unary, right, down, levels = terms
    member_r, cross_r, groups_r = _groups(unary.shape[1], shift, unary.device)
    member_c, cross_c, groups_c = _groups(unary.shape[2], shift, unary.device)
    coarse_unary = torch.einsum("gr,nrcl,hc->nghl", member_r, unary, member_c)
    coarse_right = member_r @ right @ cross_c
    coarse_down = cross_r.T @ down @ member_c.T
    return MaskEnergy(coarse_unary, coarse_right, coarse_down, levels), groups_r, groups_c


@functools.lru_cache(maxsize=32)
def _groups(k: int, shift: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Group membership ``(kc, k)``, the map of crossing edges to coarse edges ``(k-1, kc-1)``, groups ``(k,)``."""
    coarse = (k + shift + 1) // 2
    groups = (torch.arange(k, device=device) + shift) // 2
    member = F.one_hot(groups, coarse).T.to(torch.float32)
    crossing = (groups[1:] != groups[:-1]).to(torch.float32)
    cross = F.one_hot(groups[:-1], coarse)[:, :-1].to(torch.float32) * crossing[:, None]
    return member, cross, groups


# ------------------------------------------------------------------ transport


@functools.lru_cache(maxsize=32)
def transport_costs(grid: BlockGrid) -> tuple[Tensor, Tensor | None]:
    """The cost of moving a cell's content to each other cell, ``(T, T)``, and which moves are impossible.

    The squared distance between cells, each axis divided by ``(cells - 1)²``
    (the authors' ``cost_matrix``: 2 from corner to corner). Content moves only
    between cells of the same pixel shape: ``blocked`` is ``True`` where it
    cannot, or ``None`` when all cells have one shape.

    Example:
        >>> cost, blocked = transport_costs(block_grid(4, 4, 2, torch.device("cpu")))
        >>> cost[0].tolist(), blocked
        ([0.0, 1.0, 1.0, 2.0], None)
    """
    kh, kw = grid.counts
    device = grid.area.device
    rows = torch.arange(kh, device=device, dtype=torch.float32).repeat_interleave(kw)
    cols = torch.arange(kw, device=device, dtype=torch.float32).repeat(kh)
    cost = (rows[:, None] - rows[None, :]).square() / max(kh - 1, 1) ** 2
    cost = cost + (cols[:, None] - cols[None, :]).square() / max(kw - 1, 1) ** 2
    blocked = grid.shape_id[:, None] != grid.shape_id[None, :]
    return cost, (blocked if bool(blocked.any()) else None)


def transport_plan(
    saliency: Tensor, shown: Tensor, cost: Tensor, blocked: Tensor | None = None, *, weight: float, iterations: int
) -> Tensor:
    """The authors' transport algorithm: which cell's content lands in each cell, ``(B, T)`` (-1: none).

    With ``C`` the cell-to-cell cost and ``z`` the cells the mask shows, the
    cost of moving cell ``i`` to ``j`` is ``ξ C_ij - s_i z_j``. Each iteration
    every cell picks its cheapest destination; each destination goes to the
    cheapest of the cells that picked it, where a destination nobody cheaper
    than 0 picked counts the non-choosers as 0 (so it may stay empty); each
    loser adds 1 to the cost of the destination it lost. The plan of the last
    iteration is returned. This is a greedy approximation of the paper's
    saliency-discounted optimal transport (an assignment over block
    permutations), and what the authors' ``mask_transport`` computes (their
    Algorithm 1, ``n_iter`` = cells per side). Kim et al., ICML 2020, arXiv 2009.06962, Sec. 4.

    Args:
        saliency: ``(B, T)`` cell saliency of the source (each row summing to 1).
        shown: ``(B, T)`` bool, the cells where the mask shows this source (``z``).
        cost: ``(T, T)`` the transport cost ``C`` (:func:`transport_costs`).
        blocked: ``(T, T)`` bool, moves never taken (cells of different shapes), or ``None``.
        weight: ``ξ``, the authors' ``t_eps``.
        iterations: rounds of the algorithm (>= 1).

    Example:
        >>> cost, _ = transport_costs(block_grid(2, 2, 2, torch.device("cpu")))
        >>> s = torch.tensor([[0.1, 0.0, 0.0, 0.9]])  # the salient cell is bottom right ...
        >>> z = torch.tensor([[True, False, False, False]])  # ... but only the top left is shown
        >>> transport_plan(s, z, cost, weight=0.2, iterations=2).tolist()  # cell 3 moves to 0; hidden cells get nothing
        [[3, -1, -1, -1]]
    """
    b, t = saliency.shape
    base = weight * cost if blocked is None else weight * cost + FORBIDDEN * blocked.to(cost.dtype)
    full = torch.addcmul(
        base, saliency.to(torch.float32).unsqueeze(2), shown.to(torch.float32).unsqueeze(1), value=-1.0
    )
    rows = torch.arange(t, device=full.device).expand(b, t)
    choice = full.argmin(dim=2)
    winner = rows
    for step in range(iterations):
        winner = _column_winners(full.gather(2, choice.unsqueeze(2)).squeeze(2), choice)
        if step == iterations - 1:
            break
        lost = winner.gather(1, choice) != rows
        if not bool(lost.any()):
            break
        full.scatter_add_(2, choice.unsqueeze(2), lost.to(full.dtype).unsqueeze(2))
        where = lost.nonzero(as_tuple=True)  # only the losers' costs changed: only they choose again
        choice = choice.index_put(where, full[where].argmin(dim=1))
    return winner


def _column_winners(chosen: Tensor, choice: Tensor) -> Tensor:
    """For each destination, the first row with the lowest cost among its choosers and 0 for the others; -1 if none.

    This is ``argmin`` over rows of ``plan * cost`` (non-choosers count 0), kept only when the row chose it.
    """
    b, t = choice.shape
    rows = torch.arange(t, device=choice.device).expand(b, t)
    lowest = torch.full((b, t), torch.inf, device=chosen.device).scatter_reduce(1, choice, chosen, "amin")
    choosers = torch.zeros((b, t), dtype=torch.long, device=choice.device).scatter_add_(
        1, choice, torch.ones_like(choice)
    )
    # the first row not choosing a destination: row 0, unless a prefix of rows all chose it
    first_other = torch.where(choice != choice[:, :1], rows, t).min(dim=1).values
    first_zero = torch.where(rows == choice[:, :1], first_other.unsqueeze(1), 0)  # (B, T) per destination
    lowest = torch.where(choosers < t, lowest.clamp_max(0.0), lowest)
    best = torch.where(chosen == lowest.gather(1, choice), rows, t)
    first_chooser = torch.full((b, t), t, device=choice.device).scatter_reduce(1, choice, best, "amin")
    winner = torch.where((lowest == 0) & (choosers < t), torch.minimum(first_chooser, first_zero), first_chooser)
    valid = (winner < t) & (choice.gather(1, winner.clamp_max(t - 1)) == rows)
    return torch.where(valid, winner, -1)


def cell_pixels(sources: Tensor, grid: BlockGrid) -> Tensor:
    """Pixel indices realising a cell move: ``(B, H*W)``, output pixel -> flat source pixel in the same image.

    ``sources[b, j]`` is the cell whose content lands in cell ``j`` (-1 keeps
    ``j``'s own content); cells exchange content only with cells of their shape.

    Example:
        >>> grid = block_grid(2, 4, (1, 2), torch.device("cpu"))  # two 2x2-pixel cells side by side
        >>> cell_pixels(torch.tensor([[1, -1]]), grid).tolist()
        [[2, 3, 2, 3, 6, 7, 6, 7]]
    """
    kw, width = grid.counts[1], grid.col_block.shape[0]
    own = torch.arange(grid.cells, device=sources.device)
    sources = torch.where(sources < 0, own, sources)
    starts = (grid.row_start[:, None] * width + grid.col_start[None, :]).flatten()
    shifts = starts[sources] - starts
    pixel_cell = (grid.row_block[:, None] * kw + grid.col_block[None, :]).flatten()
    return torch.arange(pixel_cell.shape[0], device=sources.device) + shifts.index_select(1, pixel_cell)


# ------------------------------------------------------------------ the mixer


class PuzzleMix(Mixer):
    """PuzzleMix: the saliency-optimal block mask between two images (labels 0, 1/2, 1), with salient cells transported.

    Per batch a grid of ``k x k`` blocks is drawn from ``blocks``, skipping
    the counts whose blocks would be smaller than 2 pixels (the authors'
    smallest: 16 blocks on CIFAR's 32x32; on 28x28 images 16 is skipped).
    The saliency (``context["saliency"]``: the channel RMS of the input
    gradient of the clean loss, computed by
    :class:`~mixlab.methods.context.MixContext`) is summed per block and
    normalised per sample. The block mask minimises the energy of
    :func:`mask_energy_terms` (saliency lost, smoothness ``β/(16k)``, local
    statistics ``β γ/(16k)``, binomial(λ) prior ``η``) with labels
    ``0, 1/(L-1), ..., 1`` and is upsampled by nearest neighbour. With
    ``transport``, each source's content is moved, cell by cell, into the
    cells its mask shows (:func:`transport_plan`, the authors' algorithm) on
    cells of about ``transport_size`` pixels (never larger than the blocks;
    its cost grows as the square of the number of cells, so raise
    ``transport_size`` on large images).
    The output is ``m x_i' + (1 - m) x_j'`` with ``x_i'``, ``x_j'`` the
    transported images; ``lam`` is the mean of ``m`` (the authors' ``ratio``)
    and ``mb.mask`` the pixel mask. Samples whose drawn λ is exactly 0 or 1
    are left unmixed.

    Defaults are the authors' CIFAR-100 command (README of snu-mllab/PuzzleMix):
    ``mixup_alpha=1``, ``beta=1.2``, ``gamma=0.5``, ``eta=0.2``, ``n_labels=3``,
    ``neigh_size=4``, ``transport=True``, ``t_size=4``, ``t_eps=0.8``, block
    counts {2, 4, 8, 16} and ``clean_lam=0`` (``adv_p=0``); train with
    ``mix.loss: bce_softmax`` (the authors' ``BCELoss(softmax(logits), target)``).
    Kim, Choo and Song, ICML 2020, arXiv 2009.06962.

    Deviations from the authors' code:

    - Solver: no graph cut. Rows of up to 81 labellings (CIFAR's 2x2 and 4x4
      grids) are solved exactly by dynamic programming; larger grids by
      coarse-to-fine starts and row/column ICM (:func:`solve_puzzle_mask`). The
      authors use alpha-beta swap on costs rounded to integers (pyGCO), itself
      approximate for three labels.
    - Grids and cells follow :func:`~mixlab.masks.block_index`, so any image
      size works (the authors need sizes divisible by the block size): block
      saliency is the normalised block sum (their average pool, the same on
      equal blocks), the label prior is weighted by block area (their ``1/k²``),
      and content moves only between cells of the same pixel shape.
    - Transport cells that no content wins keep their own content (the
      authors' plan leaves them zero; only a shown cell whose own saliency is
      exactly 0 can be one).
    - The local-statistics term compares the inputs as given unless
      ``input_std`` says how they were normalised (the authors compare pixels
      in [0, 1]).
    - No adversarial perturbation (``adv_p``): the CIFAR command does not use
      it, and it needs the signed input gradient, which the context does not keep.

    Args:
        blocks: the block counts per side to draw from, each in [2, 64] (default ``(2, 4, 8, 16)``).
        beta: label-smoothness weight >= 0 (the pairwise weight is ``beta / (16 k)``).
        gamma: local-statistics weight >= 0 (0 skips computing it).
        eta: label-prior weight >= 0.
        n_labels: mask values per block: 2 (``{0, 1}``), 3 (adds ``1/2``; default) or 4.
        neighbour_size: the pixels averaged across each boundary by the local-statistics term (``neigh_size``).
        transport: move salient content into the shown region.
        transport_weight: ``ξ`` (``t_eps``), >= 0: the cost of moving content by the whole image side
            (squared distances, 2 from corner to corner), against the moved cell's saliency share.
        transport_size: the transport cell size in pixels (``t_size``); ``None``: the mask's blocks.
        input_std: the per-channel standard deviation the inputs were divided by (one float or one per
            channel), so that the local-statistics term sees pixel-scale differences; ``None``: as given.
        clean_weight: ``clean_lam``: with ``> 0`` the saliency pass runs in train mode and its clean loss,
            times ``2 * clean_weight / num_classes`` (the authors' scale for their BCE loss), is added
            through :meth:`loss_terms`. 0 (the CIFAR default) adds nothing.
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
        blocks: Sequence[int] = (2, 4, 8, 16),
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        n_labels: int = 3,
        neighbour_size: int = 4,
        transport: bool = True,
        transport_weight: float = 0.8,
        transport_size: int | None = 4,
        input_std: float | Sequence[float] | None = None,
        clean_weight: float = 0.0,
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
        self.n_labels = check_int("n_labels", n_labels, minimum=MIN_LABELS)
        if self.n_labels > MAX_LABELS:
            raise MixlabValueError(f"n_labels must be an int in [{MIN_LABELS}, {MAX_LABELS}]; got {n_labels!r}")
        self.neighbour_size = check_int("neighbour_size", neighbour_size, minimum=1)
        if not isinstance(transport, bool):
            raise MixlabTypeError(f"transport must be a bool; got {transport!r}")
        self.transport = transport
        self.transport_weight = check_non_negative("transport_weight", transport_weight)
        self.transport_size = None if transport_size is None else check_int("transport_size", transport_size, minimum=1)
        self.input_std = _check_std(input_std)
        self.clean_weight = check_non_negative("clean_weight", clean_weight)
        self.solver = check_choice("solver", solver, SOLVERS)
        if self.solver == "exact" and self.n_labels ** max(self.blocks) > EXACT_LIMIT_STATES:
            raise MixlabValueError(
                f"solver='exact' takes rows of at most {EXACT_LIMIT_STATES} labellings (n_labels ** blocks); "
                f"got n_labels={self.n_labels} with blocks={self.blocks}"
            )

    @property
    def needs(self) -> MixerNeeds:
        """The input saliency of the clean loss; with ``clean_weight > 0`` also that loss (train-mode pass).

        Example:
            >>> PuzzleMix().needs.saliency, PuzzleMix().needs.clean_loss, PuzzleMix(clean_weight=1.0).needs.clean_loss
            (True, False, True)
        """
        return MixerNeeds(saliency=True, clean_loss=self.clean_weight > 0)

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

    def loss_terms(self, mb: MixedBatch, outputs: Tensor) -> dict[str, Tensor]:
        """``{"clean": 2 · clean_weight / K · CE(clean)}`` when the batch kept the clean loss; else nothing.

        The authors add ``2 * clean_lam * CE / num_classes`` to their loss (``main.py``),
        scaled for their BCE over ``K`` classes.

        Example:
            >>> mb = MixedBatch.unmixed(torch.zeros(2, 1), torch.tensor([0, 1]))
            >>> mb.aux["clean_loss"] = torch.tensor(1.5)
            >>> PuzzleMix(clean_weight=1.0).loss_terms(mb, torch.zeros(2, 10))
            {'clean': tensor(0.3000)}
        """
        return {} if mb is None else clean_loss_terms(mb.aux, outputs, self.clean_weight)

    def apply(self, x: Tensor, y: Tensor, params: MixParams, *, context: dict[str, Any] | None = None) -> MixedBatch:
        """Mix as ``params`` say; with ``clean_weight > 0`` the batch keeps ``context["clean_loss"]``."""
        mb = super().apply(x, y, params, context=context)
        keep_clean_loss(mb.aux, context, self.clean_weight)
        return mb

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        n, _, height, width = x.shape
        saliency = _checked_saliency(context[SALIENCY], x)
        # blocks of at least 2 pixels (the authors' smallest: 16 blocks on 32x32), else of at least 1
        usable = [k for k in self.blocks if 2 * k <= min(height, width)]
        usable = usable or [k for k in self.blocks if k <= min(height, width)] or [min(self.blocks)]
        grid = block_grid(height, width, usable[int(rng.integers(len(usable)))], x.device)
        ratio = ratios_to_device(lam, n, x.device)
        with torch.no_grad():
            sal_a = block_saliency(saliency, grid.counts)
            boundary = None
            if self.gamma and self.beta:
                std = None if self.input_std is None else self._std_for(x)
                boundary = boundary_costs(x, perm, grid, cell_size=self.neighbour_size, input_std=std)
            terms = mask_energy_terms(
                sal_a, sal_a.index_select(0, perm), ratio, beta=self.beta, gamma=self.gamma, eta=self.eta,
                n_labels=self.n_labels, area=grid.area, boundary=boundary,
            )  # fmt: skip
            levels = terms.levels[solve_puzzle_mask(terms, self.solver)]  # (N, kh, kw) weight of x_i
            whole, none = (ratio >= 1.0).view(-1, 1, 1), (ratio <= 0.0).view(-1, 1, 1)
            levels = torch.where(whole, 1.0, torch.where(none, 0.0, levels))
            weight = expand_blocks(levels, (height, width)).unsqueeze(1).to(x.dtype)
            extra: dict[str, Any] = {"blocks": grid.counts, "block_mask": levels}
            if self.transport:
                extra["sources"] = self._transport(saliency, levels, perm, grid, (whole | none).view(-1))
        return MixParams(perm=perm, lam=label_weight(weight, n), weight=weight, extra=extra)

    def _std_for(self, x: Tensor) -> Tensor:
        std = torch.tensor(self.input_std, dtype=torch.float32, device=x.device)
        if std.numel() == 1:
            return std.expand(x.shape[1])
        if std.numel() != x.shape[1]:
            raise MixlabValueError(f"input_std has {std.numel()} channels; the inputs have {x.shape[1]}")
        return std

    def _transport(self, saliency: Tensor, levels: Tensor, perm: Tensor, grid: BlockGrid, unmixed: Tensor) -> Tensor:
        """``(2, N, H*W)``: the pixel of ``x_i`` (then of its partner) shown at each output pixel."""
        height, width = grid.row_block.shape[0], grid.col_block.shape[0]
        counts = transport_cells(height, width, grid.counts, self.transport_size)
        cells = block_grid(height, width, counts, levels.device)
        per = (counts[0] // grid.counts[0], counts[1] // grid.counts[1])
        cell_mask = levels.repeat_interleave(per[0], 1).repeat_interleave(per[1], 2).flatten(1)  # nested in the blocks
        cell_saliency = block_saliency(saliency, cells.counts).flatten(1)
        cost, blocked = transport_costs(cells)
        sources = transport_plan(
            torch.cat([cell_saliency, cell_saliency.index_select(0, perm)]),
            torch.cat([cell_mask > 0, cell_mask < 1]), cost, blocked,
            weight=self.transport_weight, iterations=max(cells.counts),
        ).view(2, -1, cells.cells)  # fmt: skip
        sources[0] = torch.where(unmixed.unsqueeze(1), -1, sources[0])  # unmixed samples stay as they are
        return cell_pixels(sources.flatten(0, 1), cells).view(2, levels.shape[0], -1)

    def _mix(self, x: Tensor, params: MixParams, context: dict[str, Any]) -> Tensor:
        sources = params.extra.get("sources")
        if sources is None:
            return super()._mix(x, params, context)
        n, c = x.shape[:2]
        flat = x.flatten(2)
        own = flat.gather(2, sources[0].unsqueeze(1).expand(n, c, -1))
        partner = flat.index_select(0, params.perm).gather(2, sources[1].unsqueeze(1).expand(n, c, -1))
        out = torch.lerp(partner, own, params.weight.flatten(2)).view_as(x)  # exact where the mask is 0 or 1
        out = out.contiguous(memory_format=torch.channels_last if _channels_last(x) else torch.contiguous_format)
        return x.copy_(out) if self.inplace else out

    def __repr__(self) -> str:
        return (
            f"PuzzleMix(lam={self.lam_sampler!r}, blocks={self.blocks}, beta={self.beta}, gamma={self.gamma}, "
            f"eta={self.eta}, n_labels={self.n_labels}, transport={self.transport}, "
            f"transport_weight={self.transport_weight}, transport_size={self.transport_size}, "
            f"clean_weight={self.clean_weight}, solver={self.solver!r}, lam_mode={self.lam_mode!r}, p={self.p})"
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


def _check_std(std: float | Sequence[float] | None) -> tuple[float, ...] | None:
    """``input_std`` as a tuple of positive floats, or ``None``."""
    if std is None:
        return None
    values = (std,) if not isinstance(std, Sequence) or isinstance(std, (str, bytes)) else tuple(std)
    if not values:
        raise MixlabValueError("input_std must be a positive float or one per channel; got an empty list")
    checked = tuple(check_non_negative("input_std", v) for v in values)
    if min(checked) <= 0:
        raise MixlabValueError(f"input_std must be positive; got {std!r}")
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
    "MaskEnergy",
    "PuzzleMix",
    "block_grid",
    "boundary_costs",
    "cell_pixels",
    "cells_per_block",
    "label_prior",
    "mask_energy",
    "mask_energy_terms",
    "puzzle_energy",
    "solve_puzzle_mask",
    "transport_cells",
    "transport_costs",
    "transport_plan",
]
