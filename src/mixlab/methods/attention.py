"""Attention-guided label mixing: TransMix re-weights a cut-and-paste label by a ViT's class attention."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mixlab.batch import MixedBatch
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError, check_choice
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


#: How TransMix turns the attention into the label weight: ``"mean"`` averages the area ratio and the attention
#: share (the authors' code and Sec. 4.1 of the paper), ``"attention"`` takes the attention share alone (the formula
#: of Sec. 3).
LAM_RULES = ("mean", "attention")


def patch_grid(height: int, width: int, num_patches: int) -> tuple[int, int]:
    """The ``(rows, cols)`` patch grid of a ``height x width`` input cut into ``num_patches`` square patches.

    Example:
        >>> patch_grid(32, 64, 8)
        (2, 4)
    """
    rows = max(1, round(math.sqrt(num_patches * height / width)))
    cols = num_patches // rows
    if rows * cols != num_patches:
        raise MixlabValueError(f"transmix: {num_patches} patch tokens do not form a grid for a {height}x{width} input")
    return rows, cols


def patch_mask(weight: Tensor, num_patches: int) -> Tensor:
    """The mixing mask read at one pixel per patch: ``(M, P)`` float32 from an ``(M, 1, H, W)`` weight.

    Nearest-neighbour down-sampling as in the authors' code (``nn.Upsample`` in its
    default ``"nearest"`` mode): patch ``(r, c)`` of a ``gh x gw`` grid takes the
    mask's value at pixel ``(floor(r * H / gh), floor(c * W / gw))``, the patch's
    top-left pixel when the grid divides the image. A binary mask gives a binary
    patch mask: a patch counts wholly for the image its sampled pixel comes from.
    Chen et al., CVPR 2022, arXiv 2111.09833 (the ``↓(M)`` of Sec. 3).

    Example:
        >>> w = torch.ones(1, 1, 4, 4); w[..., :1, :3] = 0.0  # the partner's box: row 0, columns 0-2
        >>> patch_mask(w, 4)
        tensor([[0., 0., 1., 1.]])
    """
    if weight.ndim != 4:
        raise MixlabValueError(
            f"transmix reads 2-D masks (M, 1, H, W) for image patches; got a mask of shape {tuple(weight.shape)}"
        )
    grid = patch_grid(*weight.shape[-2:], num_patches)
    return nn.functional.interpolate(weight.float(), size=grid, mode="nearest").flatten(1)


def attention_lambda(attention: Tensor, weight: Tensor, num_prefix_tokens: int = 1) -> Tensor:
    """TransMix's attention term: the share of the class token's attention over patches that falls on ``x_i``.

    ``λ_attention,i = Σ_p A_ip K_ip / Σ_p A_ip`` where ``A`` is the class token's attention
    over the patch tokens averaged over heads and ``K`` the mask read at one pixel per
    patch (:func:`patch_mask`), normalised over the patches as in the authors' code
    (``w2 / (w1 + w2)`` in ``transmix_label``). Chen et al., CVPR 2022, arXiv 2111.09833.

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
    keep = patch_mask(weight, cls.shape[1]).to(cls.device)
    total = cls.sum(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return ((cls * keep).sum(dim=1) / total).clamp_(0.0, 1.0)


def transmix_lambda(
    attention: Tensor, weight: Tensor, area_lam: Tensor, num_prefix_tokens: int = 1, lam_rule: str = "mean"
) -> Tensor:
    """TransMix's label weight of ``x_i``: ``(λ_area + λ_attention) / 2`` (``"mean"``) or ``λ_attention``.

    ``"mean"`` is what the authors' code computes (``lam = (lam0 + lam1) / 2`` in
    ``transmix_label``) and what Sec. 4.1 of the paper states ("the label assignment is
    the mean of both methods"; confirmed by the authors in Beckschen/TransMix issue #7);
    ``"attention"`` is the formula of Sec. 3 alone. ``area_lam`` is the share of
    ``x_i``'s pixels (the base mixer's exact mask mean). Chen et al., CVPR 2022, arXiv 2111.09833.

    Example:
        >>> attn = torch.zeros(1, 1, 5, 5); attn[0, 0, 0] = torch.tensor([0.2, 0.4, 0.2, 0.1, 0.1])
        >>> w = torch.ones(1, 1, 2, 2); w[..., 0, 0] = 0.0
        >>> transmix_lambda(attn, w, torch.tensor([0.75]))  # (0.75 + 0.5) / 2
        tensor([0.6250])
    """
    share = attention_lambda(attention, weight, num_prefix_tokens)
    if lam_rule == "attention":
        return share
    return (area_lam.detach().float().to(share.device) + share).mul_(0.5)


class TransMix(RelabellingMixer):
    """TransMix: cut-and-paste inputs, labels weighted by a ViT's class attention on the mixed image.

    The inputs are mixed by a cutting mixer (``base``, CutMix by default). The label
    weight is then recomputed from the *mixed* forward pass. The attention term
    ``λ_attention`` is the class token's attention over the patch tokens in the last
    block (averaged over heads), summed over the patches that come from ``x_i`` and
    divided by its total over all patches; a patch comes from ``x_i`` when the mask,
    down-sampled to the patch grid by nearest neighbour (:func:`patch_mask`), says so.
    By default (``lam_rule="mean"``) the label weight is ``(λ_area + λ_attention) / 2``
    with ``λ_area`` the share of ``x_i``'s pixels: this is the authors' code
    (``transmix_label``: ``lam = (lam0 + lam1) / 2``), stated in Sec. 4.1 of the paper
    and confirmed by the authors (Beckschen/TransMix issue #7); the published results
    come from it. ``lam_rule="attention"`` uses ``λ_attention`` alone, the formula of
    Sec. 3. The new ``lam`` is detached (no gradient flows through the label) and
    written into ``mb.lam`` by :meth:`MixedBatch.forward`, so run the model with
    ``mb.forward(model)``; losses read ``mb.lam`` afterwards. Until then ``mb.lam`` is
    the base's area ratio. No extra forward pass. Defaults ``alpha=1`` and ``p=1``
    (CutMix's α and the mixing probability in the DeiT recipe the paper trains with;
    that recipe also switches to plain mixup, without TransMix, for half the batches,
    which this mixer does not do).
    Chen, Sun, He, Torr, Yuille and Bai, CVPR 2022, arXiv 2111.09833.

    Args:
        base: the cutting mixer: ``"cutmix"`` (the paper's), ``"fmix"``, ``"gridmix"``,
            ``"resizemix"``, ``"saliencymix"`` or ``"smoothmix"``.
        base_options: the base's own options (e.g. ``{"decay_power": 3.0}``); α, ``p`` and
            the other mixer arguments are given to TransMix itself.
        lam_rule: ``"mean"`` (default: the authors' code and Sec. 4.1) or ``"attention"``
            (the attention share alone, Sec. 3).
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
        lam_rule: str = "mean",
        **kwargs: Any,
    ):
        self.lam_rule = check_choice("transmix lam_rule", lam_rule, LAM_RULES)
        if all(kwargs.get(key) is None for key in ("alpha", "lam", "lam_range")):
            kwargs["alpha"] = self.default_alpha
        # the DeiT recipe mixes every batch (mixup_prob=1), whatever the base's own default p (CutMix's is 0.5)
        kwargs.setdefault("p", 1.0)
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
            mb.forward_fn = _AttentionLabel(mb, params.weight, self.layer, self.lam_rule)
        return mb

    def __repr__(self) -> str:
        return f"TransMix(base={self.base!r}, layer={self.layer!r}, lam_rule={self.lam_rule!r})"


class _AttentionLabel:
    """Runs the model with a hook on an attention module and sets the batch's ``lam`` from what it saw."""

    def __init__(self, batch: MixedBatch, weight: Tensor, layer: str | None, lam_rule: str):
        self.batch, self.weight, self.layer, self.lam_rule = batch, weight, layer, lam_rule
        # the area term is the base's λ as drawn; kept apart so that a second forward does not compound
        self.area_lam = batch.lam.detach().clone()

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
        self.batch.lam = transmix_lambda(seen[0], self.weight, self.area_lam, prefix, self.lam_rule)
        return outputs


__all__ = [
    "LAM_RULES",
    "SHARED_OPTIONS",
    "TRANSMIX_BASES",
    "TransMix",
    "attention_lambda",
    "build_base_mixer",
    "patch_grid",
    "patch_mask",
    "transmix_lambda",
]
