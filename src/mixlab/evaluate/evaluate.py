"""Everything a benchmark reports for one trained classifier, from a model or from a run's checkpoint.

Example:
    >>> from mixlab.data import ArrayData
    >>> model = torch.nn.Linear(4, 3)
    >>> test = ArrayData(torch.randn(20, 4), torch.randint(0, 3, (20,)))
    >>> result = evaluate_classifier(model, test, preprocess=lambda b: b)
    >>> sorted(result.metrics)
    ['brier', 'ece', 'fgsm_acc', 'nll', 'noise_acc', 'num_test', 'top1']
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from mixlab.data import ArrayData
from mixlab.engine.checkpoint import CHECKPOINT, load_checkpoint
from mixlab.engine.config import RunConfig, format_validation_error
from mixlab.engine.distributed import resolve_device
from mixlab.engine.run import build_augment, build_model, load_run_data
from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate.analysis import analyse, check_analyses, refused_analyses
from mixlab.evaluate.metrics import (
    classification_metrics,
    fit_temperature,
    reliability_bins,
    temperature_scaled_metrics,
)
from mixlab.evaluate.predictions import SamplePredictions, classification_predictions, regression_predictions
from mixlab.evaluate.robustness import DeviceLike, Preprocess, fgsm_accuracy, noise_accuracy, predict_logits
from mixlab.evaluate.settings import EvalSettings


@dataclass
class EvalResult:
    """What :func:`evaluate_classifier` returns: scalar metrics, the test reliability diagram (both plain JSON)
    and the per-sample test predictions (:mod:`mixlab.evaluate.predictions`), for paired comparisons.

    Example:
        >>> EvalResult({"top1": 1.0}, {"count": [1]}).as_dict()
        {'metrics': {'top1': 1.0}, 'reliability': {'count': [1]}}
    """

    metrics: dict[str, float]
    reliability: dict[str, list[float]] | None
    predictions: SamplePredictions | None = field(default=None, repr=False)
    #: what the analyses draw besides numbers (OOD ROC curves, the gap against λ), by name; plain JSON.
    artifacts: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the test logits ``(N, K)`` (classifiers), so that analyses need not compute them again; not stored.
    logits: Tensor | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """``{"metrics": ..., "reliability": ...}``, ready for ``json.dumps`` (the per-sample predictions are left out)."""
        return {"metrics": dict(self.metrics), "reliability": self.reliability}


def evaluate_classifier(
    model: nn.Module,
    test: ArrayData,
    *,
    preprocess: Preprocess,
    val: ArrayData | None = None,
    settings: EvalSettings | None = None,
    device: DeviceLike = None,
) -> EvalResult:
    """Accuracy, calibration and robustness of ``model`` on ``test``.

    ``metrics`` holds :func:`~mixlab.evaluate.classification_metrics` of the
    test logits (``top1``, ``top5`` when K > 5, ``nll``, ``ece``, ``brier``),
    ``fgsm_acc`` and ``noise_acc`` (see :mod:`mixlab.evaluate.robustness`),
    ``num_test`` and, when ``val`` is given, ``temperature`` (fitted on the
    val logits) with the test ``ece_ts`` and ``nll_ts`` after scaling by it.

    Args:
        model: the classifier; test, val: splits with integer labels.
        preprocess: raw batch (or its float [0, 1] version) -> model input.
        settings: defaults to ``EvalSettings()``.
        device: where to run (the model is moved there); default: the model's device.

    Example:
        >>> from mixlab.data import ArrayData
        >>> part = ArrayData(torch.randn(30, 4), torch.randint(0, 3, (30,)))
        >>> result = evaluate_classifier(torch.nn.Linear(4, 3), part, val=part, preprocess=lambda b: b)
        >>> result.metrics["temperature"] > 0, sum(result.reliability["count"])
        (True, 30)
    """
    settings = _check_settings(settings)
    _check_split("test", test)
    if val is not None:
        _check_split("val", val)
    common = {"preprocess": preprocess, "batch_size": settings.batch_size, "device": device}
    logits = predict_logits(model, test.x, **common)
    metrics: dict[str, float] = classification_metrics(logits, test.y, n_bins=settings.n_bins)
    if val is not None:
        metrics.update(_temperature_metrics(model, val, logits, test.y, settings, common))
    metrics["fgsm_acc"] = fgsm_accuracy(model, test.x, test.y, eps=settings.fgsm_eps, **common)
    metrics["noise_acc"] = noise_accuracy(model, test.x, test.y, std=settings.noise_std, seed=settings.seed, **common)
    metrics["num_test"] = len(test)
    reliability = reliability_bins(logits, test.y, n_bins=settings.n_bins)
    return EvalResult(metrics, reliability, classification_predictions(logits, test.y), logits=logits)


def evaluate_regressor(
    model: nn.Module,
    test: ArrayData,
    *,
    preprocess: Preprocess,
    target_mean: float = 0.0,
    target_scale: float = 1.0,
    batch_size: int = 1000,
    device: DeviceLike = None,
) -> EvalResult:
    """Test RMSE, MAE and MSE of a regressor, in the targets' units, with its per-sample errors.

    The model predicts standardised targets (as the engine trains it):
    ``output * target_scale + target_mean`` is compared with ``test.y``.

    Example:
        >>> from mixlab.data import ArrayData
        >>> test = ArrayData(torch.zeros(4, 2), torch.full((4, 1), 3.0))
        >>> model = torch.nn.Linear(2, 1)
        >>> _ = torch.nn.init.zeros_(model.weight), torch.nn.init.ones_(model.bias)
        >>> result = evaluate_regressor(model, test, preprocess=lambda b: b, target_mean=1.0, target_scale=2.0)
        >>> result.metrics["rmse"], result.metrics["num_test"]
        (0.0, 4)
    """
    _check_split("test", test, regression=True)
    outputs = predict_logits(model, test.x, preprocess=preprocess, batch_size=batch_size, device=device)
    target = test.y.float()
    outputs = outputs.reshape(target.shape).double() * target_scale + target_mean
    predictions = regression_predictions(outputs, target.double())
    metrics = {name: predictions.metric(name) for name in predictions.statistics()}
    metrics["num_test"] = len(test)
    return EvalResult(metrics, None, predictions)


def evaluate_checkpoint(
    path: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    settings: EvalSettings | None = None,
    device: DeviceLike = None,
    skip_refused: bool = False,
) -> EvalResult:
    """:func:`evaluate_classifier` on the model of a training run, rebuilt from its checkpoint and config,
    and the analyses ``settings.analyses`` names (:func:`~mixlab.evaluate.analysis.analyse`).

    The run's data are read again as its config says (the same split seed, so
    the same val and test splits), with the run's eval-time preprocessing.

    Args:
        path: a run directory holding ``checkpoint.pt``, or a checkpoint file.
        data_root: where to look for the data first (replaces the run's ``data.root``).
        settings: defaults to ``EvalSettings()``.
        device: where to run; default ``auto`` (CUDA, else MPS, else CPU).
        skip_refused: run only the analyses that can run on this run; the others are listed, with the
            reason, in the result's ``analysis_skipped`` artifact (default: refuse them all with the reason).

    Example:
        >>> evaluate_checkpoint("no/such/run")
        Traceback (most recent call last):
        ...
        mixlab.errors.MixlabValueError: no run directory or checkpoint at 'no/such/run'
    """
    settings = _check_settings(settings)
    checkpoint = _checkpoint_file(path)
    state = load_checkpoint(checkpoint, map_location="cpu")
    config = _run_config(state, checkpoint, data_root)
    splits = load_run_data(config)
    if splits.task != "classification":
        raise MixlabValueError(
            f"{str(checkpoint)!r} is a {splits.task} run on {splits.name!r}; only classifiers can be evaluated"
        )
    model = build_model(config, splits)
    model.load_state_dict(state["model"])
    if config.train.channels_last == "on" or (config.train.channels_last == "auto" and len(splits.input_shape) == 3):
        model = model.to(memory_format=torch.channels_last)  # as the engine trained and evaluated it: faster on CPU
    skipped = refused_analyses(config, settings, tuple(splits.input_shape)) if skip_refused else {}
    settings = settings.model_copy(update={"analyses": [a for a in settings.analyses if a not in skipped]})
    check_analyses(config, settings, tuple(splits.input_shape))
    augment = build_augment(config, splits)
    common = {"preprocess": lambda x: augment(x, train=False), "device": _resolve(device)}
    result = evaluate_classifier(model, splits.test, val=splits.val, settings=settings, **common)
    if settings.analyses:
        analysis = analyse(
            model, splits, config, settings, mixer_state=state.get("mixer"), test_logits=result.logits, **common
        )
        result.metrics.update(analysis.metrics)
        result.artifacts.update(analysis.artifacts)
    if skipped:
        result.artifacts["analysis_skipped"] = skipped
    return result


# ------------------------------------------------------------------ helpers


def _temperature_metrics(
    model: nn.Module, val: ArrayData, test_logits: Tensor, test_y: Tensor, settings: EvalSettings, common: dict
) -> dict[str, float]:
    val_logits = predict_logits(model, val.x, **common)
    temperature = fit_temperature(val_logits, val.y)
    return temperature_scaled_metrics(test_logits, test_y, temperature, n_bins=settings.n_bins)


def _check_settings(settings: EvalSettings | None) -> EvalSettings:
    if settings is None:
        return EvalSettings()
    if not isinstance(settings, EvalSettings):
        raise MixlabTypeError(f"settings must be an EvalSettings; got {type(settings).__name__}")
    return settings


def _check_split(name: str, split: Any, *, regression: bool = False) -> None:
    if not isinstance(split, ArrayData):
        raise MixlabTypeError(
            f"{name} must be an ArrayData (tensors x, y); got {type(split).__name__}. "
            "Splits read lazily from image folders are not supported by the evaluation yet"
        )
    if regression:
        if not split.y.is_floating_point() or split.y.ndim not in (1, 2):
            raise MixlabValueError(
                f"{name}.y must hold float regression targets (N,) or (N, D); got dtype {split.y.dtype}, "
                f"shape {tuple(split.y.shape)}"
            )
        return
    if split.y.ndim != 1 or split.y.is_floating_point():
        raise MixlabValueError(
            f"{name}.y must hold class indices (N,); got dtype {split.y.dtype}, shape {tuple(split.y.shape)}"
        )


def _checkpoint_file(path: str | os.PathLike) -> Path:
    where = Path(path)
    if not where.exists():
        raise MixlabValueError(f"no run directory or checkpoint at {str(path)!r}")
    if where.is_dir():
        if not (where / CHECKPOINT).is_file():
            raise MixlabValueError(f"the directory {str(path)!r} holds no {CHECKPOINT}: it is not a training run")
        return where / CHECKPOINT
    return where


def _run_config(state: dict[str, Any], checkpoint: Path, data_root: str | os.PathLike | None) -> RunConfig:
    """The run's validated config, with ``data.root`` replaced when ``data_root`` is given."""
    if not isinstance(state.get("config"), dict):
        raise MixlabValueError(
            f"the checkpoint {str(checkpoint)!r} holds no run config, so its model and data cannot be rebuilt"
        )
    try:
        config = RunConfig.model_validate(state["config"])
    except ValidationError as err:
        where = f"the config saved in {str(checkpoint)!r}"
        raise MixlabValueError(format_validation_error(err, where)) from None
    if data_root is not None:
        config = config.model_copy(update={"data": config.data.model_copy(update={"root": str(data_root)})})
    return config


def _resolve(device: DeviceLike) -> torch.device:
    if device is None or device == "auto":
        return resolve_device("auto")
    return torch.device(device)
