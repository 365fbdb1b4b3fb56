"""Saliency-guided mixing: SaliencyMix with batched fine-grained (or spectral-residual) saliency."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mixlab.errors import check_choice
from mixlab.masks import rfft_frequencies
from mixlab.methods.base import MixParams
from mixlab.methods.masking import CutMix, _box_params

#: Spectral-residual saliency is computed at about this many positions per spatial dim (Hou and Zhang use 64).
SALIENCY_SIZE = 32

#: The surround windows of the fine-grained saliency, in pixels: OpenCV's ``StaticSaliencyFineGrained``
#: uses the neighbourhoods 3·4, 3·4·2, 3·4·2², 7·4, 7·4·2 and 7·4·2² (Montabone and Soto, 2010).
FINE_GRAINED_SCALES = (12, 24, 48, 28, 56, 112)

#: Saliency maps SaliencyMix can centre its box on.
SALIENCY_METHODS = ("fine_grained", "spectral_residual")

#: Where each box is centred: ``"code"`` on one partner's peak per λ draw, ``"paper"`` on every partner's own peak.
REFERENCES = ("code", "paper")

#: ITU-R BT.601 luma weights of (R, G, B), as OpenCV's grey conversion.
LUMA = (0.299, 0.587, 0.114)


def fine_grained_saliency(x: Tensor, scales: tuple[int, ...] = FINE_GRAINED_SCALES) -> Tensor:
    """Fine-grained static saliency of every sample at once, ``(N, *spatial)`` float32 (peak 1, or all 0).

    The center-surround intensity saliency of Montabone and Soto as OpenCV's
    ``StaticSaliencyFineGrained`` computes it (the map SaliencyMix uses), written
    with tensor ops over the whole batch and any 1-3 spatial dims:

    1. intensity ``I``: the BT.601 luma of RGB inputs, the channel mean otherwise;
    2. smoothed twice by the 3-tap ``[1, 2, 1] / 4`` filter per dim (OpenCV's 3x3
       Gaussian, borders reflected without repeating the edge);
    3. for each scale ``n`` the surround of position ``p`` is the box
       ``[p - n + 1, p + n + 1)`` per dim clipped to ``[0, L - 1]`` (as OpenCV clips it,
       so the last row and column never enter a surround), its sum ``S`` read from the
       integral image (a ``cumsum`` per dim), and the surround mean is
       ``m = (S - I_p) / (|box| - 1)``;
    4. on-centre ``max(I - m, 0)`` and off-centre ``max(m - I, 0)`` responses are each
       summed over the scales and divided by their own maximum over the image;
    5. the saliency is their sum (OpenCV then divides by the larger of the two maxima,
       which is 1 after step 4).

    OpenCV works on 8-bit images and truncates each step to integers (and wraps a sum
    above 255); here the same equations run in float32 on any range of values.
    Montabone and Soto, "Human detection using a mobile platform and novel features
    derived from a visual saliency mechanism", Image and Vision Computing 28(3), 2010.

    The on- and off-centre maps both reach 1, so the map's maximum is usually shared by
    the brightest spot against its surround and the darkest one against its surround
    (often at the border, where OpenCV's clipped windows are small); a peak search
    takes the first in row-major order, as ``np.argmax`` on OpenCV's map does.

    Args:
        x: ``(N, C, *spatial)`` inputs, any floating dtype; ``C = 3`` is read as RGB.
        scales: the surround half-widths ``n`` in pixels.

    Example:
        >>> x = torch.zeros(1, 1, 32, 32); x[0, 0, 12:18, 20:26] = 1.0  # a bright square
        >>> sal = fine_grained_saliency(x)[0]
        >>> float(sal[12:18, 20:26].max()), float(sal.max())  # the on-centre peak is in the square
        (1.0, 1.0)
    """
    gray = smooth_intensity(x)
    # only differences matter: centring keeps the integral image's float32 sums small and a flat image exactly 0
    gray = gray - gray.mean(dim=tuple(range(1, gray.ndim)), keepdim=True)
    contrast = _contrast(gray, tuple(scales))  # (N, *spatial, S)
    on = contrast.clamp_min(0.0).sum(dim=-1)
    off = on - contrast.sum(dim=-1)  # the sum of max(-c, 0) is the sum of max(c, 0) minus the sum of c
    both = torch.stack([on, off], dim=1)  # (N, 2, *spatial)
    peak = both.flatten(2).amax(dim=2).clamp_min_(torch.finfo(torch.float32).tiny)  # an all-zero map stays zero
    return (both / peak.view(*peak.shape, *([1] * (both.ndim - 2)))).sum(dim=1)


def smooth_intensity(x: Tensor) -> Tensor:
    """Steps 1-2 of :func:`fine_grained_saliency`: ``(N, C, *spatial)`` -> smoothed intensity ``(N, *spatial)``.

    Example:
        >>> smooth_intensity(torch.tensor([[[0.0, 0.0, 0.0, 16.0, 0.0, 0.0, 0.0]]]))  # [1, 4, 6, 4, 1] / 16
        tensor([[0., 1., 4., 6., 4., 1., 0.]])
    """
    return _smooth(_intensity(x))


def center_surround_contrast(gray: Tensor, scales: tuple[int, ...] = FINE_GRAINED_SCALES) -> Tensor:
    """Step 3 of :func:`fine_grained_saliency`: ``I_p - m_p`` for every scale, ``(N, S, *spatial)``.

    ``m_p = (S_p - I_p) / (|box_p| - 1)`` with ``S_p`` the sum of ``gray`` over the box
    ``[p - n + 1, p + n + 1)`` per dim clipped to ``[0, L - 1]``, read from a ``cumsum``
    integral image; 0 where the box holds fewer than two positions.

    Example:
        >>> gray = torch.tensor([[0.0, 3.0, 0.0, 0.0]])  # n = 1: the box of p is [p, p + 2) within [0, 3)
        >>> center_surround_contrast(gray, (1,))  # p = 0: 0 - 3; p = 1: 3 - 0; p = 2, 3: boxes too small
        tensor([[[-3.,  3.,  0.,  0.]]])
    """
    return _contrast(gray.float(), tuple(scales)).movedim(-1, 1)


def _contrast(gray: Tensor, scales: tuple[int, ...]) -> Tensor:
    """:func:`center_surround_contrast` with the scales last, ``(N, *spatial, S)``."""
    centre_weight, surround_weight = _surround_weights(tuple(gray.shape[1:]), scales, gray.device)
    # I - (S - I) / (|box| - 1) = a I - b S
    return torch.addcmul(gray.unsqueeze(-1) * centre_weight, _box_sums(gray, scales), surround_weight, value=-1.0)


def _intensity(x: Tensor) -> Tensor:
    """``(N, C, *spatial)`` -> ``(N, *spatial)`` float32: BT.601 luma for 3 channels, the mean otherwise."""
    n, channels = x.shape[:2]
    flat = torch.matmul(_channel_weights(channels, x.device), x.float().reshape(n, channels, -1))
    return flat.view(n, *x.shape[2:])


@functools.lru_cache(maxsize=8)
def _channel_weights(channels: int, device: torch.device) -> Tensor:
    weights = LUMA if channels == 3 else (1.0 / channels,) * channels
    return torch.tensor(weights, dtype=torch.float32, device=device)


def _smooth(gray: Tensor) -> Tensor:
    """Two passes of the reflected ``[1, 2, 1] / 4`` filter along every spatial dim, one matrix product per dim."""
    shape = gray.shape
    for axis in range(1, gray.ndim):
        size = shape[axis]
        if size == 1:  # a single position reflects onto itself: the filter leaves it as it is
            continue
        filtering = _smoothing_matrix(size, gray.device)
        if axis == gray.ndim - 1:
            gray = gray @ filtering.T
        else:
            gray = torch.matmul(filtering, gray.reshape(-1, size, math.prod(shape[axis + 1 :]))).view(shape)
    return gray


@functools.lru_cache(maxsize=16)
def _smoothing_matrix(size: int, device: torch.device) -> Tensor:
    """``(L, L)`` matrix ``K`` with ``K @ v`` the twice-repeated reflected 3-tap filter of ``v`` (``L >= 2``)."""
    index = np.arange(size)
    before = np.abs(index - 1)  # reflect about 0 without repeating it: -1 -> 1
    after = (size - 1) - np.abs(size - 2 - index)  # L -> L - 2
    once = np.zeros((size, size))
    np.add.at(once, (index, before), 0.25)
    np.add.at(once, (index, index), 0.5)
    np.add.at(once, (index, after), 0.25)
    return torch.from_numpy(once @ once).to(device=device, dtype=torch.float32)


def _window_bounds(size: int, scales: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(L, S)`` lower and upper integral-image indices of every position's surround, as OpenCV clips them."""
    position = np.arange(size)[:, None]
    half = np.asarray(scales)[None, :]
    return np.clip(position - half + 1, 0, size - 1), np.clip(position + half + 1, 0, size - 1)


@functools.lru_cache(maxsize=16)
def _surround_weights(spatial: tuple[int, ...], scales: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """``(*spatial, S)`` weights ``a = 1 + 1/(|box| - 1)`` and ``b = 1/(|box| - 1)`` (both 0 where ``|box| < 2``)."""
    count = np.ones((1,) * len(spatial) + (len(scales),))
    for axis, size in enumerate(spatial):
        lo, hi = _window_bounds(size, scales)
        shape = [1] * len(spatial) + [len(scales)]
        shape[axis] = size
        count = count * (hi - lo).reshape(shape)
    valid = count >= 2
    inverse = np.where(valid, 1.0 / np.where(valid, count - 1.0, 1.0), 0.0)
    centre = np.where(valid, 1.0 + inverse, 0.0)
    return tuple(torch.from_numpy(w).to(device=device, dtype=torch.float32) for w in (centre, inverse))


@functools.lru_cache(maxsize=32)
def _window_index(size: int, scales: tuple[int, ...], per_scale: bool, device: torch.device) -> Tensor:
    """Flat indices of every surround's upper bounds, then its lower bounds, ``(2 * L * S,)``, position-major.

    They index an integral image whose ``L + 1`` positions are flattened with the
    scale axis in front of them when ``per_scale`` (else there is no scale axis yet).
    """
    lo, hi = _window_bounds(size, scales)
    offset = np.arange(len(scales))[None, :] * (size + 1) if per_scale else 0
    return torch.from_numpy(np.concatenate([(hi + offset).reshape(-1), (lo + offset).reshape(-1)])).to(device)


def _box_sums(gray: Tensor, scales: tuple[int, ...]) -> Tensor:
    """``(N, *spatial)`` -> ``(N, *spatial, S)`` surround box sums, from a ``cumsum`` integral image per dim.

    The scale axis travels along: before processing spatial dim ``i`` the sums are
    ``(N, d_1 .. d_{i-1}, S, d_i, ...)`` (``S = 1`` at first); the integral image along
    ``d_i``, flattened with the scale axis, is read at each (position, scale)'s upper
    and lower bounds in one ``index_select``, which leaves ``(N, d_1 .. d_i, S, d_{i+1}, ...)``.
    """
    sums = gray.unsqueeze(1)
    for axis in range(2, sums.ndim):
        size, shape = sums.shape[axis], sums.shape
        # integral[..., k, ...] = sum of positions [0, k) along this dim, k = 0 .. L
        integral = torch.nn.functional.pad(sums.cumsum(axis), (0, 0) * (sums.ndim - 1 - axis) + (1, 0))
        index = _window_index(size, scales, shape[axis - 1] > 1, gray.device)
        before, after = math.prod(shape[: axis - 1]), math.prod(shape[axis + 1 :])
        # a 2-D view when the dim is innermost: index_select along the last of 3 dims is many times slower
        flat = integral.view(before, -1, after) if after > 1 else integral.view(before, -1)
        bounds = flat.index_select(1, index).view(before, 2, size * len(scales), after)
        sums = (bounds[:, 0] - bounds[:, 1]).view(*shape[: axis - 1], size, len(scales), *shape[axis + 1 :])
    return sums


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


def saliency_map(x: Tensor, saliency: str = "fine_grained") -> Tensor:
    """The saliency of every sample by name: ``"fine_grained"`` (full resolution) or ``"spectral_residual"`` (pooled).

    Example:
        >>> saliency_map(torch.rand(2, 3, 64, 64), "spectral_residual").shape
        torch.Size([2, 32, 32])
    """
    if saliency == "spectral_residual":
        return spectral_residual_saliency(x)
    return fine_grained_saliency(x)


def saliency_peaks(x: Tensor, saliency: str = "fine_grained") -> Tensor:
    """The position of each sample's saliency peak in ``x``'s own coordinates, ``(N, d)`` long CPU.

    Ties go to the first position in row-major order, as ``np.argmax`` in the authors' code.

    Example:
        >>> x = torch.zeros(2, 3, 16); x[1, :, 12] = 5.0
        >>> saliency_peaks(x)[1].tolist()
        [12]
    """
    sal = saliency_map(x, saliency)
    work = tuple(sal.shape[1:])
    flat_index = sal.flatten(1).argmax(dim=1).cpu().numpy()
    coords = np.stack(np.unravel_index(flat_index, work), axis=1)
    full = np.asarray(x.shape[2:])
    if work != tuple(x.shape[2:]):  # a pooled map: the centre of the peak's cell, in x's coordinates
        coords = np.minimum(((coords + 0.5) * (full / np.asarray(work))).astype(np.int64), full - 1)
    return torch.from_numpy(coords.astype(np.int64))


def saliency_box_bounds(shape: tuple[int, ...], lam: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SaliencyMix's boxes around given centres, ``(lo, hi)`` ``(M, d)`` int64, as the authors' ``saliency_bbox``.

    Each side is ``2 * (floor(L * (1 - lam) ** (1/d)) // 2)`` (the authors' ``cut // 2``
    on both sides of the centre), clipped to the input; ``lam`` ``(1,)`` or ``(M,)``.
    Uddin et al., ICLR 2021, arXiv 2006.01791.

    Example:
        >>> lo, hi = saliency_box_bounds((32, 32), np.array([0.75]), np.array([[2, 20]]))
        >>> lo.tolist(), hi.tolist()  # cut = 16: 8 on each side of the centre, clipped at the top
        ([[0, 12]], [[10, 28]])
    """
    sizes = np.asarray(shape, dtype=np.int64)
    remaining = np.clip(1.0 - np.asarray(lam, dtype=np.float64), 0.0, 1.0)
    ratio = np.sqrt(remaining) if len(shape) == 2 else remaining ** (1.0 / len(shape))
    half = np.floor(ratio[:, None] * sizes).astype(np.int64) // 2
    centres = np.asarray(centres, dtype=np.int64)
    return np.clip(centres - half, 0, sizes), np.clip(centres + half, 0, sizes)


class SaliencyMix(CutMix):
    """SaliencyMix: a CutMix box centred on the saliency peak of the partner ``x_j``, pasted at the same place.

    The saliency is the fine-grained static saliency of Montabone and Soto (2010), the
    map the authors compute with OpenCV's ``StaticSaliencyFineGrained``, here computed
    for the batch on its device (:func:`fine_grained_saliency`); ``saliency=
    "spectral_residual"`` uses Hou and Zhang's spectral residual instead (CVPR 2007; not
    the authors' choice). The box side is ``2 * (floor(L * sqrt(1 - λ)) // 2)`` around the
    peak, clipped at the border, as in the authors' ``saliency_bbox``; ``lam`` is the exact
    kept share. Defaults follow the authors' CIFAR script and README commands: ``alpha=1``
    (``--beta 1.0``) and ``p=0.5`` (``--salmix_prob 0.5``, drawn once per batch in
    ``lam_mode="batch"``). Uddin, Monira, Shin, Chung and Bae, ICLR 2021, arXiv 2006.01791.

    Where this departs from the authors' scripts: they hand OpenCV the normalised float32
    tensor (RGB, read as BGR), and OpenCV's implementation reads the pixels of its grey
    image as 8-bit values (``gray.at<uchar>``), that is the bytes of the floats; the peaks
    behind the published numbers therefore did not follow the image content. Here the
    saliency is that of the image itself, as the paper describes (BT.601 luma of RGB).

    Args:
        saliency: ``"fine_grained"`` (default, the authors') or ``"spectral_residual"``.
        reference: where the boxes go in ``lam_mode="batch"``. ``"code"`` (default; the
            published results come from it): one box for the whole batch, centred on the
            saliency peak of the first sample's partner, as the authors' scripts do
            (``saliency_bbox(images[rand_index[0]], lam)``); only that image's saliency is
            computed. ``"paper"``: each sample's box centred on its own partner's peak, as
            the method is described (Sec. 3). In ``lam_mode="sample"`` every sample has
            its own λ and its box is centred on its own partner's peak under both.
        **kwargs: the mixer arguments (``alpha``, ``lam_mode``, ``p``, ``pairing``, ...).

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.SaliencyMix(lam=0.75, p=1.0)(torch.rand(4, 3, 16, 16), torch.arange(4))
        >>> mb.mask.shape  # one box for the whole batch (reference="code")
        torch.Size([1, 1, 16, 16])
    """

    name = "saliencymix"
    default_alpha = 1.0

    def __init__(self, *, saliency: str = "fine_grained", reference: str = "code", p: float = 0.5, **kwargs: Any):
        super().__init__(p=p, **kwargs)
        self.saliency = check_choice("saliencymix saliency", saliency, SALIENCY_METHODS)
        self.reference = check_choice("saliencymix reference", reference, REFERENCES)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        if len(lam) == 1 and self.reference == "code":
            centres = saliency_peaks(x.index_select(0, perm[:1]), self.saliency).numpy()
        else:
            centres = saliency_peaks(x, self.saliency)[perm.cpu()].numpy()
        lo, hi = saliency_box_bounds(tuple(x.shape[2:]), lam, centres)
        return _box_params(x, perm, lo, hi)

    def __repr__(self) -> str:
        return (
            f"SaliencyMix(lam={self.lam_sampler!r}, lam_mode={self.lam_mode!r}, p={self.p}, "
            f"saliency={self.saliency!r}, reference={self.reference!r})"
        )
