"""Out-of-distribution detection from a classifier's logits: MSP and energy scores, AUROC, FPR at 95 % TPR, ROC points.

In-distribution (ID) samples are the positive class and every score is
"higher = more in-distribution", so a detector flags a sample as OOD when its
score falls below a threshold. Results are plain Python floats (fractions).

Papers:
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples in Neural Networks", ICLR 2017,
    arXiv:1610.02136 (maximum softmax probability, AUROC).
    Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection",
    NeurIPS 2020, arXiv:2010.03759 (energy score, FPR at 95 % TPR).

Example:
    >>> in_logits = torch.tensor([[5.0, 0.0], [0.0, 4.0]])
    >>> out_logits = torch.tensor([[0.5, 0.0], [0.0, 0.2]])
    >>> ood_metrics(in_logits, out_logits)["ood_auroc_msp"]
    1.0
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mixlab.errors import MixlabError, MixlabTypeError, MixlabValueError, check_int, check_positive, check_probability
from mixlab.evaluate.metrics import check_logits_and_targets

# The dict order is the order of the store keys in the analysis contract.
OOD_KEYS = ("ood_auroc_msp", "ood_auroc_energy", "ood_fpr95_msp")


def msp_score(logits: Tensor) -> Tensor:
    """The maximum softmax probability max_k softmax(z)_k of each row of ``logits (N, K)``, float64 ``(N,)``.

    Hendrycks & Gimpel, ICLR 2017, arXiv:1610.02136. Computed in float64 so
    that confident samples tie at 1.0 less often than in float32.

    Example:
        >>> msp_score(torch.tensor([[0.0, 0.0], [2.0, 2.0]])).tolist()
        [0.5, 0.5]
    """
    return _msp(_check_logits("logits", logits))


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The negative free energy T * logsumexp_k(z_k / T) of each row of ``logits (N, K)``, float64 ``(N,)``.

    Liu, Wang, Owens & Li, NeurIPS 2020, arXiv:2010.03759: the energy is
    E(x) = -T log sum_k exp(z_k / T), and -E(x) is higher for ID samples.

    Example:
        >>> round(float(energy_score(torch.zeros(1, 4))[0]), 6)  # log 4
        1.386294
    """
    logits = _check_logits("logits", logits)
    return _energy(logits, check_positive("temperature", temperature))


def auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """Area under the ROC curve of ID (positive) against OOD scores: P(s_in > s_out) + P(s_in = s_out) / 2.

    The Mann-Whitney form (Hendrycks & Gimpel, ICLR 2017, arXiv:1610.02136 use
    the AUROC; the identity is Hanley & McNeil, Radiology 1982)::

        AUROC = (1 / (n_in n_out)) sum_i sum_j ([s_i > t_j] + [s_i = t_j] / 2)

    counted exactly with a binary search of each ID score among the sorted
    OOD scores. 1.0 when every ID score is above every OOD score, 0.5 when
    all scores are equal.

    Example:
        >>> auroc(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]))  # pairs: 1, 1, 1/2, 1
        0.875
    """
    in_scores, out_scores = _check_score_pair(in_scores, out_scores)
    ordered_out = out_scores.sort().values
    below = torch.searchsorted(ordered_out, in_scores, right=False)  # OOD scores < each ID score
    at_or_below = torch.searchsorted(ordered_out, in_scores, right=True)  # OOD scores <= each ID score
    twice_wins = int((below + at_or_below).sum())  # integer count: exact for any sample size
    return twice_wins / (2 * in_scores.numel() * out_scores.numel())


def fpr_at_tpr(in_scores: Tensor, out_scores: Tensor, tpr: float = 0.95) -> float:
    """The share of OOD samples scored >= the highest threshold that keeps at least ``tpr`` of the ID samples.

    Liu et al., NeurIPS 2020, arXiv:2010.03759 (FPR95). Threshold rule: with
    the n_in ID scores sorted in decreasing order, the threshold is the k-th
    largest, k = ceil(tpr * n_in); it is the largest t for which the share of
    ID scores >= t is at least ``tpr`` (ties at t can make that share larger).
    The result is the share of OOD scores >= t.

    Example:
        >>> in_scores = torch.arange(1.0, 21.0)  # 20 ID scores: k = 19, threshold 2
        >>> fpr_at_tpr(in_scores, torch.tensor([0.5, 1.5, 2.0, 3.0]))
        0.5
    """
    in_scores, out_scores = _check_score_pair(in_scores, out_scores)
    tpr = check_probability("tpr", tpr)
    if tpr == 0.0:
        raise MixlabValueError(f"tpr must be in (0, 1]; got {tpr!r}")
    k = max(1, math.ceil(tpr * in_scores.numel() - 1e-9))  # the tolerance keeps 0.95 * 20 from rounding up to 20
    threshold = in_scores.sort(descending=True).values[k - 1]
    return float((out_scores >= threshold).double().mean())


def roc_points(in_scores: Tensor, out_scores: Tensor, max_points: int = 101) -> dict[str, list[float]]:
    """The ROC curve, ID positive, thinned to at most ``max_points`` vertices for plotting: ``{"fpr": [...], "tpr": [...]}``.

    One vertex per distinct score t (predict ID when score >= t), in
    decreasing t, after the vertex (0, 0); the last vertex is (1, 1). Both
    lists are non-decreasing. When there are more vertices than
    ``max_points``, ``max_points`` of them evenly spaced in index are kept,
    always the first and the last, so the thinned curve is a monotone
    sub-sequence of the full one.

    Example:
        >>> roc_points(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]))
        {'fpr': [0.0, 0.0, 0.5, 1.0], 'tpr': [0.0, 0.5, 1.0, 1.0]}
    """
    in_scores, out_scores = _check_score_pair(in_scores, out_scores)
    max_points = check_int("max_points", max_points, minimum=2)
    scores = torch.cat([in_scores, out_scores])
    is_in = torch.cat([torch.ones_like(in_scores), torch.zeros_like(out_scores)])
    scores, order = scores.sort(descending=True, stable=True)
    _, counts = torch.unique_consecutive(scores, return_counts=True)
    last_of_group = counts.cumsum(0) - 1  # a threshold admits a whole tie group at once
    zero = torch.zeros(1, dtype=torch.float64, device=scores.device)
    tpr = torch.cat([zero, is_in[order].cumsum(0)[last_of_group] / in_scores.numel()])
    fpr = torch.cat([zero, (1 - is_in[order]).cumsum(0)[last_of_group] / out_scores.numel()])
    if fpr.numel() > max_points:
        keep = torch.linspace(0, fpr.numel() - 1, max_points, device=fpr.device).round().long()
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def ood_metrics(in_logits: Tensor, out_logits: Tensor) -> dict[str, float]:
    """AUROC of the MSP and energy scores and FPR at 95 % TPR of the MSP (keys ``OOD_KEYS``), ID against OOD logits.

    See :func:`msp_score`, :func:`energy_score` (temperature 1), :func:`auroc`
    and :func:`fpr_at_tpr` for the definitions and papers.

    Example:
        >>> m = ood_metrics(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([[0.0, 0.0]]))
        >>> m["ood_auroc_msp"], m["ood_fpr95_msp"]
        (1.0, 0.0)
    """
    in_logits, out_logits = _check_logit_pair(in_logits, out_logits)
    in_msp, out_msp = _msp(in_logits), _msp(out_logits)
    return {
        "ood_auroc_msp": auroc(in_msp, out_msp),
        "ood_auroc_energy": auroc(_energy(in_logits), _energy(out_logits)),
        "ood_fpr95_msp": fpr_at_tpr(in_msp, out_msp, 0.95),
    }


def ood_curves(in_logits: Tensor, out_logits: Tensor, max_points: int = 101) -> dict[str, dict[str, list[float]]]:
    """The thinned ROC points (:func:`roc_points`) of the MSP and energy scores: ``{"msp": roc, "energy": roc}``.

    Example:
        >>> curves = ood_curves(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
        >>> curves["msp"]
        {'fpr': [0.0, 0.0, 1.0], 'tpr': [0.0, 1.0, 1.0]}
    """
    in_logits, out_logits = _check_logit_pair(in_logits, out_logits)
    max_points = check_int("max_points", max_points, minimum=2)
    return {
        "msp": roc_points(_msp(in_logits), _msp(out_logits), max_points),
        "energy": roc_points(_energy(in_logits), _energy(out_logits), max_points),
    }


def _msp(logits: Tensor) -> Tensor:
    return logits.double().softmax(dim=1).amax(dim=1)


def _energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    return temperature * torch.logsumexp(logits.double() / temperature, dim=1)


def _check_logits(name: str, logits: Tensor) -> Tensor:
    """``logits`` detached after the checks of :func:`check_logits_and_targets`, the error naming ``name``."""
    if not isinstance(logits, Tensor):
        raise MixlabTypeError(f"{name} must be a torch.Tensor of shape (N, K); got {type(logits).__name__}")
    placeholder_targets = torch.zeros(logits.shape[:1], dtype=torch.long, device=logits.device)
    try:
        return check_logits_and_targets(logits, placeholder_targets)[0]
    except MixlabError as err:
        raise type(err)(f"{name}: {err}") from None


def _check_logit_pair(in_logits: Tensor, out_logits: Tensor) -> tuple[Tensor, Tensor]:
    in_logits, out_logits = _check_logits("in_logits", in_logits), _check_logits("out_logits", out_logits)
    if in_logits.shape[1] != out_logits.shape[1]:
        raise MixlabValueError(
            f"in_logits and out_logits must have the same number of classes; got {in_logits.shape[1]} and "
            f"{out_logits.shape[1]}"
        )
    return in_logits, out_logits.to(in_logits.device)


def _check_score_pair(in_scores: Tensor, out_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Both score vectors as float64 on ``in_scores``' device, after checking each is a non-empty finite (n,)."""
    checked = []
    for name, scores in (("in_scores", in_scores), ("out_scores", out_scores)):
        if not isinstance(scores, Tensor):
            raise MixlabTypeError(f"{name} must be a torch.Tensor of shape (n,); got {type(scores).__name__}")
        if scores.ndim != 1 or scores.numel() == 0:
            raise MixlabValueError(f"{name} must have shape (n,) with n >= 1; got {tuple(scores.shape)}")
        if scores.dtype == torch.bool or scores.is_complex():
            raise MixlabTypeError(f"{name} must hold real numbers; got dtype {scores.dtype}")
        if not bool(torch.isfinite(scores).all()):
            bad = int((~torch.isfinite(scores)).sum())
            raise MixlabValueError(f"{name} must be finite; got {bad} NaN or infinite value(s)")
        checked.append(scores.detach().to(device=in_scores.device, dtype=torch.float64))
    return checked[0], checked[1]
