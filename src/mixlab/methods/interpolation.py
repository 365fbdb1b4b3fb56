"""Interpolation mixers: mixup and Midpoint Mixup, on inputs of any shape."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mixlab.errors import MixlabValueError
from mixlab.methods.base import Mixer, MixParams, interpolation_params

MIDPOINT = 0.5


class Mixup(Mixer):
    """mixup: ``x~ = lam * x_i + (1 - lam) * x_j`` and the same for labels.

    Works on any ``(N, ...)`` input: images, signals, volumes, token
    embeddings ``(N, T, D)`` and tables ``(N, F)``. Default ``alpha=1``
    (use 0.2 on ImageNet). Zhang et al., ICLR 2018, arXiv 1710.09412.

    The defaults are the authors' CIFAR code (facebookresearch/mixup-cifar10,
    ``train.py``: ``mixup_data``, ``mixup_criterion``): one λ ~ Beta(1, 1) and one
    random permutation per batch, trained with
    ``lam * CE(z, y_i) + (1 - lam) * CE(z, y_j)`` (:func:`mixlab.losses.mixed_cross_entropy`).
    ``lam_mode="sample"`` draws one λ per sample instead (timm's ``elem`` mode).

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
    """Midpoint Mixup: mixup with ``lam = 0.5`` for every pair (inputs and labels at the midpoint).

    Chidambaram, Wang, Wu & Ge, "Provably Learning Diverse Features in Multi-View
    Data with Midpoint Mixup", ICML 2023, arXiv 2210.13512; the authors' code
    (2014mchidamb/midpoint-mixup-multi-view-icml, ``training/run_training_v2.py``)
    trains with ``0.5 * CE(z, y_i) + 0.5 * CE(z, y_j)``. It draws each partner
    uniformly from the whole training set (with replacement); mixlab pairs within
    the (shuffled) batch by a random permutation: each partner is still uniform,
    but no two samples of a batch share one.

    Example:
        >>> import torch, mixlab
        >>> mb = mixlab.Midpoint()(torch.randn(4, 3), torch.arange(4))
        >>> mb.lam.tolist()
        [0.5, 0.5, 0.5, 0.5]
    """

    name = "midpoint"

    def __init__(self, **kwargs: Any):
        drawn = {key: kwargs[key] for key in ("alpha", "lam_range") if kwargs.get(key) is not None}
        if drawn or kwargs.get("lam", MIDPOINT) != MIDPOINT:
            seen = drawn or {"lam": kwargs["lam"]}
            raise MixlabValueError(
                f"midpoint mixes at lam=0.5 only; got {', '.join(f'{k}={v!r}' for k, v in seen.items())} "
                "(use 'mixup' for another or a drawn lam)"
            )
        kwargs["lam"] = MIDPOINT
        super().__init__(**kwargs)
