"""Interpolation mixers: mixup and Midpoint Mixup, on inputs of any shape."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mixlab.methods.base import Mixer, MixParams, interpolation_params


class Mixup(Mixer):
    """mixup: ``x~ = lam * x_i + (1 - lam) * x_j`` and the same for labels.

    Works on any ``(N, ...)`` input: images, signals, volumes, token
    embeddings ``(N, T, D)`` and tables ``(N, F)``. Default ``alpha=1``
    (use 0.2 on ImageNet). Zhang et al., ICLR 2018, arXiv 1710.09412.

    Example:
        >>> import torch, mixlab
        >>> x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        >>> mb = mixlab.Mixup(alpha=0.4)(x, y, generator=torch.Generator().manual_seed(0))
        >>> lam = mb.lam.view(-1, 1)
        >>> torch.allclose(mb.inputs, lam * x + (1 - lam) * x[mb.perm], atol=1e-6)
        True
    """

    name = "mixup"

    def _sample_params(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        perm: torch.Tensor,
        lam: np.ndarray,
        rng: np.random.Generator,
        context: dict[str, Any],
    ) -> MixParams:
        return interpolation_params(x, perm, lam)


class Midpoint(Mixup):
    """Midpoint Mixup: mixup with ``lam = 0.5`` for every pair.

    Chidambaram et al., "Towards Understanding the Data Dependency of Mixup-style
    Training", ICLR 2022, arXiv 2110.07647.

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.Midpoint()(torch.randn(4, 3), torch.arange(4))
        >>> mb.lam.tolist()
        [0.5, 0.5, 0.5, 0.5]
    """

    name = "midpoint"

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("lam", 0.5)
        super().__init__(**kwargs)
