"""Batched augmentation on the training device: crop with padding, flips, scaling and normalisation.

A whole batch is augmented by a few tensor operations (one gather for the
crops), so that small datasets held on the device never wait on a
per-image Python pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mixlab.errors import MixlabValueError, check_int


class BatchAugment:
    """Augment and normalise a batch ``(N, C, *spatial)`` on its own device.

    Integer inputs (images stored as ``uint8``) are scaled by ``1/255`` first.
    Then, when ``train=True``: a random crop of the original size from the
    input zero-padded by ``crop_padding`` on every side of the last one or two
    dims (a random shift for 1-D signals), and random horizontal/vertical
    flips with probability 1/2. Finally ``(x - mean) / std`` per channel.
    Random draws come from ``generator`` (CPU), so a seed fixes them.

    Args:
        mean, std: per-channel statistics of the scaled training inputs.
        crop_padding: pixels of zero padding for the random crop (0: no crop).
        hflip, vflip: flip along the last / second-to-last dim.

    Example:
        >>> aug = BatchAugment(mean=[0.5], std=[0.25], crop_padding=2, hflip=True)
        >>> x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
        >>> aug(x, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 8, 8])
    """

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        crop_padding: int = 0,
        hflip: bool = False,
        vflip: bool = False,
    ):
        self.crop_padding = check_int("crop_padding", crop_padding, minimum=0)
        self.hflip, self.vflip = bool(hflip), bool(vflip)
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32)
        if (self.mean is None) != (self.std is None):
            raise MixlabValueError("give both mean and std, or neither")
        if self.std is not None and (self.std.shape != self.mean.shape or bool((self.std <= 0).any())):
            raise MixlabValueError(f"std must be positive and match mean's shape; got mean={mean}, std={std}")
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, *, train: bool = True) -> Tensor:
        """The augmented (when ``train``) and normalised float batch."""
        if train and x.ndim >= 3:
            if self.crop_padding:
                x = random_crop(x, self.crop_padding, generator)
            if self.hflip:
                x = random_flip(x, -1, generator)
            if self.vflip and x.ndim >= 4:
                x = random_flip(x, -2, generator)
        return self._normalise(x)

    def _normalise(self, x: Tensor) -> Tensor:
        scale = 1.0 / 255.0 if not x.is_floating_point() else 1.0
        if self.mean is None:
            return x.float() * scale if scale != 1.0 or x.dtype != torch.float32 else x
        a, b = self._affine(x, scale)
        # one fused multiply-add: (x * scale - mean) / std
        return torch.addcmul(b, x.float() if x.dtype != torch.float32 else x, a)

    def _affine(self, x: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        key = (x.device, x.ndim, scale)
        if key not in self._cache:
            if x.ndim >= 2 and self.mean.numel() not in (1, x.shape[1]):
                raise MixlabValueError(f"normalisation has {self.mean.numel()} channels; inputs have {x.shape[1]}")
            shape = (1, -1) + (1,) * (x.ndim - 2) if x.ndim >= 2 else (-1,)
            a = (scale / self.std).reshape(shape).to(x.device)
            b = (-self.mean / self.std).reshape(shape).to(x.device)
            self._cache[key] = (a, b)
        return self._cache[key]


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample random crop of the original size from ``x`` zero-padded by ``padding``.

    Works on the last two dims of ``(N, C, H, W)`` and on the last dim of
    ``(N, C, L)``, by one gather over the flattened padded batch.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> random_crop(x, 1, torch.Generator().manual_seed(0)).shape
        torch.Size([1, 1, 4, 4])
    """
    if x.ndim not in (3, 4):
        raise MixlabValueError(f"random crops take (N, C, L) or (N, C, H, W) inputs; got shape {tuple(x.shape)}")
    n, c = x.shape[:2]
    spatial = x.shape[2:] if x.ndim == 4 else x.shape[-1:]
    padded = torch.nn.functional.pad(x, (padding,) * (2 * len(spatial)))
    offsets = torch.randint(0, 2 * padding + 1, (n, len(spatial)), generator=generator).to(x.device)
    if len(spatial) == 1:
        index = offsets[:, :1] + torch.arange(spatial[0], device=x.device)
    else:
        h, w = spatial
        rows = offsets[:, 0:1] + torch.arange(h, device=x.device)
        cols = offsets[:, 1:2] + torch.arange(w, device=x.device)
        index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).reshape(n, h * w)
    flat = padded.reshape(n, c, -1)
    return flat.gather(2, index[:, None, :].expand(n, c, -1)).reshape(x.shape)


def random_flip(x: Tensor, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Flip each sample along ``dim`` with probability 1/2.

    Example:
        >>> random_flip(torch.ones(3, 1, 2, 2), -1, torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 2, 2])
    """
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    flip = flip.to(x.device).reshape((-1,) + (1,) * (x.ndim - 1))
    return torch.where(flip, x.flip(dim), x)


def channel_stats(x: Tensor, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``x`` (``(N, C, ...)`` or ``(N, F)``), integer inputs scaled by 1/255.

    Computed in float64 chunks, so large uint8 sets need no float copy.

    Example:
        >>> channel_stats(torch.tensor([[0.0, 2.0], [2.0, 2.0]]))
        ([1.0, 2.0], [1.0, 1.0])
    """
    scale = 1.0 if x.is_floating_point() else 1.0 / 255.0
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].to(torch.float64).mul_(scale).transpose(0, 1).reshape(x.shape[1], -1)
        total += part.sum(1).cpu()
        squares += part.square().sum(1).cpu()
        count += part.shape[1]
    mean = total / max(count, 1)
    std = (squares / max(count, 1) - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features are left unscaled
    return mean.tolist(), std.tolist()
