"""What the results store hands to reports: one :class:`RunRecord` per run of a suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mixlab.evaluate.predictions import SamplePredictions

#: the method label that stands for training without mixing; step-time ratios are taken against it.
BASELINE_METHOD = "erm"


@dataclass
class RunRecord:
    """One run of a suite as stored: identity, resolved config, status, per-epoch and final metrics.

    ``final`` holds the evaluation metrics (``top1``, ``nll``, ``ece``, ...) and the run's cost
    (``wall_time_s``, ``images_per_s``); ``epochs`` the per-epoch training records in order;
    ``reliability`` the test split's reliability-diagram bins (see
    :func:`mixlab.evaluate.reliability_bins`), or ``None``; ``artifacts`` every stored artifact
    of the run by name, JSON-decoded (``reliability`` among them; the analyses' ``ood_roc`` and
    ``gap_curve``), empty for a run stored without any; ``predictions`` the
    per-sample test predictions when the store was asked for them
    (``ResultStore.records(with_predictions=True)``) and holds them.

    Example:
        >>> record = RunRecord("quick", 1, "fashion_mnist/cnn_small/mixup/seed0", "fashion_mnist", "cnn_small", "mixup", 0)
        >>> record.finished
        False
    """

    suite: str
    run_id: int
    key: str
    dataset: str
    model: str
    method: str
    seed: int
    status: str = "pending"
    config: dict[str, Any] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    reliability: dict[str, list[float]] | None = None
    started: str | None = None
    ended: str | None = None
    error: str | None = None
    predictions: SamplePredictions | None = field(default=None, repr=False)
    artifacts: dict[str, Any] = field(default_factory=dict, repr=False)  # last: positional callers keep working

    @property
    def finished(self) -> bool:
        """Whether the run completed and its metrics are final."""
        return self.status == "finished"
