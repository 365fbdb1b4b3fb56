"""Accuracy and calibration of a classifier's logits: top-k, NLL, ECE, Brier, reliability bins, temperature scaling.

Every function takes logits ``(N, K)`` and class indices ``(N,)`` and returns
plain Python numbers, so results go straight into JSON, SQLite or a report.

Example:
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> classification_metrics(logits, torch.tensor([0, 0]))["top1"]
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int, check_positive

#: the temperatures :func:`fit_temperature` searches between (log-symmetric around 1).
TEMPERATURE_RANGE = (1e-3, 1e3)

# The largest float32 below 1. torchmetrics (issue Lightning-AI/torchmetrics#3510) counts a confidence of
# exactly 1.0 in a hidden extra bin; capping it here puts it in the last real bin, as Guo et al. define,
# and changes the ECE by less than 1e-7.
BELOW_ONE = float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))


def classification_metrics(logits: Tensor, targets: Tensor, *, n_bins: int = 15) -> dict[str, float]:
    """Top-1 (and top-5 when K > 5) accuracy, mean NLL, top-label ECE and Brier score of ``logits``.

    The ECE is torchmetrics' top-label L1 calibration error over ``n_bins``
    equal-width confidence bins (Guo et al., "On Calibration of Modern Neural
    Networks", ICML 2017, arXiv:1706.04599); the Brier score is the mean over
    samples of the squared distance between the softmax and the one-hot label.

    Args:
        logits: float ``(N, K)``, K >= 2.
        targets: class indices ``(N,)`` in ``[0, K)``.
        n_bins: number of confidence bins of the ECE.

    Returns:
        ``top1``, ``top5`` (only when K > 5), ``nll``, ``ece``, ``brier``; accuracies are fractions.

    Example:
        >>> m = classification_metrics(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1]))
        >>> m["top1"], round(m["nll"], 4), round(m["brier"], 4)
        (1.0, 0.0486, 0.0045)
    """
    logits, targets = check_logits_and_targets(logits, targets)
    n_bins = check_int("n_bins", n_bins, minimum=1)
    probs = logits.double().softmax(dim=1)
    metrics = {"top1": _top_k_accuracy(logits, targets, 1)}
    if logits.shape[1] > 5:
        metrics["top5"] = _top_k_accuracy(logits, targets, 5)
    metrics["nll"] = float(F.cross_entropy(logits.double(), targets))
    metrics["ece"] = _expected_calibration_error(probs, targets, n_bins)
    metrics["brier"] = float((probs - F.one_hot(targets, logits.shape[1])).square().sum(dim=1).mean())
    return metrics


def reliability_bins(logits: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, list[float]]:
    """The reliability diagram of ``logits``: per equal-width confidence bin, its edges, mean confidence, accuracy and size.

    A sample falls in the bin ``[lower, upper)`` holding its top-label
    confidence (the last bin is closed). Empty bins report a confidence and
    accuracy of 0.0 (read them with ``count``), so the result is plain JSON.
    ``sum(count / N * |accuracy - confidence|)`` is the ECE of :func:`classification_metrics`.

    Args:
        logits: float ``(N, K)``, K >= 2.
        targets: class indices ``(N,)`` in ``[0, K)``.
        n_bins: number of bins.

    Returns:
        ``lower``, ``upper``, ``confidence``, ``accuracy`` (lists of floats) and ``count`` (list of ints).

    Example:
        >>> bins = reliability_bins(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), torch.tensor([1, 0]), n_bins=2)
        >>> bins["count"], bins["accuracy"]
        ([0, 2], [0.0, 0.5])
    """
    logits, targets = check_logits_and_targets(logits, targets)
    n_bins = check_int("n_bins", n_bins, minimum=1)
    confidence, correct = _top_label(logits.double().softmax(dim=1), targets)
    # the same binning as torchmetrics: float32 confidences against float32 edges, bins closed on the left
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float32, device=confidence.device)
    index = torch.bucketize(confidence, edges, right=True) - 1
    count = torch.bincount(index, minlength=n_bins)[:n_bins]
    sums = torch.zeros(2, n_bins, dtype=torch.float64, device=confidence.device)
    sums[0].index_add_(0, index, confidence.double())
    sums[1].index_add_(0, index, correct.double())
    means = sums / count.clamp_min(1)
    return {
        "lower": [i / n_bins for i in range(n_bins)],
        "upper": [(i + 1) / n_bins for i in range(n_bins)],
        "confidence": means[0].tolist(),
        "accuracy": means[1].tolist(),
        "count": count.tolist(),
    }


def fit_temperature(logits: Tensor, targets: Tensor, *, max_iter: int = 100) -> float:
    """The temperature T > 0 that minimises the NLL of ``softmax(logits / T)`` (temperature scaling).

    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
    arXiv:1706.04599. The NLL is convex in 1/T, hence unimodal in log T, so a
    golden-section search over log T in :data:`TEMPERATURE_RANGE` finds the
    minimum deterministically, for overconfident (T > 1) as for underconfident
    (T < 1) logits. Fit it on held-out logits, never on the test set.

    Args:
        logits: float ``(N, K)`` of a validation split.
        targets: class indices ``(N,)``.
        max_iter: golden-section steps (each shrinks the bracket by 0.618; 100 is far below float precision).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> true_logits = 2 * torch.randn(5000, 5, generator=g)  # a calibrated model's logits
        >>> targets = torch.multinomial(true_logits.softmax(1), 1, generator=g).squeeze(1)
        >>> round(fit_temperature(3 * true_logits, targets), 2)  # made overconfident by 3
        2.97
    """
    logits, targets = check_logits_and_targets(logits, targets)
    max_iter = check_int("max_iter", max_iter, minimum=1)
    logits = logits.double()
    if bool((logits == logits[:, :1]).all()):
        return 1.0  # every row uniform: the NLL does not depend on T

    def nll(log_temperature: float) -> float:
        return float(F.cross_entropy(logits * math.exp(-log_temperature), targets))

    best = _golden_section_minimum(nll, math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1]), max_iter)
    # a coarse search could stop where the NLL is above T=1; scaling must never make it worse
    at_bound = min(abs(best - bound) for bound in (math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])))
    # no interior optimum (e.g. a separable val split, whose NLL falls as T -> 0): scaling would be meaningless
    return math.exp(best) if nll(best) <= nll(0.0) and at_bound > 1e-3 else 1.0


def temperature_scaled_metrics(
    test_logits: Tensor, test_targets: Tensor, temperature: float, *, n_bins: int = 15
) -> dict[str, float]:
    """The test ECE and NLL after dividing ``test_logits`` by ``temperature`` (from :func:`fit_temperature`).

    Returns:
        ``ece_ts``, ``nll_ts`` and ``temperature``.

    Example:
        >>> logits, targets = torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 0])
        >>> m = temperature_scaled_metrics(logits, targets, 4.0)
        >>> round(m["nll_ts"], 4), m["temperature"]
        (0.8133, 4.0)
    """
    temperature = check_positive("temperature", temperature)
    test_logits, test_targets = check_logits_and_targets(test_logits, test_targets)
    scaled = classification_metrics(test_logits.double() / temperature, test_targets, n_bins=n_bins)
    return {"ece_ts": scaled["ece"], "nll_ts": scaled["nll"], "temperature": temperature}


def check_logits_and_targets(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(logits, targets)`` detached, targets as int64 on the logits' device, after checking them.

    Raises ``MixlabTypeError``/``MixlabValueError`` naming the shape, dtype or
    value seen unless logits are finite float ``(N, K)`` with N >= 1, K >= 2
    and targets are integer ``(N,)`` in ``[0, K)``.

    Example:
        >>> _, t = check_logits_and_targets(torch.zeros(2, 3), torch.tensor([0, 2], dtype=torch.int32))
        >>> t.dtype
        torch.int64
    """
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise MixlabTypeError(
            f"logits and targets must be torch.Tensors; got {type(logits).__name__} and {type(targets).__name__}"
        )
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise MixlabValueError(f"logits must have shape (N, K) with N >= 1 and K >= 2; got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise MixlabTypeError(f"logits must be a floating tensor; got dtype {logits.dtype}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise MixlabTypeError(f"targets must hold integer class indices; got dtype {targets.dtype}")
    if targets.shape != logits.shape[:1]:
        raise MixlabValueError(
            f"targets must have shape (N,) = ({logits.shape[0]},) to match logits {tuple(logits.shape)}; "
            f"got {tuple(targets.shape)}"
        )
    logits, targets = logits.detach(), targets.detach().to(device=logits.device, dtype=torch.long)
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= logits.shape[1]:
        raise MixlabValueError(
            f"targets must be class indices in [0, {logits.shape[1]}); got values from {low} to {high}"
        )
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).sum())
        raise MixlabValueError(f"logits must be finite; got {bad} NaN or infinite value(s)")
    return logits, targets


def _top_k_accuracy(logits: Tensor, targets: Tensor, k: int) -> float:
    if k == 1:  # argmax, as the training engine counts accuracy (the same choice among tied logits)
        return float((logits.argmax(dim=1) == targets).double().mean())
    hits = (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1)
    return float(hits.double().mean())


def _top_label(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """float32 top-label confidences (capped below 1) and whether the top label is right."""
    confidence, prediction = probs.float().clamp(max=BELOW_ONE).max(dim=1)
    return confidence, prediction == targets


def _expected_calibration_error(probs: Tensor, targets: Tensor, n_bins: int) -> float:
    # probabilities, not logits: torchmetrics would take logits that happen to lie in [0, 1] for probabilities
    capped = probs.float().clamp(max=BELOW_ONE)
    error = multiclass_calibration_error(capped, targets, num_classes=probs.shape[1], n_bins=n_bins, norm="l1")
    return float(error)


def _golden_section_minimum(function: Callable[[float], float], low: float, high: float, steps: int) -> float:
    """The argument of the minimum of a unimodal ``function`` on ``[low, high]``."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    f_left, f_right = function(left), function(right)
    for _ in range(steps):
        if f_left <= f_right:
            high, right, f_right = right, left, f_left
            left = high - ratio * (high - low)
            f_left = function(left)
        else:
            low, left, f_left = left, right, f_right
            right = low + ratio * (high - low)
            f_right = function(right)
        if high - low < 1e-12:
            break
    return (low + high) / 2.0
