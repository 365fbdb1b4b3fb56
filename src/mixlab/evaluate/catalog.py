"""Every metric mixlab records or reports, declared once: its key, label, direction and number format.

The evaluation code computes the values (:func:`~mixlab.evaluate.classification_metrics`, the
robustness accuracies, the training loop's cost and regression errors); the bench's store keeps
them under these keys; the report takes its columns, headers, arrows and number formats from here
instead of restating them.

Example:
    >>> metric_info("ece").header
    'ECE (%) ↓'
    >>> metric_info("top1").format(0.87523, 0.0031)
    '87.52 ± 0.31'
"""

from __future__ import annotations

from dataclasses import dataclass

from mixlab.errors import check_choice


@dataclass(frozen=True)
class MetricInfo:
    """What one metric is called, which way is better, and how its values print.

    ``higher_is_better`` is None for a quantity with no better direction (a fitted temperature,
    a count). ``percent`` metrics are fractions in [0, 1] shown x100 with the unit ``%``;
    ``decimals`` counts the decimals of the displayed value; ``unit`` (for the others) is shown
    in parentheses after the label.

    Example:
        >>> info = MetricInfo("wall_time_s", "wall time", False, decimals=1, unit="s")
        >>> info.header, info.format(1234.56, 7.0)
        ('wall time (s) ↓', '1,234.6 ± 7.0')
    """

    key: str
    label: str
    higher_is_better: bool | None
    percent: bool = False
    decimals: int = 3
    unit: str = ""
    description: str = ""

    @property
    def title(self) -> str:
        """The label with its unit in parentheses: ``top-1 (%)``, ``wall time (s)``, ``NLL``."""
        unit = "%" if self.percent else self.unit
        return f"{self.label} ({unit})" if unit else self.label

    @property
    def header(self) -> str:
        """The title and an arrow saying which way is better (none without a direction)."""
        if self.higher_is_better is None:
            return self.title
        return f"{self.title} {'↑' if self.higher_is_better else '↓'}"

    def scaled(self, value: float) -> float:
        """The value in display units (percent metrics x100).

        Example:
            >>> metric_info("top1").scaled(0.5), metric_info("nll").scaled(0.5)
            (50.0, 0.5)
        """
        return value * 100.0 if self.percent else value

    def format(self, mean: float, std: float | None = None) -> str:
        """``mean ± std`` in display units with thousands separators (just ``mean`` when ``std`` is None).

        Example:
            >>> metric_info("images_per_s").format(12345.6)
            '12,346'
        """
        text = self._number(self.scaled(mean))
        return text if std is None else f"{text} ± {self._number(self.scaled(std))}"

    def _number(self, value: float) -> str:
        return f"{value:,.{self.decimals}f}"


def _percent(key: str, label: str, higher_is_better: bool, description: str) -> MetricInfo:
    return MetricInfo(key, label, higher_is_better, percent=True, decimals=2, description=description)


_ALL = (
    # accuracy and calibration on the test split (mixlab.evaluate.metrics)
    _percent("top1", "top-1", True, "fraction of test samples whose most probable class is the label"),
    _percent("top5", "top-5", True, "fraction of test samples whose label is among the five most probable classes"),
    MetricInfo("nll", "NLL", False, description="mean negative log-likelihood of the label, in nats"),
    _percent("ece", "ECE", False, "expected calibration error: top-label confidence against accuracy, binned"),
    MetricInfo("brier", "Brier", False, description="squared error of the predicted distribution to the one-hot label"),
    _percent("ece_ts", "ECE after TS", False, "ECE after temperature scaling on the validation split"),
    MetricInfo("nll_ts", "NLL after TS", False, description="NLL after temperature scaling on the validation split"),
    MetricInfo("temperature", "temperature", None, description="softmax temperature fitted on the validation split"),
    # robustness (mixlab.evaluate.robustness)
    _percent("fgsm_acc", "FGSM acc.", True, "top-1 under a one-step FGSM attack of the configured radius"),
    _percent("noise_acc", "noise acc.", True, "top-1 on inputs with added Gaussian noise of the configured std"),
    # cost (the bench runner; step_ratio is derived by the report)
    MetricInfo(
        "step_ratio", "step time", False, decimals=2, unit="×ERM", description="ERM's images/s over the method's"
    ),
    MetricInfo("images_per_s", "train img/s", True, decimals=0, description="median training images/s over epochs"),
    MetricInfo("train_time_s", "train time", False, decimals=1, unit="s", description="training time, in seconds"),
    MetricInfo("wall_time_s", "wall time", False, decimals=1, unit="s", description="the whole run's time, in seconds"),
    # bookkeeping the store records with the metrics
    MetricInfo("epochs", "epochs", None, decimals=0, description="training epochs run"),
    MetricInfo("num_test", "test samples", None, decimals=0, description="number of test samples evaluated"),
    # regression (mixlab.engine.loop, mixlab.evaluate.predictions)
    MetricInfo("rmse", "RMSE", False, description="root mean squared error, in target units"),
    MetricInfo("mae", "MAE", False, description="mean absolute error, in target units"),
    MetricInfo("mse", "MSE", False, description="mean squared error, in squared target units"),
    # analyses of issue 13 (mixlab.evaluate.calibration, ood, corruptions, transfer, gap, geometry); keys with
    # a part after "/" (per OOD source, transfer target, corruption, λ bin) resolve to the part before it
    _percent("aece", "adaptive ECE", False, "ECE over equal-mass bins of top-label confidence (Nixon et al. 2019)"),
    _percent("cw_ece", "classwise ECE", False, "mean over classes of the ECE of each class's predicted probability"),
    _percent("mce", "MCE", False, "maximum calibration error: largest |accuracy - confidence| over non-empty bins"),
    _percent("aurc", "AURC", False, "area under the risk-coverage curve of selective prediction by max probability"),
    _percent("eaurc", "E-AURC", False, "AURC minus that of an oracle ranking the errors last (Geifman et al. 2019)"),
    _percent("ood_auroc_msp", "OOD AUROC MSP", True, "AUROC of in- vs out-of-distribution by max softmax probability"),
    _percent("ood_auroc_energy", "OOD AUROC energy", True, "AUROC of in- vs out-of-distribution by negative energy"),
    _percent("ood_fpr95_msp", "OOD FPR@95", False, "share of OOD samples accepted at the MSP threshold keeping 95% ID"),
    _percent(
        "corr_acc", "corruption acc.", True, "top-1 on corrupted test inputs, mean over corruptions and severities"
    ),
    _percent(
        "corr_mce", "mCE", False, "mean over corruptions of the error relative to the baseline's (Hendrycks 2019)"
    ),
    MetricInfo(
        "logme", "LogME", True, description="log marginal evidence of a linear model on the features, per sample"
    ),
    MetricInfo("hscore", "H-score", True, description="inter-class over total feature covariance (Bao et al. 2019)"),
    MetricInfo("leep", "LEEP", True, description="log expected empirical prediction of target labels (Nguyen 2020)"),
    _percent("probe_acc", "probe acc.", True, "test accuracy of a logistic-regression probe on the frozen features"),
    MetricInfo("mmd", "MMD²", None, decimals=4, description="unbiased RBF MMD² of mixed to real features in a λ bin"),
    MetricInfo("mmd_p", "MMD p", None, description="permutation p-value of the MMD² of mixed to real features"),
    MetricInfo(
        "mmd_mixed_real", "mixed-real MMD²", None, decimals=4, description="MMD² of mixed to real features, mean over λ"
    ),
    _percent("intrusion_rate", "intrusion", False, "share of mixed inputs predicted as neither mixed label (Guo 2019)"),
    MetricInfo("kid", "KID", None, decimals=4, description="kernel inception distance of mixed to real features"),
    MetricInfo("nc1", "NC1", None, description="within-class variability relative to between-class (Papyan 2020)"),
    MetricInfo("nc2_norm", "NC2 norm", None, description="coefficient of variation of the class-mean norms"),
    MetricInfo("nc2_angle", "NC2 angle", None, description="std over class pairs of the centred class-mean cosines"),
    MetricInfo("nc3", "NC3", None, description="distance between the normalised head weights and class means"),
    MetricInfo("nc4", "NC4", None, description="share of samples where the head and nearest class mean disagree"),
    MetricInfo(
        "hessian_trace", "Hessian trace", None, decimals=2, description="Hutchinson estimate of tr(H) of the loss"
    ),
    MetricInfo("sharpness_avg", "avg. sharpness", None, decimals=4, description="mean loss rise under relative noise"),
    MetricInfo("analysis_time_s", "analysis time", False, decimals=1, unit="s", description="an analysis's time, in s"),
)
#: every metric by key.
METRICS: dict[str, MetricInfo] = {info.key: info for info in _ALL}


def metric_info(key: str) -> MetricInfo:
    """The declaration of metric ``key``; an unknown key raises ``MixlabValueError`` listing the known ones.

    A key with parts after a ``/`` (one OOD source, transfer target, corruption, severity or λ bin of an
    analysis: ``ood_auroc_msp/digits``, ``corr_acc/fog/3``, ``mmd/lam_0.0_0.2``) is declared by the part
    before the first ``/``.

    Example:
        >>> metric_info("nll").higher_is_better
        False
        >>> metric_info("corr_acc/fog/3") is metric_info("corr_acc")
        True
        >>> metric_info("accuracy")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mixlab.errors.UnknownNameError: unknown metric 'accuracy'; known: aece, analysis_time_s, ...
    """
    base = key.partition("/")[0] if isinstance(key, str) and key not in METRICS else key
    if base in METRICS:
        return METRICS[base]
    return METRICS[check_choice("metric", key, METRICS)]
