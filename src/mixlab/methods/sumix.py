"""SUMix: a cutting mixer whose label ratio is corrected by the classifier's own semantics, plus an uncertainty term.

Qin, Jin, Zhu, Liao, El-Yacoubi and Gao, "SUMix: Mixup with Semantic and Uncertain
Information", ECCV 2024, arXiv 2407.07805. The defaults follow the authors' code
(JinXins/SUMix: ``ClsUncertainMixupHead.IN_loss`` in ``openmixup/models/heads/cls_mixup_head.py``,
the ``is_IN`` branch of ``MixUpClassification.forward_mix``, and the CIFAR-100 configs
``configs/classification/cifar100/mixups/uncertain/*.py``), which produced the published numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mixlab.batch import MixedBatch
from mixlab.errors import (
    MixlabTypeError,
    MixlabValueError,
    check_choice,
    check_int,
    check_non_negative,
    check_positive,
)
from mixlab.methods.attention import build_base_mixer
from mixlab.methods.base import MixParams, RelabellingMixer
from mixlab.methods.context import MixerNeeds, find_modules, layer_outputs, unwrap
from mixlab.sampling import derive_seed, new_generator

#: The cutting mixers SUMix corrects (those of the paper).
SUMIX_BASES = ("cutmix", "fmix", "resizemix", "saliencymix")

#: The Beta α of each base in the authors' CIFAR-100 configs and README table, used unless α (or λ) is given.
SUMIX_ALPHAS = {"cutmix": 0.2, "fmix": 0.2, "resizemix": 1.0, "saliencymix": 0.2}

#: How the corrected ratios weight the loss: the batch mean of λ̂ for every sample (the authors' code)
#: or each sample's own λ̂.
LAM_PAIRINGS = ("batch_mean", "per_sample")


class UncertaintyHead(nn.Module):
    """SUMix's uncertainty head: ``u(z) = l2norm(softmax(W z + b))``, ``(N, D) -> (N, K)``.

    The authors' code builds it as an ``nn.Linear`` that keeps PyTorch's default
    initialisation (``U(-1/sqrt(D), 1/sqrt(D))`` for weight and bias); here those draws
    come from ``generator`` instead of torch's global generator.

    Example:
        >>> head = UncertaintyHead(4, 3, generator=torch.Generator().manual_seed(0))
        >>> [round(norm, 4) for norm in head(torch.ones(2, 4)).norm(dim=1).tolist()]
        [1.0, 1.0]
    """

    def __init__(self, feature_dim: int, num_classes: int, *, generator: torch.Generator | None = None):
        super().__init__()
        bound = feature_dim**-0.5
        draw = torch.rand(num_classes * (feature_dim + 1), generator=generator) * (2 * bound) - bound
        self.weight = nn.Parameter(draw[: num_classes * feature_dim].reshape(num_classes, feature_dim).clone())
        self.bias = nn.Parameter(draw[num_classes * feature_dim :].clone())

    def forward(self, features: Tensor) -> Tensor:
        """The L2-normalised class distribution of each row of ``features``."""
        scores = nn.functional.linear(features, self.weight, self.bias).softmax(dim=1)
        return nn.functional.normalize(scores, dim=1)


def semantic_alpha(mixed_probs: Tensor, source_probs: Tensor, partner_targets: Tensor, scale: float) -> Tensor:
    """SUMix's semantic term ``α = scale · l2norm(softmax(p_mix − p_src ⊙ (1 − t_partner)))``, ``(N, K)``.

    ``p_mix`` and ``p_src`` are the classifier's softmax on the mixed sample and on its
    source; the partner's class is removed from the source's semantics first. The
    authors' code uses ``scale = N``, the batch size.

    Example:
        >>> one_hot = torch.eye(3)
        >>> semantic_alpha(one_hot[:1], one_hot[:1], one_hot[1:2], 3.0)  # the mixed sample looks like its source
        tensor([[1.7321, 1.7321, 1.7321]])
    """
    difference = mixed_probs - source_probs * (1.0 - partner_targets)
    return scale * nn.functional.normalize(difference.softmax(dim=1), dim=1)


def own_class_alpha(alpha: Tensor, targets: Tensor) -> Tensor:
    """``α`` at each row's class, ``(N,)``: ``α[y]`` for one-hot ``targets``, ``-log Σ_k t_k e^{-α_k}`` for soft ones.

    Example:
        >>> own_class_alpha(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        tensor([2., 3.])
    """
    return -torch.logsumexp(targets.log() - alpha, dim=1)


def corrected_lambda(lam: Tensor, alpha_a: Tensor, alpha_b: Tensor) -> Tensor:
    """``λ̂ = λ e^{-α_a} / (λ e^{-α_a} + (1-λ) e^{-α_b})``, computed in the log domain (no 0/0 when both underflow).

    ``α_a`` (``α_b``) is the semantic term at ``x_i``'s (``x_j``'s) own class; equal terms
    leave ``λ`` unchanged and ``λ`` of 0 or 1 stays as it is.

    Example:
        >>> corrected_lambda(torch.tensor([0.5, 0.5, 1.0]), torch.tensor([1.0, 2.0, 9.0]), torch.tensor([1.0, 1.0, 0.0]))
        tensor([0.5000, 0.2689, 1.0000])
    """
    return torch.sigmoid(torch.logit(lam) - alpha_a + alpha_b)


def uncertainty_loss(
    alpha_a: Tensor,
    alpha_b: Tensor,
    beta_a: Tensor,
    beta_b: Tensor,
    target_a: Tensor,
    target_b: Tensor,
    lam: Tensor,
) -> Tensor:
    """SUMix's regulariser ``mean[λ CE(e^{-(α_a+β_a)}, t_a) + (1-λ) CE(e^{-(α_b+β_b)}, t_b)]``.

    ``e^{-(α+β)}`` are the logits of the cross-entropy; ``t`` are one-hot (or soft) labels
    ``(N, K)`` and ``λ`` the drawn ratio ``(N,)``.

    Example:
        >>> zeros, t = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
        >>> round(float(uncertainty_loss(zeros, zeros, zeros, zeros, t, t, torch.tensor([0.5]))), 4)  # log 2
        0.6931
    """
    ce_a = -(target_a * torch.exp(-(alpha_a + beta_a)).log_softmax(dim=1)).sum(dim=1)
    ce_b = -(target_b * torch.exp(-(alpha_b + beta_b)).log_softmax(dim=1)).sum(dim=1)
    return (lam * ce_a + (1.0 - lam) * ce_b).mean()


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
    """SUMix: a cutting mixer whose label ratio follows the classifier's semantics, plus an uncertainty regulariser.

    The inputs are mixed by ``base`` (CutMix, FMix, ResizeMix or SaliencyMix). ``mb.forward(model)``
    then runs the model twice, as the authors' code does: on the clean batch and on the mixed
    one, both in the model's current (training) mode and with gradient. With ``p`` and ``p̂`` the
    classifier's softmax (detached) on the clean and the mixed sample, ``t`` the one-hot labels,
    ``j`` the partner and ``N`` the batch size:

    - mix-ratio learning: ``α_a = N·l2norm(softmax(p̂ − p_i(1 − t_j)))``, ``α_b`` likewise with
      ``p_j(1 − t_i)``, and ``λ̂ = λ e^{-α_a[y_i]} / (λ e^{-α_a[y_i]} + (1-λ) e^{-α_b[y_j]})``;
    - the label: the authors' loss ``mean(λ̂_a)·CE_a + mean(λ̂_b)·CE_b`` (batch-mean CEs) is the
      mixed cross-entropy with every sample's weight equal to the batch mean of ``λ̂``, so
      ``mb.lam`` becomes that mean (``lam_pairing="batch_mean"``; ``"per_sample"`` keeps each
      sample's own ``λ̂``), detached;
    - uncertainty: ``u(z) = l2norm(softmax(W_u z + b_u))`` on the pooled features at ``layer``,
      ``β_a = u(z_i) + u(ẑ)``, ``β_b = u(z_j) + u(ẑ)``, and :meth:`loss_terms` returns
      ``γ·mean[λ CE(e^{-(α_a+β_a)}, y_i) + (1-λ) CE(e^{-(α_b+β_b)}, y_j)]`` as ``"sumix_uncertainty"``
      (``α`` detached; the gradient reaches ``W_u`` and, through both passes, the model).

    Note the direction of the code's correction: when the mixed sample looks like ``x_i``
    (``p̂ ≈ p_i``), ``α_a`` is near-uniform and large while ``α_b[y_j]`` is small, so ``λ̂`` moves
    *towards the partner* (``K = N = 100``, ``λ = 0.5``, ``p̂ = 0.85 t_i + 0.15 t_j`` and one-hot
    sources give ``λ̂ ≈ 0.012``). Early in training (near-uniform softmax) ``λ̂ ≈ λ``. The strength
    grows with the batch size (the code's ``N``; 100 in its CIFAR and Tiny-ImageNet configs):
    ``semantic_scale`` fixes it instead.

    Beyond the code (which takes one λ per batch and class indices): with ``lam_mode="sample"`` the
    mean runs over the samples' own ``λ̂``; soft labels use ``-log Σ_k t_k e^{-α_k}`` for ``α[y]``.

    Cost: a second forward and backward (the clean batch, with gradient), as in the code.
    Qin, Jin, Zhu, Liao, El-Yacoubi and Gao, ECCV 2024, arXiv 2407.07805.

    Args:
        base: ``"cutmix"``, ``"fmix"``, ``"resizemix"`` or ``"saliencymix"``. Unless ``alpha`` (or ``lam``)
            is given, α is the authors' for that base (:data:`SUMIX_ALPHAS`: 0.2, and 1.0 for ResizeMix).
        base_options: the base's own options (e.g. ``{"scale": (0.1, 0.8)}`` for ResizeMix).
        model: the model, to pick ``layer`` (its last stage), the feature width and the number of
            classes and build the uncertainty head; without it :class:`MixContext` does so (:meth:`bind_model`).
        layer: the module whose output is the penultimate representation (default ``model.stages[-1]``);
            ``(N, C, *spatial)`` outputs are averaged over space.
        feature_dim: width of the pooled features (default: inferred from the model).
        gamma: γ, the weight of the uncertainty regulariser (default 0.5, the authors' CIFAR-100
            configs; they use 1.0 on Tiny-ImageNet).
        semantic_scale: the factor of ``α``; ``None`` (default) uses the batch size, as the code does.
        lam_pairing: ``"batch_mean"`` (default, the code's loss) or ``"per_sample"`` (each mixed sample
            labelled with its own ``λ̂``; not what the published numbers were trained with).
        lr_scale: learning-rate multiplier of the uncertainty head (default 1: in the code it is
            part of the classifier's head, trained with the model).
        **kwargs: the mixer arguments (``alpha``, ``lam_mode``, ``p``, ``num_classes``, ``seed``, ...),
            passed to the base; ``p`` defaults to 1 whatever the base's own default (the code always
            mixes); ``seed`` also seeds the uncertainty head's initial weights.

    Example:
        >>> import torch
        >>> from mixlab.models import create_model
        >>> net = create_model("cnn_small", 10, input_size=16)
        >>> mixer = SUMix(model=net, alpha=1.0, seed=0)
        >>> x, y = torch.randn(4, 1, 16, 16), torch.arange(4)
        >>> mb = mixer(x, y, generator=torch.Generator().manual_seed(0))
        >>> logits = mb.forward(net)  # the clean and the mixed pass; sets mb.lam to the corrected ratio
        >>> sorted(mixer.loss_terms(mb, logits)), mixer.layer, bool((mb.lam == mb.lam[0]).all())
        (['sumix_uncertainty'], 'fc', True)
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
        gamma: float = 0.5,
        semantic_scale: float | None = None,
        lam_pairing: str = "batch_mean",
        lr_scale: float = 1.0,
        **kwargs: Any,
    ):
        if isinstance(base, str) and not {"alpha", "lam", "lam_range"} & set(kwargs):
            kwargs["alpha"] = SUMIX_ALPHAS.get(base)
        super().__init__(**kwargs)
        # the authors' code mixes every batch (no probability): the base gets SUMix's p (default 1), not its own
        self.base = build_base_mixer(self.name, base, SUMIX_BASES, base_options, {**kwargs, "p": self.p})
        self.lam_sampler = self.base.lam_sampler  # the one the draws use
        self.gamma = check_non_negative("gamma", gamma)
        self.semantic_scale = None if semantic_scale is None else check_positive("semantic_scale", semantic_scale)
        self.lam_pairing = check_choice("sumix lam_pairing", lam_pairing, LAM_PAIRINGS)
        self.lr_scale = check_non_negative("lr_scale", lr_scale)
        if layer is not None and not isinstance(layer, str):
            raise MixlabTypeError(f"sumix: layer must be a module name (str) or None; got {layer!r}")
        self.layer: str | None = layer
        self.feature_dim = None if feature_dim is None else check_int("feature_dim", feature_dim, minimum=1)
        if self.num_classes is not None and self.num_classes < 2:
            raise MixlabValueError(f"sumix mixes class labels and needs num_classes >= 2; got {self.num_classes}")
        self.head: UncertaintyHead | None = None
        if model is not None:
            self.bind_model(model)
        elif layer is not None and self.feature_dim is not None and self.num_classes is not None:
            self.head = self._new_head()

    def _new_head(self) -> UncertaintyHead:
        assert self.feature_dim is not None and self.num_classes is not None
        seed = None if self.seed is None else derive_seed(self.seed, "sumix_uncertainty_head")
        return UncertaintyHead(self.feature_dim, self.num_classes, generator=new_generator(seed))

    def bind_model(self, model: nn.Module) -> None:
        """Take the layer (the model's last stage), feature width and class count from ``model``; build the head.

        Called with ``model=`` and by :class:`MixContext`; a head already built is kept.
        """
        module = _bare(model)
        self.layer = _pick_layer(module, self.layer)
        if self.head is not None:
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
        self.head = self._new_head()
        parameter = next(module.parameters(), None)
        if parameter is not None:
            self.head.to(parameter.device)

    # ------------------------------------------------------------ engine hooks

    @property
    def needs(self) -> MixerNeeds:
        """The model only: the clean pass runs inside ``mb.forward`` (with gradient, as in the code)."""
        return MixerNeeds(model=True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The uncertainty head's weight and bias (none before the model is known)."""
        return [] if self.head is None else list(self.head.parameters())

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """One group with the uncertainty head, at ``lr_scale`` times the run's learning rate."""
        params = self.trainable_parameters()
        return [{"params": params, "lr_scale": self.lr_scale}] if params else []

    def loss_terms(self, mb: MixedBatch, outputs: Tensor) -> dict[str, Tensor]:
        """``{"sumix_uncertainty": γ · regulariser}`` for a batch run through ``mb.forward``; else nothing."""
        state = mb.aux.get(self.name)
        if state is None or self.gamma == 0.0 or self.head is None:
            return {}
        clean, mixed = self.head(state["clean_features"]), self.head(state["mixed_features"])
        beta_a, beta_b = clean + mixed, clean[state["perm"]] + mixed
        regulariser = uncertainty_loss(
            state["alpha_a"], state["alpha_b"], beta_a, beta_b, state["target_a"], state["target_b"], state["prior"]
        )
        return {"sumix_uncertainty": self.gamma * regulariser}

    def to(self, device: torch.device | str) -> SUMix:
        """Move the uncertainty head to ``device``."""
        if self.head is not None:
            self.head.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The uncertainty head's weights (nothing before the model is known)."""
        if self.head is None:
            return {}
        return {"uncertainty_head": {key: value.detach().clone() for key, value in self.head.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the head saved by :meth:`state_dict`."""
        if not state and self.head is None:
            return
        if set(state) != {"uncertainty_head"}:
            raise MixlabValueError(f"sumix state must have the key 'uncertainty_head'; got keys {sorted(state)}")
        if self.head is None:
            raise MixlabValueError("sumix has no head yet: build it with model= (or bind_model(model)) before loading")
        self.head.load_state_dict(state["uncertainty_head"])

    # ------------------------------------------------------------ mixing

    def check(self, x: Tensor, y: Tensor) -> None:
        """As every mixer, and the targets must be class indices or soft labels ``(N, K)``."""
        super().check(x, y)
        if self.validate and y.is_floating_point() and (y.ndim != 2 or y.shape[1] != self.num_classes):
            raise MixlabValueError(
                f"sumix needs class indices (N,) or soft labels (N, {self.num_classes}); got y of shape {tuple(y.shape)}"
            )

    def _check_context(self, context: dict[str, Any]) -> None:
        if self.layer is None or self.head is None:
            raise MixlabValueError(
                "sumix does not know its model yet: pass model= to SUMix(...) or "
                "context=MixContext(mixer, model)(x, y) (mixlab.methods.context.MixContext)"
            )

    def apply(self, x: Tensor, y: Tensor, params: MixParams, *, context: dict[str, Any] | None = None) -> MixedBatch:
        """Mix as the base does; ``mb.forward(model)`` then runs the clean and mixed passes and sets ``mb.lam``."""
        clean = x.clone() if params.mixed and self.base.inplace else x  # in place, the base overwrites x
        mb = super().apply(x, y, params, context=context)
        if params.mixed:
            mb.forward_fn = _CleanThenMixed(self, mb, clean, mb.lam.float())
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

    def relabel(self, mb: MixedBatch, passes: dict[str, Tensor], prior: Tensor) -> Tensor:
        """Set ``mb.lam`` from the two passes' logits and keep in ``mb.aux["sumix"]`` what :meth:`loss_terms` needs.

        ``passes`` holds ``clean_logits``, ``mixed_logits``, ``clean_features`` and ``mixed_features``;
        ``prior`` is the base's ratio. Returns the per-sample corrected ratio ``λ̂``.
        """
        target_a, target_b = self.targets(mb.target_a), self.targets(mb.target_b)
        scale = float(mb.batch_size) if self.semantic_scale is None else self.semantic_scale
        with torch.no_grad():  # the semantics are the classifier's detached softmax
            source = passes["clean_logits"].detach().float().softmax(dim=1)
            mixed = passes["mixed_logits"].detach().float().softmax(dim=1)
            alpha_a = semantic_alpha(mixed, source, target_b, scale)
            alpha_b = semantic_alpha(mixed, source[mb.perm], target_a, scale)
            corrected = corrected_lambda(prior, own_class_alpha(alpha_a, target_a), own_class_alpha(alpha_b, target_b))
        mb.aux[self.name] = {
            "clean_features": passes["clean_features"],
            "mixed_features": passes["mixed_features"],
            "alpha_a": alpha_a,
            "alpha_b": alpha_b,
            "perm": mb.perm,
            "target_a": target_a,
            "target_b": target_b,
            "prior": prior,
            "corrected_lam": corrected,
        }
        lam = corrected.mean().expand_as(corrected).clone() if self.lam_pairing == "batch_mean" else corrected
        mb.lam = lam.clamp(0.0, 1.0)
        return corrected

    def __repr__(self) -> str:
        return (
            f"SUMix(base={self.base!r}, layer={self.layer!r}, gamma={self.gamma}, "
            f"semantic_scale={self.semantic_scale}, lam_pairing={self.lam_pairing!r})"
        )


class _CleanThenMixed:
    """Runs the model on the clean batch, then on the mixed one, keeping both passes' logits and pooled features."""

    def __init__(self, mixer: SUMix, batch: MixedBatch, clean: Tensor, prior: Tensor):
        self.mixer, self.batch, self.clean, self.prior = mixer, batch, clean, prior

    def __call__(self, model: nn.Module, inputs: Tensor) -> Any:
        layer = self.mixer.layer
        target = find_modules(_bare(model), [layer], what="feature layer")[layer]
        clean_logits, clean_features = _run_keeping(model, target, self.clean, layer)
        mixed_logits, mixed_features = _run_keeping(model, target, inputs, layer)
        passes = {
            "clean_logits": clean_logits,
            "mixed_logits": mixed_logits,
            "clean_features": clean_features,
            "mixed_features": mixed_features,
        }
        self.mixer.relabel(self.batch, passes, self.prior)
        return mixed_logits


def _run_keeping(model: nn.Module, target: nn.Module, inputs: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    """``model(inputs)`` and the pooled output of ``target`` (its first call) during that forward."""
    seen: list[Tensor] = []

    def keep_first(_module: nn.Module, _args: Any, output: Any) -> None:
        if not seen:
            seen.append(output)

    handle = target.register_forward_hook(keep_first)
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    if not seen:
        raise MixlabValueError(f"sumix: layer {layer!r} did not run during the forward pass")
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise MixlabValueError(f"sumix needs a classifier returning logits (N, K); got {logits!r:.80}")
    return logits, pooled(seen[0])


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


__all__ = [
    "LAM_PAIRINGS",
    "SUMIX_ALPHAS",
    "SUMIX_BASES",
    "SUMix",
    "UncertaintyHead",
    "corrected_lambda",
    "own_class_alpha",
    "pooled",
    "semantic_alpha",
    "uncertainty_loss",
]
