"""What mixing does to a trained classifier beyond accuracy: the analyses a suite runs after training.

Each analysis is a function of :mod:`mixlab.evaluate` usable on any model and data; this module
runs the ones a suite selects (``evaluate: {analyses: [...]}``) on a finished run and returns
their numbers under the store keys, and what the report draws (curves) as artifacts:

============  =======================================================  ====================================
analysis      keys (``final_metrics``)                                 function
============  =======================================================  ====================================
calibration   ``aece``, ``cw_ece``, ``mce``, ``aurc``, ``eaurc``         :func:`~mixlab.evaluate.calibration.calibration_metrics`
ood           ``ood_auroc_msp``, ``ood_auroc_energy``,                 :func:`~mixlab.evaluate.ood.ood_metrics`
              ``ood_fpr95_msp`` (each also ``/<source>``)
corruptions   ``corr_acc``, ``corr_acc/<name>[/<severity>]``           :func:`~mixlab.evaluate.corruptions.corruption_accuracy`
transfer      ``logme``, ``hscore``, ``leep``, ``probe_acc``             :func:`~mixlab.evaluate.transfer.transfer_metrics`
              (each also ``/<target>``)
gap           ``mmd/lam_<lo>_<hi>``, ``mmd_p/...``, ``mmd_mixed_real``,  :func:`~mixlab.evaluate.gap.mixed_real_gap`
              ``intrusion_rate``, ``kid``
geometry      ``nc1``, ``nc2_norm``, ``nc2_angle``, ``nc3``, ``nc4``,     :func:`~mixlab.evaluate.geometry.geometry_metrics`
              ``hessian_trace``, ``sharpness_avg``
============  =======================================================  ====================================

The bare OOD and transfer keys are those of the first source listed. Each analysis also stores
its cost, ``analysis_time_s/<analysis>``. Data: calibration, OOD and corruptions use the test
split (corruptions a seeded subset of it); the gap and geometry use the training split (the data
the method mixed), without augmentation; OOD and transfer use the sources of
:mod:`mixlab.evaluate.sources`. The gap's mixer is the run's own, built again from its config with
the trained state loaded (a learned mixer's parameters), but without the training schedule (it mixes
every batch) and, for mixers that read an EMA model, with an EMA copy of the final weights; ERM is
measured with mixup pairs (λ ~ Beta(1, 1)).

Example:
    >>> from mixlab.engine.config import RunConfig
    >>> config = RunConfig.model_validate({"data": {"name": "digits"}, "model": {"name": "mlp"}})
    >>> check_analyses(config, EvalSettings(analyses=["corruptions"]), (64,))
    Traceback (most recent call last):
    ...
    mixlab.errors.MixlabValueError: analysis 'corruptions' needs images (C, H, W) or signals (C, L); \
the inputs of 'digits' have shape (64,)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mixlab.data import ArrayData, DataSplits
from mixlab.data.registry import get_spec
from mixlab.engine.builders import build_mixer
from mixlab.engine.config import MixConfig, RunConfig
from mixlab.engine.run import build_augment
from mixlab.errors import MixlabError, MixlabTypeError, MixlabValueError, check_choice
from mixlab.evaluate.calibration import calibration_metrics
from mixlab.evaluate.corruptions import corruption_accuracy, corruption_names
from mixlab.evaluate.gap import mixed_real_gap
from mixlab.evaluate.geometry import geometry_metrics
from mixlab.evaluate.ood import ood_curves, ood_metrics
from mixlab.evaluate.robustness import DeviceLike, Preprocess, predict_logits
from mixlab.evaluate.running import seeded_indices
from mixlab.evaluate.settings import ANALYSES, EvalSettings
from mixlab.evaluate.sources import check_source, default_sources, expected_input_shape, load_source
from mixlab.evaluate.transfer import extract_features, transfer_metrics

#: the mixer the gap is measured with for a run that does not mix (ERM): mixup pairs, λ ~ Beta(1, 1).
GAP_MIXER_FOR_ERM = MixConfig(method="mixup", options={"alpha": 1.0})


@dataclass
class AnalysisResult:
    """The numbers of :func:`analyse` under their store keys, and what the report draws, by artifact name.

    Example:
        >>> AnalysisResult({"aece": 0.02}).metrics
        {'aece': 0.02}
    """

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    #: analyses that failed (only with ``strict=False``): name -> the error's type and message.
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class _Run:
    """One trained run, as the analyses see it."""

    model: nn.Module
    splits: DataSplits
    config: RunConfig
    settings: EvalSettings
    preprocess: Preprocess
    device: DeviceLike
    mixer_state: dict[str, Any] | None
    test_logits: Tensor | None = None

    def logits(self) -> Tensor:
        """The test logits, computed once for every analysis that reads them."""
        if self.test_logits is None:
            self.test_logits = predict_logits(self.model, self.splits.test.x, **self.common)
        return self.test_logits

    @property
    def common(self) -> dict[str, Any]:
        return {"preprocess": self.preprocess, "batch_size": self.settings.batch_size, "device": self.device}


def sources_for(kind: str, config: RunConfig, settings: EvalSettings, input_shape: tuple[int, ...] | None) -> list[str]:
    """The OOD sources (``kind="ood"``) or transfer targets (``"transfer"``) a run uses: the suite's, or the defaults.

    Example:
        >>> from mixlab.engine.config import RunConfig
        >>> config = RunConfig.model_validate({"data": {"name": "fashion_mnist", "classes": [0, 1, 2]}})
        >>> sources_for("ood", config, EvalSettings(), (1, 28, 28))
        ['held_out_classes', 'digits']
    """
    check_choice("kind", kind, ("ood", "transfer"))
    named = getattr(settings, kind)
    return list(named) if named is not None else default_sources(config, input_shape)


def check_analyses(config: RunConfig, settings: EvalSettings, input_shape: tuple[int, ...] | None = None) -> None:
    """Raise :class:`~mixlab.errors.MixlabValueError` before any training if the analyses ``settings`` selects
    cannot run on ``config``'s data and model, naming what is missing.

    ``input_shape`` is one training sample's shape when the data has been read; ``None`` (before training)
    takes it from the dataset and its options (:func:`~mixlab.evaluate.sources.expected_input_shape`) and
    also checks what only the config can tell then: a regression task (or a CSV whose task is left to
    ``auto``) and an image folder not held in memory. Always refused: OOD or transfer without a usable
    source (held-out classes need one class left out for OOD, two for transfer); corruptions on tables or
    with unknown names.
    """
    if not settings.analyses:
        return
    if input_shape is None:
        _check_task_and_data(config, settings)
    shape = input_shape if input_shape is not None else expected_input_shape(config)
    for kind in ("ood", "transfer"):
        if kind in settings.analyses:
            _check_sources(kind, config, settings, shape)
    if "corruptions" in settings.analyses:
        _check_corruptions(config, settings, shape)


def refused_analyses(
    config: RunConfig, settings: EvalSettings, input_shape: tuple[int, ...] | None = None
) -> dict[str, str]:
    """Each analysis of ``settings.analyses`` that :func:`check_analyses` would refuse, with the reason
    (``{}``: all can run); used by ``mixlab eval --analysis all`` to run what can run.

    Example:
        >>> from mixlab.engine.config import RunConfig
        >>> config = RunConfig.model_validate({"data": {"name": "digits"}, "model": {"name": "mlp"}})
        >>> sorted(refused_analyses(config, EvalSettings(analyses=["calibration", "corruptions", "ood"]), (64,)))
        ['corruptions', 'ood']
    """
    refused = {}
    for name in settings.analyses:
        try:
            check_analyses(config, settings.model_copy(update={"analyses": [name]}), input_shape)
        except MixlabValueError as error:
            refused[name] = str(error)
    return refused


def analyse(
    model: nn.Module,
    splits: DataSplits,
    config: RunConfig,
    settings: EvalSettings,
    *,
    preprocess: Preprocess,
    device: DeviceLike = None,
    mixer_state: dict[str, Any] | None = None,
    test_logits: Tensor | None = None,
    strict: bool = True,
) -> AnalysisResult:
    """Run the analyses ``settings.analyses`` names on a trained run; see the module docstring for the keys.

    Args:
        model: the trained classifier (a mixlab backbone: ``features`` and ``head``).
        splits: the data it trained on (in-memory splits).
        config: its run config (the mixer and the data options come from it).
        preprocess: raw batch → model input (the run's eval preprocessing).
        mixer_state: the trained mixer's state (learned mixers), loaded into the gap's mixer.
        test_logits: the model's logits on ``splits.test`` when already computed (``EvalResult.logits``).
        strict: raise the first analysis error; with ``False`` a failed analysis is recorded in
            ``errors`` and the others still run (the bench keeps a trained run whatever an analysis does).

    Example:
        >>> from mixlab.engine.config import RunConfig
        >>> from mixlab.engine.run import build_model, load_run_data
        >>> config = RunConfig.model_validate({"data": {"name": "mnist1d"}, "model": {"name": "cnn1d"}})
        >>> splits = load_run_data(config)
        >>> model = build_model(config, splits)
        >>> result = analyse(model, splits, config, EvalSettings(analyses=["calibration"]), preprocess=lambda b: b)
        >>> sorted(result.metrics)
        ['aece', 'analysis_time_s/calibration', 'aurc', 'cw_ece', 'eaurc', 'mce']
    """
    try:
        _check_run(splits, config, settings, test_logits)
    except MixlabError as error:
        if strict:
            raise
        errors = {"analyses": f"{type(error).__name__}: {error}"}
        return AnalysisResult(errors=errors, artifacts={"analysis_errors": dict(errors)})
    run = _Run(model, splits, config, settings, preprocess, device, mixer_state, test_logits)
    result = AnalysisResult()
    for name in (a for a in ANALYSES if a in settings.analyses):
        started = time.perf_counter()
        try:
            metrics, artifacts = _ANALYSES[name](run)
        except Exception as error:
            if strict:
                raise
            result.errors[name] = f"{type(error).__name__}: {error}"
            continue
        result.metrics.update(metrics)
        result.artifacts.update(artifacts)
        result.metrics[f"analysis_time_s/{name}"] = time.perf_counter() - started
    if result.errors:
        result.artifacts["analysis_errors"] = dict(result.errors)
    return result


def _check_run(splits: DataSplits, config: RunConfig, settings: EvalSettings, test_logits: Tensor | None) -> None:
    """What :func:`analyse` checks before any analysis: settings, task, in-memory splits, sources, logits."""
    if not isinstance(settings, EvalSettings):
        raise MixlabTypeError(f"settings must be an EvalSettings; got {type(settings).__name__}")
    if splits.task != "classification":
        raise MixlabValueError(f"the analyses are for classifiers; {splits.name!r} is a {splits.task} task")
    check_analyses(config, settings, tuple(splits.input_shape))
    for name in ("train", "test"):
        if not isinstance(getattr(splits, name), ArrayData):
            raise MixlabTypeError(f"the analyses need in-memory splits; {name} is a {type(getattr(splits, name)).__name__}")
    if test_logits is not None and tuple(test_logits.shape[:1]) != (len(splits.test),):
        raise MixlabValueError(
            f"test_logits must have one row per test sample ({len(splits.test)}); got shape {tuple(test_logits.shape)}"
        )


# ------------------------------------------------------------------ the analyses

Outcome = tuple[dict[str, float], dict[str, Any]]


def _calibration(run: _Run) -> Outcome:
    return calibration_metrics(run.logits(), run.splits.test.y, n_bins=run.settings.n_bins), {}


def _ood(run: _Run) -> Outcome:
    metrics: dict[str, float] = {}
    curves: dict[str, Any] = {}
    for source in sources_for("ood", run.config, run.settings, tuple(run.splits.input_shape)):
        data = _load(run, source, run.settings.ood_samples)
        outside = predict_logits(run.model, data.x, **run.common)
        metrics.update(_keyed(ood_metrics(run.logits(), outside), source, first=not metrics))
        curves[source] = ood_curves(run.logits(), outside)
    return metrics, {"ood_roc": curves}


def _corruptions(run: _Run) -> Outcome:
    test = _subset(run.splits.test, run.settings.corruption_samples, run.settings.seed)
    metrics = corruption_accuracy(
        run.model, test.x, test.y, corruptions=run.settings.corruptions, seed=run.settings.seed, **run.common
    )
    return metrics, {}


def _transfer(run: _Run) -> Outcome:
    metrics: dict[str, float] = {}
    for target in sources_for("transfer", run.config, run.settings, tuple(run.splits.input_shape)):
        data = _load(run, target, run.settings.transfer_samples)
        features, source_probs = extract_features(run.model, data.x, **run.common)
        values = transfer_metrics(features, data.y, source_probs, seed=run.settings.seed)
        metrics.update(_keyed(values, target, first=not metrics))
    return metrics, {}


def _gap(run: _Run) -> Outcome:
    settings = run.settings
    gap = mixed_real_gap(
        run.model, _gap_mixer(run), run.splits.train.x, run.splits.train.y,
        n_bins=settings.gap_bins, samples=settings.gap_samples, n_permutations=settings.gap_permutations,
        seed=settings.seed, **{**run.common, "batch_size": settings.gap_batch_size},
    )  # fmt: skip
    return gap.metrics, {"gap_curve": gap.curve}


def _geometry(run: _Run) -> Outcome:
    settings = run.settings
    train = _subset(run.splits.train, settings.nc_samples, settings.seed)
    metrics = geometry_metrics(
        run.model, train.x, train.y, num_classes=run.splits.num_classes,
        hessian_samples=settings.hessian_samples, n_probes=settings.hessian_probes,
        sharpness_sigma=settings.sharpness_sigma, sharpness_draws=settings.sharpness_draws,
        seed=settings.seed, **run.common,
    )  # fmt: skip
    return metrics, {}


_ANALYSES: dict[str, Callable[[_Run], Outcome]] = {
    "calibration": _calibration,
    "ood": _ood,
    "corruptions": _corruptions,
    "transfer": _transfer,
    "gap": _gap,
    "geometry": _geometry,
}


# ------------------------------------------------------------------ helpers


def _gap_mixer(run: _Run) -> Any:
    """The run's own mixer (with its trained state, for learned mixers), on the model's device; mixup for ERM."""
    mix = run.config.mix if run.config.mix.method != "none" else GAP_MIXER_FOR_ERM
    std = build_augment(run.config, run.splits).std  # PuzzleMix compares pixels in the raw scale
    mixer = build_mixer(mix, run.model, seed=run.settings.seed, input_std=None if std is None else std.tolist())
    if run.mixer_state and run.config.mix.method != "none":
        mixer.load_state_dict(run.mixer_state)
    device = next(run.model.parameters()).device if run.device is None else torch.device(run.device)
    return mixer.to(device)


def _load(run: _Run, name: str, max_samples: int | None) -> Any:
    return load_source(
        name, run.config, tuple(run.splits.input_shape), max_samples=max_samples, seed=run.settings.seed
    )


def _subset(part: ArrayData, size: int | None, seed: int) -> ArrayData:
    """A seeded random subset of ``size`` samples (all when ``size`` is ``None`` or not smaller)."""
    keep = seeded_indices(len(part), size, seed)
    return part if keep is None else part.subset(keep.tolist())


def _keyed(values: dict[str, float], source: str, *, first: bool) -> dict[str, float]:
    """``key/source`` for each value, and the bare keys too for the first source."""
    out = {f"{key}/{source}": value for key, value in values.items()}
    if first:
        out.update(values)
    return out


def _check_sources(kind: str, config: RunConfig, settings: EvalSettings, input_shape: tuple[int, ...] | None) -> None:
    names = sources_for(kind, config, settings, input_shape)
    if not names:
        raise MixlabValueError(
            f"analysis {kind!r} needs a source and none is available by default for {config.data.name!r} "
            f"({_inputs_text(input_shape)}): set data.classes to hold classes out, or name one in evaluate.{kind}"
        )
    for name in names:
        try:
            check_source(name, config, input_shape, min_classes=2 if kind == "transfer" else 1)
        except MixlabValueError as error:
            raise MixlabValueError(f"evaluate.{kind}: {error}") from None


def _inputs_text(input_shape: tuple[int, ...] | None) -> str:
    return "tables" if input_shape is None else f"inputs {tuple(input_shape)}"


def _check_task_and_data(config: RunConfig, settings: EvalSettings) -> None:
    spec = get_spec(config.data.name)
    try:
        options = spec.resolve_options(config.data.options)
    except MixlabError as error:
        raise MixlabValueError(f"data.options: {error}") from None
    task = spec.task if spec.task != "auto" else options.get("task", "auto")
    if task != "classification":
        why = "a regression task" if task == "regression" else "a table whose task is decided from the data"
        raise MixlabValueError(
            f"analyses {settings.analyses} are for classifiers; {config.data.name!r} is {why}. "
            + ("Set data.options.task: classification" if task == "auto" else "Remove evaluate.analyses for it")
        )
    if config.data.name == "imagefolder" and options.get("in_memory") is not True:
        raise MixlabValueError(
            f"the analyses need the images in memory; data.options.in_memory is {options.get('in_memory')!r}: "
            "set it to true"
        )


def _check_corruptions(config: RunConfig, settings: EvalSettings, input_shape: tuple[int, ...] | None) -> None:
    if input_shape is None or len(input_shape) not in (2, 3):
        shown = "are tables" if input_shape is None else f"have shape {tuple(input_shape)}"
        raise MixlabValueError(
            f"analysis 'corruptions' needs images (C, H, W) or signals (C, L); the inputs of {config.data.name!r} "
            f"{shown}"
        )
    known = corruption_names((1, *input_shape))
    unknown = [name for name in settings.corruptions or () if name not in known]
    if unknown:
        raise MixlabValueError(
            f"evaluate.corruptions: {unknown} are not corruptions of {len(input_shape) - 1}-D inputs; "
            f"known: {', '.join(known)}"
        )
