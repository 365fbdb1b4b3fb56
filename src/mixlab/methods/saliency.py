"""Saliency-guided mixing: SaliencyMix with batched spectral-residual saliency."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from mixlab import masks
from mixlab.masks import rfft_frequencies
from mixlab.methods.base import MixParams
from mixlab.methods.masking import CutMix, _box_params

#: Saliency is computed at about this many positions per spatial dim (Hou and Zhang use 64).
SALIENCY_SIZE = 32


def spectral_residual_saliency(x: Tensor, size: int = SALIENCY_SIZE, blur_sigma: float | None = None) -> Tensor:
    """Spectral-residual saliency of every sample at once, ``(N, *spatial')``.

    Channels are averaged and each spatial dim is average-pooled by an integer
    factor to about ``size`` positions. With ``F`` the FFT, the saliency is
    ``|IFFT(exp(R + i*phase(F)))|^2`` where ``R`` is the log amplitude minus its
    3-wide local mean; since ``exp(R + i*phase) = F * exp(-local_mean(log|F|))``
    no phase is computed. The map is blurred by a Gaussian of ``blur_sigma``
    positions (default ``size / 16``), applied in the frequency domain. Runs on
    ``x``'s device with no per-sample loop. Hou and Zhang, CVPR 2007
    ("Saliency Detection: A Spectral Residual Approach"), as used by SaliencyMix.

    Example:
        >>> x = 0.1 * torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> x[0, 0, 20:24, 8:12] = 1.0  # a bright square on a faint noisy background
        >>> r, c = divmod(int(spectral_residual_saliency(x)[0].argmax()), 32)
        >>> 18 <= r <= 25 and 6 <= c <= 13
        True
    """
    gray = _pool(x.float().mean(dim=1), size)
    dims = tuple(range(1, gray.ndim))
    spectrum = torch.fft.fftn(gray, dim=dims)
    local_mean = 0.5 * torch.log(spectrum.real.square() + spectrum.imag.square() + 1e-12)
    for dim in dims:  # the spectrum is periodic: wrap around
        local_mean = (local_mean.roll(1, dim) + local_mean + local_mean.roll(-1, dim)) / 3.0
    residual = torch.fft.ifftn(spectrum * torch.exp(-local_mean), dim=dims)
    saliency = residual.real.square() + residual.imag.square()
    sigma = size / 16.0 if blur_sigma is None else blur_sigma
    transfer = _gaussian_transfer(tuple(saliency.shape[1:]), sigma, saliency.device)
    return torch.fft.irfftn(torch.fft.rfftn(saliency, dim=dims) * transfer, s=saliency.shape[1:], dim=dims)


def _pool(gray: Tensor, size: int) -> Tensor:
    """Average-pool each spatial dim of ``(N, *spatial)`` by ``max(1, s // size)`` (an integer factor)."""
    factors = [max(1, s // size) for s in gray.shape[1:]]
    if all(f == 1 for f in factors):
        return gray
    crop = tuple(slice(0, (s // f) * f) for s, f in zip(gray.shape[1:], factors, strict=True))
    cropped = gray[(slice(None), *crop)]
    split = [gray.shape[0]]
    for s, f in zip(cropped.shape[1:], factors, strict=True):
        split += [s // f, f]
    return cropped.reshape(split).mean(dim=tuple(range(2, len(split), 2)))


@functools.lru_cache(maxsize=32)
def _gaussian_transfer(shape: tuple[int, ...], sigma: float, device: torch.device) -> Tensor:
    """The frequency response of a (circular) Gaussian blur of ``sigma`` positions, on the ``rfftn`` grid."""
    return torch.exp(-2.0 * math.pi**2 * sigma**2 * rfft_frequencies(shape, device).square())


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
