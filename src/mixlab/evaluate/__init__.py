"""What a benchmark reports for a trained classifier beyond top-1: calibration and robustness, and the analyses
of what mixing does to a model (calibration beyond ECE, OOD detection, corruptions, transfer, the mixed-vs-real
gap, geometry; :mod:`mixlab.evaluate.analysis`).

Example:
    >>> import torch
    >>> from mixlab.evaluate import classification_metrics
    >>> classification_metrics(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))["top1"]
    1.0
"""

from mixlab.evaluate.analysis import AnalysisResult, analyse, check_analyses, refused_analyses
from mixlab.evaluate.calibration import (
    adaptive_ece,
    aurc,
    calibration_metrics,
    classwise_ece,
    eaurc,
    max_calibration_error,
    risk_coverage_curve,
)
from mixlab.evaluate.catalog import METRICS, MetricInfo, metric_info
from mixlab.evaluate.corruptions import corrupt, corruption_accuracy, corruption_names, mean_corruption_error
from mixlab.evaluate.evaluate import (
    EvalResult,
    EvalSettings,
    evaluate_checkpoint,
    evaluate_classifier,
    evaluate_regressor,
)
from mixlab.evaluate.gap import GapResult, intrusion_rate, kid, mixed_real_gap, mmd2_unbiased, mmd_test
from mixlab.evaluate.geometry import geometry_metrics, hessian_trace, neural_collapse, sharpness_avg
from mixlab.evaluate.metrics import (
    check_logits_and_targets,
    classification_metrics,
    fit_temperature,
    reliability_bins,
    temperature_scaled_metrics,
)
from mixlab.evaluate.ood import auroc, energy_score, fpr_at_tpr, msp_score, ood_metrics
from mixlab.evaluate.robustness import fgsm_accuracy, noise_accuracy, predict_logits
from mixlab.evaluate.settings import ANALYSES
from mixlab.evaluate.sources import SOURCES, load_source
from mixlab.evaluate.transfer import extract_features, hscore, leep, logme, probe_accuracy, transfer_metrics

__all__ = [
    "ANALYSES",
    "METRICS",
    "SOURCES",
    "AnalysisResult",
    "EvalResult",
    "EvalSettings",
    "GapResult",
    "MetricInfo",
    "adaptive_ece",
    "analyse",
    "aurc",
    "auroc",
    "calibration_metrics",
    "check_analyses",
    "check_logits_and_targets",
    "classification_metrics",
    "classwise_ece",
    "corrupt",
    "corruption_accuracy",
    "corruption_names",
    "eaurc",
    "energy_score",
    "evaluate_checkpoint",
    "evaluate_classifier",
    "evaluate_regressor",
    "extract_features",
    "fgsm_accuracy",
    "fit_temperature",
    "fpr_at_tpr",
    "geometry_metrics",
    "hessian_trace",
    "hscore",
    "intrusion_rate",
    "kid",
    "leep",
    "load_source",
    "logme",
    "max_calibration_error",
    "mean_corruption_error",
    "metric_info",
    "mixed_real_gap",
    "mmd2_unbiased",
    "mmd_test",
    "msp_score",
    "neural_collapse",
    "noise_accuracy",
    "ood_metrics",
    "predict_logits",
    "probe_accuracy",
    "refused_analyses",
    "reliability_bins",
    "risk_coverage_curve",
    "sharpness_avg",
    "temperature_scaled_metrics",
    "transfer_metrics",
]
