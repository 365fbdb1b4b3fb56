"""Attention-guided label mixing: TransMix re-weights a cut-and-paste label by a ViT's class attention."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mixlab.batch import MixedBatch
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.methods.base import Mixer, MixParams, RelabellingMixer
from mixlab.methods.context import MixerNeeds, check_attention, find_modules, unwrap

#: Cutting mixers whose per-pixel masks TransMix can read.
TRANSMIX_BASES = ("cutmix", "fmix", "gridmix", "resizemix", "saliencymix", "smoothmix")

#: Constructor arguments of every mixer: they set the wrapper's draws, so they belong to the
#: wrapper and are passed on to its base, never given in ``base_options``.
SHARED_OPTIONS = (
    "alpha",
    "lam",
    "lam_range",
    "lam_mode",
    "p",
    "pairing",
    "sigma",
    "num_classes",
    "inplace",
    "seed",
    "validate",
)


def build_base_mixer(
    owner: str, base: object, accepted: Sequence[str], options: object, shared: Mapping[str, Any]
) -> Mixer:
    """Build the cutting mixer a wrapper (TransMix, SUMix) draws its masks from, by name.

    Args:
        owner: the wrapper's name, for messages.
        base: the base mixer's registry name; must be one of ``accepted``.
        accepted: the base names the wrapper supports.
        options: the base's own options (e.g. ``{"decay_power": 3}`` for FMix), or ``None``.
        shared: the wrapper's mixer arguments (α, ``p``, pairing, ...), passed on to the base.

    Example:
        >>> build_base_mixer("transmix", "fmix", TRANSMIX_BASES, {"decay_power": 2.0}, {"alpha": 1.0}).decay_power
        2.0
    """
    if not isinstance(base, str):
        raise MixlabTypeError(f"{owner}: base must be a mixer name (str); got {base!r} of type {type(base).__name__}")
    if base not in accepted:
        raise UnknownNameError(f"base mixer for {owner}", base, accepted)
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise MixlabTypeError(f"{owner}: base_options must be a dict of {base} options; got {options!r}")
    misplaced = sorted(set(options) & set(SHARED_OPTIONS))
    if misplaced:
        raise MixlabValueError(
            f"{owner}: give {', '.join(misplaced)} to {owner} itself, not in base_options (they set {owner}'s draws)"
        )
    from mixlab.methods import create_mixer  # the registry imports this module

    return create_mixer(base, **shared, **options)


def patch_fractions(weight: Tensor, num_patches: int) -> Tensor:
    """The share of each patch's pixels that come from ``x_i``: ``(M, P)`` float32 from an ``(M, 1, H, W)`` weight.

    The patch grid ``(gh, gw)`` with ``gh * gw = num_patches`` follows the image's
    aspect ratio (square patches); each patch's value is the mean weight over
    its pixels, exact when the grid divides the image.

    Example:
        >>> w = torch.ones(1, 1, 4, 4); w[..., :2, :1] = 0.0
        >>> patch_fractions(w, 4)
        tensor([[0.5000, 1.0000, 1.0000, 1.0000]])
    """
    if weight.ndim != 4:
        raise MixlabValueError(
            f"transmix reads 2-D masks (M, 1, H, W) for image patches; got a mask of shape {tuple(weight.shape)}"
        )
    height, width = weight.shape[-2:]
    rows = max(1, round(math.sqrt(num_patches * height / width)))
    cols = num_patches // rows
    if rows * cols != num_patches:
        raise MixlabValueError(f"transmix: {num_patches} patch tokens do not form a grid for a {height}x{width} input")
    return nn.functional.adaptive_avg_pool2d(weight.float(), (rows, cols)).flatten(1)


def attention_lambda(attention: Tensor, weight: Tensor, num_prefix_tokens: int = 1) -> Tensor:
    """TransMix's label weight: the share of the class token's attention over patches that falls on ``x_i``.

    ``λ_i = Σ_p A_ip K_ip / Σ_p A_ip`` where ``A`` is the class token's attention over the
    patch tokens averaged over heads and ``K`` the share of each patch taken from
    ``x_i`` (the mask averaged over the patch grid). Chen et al., CVPR 2022, arXiv 2111.09833.

    Args:
        attention: ``(N, heads, T, T)`` attention weights, the class token first and
            ``num_prefix_tokens`` tokens before the patches.
        weight: the mixing mask, ``(N or 1, 1, H, W)``, 1 where pixels come from ``x_i``.
        num_prefix_tokens: class (and distillation) tokens before the patches.

    Returns:
        ``(N,)`` float32 in [0, 1], without gradient.

    Example:
        >>> attn = torch.zeros(1, 1, 5, 5); attn[0, 0, 0] = torch.tensor([0.2, 0.4, 0.2, 0.1, 0.1])
        >>> w = torch.ones(1, 1, 2, 2); w[..., 0, 0] = 0.0  # the first patch comes from the partner
        >>> attention_lambda(attn, w)
        tensor([0.5000])
    """
    cls = attention.detach()[:, :, 0, num_prefix_tokens:].float().mean(dim=1)
    keep = patch_fractions(weight, cls.shape[1]).to(cls.device)
    total = cls.sum(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return ((cls * keep).sum(dim=1) / total).clamp_(0.0, 1.0)


class TransMix(RelabellingMixer):
    """TransMix: cut-and-paste inputs, labels weighted by a ViT's class attention on the mixed image.

    The inputs are mixed by a cutting mixer (``base``, CutMix by default). The label
    weight is then recomputed from the *mixed* forward pass: the class token's
    attention over the patch tokens in the last block (averaged over heads), summed
    over the patches that come from ``x_i`` (each weighted by the share of its pixels
    from ``x_i``) and divided by its total over all patches. The new ``lam`` is
    detached (no gradient flows through the label) and written into ``mb.lam`` by
    :meth:`MixedBatch.forward`, so run the model with ``mb.forward(model)``; losses
    read ``mb.lam`` afterwards. Until then ``mb.lam`` is the base's area ratio. No extra
    forward pass. Default ``alpha=1`` (CutMix's in the DeiT recipe the paper uses).
    Chen, Sun, He, Torr, Yuille and Bai, CVPR 2022, arXiv 2111.09833.

    Args:
        base: the cutting mixer: ``"cutmix"`` (the paper's), ``"fmix"``, ``"gridmix"``,
            ``"resizemix"``, ``"saliencymix"`` or ``"smoothmix"``.
        base_options: the base's own options (e.g. ``{"decay_power": 3.0}``); α, ``p`` and
            the other mixer arguments are given to TransMix itself.
        model: a ViT exposing ``attention_layers`` (such as ``vit_tiny``), to check at
            once; otherwise it is taken from ``context["model"]``.
        layer: the attention module to read (default: the model's last ``attention_layers`` entry).
        **kwargs: the mixer arguments (``alpha``, ``lam_mode``, ``p``, ``pairing``, ...).

    Example:
        >>> import torch
        >>> from mixlab.models import create_model
        >>> net = create_model("vit_tiny", 10, input_size=16, dim=32, depth=2, heads=2)
        >>> mixer = TransMix(model=net, lam=0.5)
        >>> x, y = torch.randn(4, 1, 16, 16), torch.arange(4)
        >>> mb = mixer(x, y, generator=torch.Generator().manual_seed(0), context={"model": net})
        >>> logits = mb.forward(net)  # recomputes mb.lam from the attention
        >>> logits.shape, bool(((mb.lam >= 0) & (mb.lam <= 1)).all())
        (torch.Size([4, 10]), True)
    """

    name = "transmix"
    spatial = True
    requires = frozenset({"model", "attention"})
    default_alpha = 1.0

    def __init__(
        self,
        *,
        base: str = "cutmix",
        base_options: Mapping[str, Any] | None = None,
        model: nn.Module | None = None,
        layer: str | None = None,
        **kwargs: Any,
    ):
        if all(kwargs.get(key) is None for key in ("alpha", "lam", "lam_range")):
            kwargs["alpha"] = self.default_alpha
        super().__init__(**kwargs)
        self.base = build_base_mixer(self.name, base, TRANSMIX_BASES, base_options, kwargs)
        if layer is not None and not isinstance(layer, str):
            raise MixlabTypeError(f"transmix: layer must be a module name (str) or None; got {layer!r}")
        self.layer = layer
        self.model = model
        self._checked: nn.Module | None = None
        if model is not None:
            self._check_model(model)

    @property
    def needs(self) -> MixerNeeds:
        """The model, which must expose attention maps."""
        return MixerNeeds(model=True, attention=True)

    def _check_model(self, model: object) -> None:
        if model is self._checked:
            return
        if not isinstance(model, nn.Module):
            raise MixlabTypeError(f"transmix needs the model (an nn.Module); got {type(model).__name__}")
        check_attention(model, self.name)
        if self.layer is not None:
            find_modules(unwrap(model), [self.layer], what="attention layer")
        self._checked = model

    def _check_context(self, context: dict[str, Any]) -> None:
        model = context.get("model", self.model)
        if model is None:
            raise MixlabValueError(
                "transmix needs the model (a ViT exposing attention, such as 'vit_tiny'): pass model= to "
                "TransMix(...) or context=MixContext(mixer, model)(x, y)"
            )
        self._check_model(model)

    def apply(self, x: Tensor, y: Tensor, params: MixParams, *, context: dict[str, Any] | None = None) -> MixedBatch:
        """Cut and paste as the base does; ``mb.forward(model)`` then sets ``mb.lam`` from the attention."""
        mb = super().apply(x, y, params, context=context)
        if params.mixed and params.weight is not None:
            mb.forward_fn = _AttentionLabel(mb, params.weight, self.layer)
        return mb

    def __repr__(self) -> str:
        return f"TransMix(base={self.base!r}, layer={self.layer!r})"


class _AttentionLabel:
    """Runs the model with a hook on an attention module and sets the batch's ``lam`` from what it saw."""

    def __init__(self, batch: MixedBatch, weight: Tensor, layer: str | None):
        self.batch, self.weight, self.layer = batch, weight, layer

    def __call__(self, model: nn.Module, inputs: Tensor) -> Any:
        module = unwrap(model)  # DDP: hook the wrapped module, run the wrapper
        layer = self.layer or check_attention(module, TransMix.name)[-1]
        target = find_modules(module, [layer], what="attention layer")[layer]
        seen: list[Tensor] = []

        def keep_first(_module: nn.Module, _args: Any, output: Any) -> None:
            if not seen:
                seen.append(output.detach())

        handle = target.register_forward_hook(keep_first)
        try:
            outputs = model(inputs)
        finally:
            handle.remove()
        if not seen:
            raise MixlabValueError(f"transmix: attention layer {layer!r} did not run during the forward pass")
        prefix = int(getattr(module, "num_prefix_tokens", 1))
        self.batch.lam = attention_lambda(seen[0], self.weight, prefix)
        return outputs


__all__ = ["SHARED_OPTIONS", "TRANSMIX_BASES", "TransMix", "attention_lambda", "build_base_mixer", "patch_fractions"]
