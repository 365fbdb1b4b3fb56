"""Calibration and selective prediction beyond the top-label ECE: adaptive, classwise and maximum calibration error, AURC.

Every function takes logits ``(N, K)`` and class indices ``(N,)`` (checked by
:func:`mixlab.evaluate.metrics.check_logits_and_targets`) and returns plain
Python floats (fractions, not percent). The equal-width binning is the one of
:func:`mixlab.evaluate.metrics.reliability_bins`: bins ``[i/B, (i+1)/B)``,
the last one closed, so a confidence of exactly 1 lands in the last bin.

Papers:
    Nixon, Dusenberry, Zhang, Jerfel & Tran, "Measuring Calibration in Deep
    Learning", CVPR Workshops 2019, arXiv:1904.01685 (adaptive and classwise ECE).
    Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep
    Neural Classifiers", ICLR 2019, arXiv:1805.08206 (AURC, E-AURC).

Example:
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> list(calibration_metrics(logits, torch.tensor([0, 0, 0]), n_bins=2))
    ['aece', 'cw_ece', 'mce', 'aurc', 'eaurc']
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

from mixlab.errors import check_int
from mixlab.evaluate.metrics import BELOW_ONE, check_logits_and_targets

# The dict order is the order of the store keys in the analysis contract.
CALIBRATION_KEYS = ("aece", "cw_ece", "mce", "aurc", "eaurc")


def calibration_metrics(logits: Tensor, targets: Tensor, *, n_bins: int = 15) -> dict[str, float]:
    """Adaptive ECE, classwise ECE, MCE, AURC and E-AURC of ``logits`` in one call (keys ``CALIBRATION_KEYS``).

    See :func:`adaptive_ece`, :func:`classwise_ece`, :func:`max_calibration_error`,
    :func:`aurc` and :func:`eaurc` for the definitions and papers.

    Example:
        >>> m = calibration_metrics(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1]))
        >>> m["aurc"], m["eaurc"]
        (0.0, 0.0)
    """
    logits, targets = check_logits_and_targets(logits, targets)
    n_bins = check_int("n_bins", n_bins, minimum=1)
    probs = logits.double().softmax(dim=1)
    area, excess = _aurc_and_excess(logits, targets)
    return {
        "aece": _adaptive_ece(probs, targets, n_bins),
        "cw_ece": _classwise_ece(probs, targets, n_bins),
        "mce": _max_calibration_error(probs, targets, n_bins),
        "aurc": area,
        "eaurc": excess,
    }


def adaptive_ece(logits: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Adaptive (equal-mass) expected calibration error of the top-label confidence.

    Nixon et al., "Measuring Calibration in Deep Learning", CVPR Workshops 2019,
    arXiv:1904.01685 (their adaptive binning, applied to the top label as in the
    ECE). The samples sorted by confidence c_i = max_k softmax(z_i)_k are cut
    into ``n_bins`` bins of equal size (sample of rank r goes to bin
    floor(r * B / N), so sizes differ by at most one; samples of equal
    confidence may fall on both sides of a cut, in input order)::

        AECE = sum_b (|b| / N) * |acc(b) - conf(b)|

    with acc(b) the share of b whose argmax is the target and conf(b) its mean
    confidence. Bins left empty when N < B do not count.

    Example:
        >>> probs = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.9, 0.1]])
        >>> round(adaptive_ece(probs.log(), torch.tensor([0, 1, 0, 0]), n_bins=2), 6)  # |0.5-0.65|/2 + |1-0.85|/2
        0.15
    """
    logits, targets = check_logits_and_targets(logits, targets)
    n_bins = check_int("n_bins", n_bins, minimum=1)
    return _adaptive_ece(logits.double().softmax(dim=1), targets, n_bins)


def classwise_ece(logits: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Classwise ECE: for each class k, the ECE of p_k against the indicator [y = k], averaged over the K classes.

    Nixon et al., "Measuring Calibration in Deep Learning", CVPR Workshops 2019,
    arXiv:1904.01685 (their static calibration error, SCE)::

        CW-ECE = (1/K) sum_k sum_b (|b_k| / N) * |freq_k(b_k) - conf_k(b_k)|

    where b_k runs over ``n_bins`` equal-width bins of p_k = softmax(z)_k over
    all N samples, freq_k(b_k) is the share of b_k with target k and
    conf_k(b_k) the mean p_k in b_k.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
        >>> round(classwise_ece(probs.log(), torch.tensor([0, 1]), n_bins=2), 6)  # every bin off by 0.1 or 0.2
        0.15
    """
    logits, targets = check_logits_and_targets(logits, targets)
    n_bins = check_int("n_bins", n_bins, minimum=1)
    return _classwise_ece(logits.double().softmax(dim=1), targets, n_bins)


def max_calibration_error(logits: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Maximum calibration error: the largest |acc(b) - conf(b)| over the non-empty equal-width confidence bins.

    Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using
    Bayesian Binning", AAAI 2015 (defined there); as used in Guo et al., ICML
    2017, arXiv:1706.04599::

        MCE = max_{b : |b| > 0} |acc(b) - conf(b)|

    over the top-label confidence in ``n_bins`` bins ``[i/B, (i+1)/B)`` (last
    closed). Computed by torchmetrics' ``multiclass_calibration_error(norm="max")``
    (an empty bin contributes 0, which never exceeds the maximum) on confidences
    capped just below 1, as the ECE of :mod:`mixlab.evaluate.metrics` does.

    Example:
        >>> probs = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1]])
        >>> round(max_calibration_error(probs.log(), torch.tensor([0, 1, 1]), n_bins=2), 6)  # one bin: |1/3 - 0.7333|
        0.4
    """
    logits, targets = check_logits_and_targets(logits, targets)
    n_bins = check_int("n_bins", n_bins, minimum=1)
    return _max_calibration_error(logits.double().softmax(dim=1), targets, n_bins)


def risk_coverage_curve(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The risk-coverage curve of the maximum-softmax-probability (MSP) selector: ``(coverage, risk)``, float64 ``(N,)``.

    Geifman, Uziel & El-Yaniv, ICLR 2019, arXiv:1805.08206. The samples are
    ranked by decreasing MSP; at coverage i/N (i = 1..N) the selective risk is
    the 0-1 error (argmax != target) among the i most confident samples. Among
    samples of equal MSP the order is undefined, so the risk returned is its
    expectation over a uniformly random order within each tie (errors of a tie
    group spread evenly over its positions): the result does not depend on the
    order of the input.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
        >>> coverage, risk = risk_coverage_curve(logits, torch.tensor([0, 1, 0, 1]))
        >>> coverage.tolist(), [round(r, 4) for r in risk.tolist()]
        ([0.25, 0.5, 0.75, 1.0], [0.0, 0.5, 0.3333, 0.5])
    """
    logits, targets = check_logits_and_targets(logits, targets)
    risk = _selective_risk(logits, targets)
    n = risk.shape[0]
    coverage = torch.arange(1, n + 1, dtype=torch.float64, device=risk.device) / n
    return coverage, risk


def aurc(logits: Tensor, targets: Tensor) -> float:
    """Area under the risk-coverage curve of the MSP selector (lower is better).

    Geifman, Uziel & El-Yaniv, ICLR 2019, arXiv:1805.08206::

        AURC = (1/N) sum_{i=1..N} risk(i/N)

    with risk(i/N) the 0-1 error among the i samples of highest MSP (ties: see
    :func:`risk_coverage_curve`).

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
        >>> round(aurc(logits, torch.tensor([0, 1, 0, 1])), 6)  # (0 + 1/2 + 1/3 + 1/2) / 4
        0.333333
    """
    logits, targets = check_logits_and_targets(logits, targets)
    return float(_selective_risk(logits, targets).mean())


def eaurc(logits: Tensor, targets: Tensor) -> float:
    """Excess AURC: the AURC minus the AURC of the optimal ranking (every correct sample before every error).

    Geifman, Uziel & El-Yaniv, ICLR 2019, arXiv:1805.08206. The optimal AURC
    is computed exactly for the finite sample, not by the large-N limit
    r + (1 - r) ln(1 - r) (r the error rate): with N samples and E errors the
    optimal risk is 0 up to coverage (N - E)/N and (i - N + E)/i after, so::

        E-AURC = AURC - (1/N) sum_{i=N-E+1..N} (i - N + E) / i

    which is 0 (up to float rounding) for a ranking that puts every error
    last, and for only errors or only correct samples.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
        >>> round(eaurc(logits, torch.tensor([0, 1, 0, 1])), 6)  # 1/3 - (1/3 + 1/2) / 4
        0.125
    """
    logits, targets = check_logits_and_targets(logits, targets)
    return _aurc_and_excess(logits, targets)[1]


def _adaptive_ece(probs: Tensor, targets: Tensor, n_bins: int) -> float:
    confidence, prediction = probs.max(dim=1)
    order = confidence.argsort(stable=True)
    n = confidence.shape[0]
    rank = torch.arange(n, device=probs.device)
    bins = torch.empty_like(rank)
    bins[order] = rank * n_bins // n  # equal-mass bins over the sorted confidences
    return _weighted_gap(bins, confidence, (prediction == targets).double(), n_bins, n)


def _classwise_ece(probs: Tensor, targets: Tensor, n_bins: int) -> float:
    n, num_classes = probs.shape
    is_class = torch.nn.functional.one_hot(targets, num_classes).double()
    # one bin index per (sample, class), offset by class, so that all K classwise ECEs come from one bincount
    bins = _equal_width_bin(probs, n_bins) + n_bins * torch.arange(num_classes, device=probs.device)
    return _weighted_gap(bins.flatten(), probs.flatten(), is_class.flatten(), n_bins * num_classes, n) / num_classes


def _max_calibration_error(probs: Tensor, targets: Tensor, n_bins: int) -> float:
    # as the ECE does: a confidence of exactly 1 would go to a hidden extra bin of torchmetrics, not the last bin
    capped = probs.float().clamp(max=BELOW_ONE)
    error = multiclass_calibration_error(capped, targets, num_classes=probs.shape[1], n_bins=n_bins, norm="max")
    return float(error)


def _equal_width_bin(values: Tensor, n_bins: int) -> Tensor:
    """The index of the bin ``[i/B, (i+1)/B)`` (last one closed) holding each value in [0, 1]."""
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=values.dtype, device=values.device)
    return (torch.bucketize(values, edges, right=True) - 1).clamp(0, n_bins - 1)


def _weighted_gap(bins: Tensor, confidence: Tensor, outcome: Tensor, n_bins: int, n: int) -> float:
    """sum over bins of (count / n) * |mean outcome - mean confidence| = sum over bins of |sum outcome - sum conf| / n."""
    sum_confidence = torch.zeros(n_bins, dtype=torch.float64, device=bins.device).index_add_(0, bins, confidence)
    sum_outcome = torch.zeros(n_bins, dtype=torch.float64, device=bins.device).index_add_(0, bins, outcome)
    return float((sum_outcome - sum_confidence).abs().sum() / n)  # empty bins add |0 - 0|


def _selective_risk(logits: Tensor, targets: Tensor) -> Tensor:
    """Expected selective 0-1 risk at coverages 1/N..N/N, ranking by decreasing MSP, random order within ties."""
    msp = logits.double().softmax(dim=1).amax(dim=1)
    wrong = (logits.argmax(dim=1) != targets).double()
    msp, order = msp.sort(descending=True)
    _, group, counts = torch.unique_consecutive(msp, return_inverse=True, return_counts=True)
    errors_per_group = torch.zeros(counts.shape[0], dtype=torch.float64, device=msp.device)
    errors_per_group.index_add_(0, group, wrong[order])
    errors_before = errors_per_group.cumsum(0) - errors_per_group
    start = counts.cumsum(0) - counts  # position of each group's first sample
    position_in_group = torch.arange(msp.shape[0], device=msp.device) - start[group] + 1
    # expected errors among the first j samples of a tie group of size g holding e errors: e * j / g
    cumulative_errors = errors_before[group] + errors_per_group[group] * position_in_group / counts[group]
    return cumulative_errors / torch.arange(1, msp.shape[0] + 1, dtype=torch.float64, device=msp.device)


def _aurc_and_excess(logits: Tensor, targets: Tensor) -> tuple[float, float]:
    area = float(_selective_risk(logits, targets).mean())
    errors = int((logits.argmax(dim=1) != targets).sum())
    return area, area - _optimal_aurc(logits.shape[0], errors)


def _optimal_aurc(n: int, errors: int) -> float:
    """AURC of the ranking that puts all ``errors`` of ``n`` samples last: (1/n) sum_{i>n-E} (i - n + E) / i."""
    covered = torch.arange(n - errors + 1, n + 1, dtype=torch.float64)
    return float(((covered - n + errors) / covered).sum() / n)
