"""Masking mixers: CutMix, ResizeMix, FMix, GridMix and SmoothMix over 1-D, 2-D and 3-D inputs.

Each draws one mask per batch (``lam_mode="batch"``) or one per sample
(``lam_mode="sample"``) and reports as ``lam`` the exact share of every
sample's elements that come from ``x_i`` (the mask mean).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mixlab import masks
from mixlab.errors import MixlabTypeError, MixlabValueError, check_positive, check_probability
from mixlab.methods.base import Mixer, MixParams, label_weight, ratios_to_device, unmixed_params


def _weight_params(weight: torch.Tensor, x: torch.Tensor, perm: torch.Tensor) -> MixParams:
    """Params for a mask blend: the weight in ``x``'s dtype and its exact mean as ``lam``."""
    weight = weight.to(x.dtype)
    return MixParams(perm=perm, lam=label_weight(weight, x.shape[0]), weight=weight)


def _box_params(x: torch.Tensor, perm: torch.Tensor, lo: np.ndarray, hi: np.ndarray) -> MixParams:
    """Params for boxes taken from the partner: binary weight and the exact kept share."""
    shape = x.shape[2:]
    weight = masks.box_weight(shape, lo, hi, x.device).to(x.dtype)
    lam = ratios_to_device(masks.box_keep_fraction(shape, lo, hi), x.shape[0], x.device)
    return MixParams(perm=perm, lam=lam, weight=weight, extra={"lo": lo, "hi": hi})


def _paste_region(x: torch.Tensor, region: tuple[slice, ...], patch: torch.Tensor, inplace: bool) -> torch.Tensor:
    out = x if inplace else x.clone()
    out[region] = patch
    return out


class CutMix(Mixer):
    """CutMix: paste a box of ``x_j`` into ``x_i``; ``lam`` is corrected to the kept area.

    The box has volume ``(1 - lam)`` of the spatial dims and a uniform centre, and
    is clipped at the border. In batch mode every sample shares one box, which is
    pasted by slicing (no mask pass). Default ``alpha=0.2`` (the paper uses 1.0).
    Yun et al., ICCV 2019, arXiv 1905.04899.

    Example:
        >>> import torch, mixlab
        >>> x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
        >>> mb = mixlab.CutMix(alpha=1.0)(x, y, generator=torch.Generator().manual_seed(0))
        >>> kept = (mb.inputs == x).flatten(1).float().mean(1)
        >>> bool((kept >= mb.lam - 1e-6).all())
        True
    """

    name = "cutmix"
    spatial = True
    default_alpha = 0.2

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        shape = x.shape[2:]
        lo, hi = masks.box_bounds(shape, lam, rng)
        return _box_params(x, perm, lo, hi)

    def _mix(self, x: torch.Tensor, params: MixParams, context: dict[str, Any]) -> torch.Tensor:
        lo, hi = params.extra["lo"], params.extra["hi"]
        if lo.shape[0] != 1:
            return super()._mix(x, params, context)
        region = masks.box_slices(lo, hi)
        return _paste_region(x, region, x[region].index_select(0, params.perm), self.inplace)


class ResizeMix(Mixer):
    """ResizeMix: shrink ``x_j`` by a scale ``tau ~ U(scale)`` and paste it at a random place in ``x_i``.

    ``lam`` is the exact share of ``x_i`` left visible, ``1 - patch volume``.
    The patch size comes from ``scale`` alone: the λ sampler (and so an α ramp)
    only decides, through ``lam=1`` or ``p``, whether a sample is mixed.
    Qin et al., 2020, arXiv 2012.11101.

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.ResizeMix(scale=(0.5, 0.5))(torch.randn(2, 1, 8, 8), torch.arange(2))
        >>> mb.lam.tolist()
        [0.75, 0.75]
    """

    name = "resizemix"
    spatial = True

    def __init__(self, *, scale: tuple[float, float] = (0.1, 0.8), **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(scale, (tuple, list)) or len(scale) != 2:
            raise MixlabValueError(f"scale must be a pair (low, high); got {scale!r}")
        low, high = (check_probability("scale", s) for s in scale)
        if not 0.0 < low <= high:
            raise MixlabValueError(f"scale must satisfy 0 < low <= high <= 1; got {tuple(scale)}")
        self.scale = (low, high)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        shape = x.shape[2:]
        low, high = self.scale
        tau = low + (high - low) * rng.random(len(lam))
        lo, hi = masks.patch_bounds(shape, tau, rng)
        active = lam < 1.0
        if len(lo) == 1 and not active[0]:
            return unmixed_params(x)
        hi = np.where(active[:, None], hi, lo)  # an empty patch leaves the sample unmixed
        return _box_params(x, perm, lo, hi)

    def _mix(self, x: torch.Tensor, params: MixParams, context: dict[str, Any]) -> torch.Tensor:
        lo, hi = params.extra["lo"], params.extra["hi"]
        if lo.shape[0] == 1:
            region = masks.box_slices(lo, hi)
            patch = masks.resize_linear(x, tuple(int(v) for v in (hi - lo)[0])).index_select(0, params.perm)
            return _paste_region(x, region, patch, self.inplace)
        resized = masks.resized_into_boxes(x.index_select(0, params.perm), lo, hi)
        out = resized.lerp_(x, params.weight)
        return x.copy_(out) if self.inplace else out


class FMix(Mixer):
    """FMix: a binary mask from a thresholded low-frequency random field.

    ``decay_power`` (δ) sets how fast the spectrum decays (larger: smoother blobs).
    The mask keeps exactly ``round(lam * numel)`` elements of ``x_i``.
    Default ``alpha=0.2`` (the paper uses 1), ``decay_power=3``.
    Harris et al., 2020, arXiv 2002.12047.

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.FMix(lam=0.25)(torch.randn(2, 1, 8, 8), torch.arange(2))
        >>> mb.lam.tolist()
        [0.25, 0.25]
    """

    name = "fmix"
    spatial = True
    default_alpha = 0.2

    def __init__(self, *, decay_power: float = 3.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.decay_power = check_positive("decay_power", decay_power)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        weight = masks.fourier_weight(x.shape[2:], lam, rng, x.device, self.decay_power)
        return _weight_params(weight, x, perm)


class GridMix(Mixer):
    """GridMix: an ``n x n`` grid (``n^d`` cells in d dims); each cell comes from ``x_j`` w.p. ``1 - lam``.

    ``n`` is drawn uniformly from ``n_holes`` (inclusive) per mask; ``lam`` is the
    exact kept share. Baek, Bang and Shim, Pattern Recognition 2021
    ("GridMix: Strong regularization through local context mapping").

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.GridMix(n_holes=(2, 2))(torch.randn(2, 1, 4, 4), torch.arange(2))
        >>> quarters = mb.lam * 4  # a 2 x 2 grid keeps whole quarters
        >>> bool((quarters == quarters.round()).all())
        True
    """

    name = "gridmix"
    spatial = True

    def __init__(self, *, n_holes: tuple[int, int] = (2, 6), **kwargs: Any):
        super().__init__(**kwargs)
        if (
            not isinstance(n_holes, (tuple, list))
            or len(n_holes) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in n_holes)
        ):
            raise MixlabTypeError(f"n_holes must be a pair of ints (low, high); got {n_holes!r}")
        if not 1 <= n_holes[0] <= n_holes[1]:
            raise MixlabValueError(f"n_holes must satisfy 1 <= low <= high; got {tuple(n_holes)}")
        self.n_holes = (int(n_holes[0]), int(n_holes[1]))

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        low, high = self.n_holes
        cells = rng.integers(low, high + 1, size=len(lam))
        weight = masks.grid_weight(x.shape[2:], lam, cells, rng, x.device)
        return _weight_params(weight, x, perm)


class SmoothMix(Mixer):
    """SmoothMix: a soft, Gaussian-edged blob of ``x_j`` instead of a hard box.

    The blob's unclipped volume is ``(1 - lam)``; ``lam`` reported is the exact
    mean weight of ``x_i`` after clipping and rounding to ``x``'s dtype.
    Default ``alpha=0.2``. Lee et al., CVPR Workshops 2020.

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.SmoothMix()(torch.randn(2, 1, 8, 8), torch.arange(2))
        >>> bool(((mb.mask >= 0) & (mb.mask <= 1)).all())
        True
    """

    name = "smoothmix"
    spatial = True
    default_alpha = 0.2

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        return _weight_params(masks.smooth_weight(x.shape[2:], lam, rng, x.device), x, perm)
