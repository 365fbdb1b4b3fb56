"""Learned mask generators: AutoMix and AdAutoMix.

A small cross-attention network, the :class:`MixBlock`, reads the two samples'
feature maps at one layer of an exponential-moving-average (EMA) copy of the
classifier, together with the mixing ratio λ, and outputs the mixing mask; the
mask is upsampled to the input. The generator is trained inside the ordinary
training step: everything it needs goes through the mixer hooks
(:attr:`~mixlab.methods.base.Mixer.needs`, :meth:`~mixlab.methods.base.Mixer.loss_terms`,
:meth:`~mixlab.methods.base.Mixer.optimizer_groups`), so one backward pass gives
the classifier its gradient and the Mix Block its own.

- :class:`AutoMix` (Liu et al., ECCV 2022, arXiv 2103.13027): the online
  classifier learns from the mixed sample with the mask detached; the Mix Block
  learns from the EMA ("momentum") classifier's mixed loss on the same sample,
  plus a loss that keeps the mask's mean near λ.
- :class:`AdAutoMix` (Qin et al., ICLR 2024, arXiv 2312.11954): the generator
  plays against the classifier (a gradient-reversal on the classifier's input),
  held to the sources' meaning by a cosine-similarity constraint through the EMA teacher.

Both need ``context=MixContext(mixer, model)(x, y)`` at each step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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
from mixlab.methods.base import Mixer, MixParams, ratios_to_device
from mixlab.methods.context import EMA_MODEL, FEATURES, INPUT, MixerNeeds, find_modules, unwrap

#: Where a learned mixer keeps, in ``MixedBatch.aux``, what its ``loss_terms`` need.
AUX_KEY = "learned_mix"
UPSAMPLE_MODES = ("nearest", "linear")
#: The initial masks are sigmoid(LAM_SLOPE (λ - 1/2)), within 0.07 of λ.
LAM_SLOPE = 6.0
_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


class MixBlock(nn.Module):
    """The Mix Block: a λ-conditioned cross-attention from two feature maps to a mixing mask.

    Each position of the feature map is a token; λ is appended as one more
    channel (``λ`` to the sample, ``1 - λ`` to its partner). Queries from one
    map attend (scaled dot product, softmax over positions) to keys of the
    other, and gather a one-channel value: the evidence for taking the other
    sample at that position. AutoMix's block (``symmetric=False``, query and key
    projections shared) puts the evidence for the partner through a sigmoid; the
    symmetric block (``symmetric=True``, separate key projection, as AdAutoMix's
    generator) compares the evidence for each source, a softmax over the two
    sources. The logits are upsampled to the input size before the sigmoid.
    Weights start at N(0, 0.01²) as in the paper, except the value weight of the
    λ channel, which makes the first masks ``sigmoid(6 (λ - 1/2))``, within 0.07 of
    λ everywhere: the generator starts as mixup instead of at 0.5, which keeps short runs stable.
    Liu et al., ECCV 2022, arXiv 2103.13027, Sec. 3.2; Qin et al., ICLR 2024, arXiv 2312.11954.

    The query, key and value projections are 1x1 convolutions on ``C + 1``
    channels held as one linear map (``projection``: rows ``[query, key, value]``);
    the λ channel is constant over positions, so its column is added to the
    projected features instead of being concatenated to them (the same result, one matrix product).

    Args:
        in_channels: channels ``C`` of the feature map.
        reduction: the attention width is ``max(C // reduction, 1)``.
        symmetric: score both sources (AdAutoMix) instead of the partner only (AutoMix).
        upsample: ``"nearest"`` or ``"linear"`` (linear, bilinear or trilinear by the number of spatial dims).

    Example:
        >>> block = MixBlock(8)
        >>> features = torch.randn(4, 8, 3, 3)
        >>> mask = block(features, torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.3), (12, 12))
        >>> mask.shape, bool(((mask > 0) & (mask < 1)).all())
        (torch.Size([4, 1, 12, 12]), True)
    """

    def __init__(self, in_channels: int, reduction: int = 2, *, symmetric: bool = False, upsample: str = "nearest"):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.reduction = check_int("reduction", reduction, minimum=1)
        self.symmetric = bool(symmetric)
        self.upsample = check_choice("upsample mode", upsample, UPSAMPLE_MODES)
        self.width = max(self.in_channels // self.reduction, 1)
        outputs = self.width * (2 if self.symmetric else 1) + 1
        self.projection = nn.Linear(self.in_channels + 1, outputs)
        with torch.no_grad():
            nn.init.normal_(self.projection.weight, std=0.01)
            nn.init.zeros_(self.projection.bias)
            # A mixup start: the λ channel's value weight makes the first masks sigmoid(6 (λ - 1/2)) ≈ λ everywhere.
            self.projection.weight[-1, -1] = LAM_SLOPE / 2 if self.symmetric else LAM_SLOPE
            self.projection.bias[-1] = 0.0 if self.symmetric else -LAM_SLOPE / 2

    def forward(self, features: Tensor, perm: Tensor, lam: Tensor, size: Sequence[int]) -> Tensor:
        """The weight of each sample in its mix, ``(N, 1, *size)`` float32 in (0, 1), differentiable.

        Args:
            features: ``(N, C, *spatial)`` feature maps of the samples.
            perm: ``(N,)`` partner indices.
            lam: ``(N,)`` mixing ratios (the weight of each sample in its label).
            size: the input's spatial size, to upsample to.
        """
        # Float32 whatever the autocast state: the softmax and sigmoid overflow in half precision.
        with torch.autocast(features.device.type, enabled=False):
            n = features.shape[0]
            tokens = features.float().flatten(2).transpose(1, 2)  # (N, L, C)
            weight, bias = self.projection.weight, self.projection.bias
            projected = torch.matmul(tokens, weight[:, :-1].t())  # (N, L, P)
            ratio = lam.to(tokens.device, torch.float32).view(n, 1, 1)
            lam_column = weight[:, -1]
            own = projected + (ratio * lam_column + bias)
            partner = projected.index_select(0, perm) + ((1.0 - ratio) * lam_column + bias)
            logit = self._evidence(own, partner)  # for taking the partner
            if self.symmetric:
                logit = logit - self._evidence(partner, own)
            logit = logit.view(n, 1, *features.shape[2:])
            if self.upsample == "nearest":  # the sigmoid commutes with copying: apply it on the small map
                return F.interpolate(torch.sigmoid(-logit), size=tuple(size), mode="nearest")
            logit = F.interpolate(logit, size=tuple(size), mode=_LINEAR_MODES[len(size)])
            return torch.sigmoid(-logit)

    def _evidence(self, queries: Tensor, keys: Tensor) -> Tensor:
        """``softmax(q k^T / sqrt(d)) v`` from projected tokens: ``(N, L)``, in the queries' positions."""
        d = self.width
        query = queries[..., :d] * d**-0.5
        key = keys[..., d : 2 * d] if self.symmetric else keys[..., :d]
        value = keys[..., -1:]
        attention = torch.bmm(query, key.transpose(1, 2)).softmax(dim=-1)
        return torch.bmm(attention, value).squeeze(2)


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``-scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * -ctx.scale, None


def reverse_gradient(x: Tensor, scale: float = 1.0) -> Tensor:
    """Return ``x`` unchanged, but send back ``-scale`` times the gradient (a gradient-reversal layer).

    What is upstream of ``x`` then ascends the loss that the layers after it
    descend: one backward trains both sides of a min-max game. Ganin and
    Lempitsky, ICML 2015, arXiv 1409.7495.

    Args:
        x: any tensor.
        scale: the factor of the reversed gradient (>= 0).

    Example:
        >>> w = torch.tensor(2.0, requires_grad=True)
        >>> (3.0 * reverse_gradient(w, 0.5)).backward()
        >>> w.grad
        tensor(-1.5000)
    """
    return _ReverseGradient.apply(x, check_non_negative("scale", scale))


@dataclass
class _Generated:
    """What a learned mixer keeps in ``MixedBatch.aux`` for its ``loss_terms``."""

    mixed: Tensor  # the mixed inputs, differentiable with respect to the Mix Block
    mask: Tensor  # (N, 1, *spatial) float32 weight of each sample, differentiable
    lam: Tensor  # (N,) λ
    perm: Tensor
    ema_model: nn.Module
    teacher_clean: Tensor | None = None  # AdAutoMix: the EMA's compared output on the clean batch
    clean_target: MixedBatch | None = None  # AdAutoMix: the clean batch, for the classifier's clean loss
    clean_logits: Tensor | None = None  # AdAutoMix: filled by the batch's forward
    adversarial: bool = False  # AdAutoMix: whether the generator plays against the classifier on this batch


class _LearnedMaskMixer(Mixer):
    """Shared machinery of AutoMix and AdAutoMix: the layer, the Mix Block, the context and the hooks."""

    spatial = True
    requires = frozenset({"model"})
    symmetric_block: ClassVar[bool] = False

    def __init__(
        self,
        *,
        layer: str | None = None,
        model: nn.Module | None = None,
        in_channels: int | None = None,
        reduction: int = 2,
        momentum: float = 0.999,
        upsample: str = "nearest",
        lr_scale: float = 1.0,
        weight_decay: float | None = None,
        mask_weight: float = 0.0,
        mask_margin: float = 0.1,
        teacher_fraction: float = 0.25,
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
        if layer == INPUT:
            raise MixlabValueError(f"{self.name} reads a hidden feature map; layer must be a module, not {INPUT!r}")
        self.layer: str | None = layer
        self.in_channels = None if in_channels is None else check_int("in_channels", in_channels, minimum=1)
        self.reduction = check_int("reduction", reduction, minimum=1)
        self.upsample = check_choice("upsample mode", upsample, UPSAMPLE_MODES)
        self.momentum = check_non_negative("momentum", momentum)
        if self.momentum >= 1.0:
            raise MixlabValueError(f"momentum must be in [0, 1); got {momentum!r}")
        self.lr_scale = check_positive("lr_scale", lr_scale)
        self.weight_decay = None if weight_decay is None else check_non_negative("weight_decay", weight_decay)
        self.mask_weight = check_non_negative("mask_weight", mask_weight)
        self.mask_margin = check_probability("mask_margin", mask_margin)
        self.teacher_fraction = check_probability("teacher_fraction", teacher_fraction)
        if self.teacher_fraction == 0.0:
            raise MixlabValueError("teacher_fraction must be in (0, 1]; got 0.0")
        self.mix_block: MixBlock | None = None
        self._model = model

    def _finish_init(self) -> None:
        """Bind to the constructor's model, or build the Mix Block now if the layer and its channels were given."""
        model, self._model = self._model, None
        if model is not None:
            self.bind_model(model)
        elif self.layer is not None and self.in_channels is not None:
            self.mix_block = self._new_block(self.in_channels)

    # ------------------------------------------------------------ the model

    def bind_model(self, model: nn.Module) -> None:
        """Check the layer names against ``model``, take the defaults it implies and build the Mix Block.

        The default layer is the second-to-last of ``model.stages`` (``block2`` for
        cnn_small, ``layer3`` for preact_resnet18); the channels are read from the
        layer's last convolution, normalisation or linear module unless
        ``in_channels`` was given. Called with ``model=`` and by
        :class:`~mixlab.methods.context.MixContext`; a Mix Block already built is kept.

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
        if self.mix_block is None:
            channels = self.in_channels if self.in_channels is not None else _output_channels(module, self.layer)
            if channels is None:
                raise MixlabValueError(
                    f"{self.name} cannot tell how many channels {self.layer!r} outputs; pass in_channels="
                )
            self.in_channels = channels
            self.mix_block = self._new_block(channels)
            parameter = next(module.parameters(), None)
            if parameter is not None:
                self.mix_block.to(parameter.device)

    def _new_block(self, channels: int) -> MixBlock:
        return MixBlock(channels, self.reduction, symmetric=self.symmetric_block, upsample=self.upsample)

    def _block(self) -> MixBlock:
        if self.mix_block is None:
            raise MixlabValueError(
                f"{self.name} does not know its model yet: build it with model=, or create "
                "MixContext(mixer, model) (mixlab.methods.context) before the optimiser, which binds it"
            )
        return self.mix_block

    # ------------------------------------------------------------ mixing

    @property
    def needs(self) -> MixerNeeds:
        """The layer's features from the EMA copy of the model, and the EMA copy itself."""
        return MixerNeeds(features=self._feature_layers(), features_from="ema", ema=True, ema_momentum=self.momentum)

    def _feature_layers(self) -> tuple[str, ...]:
        return () if self.layer is None else (self.layer,)

    def _check_context(self, context: dict[str, Any]) -> None:
        self._block()
        features = context.get(FEATURES) or {}
        missing = [name for name in self._feature_layers() if name not in features]
        if missing or context.get(EMA_MODEL) is None:
            what = f"the EMA model's outputs of {missing}" if missing else "the EMA model"
            raise MixlabValueError(
                f"{self.name} needs {what} in its context; build it with context = MixContext(mixer, model) "
                "and pass context=context(x, y) at each step (from mixlab.methods.context import MixContext)"
            )

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        # The mask is computed in apply(), deterministically from the features; only λ and perm are drawn.
        params = MixParams(perm=perm, lam=ratios_to_device(lam, x.shape[0], x.device))
        params.extra["whole"] = bool(np.any((lam <= 0.0) | (lam >= 1.0)))
        return params

    def apply(self, x: Tensor, y: Tensor, params: MixParams, *, context: dict[str, Any] | None = None) -> MixedBatch:
        """Generate the mask from the context's features and mix; the batch's ``aux`` keeps the generator's graph."""
        if not params.mixed:
            return MixedBatch.unmixed(x, y)
        context = context or {}
        self._check_context(context)
        features = self._layer_features(context, x)
        lam, perm = params.lam, params.perm
        mask = self._block()(features, perm, lam, x.shape[2:])
        if params.extra.get("whole", True):  # λ of 1 or 0 (e.g. left unmixed by p < 1) keeps one sample whole
            full = lam.view(-1, *([1] * (mask.ndim - 1)))
            mask = torch.where(full >= 1.0, 1.0, torch.where(full <= 0.0, 0.0, mask))
        weight = mask.to(x.dtype)
        mixed = torch.lerp(x.index_select(0, perm), x, weight)
        if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        generated = _Generated(mixed, mask, lam, perm, context[EMA_MODEL])
        mb = MixedBatch(self._classifier_input(generated), y, y.index_select(0, perm), lam, perm, weight.detach())
        mb.aux[AUX_KEY] = generated
        self._complete(mb, generated, x, y, context)
        return mb

    def _layer_features(self, context: dict[str, Any], x: Tensor) -> Tensor:
        block = self._block()
        features = context[FEATURES][self.layer]
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

    def _classifier_input(self, generated: _Generated) -> Tensor:
        """What the online classifier sees: by default the mixed batch with the mask detached."""
        return generated.mixed.detach()

    def _complete(self, mb: MixedBatch, generated: _Generated, x: Tensor, y: Tensor, context: dict) -> None:
        """Method-specific additions to the batch (none here)."""

    # ------------------------------------------------------------ losses

    def _generated(self, mb: MixedBatch | None) -> _Generated | None:
        generated = None if mb is None else mb.aux.get(AUX_KEY)
        return generated if isinstance(generated, _Generated) else None

    def _mask_loss(self, generated: _Generated) -> Tensor:
        """``w * mean(max(|mean(mask_i) - λ_i| - margin, 0))``: the mask keeps about λ of each sample."""
        kept = generated.mask.flatten(1).mean(dim=1)
        return self.mask_weight * F.relu((kept - generated.lam).abs() - self.mask_margin).mean()

    def _teacher_rows(self, n: int) -> int:
        """How many samples (the first ones) the EMA teacher scores: ``teacher_fraction`` of ``n``, at least 2."""
        return min(n, max(2, math.ceil(self.teacher_fraction * n)))

    def _teacher_loss(self, generated: _Generated, mb: MixedBatch) -> Tensor:
        """The EMA teacher's mixed cross-entropy on (the first rows of) the mixed batch.

        Gradient reaches the Mix Block through the mixed inputs, never the EMA's weights (frozen).
        """
        rows = self._teacher_rows(mb.batch_size)
        part = MixedBatch(generated.mixed[:rows], mb.target_a[:rows], mb.target_b[:rows], mb.lam[:rows], mb.perm[:rows])
        return mixed_cross_entropy(_module_output(generated.ema_model, None, part.inputs), part)

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

    def to(self, device: torch.device | str) -> _LearnedMaskMixer:
        """Move the Mix Block to ``device``; returns the mixer."""
        if self.mix_block is not None:
            self.mix_block.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The Mix Block's weights (nothing before the model is known)."""
        if self.mix_block is None:
            return {}
        return {"mix_block": {key: value.detach().clone() for key, value in self.mix_block.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        unknown = sorted(set(state) - {"mix_block"})
        if unknown:
            raise MixlabValueError(f"{self.name} state has unknown keys {unknown}; expected 'mix_block'")
        if "mix_block" in state:
            self._block().load_state_dict(state["mix_block"])
        elif self.mix_block is not None:
            raise MixlabValueError(
                f"{self.name} state lacks 'mix_block' (the Mix Block's weights); got {sorted(state)}"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layer={self.layer!r}, lam={self.lam_sampler!r}, lam_mode={self.lam_mode!r}, "
            f"p={self.p}, momentum={self.momentum})"
        )


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
    """AutoMix: a Mix Block learns the mask from EMA features and λ, trained through the EMA classifier.

    At each step the Mix Block (see :class:`MixBlock`, λ concatenated as a
    channel, query and key projections shared) turns the EMA copy's feature
    maps at ``layer`` of each sample and its partner into a mask, upsampled
    (nearest) to the input; ``inputs = mask * x + (1 - mask) * x[perm]``.

    - The online classifier is trained on ``inputs`` with the mask detached,
      with the label weight ``lam = λ`` (the drawn ratio, not the mask mean:
      ``mb.mask`` is the mask, and its mean is kept near λ by the mask loss).
    - :meth:`loss_terms` returns ``"mix_block"``: the EMA ("momentum") classifier's
      mixed cross-entropy on the same mixed batch (its first ``teacher_fraction``),
      differentiable with respect to the Mix Block (the EMA's weights are frozen),
      times ``generator_weight``; and ``"mask"``:
      ``mask_weight * mean(max(|mean(mask) - λ| - mask_margin, 0))``.

    So one backward trains both. The EMA copy (momentum ``momentum``) is kept
    by :class:`~mixlab.methods.context.MixContext` and also supplies the
    features; run each step with ``context=MixContext(mixer, model)(x, y)``.
    Cost: the context's EMA pass up to ``layer`` (no gradient), the Mix Block, and
    the EMA classifier's forward and input-backward on ``teacher_fraction`` of the batch.
    Liu, Li, Wu, Liu, Chen, Wu and Li, "AutoMix: Unveiling the Power of Mixup for
    Stronger Classifiers", ECCV 2022, arXiv 2103.13027.

    Deviations: the EMA classifier scores only the first quarter of the mixed
    batch by default (``teacher_fraction=0.25``; the paper scores all of it,
    ``teacher_fraction=1``): the Mix Block's small gradient needs few samples and
    the EMA's forward and backward are most of the method's cost. The paper raises
    the momentum from 0.999 towards 1 along a cosine over training; here it is
    constant (the context's EMA has one momentum). The EMA classifier runs in eval
    mode (BatchNorm running statistics), as the context takes its features. The Mix Block starts as mixup
    (masks ≈ λ, see :class:`MixBlock`) rather than at 0.5. One λ and one partner per
    step serve both the classifier and the Mix Block (the reference implementation
    draws two). The online classifier gets no extra clean (one-hot) loss.

    Args:
        layer: the module whose (EMA) feature map drives the Mix Block; default the
            second-to-last of ``model.stages`` (``block2`` for cnn_small, ``layer3`` for preact_resnet18).
        model: the model, to check ``layer``, pick its default and read its channels; without it
            :class:`~mixlab.methods.context.MixContext` does so (:meth:`bind_model`), which must
            then happen before the optimiser is built.
        in_channels: the layer's output channels (read from ``model`` when not given).
        reduction: attention width ``C // reduction`` (default 2).
        momentum: the EMA's momentum in [0, 1) (default 0.999).
        upsample: ``"nearest"`` (the paper's) or ``"linear"``.
        lr_scale: the Mix Block's learning rate over the run's (default 1: the paper trains both at the same rate).
        weight_decay: the Mix Block's weight decay (default: the run's).
        generator_weight: weight of the EMA classifier's mixed loss (> 0, default 1).
        mask_weight: weight of the mask loss (default 0.1).
        mask_margin: the tolerated ``|mean(mask) - λ|`` (default 0.1).
        teacher_fraction: the share of the batch the EMA classifier scores, in (0, 1] (default 0.25).
        **kwargs: the base mixer's (``alpha`` default 2 as in the paper, ``lam_mode``, ``p``, ...).

    Example:
        >>> from mixlab.models import create_model
        >>> from mixlab.methods.context import MixContext
        >>> net = create_model("cnn_small", num_classes=3, input_size=16)
        >>> mixer = AutoMix(model=net)
        >>> x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
        >>> mb = mixer(x, y, torch.Generator().manual_seed(0), context=MixContext(mixer, net)(x, y))
        >>> mixer.layer, sorted(mixer.loss_terms(mb, net(mb.inputs)))
        ('block2', ['mask', 'mix_block'])
    """

    name = "automix"
    default_alpha = 2.0
    symmetric_block = False

    def __init__(
        self,
        *,
        layer: str | None = None,
        model: nn.Module | None = None,
        in_channels: int | None = None,
        reduction: int = 2,
        momentum: float = 0.999,
        upsample: str = "nearest",
        lr_scale: float = 1.0,
        weight_decay: float | None = None,
        generator_weight: float = 1.0,
        mask_weight: float = 0.1,
        mask_margin: float = 0.1,
        teacher_fraction: float = 0.25,
        **kwargs: Any,
    ):
        super().__init__(
            layer=layer,
            model=model,
            in_channels=in_channels,
            reduction=reduction,
            momentum=momentum,
            upsample=upsample,
            lr_scale=lr_scale,
            weight_decay=weight_decay,
            mask_weight=mask_weight,
            mask_margin=mask_margin,
            teacher_fraction=teacher_fraction,
            **kwargs,
        )
        self.generator_weight = check_positive("generator_weight", generator_weight)
        self._finish_init()

    def loss_terms(self, mb: MixedBatch, outputs: Tensor) -> dict[str, Tensor]:
        """``{"mix_block": EMA classifier's mixed loss, "mask": mask-mean loss}``; empty for an unmixed batch."""
        generated = self._generated(mb)
        if generated is None:
            return {}
        teacher = self._teacher_loss(generated, mb)
        return {"mix_block": self.generator_weight * teacher, "mask": self._mask_loss(generated)}


class AdAutoMix(_LearnedMaskMixer):
    """AdAutoMix: an adversarial mask generator, kept faithful by an EMA teacher and a cosine similarity.

    The generator is a symmetric :class:`MixBlock` (λ concatenated, separate query
    and key projections, a softmax over the two sources) on the EMA copy's
    features at ``layer``; ``inputs = mask * x + (1 - mask) * x[perm]`` and
    ``lam = λ``, the label weight of the classifier's mixed loss.

    On adversarial steps the online classifier sees the mixed batch through a
    gradient reversal (:func:`reverse_gradient` with ``adversarial_weight`` β):
    its own mixed loss trains it as usual and sends the generator ``-β`` times
    the same gradient, so within the one backward the generator *maximises* the
    classifier's mixed loss, while :meth:`loss_terms` holds it to the sources'
    meaning with the EMA teacher ``t`` (the output of ``output_layer``, default the logits):

    - ``"similarity"``: ``similarity_weight * mean(λ (1 - cos(t(x̃), t(x))) + (1 - λ) (1 - cos(t(x̃), t(x[perm]))))``
      over the first ``teacher_fraction`` of the batch (``t(x)`` comes from the context's EMA pass).

    With ``alternate=True`` (the reference implementation's schedule) every
    other step is cooperative instead: the mask is detached from the classifier
    and the generator minimises the EMA teacher's mixed loss (AutoMix's
    objective, term ``"mix_block"``). On every step:

    - ``"clean"``: ``clean_weight *`` the classifier's cross-entropy on the clean
      batch (the reference implementation's classifier loss for two sources),
      computed in the same forward: :meth:`MixedBatch.forward` runs the mixed
      and clean batches together, so call ``mb.forward(model)``;
    - ``"mask"``: the AutoMix mask-mean loss, only when ``mask_weight > 0`` (default 0).

    Gradient never reaches the EMA's weights; run each step with
    ``context=MixContext(mixer, model)(x, y)``. Qin, Jin, Jiang, El-Yacoubi and Gao,
    "Adversarial AutoMixup", ICLR 2024, arXiv 2312.11954.

    Deviations: the paper mixes N >= 2 images (two or three at random in its
    experiments); mixlab's contract has two sources per sample, so N = 2, and
    the classifier's loss is that of the two-source case (mixed plus clean
    cross-entropy, no extra mixup term). The adversarial term is the online
    classifier's loss (by gradient reversal) where the reference ascends the
    EMA classifier's; the similarity is a loss ``1 - cos`` (the paper's intent:
    keep the mixed sample's meaning). The EMA's momentum is constant (the
    reference raises it along a cosine) and the teacher runs in eval mode (as the
    context's features). The EMA teacher scores only the first
    quarter of the mixed batch by default (``teacher_fraction=0.25``; 1 is the
    paper's), and the generator starts as mixup (masks ≈ λ). The clean batch
    shares the mixed batch's forward, so BatchNorm statistics are taken over both.

    Args:
        layer: the module whose (EMA) feature map drives the generator; default the
            second-to-last of ``model.stages``.
        model: the model, to check the layer names, pick defaults and read channels (or
            :meth:`bind_model`, which :class:`~mixlab.methods.context.MixContext` calls).
        output_layer: the module whose EMA output the cosine constraint compares
            (default ``"head"``, the logits of mixlab models).
        in_channels: the layer's output channels (read from ``model`` when not given).
        reduction: attention width ``C // reduction`` (default 2).
        momentum: the EMA teacher's momentum in [0, 1) (default 0.999).
        upsample: ``"nearest"`` or ``"linear"``.
        lr_scale: the generator's learning rate over the run's (default 1).
        weight_decay: the generator's weight decay (default: the run's).
        adversarial_weight: β, the scale of the reversed gradient (> 0, default 0.3 as in the paper).
        similarity_weight: weight of the cosine constraint (>= 0, default 1 - β = 0.7).
        alternate: alternate adversarial and cooperative steps (default True); False: adversarial only.
        cooperative_weight: weight of the EMA teacher's mixed loss on cooperative steps (> 0, default 1).
        clean_weight: weight of the classifier's clean cross-entropy (>= 0, default 1; 0 saves a
            forward and backward of the clean batch).
        mask_weight: weight of the mask-mean loss (default 0).
        mask_margin: the tolerated ``|mean(mask) - λ|`` (default 0.1).
        teacher_fraction: the share of the batch the EMA teacher scores, in (0, 1] (default 0.25).
        **kwargs: the base mixer's (``alpha`` default 1 as in the paper, ``lam_mode``, ``p``, ...).

    Example:
        >>> from mixlab.models import create_model
        >>> from mixlab.methods.context import MixContext
        >>> net = create_model("cnn_small", num_classes=3, input_size=16)
        >>> mixer = AdAutoMix(model=net)
        >>> x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
        >>> mb = mixer(x, y, torch.Generator().manual_seed(0), context=MixContext(mixer, net)(x, y))
        >>> sorted(mixer.loss_terms(mb, mb.forward(net)))
        ['clean', 'similarity']
        >>> mixer.after_step()  # the next step is cooperative
        >>> mb = mixer(x, y, torch.Generator().manual_seed(0), context=MixContext(mixer, net)(x, y))
        >>> sorted(mixer.loss_terms(mb, mb.forward(net)))
        ['clean', 'mix_block']
    """

    name = "adautomix"
    default_alpha = 1.0
    symmetric_block = True

    def __init__(
        self,
        *,
        layer: str | None = None,
        model: nn.Module | None = None,
        output_layer: str | None = None,
        in_channels: int | None = None,
        reduction: int = 2,
        momentum: float = 0.999,
        upsample: str = "nearest",
        lr_scale: float = 1.0,
        weight_decay: float | None = None,
        adversarial_weight: float = 0.3,
        similarity_weight: float = 0.7,
        alternate: bool = True,
        cooperative_weight: float = 1.0,
        clean_weight: float = 1.0,
        mask_weight: float = 0.0,
        mask_margin: float = 0.1,
        teacher_fraction: float = 0.25,
        **kwargs: Any,
    ):
        super().__init__(
            layer=layer,
            model=model,
            in_channels=in_channels,
            reduction=reduction,
            momentum=momentum,
            upsample=upsample,
            lr_scale=lr_scale,
            weight_decay=weight_decay,
            mask_weight=mask_weight,
            mask_margin=mask_margin,
            teacher_fraction=teacher_fraction,
            **kwargs,
        )
        if output_layer is not None and (not isinstance(output_layer, str) or output_layer == INPUT):
            raise MixlabValueError(f"adautomix: output_layer must be a module name; got {output_layer!r}")
        self.output_layer = "head" if output_layer is None else output_layer
        self.adversarial_weight = check_positive("adversarial_weight", adversarial_weight)
        self.similarity_weight = check_non_negative("similarity_weight", similarity_weight)
        if not isinstance(alternate, bool):
            raise MixlabTypeError(f"alternate must be True or False; got {alternate!r}")
        self.alternate = alternate
        self.cooperative_weight = check_positive("cooperative_weight", cooperative_weight)
        self.clean_weight = check_non_negative("clean_weight", clean_weight)
        self.steps = 0
        self._finish_init()

    def _feature_layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*super()._feature_layers(), self.output_layer)))

    @property
    def adversarial_step(self) -> bool:
        """Whether the next batch is generated adversarially (every other step with ``alternate``)."""
        return not self.alternate or self.steps % 2 == 0

    def _classifier_input(self, generated: _Generated) -> Tensor:
        generated.adversarial = self.adversarial_step
        if generated.adversarial:
            return reverse_gradient(generated.mixed, self.adversarial_weight)
        return generated.mixed.detach()

    def _complete(self, mb: MixedBatch, generated: _Generated, x: Tensor, y: Tensor, context: dict) -> None:
        generated.teacher_clean = context[FEATURES][self.output_layer]
        if self.clean_weight > 0:
            generated.clean_target = MixedBatch.unmixed(x, y)
            mb.forward_fn = _WithClean(x, generated)

    def loss_terms(self, mb: MixedBatch, outputs: Tensor) -> dict[str, Tensor]:
        """``"similarity"`` (adversarial steps) or ``"mix_block"`` (cooperative steps), ``"clean"``, ``"mask"``.

        Only the terms with a positive weight; empty for an unmixed batch.
        """
        generated = self._generated(mb)
        if generated is None:
            return {}
        terms: dict[str, Tensor] = {}
        if not generated.adversarial:
            terms["mix_block"] = self.cooperative_weight * self._teacher_loss(generated, mb)
        elif self.similarity_weight > 0:
            terms["similarity"] = self.similarity_weight * self._similarity_loss(generated)
        if self.clean_weight > 0:
            if generated.clean_logits is None or generated.clean_target is None:
                raise MixlabValueError(
                    "adautomix: run the model with mb.forward(model) (it also scores the clean batch); "
                    "or build the mixer with clean_weight=0"
                )
            terms["clean"] = self.clean_weight * mixed_cross_entropy(generated.clean_logits, generated.clean_target)
        if self.mask_weight > 0:
            terms["mask"] = self._mask_loss(generated)
        return terms

    def _similarity_loss(self, generated: _Generated) -> Tensor:
        """``mean(λ (1 - cos(t(x̃), t(x))) + (1 - λ) (1 - cos(t(x̃), t(x[perm]))))`` through the EMA teacher.

        Over the first ``teacher_fraction`` of the batch; gradient reaches the generator only.
        """
        rows = self._teacher_rows(generated.mixed.shape[0])
        mixed = _module_output(generated.ema_model, self.output_layer, generated.mixed[:rows]).flatten(1).float()
        clean = generated.teacher_clean.detach().flatten(1).float()
        own = F.cosine_similarity(mixed, clean[:rows], dim=1)
        partner = F.cosine_similarity(mixed, clean.index_select(0, generated.perm[:rows]), dim=1)
        lam = generated.lam[:rows]
        return (lam * (1.0 - own) + (1.0 - lam) * (1.0 - partner)).mean()

    def after_step(self) -> None:
        """Count the step (adversarial and cooperative steps alternate)."""
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        """The generator's weights (once the model is known) and the step count."""
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if "steps" not in state:
            raise MixlabValueError(f"adautomix state lacks 'steps' (the step count); got {sorted(state)}")
        rest = {key: value for key, value in state.items() if key != "steps"}
        super().load_state_dict(rest)
        self.steps = check_int("steps", int(state["steps"]))


class _WithClean:
    """Runs the model on the mixed and the clean batch in one forward; keeps the clean outputs for ``loss_terms``."""

    def __init__(self, clean: Tensor, generated: _Generated):
        self.clean, self.generated = clean, generated

    def __call__(self, model: nn.Module, inputs: Tensor) -> Tensor:
        outputs = model(torch.cat([inputs, self.clean]))
        mixed, clean = outputs.split(inputs.shape[0])
        self.generated.clean_logits = clean
        return mixed


class _StopForwardError(Exception):
    """Raised by a hook once the wanted module has run, to skip the rest of the forward."""


def _module_output(model: nn.Module, name: str | None, x: Tensor) -> Tensor:
    """``model(x)``, or the output of its module ``name`` (the forward stops there), with gradient.

    The model runs in eval mode, as the context's features are taken (BatchNorm
    with its running statistics, buffers untouched); its mode is restored.
    """
    captured: list[Any] = []
    handle = None
    if name is not None:
        module = find_modules(model, [name], what="output layer")[name]

        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            captured.append(output)
            raise _StopForwardError

        handle = module.register_forward_hook(hook)
    training = model.training
    model.eval()
    try:
        captured.append(model(x))
    except _StopForwardError:
        pass
    finally:
        model.train(training)
        if handle is not None:
            handle.remove()
    if not isinstance(captured[0], Tensor):
        raise MixlabValueError(f"module {name!r} returned {type(captured[0]).__name__}, not a tensor")
    return captured[0]


__all__ = ["AdAutoMix", "AutoMix", "MixBlock", "reverse_gradient"]
