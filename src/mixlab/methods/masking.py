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
from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice, check_positive, check_probability
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
    pasted by slicing (no mask pass). Yun et al., ICCV 2019, arXiv 1905.04899.

    Defaults are the authors' CIFAR setting (clovaai/CutMix-PyTorch, README's
    CIFAR-100 command: ``--beta 1.0 --cutmix_prob 0.5``; ``train.py`` mixes a
    whole batch when ``np.random.rand(1) < cutmix_prob``): ``alpha=1`` and
    ``p=0.5`` per batch. Their ImageNet command uses ``p=1``.

    Example:
        >>> import torch, mixlab
        >>> x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
        >>> mb = mixlab.CutMix(p=1.0)(x, y, generator=torch.Generator().manual_seed(0))
        >>> kept = (mb.inputs == x).flatten(1).float().mean(1)
        >>> bool((kept >= mb.lam - 1e-6).all())
        True
    """

    name = "cutmix"
    spatial = True
    default_alpha = 1.0

    def __init__(self, *, p: float = 0.5, **kwargs: Any):
        super().__init__(p=p, **kwargs)

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
    The patch size comes from ``scale`` alone, ``tau ~ U(0.1, 0.8)`` by default as
    in the paper (its ``alpha = 0.1``, ``beta = 0.8`` bounds of the scale rate) and
    OpenMixup's ``resizemix`` (``scope=(0.1, 0.8)``, ``use_alpha=False``): the λ
    sampler (and so an α ramp) only decides, through ``lam=1`` or ``p``, whether
    a sample is mixed. The whole shrunk partner is pasted inside ``x_i`` (the
    paper's point: no object information lost), resized bilinearly; OpenMixup
    centres the box CutMix-style and squeezes the patch where the border clips it.
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
    The mask keeps exactly ``round(lam * numel)`` elements of ``x_i``; with
    ``max_soft > 0`` the ``2 * numel * min(max_soft, lam, 1 - lam)`` elements
    around the threshold ramp linearly from 1 to 0 (the mean is unchanged).
    Defaults are the authors' CIFAR setting (ecs-vlc/FMix ``trainer.py``:
    ``--alpha 1``, ``--f-decay 3``, ``max_soft=0``): ``alpha=1``, ``decay_power=3``,
    ``max_soft=0``. Harris et al., 2020, arXiv 2002.12047.

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.FMix(lam=0.25)(torch.randn(2, 1, 8, 8), torch.arange(2))
        >>> mb.lam.tolist()
        [0.25, 0.25]
    """

    name = "fmix"
    spatial = True
    default_alpha = 1.0

    def __init__(self, *, decay_power: float = 3.0, max_soft: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.decay_power = check_positive("decay_power", decay_power)
        self.max_soft = check_probability("max_soft", max_soft)
        if self.max_soft > 0.5:
            raise MixlabValueError(f"max_soft must be in [0, 0.5]; got {max_soft!r}")

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        weight = masks.fourier_weight(x.shape[2:], lam, rng, x.device, self.decay_power, self.max_soft)
        return _weight_params(weight, x, perm)


GRID_LAYOUTS = ("cells", "holes")


class GridMix(Mixer):
    """GridMix: an ``n x n`` grid (``n^d`` cells in d dims); each whole cell comes from ``x_j`` w.p. ``1 - lam``.

    ``n`` is drawn uniformly from ``n_holes`` (inclusive) per mask; ``lam`` is the
    exact kept share. Baek, Bang and Shim, Pattern Recognition 2021
    ("GridMix: Strong regularization through local context mapping"; no authors'
    code found). ``layout="cells"`` (default) is the paper's grid-based mixing:
    every cell is taken whole from one image, which is what its patch-level
    labels (local context mapping) need. ``layout="holes"`` is OpenMixup's
    ``gridmix``, taken from I. Dobrynin's GridMixup (a GridMask lattice filled
    from the partner): every cell loses a corner hole of area ``(1 - lam)`` of the
    cell (:func:`~mixlab.masks.grid_hole_weight`), over the whole input.
    The patch-level auxiliary loss of the paper is not part of mixlab.

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.GridMix(n_holes=(2, 2))(torch.randn(2, 1, 4, 4), torch.arange(2))
        >>> quarters = mb.lam * 4  # a 2 x 2 grid keeps whole quarters
        >>> bool((quarters == quarters.round()).all())
        True
    """

    name = "gridmix"
    spatial = True

    def __init__(self, *, n_holes: tuple[int, int] = (2, 6), layout: str = "cells", **kwargs: Any):
        super().__init__(**kwargs)
        if (
            not isinstance(n_holes, (tuple, list))
            or len(n_holes) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in n_holes)
        ):
            raise MixlabTypeError(f"n_holes must be a pair of ints (low, high); got {n_holes!r}")
        if not 1 <= n_holes[0] <= n_holes[1]:
            raise MixlabValueError(f"n_holes must satisfy 1 <= low <= high; got {tuple(n_holes)}")
        self.n_holes = (int(n_holes[0]), int(n_holes[1]))
        self.layout = check_choice("gridmix layout", layout, GRID_LAYOUTS)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        low, high = self.n_holes
        cells = rng.integers(low, high + 1, size=len(lam))
        if self.layout == "holes":
            weight = masks.grid_hole_weight(x.shape[2:], lam, cells, x.device)
        else:
            weight = masks.grid_weight(x.shape[2:], lam, cells, rng, x.device)
        return _weight_params(weight, x, perm)


SMOOTH_BLOB_SIZES = ("sigma", "lambda")


class SmoothMix(Mixer):
    """SmoothMix: a soft Gaussian blob of ``x_j`` over ``x_i``; ``lam`` is the exact mean weight of ``x_i``.

    The mask is ``1 - G`` with ``G = exp(-|p - c|^2 / (2 sigma^2))`` peaking at 1
    at a uniform centre ``c``. ``blob_size="sigma"`` (default) is the paper's
    mask: ``sigma = s * size`` per dim with ``s ~ U(blob_sigma)``, ``(0.25, 0.5)``
    by default, drawn apart from λ, and the label weight is the mask mean (as in
    OpenMixup's ``smoothmix``, ``sigma = U(0.25, 0.5) * H``); the λ sampler only
    decides, through ``lam=1`` or ``p``, whether a sample is mixed.
    ``blob_size="lambda"`` is mixlab's earlier variant: the blob's unclipped
    volume is ``1 - lam`` with ``lam ~ Beta(alpha, alpha)``, ``alpha=0.2`` unless
    given (mostly tiny or whole-image blobs). Lee, Zaheer, Astrid and Lee,
    CVPR Workshops 2020 (no authors' code found).

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.SmoothMix()(torch.randn(2, 1, 8, 8), torch.arange(2))
        >>> bool(((mb.mask >= 0) & (mb.mask <= 1)).all())
        True
    """

    name = "smoothmix"
    spatial = True

    def __init__(self, *, blob_sigma: tuple[float, float] = (0.25, 0.5), blob_size: str = "sigma", **kwargs: Any):
        self.blob_size = check_choice("smoothmix blob_size", blob_size, SMOOTH_BLOB_SIZES)
        if blob_size == "lambda" and all(kwargs.get(key) is None for key in ("alpha", "lam", "lam_range")):
            kwargs["alpha"] = 0.2
        super().__init__(**kwargs)
        if not isinstance(blob_sigma, (tuple, list)) or len(blob_sigma) != 2:
            raise MixlabValueError(
                f"blob_sigma must be a pair (low, high) of fractions of the size; got {blob_sigma!r}"
            )
        low, high = (check_positive("blob_sigma", v) for v in blob_sigma)
        if low > high:
            raise MixlabValueError(f"blob_sigma must satisfy 0 < low <= high; got {tuple(blob_sigma)}")
        self.blob_sigma = (low, high)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        rel_sigma = None
        if self.blob_size == "sigma":
            low, high = self.blob_sigma
            rel_sigma = low + (high - low) * rng.random(len(lam))
        return _weight_params(masks.smooth_weight(x.shape[2:], lam, rng, x.device, rel_sigma), x, perm)
