"""What a benchmark reports for a trained classifier beyond top-1: calibration and robustness.

Example:
    >>> import torch
    >>> from mixlab.evaluate import classification_metrics
    >>> classification_metrics(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))["top1"]
    1.0
"""

from mixlab.evaluate.catalog import METRICS, MetricInfo, metric_info
from mixlab.evaluate.evaluate import (
    EvalResult,
    EvalSettings,
    evaluate_checkpoint,
    evaluate_classifier,
    evaluate_regressor,
)
from mixlab.evaluate.metrics import (
    check_logits_and_targets,
    classification_metrics,
    fit_temperature,
    reliability_bins,
    temperature_scaled_metrics,
)
from mixlab.evaluate.robustness import fgsm_accuracy, noise_accuracy, predict_logits

__all__ = [
    "METRICS",
    "EvalResult",
    "EvalSettings",
    "MetricInfo",
    "check_logits_and_targets",
    "classification_metrics",
    "evaluate_checkpoint",
    "evaluate_classifier",
    "evaluate_regressor",
    "fgsm_accuracy",
    "fit_temperature",
    "metric_info",
    "noise_accuracy",
    "predict_logits",
    "reliability_bins",
    "temperature_scaled_metrics",
]
