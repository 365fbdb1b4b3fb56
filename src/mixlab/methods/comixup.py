"""Co-Mixup: a batch of mixed samples labelled jointly, trading block saliency, smoothness and supermodular diversity.

Kim, Choo, Jeong and Song, "Co-Mixup: Saliency Guided Joint Mixup with
Supermodular Diversity", ICLR 2021, arXiv 2102.03065.

Every output ``j`` is a block labelling ``z_j`` of a coarse grid (``K`` blocks):
each block comes from one source. The labelling of the whole batch minimises

``E(z) = sum_j [ unary_j(z_j) + beta/K * cut(z_j) ] + gamma/K * D(z)``

- ``unary``: minus the saliency of the chosen source block (each input's block
  saliency sums to 1), plus the label prior ``-eta/K * log(prior weight of the source)``;
- ``cut``: the number of neighbouring blocks with different sources (Potts smoothness);
- ``D``: the supermodular diversity penalty
  ``D = sum_j o_j . max(0, A o_{-j} - tau K)``, where ``o_j`` counts the blocks
  output ``j`` takes from each input, ``o_{-j}`` those all the other outputs take,
  and ``A = (1 - omega) I + omega C`` mixes in the input compatibility ``C``
  (the distance between the inputs' saliency peaks, scaled to sum to ``N``).
  Using an input (beyond ``tau`` of one image's blocks) in many outputs costs more
  the more it is already used: reuse of the same content is penalised.

Here each output mixes two sources (``x_i`` and its partner ``x_perm[i]``), so
``z`` is an ``(N, K)`` boolean array: ``True`` keeps ``x_i``'s block. See
:class:`CoMixup` for how this maps onto the paper and the solver used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int, check_non_negative, check_probability
from mixlab.methods.base import Mixer, MixParams, label_weight
from mixlab.methods.context import SALIENCY, MixerNeeds
from mixlab.sampling import torch_generator

#: Smallest prior weight taken inside the log of the label prior (as the paper's ``log(alpha + 1e-8)``).
PRIOR_FLOOR = 1e-8


# ------------------------------------------------------------------ the block grid


def block_grid(spatial: Sequence[int], grid: int | Sequence[int]) -> tuple[int, ...]:
    """Blocks per spatial dim: ``grid`` (one int for every dim, or one per dim), capped at each dim's size.

    Args:
        spatial: the spatial shape, e.g. ``(H, W)``.
        grid: blocks per dim (the paper's ``block_num``, 4 on CIFAR).

    Kim et al., ICLR 2021, arXiv 2102.03065 (the labelling works on a coarse grid).

    Example:
        >>> block_grid((28, 28), 4)
        (4, 4)
        >>> block_grid((3, 16), (4, 2))
        (3, 2)
    """
    per_dim = [grid] * len(spatial) if isinstance(grid, int) else list(grid)
    if len(per_dim) != len(spatial):
        raise MixlabValueError(f"grid must give one block count per spatial dim {tuple(spatial)}; got {grid!r}")
    return tuple(min(int(g), int(s)) for g, s in zip(per_dim, spatial, strict=True))


def block_index(size: int, blocks: int, device: torch.device | str = "cpu") -> Tensor:
    """The block of each position along one dim: ``floor(i * blocks / size)`` (blocks differ by at most one).

    Example:
        >>> block_index(10, 3).tolist()
        [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    """
    return torch.div(torch.arange(size, device=device) * blocks, size, rounding_mode="floor")


def block_saliency(saliency: Tensor, blocks: Sequence[int]) -> Tensor:
    """Sum ``(N, *spatial)`` saliency over each block; ``(N, K)`` float32, each row summing to 1.

    A sample with no (or non-finite) saliency gets a uniform row. The blocks are
    those of :func:`block_index` (exact also when a dim is not a multiple of the grid).

    Args:
        saliency: ``(N, *spatial)`` non-negative saliency (e.g. ``context["saliency"]``).
        blocks: blocks per spatial dim, as :func:`block_grid` returns.

    Kim et al., ICLR 2021, arXiv 2102.03065 (the saliency is pooled to the grid and normalised per input).

    Example:
        >>> s = torch.zeros(1, 4, 4)
        >>> s[0, :2, :2] = 1.0
        >>> block_saliency(s, (2, 2))
        tensor([[1., 0., 0., 0.]])
    """
    pooled = torch.nan_to_num(saliency.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).abs()
    for axis, (size, count) in enumerate(zip(saliency.shape[1:], blocks, strict=True)):
        assign = F.one_hot(block_index(size, count, pooled.device), count).to(pooled.dtype)
        pooled = (pooled.movedim(axis + 1, -1) @ assign).movedim(-1, axis + 1)
    pooled = pooled.flatten(1)
    total = pooled.sum(1, keepdim=True)
    uniform = torch.full_like(pooled, 1.0 / pooled.shape[1])
    return torch.where(total > 0, pooled / total.clamp_min(torch.finfo(pooled.dtype).tiny), uniform)


def grid_laplacian(blocks: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """The ``(K, K)`` Laplacian of the block grid (neighbours along each axis): ``cut(z) = z L z`` for binary ``z``.

    Example:
        >>> grid_laplacian((1, 3))
        tensor([[ 1., -1.,  0.],
                [-1.,  2., -1.],
                [ 0., -1.,  1.]])
    """
    count = math.prod(blocks)
    index = torch.arange(count, device=device).view(*blocks)
    laplacian = torch.zeros(count, count, device=device)
    for axis, size in enumerate(blocks):
        first = index.narrow(axis, 0, size - 1).reshape(-1)
        second = index.narrow(axis, 1, size - 1).reshape(-1)
        laplacian[first, second] = -1.0
        laplacian[second, first] = -1.0
    laplacian += torch.diag(-laplacian.sum(1))
    return laplacian


def blocks_to_mask(z: Tensor, blocks: Sequence[int], spatial: Sequence[int]) -> Tensor:
    """Expand an ``(N, K)`` block labelling to an ``(N, 1, *spatial)`` float32 mask (1 keeps ``x_i``).

    Example:
        >>> blocks_to_mask(torch.tensor([[True, False]]), (2,), (5,))
        tensor([[[1., 1., 1., 0., 0.]]])
    """
    mask = z.to(torch.float32).view(z.shape[0], *blocks)
    for axis, (size, count) in enumerate(zip(spatial, blocks, strict=True)):
        mask = mask.index_select(axis + 1, block_index(size, count, z.device))
    return mask.unsqueeze(1)


def compatibility_matrix(saliency_blocks: Tensor, blocks: Sequence[int], omega: float) -> Tensor:
    """``A = (1 - omega) I + omega C``: ``C`` the L1 distance between the inputs' saliency peaks, scaled to sum to N.

    Args:
        saliency_blocks: ``(N, K)`` block saliency.
        blocks: the block grid.
        omega: weight of the compatibility in [0, 1] (the paper's ``omega``, default 0.001).

    Kim et al., ICLR 2021, arXiv 2102.03065 (input compatibility in the diversity term).

    Example:
        >>> s = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
        >>> compatibility_matrix(s, (2, 2), 0.5)
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]])
    """
    n = saliency_blocks.shape[0]
    identity = torch.eye(n, device=saliency_blocks.device)
    peaks = torch.stack(torch.unravel_index(saliency_blocks.argmax(1), tuple(blocks)), 1).float()
    distance = torch.cdist(peaks, peaks, p=1.0)
    total = distance.sum()
    scaled = distance * (n / total) if bool(total > 0) else torch.zeros_like(distance)
    return (1.0 - omega) * identity + omega * scaled


# ------------------------------------------------------------------ the energy


def source_usage(z: Tensor, perm: Tensor) -> Tensor:
    """How many blocks each output takes from each input: ``(..., N, N)``, row ``j`` is ``o_j``.

    Output ``j`` takes ``sum(z_j)`` blocks from input ``j`` and the rest from ``perm[j]``.

    Example:
        >>> source_usage(torch.tensor([[True, True], [True, False]]), torch.tensor([1, 0]))
        tensor([[2., 0.],
                [1., 1.]])
    """
    n, k = z.shape[-2:]
    dtype = z.dtype if z.is_floating_point() else torch.float32
    own = z.to(dtype).sum(-1)
    partner = F.one_hot(perm, n).to(dtype) * (k - own).unsqueeze(-1)
    return torch.diag_embed(own) + partner


def diversity_penalty(usage: Tensor, compat: Tensor, tau_blocks: float) -> Tensor:
    """The supermodular diversity term ``D = sum_j o_j . max(0, A o_{-j} - tau_blocks)``.

    ``o_{-j}`` is the usage of every input by all outputs but ``j``. ``D`` is
    supermodular in the block-source indicators when ``A >= 0`` (a sum of
    products of non-negative, non-decreasing, supermodular functions).

    Args:
        usage: ``(..., N, N)`` block counts, row ``j`` the sources of output ``j``.
        compat: ``(N, N)`` non-negative ``A``.
        tau_blocks: the threshold ``tau * K`` below which reuse is free.

    Kim et al., ICLR 2021, arXiv 2102.03065 (supermodular diversity with the
    over-penalisation threshold ``tau``; see :class:`CoMixup` for the hinge form).

    Example:
        >>> usage = torch.tensor([[4.0, 0.0], [4.0, 0.0]])  # both outputs are copies of input 0
        >>> float(diversity_penalty(usage, torch.eye(2), 1.0))
        24.0
    """
    others = usage.sum(-2, keepdim=True) - usage
    pressure = others @ compat.transpose(0, 1)
    return (usage * (pressure - tau_blocks).clamp_min(0.0)).sum((-2, -1))


@dataclass(frozen=True)
class CoMixupProblem:
    """One batch's labelling problem: unary costs, smoothness, diversity; :meth:`energy` scores labellings.

    Build it with :meth:`build`. ``z[j, k] = True`` takes block ``k`` of output
    ``j`` from ``x_j``, ``False`` from ``x_perm[j]``.

    Attributes:
        unary_self: ``(N, K)`` cost of taking each block from ``x_j``.
        unary_partner: ``(N, K)`` cost of taking it from ``x_perm[j]``.
        perm: ``(N,)`` partners.
        compat: ``(N, N)`` the matrix ``A`` of the diversity term.
        laplacian: ``(K, K)`` grid Laplacian.
        blocks: the block grid.
        smoothness: ``beta / K`` per cut edge.
        diversity: ``gamma / K``.
        tau_blocks: ``tau * K``.
        fixed: ``(N,)`` outputs kept whole (``x_i`` unmixed, e.g. the ``p`` draw said no).

    Kim et al., ICLR 2021, arXiv 2102.03065.

    Example:
        >>> s = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
        >>> problem = CoMixupProblem.build(s, torch.tensor([1, 0]), torch.tensor([0.5, 0.5]), (2, 2))
        >>> z = solve_comixup(problem, generator=torch.Generator().manual_seed(0))
        >>> z[:, [0, 3]].tolist()  # each output keeps its own peak and takes its partner's
        [[True, False], [False, True]]
    """

    unary_self: Tensor
    unary_partner: Tensor
    perm: Tensor
    compat: Tensor
    laplacian: Tensor
    blocks: tuple[int, ...]
    smoothness: float
    diversity: float
    tau_blocks: float
    fixed: Tensor

    @classmethod
    def build(
        cls,
        saliency_blocks: Tensor,
        perm: Tensor,
        lam: Tensor,
        blocks: Sequence[int],
        *,
        beta: float = 0.32,
        gamma: float = 1.0,
        eta: float = 0.05,
        tau: float = 0.83,
        omega: float = 0.001,
        compat: Tensor | None = None,
    ) -> CoMixupProblem:
        """The problem for block saliency ``(N, K)`` (rows summing to 1), partners and prior ratios ``lam`` ``(N,)``.

        ``beta``, ``gamma`` and ``eta`` are divided by ``K`` and ``tau`` multiplied
        by it, so that the defaults (the paper's) do not depend on the grid.
        ``lam[j]`` is the prior weight of ``x_j`` in output ``j``: the label prior
        costs ``-eta/K log(lam)`` per block from ``x_j`` and ``-eta/K log(1 - lam)``
        per block from the partner. Outputs with ``lam >= 1`` are kept whole.
        ``compat`` overrides the matrix ``A`` built by :func:`compatibility_matrix`.

        Example:
            >>> p = CoMixupProblem.build(torch.full((2, 4), 0.25), torch.tensor([1, 0]), torch.tensor([0.5, 1.0]), (2, 2))
            >>> p.fixed.tolist(), p.tau_blocks
            ([False, True], 3.32)
        """
        k = saliency_blocks.shape[1]
        blocks = tuple(int(b) for b in blocks)
        if math.prod(blocks) != k:
            raise MixlabValueError(f"saliency has {k} blocks but the grid {blocks} has {math.prod(blocks)}")
        saliency_blocks = saliency_blocks.float()
        lam = lam.to(saliency_blocks).expand(saliency_blocks.shape[0])
        prior_self = -eta / k * torch.log(lam.clamp_min(PRIOR_FLOOR))
        prior_partner = -eta / k * torch.log((1.0 - lam).clamp_min(PRIOR_FLOOR))
        if compat is None:
            compat = compatibility_matrix(saliency_blocks, blocks, omega)
        return cls(
            unary_self=-saliency_blocks + prior_self[:, None],
            unary_partner=-saliency_blocks.index_select(0, perm) + prior_partner[:, None],
            perm=perm,
            compat=compat.to(saliency_blocks),
            laplacian=grid_laplacian(blocks, saliency_blocks.device),
            blocks=blocks,
            smoothness=beta / k,
            diversity=gamma / k,
            tau_blocks=tau * k,
            fixed=lam >= 1.0,
        )

    def energy(self, z: Tensor) -> Tensor:
        """Total energy of labellings ``z`` ``(..., N, K)`` (bool or 0/1), shape ``(...)``.

        Example:
            >>> p = CoMixupProblem.build(torch.full((2, 4), 0.25), torch.tensor([1, 0]), torch.tensor([0.5, 0.5]), (2, 2))
            >>> p.energy(torch.ones(3, 2, 4, dtype=torch.bool)).shape
            torch.Size([3])
        """
        zf = z.to(self.unary_self.dtype)
        gain = (self.unary_self - self.unary_partner).flatten()
        unary = self.unary_partner.sum() + zf.flatten(-2) @ gain
        cut = ((zf @ self.laplacian) * zf).sum((-2, -1))
        reuse = diversity_penalty(source_usage(zf, self.perm), self.compat, self.tau_blocks)
        return unary + self.smoothness * cut + self.diversity * reuse


# ------------------------------------------------------------------ the solver


class _Solver:
    """Precomputed pieces of the energy, for parallel block-coordinate descent over ``R`` restarts at once.

    Labellings are ``(R, N, K)`` bool. Costs of whole families of candidate
    labellings are computed without building their masks: the ``x`` best blocks
    by a ranking (unary sums are prefix sums, cuts come from the ranks of each
    edge's ends), and single-block flips (from the ICM field).
    """

    def __init__(self, problem: CoMixupProblem):
        self.problem = problem
        n, k = problem.unary_self.shape
        device, dtype = problem.unary_self.device, problem.unary_self.dtype
        self.k = k
        self.gain = problem.unary_self - problem.unary_partner  # cost of x_j's block over the partner's
        self.base = problem.unary_partner.sum()
        self.counts = torch.arange(k + 1, device=device, dtype=dtype)
        self.degree = problem.laplacian.diagonal()
        self.adjacency = torch.diag(self.degree) - problem.laplacian
        self.edges = (self.adjacency.triu() > 0).nonzero()  # (E, 2)
        self.gain_rank = self.gain.argsort(-1).argsort(-1)
        perm, compat = problem.perm, problem.compat
        self.partner_of = F.one_hot(perm, n).to(dtype)
        # Moving one block of output j from x_perm[j] to x_j changes A T by a column difference of A. Row j
        # below is that change at each output's own input (first N) and at its partner (last N); the
        # diagonal is zeroed because an output's own usage never presses on itself.
        shift = (compat - compat[:, perm]).transpose(0, 1)
        eye = torch.eye(n, dtype=torch.bool, device=device)
        self.slope = torch.cat([shift.masked_fill(eye, 0.0), shift[:, perm].masked_fill(eye, 0.0)], 1).unsqueeze(0)
        self.inverse_slope = torch.where(self.slope == 0, 0.0, 1.0 / self.slope)
        self.rising, self.falling = (self.slope > 0).to(dtype), (self.slope < 0).to(dtype)
        self.flat = 1.0 - self.rising - self.falling
        diagonal = compat.diagonal()
        rows = torch.arange(n, device=device)
        self.own_self = (diagonal, compat[rows, perm])
        self.own_partner = (compat[perm, rows], diagonal[perm])

    def excess_pressure(self, own: Tensor) -> tuple[Tensor, Tensor]:
        """``(A o_{-j})`` minus ``tau K`` at input ``j`` and at ``perm[j]``, for counts ``own`` ``(R, N)``."""
        k, problem = self.k, self.problem
        total = own + (k - own) @ self.partner_of
        pressure = total @ problem.compat.transpose(0, 1)
        at_self = pressure - self.own_self[0] * own - self.own_self[1] * (k - own) - problem.tau_blocks
        at_partner = (
            pressure.index_select(1, problem.perm)
            - self.own_partner[0] * own
            - self.own_partner[1] * (k - own)
            - problem.tau_blocks
        )
        return at_self, at_partner

    def reuse(self, own: Tensor) -> Tensor:
        """The diversity penalty ``D`` of counts ``own`` ``(R, N)``, shape ``(R,)``."""
        at_self, at_partner = self.excess_pressure(own)
        return (own * at_self.clamp_min(0.0) + (self.k - own) * at_partner.clamp_min(0.0)).sum(1)

    def reuse_profile(self, own: Tensor) -> Tensor:
        """``(R, N, K + 1)``: the exact ``D`` when output ``j`` alone takes ``x`` blocks from ``x_j``.

        Each other output's term ``w * max(0, q + (x - own_j) m)`` is linear in ``x``
        on a prefix or suffix of ``0..K`` and zero elsewhere: the sums of its two
        coefficients are scattered to the ends of that range and accumulated, in
        ``O(R N^2)`` rather than ``O(R N^2 K)``.
        """
        k = self.k
        at_self, at_partner = self.excess_pressure(own)
        excess = torch.cat([at_self, at_partner], 1).unsqueeze(1)  # (R, 1, 2N)
        weight = torch.cat([own, k - own], 1).unsqueeze(1)
        mine = own.unsqueeze(-1)
        # The term is positive for x > mine - excess / slope when slope > 0, below it when slope < 0.
        edge = (mine - excess * self.inverse_slope).clamp_(-1.0, k + 2.0)
        start = (edge.floor() + 1.0).clamp_(0.0, k + 1.0).mul_(self.rising).long()
        stop = edge.ceil_().clamp_(0.0, k + 1.0).mul_(self.falling)
        stop += (k + 1.0) * (self.rising + self.flat * (excess > 0))
        stop = stop.long()
        constant = weight * (excess - mine * self.slope)
        linear = weight * self.slope
        ends = torch.zeros(2, *own.shape, k + 2, device=own.device, dtype=own.dtype)
        ends[0].scatter_add_(-1, start, constant).scatter_add_(-1, stop, constant.neg_())
        ends[1].scatter_add_(-1, start, linear).scatter_add_(-1, stop, linear.neg_())
        sums = ends.cumsum(-1)[..., : k + 1]
        others = sums[0] + self.counts * sums[1]
        self_now, partner_now = at_self.clamp_min(0.0), at_partner.clamp_min(0.0)
        own_before = own * self_now + (k - own) * partner_now
        own_after = self.counts * self_now.unsqueeze(-1) + (k - self.counts) * partner_now.unsqueeze(-1)
        return others - own_before.unsqueeze(-1) + own_after

    def energy(self, z: Tensor) -> Tensor:
        """Total energy of ``(R, N, K)`` labellings, shape ``(R,)`` (equals :meth:`CoMixupProblem.energy`)."""
        zf = z.to(self.gain.dtype)
        cut = ((zf @ self.problem.laplacian) * zf).sum((1, 2))
        unary = self.base + (zf * self.gain).sum((1, 2))
        return unary + self.problem.smoothness * cut + self.problem.diversity * self.reuse(zf.sum(-1))

    def prefix_costs(self, rank: Tensor, profile: Tensor) -> Tensor:
        """``(R, N, K + 1)`` energies (up to a constant) of keeping the ``x`` blocks of lowest ``rank``, for each ``x``."""
        ordered_gain = torch.zeros(*rank.shape[:-1], self.k + 1, device=rank.device, dtype=self.gain.dtype)
        ordered_gain[..., 1:].scatter_(-1, rank, self.gain.expand_as(rank))
        unary = ordered_gain.cumsum(-1)
        # An edge is cut exactly when x lies between the ranks of its two ends.
        first, second = rank.index_select(-1, self.edges[:, 0]), rank.index_select(-1, self.edges[:, 1])
        low, high = torch.minimum(first, second) + 1, torch.maximum(first, second) + 1
        crossings = torch.zeros_like(ordered_gain)
        ones = torch.ones_like(low, dtype=crossings.dtype)
        crossings.scatter_add_(-1, low, ones).scatter_add_(-1, high, -ones)
        cut = crossings.cumsum(-1)
        return unary + self.problem.smoothness * cut + self.problem.diversity * profile

    def best_response(self, z: Tensor) -> Tensor:
        """For every output, the best of its candidate labellings with all other outputs held fixed."""
        problem, k = self.problem, self.k
        zf = z.to(self.gain.dtype)
        own = zf.sum(-1)
        profile = self.reuse_profile(own)
        neighbours = zf @ self.adjacency
        # The cost of x_j's block minus the partner's given the neighbours' current sources (the ICM field).
        field = self.gain + problem.smoothness * (self.degree - 2.0 * neighbours)
        field_rank = field.argsort(-1).argsort(-1)
        unary_now = (zf * self.gain).sum(-1)
        cut_now = (zf * (self.degree - neighbours)).sum(-1)
        turn = 1.0 - 2.0 * zf  # +1 where a flip takes x_j's block, -1 where it gives it up
        flip_count = (own.unsqueeze(-1) + turn).long().clamp(0, k)
        flips = (
            unary_now.unsqueeze(-1)
            + turn * self.gain
            + problem.smoothness * (cut_now.unsqueeze(-1) + turn * (self.degree - 2.0 * neighbours))
            + problem.diversity * profile.gather(-1, flip_count)
        )
        stay = (
            unary_now
            + problem.smoothness * cut_now
            + problem.diversity * profile.gather(-1, own.long()[..., None])[..., 0]
        )
        costs = torch.cat(
            [
                self.prefix_costs(self.gain_rank.expand_as(field_rank), profile),
                self.prefix_costs(field_rank, profile),
                flips,
                stay.unsqueeze(-1),
            ],
            -1,
        )
        choice = costs.argmin(-1, keepdim=True)  # (R, N, 1)
        by_gain = self.gain_rank < choice
        by_field = field_rank < choice - (k + 1)
        flipped = z ^ (torch.arange(k, device=z.device) == choice - 2 * (k + 1))
        return torch.where(
            choice <= k,
            by_gain,
            torch.where(choice <= 2 * k + 1, by_field, torch.where(choice < 3 * k + 2, flipped, z)),
        )


def solve_comixup(
    problem: CoMixupProblem,
    *,
    restarts: int = 4,
    sweeps: int = 4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Approximately minimise :meth:`CoMixupProblem.energy`; returns the ``(N, K)`` bool labelling found.

    Parallel block-coordinate descent: in each sweep every output computes its
    best response to the others (the diversity term is evaluated exactly for
    every count of blocks it could take, the outer loop of the paper's
    modular-approximation algorithm); a random half of the outputs (a different
    half per restart and sweep) adopts it, so that coupled outputs do not all
    jump at once. The candidates of an output are the labellings keeping the
    ``x`` blocks most worth keeping (for every ``x``, ranked by unary gain and by
    the ICM field given the current neighbours), every single-block flip, and
    the current labelling. Restarts begin from the unary optimum, no mixing
    (every output ``x_i``), the half of the blocks most worth keeping, the
    partners whole, then random labellings; the lowest-energy labelling visited
    is returned. Everything runs batched on the problem's device, with no loop
    over outputs.

    Args:
        problem: from :meth:`CoMixupProblem.build`.
        restarts: independent starts, solved together.
        sweeps: outer iterations (the paper's ``niter``, 4).
        generator: for the random starts and halves (on the problem's device).

    Kim et al., ICLR 2021, arXiv 2102.03065 (iterative submodular minimisation with a modular approximation).

    Example:
        >>> p = CoMixupProblem.build(torch.eye(4)[[0, 3]], torch.tensor([1, 0]), torch.tensor([0.5, 0.5]), (2, 2))
        >>> z = solve_comixup(p, generator=torch.Generator().manual_seed(0))
        >>> bool(p.energy(z) <= p.energy(torch.ones(2, 4, dtype=torch.bool)))  # better than no mixing
        True
    """
    restarts = check_int("restarts", restarts, 1)
    sweeps = check_int("sweeps", sweeps, 1)
    solver = _Solver(problem)
    n, k = problem.unary_self.shape
    device = problem.unary_self.device
    fixed = problem.fixed.view(1, n, 1)
    ones = torch.ones(n, k, dtype=torch.bool, device=device)
    starts = [solver.gain < 0, ones, solver.gain_rank < k // 2, ~ones]
    if restarts > len(starts):
        starts.extend(torch.rand(restarts - len(starts), n, k, generator=generator, device=device) < 0.5)
    z = torch.stack(starts[:restarts]) | fixed
    best_z, best_energy = z, solver.energy(z)
    for _ in range(sweeps):
        movers = torch.rand(restarts, n, 1, generator=generator, device=device) < 0.5
        z = torch.where(movers, solver.best_response(z), z) | fixed
        energy = solver.energy(z)
        better = energy < best_energy
        best_z = torch.where(better.view(-1, 1, 1), z, best_z)
        best_energy = torch.where(better, energy, best_energy)
    return best_z[best_energy.argmin()]


# ------------------------------------------------------------------ the mixer


class CoMixup(Mixer):
    """Co-Mixup: saliency-guided block labellings of the whole batch, solved jointly with a diversity penalty.

    Each step, the input-gradient saliency (``context["saliency"]``, from
    :class:`~mixlab.methods.context.MixContext`) is pooled to a ``grid`` of blocks and
    normalised per input; every output chooses, block by block, between ``x_i``
    and its partner so as to minimise, over the whole batch at once, minus the
    saliency it gathers, ``beta`` times the cut between neighbouring blocks, an
    ``eta`` label prior towards the drawn ratio, and ``gamma`` times the
    supermodular diversity penalty on reusing an input in many outputs (see the
    module docstring and :class:`CoMixupProblem`). ``lam`` is the exact share of
    ``x_i`` in each output (the mask mean), as the paper's block-count label.
    How much is mixed is decided by the energy, not by the drawn ratio: with a
    flat saliency (an untrained model) whole images cost least and few outputs
    mix; mixing grows as the saliency sharpens.
    Kim, Choo, Jeong and Song, ICLR 2021, arXiv 2102.03065.

    Deviations from the paper, to fit mixlab's two-target contract and a fast
    batched solver:

    - **two sources per output**: the paper lets output ``j`` take blocks from any
      of the ``m`` inputs of its partition (``m = 20``); here output ``i`` takes them
      from ``x_i`` or ``x_perm[i]`` only (``perm`` from ``pairing``, random by
      default), so ``MixedBatch`` keeps ``target_a = y``, ``target_b = y[perm]``.
      The diversity term still couples all outputs of the batch (no partition is
      needed: the problem is small); the paper's Dirichlet label prior becomes
      the mixlab ratio ``lam ~ Beta(alpha, alpha)`` per output (``lam_mode="sample"``
      by default; the paper's ``alpha`` is 2).
    - **hinge threshold**: reuse below ``tau`` of an image is free and, above
      it, costs in proportion to the excess, ``max(0, A o_{-j} - tau K)`` (the
      authors' code also offers this "soft" form; its default "hard" step makes
      the term non-supermodular).
    - **solver**: instead of alpha-beta-swap graph cuts run output by output, a
      batched block-coordinate descent (:func:`solve_comixup`) with ``restarts``
      starts and ``sweeps`` sweeps; the diversity term enters each best response
      exactly (not only through its modular approximation).
    - not included: the clean-input loss (``clean_lam``) and the post-processing
      that separates identical outputs (``set_resolve``).

    Args:
        grid: blocks per spatial dim (int or one per dim; capped at the size). Paper: 4 on CIFAR.
        beta: smoothness weight (paper 0.32).
        gamma: diversity weight (paper 1.0).
        eta: label-prior weight (paper 0.05).
        tau: reuse threshold, in images (paper 0.83).
        omega: weight of the input compatibility in ``A`` (paper 0.001).
        restarts: solver starts (>= 1).
        sweeps: solver sweeps (>= 1; the paper's ``niter`` is 4).
        lam_mode: as for every mixer; ``"sample"`` by default (one prior ratio per output).
        **kwargs: the :class:`~mixlab.methods.base.Mixer` options (``alpha`` defaults to 2, ``p``, ``pairing``, ...).

    Example:
        >>> import torch
        >>> from mixlab.methods.context import MixContext
        >>> from mixlab.models import create_model
        >>> net = create_model("cnn_small", num_classes=3, in_channels=1, input_size=16)
        >>> x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
        >>> mixer = CoMixup()
        >>> mb = mixer(x, y, torch.Generator().manual_seed(0), context=MixContext(mixer, net)(x, y))
        >>> torch.allclose(mb.lam, mb.mask.flatten(1).mean(1))
        True
    """

    name = "comixup"
    spatial = True
    default_alpha = 2.0

    def __init__(
        self,
        *,
        grid: int | Sequence[int] = 4,
        beta: float = 0.32,
        gamma: float = 1.0,
        eta: float = 0.05,
        tau: float = 0.83,
        omega: float = 0.001,
        restarts: int = 4,
        sweeps: int = 4,
        lam_mode: str = "sample",
        **kwargs: Any,
    ):
        super().__init__(lam_mode=lam_mode, **kwargs)
        self.grid = _check_grid(grid)
        self.beta = check_non_negative("beta", beta)
        self.gamma = check_non_negative("gamma", gamma)
        self.eta = check_non_negative("eta", eta)
        self.tau = check_non_negative("tau", tau)
        self.omega = check_probability("omega", omega)
        self.restarts = check_int("restarts", restarts, 1)
        self.sweeps = check_int("sweeps", sweeps, 1)

    @property
    def needs(self) -> MixerNeeds:
        """The input saliency of the clean loss.

        Example:
            >>> CoMixup().needs.saliency
            True
        """
        return MixerNeeds(saliency=True)

    def _check_context(self, context: dict[str, Any]) -> None:
        if context.get(SALIENCY) is None:
            raise MixlabValueError(
                "comixup needs the input saliency in context['saliency']; build it with "
                "mixlab.methods.context.MixContext: mb = mixer(x, y, context=MixContext(mixer, model)(x, y))"
            )

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        n, spatial = x.shape[0], tuple(x.shape[2:])
        saliency = context[SALIENCY]
        if not isinstance(saliency, Tensor) or tuple(saliency.shape) != (n, *spatial):
            shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
            raise MixlabValueError(f"comixup: context['saliency'] must have shape {(n, *spatial)}; got {shape}")
        blocks = block_grid(spatial, self.grid)
        ratios = torch.from_numpy(np.broadcast_to(np.asarray(lam, dtype=np.float32), (n,)).copy()).to(x.device)
        problem = CoMixupProblem.build(
            block_saliency(saliency.to(x.device), blocks),
            perm,
            ratios,
            blocks,
            beta=self.beta,
            gamma=self.gamma,
            eta=self.eta,
            tau=self.tau,
            omega=self.omega,
        )
        generator = torch_generator(rng, x.device)
        z = solve_comixup(problem, restarts=self.restarts, sweeps=self.sweeps, generator=generator)
        weight = blocks_to_mask(z, blocks, spatial).to(x.dtype)
        return MixParams(perm=perm, lam=label_weight(weight, n), weight=weight, extra={"blocks": z})

    def __repr__(self) -> str:
        return (
            f"CoMixup(grid={self.grid!r}, beta={self.beta}, gamma={self.gamma}, eta={self.eta}, tau={self.tau}, "
            f"omega={self.omega}, restarts={self.restarts}, sweeps={self.sweeps}, lam={self.lam_sampler!r}, "
            f"lam_mode={self.lam_mode!r}, p={self.p})"
        )


def _check_grid(grid: object) -> int | tuple[int, ...]:
    """``grid`` as an int >= 1 or a tuple of them; raise otherwise."""
    if isinstance(grid, (tuple, list)):
        if not grid:
            raise MixlabValueError("grid must give at least one block count; got an empty sequence")
        return tuple(check_int("grid", g, 1) for g in grid)
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)):
        raise MixlabTypeError(f"grid must be an int or a tuple of ints; got {grid!r} of type {type(grid).__name__}")
    return check_int("grid", grid, 1)


__all__ = [
    "CoMixup",
    "CoMixupProblem",
    "block_grid",
    "block_index",
    "block_saliency",
    "blocks_to_mask",
    "compatibility_matrix",
    "diversity_penalty",
    "grid_laplacian",
    "solve_comixup",
    "source_usage",
]
