"""Mask builders over the trailing 1, 2 or 3 (spatial) dims.

Every builder returns the weight of the *original* sample ``x_i`` at each
position, shaped ``(M, 1, *spatial)`` with ``M`` the number of masks (1 for a
batch-shared mask, ``N`` for one per sample), in float32 on the requested
device. A weight of 1 keeps ``x_i``; 0 takes the partner ``x_j``. Random draws
come from explicit generators only.

Example:
    >>> import torch
    >>> lo, hi = box_bounds((8, 8), torch.tensor([0.75], dtype=torch.float64), torch.Generator().manual_seed(0))
    >>> w = box_weight((8, 8), lo, hi, torch.device("cpu"))
    >>> w.shape, float(w.mean()) == float(box_keep_fraction((8, 8), lo, hi)[0])
    (torch.Size([1, 1, 8, 8]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Shape = Sequence[int]


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """Return a generator on ``device`` driven by the CPU ``generator``.

    Large random fields (Fourier masks) are drawn where they are used, so no
    big host-to-device copy is needed; on the CPU the generator itself is used.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> device_generator(g, torch.device("cpu")) is g
        True
    """
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _aranges(shape: Shape, device: torch.device) -> list[torch.Tensor]:
    """One coordinate vector per spatial dim, shaped to broadcast over ``(M, *shape)``."""
    d = len(shape)
    out = []
    for k, size in enumerate(shape):
        view = [1] * (d + 1)
        view[k + 1] = size
        out.append(torch.arange(size, device=device).view(view))
    return out


# ---------------------------------------------------------------- boxes


def box_bounds(
    shape: Shape, lam: torch.Tensor, generator: torch.Generator, centres: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw CutMix boxes of volume ``(1 - lam)`` of ``shape``, clipped to it.

    Each side is ``round(size * (1 - lam) ** (1 / d))`` for ``d`` spatial dims;
    the centre is uniform over the positions unless ``centres`` ``(M, d)`` is
    given (SaliencyMix). Boxes are clipped at the border, so the kept fraction
    can exceed ``lam``: use :func:`box_keep_fraction` for the true one
    (Yun et al., ICCV 2019, arXiv 1905.04899).

    Returns:
        ``(lo, hi)``: ``(M, d)`` long CPU tensors, the box is ``lo <= p < hi``.

    Example:
        >>> lo, hi = box_bounds((10,), torch.tensor([0.5], dtype=torch.float64), torch.Generator().manual_seed(1))
        >>> int((hi - lo)[0, 0]) <= 5
        True
    """
    sizes = torch.tensor(list(shape), dtype=torch.float64)
    d = len(shape)
    ratio = (1.0 - lam.to(torch.float64)).clamp(0.0, 1.0).pow(1.0 / d)
    sides = torch.round(ratio.unsqueeze(1) * sizes).long()
    if centres is None:
        u = torch.rand(lam.shape[0], d, generator=generator, dtype=torch.float64)
        centres = (u * sizes).long()
    lo = centres - sides // 2
    hi = lo + sides
    limit = sizes.long()
    return lo.clamp(min=0).minimum(limit), hi.clamp(min=0).minimum(limit)


def box_keep_fraction(shape: Shape, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The exact fraction of positions outside each box, ``(M,)`` float64.

    Example:
        >>> box_keep_fraction((4, 4), torch.tensor([[0, 0]]), torch.tensor([[2, 2]]))
        tensor([0.7500], dtype=torch.float64)
    """
    inside = (hi - lo).clamp(min=0).prod(dim=1).to(torch.float64)
    return 1.0 - inside / math.prod(shape)


def box_weight(shape: Shape, lo: torch.Tensor, hi: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Binary weight of ``x_i``: 0 inside each box, 1 outside; ``(M, 1, *shape)`` float32.

    Example:
        >>> box_weight((3,), torch.tensor([[1]]), torch.tensor([[2]]), torch.device("cpu"))
        tensor([[[1., 0., 1.]]])
    """
    lo, hi = lo.to(device), hi.to(device)
    inside = None
    for k, coord in enumerate(_aranges(shape, device)):
        view = [-1] + [1] * len(shape)
        in_k = (coord >= lo[:, k].view(view)) & (coord < hi[:, k].view(view))
        inside = in_k if inside is None else inside & in_k
    return (~inside).unsqueeze(1).to(torch.float32)


def box_slices(lo: torch.Tensor, hi: torch.Tensor) -> tuple[slice, ...]:
    """Index slices ``(..., s_1, ..., s_d)`` for one box given as ``(1, d)`` bounds.

    Example:
        >>> box_slices(torch.tensor([[1, 2]]), torch.tensor([[3, 4]]))
        (Ellipsis, slice(1, 3, None), slice(2, 4, None))
    """
    return (Ellipsis, *(slice(int(a), int(b)) for a, b in zip(lo[0].tolist(), hi[0].tolist(), strict=False)))


# ---------------------------------------------------------------- Fourier (FMix)


def fourier_weight(
    shape: Shape, lam: torch.Tensor, generator: torch.Generator, device: torch.device, decay_power: float = 3.0
) -> torch.Tensor:
    """FMix masks: threshold a random low-frequency field so a ``lam`` share is kept.

    A complex Gaussian spectrum scaled by ``1 / f ** decay_power`` is turned
    back into a real field; its top ``round(lam * numel)`` positions keep
    ``x_i`` (Harris et al., 2020, arXiv 2002.12047).

    Example:
        >>> w = fourier_weight((16, 16), torch.tensor([0.25], dtype=torch.float64), torch.Generator().manual_seed(0), torch.device("cpu"))
        >>> float(w.mean())
        0.25
    """
    m = lam.shape[0]
    freqs = _frequency_grid(shape, device)
    scale = freqs.clamp(min=1.0 / max(shape)).pow(-decay_power)
    gen = device_generator(generator, device)
    spectrum = torch.randn((m, *freqs.shape, 2), generator=gen, device=device)
    spectrum = torch.view_as_complex(spectrum) * scale
    field = torch.fft.irfftn(spectrum, s=tuple(shape), dim=tuple(range(1, len(shape) + 1))).reshape(m, -1)
    keep = torch.round(lam.to(device, torch.float64) * field.shape[1]).long()
    return _top_k_rows(field, keep).view(m, 1, *shape)


def _frequency_grid(shape: Shape, device: torch.device) -> torch.Tensor:
    """Magnitude of the spatial frequency at each coefficient of an ``rfftn`` of ``shape``."""
    axes = [torch.fft.fftfreq(s, device=device) for s in shape[:-1]]
    axes.append(torch.fft.rfftfreq(shape[-1], device=device))
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g.square() for g in grids))


def _top_k_rows(values: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Float mask with 1 at the ``k[i]`` largest entries of each row of ``values``."""
    n = values.shape[1]
    order = values.argsort(dim=1, descending=True)
    ranks_kept = torch.arange(n, device=values.device).unsqueeze(0) < k.unsqueeze(1)
    return torch.zeros_like(values, dtype=torch.float32).scatter_(1, order, ranks_kept.to(torch.float32))


# ---------------------------------------------------------------- grid (GridMix)


def grid_weight(
    shape: Shape, lam: torch.Tensor, cells: torch.Tensor, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """GridMix masks: split each spatial dim into ``cells[i]`` parts; each cell keeps ``x_i`` w.p. ``lam``.

    Cells are as even as integer sizes allow (Baek et al., Pattern Recognition 2021).

    Example:
        >>> w = grid_weight((4, 4), torch.tensor([0.5], dtype=torch.float64), torch.tensor([2]), torch.Generator().manual_seed(0), torch.device("cpu"))
        >>> sorted(set(w.flatten().tolist())) in ([0.0, 1.0], [0.0], [1.0])
        True
    """
    m, d = lam.shape[0], len(shape)
    max_cells = int(cells.max())
    keep = torch.rand(m, max_cells**d, generator=generator, dtype=torch.float64) < lam.unsqueeze(1)
    keep = keep.to(device, torch.float32)
    n = cells.to(device).view(-1, *([1] * d))
    cell_index = torch.zeros((m, *shape), dtype=torch.long, device=device)
    for coord in _aranges(shape, device):
        size = coord.numel()
        cell_index = cell_index * max_cells + (coord * n) // size
    return torch.gather(keep, 1, cell_index.view(m, -1)).view(m, 1, *shape)


# ---------------------------------------------------------------- smooth (SmoothMix)


def smooth_weight(shape: Shape, lam: torch.Tensor, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """SmoothMix masks: ``1 - G`` with ``G`` a Gaussian blob of the partner, soft-edged.

    The blob has a uniform centre and, per dim, a width ``sigma_k = s * size_k``
    chosen so its unclipped volume is ``(1 - lam)`` of the input; clipping at the
    border makes the true kept fraction (the mask mean) somewhat larger
    (Lee et al., CVPR Workshops 2020).

    Example:
        >>> w = smooth_weight((8, 8), torch.tensor([0.5], dtype=torch.float64), torch.Generator().manual_seed(0), torch.device("cpu"))
        >>> bool((w >= 0).all() and (w <= 1).all())
        True
    """
    m, d = lam.shape[0], len(shape)
    area = (1.0 - lam.to(torch.float64)).clamp(0.0, 1.0)
    rel_sigma = (area / (2.0 * math.pi) ** (d / 2.0)).pow(1.0 / d)
    centres = torch.rand(m, d, generator=generator, dtype=torch.float64)
    exponent = torch.zeros((m, *shape), dtype=torch.float32, device=device)
    for k, coord in enumerate(_aranges(shape, device)):
        size = coord.numel()
        view = [-1] + [1] * d
        sigma = (rel_sigma * size).clamp(min=1e-6).to(device, torch.float32).view(view)
        centre = (centres[:, k] * size).to(device, torch.float32).view(view)
        exponent = exponent + ((coord + 0.5 - centre) / sigma).square()
    blob = torch.exp(-0.5 * exponent)
    blob = torch.where((area > 0).to(device).view([-1] + [1] * d), blob, torch.zeros_like(blob))
    return (1.0 - blob).unsqueeze(1)


# ---------------------------------------------------------------- resized patch (ResizeMix)


def patch_bounds(shape: Shape, scale: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of side ``round(scale * size)`` (at least 1) placed uniformly inside ``shape``.

    Returns ``(lo, hi)`` as ``(M, d)`` long CPU tensors (Qin et al., 2020, arXiv 2012.11101).

    Example:
        >>> lo, hi = patch_bounds((10, 10), torch.tensor([0.5], dtype=torch.float64), torch.Generator().manual_seed(0))
        >>> (hi - lo).tolist()
        [[5, 5]]
    """
    sizes = torch.tensor(list(shape), dtype=torch.float64)
    sides = torch.round(scale.to(torch.float64).unsqueeze(1) * sizes).clamp(min=1).minimum(sizes)
    u = torch.rand(scale.shape[0], len(shape), generator=generator, dtype=torch.float64)
    lo = torch.floor(u * (sizes - sides + 1)).long()
    return lo, lo + sides.long()


def resized_into_boxes(source: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Resample each ``source[i]`` (``(N, C, *spatial)``) so it fills box ``i``; zero elsewhere.

    Uses (bi/tri)linear sampling with the same pixel-centre convention as
    ``torch.nn.functional.interpolate(..., align_corners=False)``.

    Example:
        >>> src = torch.ones(1, 1, 4, 4)
        >>> out = resized_into_boxes(src, torch.tensor([[0, 0]]), torch.tensor([[2, 2]]))
        >>> float(out[0, 0, :2, :2].sum()), float(out[0, 0, 2:, 2:].sum())
        (4.0, 0.0)
    """
    shape = source.shape[2:]
    squeeze_1d = len(shape) == 1
    if squeeze_1d:  # grid_sample has no 1-D mode: treat L as a 1 x L image
        source = source.unsqueeze(2)
        lo = torch.cat([torch.zeros_like(lo), lo], dim=1)
        hi = torch.cat([torch.ones_like(hi), hi], dim=1)
        shape = source.shape[2:]
    device = source.device
    # An empty box (an unmixed sample) gets side 1 so the grid stays finite; its weight hides it.
    lo_d, side = lo.to(device, torch.float32), (hi - lo).clamp(min=1).to(device, torch.float32)
    axes = []
    for k, coord in enumerate(_aranges(shape, device)):
        size = coord.numel()
        view = [-1] + [1] * len(shape)
        src = (coord + 0.5 - lo_d[:, k].view(view)) / side[:, k].view(view) * size - 0.5
        axes.append(((2.0 * src + 1.0) / size - 1.0).expand(source.shape[0], *shape))
    grid = torch.stack(axes[::-1], dim=-1)  # grid_sample wants (x, y[, z]) order
    work = source if source.dtype in (torch.float32, torch.float64) else source.float()
    out = torch.nn.functional.grid_sample(
        work, grid.to(work.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    out = out.to(source.dtype)
    return out.squeeze(2) if squeeze_1d else out
