"""Per-sample test predictions, kept compactly so that any two runs can be compared sample by sample.

A classifier's predictions are five columns per test sample: the true and the
predicted class, the log-probability of the true class (its negative is the
sample's NLL; stored as a log so that a confident mistake keeps its exact
loss), the top-label confidence and the sample's Brier term. A regressor's
are the squared and absolute errors, in the targets' units. Every metric the
benchmark reports from them (top-1, NLL, Brier, ECE; RMSE, MAE) is a function
of these columns, which is what makes the paired comparisons of
:mod:`mixlab.evaluate.paired` possible.

Example:
    >>> import torch
    >>> p = classification_predictions(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    >>> p.correct.tolist(), round(p.metric("top1"), 2)
    ([True, False], 0.5)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice
from mixlab.evaluate.metrics import check_logits_and_targets

#: the columns of each task, in order, with their stored dtypes.
COLUMNS: dict[str, dict[str, str]] = {
    "classification": {
        "target": "int32",
        "pred": "int32",
        "log_p_true": "float32",
        "confidence": "float32",
        "brier": "float32",
    },
    "regression": {"sq_error": "float32", "abs_error": "float32"},
}
#: the statistics each task's predictions give, each a function of the columns (see :meth:`SamplePredictions.metric`).
STATISTICS: dict[str, tuple[str, ...]] = {
    "classification": ("top1", "nll", "brier", "ece"),
    "regression": ("rmse", "mae", "mse"),
}
#: the confidence bins of the ECE, as :func:`mixlab.evaluate.classification_metrics` counts them.
ECE_BINS = 15
#: the version of the byte format written by :meth:`SamplePredictions.to_bytes`.
FORMAT = "mixlab-predictions-1"


@dataclass(frozen=True)
class SamplePredictions:
    """One run's per-sample test predictions: a task and its columns (numpy arrays of one length).

    Build them with :func:`classification_predictions` or
    :func:`regression_predictions`; store them with :meth:`to_bytes` and read
    them back with :meth:`from_bytes`.

    Example:
        >>> p = regression_predictions(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [3.0]]))
        >>> len(p), p.metric("rmse"), p.metric("mae")
        (2, 0.7071067811865476, 0.5)
    """

    task: str
    columns: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        check_choice("task", self.task, tuple(COLUMNS))
        expected = COLUMNS[self.task]
        if set(self.columns) != set(expected):
            raise MixlabValueError(
                f"{self.task} predictions need the columns {sorted(expected)}; got {sorted(self.columns)}"
            )
        lengths = {name: np.shape(column) for name, column in self.columns.items()}
        if len({shape for shape in lengths.values()}) != 1 or len(next(iter(lengths.values()))) != 1:
            raise MixlabValueError(f"prediction columns must be 1-D and of one length; got shapes {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def correct(self) -> np.ndarray:
        """Whether each sample's predicted class is its true class (classification only)."""
        self._require("classification", "correct")
        return self.columns["pred"] == self.columns["target"]

    def statistics(self) -> tuple[str, ...]:
        """The statistics :meth:`metric` computes for this task."""
        return STATISTICS[self.task]

    def metric(self, name: str) -> float:
        """One statistic over every sample (``top1``, ``nll``, ``brier``, ``ece``; ``rmse``, ``mae``, ``mse``).

        Equal, up to float32 storage, to what :func:`mixlab.evaluate.classification_metrics`
        reports for the same logits (the ECE with its 15 bins).

        Example:
            >>> p = classification_predictions(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1]))
            >>> round(p.metric("nll"), 4), round(p.metric("brier"), 4)
            (0.0486, 0.0045)
        """
        check_choice("statistic", name, self.statistics())
        weights = np.ones((1, len(self)))
        return float(statistic_values(self, name, weights)[0])

    def to_bytes(self) -> bytes:
        """A compressed byte string of the columns (``numpy.savez_compressed``), for the results store.

        Example:
            >>> p = classification_predictions(torch.randn(100, 10), torch.randint(0, 10, (100,)))
            >>> SamplePredictions.from_bytes(p.to_bytes()).columns["pred"].tolist() == p.columns["pred"].tolist()
            True
        """
        buffer = io.BytesIO()
        header = np.array([FORMAT, self.task])
        np.savez_compressed(buffer, _header=header, **self.columns)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SamplePredictions:
        """Read what :meth:`to_bytes` wrote; anything else raises naming what was found."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError) as error:
            raise MixlabValueError(f"stored predictions are not readable ({type(error).__name__}: {error})") from None
        header = arrays.pop("_header", None)
        if header is None or header.shape != (2,) or str(header[0]) != FORMAT:
            raise MixlabValueError(f"stored predictions have an unknown format {header!r}; expected {FORMAT!r}")
        return cls(str(header[1]), arrays)

    def _require(self, task: str, what: str) -> None:
        if self.task != task:
            raise MixlabValueError(f"{what} needs {task} predictions; these are {self.task} predictions")


def classification_predictions(logits: Tensor, targets: Tensor) -> SamplePredictions:
    """The per-sample columns of a classifier's test logits ``(N, K)`` and class indices ``(N,)``.

    Example:
        >>> p = classification_predictions(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        >>> p.columns["confidence"].tolist(), round(float(p.columns["log_p_true"][0]), 4)
        ([0.5], -0.6931)
    """
    logits, targets = check_logits_and_targets(logits, targets)
    log_probs = logits.double().log_softmax(dim=1)
    probs = log_probs.exp()
    log_p_true = log_probs.gather(1, targets[:, None]).squeeze(1)
    one_hot = torch.nn.functional.one_hot(targets, logits.shape[1])
    columns = {
        "target": targets,
        "pred": logits.argmax(dim=1),  # as classification_metrics counts top-1: the same choice among ties
        "log_p_true": log_p_true,
        "confidence": probs.max(dim=1).values,
        "brier": (probs - one_hot).square().sum(dim=1),
    }
    return _from_tensors("classification", columns)


def regression_predictions(outputs: Tensor, targets: Tensor) -> SamplePredictions:
    """The per-sample squared and absolute errors of a regressor (averaged over output dimensions).

    ``outputs`` and ``targets`` are in the targets' own units, ``(N,)`` or ``(N, D)``.

    Example:
        >>> regression_predictions(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])).columns["sq_error"].tolist()
        [4.0, 0.0]
    """
    if not isinstance(outputs, Tensor) or not isinstance(targets, Tensor):
        raise MixlabTypeError(
            f"outputs and targets must be torch.Tensors; got {type(outputs).__name__} and {type(targets).__name__}"
        )
    if outputs.shape != targets.shape or outputs.ndim not in (1, 2) or len(outputs) == 0:
        raise MixlabValueError(
            f"outputs and targets must share a shape (N,) or (N, D) with N >= 1; got {tuple(outputs.shape)} "
            f"and {tuple(targets.shape)}"
        )
    error = (outputs.detach().double() - targets.detach().to(outputs.device).double()).reshape(len(outputs), -1)
    if not bool(torch.isfinite(error).all()):
        raise MixlabValueError("regression outputs and targets must be finite")
    columns = {"sq_error": error.square().mean(dim=1), "abs_error": error.abs().mean(dim=1)}
    return _from_tensors("regression", columns)


def _from_tensors(task: str, columns: dict[str, Tensor]) -> SamplePredictions:
    dtypes = COLUMNS[task]
    return SamplePredictions(task, {name: columns[name].cpu().numpy().astype(dtypes[name]) for name in dtypes})


# ------------------------------------------------------------------ statistics under resampling weights


def statistic_values(predictions: SamplePredictions, name: str, weights: np.ndarray) -> np.ndarray:
    """One statistic under each row of ``weights`` ``(B, N)``: how many times each sample is drawn.

    A row of ones gives the statistic itself; a row of bootstrap counts gives its value
    on that resample. Every statistic is a weighted mean, or a function of
    weighted means (RMSE; the ECE's per-bin sums), so ``B`` resamples cost one
    matrix product.

    Example:
        >>> p = classification_predictions(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]))
        >>> statistic_values(p, "top1", np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 2.0]])).tolist()
        [0.5, 1.0, 0.0]
    """
    check_choice("statistic", name, predictions.statistics())
    columns = predictions.columns
    totals = weights.sum(axis=1)
    if name == "ece":
        return _ece_values(predictions, weights) / totals
    if name == "top1":
        values = predictions.correct.astype(np.float64)
    elif name == "nll":
        values = -columns["log_p_true"].astype(np.float64)
    elif name == "brier":
        values = columns["brier"].astype(np.float64)
    elif name in ("mse", "rmse"):
        values = columns["sq_error"].astype(np.float64)
    else:  # mae
        values = columns["abs_error"].astype(np.float64)
    means = weights @ values / totals
    return np.sqrt(means) if name == "rmse" else means


def _ece_values(predictions: SamplePredictions, weights: np.ndarray) -> np.ndarray:
    """Weighted sums of |Σ (confidence - correct)| over the confidence bins, per row of ``weights``."""
    gaps = predictions.columns["confidence"].astype(np.float64) - predictions.correct
    bins = confidence_bins(predictions.columns["confidence"])
    per_bin = np.zeros((len(gaps), ECE_BINS))
    per_bin[np.arange(len(gaps)), bins] = gaps
    return np.abs(weights @ per_bin).sum(axis=1)


def confidence_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """The equal-width bin of each top-label confidence, as :func:`mixlab.evaluate.reliability_bins` draws them.

    Example:
        >>> confidence_bins(np.array([0.5, 0.99, 1.0], dtype=np.float32), n_bins=2).tolist()
        [1, 1, 1]
    """
    capped = np.minimum(confidence.astype(np.float32), np.nextafter(np.float32(1), np.float32(0)))
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float32).numpy()
    return np.clip(np.searchsorted(edges, capped, side="right") - 1, 0, n_bins - 1)


def check_same_samples(a: SamplePredictions, b: SamplePredictions) -> None:
    """Refuse to pair predictions of different tasks, sizes or (for classifiers) test labels.

    Example:
        >>> p = classification_predictions(torch.zeros(3, 2), torch.tensor([0, 1, 1]))
        >>> check_same_samples(p, p)
    """
    if a.task != b.task:
        raise MixlabValueError(f"cannot pair {a.task} predictions with {b.task} predictions")
    if len(a) != len(b):
        raise MixlabValueError(f"cannot pair predictions on {len(a)} and {len(b)} test samples: not the same test set")
    if a.task == "classification" and not np.array_equal(a.columns["target"], b.columns["target"]):
        differ = int((a.columns["target"] != b.columns["target"]).sum())
        raise MixlabValueError(f"the two runs' test labels differ at {differ} of {len(a)} samples: not the same test set")


__all__ = [
    "COLUMNS",
    "ECE_BINS",
    "STATISTICS",
    "SamplePredictions",
    "check_same_samples",
    "classification_predictions",
    "confidence_bins",
    "regression_predictions",
    "statistic_values",
]
