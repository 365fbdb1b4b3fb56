"""How well a model's penultimate features transfer to a target task: LogME, H-score, LEEP and a linear probe.

Each score takes features (or the source model's class probabilities) computed
once on the target data, so ranking checkpoints by transferability costs one
forward pass and no fine-tuning. :func:`extract_features` gives both from a
mixlab ``Backbone``; :func:`transfer_metrics` returns the four scores under
the store's keys. Higher is better for all four; only ``probe_acc`` is on a
fixed scale (a fraction), the other three compare models on the same target.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.arange(60) % 3
    >>> features = torch.nn.functional.one_hot(labels).double() + 0.1 * torch.randn(60, 3, generator=g, dtype=torch.float64)
    >>> noise = torch.randn(60, 3, generator=g, dtype=torch.float64)
    >>> logme(features, labels) > logme(noise, labels)
    True
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int, check_positive, check_probability
from mixlab.evaluate.running import (
    DeviceLike,
    Preprocess,
    check_class_labels,
    check_model_inputs,
    eval_mode,
    in_model_layout,
    place_model,
)

# the fixed-point iteration of LogME stops for a class once alpha/beta moves by less than this fraction (the evidence
# is flat at its maximum, so its error is far smaller), or once the prior swamps every feature direction
# (γ < _LOGME_NO_FIT: the supremum is at alpha -> infinity, weights 0, and the evidence no longer moves), or after
# _LOGME_MAX_STEPS
_LOGME_TOLERANCE = 1e-8
_LOGME_NO_FIT = 1e-8
_LOGME_MAX_STEPS = 1000
# lbfgs steps per probe fit: enough for standardised features; a separable set (large C) may stop short of the
# optimum, which changes the weights' scale but hardly the predicted classes
_PROBE_MAX_ITER = 300
# below this many multiply-adds (N·D²) the scores run on one thread: see _thread_limit
_ONE_THREAD_WORK = 1e10


def logme(features: Tensor, labels: Tensor) -> float:
    """LogME: the maximised log evidence per sample of a Bayesian linear regression from features to each one-hot label.

    For each class c present in ``labels``, the target is ``t = 1[labels == c]``
    in {0, 1}^N and the model is ``t = F w + e`` with prior ``w ~ N(0, I/alpha)``
    and noise ``e ~ N(0, I/beta)``, F the ``(N, D)`` features. Its log evidence is

        L(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2π
                         - beta/2 |t - F m|² - alpha/2 |m|² - 1/2 log det A,
        A = alpha I + beta FᵀF,  m = beta A⁻¹ Fᵀ t,

    maximised by the fixed-point iteration of the paper (MacKay's), written on the
    SVD F = U S Vᵀ with σ_i = s_i²: ``γ = Σ_i beta σ_i / (alpha + beta σ_i)``,
    ``alpha ← γ / |m|²``, ``beta ← (N - γ) / |t - F m|²``, from alpha = beta = 1
    until alpha/beta changes by less than 1e-8 relatively (or γ < 1e-8: features
    that do not help fit t send alpha to infinity, and the evidence to its limit
    with zero weights), at most 1000 steps. The result is the
    mean over classes of ``L(alpha*, beta*) / N``. Everything runs in float64.
    You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models
    for Transfer Learning", ICML 2021, arXiv 2102.11005. Unlike the authors' code,
    ``log det A`` counts the D - rank(F) zero singular values (as log alpha each),
    which matters when D > N; classes are those present in ``labels``.

    Args:
        features: ``(N, D)`` real features, finite.
        labels: ``(N,)`` class indices >= 0, at least two distinct classes.

    Example:
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> round(logme(torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.9]]), labels), 3) > -0.5
        True
    """
    features, labels = _check_features_and_labels(features, labels)
    with _thread_limit(features):
        return _logme(features, labels)


def hscore(features: Tensor, labels: Tensor, *, shrinkage: bool = True) -> float:
    """H-score: ``tr(cov(f)⁻¹ cov(E[f | y]))``, how much of the features' variance the class means explain.

    ``cov(E[f | y]) = Σ_c (n_c / N) (μ_c - μ)(μ_c - μ)ᵀ`` (each sample replaced by its
    class mean). Bao, Li, Huang, Zhao and Wu, "An Information-Theoretic Approach to
    Transferability in Task Transfer Learning", ICIP 2019. Without ``shrinkage``
    cov(f) is the empirical covariance and its pseudo-inverse is used; with it
    (the default) the score is the regularised H-score of Ibrahim, Ponomareva and
    Mazumder, "Newer is not always better: rethinking transferability metrics,
    their peculiarities, stability and performance", ICLR 2023, arXiv 2110.06893:
    ``tr(Σ_a⁻¹ (1 - a) cov(E[f | y]))`` with ``Σ_a = (1 - a) cov(f) + a tr(cov(f))/D I``
    the Ledoit–Wolf estimate and ``a`` its shrinkage (``sklearn.covariance.LedoitWolf``),
    which keeps the score stable when D is large against N. Both covariances use
    1/N; the ratio does not depend on it. Float64.

    Args:
        features: ``(N, D)`` real features, finite.
        labels: ``(N,)`` class indices >= 0, at least two distinct classes.
        shrinkage: Ledoit–Wolf shrinkage (True) or the plain pseudo-inverse (False).

    Example:
        >>> hscore(torch.tensor([[0.0], [2.0], [4.0], [6.0]]), torch.tensor([0, 0, 1, 1]), shrinkage=False)
        0.8
    """
    if not isinstance(shrinkage, bool):
        raise MixlabTypeError(f"shrinkage must be a bool; got {shrinkage!r} of type {type(shrinkage).__name__}")
    features, labels = _check_features_and_labels(features, labels)
    with _thread_limit(features):
        return _hscore(features, labels, shrinkage)


def leep(source_probs: Tensor, labels: Tensor) -> float:
    """LEEP: the log expected empirical prediction of the target labels from the source model's class probabilities.

    With θ(x_i) the source model's softmax over its own classes z on target input
    x_i: the empirical joint ``P(y, z) = 1/N Σ_{i: y_i = y} θ(x_i)_z``, the conditional
    ``P(y | z) = P(y, z) / Σ_y' P(y', z)``, and

        LEEP = 1/N Σ_i log Σ_z P(y_i | z) θ(x_i)_z,

    a value <= 0 (0 when the source classes determine the target labels).
    Nguyen, Hassner, Seeger and Archambeau, "LEEP: A New Measure to Evaluate
    Transferability of Learned Representations", ICML 2020, arXiv 2002.12462.
    A source class z that no sample puts weight on never enters the sum. Float64;
    each row is renormalised to sum to 1 exactly (float32 softmax rows are off by ~1e-7).

    Args:
        source_probs: ``(N, Z)`` probabilities, each row >= 0 and summing to 1.
        labels: ``(N,)`` target class indices >= 0, at least two distinct classes.

    Example:
        >>> leep(torch.eye(2)[[0, 1, 1, 0]], torch.tensor([0, 1, 1, 0]))
        0.0
    """
    probs, labels = _check_probs_and_labels(source_probs, labels)
    targets = _one_hot_present(labels)  # (N, C)
    joint = targets.T @ probs / probs.shape[0]  # (C, Z)
    marginal = joint.sum(dim=0, keepdim=True)
    conditional = torch.where(marginal > 0, joint / marginal.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    expected = (probs @ conditional.T * targets).sum(dim=1)  # Σ_z P(y_i | z) θ(x_i)_z
    return float(expected.log().mean())


def probe_accuracy(
    features: Tensor,
    labels: Tensor,
    *,
    seed: int = 0,
    test_fraction: float = 0.3,
    val_fraction: float = 0.2,
    cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0),
) -> float:
    """Test accuracy of a logistic-regression probe on standardised features, its C chosen on a validation split.

    The samples are split (stratified by label, ``random_state=seed``) into a
    training part and a held-out test part of ``test_fraction``; the training part
    again into a fit part and a validation part of ``val_fraction``. For each C in
    ``cs`` a ``StandardScaler`` + ``LogisticRegression(C, lbfgs)`` pipeline is fitted
    on the fit part (the scaler sees the fitted rows only) and scored on the
    validation part; the best C (ties: the smallest) is refitted on the whole
    training part and its accuracy on the test part is returned (a fraction).
    The usual linear-probe protocol, e.g. Kornblith, Shlens and Le, "Do Better
    ImageNet Models Transfer Better?", CVPR 2019, arXiv 1805.08974. lbfgs stops
    after 300 iterations (convergence warnings are silenced: the probe is a
    fixed-budget readout). Deterministic given ``seed``.

    Args:
        features: ``(N, D)`` real features, finite.
        labels: ``(N,)`` class indices >= 0, at least two distinct classes, each with >= 2 samples.
        seed: seed of both splits.
        test_fraction, val_fraction: in (0, 1).
        cs: the inverse regularisation strengths tried, each > 0.

    Example:
        >>> labels = torch.arange(40) % 2
        >>> features = torch.stack([labels.double(), torch.zeros(40, dtype=torch.float64)], dim=1)
        >>> probe_accuracy(features, labels)
        1.0
    """
    seed = check_int("seed", seed, minimum=0)
    test_fraction = _check_open_fraction("test_fraction", test_fraction)
    val_fraction = _check_open_fraction("val_fraction", val_fraction)
    cs = _check_cs(cs)
    features, labels = _check_features_and_labels(features, labels)
    x, y = features.numpy(), labels.numpy()
    train, test = _stratified_split(np.arange(y.size), y, test_fraction, seed, "test_fraction")
    fit, validation = _stratified_split(train, y, val_fraction, seed, "val_fraction")
    with _thread_limit(features):
        scores = [_probe_score(x, y, fit, validation, c) for c in cs]
        best = cs[int(np.argmax(scores))]  # argmax takes the first of ties: cs is sorted, so the smallest C
        return _probe_score(x, y, train, test, best)


def transfer_metrics(features: Tensor, labels: Tensor, source_probs: Tensor, *, seed: int = 0) -> dict[str, float]:
    """The four transferability scores of features (and the source model's probabilities) on a target task.

    Keys: ``"logme"`` (:func:`logme`), ``"hscore"`` (:func:`hscore` with Ledoit–Wolf
    shrinkage), ``"leep"`` (:func:`leep`), ``"probe_acc"`` (:func:`probe_accuracy`
    with its default splits and ``seed``). All inputs are checked before any score.

    Args:
        features: ``(N, D)`` target features; labels: ``(N,)`` target classes.
        source_probs: ``(N, Z)`` the source model's softmax on the same samples.
        seed: seed of the probe's splits.

    Example:
        >>> labels = torch.arange(40) % 2
        >>> features = torch.nn.functional.one_hot(labels).double() + 0.01 * torch.arange(80.0).view(40, 2)
        >>> sorted(transfer_metrics(features, labels, torch.eye(2)[labels]))
        ['hscore', 'leep', 'logme', 'probe_acc']
    """
    seed = check_int("seed", seed, minimum=0)
    _check_features_and_labels(features, labels)
    _check_probs_and_labels(source_probs, labels)
    return {
        "logme": logme(features, labels),
        "hscore": hscore(features, labels, shrinkage=True),
        "leep": leep(source_probs, labels),
        "probe_acc": probe_accuracy(features, labels, seed=seed),
    }


def extract_features(
    model: nn.Module, x: Tensor, *, preprocess: Preprocess, batch_size: int = 1000, device: DeviceLike = None
) -> tuple[Tensor, Tensor]:
    """The penultimate features ``model.features(input)`` and the source probabilities ``softmax(model.head(features))``.

    Both come back float32 on the CPU: features ``(N, D)`` and probabilities
    ``(N, K)``. The model runs in eval mode without gradients; its modes are
    restored afterwards. It must be a mixlab ``Backbone`` (or any module with a
    callable ``features`` returning ``(batch, D)`` and a callable ``head``).

    Args:
        model: the source model.
        x: raw inputs ``(N, ...)``, on any device.
        preprocess: maps a raw batch on ``device`` to the model's input.
        batch_size: samples per forward pass; device: where to run (default: the model's device).

    Example:
        >>> from mixlab.models.base import Backbone
        >>> class Tiny(Backbone):
        ...     def __init__(self):
        ...         super().__init__(num_classes=2, in_channels=3)
        ...         self.feature_dim, self.head = 4, torch.nn.Linear(4, 2)
        ...         self.body = torch.nn.Linear(3, 4)
        ...     def features(self, x):
        ...         return self.body(x)
        >>> feats, probs = extract_features(Tiny(), torch.randn(5, 3), preprocess=lambda b: b, batch_size=2)
        >>> feats.shape, probs.shape
        (torch.Size([5, 4]), torch.Size([5, 2]))
    """
    batch_size = check_model_inputs(model, x, None, preprocess, batch_size)
    for part in ("features", "head"):
        if not callable(getattr(model, part, None)):
            raise MixlabTypeError(
                f"extract_features needs a model with a callable .{part} (a mixlab Backbone); "
                f"{type(model).__name__} has none"
            )
    preprocess = in_model_layout(model, preprocess)
    device = place_model(model, device)
    features, probs = [], []
    with eval_mode(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            batch_features = model.features(preprocess(x[start : start + batch_size].to(device)))
            if batch_features.ndim != 2:
                raise MixlabValueError(
                    f"{type(model).__name__}.features must return (batch, D); got shape {tuple(batch_features.shape)}"
                )
            features.append(batch_features.float().cpu())
            probs.append(F.softmax(model.head(batch_features).float(), dim=1).cpu())
    return torch.cat(features), torch.cat(probs)


# ------------------------------------------------------------------ LogME internals


def _logme(features: Tensor, labels: Tensor) -> float:
    """:func:`logme` on checked float64 features."""
    targets = _one_hot_present(labels)  # (N, C)
    n_samples, dim = features.shape
    u, s, _ = torch.linalg.svd(features, full_matrices=False)
    # the numerical rank, with the tolerance numpy's matrix_rank uses
    s = s[s > s.max() * max(features.shape) * torch.finfo(torch.float64).eps]
    projections = u[:, : s.numel()].T @ targets  # (k, C): the targets' coordinates in the span of F
    outside = (targets.square().sum(dim=0) - projections.square().sum(dim=0)).clamp(min=0.0)
    alpha, beta = _logme_fixed_point(s.square(), projections.square(), outside, n_samples)
    evidence = _log_evidence(alpha, beta, s.square(), projections.square(), outside, n_samples, dim)
    return float((evidence / n_samples).mean())


def _logme_fixed_point(sigma: Tensor, projections_sq: Tensor, outside: Tensor, n_samples: int) -> tuple[Tensor, Tensor]:
    """Iterate alpha, beta (one per class, all classes at once) to the evidence maximum; ``sigma`` (k,), the rest (k, C)/(C,)."""
    n_classes = projections_sq.shape[1]
    alpha = torch.ones(n_classes, dtype=torch.float64)
    beta = torch.ones(n_classes, dtype=torch.float64)
    sigma = sigma[:, None]
    # a target fitted exactly (or orthogonal to every feature) would send beta (or alpha) to infinity: a floor
    # far below any real residual keeps the evidence finite there
    floor = 1e-12 * n_samples
    for _ in range(_LOGME_MAX_STEPS):
        ratio = alpha / beta
        gamma = (sigma / (sigma + ratio)).sum(dim=0)
        weight_sq = (sigma * projections_sq / (sigma + ratio).square()).sum(dim=0)
        residual_sq = (projections_sq * (ratio / (sigma + ratio)).square()).sum(dim=0) + outside
        alpha = gamma / weight_sq.clamp(min=floor)
        beta = (n_samples - gamma) / residual_sq.clamp(min=floor)
        settled = (alpha / beta - ratio).abs() <= _LOGME_TOLERANCE * ratio
        if bool((settled | (gamma < _LOGME_NO_FIT)).all()):
            break
    return alpha, beta


def _log_evidence(
    alpha: Tensor, beta: Tensor, sigma: Tensor, projections_sq: Tensor, outside: Tensor, n_samples: int, dim: int
) -> Tensor:
    """The log evidence L(alpha, beta) per class, in the SVD coordinates (k nonzero singular values of D)."""
    sigma = sigma[:, None]
    ratio = alpha / beta
    weight_sq = (sigma * projections_sq / (sigma + ratio).square()).sum(dim=0)
    residual_sq = (projections_sq * (ratio / (sigma + ratio)).square()).sum(dim=0) + outside
    # log det A: the k nonzero singular directions give alpha + beta σ_i, the other D - k give alpha
    log_det = (alpha + beta * sigma).log().sum(dim=0) + (dim - sigma.shape[0]) * alpha.log()
    return (
        n_samples / 2 * beta.log()
        + dim / 2 * alpha.log()
        - n_samples / 2 * math.log(2 * math.pi)
        - beta / 2 * residual_sq
        - alpha / 2 * weight_sq
        - log_det / 2
    )


# ------------------------------------------------------------------ H-score and probe internals


def _hscore(features: Tensor, labels: Tensor, shrinkage: bool) -> float:
    """:func:`hscore` on checked float64 features."""
    centred = features - features.mean(dim=0)
    between = _between_class_covariance(centred, labels)
    if shrinkage:
        from sklearn.covariance import LedoitWolf  # imported here: scikit-learn is slow to import

        estimate = LedoitWolf(assume_centered=True).fit(centred.numpy())
        covariance = torch.from_numpy(estimate.covariance_)
        between = (1.0 - float(estimate.shrinkage_)) * between
    else:
        covariance = centred.T @ centred / centred.shape[0]
    precision = torch.linalg.pinv(covariance, hermitian=True)
    return float(torch.trace(precision @ between))


def _between_class_covariance(centred: Tensor, labels: Tensor) -> Tensor:
    """``Σ_c (n_c / N) μ_c μ_cᵀ`` of centred features: the covariance of each sample's class mean."""
    targets = _one_hot_present(labels)  # (N, C)
    counts = targets.sum(dim=0)
    means = targets.T @ centred / counts[:, None]  # (C, D)
    return means.T @ (means * (counts / centred.shape[0])[:, None])


def _probe_score(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, c: float) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver="lbfgs", max_iter=_PROBE_MAX_ITER))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x[train], y[train])
    return float((probe.predict(x[test]) == y[test]).mean())


def _stratified_split(
    indices: np.ndarray, y: np.ndarray, fraction: float, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        kept, held_out = train_test_split(indices, test_size=fraction, stratify=y[indices], random_state=seed)
    except ValueError as err:
        counts = dict(zip(*(part.tolist() for part in np.unique(y[indices], return_counts=True)), strict=True))
        raise MixlabValueError(
            f"cannot split {indices.size} samples with class counts {counts} stratified by {name}={fraction}: {err}"
        ) from err
    return np.sort(kept), np.sort(held_out)


# ------------------------------------------------------------------ threads and input checks


def _thread_limit(features: Tensor) -> AbstractContextManager:
    """One BLAS/OpenMP thread for small problems (N·D² below 1e10 multiply-adds), the default threads otherwise.

    On small matrices one thread is as fast, and extra threads only add synchronisation, which on a loaded CPU cost
    10-30x (2,000 x 128 features, 10 classes: LogME + H-score 0.08 s on one thread against 0.5-2.7 s on two busy
    ones; the probe 0.08 s against 0.7-6 s).
    """
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    n_samples, dim = features.shape
    return threadpool_limits(limits=1) if n_samples * dim * dim < _ONE_THREAD_WORK else nullcontext()


def _check_features_and_labels(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Features as a float64 CPU ``(N, D)`` tensor and labels as int64 CPU ``(N,)``, or a clear error."""
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 1:
        shown = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise MixlabValueError(f"features must be a tensor (N, D) with N >= 2 and D >= 1; got {shown}")
    if not features.is_floating_point():
        raise MixlabTypeError(f"features must be a floating-point tensor; got dtype {features.dtype}")
    features = features.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(features).all()):
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise MixlabValueError(
            f"features must be finite; got NaN or infinite values in {bad} of {features.shape[0]} rows"
        )
    return features, _check_labels(labels, features.shape[0], "features")


def _check_probs_and_labels(source_probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(source_probs, Tensor) or source_probs.ndim != 2 or source_probs.shape[0] < 2:
        shown = tuple(source_probs.shape) if isinstance(source_probs, Tensor) else type(source_probs).__name__
        raise MixlabValueError(f"source_probs must be a tensor (N, Z) with N >= 2; got {shown}")
    if not source_probs.is_floating_point():
        raise MixlabTypeError(f"source_probs must be a floating-point tensor; got dtype {source_probs.dtype}")
    probs = source_probs.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(probs).all()) or float(probs.min()) < 0.0:
        raise MixlabValueError("source_probs must be finite and >= 0 (a softmax output); got NaN, inf or negatives")
    sums = probs.sum(dim=1)
    worst = float((sums - 1.0).abs().max())
    if worst > 1e-3:
        raise MixlabValueError(
            f"source_probs rows must sum to 1 (softmax probabilities, not logits); a row sums to "
            f"{float(sums[(sums - 1.0).abs().argmax()]):.6g}"
        )
    # float32 softmax rows sum to 1 only to ~1e-7: renormalised in float64, LEEP is that of the stated distribution
    return probs / sums[:, None], _check_labels(labels, probs.shape[0], "source_probs")


def _check_labels(labels: Tensor, n_samples: int, against: str) -> Tensor:
    check_class_labels(labels, n_samples, against)
    labels = labels.detach().to(device="cpu", dtype=torch.long)
    if int(labels.min()) < 0:
        raise MixlabValueError(f"labels must be class indices >= 0; got a minimum of {int(labels.min())}")
    n_classes = int(torch.unique(labels).numel())
    if n_classes < 2:
        raise MixlabValueError(f"labels must hold at least 2 distinct classes; got only class {int(labels[0])}")
    return labels


def _check_open_fraction(name: str, value: float) -> float:
    value = check_probability(name, value)
    if not 0.0 < value < 1.0:
        raise MixlabValueError(f"{name} must be strictly between 0 and 1; got {value!r}")
    return value


def _check_cs(cs: Sequence[float]) -> list[float]:
    if isinstance(cs, (str, bytes)) or not isinstance(cs, Sequence) or len(cs) == 0:
        raise MixlabValueError(f"cs must be a non-empty sequence of numbers > 0; got {cs!r}")
    if not all(isinstance(c, numbers.Real) for c in cs):
        raise MixlabTypeError(f"cs must hold real numbers; got {cs!r}")
    return sorted(check_positive("cs entry", c) for c in cs)


def _one_hot_present(labels: Tensor) -> Tensor:
    """``(N, C)`` float64 indicators of the C classes present in ``labels``, in increasing order."""
    _, dense = torch.unique(labels, return_inverse=True)
    return F.one_hot(dense).to(torch.float64)
