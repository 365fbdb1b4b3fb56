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
)
#: every metric by key.
METRICS: dict[str, MetricInfo] = {info.key: info for info in _ALL}


def metric_info(key: str) -> MetricInfo:
    """The declaration of metric ``key``; an unknown key raises ``MixlabValueError`` listing the known ones.

    Example:
        >>> metric_info("nll").higher_is_better
        False
        >>> metric_info("accuracy")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mixlab.errors.UnknownNameError: unknown metric 'accuracy'; known: brier, ece, ...
    """
    return METRICS[check_choice("metric", key, METRICS)]
