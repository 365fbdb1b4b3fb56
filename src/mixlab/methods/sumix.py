"""SUMix: a cutting mixer whose label ratio is corrected by learned semantics, plus an uncertainty regulariser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mixlab.batch import MixedBatch
from mixlab.errors import MixlabTypeError, MixlabValueError, check_int, check_non_negative, check_positive
from mixlab.methods.attention import build_base_mixer
from mixlab.methods.base import MixParams, RelabellingMixer
from mixlab.methods.context import FEATURES, MixerNeeds, find_modules, layer_outputs, unwrap

#: The cutting mixers SUMix corrects (those of the paper).
SUMIX_BASES = ("cutmix", "fmix", "resizemix", "saliencymix")


class SemanticHeads(nn.Module):
    """SUMix's learned part: a semantic head (the learnable similarity function) and an uncertainty head.

    Both map pooled features ``(N, feature_dim)`` to ``num_classes`` scores. They start
    at zero (uniform semantics, so the corrected ratio starts equal to the drawn one,
    and no random number is drawn).

    Example:
        >>> heads = SemanticHeads(4, 3)
        >>> heads.semantics(torch.randn(2, 4))
        tensor([[0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333]], grad_fn=<SoftmaxBackward0>)
    """

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.semantic_weight = nn.Parameter(torch.zeros(num_classes, feature_dim))
        self.semantic_bias = nn.Parameter(torch.zeros(num_classes))
        self.uncertainty_weight = nn.Parameter(torch.zeros(num_classes, feature_dim))
        self.uncertainty_bias = nn.Parameter(torch.zeros(num_classes))

    def semantics(self, features: Tensor) -> Tensor:
        """Class distribution of each sample, ``softmax(W_s z + b_s)``, ``(N, K)``."""
        return torch.softmax(nn.functional.linear(features, self.semantic_weight, self.semantic_bias), dim=1)

    def uncertainty(self, features: Tensor) -> Tensor:
        """Per-class uncertainty, the L2-normalised ``softmax(W_u z + b_u)``, ``(N, K)``."""
        scores = torch.softmax(nn.functional.linear(features, self.uncertainty_weight, self.uncertainty_bias), dim=1)
        return nn.functional.normalize(scores, dim=1)


def corrected_lambda(lam: Tensor, distance_a: Tensor, distance_b: Tensor, sharpness: float) -> Tensor:
    """``λ e^{-κ d_a} / (λ e^{-κ d_a} + (1-λ) e^{-κ d_b})``: the drawn ratio re-weighted by semantic distances.

    ``d_a`` (``d_b``) is how much of ``x_i``'s (``x_j``'s) class evidence the mixed sample
    lost; equal distances leave ``λ`` unchanged, and ``λ`` of 0 or 1 stays as it is.

    Example:
        >>> corrected_lambda(torch.tensor([0.5, 0.5, 1.0]), torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.0]), 2.0)
        tensor([0.5000, 0.1192, 1.0000])
    """
    return lam / (lam + (1.0 - lam) * torch.exp(sharpness * (distance_a - distance_b)))


def pooled(features: Tensor) -> Tensor:
    """``(N, D)`` features as they are; ``(N, C, *spatial)`` averaged over space; float32.

    Example:
        >>> pooled(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3])
    """
    if not isinstance(features, Tensor) or features.ndim < 2:
        raise MixlabValueError(f"sumix needs layer outputs of shape (N, D) or (N, C, ...); got {features!r:.80}")
    features = features.float()
    return features if features.ndim == 2 else features.flatten(2).mean(dim=2)


class SUMix(RelabellingMixer):
    """SUMix: a cutting mixer whose label ratio follows the semantics of the mixed sample, plus an uncertainty term.

    The inputs are mixed by ``base`` (CutMix, FMix, ResizeMix or SaliencyMix). With ``z_i``
    the pooled features of the clean ``x_i`` at ``layer`` (from :class:`MixContext`, no
    gradient), ``ẑ`` those of the mixed sample (taken by a hook during the training
    forward, no extra pass) and ``s(·) = softmax(W_s · + b_s)`` a learned semantic head:

    - mix-ratio learning: ``α_a = s(z_i)(1 - t_j) - s(ẑ)`` (the partner's class removed
      from ``x_i``'s semantics), ``d_a = ⟨t_i, α_a⟩`` the evidence for ``x_i``'s class that
      the mixed sample lost (likewise ``α_b``, ``d_b`` for ``x_j``), and
      ``λ̂ = λ e^{-κ d_a} / (λ e^{-κ d_a} + (1-λ) e^{-κ d_b})``. ``mb.lam`` becomes ``λ̂``,
      detached (the label carries no gradient), when ``mb.forward(model)`` runs;
    - uncertainty: ``u(·)`` an L2-normalised softmax head, ``β_a = u(z_i) + u(ẑ)``; the
      regulariser ``γ · mean[λ CE(-κ(α_a + β_a), t_i) + (1-λ) CE(-κ(α_b + β_b), t_j)]``
      (source semantics detached) is returned by :meth:`loss_terms` as ``"sumix_uncertainty"``.

    ``t`` are the one-hot (or given soft) labels. The heads (``W_s``, ``W_u``) are the
    mixer's parameters, trained by the loop through :meth:`optimizer_groups`. Cost: one
    forward of the clean batch without gradient (the context's features). Qin, Jin, Zhu,
    Liao, El-Yacoubi and Gao, ECCV 2024, arXiv 2407.07805.

    Args:
        base: ``"cutmix"``, ``"fmix"``, ``"resizemix"`` or ``"saliencymix"``; its default α is used
            unless one is given here.
        base_options: the base's own options (e.g. ``{"scale": (0.1, 0.8)}`` for ResizeMix).
        model: the model, to pick ``layer`` (its last stage), the feature width and the number of
            classes and build the heads; without it :class:`MixContext` does so (:meth:`bind_model`).
        layer: the module whose output is the penultimate representation (default ``model.stages[-1]``);
            ``(N, C, *spatial)`` outputs are averaged over space.
        feature_dim: width of the pooled features (default: inferred from the model).
        sharpness: κ, the scale of the semantic distances (default 2).
        gamma: γ, the weight of the uncertainty regulariser (default 0.1, the paper's).
        lr_scale: learning-rate multiplier of the heads (default 1).
        **kwargs: the mixer arguments (``alpha``, ``lam_mode``, ``p``, ``num_classes``, ...), passed to the base.

    Example:
        >>> import torch
        >>> from mixlab.methods.context import MixContext
        >>> from mixlab.models import create_model
        >>> net = create_model("cnn_small", 10, input_size=16)
        >>> mixer = SUMix(model=net, alpha=1.0)
        >>> x, y = torch.randn(4, 1, 16, 16), torch.arange(4)
        >>> mb = mixer(x, y, generator=torch.Generator().manual_seed(0), context=MixContext(mixer, net)(x, y))
        >>> logits = mb.forward(net)  # sets mb.lam to the corrected ratio
        >>> sorted(mixer.loss_terms(mb, logits)), mixer.layer
        (['sumix_uncertainty'], 'fc')
    """

    name = "sumix"
    spatial = True
    requires = frozenset({"model"})

    def __init__(
        self,
        *,
        base: str = "cutmix",
        base_options: Mapping[str, Any] | None = None,
        model: nn.Module | None = None,
        layer: str | None = None,
        feature_dim: int | None = None,
        sharpness: float = 2.0,
        gamma: float = 0.1,
        lr_scale: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.base = build_base_mixer(self.name, base, SUMIX_BASES, base_options, kwargs)
        self.lam_sampler = self.base.lam_sampler  # the base's default α when none is given
        self.sharpness = check_positive("sharpness", sharpness)
        self.gamma = check_non_negative("gamma", gamma)
        self.lr_scale = check_non_negative("lr_scale", lr_scale)
        if layer is not None and not isinstance(layer, str):
            raise MixlabTypeError(f"sumix: layer must be a module name (str) or None; got {layer!r}")
        self.layer: str | None = layer
        self.feature_dim = None if feature_dim is None else check_int("feature_dim", feature_dim, minimum=1)
        if self.num_classes is not None and self.num_classes < 2:
            raise MixlabValueError(f"sumix mixes class labels and needs num_classes >= 2; got {self.num_classes}")
        self.heads: SemanticHeads | None = None
        if model is not None:
            self.bind_model(model)
        elif layer is not None and self.feature_dim is not None and self.num_classes is not None:
            self.heads = SemanticHeads(self.feature_dim, self.num_classes)

    def bind_model(self, model: nn.Module) -> None:
        """Take the layer (the model's last stage), feature width and class count from ``model``; build the heads.

        Called with ``model=`` and by :class:`MixContext`; heads already built are kept.
        """
        module = _bare(model)
        self.layer = _pick_layer(module, self.layer)
        if self.heads is not None:
            return
        num_classes = self.num_classes if self.num_classes is not None else getattr(module, "num_classes", None)
        if num_classes is None:
            raise MixlabValueError(
                f"sumix needs the number of classes; {type(module).__name__} has no num_classes: pass num_classes="
            )
        if num_classes < 2:
            raise MixlabValueError(f"sumix mixes class labels and needs num_classes >= 2; got {num_classes}")
        self.num_classes = int(num_classes)
        if self.feature_dim is None:
            self.feature_dim = _feature_width(module, self.layer)
        parameter = next(module.parameters(), None)
        self.heads = SemanticHeads(self.feature_dim, self.num_classes)
        if parameter is not None:
            self.heads.to(parameter.device)

    # ------------------------------------------------------------ engine hooks

    @property
    def needs(self) -> MixerNeeds:
        """The model and the clean batch's features at :attr:`layer` (once known)."""
        return MixerNeeds(model=True, features=() if self.layer is None else (self.layer,))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The semantic and uncertainty heads' weights and biases (none before the model is known)."""
        return [] if self.heads is None else list(self.heads.parameters())

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """One group with the heads, at ``lr_scale`` times the run's learning rate."""
        params = self.trainable_parameters()
        return [{"params": params, "lr_scale": self.lr_scale}] if params else []

    def loss_terms(self, mb: MixedBatch, outputs: Tensor) -> dict[str, Tensor]:
        """``{"sumix_uncertainty": γ · regulariser}`` for a batch run through ``mb.forward``; else nothing."""
        state = mb.aux.get(self.name)
        if state is None or self.gamma == 0.0 or self.heads is None:
            return {}
        mixed_semantics, source_semantics = state["mixed_semantics"], state["source_semantics"].detach()
        mixed_uncertainty = self.heads.uncertainty(state["mixed"])
        source_uncertainty = self.heads.uncertainty(state["sources"])
        perm, target_a, target_b, lam = state["perm"], state["target_a"], state["target_b"], state["prior"]
        terms = []
        for own, other, source, uncertainty in (
            (target_a, target_b, source_semantics, source_uncertainty),
            (target_b, target_a, source_semantics[perm], source_uncertainty[perm]),
        ):
            alpha = source * (1.0 - other) - mixed_semantics
            logits = -self.sharpness * (alpha + uncertainty + mixed_uncertainty)
            terms.append(-(own * logits.log_softmax(dim=1)).sum(dim=1))
        regulariser = (lam * terms[0] + (1.0 - lam) * terms[1]).mean()
        return {"sumix_uncertainty": self.gamma * regulariser}

    def to(self, device: torch.device | str) -> SUMix:
        """Move the heads to ``device``."""
        if self.heads is not None:
            self.heads.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The heads' weights (nothing before the model is known)."""
        if self.heads is None:
            return {}
        return {"heads": {key: value.detach().clone() for key, value in self.heads.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the heads saved by :meth:`state_dict`."""
        if not state and self.heads is None:
            return
        if set(state) != {"heads"}:
            raise MixlabValueError(f"sumix state must have the key 'heads'; got keys {sorted(state)}")
        if self.heads is None:
            raise MixlabValueError("sumix has no heads yet: build it with model= (or bind_model(model)) before loading")
        self.heads.load_state_dict(state["heads"])

    # ------------------------------------------------------------ mixing

    def check(self, x: Tensor, y: Tensor) -> None:
        """As every mixer, and the targets must be class indices or soft labels ``(N, K)``."""
        super().check(x, y)
        if self.validate and y.is_floating_point() and (y.ndim != 2 or y.shape[1] != self.num_classes):
            raise MixlabValueError(
                f"sumix needs class indices (N,) or soft labels (N, {self.num_classes}); got y of shape {tuple(y.shape)}"
            )

    def _check_context(self, context: dict[str, Any]) -> None:
        if self.layer is None or self.heads is None:
            raise MixlabValueError(
                "sumix does not know its model yet: pass model= to SUMix(...) or "
                "context=MixContext(mixer, model)(x, y) (mixlab.methods.context.MixContext)"
            )
        features = context.get(FEATURES, {})
        if self.layer not in features:
            raise MixlabValueError(
                f"sumix needs the clean batch's features at {self.layer!r}: pass "
                "context=MixContext(mixer, model)(x, y) (mixlab.methods.context.MixContext)"
            )

    def apply(self, x: Tensor, y: Tensor, params: MixParams, *, context: dict[str, Any] | None = None) -> MixedBatch:
        """Mix as the base does; ``mb.forward(model)`` then captures ``ẑ`` and sets ``mb.lam`` to ``λ̂``."""
        mb = super().apply(x, y, params, context=context)
        if params.mixed:
            sources = pooled((context or {}).get(FEATURES, {})[self.layer])
            if sources.shape != (x.shape[0], self.feature_dim):
                raise MixlabValueError(
                    f"sumix: features at {self.layer!r} pool to {tuple(sources.shape)}; expected "
                    f"({x.shape[0]}, {self.feature_dim}) (check layer= and feature_dim=)"
                )
            mb.forward_fn = _SemanticLabel(self, mb, sources.detach(), mb.lam.float())
        return mb

    def targets(self, y: Tensor) -> Tensor:
        """Labels as ``(N, K)`` float32 distributions (one-hot for class indices).

        Example:
            >>> SUMix(layer="fc", num_classes=3, feature_dim=2).targets(torch.tensor([2, 0]))
            tensor([[0., 0., 1.],
                    [1., 0., 0.]])
        """
        if y.is_floating_point():
            return y.float()
        return nn.functional.one_hot(y.long(), self.num_classes).float()

    def relabel(self, mb: MixedBatch, mixed: Tensor, sources: Tensor, prior: Tensor) -> Tensor:
        """Compute ``λ̂`` from the pooled features of the mixed and clean samples and return it (with gradient).

        ``prior`` is the base's ratio; ``mb.lam`` becomes ``λ̂`` detached and ``mb.aux["sumix"]``
        keeps what :meth:`loss_terms` needs.
        """
        target_a, target_b = self.targets(mb.target_a), self.targets(mb.target_b)
        mixed_semantics = self.heads.semantics(mixed)
        source_semantics = self.heads.semantics(sources)
        lost_a = (target_a * (source_semantics * (1.0 - target_b) - mixed_semantics)).sum(dim=1)
        lost_b = (target_b * (source_semantics[mb.perm] * (1.0 - target_a) - mixed_semantics)).sum(dim=1)
        learned = corrected_lambda(prior, lost_a, lost_b, self.sharpness)
        mb.aux[self.name] = {
            "mixed": mixed,
            "sources": sources,
            "mixed_semantics": mixed_semantics,
            "source_semantics": source_semantics,
            "perm": mb.perm,
            "target_a": target_a,
            "target_b": target_b,
            "prior": prior,
            "learned_lam": learned,
        }
        mb.lam = learned.detach().clamp(0.0, 1.0)
        return learned

    def __repr__(self) -> str:
        return f"SUMix(base={self.base!r}, layer={self.layer!r}, sharpness={self.sharpness}, gamma={self.gamma})"


class _SemanticLabel:
    """Runs the model with a hook that keeps the mixed sample's features, then sets the batch's ``lam``."""

    def __init__(self, mixer: SUMix, batch: MixedBatch, sources: Tensor, prior: Tensor):
        self.mixer, self.batch, self.sources, self.prior = mixer, batch, sources, prior

    def __call__(self, model: nn.Module, inputs: Tensor) -> Any:
        layer = self.mixer.layer
        target = find_modules(_bare(model), [layer], what="feature layer")[layer]
        seen: list[Tensor] = []

        def keep_first(_module: nn.Module, _args: Any, output: Any) -> None:
            if not seen:
                seen.append(output)

        handle = target.register_forward_hook(keep_first)
        try:
            outputs = model(inputs)
        finally:
            handle.remove()
        if not seen:
            raise MixlabValueError(f"sumix: layer {layer!r} did not run during the forward pass")
        self.mixer.relabel(self.batch, pooled(seen[0]), self.sources, self.prior)
        return outputs


def _bare(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise MixlabTypeError(f"sumix needs the model (an nn.Module); got {type(model).__name__}")
    return unwrap(model)  # DDP wraps the model as .module


def _pick_layer(module: nn.Module, layer: str | None) -> str:
    """The given layer checked against the model, or the model's last stage."""
    if layer is None:
        stages = tuple(getattr(module, "stages", ()) or ())
        if not stages:
            raise MixlabValueError(
                f"sumix needs the penultimate layer and {type(module).__name__} names no stages: pass layer= a module name"
            )
        layer = stages[-1]
    find_modules(module, [layer], what="feature layer")
    return layer


def _feature_width(module: nn.Module, layer: str) -> int:
    """Width of ``layer``'s pooled output: the model's feature_dim for its last stage, else one dry forward."""
    stages = tuple(getattr(module, "stages", ()) or ())
    if stages and layer == stages[-1] and isinstance(getattr(module, "feature_dim", None), int):
        return int(module.feature_dim)
    size, channels = getattr(module, "input_size", None), getattr(module, "in_channels", None)
    if size is None or channels is None:
        raise MixlabValueError(f"sumix cannot tell the width of {layer!r}'s features: pass feature_dim=")
    probe = torch.zeros(2, channels, *size, device=next(module.parameters()).device)
    return int(pooled(layer_outputs(module, probe, [layer])[layer]).shape[1])


__all__ = ["SUMIX_BASES", "SUMix", "SemanticHeads", "corrected_lambda", "pooled"]
