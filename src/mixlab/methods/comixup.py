"""Co-Mixup: each output gathers salient blocks from many inputs of its partition, the batch labelled jointly.

Kim, Choo, Jeong and Song, "Co-Mixup: Saliency Guided Joint Mixup with
Supermodular Diversity", ICLR 2021, arXiv 2102.03065; the authors' code is
snu-mllab/Co-Mixup (``main.py``, ``mixup.py``, ``match.py``).

The batch is cut into consecutive partitions of ``m`` inputs (``m_part = 20``).
Within a partition, output ``j`` is a labelling ``z_j`` of a grid of ``K``
blocks: each block is taken from one of the ``m`` inputs (or, in the authors'
code, is a 50/50 blend of two of them). The labelling of the partition minimises

``E(z) = sum_j [ sum_k c(z_jk, k) + beta/K * sum_(k,k') V(z_jk, z_jk') ] + gamma/K * D(z)``

- unary ``c(i, k) = -s_i(k) - eta/K * log(alpha_i + 1e-8)``: minus the saliency
  of block ``k`` of input ``i`` (each input's block saliency sums to 1), plus a
  prior towards ``alpha ~ Dirichlet(a 1_m)``, drawn once per partition; a half block
  costs the mean of its two inputs' costs minus ``5e-4``;
- smoothness ``V``: 0 between equal labels, 1/4 between a half block and one of
  its two inputs, 1 otherwise (Potts);
- diversity ``D = sum_j o_j . phi(o_{-j})``: ``o_j`` counts the blocks output
  ``j`` takes from each input (a half block counts 1/2 to each), ``o_{-j}`` those
  of all the other outputs; ``phi`` penalises reuse past ``tau K`` blocks,
  weighted by ``A = (1 - omega) I + omega C`` (``C``: the L1 distance between the
  inputs' saliency peaks, scaled to sum to ``m``): ``"hard"`` (the authors'
  default) ``phi(o) = A (o [A o > tau K])``, all reuse of an input once past the
  threshold; ``"soft"`` ``phi(o) = max(0, A o - tau K)``, only the excess.
  Minimising it output by output, the code charges output ``j``
  ``2 gamma/K phi(o_{-j})`` per block of each input (its modular approximation).

The label of an output is the share of each input in it: its blocks (half
blocks count 1/2), weighted by their pixel area (equal areas when the grid
divides the image, as on CIFAR and Fashion-MNIST at ``grid=4``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.batch import MixedBatch
from mixlab.errors import (
    MixlabTypeError,
    MixlabValueError,
    check_choice,
    check_int,
    check_non_negative,
    check_probability,
)
from mixlab.methods.base import Mixer, MixParams, check_params_fit_batch, unmixed_params
from mixlab.methods.blocks import block_counts, block_index, block_saliency, expand_blocks
from mixlab.methods.context import SALIENCY, MixerNeeds, clean_loss_terms, keep_clean_loss

#: Smallest prior weight inside the log of the label prior (the code's ``log(alpha + 1e-8)``).
PRIOR_FLOOR = 1e-8
#: A half block costs the mean of its two inputs' costs minus this (``match.py``, ``graphcut_wrapper``).
HALF_BONUS = 5e-4
#: Smoothness between a half block and one of its own two inputs (``match.py``, ``graphcut_multi``).
HALF_EDGE = 0.25
#: The over-use thresholds of the diversity term (``--m_thres_type``).
THRESHOLDS = ("hard", "soft")
#: Checkerboard rounds of iterated conditional modes in each output's update (see :func:`solve_comixup`).
ICM_ROUNDS = 2
#: Cost of an input that does not exist (the padding of a short last partition).
ABSENT = 1e4


# ------------------------------------------------------------------ the block graph


@dataclass(frozen=True)
class BlockGraph:
    """The neighbouring blocks of a grid (numbered row-major), for the smoothness term and the ICM updates.

    Attributes:
        blocks: blocks per axis.
        edges: ``(E, 2)`` long, every pair of blocks adjacent along one axis.
        adjacency: ``(K, K)`` float, 1 between adjacent blocks.
        colours: two ``(K,)`` bool masks, the blocks of even and of odd coordinate sum (adjacent blocks differ).

    Example:
        >>> graph = BlockGraph.build((2, 3))
        >>> graph.edges.tolist()
        [[0, 3], [1, 4], [2, 5], [0, 1], [1, 2], [3, 4], [4, 5]]
        >>> graph.colours[1].int().tolist()
        [0, 1, 0, 1, 0, 1]
    """

    blocks: tuple[int, ...]
    edges: Tensor
    adjacency: Tensor
    colours: tuple[Tensor, Tensor]

    @staticmethod
    def build(blocks: Sequence[int], device: torch.device | str = "cpu") -> BlockGraph:
        """The graph of a grid with ``blocks`` blocks per axis (cached per grid and device)."""
        return _block_graph(tuple(int(b) for b in blocks), str(device))


@functools.lru_cache(maxsize=32)
def _block_graph(blocks: tuple[int, ...], device: str) -> BlockGraph:
    count = math.prod(blocks)
    index = torch.arange(count).view(blocks)
    edges = torch.cat(
        [
            torch.stack([index.narrow(axis, 0, size - 1).reshape(-1), index.narrow(axis, 1, size - 1).reshape(-1)], 1)
            for axis, size in enumerate(blocks)
        ]
    )
    adjacency = torch.zeros(count, count)
    adjacency[edges[:, 0], edges[:, 1]] = 1.0
    adjacency[edges[:, 1], edges[:, 0]] = 1.0
    coords = torch.stack(torch.unravel_index(torch.arange(count), blocks), 1)
    return BlockGraph(
        blocks=blocks,
        edges=edges.to(device),
        adjacency=adjacency.to(device),
        colours=((coords.sum(1) % 2 == 0).to(device), (coords.sum(1) % 2 == 1).to(device)),
    )


# ------------------------------------------------------------------ labellings


def smoothness_cost(first_a: Tensor, second_a: Tensor, first_b: Tensor, second_b: Tensor) -> Tensor:
    """``V`` between block labels ``(first_a, second_a)`` and ``(first_b, second_b)``: 0, 1/4 or 1.

    A label is a pair of inputs (``first <= second``); equal inputs mean a whole
    block of one input, different ones a 50/50 half block. Equal labels cost 0,
    a half block next to a block of one of its inputs 1/4, anything else 1.

    Example:
        >>> t = torch.tensor
        >>> smoothness_cost(t([0, 0, 0]), t([0, 0, 1]), t([0, 2, 0]), t([1, 2, 0])).tolist()
        [0.25, 1.0, 0.25]
    """
    same = (first_a == first_b) & (second_a == second_b)
    whole_a, whole_b = first_a == second_a, first_b == second_b
    a_in_b = whole_a & ~whole_b & ((first_a == first_b) | (first_a == second_b))
    b_in_a = whole_b & ~whole_a & ((first_b == first_a) | (first_b == second_a))
    cost = torch.where(a_in_b | b_in_a, HALF_EDGE, 1.0)
    return torch.where(same, 0.0, cost)


def source_usage(first: Tensor, second: Tensor, inputs: int) -> Tensor:
    """``(..., inputs)``: blocks taken from each input by ``(..., K)`` labels (a half block counts 1/2 to each).

    Example:
        >>> source_usage(torch.tensor([[0, 0, 1]]), torch.tensor([[0, 2, 1]]), 3)
        tensor([[1.5000, 1.0000, 0.5000]])
    """
    counts = torch.zeros(*first.shape[:-1], inputs, device=first.device)
    half = torch.full(first.shape, 0.5, device=first.device)
    return counts.scatter_add_(-1, first, half).scatter_add_(-1, second, half)


def compatibility_matrix(
    saliency: Tensor, blocks: Sequence[int], omega: float, parts: int, present: Tensor | None = None
) -> Tensor:
    """``A = (1 - omega) I + omega C`` per partition: ``(P, m, m)`` for ``(P * m, *spatial)`` saliency.

    ``C`` is the L1 distance between the inputs' saliency peaks (the argmax of the
    saliency averaged over a block-sized window, as ``main.py`` averages over
    8-pixel windows, one block on CIFAR), scaled to sum to ``m`` within each partition.

    Args:
        saliency: ``(P * m, *spatial)`` saliency, partitions consecutive.
        blocks: the block grid (sets the window).
        omega: the weight of ``C`` (the paper's ``omega``, 0.001).
        parts: ``P``.
        present: ``(P, m)`` bool, the inputs that exist (padding counts for nothing); all when ``None``.

    Kim et al., ICLR 2021, arXiv 2102.03065 (input compatibility).

    Example:
        >>> s = torch.zeros(2, 4, 4)
        >>> s[0, 0, 0], s[1, 3, 3] = 1.0, 1.0
        >>> compatibility_matrix(s, (4, 4), 0.5, 1)
        tensor([[[0.5000, 0.5000],
                 [0.5000, 0.5000]]])
    """
    n, spatial = saliency.shape[0], saliency.shape[1:]
    window = [max(size // count, 1) for size, count in zip(spatial, blocks, strict=True)]
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(spatial) - 1]
    smooth = pool(saliency.float().unsqueeze(1), window, stride=1).squeeze(1)
    peaks = torch.stack(torch.unravel_index(smooth.flatten(1).argmax(1), smooth.shape[1:]), 1).float()
    peaks = peaks.view(parts, n // parts, -1)
    distance = torch.cdist(peaks, peaks, p=1.0)
    if present is not None:
        distance = distance * (present.unsqueeze(-1) & present.unsqueeze(-2))
    total = distance.sum((1, 2), keepdim=True)
    size = distance.shape[-1]
    scaled = torch.where(total > 0, distance * size / total.clamp_min(1e-12), torch.zeros_like(distance))
    return (1.0 - omega) * torch.eye(size, device=saliency.device) + omega * scaled


# ------------------------------------------------------------------ the problem


@dataclass(frozen=True)
class CoMixupProblem:
    """The labelling problem of ``P`` partitions of ``m`` inputs (and ``m`` outputs) on a grid of ``K`` blocks.

    Labels are pairs of ``(P, m, K)`` long tensors ``(first, second)``: block ``k``
    of output ``j`` of partition ``p`` takes the inputs ``first`` and ``second``
    (equal for a whole block, ``first < second`` for a half block), numbered
    within the partition. A short last partition is padded: its missing inputs
    cost :data:`ABSENT` and its missing outputs count for nothing.

    Attributes:
        unary: ``(P, m, K)`` cost of block ``k`` of input ``i`` (minus saliency, plus the prior).
        present: ``(P, m)`` bool, the inputs (and outputs) that exist.
        compat: ``(P, m, m)`` the matrix ``A`` of the diversity term.
        graph: the block graph.
        smoothness: ``beta / K``.
        diversity: ``gamma / K``.
        tau_blocks: ``tau * K``.
        threshold: ``"hard"`` or ``"soft"``.

    Kim et al., ICLR 2021, arXiv 2102.03065.

    Example:
        >>> s = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
        >>> problem = CoMixupProblem.build(s, (2, 2), partition=2)
        >>> whole = torch.tensor([[[0, 0, 0, 0], [1, 1, 1, 1]]])
        >>> problem.energy(whole, whole).shape
        torch.Size([1])
    """

    unary: Tensor
    present: Tensor
    compat: Tensor
    graph: BlockGraph
    smoothness: float
    diversity: float
    tau_blocks: float
    threshold: str

    @classmethod
    def build(
        cls,
        saliency_blocks: Tensor,
        blocks: Sequence[int],
        *,
        partition: int = 20,
        prior: Tensor | None = None,
        compat: Tensor | None = None,
        beta: float = 0.32,
        gamma: float = 1.0,
        eta: float = 0.05,
        tau: float = 0.83,
        threshold: str = "hard",
    ) -> CoMixupProblem:
        """The problem for ``(N, K)`` block saliency (rows summing to 1), cut into partitions of ``partition``.

        Args:
            saliency_blocks: ``(N, K)`` normalised block saliency.
            blocks: the block grid (``K`` blocks in all).
            partition: inputs per partition (``m``); the last one may be shorter.
            prior: ``(P, m)`` prior weights ``alpha`` (uniform when ``None``, i.e. no preference).
            compat: ``(P, m, m)`` matrix ``A`` (the identity when ``None``).
            beta, gamma, eta, tau: the weights of the paper (0.32, 1, 0.05, 0.83 on CIFAR).
            threshold: ``"hard"`` or ``"soft"``.
        """
        n, k = saliency_blocks.shape
        if math.prod(blocks) != k:
            raise MixlabValueError(f"saliency has {k} blocks but the grid {tuple(blocks)} has {math.prod(blocks)}")
        m = min(partition, n)
        parts = -(-n // m)
        device = saliency_blocks.device
        padded = torch.zeros(parts * m, k, device=device)
        padded[:n] = saliency_blocks.float()
        present = (torch.arange(parts * m, device=device) < n).view(parts, m)
        if prior is None:
            prior = torch.ones(parts, m, device=device)
        unary = -padded.view(parts, m, k) - eta / k * torch.log(prior.to(device).float() + PRIOR_FLOOR).unsqueeze(-1)
        unary = torch.where(present.unsqueeze(-1), unary, ABSENT)
        if compat is None:
            compat = torch.eye(m, device=device).expand(parts, m, m)
        return cls(
            unary=unary,
            present=present,
            compat=compat.to(device).float(),
            graph=BlockGraph.build(blocks, device),
            smoothness=beta / k,
            diversity=gamma / k,
            tau_blocks=tau * k,
            threshold=check_choice("threshold", threshold, THRESHOLDS),
        )

    @property
    def inputs(self) -> int:
        """``m``, the inputs (and outputs) per partition."""
        return int(self.unary.shape[1])

    def usage(self, first: Tensor, second: Tensor) -> Tensor:
        """``(..., P, m, m)``: row ``j`` is ``o_j``, the blocks output ``j`` takes from each input (0 when absent)."""
        return source_usage(first, second, self.inputs) * self.present.unsqueeze(-1)

    def reuse_cost(self, others: Tensor) -> Tensor:
        """``phi``: what one more block of each input costs (before ``gamma/K``), given the others' usage.

        ``others`` ``(..., P, r, m)`` is ``o_{-j}`` for ``r`` outputs. ``"soft"``:
        ``max(0, A o_{-j} - tau K)``. ``"hard"``: ``A (o_{-j} [A o_{-j} > tau K])``, the
        code's expression (``(A @ p > thres).float() * A @ p`` in ``match.py``, which
        Python reads as ``((A @ p > thres) * A) @ p``): the same as
        ``A o_{-j} [A o_{-j} > tau K]`` when ``A`` is the identity, within ``omega`` of it otherwise.

        Example:
            >>> p = CoMixupProblem.build(torch.full((2, 4), 0.25), (2, 2), tau=0.5)  # tau K = 2 blocks
            >>> p.reuse_cost(torch.tensor([[[1.0, 3.0]]])).tolist()
            [[[0.0, 3.0]]]
        """
        pressure = _times_compat(others, self.compat)
        if self.threshold == "hard":
            return _times_compat(others * (pressure > self.tau_blocks), self.compat)
        return (pressure - self.tau_blocks).clamp_min(0.0)

    def energy(self, first: Tensor, second: Tensor) -> Tensor:
        """The energy ``E`` of each partition for labels ``(..., P, m, K)``: shape ``(..., P)``.

        Example:
            >>> p = CoMixupProblem.build(torch.full((3, 4), 0.25), (2, 2))
            >>> z = torch.zeros(5, 1, 3, 4, dtype=torch.long)
            >>> p.energy(z, z).shape
            torch.Size([5, 1])
        """
        costs = self.unary.expand(*first.shape)
        unary = 0.5 * (costs.gather(-2, first) + costs.gather(-2, second))
        unary = unary - HALF_BONUS * (first != second)
        ends = self.graph.edges
        start, stop = ends[:, 0], ends[:, 1]
        cut = smoothness_cost(first[..., start], second[..., start], first[..., stop], second[..., stop])
        usage = self.usage(first, second)
        reuse = (usage * self.reuse_cost(usage.sum(-2, keepdim=True) - usage)).sum((-2, -1))
        per_output = unary.sum(-1) + self.smoothness * cut.sum(-1)
        return (per_output * self.present).sum(-1) + self.diversity * reuse


def _times_compat(vectors: Tensor, compat: Tensor) -> Tensor:
    """``A v`` for vectors ``(..., P, r, m)`` and ``A`` ``(P, m, m)``, by products and sums: the solver's
    matrices are tiny, and a BLAS call per update would hand each one to a thread pool."""
    return (vectors.unsqueeze(-2) * compat.unsqueeze(-3)).sum(-1)


# ------------------------------------------------------------------ the solver


def solve_comixup(
    problem: CoMixupProblem,
    start: Tensor,
    *,
    sweeps: int = 4,
    half_blocks: bool = True,
    resolve: bool = True,
) -> tuple[Tensor, Tensor]:
    """Minimise :meth:`CoMixupProblem.energy` from ``start`` labels ``(P, m, K)``; returns ``(first, second)``.

    The paper's algorithm, as ``match.py``'s ``get_onehot_matrix`` runs it:
    ``sweeps`` outer iterations, in each of which the outputs of a partition,
    one after another, minimise their own cost with the diversity term replaced
    by its modular approximation at the other outputs' current labels,
    ``2 gamma/K phi(o_{-j})`` per block of each input. All partitions are
    solved together: the loop runs over the ``m`` output slots of a partition
    (``m * sweeps`` steps whatever the batch size), never over the batch.
    Outputs of one partition must move one at a time, as in the code: moved
    together they keep grabbing the same unused inputs, and the hard threshold
    then penalises all of them. Each output's own problem (a Potts labelling of
    the grid) is solved from scratch, as the code does with gco's alpha-beta
    swap, but by each block's cheapest label followed by :data:`ICM_ROUNDS`
    rounds of checkerboard ICM (in tests, about as close to the optimum as
    alpha-expansion run to convergence). From the second sweep on, an output
    using two inputs may also take 50/50 half blocks of them, one using three
    or more half blocks of any two of its three most used (``half_blocks``, the
    code's multi-label extension). After the second-to-last sweep, outputs of
    a partition that use exactly the same inputs are pushed apart (``resolve``,
    the code's ``set_resolve``: the first of each such pair pays ``gamma/K`` per
    block of its first input, the second per block of its second). The final
    labels are returned, as in the code; every sweep is run (the code stops
    early once its unthresholded objective changes by less than 1e-6).

    Args:
        problem: from :meth:`CoMixupProblem.build`.
        start: ``(P, m, K)`` initial input of every block (the code draws them at random).
        sweeps: outer iterations (the code's ``m_niter``, 4).
        half_blocks: allow half blocks.
        resolve: separate outputs with identical sources.

    Kim et al., ICLR 2021, arXiv 2102.03065 (iterative submodular minimisation with a modular approximation).

    Example:
        >>> s = torch.eye(4)[[0, 3, 1, 2]]  # each input has one salient block, all different
        >>> problem = CoMixupProblem.build(s, (2, 2), partition=4, beta=0.0, eta=0.0)
        >>> first, second = solve_comixup(problem, torch.zeros(1, 4, 4, dtype=torch.long))
        >>> bool(problem.energy(first, second) < problem.energy(torch.zeros_like(first), torch.zeros_like(first)))
        True
    """
    sweeps = check_int("sweeps", sweeps, 1)
    with torch.inference_mode():  # many tiny ops: inference mode skips their autograd bookkeeping
        first, second = _solve(problem, start, sweeps, bool(half_blocks), bool(resolve))
    return first.clone(), second.clone()


def _solve(
    problem: CoMixupProblem, start: Tensor, sweeps: int, half_blocks: bool, resolve: bool
) -> tuple[Tensor, Tensor]:
    """:func:`solve_comixup` without the checks (run in inference mode: the loop is many tiny ops)."""
    first, second = start.clone(), start.clone()
    parts, m, k = first.shape
    device = start.device
    usage = problem.usage(first, second)  # (P, m, m): row j is o_j
    total = usage.sum(1)
    weight = problem.present.unsqueeze(-1).float()  # absent outputs use nothing
    half = torch.full((parts, k), 0.5, device=device)
    whole = torch.arange(m, device=device).expand(parts, m)
    apart = (problem.smoothness * (1.0 - torch.eye(m, device=device))).expand(parts, m, m)
    halves = _HalfLabels(m, problem.smoothness, device) if half_blocks else None
    resolve_cost = None
    for sweep in range(sweeps):
        for j in range(m):
            own = usage[:, j]
            penalty = problem.reuse_cost((total - own).unsqueeze(1)).squeeze(1).mul_(2.0 * problem.diversity)
            if resolve_cost is not None:
                penalty += resolve_cost[:, j]
            costs = problem.unary + penalty.unsqueeze(-1)  # (P, m, K): output j's cost of each input's blocks
            if halves is not None and sweep > 0:
                labels, between = halves(costs, own, whole, apart)
            else:
                labels, between = (whole, whole, costs), apart
            choice = _best_response(problem.graph, labels[2], between)
            first[:, j], second[:, j] = labels[0].gather(1, choice), labels[1].gather(1, choice)
            new_own = torch.zeros_like(own).scatter_add_(1, first[:, j], half).scatter_add_(1, second[:, j], half)
            new_own *= weight[:, j]
            total += new_own - own
            usage[:, j] = new_own
        if resolve and sweep == sweeps - 2:
            resolve_cost = problem.diversity * _resolve_cost(usage > 0, problem.present)
    return first, second


class _HalfLabels:
    """The half blocks an output may take, given its usage (``graphcut_wrapper`` in ``match.py``).

    With two inputs in use, their half block; with three or more, the half
    blocks of any two of its three most used. Calling it returns the labels
    ``(first, second, cost)`` (every input whole, then the three half blocks,
    those not allowed at cost :data:`ABSENT`) and the smoothness between them.
    """

    def __init__(self, m: int, smoothness: float, device: torch.device):
        self.top = min(3, m)
        pairs = [(0, 1), (0, 2), (1, 2)] if m >= 3 else [(0, 1)]
        self.one = torch.tensor([a for a, _ in pairs], device=device)
        self.other = torch.tensor([b for _, b in pairs], device=device)
        self.needed = torch.tensor([2, 3, 3][: len(pairs)], device=device)
        self.inputs = torch.arange(m, device=device)
        self.smoothness = smoothness
        self.among = smoothness * (1.0 - torch.eye(len(pairs), device=device))

    def __call__(
        self, costs: Tensor, usage: Tensor, whole: Tensor, apart: Tensor
    ) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        parts, _, k = costs.shape
        top = usage.topk(self.top, dim=-1).indices
        one, other = top[:, self.one], top[:, self.other]
        low, high = torch.minimum(one, other), torch.maximum(one, other)  # (P, H)
        refused = (usage > 0).sum(-1, keepdim=True) < self.needed
        cost = costs.gather(1, low.unsqueeze(-1).expand(-1, -1, k)) + costs.gather(
            1, high.unsqueeze(-1).expand(-1, -1, k)
        )
        cost = cost.mul_(0.5).sub_(HALF_BONUS).masked_fill_(refused.unsqueeze(-1), ABSENT)
        # A half block next to one of its own inputs costs 1/4, next to anything else 1.
        mine = (low.unsqueeze(-1) == self.inputs).float() + (high.unsqueeze(-1) == self.inputs).float()
        cross = mine.mul_(-(1.0 - HALF_EDGE) * self.smoothness).add_(self.smoothness)  # (P, H, m)
        between = torch.cat(
            [torch.cat([apart, cross.transpose(1, 2)], 2), torch.cat([cross, self.among.expand(parts, -1, -1)], 2)], 1
        )
        labels = (torch.cat([whole, low], 1), torch.cat([whole, high], 1), torch.cat([costs, cost], 1))
        return labels, between


def _best_response(graph: BlockGraph, costs: Tensor, between: Tensor) -> Tensor:
    """One output per partition: each block's cheapest label, then :data:`ICM_ROUNDS` rounds of ICM.

    In each round the blocks of one colour, then of the other (no two of a
    colour are adjacent), take the label that minimises their cost plus the
    smoothness to their neighbours' labels. ``costs`` ``(P, L, K)`` are the
    labels' block costs, ``between`` ``(P, L, L)`` the smoothness between labels
    (scaled by ``beta / K``). Returns the label of each block, ``(P, K)``.
    """
    count = costs.shape[1]
    choice = costs.min(1).indices  # min(1) is several times faster than argmin(1) here
    for _ in range(ICM_ROUNDS):
        for colour in graph.colours:
            # Smoothness to every neighbour's label, summed by products (a BLAS call per step would
            # hand these tiny matrices to a thread pool, far slower on a busy machine).
            to_label = between.gather(2, choice.unsqueeze(1).expand(-1, count, -1))
            around = (to_label.unsqueeze(-1) * graph.adjacency).sum(-2)
            choice = torch.where(colour, (costs + around).min(1).indices, choice)
    return choice


def _resolve_cost(used: Tensor, present: Tensor) -> Tensor:
    """``set_resolve``: for outputs ``i < i'`` of a partition using exactly the same (two or more) inputs, 1 on
    the first such input of ``i`` and on the second of ``i'``; ``(P, m, m)`` per output and input."""
    m = used.shape[-1]
    same = (used.unsqueeze(2) == used.unsqueeze(1)).all(-1)
    pair = present.unsqueeze(2) & present.unsqueeze(1)
    upper = torch.ones(m, m, dtype=torch.bool, device=used.device).triu(1)
    several = used.sum(-1) > 1
    coincide = same & pair & upper & several.unsqueeze(-1)
    rank = used.long().cumsum(-1)
    first_input = F.one_hot(((rank == 1) & used).long().argmax(-1), m)
    second_input = F.one_hot(((rank == 2) & used).long().argmax(-1), m)
    cost = first_input * coincide.any(2, keepdim=True) + second_input * coincide.any(1).unsqueeze(-1)
    return cost.clamp_max(1).float()


# ------------------------------------------------------------------ the mixer


class CoMixup(Mixer):
    """Co-Mixup: every output gathers salient blocks from up to ``partition`` inputs, the batch solved jointly.

    Each step, the input-gradient saliency (``context["saliency"]``, from
    :class:`~mixlab.methods.context.MixContext`) is pooled to a ``grid`` of blocks
    and normalised per input; the batch is cut into consecutive partitions of
    ``partition`` inputs, and the ``partition`` outputs of each are labelled block
    by block so as to minimise, jointly, minus the saliency they gather, ``beta``
    times the cut between neighbouring blocks, an ``eta`` prior towards a
    ``Dirichlet(alpha)`` draw over the partition's inputs, and ``gamma`` times the
    diversity penalty on using an input beyond ``tau`` of an image (see the
    module docstring and :func:`solve_comixup`). The label of an output is the
    share of each input in it (its area; a half block counts half to each of its inputs).
    Kim, Choo, Jeong and Song, ICLR 2021, arXiv 2102.03065.

    The batch has ``K = partition`` sources per output (``MixedBatch.from_sources``):
    ``sources[i, 0] = i`` (output ``i`` is listed as drawn from its own input, with
    weight ``lam``, often 0), then the other inputs of its partition by
    decreasing weight, so ``perm`` is each output's main other source and inputs
    it does not use come last with weight 0; ``mb.mask`` is the per-pixel weight
    of the output's own input. ``partition=2`` gives ordinary two-source batches.
    Train with a loss defined for any number of sources; the authors train with
    :func:`mixlab.losses.bce_softmax` (``BCELoss(softmax(logits), target)``).

    With ``clean_weight > 0`` (the code's ``clean_lam``, 1 by default), ``needs``
    asks for the saliency pass in train mode with its loss kept, and
    :meth:`loss_terms` adds ``clean_weight * 2 / C * CE(model(x), y)`` (``C``
    classes): the clean-input term of the authors' ``main.py``, at the scale it
    has there next to ``bce_softmax`` (a mean over ``N * C`` terms).

    Defaults are the authors' CIFAR command (README, and the published run's
    ``checkpoint/.../log.txt``): ``grid=4`` (``m_block_num``), ``partition=20``
    (``m_part``), ``beta=0.32``, ``gamma=1``, ``eta=0.05``, ``tau=0.83``,
    ``omega=0.001``, ``threshold="hard"``, ``alpha=2`` (``mixup_alpha``),
    ``sweeps=4`` (``m_niter``), ``resolve=True`` (``set_resolve``),
    ``clean_weight=1`` (``clean_lam``), half blocks on.

    Where this departs from the authors' code: each output's own labelling is
    solved by ICM from each block's cheapest label (:func:`solve_comixup`)
    rather than by gco's alpha-beta swap; every sweep is run (the code stops
    early when its unthresholded objective stops changing); the compatibility
    peaks are found with a one-block window (the code's fixed 8 pixels, one
    block on CIFAR); blocks are the exact partition of :mod:`mixlab.methods.blocks`
    (the code pools ``width // m_block_num`` pixels and drops any remainder);
    the label weights are pixel shares (the code's block shares; equal when the
    grid divides the image); a short last partition is solved like the others.
    Cost: ``partition * sweeps`` sequential updates (80 by
    default) whatever the batch size, each vectorised over the partitions.

    Args:
        grid: blocks per spatial dim (int or one per dim; capped at the size). Code: 4 (``m_block_num``).
        partition: inputs per partition, ``m`` >= 2 (``m_part``, 20); also the sources per output.
        beta: smoothness weight (``m_beta``, 0.32).
        gamma: diversity weight (``m_gamma``, 1.0).
        eta: prior weight (``m_eta``, 0.05).
        tau: over-use threshold, in images (``m_thres``, 0.83).
        omega: weight of the input compatibility in ``A`` (``m_omega``, 0.001).
        threshold: ``"hard"`` (``m_thres_type``'s default) or ``"soft"``.
        half_blocks: allow 50/50 half blocks from the second sweep on (the code's multi-label extension).
        resolve: push apart outputs drawn from exactly the same inputs (``set_resolve``, on).
        sweeps: outer iterations (``m_niter``, 4).
        clean_weight: weight of the clean-input loss (``clean_lam``, 1.0); 0 turns it off.
        **kwargs: the :class:`~mixlab.methods.base.Mixer` options ``alpha`` (the Dirichlet
            concentration, ``mixup_alpha``, default 2), ``p`` (per batch), ``num_classes``,
            ``inplace``, ``seed``, ``validate``. ``lam``, ``lam_range``, ``lam_mode="sample"``
            and other pairings are refused: the prior is a Dirichlet draw per partition.

    Example:
        >>> import torch
        >>> from mixlab.methods.context import MixContext
        >>> from mixlab.models import create_model
        >>> net = create_model("cnn_small", num_classes=3, in_channels=1, input_size=16)
        >>> x, y = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> mixer = CoMixup(partition=3)
        >>> mb = mixer(x, y, torch.Generator().manual_seed(0), context=MixContext(mixer, net)(x, y))
        >>> mb.num_sources, mb.soft_targets(3).sum(1).allclose(torch.ones(6))
        (3, True)
    """

    name = "comixup"
    spatial = True
    default_alpha = 2.0

    def __init__(
        self,
        *,
        grid: int | Sequence[int] = 4,
        partition: int = 20,
        beta: float = 0.32,
        gamma: float = 1.0,
        eta: float = 0.05,
        tau: float = 0.83,
        omega: float = 0.001,
        threshold: str = "hard",
        half_blocks: bool = True,
        resolve: bool = True,
        sweeps: int = 4,
        clean_weight: float = 1.0,
        **kwargs: Any,
    ):
        for option in ("lam", "lam_range", "sigma"):
            if kwargs.get(option) is not None:
                raise MixlabValueError(
                    f"comixup draws its prior from Dirichlet(alpha) per partition and takes no {option}; "
                    f"got {option}={kwargs[option]!r} (give alpha instead)"
                )
        if kwargs.get("lam_mode", "batch") != "batch":
            raise MixlabValueError(
                f"comixup draws one prior per partition; lam_mode must be 'batch'; got {kwargs['lam_mode']!r}"
            )
        if kwargs.get("pairing", "random") != "random":
            raise MixlabValueError(
                "comixup chooses the sources of each output itself; pairing must be 'random'; "
                f"got {kwargs['pairing']!r}"
            )
        super().__init__(**kwargs)
        self.grid = _check_grid(grid)
        self.partition = check_int("partition", partition, 2)
        self.beta = check_non_negative("beta", beta)
        self.gamma = check_non_negative("gamma", gamma)
        self.eta = check_non_negative("eta", eta)
        self.tau = check_non_negative("tau", tau)
        self.omega = check_probability("omega", omega)
        self.threshold = check_choice("threshold", threshold, THRESHOLDS)
        self.half_blocks = _check_bool("half_blocks", half_blocks)
        self.resolve = _check_bool("resolve", resolve)
        self.sweeps = check_int("sweeps", sweeps, 1)
        self.clean_weight = check_non_negative("clean_weight", clean_weight)

    @property
    def num_sources(self) -> int:
        """The most inputs an output is drawn from: ``partition``.

        Example:
            >>> CoMixup().num_sources
            20
        """
        return self.partition

    @property
    def needs(self) -> MixerNeeds:
        """The input saliency, and with ``clean_weight > 0`` the clean loss of the same pass.

        Example:
            >>> CoMixup().needs.clean_loss, CoMixup(clean_weight=0.0).needs.clean_loss
            (True, False)
        """
        return MixerNeeds(saliency=True, clean_loss=self.clean_weight > 0)

    def _check_context(self, context: dict[str, Any]) -> None:
        if context.get(SALIENCY) is None:
            raise MixlabValueError(
                "comixup needs the input saliency in context['saliency']; build it with "
                "mixlab.methods.context.MixContext: mb = mixer(x, y, context=MixContext(mixer, model)(x, y))"
            )

    def _draw(
        self, x: Tensor, y: Tensor, rng: np.random.Generator, alpha_scale: float, context: dict | None
    ) -> MixParams:
        """The ``p`` draw, then :meth:`_solve` (no partners or ratios are drawn: the solver chooses the sources)."""
        if (self.p < 1.0 and rng.random() >= self.p) or x.shape[0] < 2:
            return unmixed_params(x)
        return self._solve(x, rng, context or {}, alpha_scale)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        """Unused by :meth:`_draw` (Co-Mixup draws no partners or ratios); solves as :meth:`_solve` does."""
        return self._solve(x, rng, context, 1.0)

    def _solve(self, x: Tensor, rng: np.random.Generator, context: dict, alpha_scale: float) -> MixParams:
        """Draw the priors and the starting labels, solve every partition, and turn the labels into params."""
        n, spatial = x.shape[0], tuple(x.shape[2:])
        saliency = context[SALIENCY]
        if not isinstance(saliency, Tensor) or tuple(saliency.shape) != (n, *spatial):
            shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
            raise MixlabValueError(f"comixup: context['saliency'] must have shape {(n, *spatial)}; got {shape}")
        blocks = block_counts(spatial, self.grid)
        k = math.prod(blocks)
        m = min(self.partition, n)
        parts = -(-n // m)
        sizes = np.minimum(m, n - m * np.arange(parts))
        prior = self._prior(sizes, m, rng, alpha_scale)
        start = np.floor(rng.random((parts, m, k)) * sizes[:, None, None]).astype(np.int64)
        saliency = saliency.detach().to(x.device)
        compat = None  # the identity
        if self.omega > 0:
            padded = torch.zeros(parts * m, *spatial, device=x.device)
            padded[:n] = saliency.float()
            present = (torch.arange(parts * m, device=x.device) < n).view(parts, m)
            compat = compatibility_matrix(padded, blocks, self.omega, parts, present)
        problem = CoMixupProblem.build(
            block_saliency(saliency, blocks).flatten(1),
            blocks,
            partition=m,
            prior=torch.from_numpy(prior).to(x.device),
            compat=compat,
            beta=self.beta,
            gamma=self.gamma,
            eta=self.eta,
            tau=self.tau,
            threshold=self.threshold,
        )
        first, second = solve_comixup(
            problem,
            torch.from_numpy(start).to(x.device),
            sweeps=self.sweeps,
            half_blocks=self.half_blocks,
            resolve=self.resolve,
        )
        return assignment_params(first, second, blocks, spatial, n, x.dtype)

    def _prior(self, sizes: np.ndarray, m: int, rng: np.random.Generator, alpha_scale: float) -> np.ndarray:
        """``(P, m)`` Dirichlet draws over each partition's inputs (padding gets weight 1, never used)."""
        concentration = self.lam_sampler.alpha * alpha_scale
        if not concentration > 0:
            raise MixlabValueError(f"comixup needs alpha * alpha_scale > 0; got {concentration!r}")
        prior = np.ones((len(sizes), m))
        for size in np.unique(sizes):  # at most two sizes: full partitions and a shorter last one
            rows = np.flatnonzero(sizes == size)
            prior[rows, :size] = rng.dirichlet(np.full(size, concentration), size=len(rows))
        return prior.astype(np.float32)

    def apply(self, x: Tensor, y: Tensor, params: MixParams, *, context: dict[str, Any] | None = None) -> MixedBatch:
        """Assemble the outputs from the blocks ``params.extra`` names; keep the clean loss for :meth:`loss_terms`."""
        check_params_fit_batch(params, x)
        aux: dict[str, Any] = {}
        keep_clean_loss(aux, context, self.clean_weight)
        if not params.mixed:
            mb = MixedBatch.unmixed(x, y)
            mb.aux.update(aux)
            return mb
        inputs = self._mix(x, params, context or {})
        extra = params.extra
        return MixedBatch.from_sources(
            inputs, y, extra["sources"], extra["weights"], mask=params.weight, aux=aux, check_weights=False
        )

    def _mix(self, x: Tensor, params: MixParams, context: dict[str, Any]) -> Tensor:
        """Output pixels from the inputs ``first`` and ``second`` of their block (their mean in a half block)."""
        n, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
        flat = x.reshape(n, channels, -1)
        take = [
            expand_blocks(params.extra[key], spatial).reshape(n, 1, -1).expand_as(flat) for key in ("first", "second")
        ]
        one, other = flat.gather(0, take[0]), flat.gather(0, take[1])
        out = one.lerp_(other, (take[0] != take[1]).to(x.dtype) * 0.5).view_as(x)
        return x.copy_(out) if self.inplace else out

    def loss_terms(self, mb: MixedBatch, outputs: Tensor) -> dict[str, Tensor]:
        """``{"clean": clean_weight * 2 / C * CE}`` from the saliency pass's loss, or nothing without one.

        The authors' ``main.py`` back-propagates ``2 * clean_lam * CE / num_classes`` before the
        mixed loss, ``BCELoss(softmax(logits), target)``: a mean over classes, so the clean
        cross-entropy is scaled by ``2 / C`` to keep the same balance.

        Example:
            >>> mb = MixedBatch.unmixed(torch.zeros(2, 1), torch.tensor([0, 1]))
            >>> mb.aux["clean_loss"] = torch.tensor(2.5)
            >>> CoMixup().loss_terms(mb, torch.zeros(2, 10))
            {'clean': tensor(0.5000)}
        """
        return clean_loss_terms(mb.aux, outputs, self.clean_weight)

    def __repr__(self) -> str:
        return (
            f"CoMixup(grid={self.grid!r}, partition={self.partition}, beta={self.beta}, gamma={self.gamma}, "
            f"eta={self.eta}, tau={self.tau}, omega={self.omega}, threshold={self.threshold!r}, "
            f"half_blocks={self.half_blocks}, resolve={self.resolve}, sweeps={self.sweeps}, "
            f"clean_weight={self.clean_weight}, lam={self.lam_sampler!r}, p={self.p})"
        )


def assignment_params(
    first: Tensor, second: Tensor, blocks: Sequence[int], spatial: Sequence[int], n: int, dtype: torch.dtype
) -> MixParams:
    """Params for labels ``(P, m, K)`` numbered within partitions: sources, label weights, own-input mask.

    Output ``i``'s sources are ``i`` itself, then the other inputs of its partition
    by decreasing weight (an input it does not use has weight 0); its weights are
    the shares of their pixels in it (half blocks count half to each input).

    Example:
        >>> first = torch.tensor([[[0, 1], [1, 1]]])
        >>> params = assignment_params(first, first, (2,), (4,), 2, torch.float32)
        >>> params.extra["sources"].tolist(), params.extra["weights"].tolist()
        ([[0, 1], [1, 0]], [[0.5, 0.5], [1.0, 0.0]])
    """
    parts, m, k = first.shape
    device = first.device
    area = _block_areas(spatial, blocks, device)
    half = (0.5 * area).expand(parts, m, k)
    share = torch.zeros(parts, m, m, device=device).scatter_add_(-1, first, half).scatter_add_(-1, second, half)
    share = share.reshape(parts * m, m)[:n]
    own = torch.arange(n, device=device) % m
    order = share.scatter(1, own.unsqueeze(1), 2.0).argsort(dim=1, descending=True, stable=True)
    offset = (torch.arange(n, device=device) // m * m).unsqueeze(1)
    sources = torch.where(order + offset < n, order + offset, torch.arange(n, device=device).unsqueeze(1))
    weights = share.gather(1, order)
    weights = weights / weights.sum(1, keepdim=True)
    first_global = (first + torch.arange(parts, device=device).view(-1, 1, 1) * m).reshape(parts * m, k)[:n]
    second_global = (second + torch.arange(parts, device=device).view(-1, 1, 1) * m).reshape(parts * m, k)[:n]
    own_blocks = 0.5 * ((first_global == torch.arange(n, device=device).unsqueeze(1)).float())
    own_blocks = own_blocks + 0.5 * (second_global == torch.arange(n, device=device).unsqueeze(1)).float()
    mask = expand_blocks(own_blocks.view(n, *blocks), spatial).unsqueeze(1).to(dtype)
    return MixParams(
        perm=sources[:, 1].contiguous(),
        lam=weights[:, 0].contiguous(),
        weight=mask,
        extra={
            "sources": sources,
            "weights": weights,
            "first": first_global.view(n, *blocks),
            "second": second_global.view(n, *blocks),
        },
    )


def _block_areas(spatial: Sequence[int], blocks: Sequence[int], device: torch.device) -> Tensor:
    """``(K,)``: each block's share of the pixels (blocks as :func:`mixlab.masks.block_index` cuts them)."""
    area = torch.ones((), device=device)
    for size, count in zip(spatial, blocks, strict=True):
        area = area.unsqueeze(-1) * torch.bincount(block_index(size, count, device), minlength=count)
    return area.flatten() / math.prod(spatial)


def _check_grid(grid: object) -> int | tuple[int, ...]:
    """``grid`` as an int >= 1 or a tuple of them; raise otherwise."""
    if isinstance(grid, (tuple, list)):
        if not grid:
            raise MixlabValueError("grid must give at least one block count; got an empty sequence")
        return tuple(check_int("grid", g, 1) for g in grid)
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)):
        raise MixlabTypeError(f"grid must be an int or a tuple of ints; got {grid!r} of type {type(grid).__name__}")
    return check_int("grid", grid, 1)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise MixlabTypeError(f"{name} must be True or False; got {value!r} of type {type(value).__name__}")
    return bool(value)


__all__ = [
    "BlockGraph",
    "CoMixup",
    "CoMixupProblem",
    "assignment_params",
    "compatibility_matrix",
    "smoothness_cost",
    "solve_comixup",
    "source_usage",
]
