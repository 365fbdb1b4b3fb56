"""Saliency-guided mixing: SaliencyMix with batched spectral-residual saliency."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab import masks
from mixlab.methods.base import MixParams
from mixlab.methods.masking import CutMix, _box_params

#: Saliency is computed at most this many positions per spatial dim (Hou and Zhang use 64).
SALIENCY_SIZE = 64
_POOLS = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_BOX = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def spectral_residual_saliency(x: Tensor, size: int = SALIENCY_SIZE, blur_sigma: float = 2.5) -> Tensor:
    """Spectral-residual saliency of every sample at once, ``(N, *spatial')``.

    Channels are averaged, each spatial dim is pooled to at most ``size``, and
    the saliency is ``|IFFT(exp(R + i*phase))|^2`` with ``R`` the log amplitude
    minus its 3-wide local mean, then a Gaussian blur. Runs on ``x``'s device
    with no per-sample loop. Hou and Zhang, CVPR 2007 ("Saliency Detection: A
    Spectral Residual Approach"), as used by SaliencyMix.

    Example:
        >>> x = 0.1 * torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> x[0, 0, 20:24, 8:12] = 1.0  # a bright square on a faint noisy background
        >>> divmod(int(spectral_residual_saliency(x)[0].argmax()), 32)
        (22, 9)
    """
    d = x.ndim - 2
    gray = x.float().mean(dim=1, keepdim=True)
    work = tuple(min(s, size) for s in x.shape[2:])
    if work != tuple(x.shape[2:]):
        gray = _POOLS[d](gray, work)
    dims = tuple(range(2, 2 + d))
    spectrum = torch.fft.fftn(gray, dim=dims)
    log_amp = torch.log(spectrum.abs() + 1e-8)
    local_mean = _BOX[d](F.pad(log_amp, (1, 1) * d, mode="replicate"), 3, stride=1)
    residual = log_amp - local_mean
    phase = torch.angle(spectrum)
    sal = torch.fft.ifftn(torch.polar(torch.exp(residual), phase), dim=dims).abs().square()
    return _gaussian_blur(sal, blur_sigma).squeeze(1)


def _gaussian_blur(t: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, 1, *spatial)`` along every spatial dim, replicate-padded."""
    radius = max(1, math.ceil(2.5 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=t.device, dtype=t.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma).square())
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    for dim in range(2, t.ndim):
        moved = t.movedim(dim, -1)
        flat = moved.reshape(-1, 1, moved.shape[-1])
        flat = F.conv1d(F.pad(flat, (radius, radius), mode="replicate"), kernel)
        t = flat.reshape(moved.shape).movedim(-1, dim)
    return t


def saliency_peaks(x: Tensor, size: int = SALIENCY_SIZE) -> Tensor:
    """The position of each sample's saliency peak in ``x``'s own coordinates, ``(N, d)`` long CPU.

    Example:
        >>> x = torch.zeros(2, 3, 16); x[1, :, 12] = 5.0
        >>> int(saliency_peaks(x)[1, 0]) in range(10, 15)
        True
    """
    sal = spectral_residual_saliency(x, size)
    work = sal.shape[1:]
    flat_index = sal.flatten(1).argmax(dim=1).cpu()
    coords = []
    for extent in reversed(work):
        coords.append(flat_index % extent)
        flat_index = flat_index // extent
    coords = torch.stack(coords[::-1], dim=1)
    full = torch.tensor(list(x.shape[2:]))
    scale = full.to(torch.float64) / torch.tensor(list(work), dtype=torch.float64)
    return ((coords.to(torch.float64) + 0.5) * scale).long().minimum(full - 1)


class SaliencyMix(CutMix):
    """SaliencyMix: a CutMix box centred on the saliency peak of ``x_j``, pasted at the same place.

    Saliency is the spectral residual of each image, computed for the whole
    batch on its device. The box contains the partner's peak; ``lam`` is the
    exact kept share. Default ``alpha=0.2``. Uddin et al., ICLR 2021, arXiv 2006.01791.

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.SaliencyMix(lam=0.75)(torch.rand(4, 3, 16, 16), torch.arange(4))
        >>> mb.inputs.shape
        torch.Size([4, 3, 16, 16])
    """

    name = "saliencymix"

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        centres = saliency_peaks(x)[perm.cpu()].numpy()
        lo, hi = masks.box_bounds(x.shape[2:], np.broadcast_to(lam, len(centres)), rng, centres=centres)
        return _box_params(x, perm, lo, hi)
