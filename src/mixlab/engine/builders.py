"""Turn validated config sections into objects: mixer, schedule, objective, optimiser, learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mixlab import losses, schedules
from mixlab.batch import MixedBatch
from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice
from mixlab.methods import Mixer, accepted_params, create_mixer

if TYPE_CHECKING:
    from mixlab.engine.config import MixConfig, OptimConfig, ScheduleConfig

SCHEDULE_TYPES: dict[str, type[schedules.Schedule]] = {
    "always": schedules.Always,
    "probability": schedules.Probability,
    "warmup": schedules.WarmUp,
    "stop_after": schedules.StopAfter,
    "alternate": schedules.Alternate,
    "ramp": schedules.Ramp,
}


def build_mixer(
    mix: MixConfig, model: nn.Module | None, *, seed: int | None = None, input_std: Sequence[float] | None = None
) -> Mixer | None:
    """The configured mixer (``None`` for ``method: none``).

    Manifold Mixup without ``layers`` mixes at the model's
    ``default_manifold_layers``. ``input_std``, the per-channel scale the engine
    divides inputs by, goes to mixers that compare pixel values (PuzzleMix's local
    statistics) unless the options set it. Unknown options raise, listing the accepted ones.

    Example:
        >>> from mixlab.engine.config import MixConfig
        >>> type(build_mixer(MixConfig(method="mixup", options={"alpha": 0.2}), None)).__name__
        'Mixup'
    """
    if mix.method == "none":
        return None
    options = dict(mix.options)
    if mix.method == "manifold_mixup" and "layers" not in options and model is not None:
        options["layers"] = list(getattr(model, "default_manifold_layers", ("input",)))
    if model is not None and "model" in accepted_params(mix.method):
        options.setdefault("model", model)  # model-aware mixers check their layers against it at once
    if seed is not None and "seed" not in options:
        options["seed"] = seed
    if input_std is not None and "input_std" in accepted_params(mix.method):
        options.setdefault("input_std", [float(v) for v in input_std])
    return create_mixer(mix.method, **options)


def build_schedule(parts: Iterable[ScheduleConfig]) -> schedules.Schedule:
    """One schedule from a list of ``{kind, options}`` (all must be active).

    Example:
        >>> from mixlab.engine.config import ScheduleConfig
        >>> build_schedule([ScheduleConfig(kind="stop_after", options={"epochs": 2})]).active(0, 3)
        False
    """
    built = []
    for part in parts:
        try:
            built.append(SCHEDULE_TYPES[part.kind](**part.options))
        except TypeError as err:  # unknown or missing keyword
            raise MixlabTypeError(f"schedule {part.kind!r}: {err}") from None
    if not built:
        return schedules.Always()
    return built[0] if len(built) == 1 else schedules.All(*built)


# ------------------------------------------------------------------ objectives

Objective = Callable[[nn.Module, Tensor, Tensor, MixedBatch], tuple[Tensor, Tensor]]


def build_objective(mix: MixConfig, task: str) -> Objective:
    """``objective(model, x, y, mb) -> (loss, outputs on the mixed batch)`` for the configured loss.

    RegMixup and RankMixup also need the clean batch: for mixers that mix the
    input, clean and mixed batches go through the model together in one forward.

    Example:
        >>> from mixlab.engine.config import MixConfig
        >>> net, x, y = nn.Linear(3, 2), torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
        >>> loss, out = build_objective(MixConfig(), "classification")(net, x, y, MixedBatch.unmixed(x, y))
        >>> out.shape
        torch.Size([4, 2])
    """
    options, smoothing = dict(mix.loss_options), mix.smoothing
    if task == "regression" and mix.loss != "mse":
        raise MixlabValueError(f"a regression dataset needs mix.loss: mse; got {mix.loss!r}")
    if task == "classification" and mix.loss == "mse":
        raise MixlabValueError("mix.loss: mse is for regression; use ce (or bce) for classification")
    check_loss_options(mix.loss, options)

    def single(loss_fn: Callable[..., Tensor]) -> Objective:
        def objective(model: nn.Module, x: Tensor, y: Tensor, mb: MixedBatch) -> tuple[Tensor, Tensor]:
            outputs = mb.forward(model)
            return loss_fn(outputs, mb), outputs

        return objective

    def with_clean(loss_fn: Callable[..., Tensor], *, one_pass: bool) -> Objective:
        # one_pass: clean and mixed through the model together (RegMixup's code concatenates them); RankMixup's
        # code runs two forward passes, so each keeps its own BatchNorm batch statistics.
        def objective(model: nn.Module, x: Tensor, y: Tensor, mb: MixedBatch) -> tuple[Tensor, Tensor]:
            if one_pass and mb.forward_fn is None:
                clean, mixed = model(torch.cat([x, mb.inputs])).split(x.shape[0])
            else:
                clean, mixed = model(x), mb.forward(model)
            return loss_fn(clean, mixed, y, mb), mixed

        return objective

    if mix.loss == "ce":
        return single(lambda out, mb: losses.mixed_cross_entropy(out, mb, smoothing=smoothing))
    if mix.loss == "bce":
        return single(lambda out, mb: losses.mixed_bce(out, mb, smoothing=smoothing, **options))
    if mix.loss == "bce_softmax":
        return single(lambda out, mb: losses.bce_softmax(out, mb, smoothing=smoothing))
    if mix.loss == "decoupled":
        return single(lambda out, mb: losses.decoupled_mixup_loss(out, mb, smoothing=smoothing, **options))
    if mix.loss == "regmixup":
        return with_clean(
            lambda c, m, y, mb: losses.regmixup_loss(c, m, y, mb, smoothing=smoothing, **options), one_pass=True
        )
    if mix.loss == "rankmixup":
        return with_clean(
            lambda c, m, y, mb: losses.rankmixup_loss(c, m, y, mb, smoothing=smoothing, **options), one_pass=False
        )
    return single(_mse)


def _mse(outputs: Tensor, mb: MixedBatch) -> Tensor:
    target = mb.mixed_target().to(outputs.dtype)
    return nn.functional.mse_loss(outputs.reshape(target.shape), target)


_LOSS_OPTIONS = {
    "ce": (),
    "mse": (),
    "bce": ("target_threshold", "class_reduction"),
    "bce_softmax": (),
    "decoupled": ("eta", "lam_power", "classes"),
    "regmixup": ("eta", "scaling"),
    "rankmixup": ("mode", "eta", "margin", "score"),
}


#: loss options that take one of a few names.
_LOSS_CHOICES = {
    ("regmixup", "scaling"): losses.REGMIXUP_SCALINGS,
    ("decoupled", "classes"): losses.DECOUPLED_CLASSES,
    ("bce", "class_reduction"): losses.BCE_CLASS_REDUCTIONS,
    ("rankmixup", "score"): losses.RANK_SCORES,
}

#: losses defined for two mixed sources only (they read target_a, target_b and lam).
TWO_SOURCE_LOSSES = ("decoupled", "rankmixup")


def check_loss_options(loss: str, options: dict[str, Any], mixer: Mixer | None = None) -> None:
    """Refuse options the loss does not take (listing those it does), values it cannot use, and mixers it cannot score.

    A mixer that draws each output from more than two inputs (``num_sources > 2``,
    e.g. Co-Mixup, AdAutoMix with three sources) is refused with a loss defined for
    two sources only.

    Example:
        >>> check_loss_options("decoupled", {"eta": 0.2})
    """
    unknown = sorted(set(options) - set(_LOSS_OPTIONS[loss]))
    if unknown:
        accepted = ", ".join(_LOSS_OPTIONS[loss]) or "none"
        raise MixlabTypeError(f"mix.loss_options for {loss!r}: unknown {', '.join(unknown)}; accepted: {accepted}")
    if loss == "rankmixup" and options.get("mode", "mrl") != "mrl":
        # M-NDCG ranks several mixed batches per clean one; the loop mixes each batch once
        raise MixlabValueError(f"the engine trains RankMixup in mode 'mrl'; got mode={options['mode']!r}")
    for option, value in options.items():
        if (loss, option) in _LOSS_CHOICES:
            check_choice(f"mix.loss_options.{option} for {loss!r}", value, _LOSS_CHOICES[loss, option])
    sources = getattr(mixer, "num_sources", 2)
    if loss in TWO_SOURCE_LOSSES and sources > 2:
        raise MixlabValueError(
            f"mix.loss {loss!r} is defined for two mixed sources; {mixer.name} mixes {sources} inputs per sample. "
            "Use ce, bce or bce_softmax"
        )


# ------------------------------------------------------------------ optimisation


def build_optimizer(
    params: Iterable[nn.Parameter], optim: OptimConfig, extra_groups: Iterable[dict[str, Any]] = ()
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW; weight decay skips biases and norm weights (1-D parameters).

    ``extra_groups`` are a mixer's :meth:`~mixlab.methods.base.Mixer.optimizer_groups`:
    their ``lr_scale`` multiplies the learning rate, their ``weight_decay``
    (default: the run's, still skipping 1-D parameters) overrides it.

    Example:
        >>> from mixlab.engine.config import OptimConfig
        >>> type(build_optimizer(nn.Linear(2, 2).parameters(), OptimConfig(name="adamw", lr=1e-3))).__name__
        'AdamW'
    """
    groups = _decay_groups(params, optim.weight_decay, optim.lr)
    for extra in extra_groups:
        unknown = sorted(set(extra) - {"params", "lr_scale", "weight_decay"})
        if unknown:
            raise MixlabValueError(f"a mixer's optimizer group has unknown keys {unknown}; accepted: lr_scale, weight_decay")
        lr = optim.lr * float(extra.get("lr_scale", 1.0))
        groups += _decay_groups(extra["params"], float(extra.get("weight_decay", optim.weight_decay)), lr)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)


def _decay_groups(params: Iterable[nn.Parameter], weight_decay: float, lr: float) -> list[dict[str, Any]]:
    """Weight-decayed (>1-D) and undecayed (1-D: biases, norms) groups of the trainable ``params``."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lr": lr},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr": lr},
    ]
    return [g for g in groups if g["params"]]


def lr_factor(optim: OptimConfig, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each optimiser step: linear warm-up, then cosine/step/linear/constant.

    Example:
        >>> from mixlab.engine.config import OptimConfig
        >>> f = lr_factor(OptimConfig(lr_schedule="linear", warmup_epochs=1), steps_per_epoch=10, epochs=3)
        >>> [round(f(s), 2) for s in (0, 9, 10, 20, 29)]
        [0.1, 1.0, 1.0, 0.5, 0.05]
    """
    total = max(steps_per_epoch * epochs, 1)
    warmup = round(optim.warmup_epochs * steps_per_epoch)
    floor = optim.min_lr / optim.lr
    milestones = sorted(m * steps_per_epoch for m in optim.milestones)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if optim.lr_schedule == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if optim.lr_schedule == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        if optim.lr_schedule == "step":
            return optim.gamma ** sum(step >= m for m in milestones)
        return 1.0

    return factor
