"""The block grid that saliency mixers optimise over: one partition, one saliency pooling, one upsampling.

PuzzleMix (Kim et al., ICML 2020, arXiv 2009.06962) and Co-Mixup (Kim et al.,
ICLR 2021, arXiv 2102.03065) choose a label per block of a coarse grid and
expand it to pixels. Both, and GridMix's cells, split a dim of ``size``
positions into ``blocks`` parts with :func:`mixlab.masks.block_index`
(``floor(i * blocks / size)``: parts differ by at most one position), so the
saliency a block is credited with is exactly the saliency its pixels keep.

Example:
    >>> import torch
    >>> s = torch.zeros(1, 4, 4)
    >>> s[0, :2, :2] = 1.0
    >>> block_saliency(s, (2, 2))
    tensor([[[1., 0.],
             [0., 0.]]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.errors import MixlabValueError
from mixlab.masks import block_index


def block_counts(spatial: Sequence[int], grid: int | Sequence[int]) -> tuple[int, ...]:
    """Blocks per spatial dim: ``grid`` (one count, or one per dim), never more than the dim's size.

    Example:
        >>> block_counts((28, 28), 4)
        (4, 4)
        >>> block_counts((3, 16), (4, 2))
        (3, 2)
    """
    per_dim = [grid] * len(spatial) if isinstance(grid, int) else list(grid)
    if len(per_dim) != len(spatial):
        raise MixlabValueError(f"grid must give one block count per spatial dim {tuple(spatial)}; got {grid!r}")
    return tuple(min(int(g), int(s)) for g, s in zip(per_dim, spatial, strict=True))


def block_sums(values: Tensor, blocks: Sequence[int]) -> Tensor:
    """Sum ``(N, *spatial)`` values over each block: ``(N, *blocks)`` float32 (any number of spatial dims).

    Example:
        >>> block_sums(torch.arange(6.0).view(1, 6), (3,))
        tensor([[1., 5., 9.]])
    """
    pooled = values.float()
    for axis, (size, count) in enumerate(zip(values.shape[1:], blocks, strict=True)):
        assign = F.one_hot(block_index(size, count, pooled.device), count).to(pooled.dtype)
        pooled = (pooled.movedim(axis + 1, -1) @ assign).movedim(-1, axis + 1)
    return pooled


def block_saliency(saliency: Tensor, blocks: Sequence[int]) -> Tensor:
    """Block sums of ``|saliency|``, normalised to sum 1 per sample: ``(N, *blocks)`` float32.

    Non-finite values count as 0, and a sample with no saliency at all gets a
    uniform map (every block equally important) rather than a division by zero.
    Both papers pool the saliency to the grid and normalise it per input.

    Example:
        >>> block_saliency(torch.zeros(1, 2, 2), (2, 1))
        tensor([[[0.5000],
                 [0.5000]]])
    """
    clean = torch.nan_to_num(saliency.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).abs()
    pooled = block_sums(clean, blocks)
    total = pooled.flatten(1).sum(1).view(-1, *([1] * len(blocks)))
    uniform = torch.full_like(pooled, 1.0 / max(pooled[0].numel(), 1))
    return torch.where(total > 0, pooled / total.clamp_min(torch.finfo(pooled.dtype).tiny), uniform)


def expand_blocks(values: Tensor, spatial: Sequence[int]) -> Tensor:
    """Expand ``(N, *blocks)`` block values to ``(N, *spatial)``, each pixel taking its block's value.

    Example:
        >>> expand_blocks(torch.tensor([[1.0, 0.0]]), (5,))
        tensor([[1., 1., 1., 0., 0.]])
    """
    out = values
    for axis, size in enumerate(spatial):
        out = out.index_select(axis + 1, block_index(size, values.shape[axis + 1], values.device))
    return out


__all__ = ["block_counts", "block_index", "block_saliency", "block_sums", "expand_blocks"]
