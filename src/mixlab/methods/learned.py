"""Learned mask generators: AutoMix and AdAutoMix, as their authors' CIFAR configurations run them.

A small attention network (the Mix Block) reads the feature maps of the
samples to be mixed at one layer of a momentum encoder (an exponential moving
average of the classifier that the mixer owns and runs in train mode) and
outputs a mask per source; the mask is upsampled to the input. Everything the
generator needs goes through the mixer hooks (:attr:`~mixlab.methods.base.Mixer.needs`,
:meth:`~mixlab.methods.base.Mixer.loss_terms`, :meth:`~mixlab.methods.base.Mixer.optimizer_groups`,
:meth:`~mixlab.methods.base.Mixer.after_step`), so one backward pass gives the
classifier its gradient and the Mix Block its own.

- :class:`AutoMix` (Liu et al., ECCV 2022, arXiv 2103.13027): the Mix Block
  learns from the momentum encoder's mixed cross-entropy on its own sample and a
  mask-mean loss; the classifier learns from a separately drawn sample (mask
  detached) and from the clean batch.
- :class:`AdAutoMix` (Qin et al., ICLR 2024, arXiv 2312.11954): three sources per
  sample; on every other step the generator ascends the momentum encoder's mixed
  cross-entropy, with a cosine-similarity term.

Reference code: Westlake-AI/openmixup ``openmixup/models/classifiers/automix.py``,
``openmixup/models/heads/pmix_block.py``, ``configs/classification/cifar100/automix/basic/
r18_l2_a2_near_L1_01_mlr5e_2.py``; JinXins/Adversarial-AutoMixup ``openmixup/models/
classifiers/AdAutoMix.py``, ``openmixup/models/heads/Ada_mix_pine.py``,
``configs/classification/cifar100/basic/r18_adautomix_bilinear.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.batch import MixedBatch
from mixlab.errors import (
    MixlabTypeError,
    MixlabValueError,
    check_choice,
    check_int,
    check_non_negative,
    check_positive,
    check_probability,
)
from mixlab.losses import mixed_cross_entropy
from mixlab.methods.base import Mixer, MixParams, check_params_fit_batch, unmixed_params
from mixlab.methods.context import INPUT, OUTPUT, MixerNeeds, find_modules, forward_until, make_ema, unwrap

#: Where a learned mixer keeps, in ``MixedBatch.aux``, what its ``loss_terms`` need.
AUX_KEY = "learned_mix"
UPSAMPLE_MODES = ("nearest", "linear")
MASK_LOSS_MODES = ("batch", "sample")
SIMILARITY_MODES = ("code", "preserve")
_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
_INIT_STD = 0.01


def cosine_momentum(
    step: int, total_steps: int | None, start: float = 0.999, end: float = 0.999999, delay: float = 0.1
) -> float:
    """The momentum encoder's momentum for the update after optimiser step ``step`` (counted from 0).

    Held at ``start`` for the first ``int(delay * total_steps)`` steps, then
    ``end - (end - start) * (cos(pi * step / total_steps) + 1) / 2``, and ``end``
    from ``total_steps`` on. The cosine is of the whole run's progress, so it takes
    over from ``start`` with a small jump (to 0.999024 for the defaults). This is
    OpenMixup's ``CosineScheduleHook(end_momentum, adjust_scope=[delay, 1.0],
    warming_up="constant")`` of the AutoMix and AdAutoMix CIFAR configs (Liu et al.,
    ECCV 2022, arXiv 2103.13027; Qin et al., ICLR 2024, arXiv 2312.11954).
    Without ``total_steps`` the momentum stays at ``start``.

    Example:
        >>> cosine_momentum(0, 1000), cosine_momentum(99, 1000), cosine_momentum(1000, 1000)
        (0.999, 0.999, 0.999999)
        >>> round(cosine_momentum(500, 1000), 7)
        0.9994995
    """
    if total_steps is None or step < int(total_steps * delay):
        return start
    if step >= total_steps:
        return end
    return end - (end - start) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0


# ------------------------------------------------------------------ the mask generators


class _AttentionMaskBlock(nn.Module):
    """Shared parts of the two Mix Blocks: 1x1 projections of each source's tokens, upsampling, normalising.

    The query, key and value projections are 1x1 convolutions held as one linear
    map (``projection``); with ``lam_concat`` each source's feature map gets its
    label weight as one more constant channel, whose column is added to the
    projected tokens instead of being concatenated to them (the same result).
    Weights start at N(0, 0.01²) and biases at 0, as in the reference code.
    """

    def __init__(self, in_channels: int, reduction: int, lam_concat: bool, upsample: str, outputs_per_width: int):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.reduction = check_int("reduction", reduction, minimum=1)
        if not isinstance(lam_concat, bool):
            raise MixlabTypeError(f"lam_concat must be True or False; got {lam_concat!r}")
        self.lam_concat = lam_concat
        self.upsample = check_choice("upsample mode", upsample, UPSAMPLE_MODES)
        self.width = max(self.in_channels // self.reduction, 1)
        self.projection = nn.Linear(self.in_channels + int(lam_concat), outputs_per_width * self.width + 1)
        with torch.no_grad():
            nn.init.normal_(self.projection.weight, std=_INIT_STD)
            nn.init.zeros_(self.projection.bias)

    def forward(self, features: Tensor, sources: Tensor, weights: Tensor, size: Sequence[int]) -> Tensor:
        """The weight of each source in each output, ``(N, K, *size)`` float32, summing to 1 over ``K``.

        Args:
            features: ``(N, C, *spatial)`` feature maps of the batch.
            sources: ``(N, K)`` long, the batch rows mixed into each output.
            weights: ``(N, K)`` their label weights (fed to the block only with ``lam_concat``).
            size: the input's spatial size, to upsample to.
        """
        # Float32 whatever the autocast state: the softmax overflows in half precision.
        with torch.autocast(features.device.type, enabled=False):
            n, k = sources.shape
            logits = self._logits(self._project(features, sources, weights)).view(n, k, *features.shape[2:])
            if self.upsample == "nearest":  # the softmax commutes with copying: normalise the small map
                return F.interpolate(logits.softmax(dim=1), size=tuple(size), mode="nearest")
            mode = _LINEAR_MODES[len(size)]
            return F.interpolate(logits, size=tuple(size), mode=mode, align_corners=False).softmax(dim=1)

    def _project(self, features: Tensor, sources: Tensor, weights: Tensor) -> Tensor:
        """``(N, K, L, P)``: the projected tokens of each output's sources."""
        n, k = sources.shape
        tokens = features.float().flatten(2).transpose(1, 2)  # (N, L, C)
        weight, bias = self.projection.weight, self.projection.bias
        projected = torch.matmul(tokens, weight[:, : self.in_channels].t()) + bias  # (N, L, P), once per sample
        gathered = projected.index_select(0, sources.flatten()).view(n, k, *projected.shape[1:])
        if self.lam_concat:
            gathered = gathered + weights.float().view(n, k, 1, 1) * weight[:, -1]
        return gathered

    def _logits(self, projected: Tensor) -> Tensor:
        raise NotImplementedError


class MixBlock(_AttentionMaskBlock):
    """AutoMix's Mix Block: the partner's evidence gathered by cross-attention, through a sigmoid.

    For each position ``p`` of a sample, a query (from the sample) attends over
    the partner's positions with keys from the same projection (the query and
    key projections are shared), ``softmax(q_p k^T / sqrt(d))``, and gathers the
    partner's one-channel value: ``z_p``. The partner's weight is ``sigmoid(z)``,
    upsampled to the input, the sample's own ``1 - sigmoid(z)``. OpenMixup's
    ``PixelMixBlock`` with ``use_scale=True``, no value network and no ``x``
    concatenation; Liu et al., ECCV 2022, arXiv 2103.13027, Sec. 3.2.

    Args:
        in_channels: channels ``C`` of the feature map.
        reduction: the attention width is ``max(C // reduction, 1)``.
        lam_concat: append λ (own) and ``1 - λ`` (partner) as a channel (the ImageNet configs;
            the CIFAR configs do not, which is the default).
        upsample: ``"nearest"`` (the CIFAR config's) or ``"linear"`` (linear, bilinear or
            trilinear by the number of spatial dims).

    Example:
        >>> block = MixBlock(8)
        >>> features = torch.randn(4, 8, 3, 3)
        >>> sources = torch.tensor([[0, 1], [1, 0], [2, 3], [3, 2]])
        >>> mask = block(features, sources, torch.tensor([[0.3, 0.7]]).expand(4, 2), (12, 12))
        >>> mask.shape, bool(torch.allclose(mask.sum(1), torch.ones(4, 12, 12)))
        (torch.Size([4, 2, 12, 12]), True)
    """

    def __init__(self, in_channels: int, reduction: int = 2, *, lam_concat: bool = False, upsample: str = "nearest"):
        super().__init__(in_channels, reduction, lam_concat, upsample, outputs_per_width=1)

    def _logits(self, projected: Tensor) -> Tensor:
        if projected.shape[1] != 2:
            raise MixlabValueError(f"AutoMix's Mix Block mixes two sources; got {projected.shape[1]}")
        d = self.width
        query = projected[:, 0, :, :d] * d**-0.5
        key, value = projected[:, 1, :, :d], projected[:, 1, :, d:]
        partner = torch.bmm(torch.bmm(query, key.transpose(1, 2)).softmax(dim=-1), value).squeeze(2)
        # sigmoid(z) for the partner is softmax([0, z]) over the two sources.
        return torch.stack((torch.zeros_like(partner), partner), dim=1)


class AdaptiveMixBlock(_AttentionMaskBlock):
    """AdAutoMix's generator: one attention map per source against all the others, a softmax over sources.

    For source ``i`` of an output (``K`` sources), queries ``q_i`` attend over
    positions with the summed scores of the other sources' keys,
    ``softmax(q_i (sum_{j != i} k_j)^T / sqrt(d))``, and gather source ``i``'s own
    one-channel value: the logit ``z_i``. The logits are upsampled to the input
    and normalised by a softmax over the ``K`` sources. Separate query, key and
    value projections. The reference's ``AdaptiveMask`` (``co_mix``, and
    ``normal_mix`` for two sources, which is the same formula); Qin et al., ICLR
    2024, arXiv 2312.11954, Sec. 3.

    Args:
        in_channels: channels ``C`` of the feature map.
        reduction: the attention width is ``max(C // reduction, 1)``.
        lam_concat: append each source's label weight as a channel (the CIFAR config does not: the default).
        upsample: ``"linear"`` (bilinear for images, the CIFAR config's) or ``"nearest"``.

    Example:
        >>> block = AdaptiveMixBlock(8)
        >>> sources = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
        >>> mask = block(torch.randn(3, 8, 4, 4), sources, torch.full((3, 3), 1 / 3), (16, 16))
        >>> mask.shape, bool(torch.allclose(mask.sum(1), torch.ones(3, 16, 16)))
        (torch.Size([3, 3, 16, 16]), True)
    """

    def __init__(self, in_channels: int, reduction: int = 2, *, lam_concat: bool = False, upsample: str = "linear"):
        super().__init__(in_channels, reduction, lam_concat, upsample, outputs_per_width=2)

    def _logits(self, projected: Tensor) -> Tensor:
        n, k, length, _ = projected.shape
        d = self.width
        query = projected[..., :d] * d**-0.5
        key, value = projected[..., d : 2 * d], projected[..., 2 * d :]
        others = key.sum(dim=1, keepdim=True) - key  # sum_{j != i} k_j: one product per source, not K - 1
        scores = torch.matmul(query, others.transpose(-1, -2)).softmax(dim=-1)  # (N, K, L, L)
        return torch.matmul(scores, value).view(n, k, length)


# ------------------------------------------------------------------ the mixers


@dataclass
class _Generated:
    """What a learned mixer keeps in ``MixedBatch.aux`` for its ``loss_terms``."""

    mixed: Tensor  # the generator's sample, differentiable with respect to the Mix Block
    mask: Tensor  # (N, K, *spatial) float32 weight of each source in it, differentiable
    y: Tensor  # the un-mixed targets
    sources: Tensor  # (N, K) of the generator's sample
    weights: Tensor  # (N, K) its label weights
    teacher_clean: Tensor | None = None  # AdAutoMix: the momentum encoder's compared output on the clean batch
    clean_target: MixedBatch | None = None  # the clean batch, for the classifier's clean loss
    clean_logits: Tensor | None = None  # filled by the batch's forward
    linear_target: MixedBatch | None = None  # AdAutoMix (K > 2): the linear mix of the classifier's sources
    linear_logits: Tensor | None = None  # the classifier on it, filled likewise
    adversarial: bool = False  # AdAutoMix: whether the generator plays against the teacher on this batch

    def target(self, rows: int) -> MixedBatch:
        """The labels of the generator's first ``rows`` samples."""
        return MixedBatch.from_sources(
            self.mixed[:rows], self.y, self.sources[:rows], self.weights[:rows], check_weights=False
        )


class _LearnedMaskMixer(Mixer):
    """Shared machinery of AutoMix and AdAutoMix: draws, the momentum encoder, the Mix Block, the hooks."""

    spatial = True
    requires = frozenset({"model"})

    def __init__(
        self,
        *,
        layer: str | None = None,
        model: nn.Module | None = None,
        in_channels: int | None = None,
        reduction: int = 2,
        lam_concat: bool = False,
        upsample: str = "nearest",
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        momentum_delay: float = 0.1,
        lam_margin: float = 0.0,
        separate_draws: bool = True,
        clean_weight: float = 1.0,
        lr_scale: float = 1.0,
        weight_decay: float | None = None,
        teacher_fraction: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if self.inplace:
            raise MixlabValueError(
                f"{self.name} keeps the caller's x to train its Mix Block and cannot mix in place; got inplace=True"
            )
        if model is not None and not isinstance(model, nn.Module):
            raise MixlabTypeError(f"{self.name}: model must be an nn.Module; got {type(model).__name__}")
        if layer is not None and not isinstance(layer, str):
            raise MixlabTypeError(f"{self.name}: layer must be a module name (str) or None; got {layer!r}")
        if layer in (INPUT, OUTPUT):
            raise MixlabValueError(f"{self.name} reads a hidden feature map; layer must be a module, not {layer!r}")
        for flag, value in (("lam_concat", lam_concat), ("separate_draws", separate_draws)):
            if not isinstance(value, bool):
                raise MixlabTypeError(f"{flag} must be True or False; got {value!r}")
        self.layer: str | None = layer
        self.in_channels = None if in_channels is None else check_int("in_channels", in_channels, minimum=1)
        self.reduction = check_int("reduction", reduction, minimum=1)
        self.lam_concat = lam_concat
        self.upsample = check_choice("upsample mode", upsample, UPSAMPLE_MODES)
        self.momentum = check_non_negative("momentum", momentum)
        if self.momentum >= 1.0:
            raise MixlabValueError(f"momentum must be in [0, 1); got {momentum!r}")
        self.end_momentum = check_probability("end_momentum", end_momentum)
        if self.end_momentum < self.momentum:
            raise MixlabValueError(f"end_momentum must be in [momentum={self.momentum}, 1]; got {end_momentum!r}")
        self.momentum_delay = check_probability("momentum_delay", momentum_delay)
        self.total_steps: int | None = None  # told by start_training()
        self.lam_margin = check_probability("lam_margin", lam_margin)
        if self.lam_margin >= 0.5:
            raise MixlabValueError(f"lam_margin must be in [0, 0.5) (else no sample is ever masked); got {lam_margin}")
        self.separate_draws = separate_draws
        self.clean_weight = check_non_negative("clean_weight", clean_weight)
        self.lr_scale = check_positive("lr_scale", lr_scale)
        self.weight_decay = None if weight_decay is None else check_non_negative("weight_decay", weight_decay)
        self.teacher_fraction = check_probability("teacher_fraction", teacher_fraction)
        if self.teacher_fraction == 0.0:
            raise MixlabValueError("teacher_fraction must be in (0, 1]; got 0.0")
        self.mix_block: _AttentionMaskBlock | None = None
        self.encoder: nn.Module | None = None  # the momentum encoder, an EMA copy of the model
        self.steps = 0
        self._online: nn.Module | None = None
        self._model = model

    def _finish_init(self) -> None:
        """Bind to the constructor's model, or build the Mix Block now if the layer and its channels were given."""
        model, self._model = self._model, None
        if model is not None:
            self.bind_model(model)
        elif self.layer is not None and self.in_channels is not None:
            self.mix_block = self._new_block(self.in_channels)

    # ------------------------------------------------------------ the model and the momentum encoder

    def bind_model(self, model: nn.Module) -> None:
        """Check the layer names against ``model``, take the defaults it implies, build the Mix Block and the encoder.

        The default layer is the second-to-last of ``model.stages`` (``block2`` for
        cnn_small, ``layer3`` for preact_resnet18: the reference's ``out_indices=(2, 3)``
        feature for the Mix Block); the channels are read from the layer's last
        convolution, normalisation or linear module unless ``in_channels`` was given.
        The momentum encoder starts as a copy of ``model``. Called with ``model=``
        and by :class:`~mixlab.methods.context.MixContext`; a Mix Block already built
        is kept, and so is the encoder while the model is the same.

        Args:
            model: the model (or its DDP wrapper).

        Example:
            >>> from mixlab.models import create_model
            >>> mixer = AutoMix()  # as a config is validated: no model yet
            >>> mixer.bind_model(create_model("preact_resnet18", num_classes=10))
            >>> mixer.layer, mixer.mix_block.in_channels
            ('layer3', 256)
        """
        module = unwrap(model)
        if self.layer is None:
            stages = tuple(getattr(module, "stages", ()) or ())
            if not stages:
                raise MixlabValueError(
                    f"{self.name} needs layer= (the module whose feature map drives the Mix Block): "
                    f"{type(module).__name__} has no stages to pick it from"
                )
            self.layer = stages[-2] if len(stages) >= 2 else stages[0]
        find_modules(module, self._feature_layers(), what=f"feature layer for {self.name}")
        parameter = next(module.parameters(), None)
        if self.mix_block is None:
            channels = self.in_channels if self.in_channels is not None else _output_channels(module, self.layer)
            if channels is None:
                raise MixlabValueError(
                    f"{self.name} cannot tell how many channels {self.layer!r} outputs; pass in_channels="
                )
            self.in_channels = channels
            self.mix_block = self._new_block(channels)
            if parameter is not None:
                self.mix_block.to(parameter.device)
        if self._online is not module:
            self._online, self.encoder = module, make_ema(module)

    def _new_block(self, channels: int) -> _AttentionMaskBlock:
        return MixBlock(channels, self.reduction, lam_concat=self.lam_concat, upsample=self.upsample)

    def _feature_layers(self) -> tuple[str, ...]:
        return () if self.layer is None else (self.layer,)

    def _require_bound(self) -> tuple[_AttentionMaskBlock, nn.Module]:
        if self.mix_block is None or self.encoder is None:
            raise MixlabValueError(
                f"{self.name} does not know its model yet: build it with model=, or create "
                "MixContext(mixer, model) (mixlab.methods.context) before the optimiser, which binds it"
            )
        return self.mix_block, self.encoder

    def start_training(self, total_steps: int) -> None:
        """Take the number of optimiser steps of the run, for the momentum's cosine schedule (the loop calls it).

        Example:
            >>> mixer = AutoMix()
            >>> mixer.start_training(1000)
            >>> mixer.steps = 500
            >>> round(mixer.current_momentum, 7)
            0.9994995
        """
        self.total_steps = check_int("total_steps", total_steps, minimum=1)

    @property
    def current_momentum(self) -> float:
        """The momentum of the next encoder update (:func:`cosine_momentum` at the step count)."""
        return cosine_momentum(self.steps, self.total_steps, self.momentum, self.end_momentum, self.momentum_delay)

    @property
    def needs(self) -> MixerNeeds:
        """Only the model: the mixer keeps its own momentum encoder and computes its features itself."""
        return MixerNeeds(model=True)

    def _check_context(self, context: dict[str, Any]) -> None:
        self._require_bound()

    # ------------------------------------------------------------ draws

    def _draw(
        self, x: Tensor, y: Tensor, rng: np.random.Generator, alpha_scale: float, context: dict | None
    ) -> MixParams:
        """The classifier's sources and weights and, with ``separate_draws``, the generator's own."""
        n = x.shape[0]
        if self.lam_mode == "batch" and self.p < 1.0 and rng.random() >= self.p:
            return unmixed_params(x)
        sources, weights = self._draw_sources(x, y, rng, alpha_scale)
        generator = None
        if self.separate_draws:
            generator_sources, generator_weights = self._draw_sources(x, y, rng, alpha_scale)
            if self.num_sources > 2:  # the reference draws the ratios of three or more sources once for both
                generator_weights = weights
            generator = (generator_sources, generator_weights)
        if self.lam_mode == "sample" and self.p < 1.0:  # samples left unmixed keep all their weight
            kept = torch.from_numpy(rng.random(n) >= self.p).to(weights.device)
            whole = torch.zeros_like(weights)
            whole[:, 0] = 1.0
            weights = torch.where(kept.unsqueeze(1), whole, weights)
        return self._params(sources, weights, generator)

    def _draw_sources(
        self, x: Tensor, y: Tensor, rng: np.random.Generator, alpha_scale: float
    ) -> tuple[Tensor, Tensor]:
        """``(N, K)`` sources (the sample itself first, then ``K - 1`` partner draws) and label weights.

        Two sources: ``[λ, 1 - λ]`` with λ from the mixer's sampler; more: ``K`` draws
        from it normalised to sum to 1 (the reference's ``lam / lam.sum()``).
        """
        n, k = x.shape[0], self.num_sources
        partners = [self.pairing.sample(y, rng) for _ in range(k - 1)]
        sources = torch.stack([torch.arange(n), *partners], dim=1).to(x.device)
        rows = 1 if self.lam_mode == "batch" else n
        if k == 2:
            lam = self.lam_sampler.sample(rows, rng, alpha_scale=alpha_scale)
            ratios = np.stack([lam, 1.0 - lam], axis=1)
        else:
            draws = self.lam_sampler.sample(rows * k, rng, alpha_scale=alpha_scale).reshape(rows, k)
            total = draws.sum(axis=1, keepdims=True)
            ratios = np.where(total > 0, draws / np.where(total > 0, total, 1.0), 1.0 / k)
        weights = torch.from_numpy(ratios.astype(np.float32)).to(x.device).expand(n, k)
        return sources, weights

    def _params(self, sources: Tensor, weights: Tensor, generator: tuple[Tensor, Tensor] | None) -> MixParams:
        extra = {"sources": sources, "weights": weights, "generator": generator}
        return MixParams(perm=sources[:, 1], lam=weights[:, 0].contiguous(), extra=extra)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        """Two sources from given partners and ratios (one draw for the classifier and the generator)."""
        n = x.shape[0]
        sources = torch.stack([torch.arange(n, device=x.device), perm.to(x.device)], dim=1)
        lam_t = torch.from_numpy(np.broadcast_to(np.asarray(lam, dtype=np.float32), (n,)).copy()).to(x.device)
        return self._params(sources, torch.stack([lam_t, 1.0 - lam_t], dim=1), None)

    # ------------------------------------------------------------ mixing

    def apply(self, x: Tensor, y: Tensor, params: MixParams, *, context: dict[str, Any] | None = None) -> MixedBatch:
        """Generate the masks from the momentum encoder's features and mix; ``aux`` keeps the generator's graph."""
        check_params_fit_batch(params, x)
        if not params.mixed:
            return MixedBatch.unmixed(x, y)
        block, encoder = self._require_bound()
        clean = self._encoder_outputs(encoder, x)
        features = self._check_features(clean[self.layer], x, block)
        sources, weights = params.extra["sources"], params.extra["weights"]
        generator = params.extra.get("generator")
        generator_sources, generator_weights = generator if generator is not None else (sources, weights)
        generator_mask = block(features, generator_sources, generator_weights, x.shape[2:])
        generated = _Generated(
            _combine(x, generator_sources, generator_mask), generator_mask, y, generator_sources, generator_weights
        )
        if generator is None:
            mask = generator_mask.detach()
        else:
            with torch.no_grad():
                mask = block(features, sources, weights, x.shape[2:])
        mask = self._margin(mask, weights)
        inputs = _combine(x, sources, mask)
        if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        mb = MixedBatch.from_sources(inputs, y, sources, weights, mask=mask[:, :1].to(x.dtype), check_weights=False)
        mb.aux[AUX_KEY] = generated
        self._complete(mb, generated, x, y, clean)
        return mb

    def _encoder_outputs(self, encoder: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """The momentum encoder on the clean batch, in train mode (its own batch statistics), without gradient."""
        with torch.no_grad():
            return forward_until(encoder, x, self._encoder_layers(), train=True)

    def _encoder_layers(self) -> tuple[str, ...]:
        return (self._layer(),)

    def _layer(self) -> str:
        assert self.layer is not None  # set by bind_model
        return self.layer

    def _check_features(self, features: Any, x: Tensor, block: _AttentionMaskBlock) -> Tensor:
        if not isinstance(features, Tensor) or features.ndim != x.ndim or features.shape[0] != x.shape[0]:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise MixlabValueError(
                f"{self.name} needs a feature map (N, C, *spatial) with as many spatial dims as x "
                f"{tuple(x.shape)} at layer {self.layer!r}; got {shape}: choose an earlier layer"
            )
        if features.shape[1] != block.in_channels:
            raise MixlabValueError(
                f"{self.name}: layer {self.layer!r} outputs {features.shape[1]} channels but the Mix Block "
                f"was built for {block.in_channels}; pass model= or the right in_channels="
            )
        device = block.projection.weight.device
        if device != features.device:
            raise MixlabValueError(
                f"{self.name}: the Mix Block is on {device} but the features are on {features.device}; "
                "call mixer.to(device)"
            )
        return features

    def _margin(self, mask: Tensor, weights: Tensor) -> Tensor:
        """Plain linear mixing (the mask = the label weights) where the first weight is within ``lam_margin`` of 0 or 1.

        The reference's ``lam_margin`` for the classifier's sample; with a margin of 0
        it keeps the samples whose weight is exactly 1 (left unmixed) whole.
        """
        first = weights[:, 0]
        linear = (first <= self.lam_margin) | (first >= 1.0 - self.lam_margin)
        shape = (mask.shape[0], mask.shape[1]) + (1,) * (mask.ndim - 2)
        return torch.where(linear.view(-1, *([1] * (mask.ndim - 1))), weights.view(shape).to(mask.dtype), mask)

    def _complete(self, mb: MixedBatch, generated: _Generated, x: Tensor, y: Tensor, clean: dict) -> None:
        """The classifier's clean batch in the same forward (when ``clean_weight > 0``)."""
        if self.clean_weight > 0:
            generated.clean_target = MixedBatch.unmixed(x, y)
            mb.forward_fn = _WithClean(x, generated)

    # ------------------------------------------------------------ losses

    def _generated(self, mb: MixedBatch | None) -> _Generated | None:
        generated = None if mb is None else mb.aux.get(AUX_KEY)
        return generated if isinstance(generated, _Generated) else None

    def _teacher_rows(self, n: int) -> int:
        """How many samples (the first ones) the momentum encoder scores: ``teacher_fraction`` of ``n``, at least 2."""
        return min(n, max(2, math.ceil(self.teacher_fraction * n)))

    def _teacher(self, generated: _Generated, layers: Sequence[str]) -> tuple[dict[str, Tensor], MixedBatch]:
        """The momentum encoder (train mode) on the generator's first rows, with gradient to the Mix Block."""
        target = generated.target(self._teacher_rows(generated.mixed.shape[0]))
        return forward_until(self._require_bound()[1], target.inputs, layers, train=True), target

    def _clean_terms(self, generated: _Generated) -> dict[str, Tensor]:
        if self.clean_weight == 0:
            return {}
        if generated.clean_logits is None or generated.clean_target is None:
            raise MixlabValueError(
                f"{self.name}: run the model with mb.forward(model) (it also scores the clean batch); "
                "or build the mixer with clean_weight=0"
            )
        return {"clean": self.clean_weight * mixed_cross_entropy(generated.clean_logits, generated.clean_target)}

    # ------------------------------------------------------------ engine hooks

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The Mix Block's parameters (none before the model is known)."""
        return [] if self.mix_block is None else list(self.mix_block.parameters())

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """One group: the Mix Block, at ``lr_scale`` times the run's learning rate."""
        params = self.trainable_parameters()
        if not params:
            return []
        group: dict[str, Any] = {"params": params, "lr_scale": self.lr_scale}
        if self.weight_decay is not None:
            group["weight_decay"] = self.weight_decay
        return [group]

    @torch.no_grad()
    def after_step(self) -> None:
        """Move the momentum encoder's weights towards the model's (its buffers stay its own), count the step."""
        if self.encoder is not None and self._online is not None:
            ema = list(self.encoder.parameters())
            if ema:
                online = [p.detach() for p in self._online.parameters()]
                torch._foreach_lerp_(ema, online, 1.0 - self.current_momentum)
        self.steps += 1

    def to(self, device: torch.device | str) -> _LearnedMaskMixer:
        """Move the Mix Block and the momentum encoder to ``device``; returns the mixer."""
        for module in (self.mix_block, self.encoder):
            if module is not None:
                module.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The step count, and the Mix Block's and the momentum encoder's weights (once the model is known)."""
        state: dict[str, Any] = {"steps": self.steps}
        for key, module in (("mix_block", self.mix_block), ("encoder", self.encoder)):
            if module is not None:
                state[key] = {name: value.detach().clone() for name, value in module.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        unknown = sorted(set(state) - {"steps", "mix_block", "encoder"})
        if unknown:
            raise MixlabValueError(f"{self.name} state has unknown keys {unknown}; expected steps, mix_block, encoder")
        if "steps" not in state:
            raise MixlabValueError(f"{self.name} state lacks 'steps' (the step count); got {sorted(state)}")
        if "mix_block" in state or "encoder" in state:
            block, encoder = self._require_bound()
            missing = [key for key in ("mix_block", "encoder") if key not in state]
            if missing:
                raise MixlabValueError(f"{self.name} state lacks {missing}; got {sorted(state)}")
            block.load_state_dict(state["mix_block"])
            encoder.load_state_dict(state["encoder"])
        elif self.mix_block is not None:
            raise MixlabValueError(
                f"{self.name} state lacks 'mix_block' and 'encoder' (the learned weights); got {sorted(state)}"
            )
        self.steps = check_int("steps", int(state["steps"]))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layer={self.layer!r}, lam={self.lam_sampler!r}, lam_mode={self.lam_mode!r}, "
            f"p={self.p}, momentum={self.momentum}->{self.end_momentum})"
        )


def _combine(x: Tensor, sources: Tensor, mask: Tensor) -> Tensor:
    """``sum_k mask[:, k] * x[sources[:, k]]``; for two sources one exact lerp (whole where the mask is 0 or 1)."""
    weight = mask.to(x.dtype)
    if sources.shape[1] == 2:
        return torch.lerp(x.index_select(0, sources[:, 1]), x.index_select(0, sources[:, 0]), weight[:, :1])
    mixed = weight[:, :1] * x.index_select(0, sources[:, 0])
    for k in range(1, sources.shape[1]):  # over the few sources, not the samples
        mixed = mixed + weight[:, k : k + 1] * x.index_select(0, sources[:, k])
    return mixed


def _output_channels(model: nn.Module, layer: str) -> int | None:
    """The channels ``layer`` outputs, read from its last convolution, normalisation or linear module."""
    module = find_modules(model, [layer])[layer]
    for sub in reversed(list(module.modules())):
        for attr in ("out_channels", "num_features", "out_features"):
            value = getattr(sub, attr, None)
            if isinstance(value, int):
                return value
    return None


class AutoMix(_LearnedMaskMixer):
    """AutoMix: a Mix Block learns the mask from a momentum encoder's features, trained through that encoder.

    Each step draws two λ ~ Beta(α, α) and two partner permutations, one pair for
    the Mix Block and one for the classifier (the reference's ``lam[0]``/``index_mb``
    and ``lam[1]``/``index_bb``). The momentum encoder (an EMA of the classifier
    owned by the mixer, run in train mode with its own BatchNorm statistics) gives
    the feature maps at ``layer``; the :class:`MixBlock` turns them into a mask per
    pair, upsampled to the input.

    - The classifier's batch (:meth:`__call__`'s result): ``inputs = m * x + (1 - m) * x[perm]``
      with the classifier's mask detached, ``lam`` its λ (the label weight); where
      ``λ <= lam_margin`` or ``λ >= 1 - lam_margin`` the mask is λ (plain mixup).
      ``mb.forward(model)`` also runs the clean batch, for the ``"clean"`` term.
    - :meth:`loss_terms`: ``"mix_block"``, the momentum encoder's mixed cross-entropy
      on the Mix Block's own sample (differentiable with respect to the Mix Block),
      times ``generator_weight``; ``"mask"``: ``mask_weight * max(|mean(m) - λ| - mask_margin, 0)``
      with the mean over the whole batch (``mask_loss="batch"``); ``"clean"``:
      ``clean_weight *`` the classifier's cross-entropy on the clean batch.

    One backward trains both; :meth:`after_step` moves the encoder's weights
    towards the model with a momentum raised from ``momentum`` to ``end_momentum``
    along :func:`cosine_momentum` over the run's length, which the training loop
    gives :meth:`start_training` (never told, the momentum stays at ``momentum``). Run each step with
    ``context=MixContext(mixer, model)(x, y)`` (or build the mixer with ``model=``).
    Liu, Li, Wu, Liu, Chen, Wu and Li, "AutoMix: Unveiling the Power of Mixup for
    Stronger Classifiers", ECCV 2022, arXiv 2103.13027.

    The defaults are the authors' CIFAR configuration (OpenMixup
    ``configs/classification/cifar100/automix/basic/r18_l2_a2_near_L1_01_mlr5e_2.py``):
    α = 2, the feature map of the third stage, reduction 2, no λ channel,
    nearest upsampling, momentum 0.999 → 0.999999 (held for the first 10 %), mask
    loss 0.1 with margin 0.1 (L1, batch mean), ``lam_margin`` 0.08, the teacher
    on the whole batch, loss weights 1, the Mix Block at the run's learning rate and weight decay.

    Deviations: the reference's classifier has separate heads for the mixed and
    the clean loss (``head_mix_q``, ``head_one_q``) and its momentum encoder a
    copy of each; a mixlab model has one head, which takes both losses. The
    clean batch goes through the classifier in the same forward as the mixed one
    (BatchNorm statistics over both; the reference runs two forwards).

    Args:
        layer: the module whose feature map drives the Mix Block; default the
            second-to-last of ``model.stages`` (``block2`` for cnn_small, ``layer3`` for preact_resnet18).
        model: the model, to check ``layer``, pick its default, read its channels and copy the
            momentum encoder from; without it :class:`~mixlab.methods.context.MixContext` does so
            (:meth:`bind_model`), which must then happen before the optimiser is built.
        in_channels: the layer's output channels (read from ``model`` when not given).
        reduction: attention width ``C // reduction`` (default 2).
        lam_concat: feed λ to the Mix Block as a channel (default False, the CIFAR config; True in the ImageNet ones).
        upsample: ``"nearest"`` (default) or ``"linear"``.
        momentum: the encoder's starting momentum in [0, 1) (default 0.999).
        end_momentum: its final momentum in [momentum, 1] (default 0.999999); equal to ``momentum``: constant.
        momentum_delay: the share of the run at ``momentum`` before the cosine (default 0.1).
        lam_margin: λ within this of 0 or 1 gives the classifier plain mixup, in [0, 0.5) (default 0.08).
        separate_draws: a λ and partners for the Mix Block apart from the classifier's (default True);
            False: one draw, the classifier trains on the Mix Block's sample (detached).
        clean_weight: weight of the classifier's clean cross-entropy (default 1; 0 skips the clean forward).
        generator_weight: weight of the encoder's mixed loss (> 0, default 1).
        mask_weight: weight of the mask loss (default 0.1).
        mask_margin: the tolerated ``|mean(mask) - λ|`` (default 0.1).
        mask_loss: ``"batch"`` (the mean over the batch, the reference's) or ``"sample"`` (per sample, then averaged).
        lr_scale: the Mix Block's learning rate over the run's (default 1).
        weight_decay: the Mix Block's weight decay (default: the run's).
        teacher_fraction: the share of the Mix Block's sample the encoder scores, in (0, 1] (default 1;
            less is cheaper, with BatchNorm statistics over fewer samples).
        **kwargs: the base mixer's (``alpha`` default 2, ``lam_mode``, ``p``, ``pairing``, ...).

    Example:
        >>> from mixlab.models import create_model
        >>> from mixlab.methods.context import MixContext
        >>> net = create_model("cnn_small", num_classes=3, input_size=16)
        >>> mixer = AutoMix(model=net)
        >>> x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
        >>> mb = mixer(x, y, torch.Generator().manual_seed(0), context=MixContext(mixer, net)(x, y))
        >>> mixer.layer, sorted(mixer.loss_terms(mb, mb.forward(net)))
        ('block2', ['clean', 'mask', 'mix_block'])
    """

    name = "automix"
    default_alpha = 2.0

    def __init__(
        self,
        *,
        layer: str | None = None,
        model: nn.Module | None = None,
        in_channels: int | None = None,
        reduction: int = 2,
        lam_concat: bool = False,
        upsample: str = "nearest",
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        momentum_delay: float = 0.1,
        lam_margin: float = 0.08,
        separate_draws: bool = True,
        clean_weight: float = 1.0,
        generator_weight: float = 1.0,
        mask_weight: float = 0.1,
        mask_margin: float = 0.1,
        mask_loss: str = "batch",
        lr_scale: float = 1.0,
        weight_decay: float | None = None,
        teacher_fraction: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(
            layer=layer,
            model=model,
            in_channels=in_channels,
            reduction=reduction,
            lam_concat=lam_concat,
            upsample=upsample,
            momentum=momentum,
            end_momentum=end_momentum,
            momentum_delay=momentum_delay,
            lam_margin=lam_margin,
            separate_draws=separate_draws,
            clean_weight=clean_weight,
            lr_scale=lr_scale,
            weight_decay=weight_decay,
            teacher_fraction=teacher_fraction,
            **kwargs,
        )
        self.generator_weight = check_positive("generator_weight", generator_weight)
        self.mask_weight = check_non_negative("mask_weight", mask_weight)
        self.mask_margin = check_probability("mask_margin", mask_margin)
        self.mask_loss = check_choice("mask_loss mode", mask_loss, MASK_LOSS_MODES)
        self._finish_init()

    def loss_terms(self, mb: MixedBatch, outputs: Tensor) -> dict[str, Tensor]:
        """``"mix_block"`` (the encoder's mixed loss), ``"mask"`` (if ``mask_weight > 0``), ``"clean"``.

        Only the terms with a positive weight; empty for an unmixed batch.
        """
        generated = self._generated(mb)
        if generated is None:
            return {}
        teacher, target = self._teacher(generated, [OUTPUT])
        terms = {"mix_block": self.generator_weight * mixed_cross_entropy(teacher[OUTPUT], target)}
        if self.mask_weight > 0:
            terms["mask"] = self.mask_weight * mask_mean_loss(
                generated.mask[:, 0], generated.weights[:, 0], self.mask_margin, self.mask_loss
            )
        return {**terms, **self._clean_terms(generated)}


def mask_mean_loss(mask: Tensor, lam: Tensor, margin: float, mode: str = "batch") -> Tensor:
    """AutoMix's mask loss: ``max(|mean(mask) - λ| - margin, 0)``, the L1 distance beyond a margin.

    ``mode="batch"``: the mean of the mask over the whole batch against the mean λ
    (the reference's ``PixelMixBlock.mask_loss`` with ``mask_loss_mode="L1"``, one λ per
    batch); ``"sample"``: per sample, then averaged. Liu et al., ECCV 2022, arXiv 2103.13027.

    Args:
        mask: ``(N, *spatial)`` weight of each sample in its mix.
        lam: ``(N,)`` its label weight.
        margin: the tolerated distance.
        mode: ``"batch"`` or ``"sample"``.

    Example:
        >>> mask, lam = torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([0.75, 0.75])
        >>> float(mask_mean_loss(mask, lam, 0.125)), float(mask_mean_loss(mask, lam, 0.125, "sample"))
        (0.125, 0.375)
    """
    if mode == "batch":
        return F.relu((mask.float().mean() - lam.float().mean()).abs() - margin)
    kept = mask.float().flatten(1).mean(dim=1)
    return F.relu((kept - lam.float()).abs() - margin).mean()


class AdAutoMix(_LearnedMaskMixer):
    """AdAutoMix: a generator of ``K``-source masks that alternately plays against and with a momentum teacher.

    Each step draws ``K`` label weights (``K`` ratios from Beta(α, α), normalised)
    and, for the generator and the classifier apart, ``K - 1`` partner
    permutations (for two sources also two ratios, as the reference). The
    momentum encoder (an EMA of the classifier owned by the mixer, run in train
    mode with its own BatchNorm statistics) gives the feature maps at ``layer``
    and its output on the clean batch; the :class:`AdaptiveMixBlock` turns the
    features into one mask per source (bilinear upsampling, softmax over sources).

    - The classifier's batch: ``inputs = sum_k m_k * x[sources[:, k]]`` with the
      classifier's masks detached and the label weights ``mb.weights``
      (:meth:`MixedBatch.from_sources`); plain linear mixing where the first weight is
      within ``lam_margin`` of 0 or 1. ``mb.forward(model)`` also runs the clean
      batch and, for ``K > 2``, the linear mix ``sum_k w_k x[sources[:, k]]``:
      term ``"clean"`` is ``clean_weight * ((1 - mixup_ratio) CE(clean) + mixup_ratio CE(linear))``
      (two sources: ``clean_weight * CE(clean)``).
    - The generator, with the teacher ``t`` (the encoder, train mode) on its own
      sample ``x~``: on adversarial steps (every ``adversarial_every``-th, the
      first included) ``"mix_block" = -adversarial_weight * CE_t(x~)`` (it ascends
      the teacher's mixed cross-entropy) and ``"similarity" = similarity_weight *
      mean(sum_k w_k cos(t(x~), t(x[sources[:, k]])))``, which the reference code
      *minimises* (``similarity="code"``; ``"preserve"`` minimises ``1 - cos``
      instead, the stated aim of keeping the sources' meaning); on the other steps
      ``"mix_block" = cooperative_weight * CE_t(x~)``.

    :meth:`after_step` moves the encoder towards the model along
    :func:`cosine_momentum` and counts the step. Qin, Jin, Jiang, El-Yacoubi and
    Gao, "Adversarial AutoMixup", ICLR 2024, arXiv 2312.11954.

    The defaults are the authors' CIFAR configuration (JinXins/Adversarial-AutoMixup
    ``configs/classification/cifar100/basic/r18_adautomix_bilinear.py``): α = 1, three
    sources, the third stage's feature map, reduction 2, no λ channel, bilinear
    upsampling, momentum 0.999 → 0.999999 (held for the first 10 %), ``lam_margin``
    0.03, β = 0.3 (similarity weight 1 - β), adversarial every other step,
    ``mixup_ratio`` 0.5, loss weights 1, the teacher on the whole batch.

    Deviations: one head for the mixed and the clean losses (the reference has two,
    and copies of both in the encoder); the clean and linear-mix batches share the
    mixed batch's forward (BatchNorm statistics over all three; the reference runs
    three forwards); the first source of each output is the sample itself (the
    reference permutes all ``K``: the same distribution of tuples).

    Args:
        layer: the module whose (encoder) feature map drives the generator; default the
            second-to-last of ``model.stages``.
        model: the model, to check the layer names, pick defaults, read channels and copy the
            encoder from (or :meth:`bind_model`, which :class:`~mixlab.methods.context.MixContext` calls).
        sources: ``K``, the inputs mixed into each output (>= 2, default 3).
        output_layer: the module whose encoder output the similarity compares (default None:
            the model's output, the logits).
        in_channels: the layer's output channels (read from ``model`` when not given).
        reduction: attention width ``C // reduction`` (default 2).
        lam_concat: feed the weights to the generator as channels (default False).
        upsample: ``"linear"`` (default, bilinear for images) or ``"nearest"``.
        momentum, end_momentum, momentum_delay: the encoder's schedule, as in :class:`AutoMix`.
        lam_margin: a first weight within this of 0 or 1 gives the classifier linear mixing (default 0.03).
        separate_draws: partners (and, for two sources, λ) for the generator apart from the classifier's
            (default True).
        adversarial_weight: β, the weight of the ascended teacher loss (> 0, default 0.3).
        similarity_weight: weight of the cosine term (>= 0, default ``1 - adversarial_weight``).
        similarity: ``"code"`` (minimise the cosine, default) or ``"preserve"`` (minimise ``1 - cos``).
        adversarial_every: adversarial steps are every this many (default 2; 1: always).
        cooperative_weight: weight of the teacher loss on the other steps (> 0, default 1).
        clean_weight: weight of the classifier's clean term (default 1; 0 skips the extra forwards).
        mixup_ratio: the linear mix's share of the clean term for ``K > 2`` (default 0.5).
        lr_scale: the generator's learning rate over the run's (default 1).
        weight_decay: the generator's weight decay (default: the run's).
        teacher_fraction: the share of the generator's sample the teacher scores, in (0, 1] (default 1).
        **kwargs: the base mixer's (``alpha`` default 1, ``lam_mode``, ``p``, ``pairing``, ...).

    Example:
        >>> from mixlab.models import create_model
        >>> from mixlab.methods.context import MixContext
        >>> net = create_model("cnn_small", num_classes=3, input_size=16)
        >>> mixer = AdAutoMix(model=net)
        >>> x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
        >>> mb = mixer(x, y, torch.Generator().manual_seed(0), context=MixContext(mixer, net)(x, y))
        >>> mb.num_sources, sorted(mixer.loss_terms(mb, mb.forward(net)))
        (3, ['clean', 'linear_mix', 'mix_block', 'similarity'])
        >>> mixer.after_step()  # the next step is cooperative
        >>> mb = mixer(x, y, torch.Generator().manual_seed(0), context=MixContext(mixer, net)(x, y))
        >>> sorted(mixer.loss_terms(mb, mb.forward(net)))
        ['clean', 'linear_mix', 'mix_block']
    """

    name = "adautomix"
    default_alpha = 1.0

    def __init__(
        self,
        *,
        layer: str | None = None,
        model: nn.Module | None = None,
        sources: int = 3,
        output_layer: str | None = None,
        in_channels: int | None = None,
        reduction: int = 2,
        lam_concat: bool = False,
        upsample: str = "linear",
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        momentum_delay: float = 0.1,
        lam_margin: float = 0.03,
        separate_draws: bool = True,
        adversarial_weight: float = 0.3,
        similarity_weight: float | None = None,
        similarity: str = "code",
        adversarial_every: int = 2,
        cooperative_weight: float = 1.0,
        clean_weight: float = 1.0,
        mixup_ratio: float = 0.5,
        lr_scale: float = 1.0,
        weight_decay: float | None = None,
        teacher_fraction: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(
            layer=layer,
            model=model,
            in_channels=in_channels,
            reduction=reduction,
            lam_concat=lam_concat,
            upsample=upsample,
            momentum=momentum,
            end_momentum=end_momentum,
            momentum_delay=momentum_delay,
            lam_margin=lam_margin,
            separate_draws=separate_draws,
            clean_weight=clean_weight,
            lr_scale=lr_scale,
            weight_decay=weight_decay,
            teacher_fraction=teacher_fraction,
            **kwargs,
        )
        self.num_sources = check_int("sources", sources, minimum=2)
        if output_layer is not None and (not isinstance(output_layer, str) or output_layer in (INPUT, OUTPUT)):
            raise MixlabValueError(f"adautomix: output_layer must be a module name or None; got {output_layer!r}")
        self.output_layer = output_layer
        self.adversarial_weight = check_positive("adversarial_weight", adversarial_weight)
        if similarity_weight is None:
            similarity_weight = max(1.0 - self.adversarial_weight, 0.0)
        self.similarity_weight = check_non_negative("similarity_weight", similarity_weight)
        self.similarity = check_choice("similarity mode", similarity, SIMILARITY_MODES)
        self.adversarial_every = check_int("adversarial_every", adversarial_every, minimum=1)
        self.cooperative_weight = check_positive("cooperative_weight", cooperative_weight)
        self.mixup_ratio = check_probability("mixup_ratio", mixup_ratio)
        self._finish_init()

    def _new_block(self, channels: int) -> _AttentionMaskBlock:
        return AdaptiveMixBlock(channels, self.reduction, lam_concat=self.lam_concat, upsample=self.upsample)

    def _feature_layers(self) -> tuple[str, ...]:
        extra = () if self.output_layer is None else (self.output_layer,)
        return tuple(dict.fromkeys((*super()._feature_layers(), *extra)))

    @property
    def _compared(self) -> str:
        """The encoder output the similarity compares: ``output_layer``'s, or the model's own."""
        return OUTPUT if self.output_layer is None else self.output_layer

    def _encoder_layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self._layer(), self._compared)))

    @property
    def adversarial_step(self) -> bool:
        """Whether the next batch trains the generator adversarially (every ``adversarial_every``-th step)."""
        return self.steps % self.adversarial_every == 0

    @property
    def _linear_share(self) -> float:
        return self.mixup_ratio if self.num_sources > 2 else 0.0

    def _complete(self, mb: MixedBatch, generated: _Generated, x: Tensor, y: Tensor, clean: dict) -> None:
        generated.adversarial = self.adversarial_step
        generated.teacher_clean = clean[self._compared]
        if self.clean_weight > 0:
            generated.clean_target = MixedBatch.unmixed(x, y)
            linear = None
            if self._linear_share > 0:
                linear = _combine(x, mb.sources, mb.weights.view(*mb.weights.shape, *([1] * (x.ndim - 2))))
                generated.linear_target = MixedBatch.from_sources(
                    linear, y, mb.sources, mb.weights, check_weights=False
                )
            mb.forward_fn = _WithClean(x, generated, linear)

    def loss_terms(self, mb: MixedBatch, outputs: Tensor) -> dict[str, Tensor]:
        """``"mix_block"`` and, on adversarial steps, ``"similarity"``; ``"clean"`` and ``"linear_mix"``.

        Only the terms with a positive weight; empty for an unmixed batch.
        """
        generated = self._generated(mb)
        if generated is None:
            return {}
        compared = self._compared
        teacher, target = self._teacher(generated, tuple(dict.fromkeys((OUTPUT, compared))))
        teacher_loss = mixed_cross_entropy(teacher[OUTPUT], target)
        terms: dict[str, Tensor] = {}
        if generated.adversarial:
            terms["mix_block"] = -self.adversarial_weight * teacher_loss
            if self.similarity_weight > 0:
                similarity = self._similarity(teacher[compared], generated, target)
                terms["similarity"] = self.similarity_weight * similarity
        else:
            terms["mix_block"] = self.cooperative_weight * teacher_loss
        terms.update(self._clean_terms(generated))
        return terms

    def _similarity(self, mixed_output: Tensor, generated: _Generated, target: MixedBatch) -> Tensor:
        """``mean(sum_k w_k cos(t(x~), t(x_k)))`` (``"code"``), or ``mean(sum_k w_k (1 - cos))`` (``"preserve"``)."""
        assert generated.teacher_clean is not None
        rows = target.batch_size
        mixed = mixed_output.flatten(1).float().unsqueeze(1)  # (rows, 1, D)
        clean = generated.teacher_clean.detach().flatten(1).float()
        sources = clean.index_select(0, target.sources.flatten()).view(rows, target.num_sources, -1)
        cosine = F.cosine_similarity(mixed, sources, dim=-1)  # (rows, K)
        if self.similarity == "preserve":
            cosine = 1.0 - cosine
        return (target.weights.to(cosine.device) * cosine).sum(dim=1).mean()

    def _clean_terms(self, generated: _Generated) -> dict[str, Tensor]:
        terms = super()._clean_terms(generated)
        share = self._linear_share
        if not terms or share == 0:
            return terms
        if generated.linear_logits is None or generated.linear_target is None:
            raise MixlabValueError("adautomix: the linear mix was not scored; run the model with mb.forward(model)")
        terms["clean"] = (1.0 - share) * terms["clean"]
        linear_loss = mixed_cross_entropy(generated.linear_logits, generated.linear_target)
        terms["linear_mix"] = self.clean_weight * share * linear_loss
        return terms


class _WithClean:
    """Runs the model on the mixed, the clean (and the linear-mix) batches in one forward; keeps the extra outputs."""

    def __init__(self, clean: Tensor, generated: _Generated, linear: Tensor | None = None):
        self.clean, self.generated, self.linear = clean, generated, linear

    def __call__(self, model: nn.Module, inputs: Tensor) -> Tensor:
        parts = [inputs, self.clean] + ([] if self.linear is None else [self.linear])
        outputs = model(torch.cat(parts)).split(inputs.shape[0])
        self.generated.clean_logits = outputs[1]
        if self.linear is not None:
            self.generated.linear_logits = outputs[2]
        return outputs[0]


__all__ = ["AdAutoMix", "AdaptiveMixBlock", "AutoMix", "MixBlock", "cosine_momentum", "mask_mean_loss"]
