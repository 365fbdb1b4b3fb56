"""How far mixed samples lie from real ones in a model's feature space, and how often they intrude on a third class.

Two-sample statistics on feature sets ``(n, D)``:

- :func:`mmd2_unbiased` and :func:`mmd_test`: the unbiased squared maximum mean
  discrepancy with a Gaussian (RBF) kernel and its permutation test (Gretton,
  Borgwardt, Rasch, Schölkopf & Smola, "A Kernel Two-Sample Test", JMLR 13, 2012);
  the bandwidth is the median pairwise distance of the pooled sample
  (:func:`median_bandwidth`, the paper's heuristic) unless one is given;
- :func:`kid`: the Kernel Inception Distance, the unbiased MMD² with the cubic
  polynomial kernel averaged over random subsets (Bińkowski, Sutherland, Arbel &
  Gretton, "Demystifying MMD GANs", ICLR 2018, arXiv 1801.01401), here on the
  model's own features rather than Inception's;
- :func:`intrusion_rate`: the share of mixed samples confidently predicted as a
  class that is neither of their sources' (after the manifold intrusion of Guo,
  Mao & Zhang, AAAI 2019, arXiv 1809.02499).

:func:`mixed_real_gap` puts them together for a model and a mixer: the MMD between
the penultimate features of mixed and of real samples per bin of the mixing ratio λ.

Example:
    >>> g = torch.Generator().manual_seed(1)
    >>> same = mmd_test(torch.randn(60, 3, generator=g), torch.randn(60, 3, generator=g), n_permutations=99)
    >>> shifted = mmd_test(torch.randn(60, 3, generator=g), torch.randn(60, 3, generator=g) + 2.0, n_permutations=99)
    >>> same[1] > 0.05, shifted[1]
    (True, 0.01)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int, check_positive, check_probability
from mixlab.evaluate.running import (
    DeviceLike,
    Preprocess,
    check_model_inputs,
    eval_mode,
    float64_device,
    in_model_layout,
    place_model,
)
from mixlab.methods.base import Mixer
from mixlab.methods.context import MixContext, unwrap

#: Permutation statistics within this (absolute) distance of the observed one count as ties, i.e. as ">=":
#: a relabelling that only swaps the two samples' roles gives the same MMD² up to float rounding.
TIE_TOLERANCE = 1e-12
#: Upper bound on (permutations per chunk) x (pooled size) in the permutation test, to bound memory.
_CHUNK_ELEMENTS = 1 << 23
#: The λ bins' keys carry one decimal, so at most ten bins keep them distinct and exact enough to read.
MAX_BINS = 10


@dataclass
class GapResult:
    """What :func:`mixed_real_gap` measured.

    Attributes:
        metrics: ``"mmd/lam_<lo>_<hi>"`` and ``"mmd_p/lam_<lo>_<hi>"`` per λ bin with enough samples,
            ``"mmd_mixed_real"`` (their mean), ``"intrusion_rate"`` and ``"kid"``; plain floats.
        curve: ``{"lam_mid": [...], "mmd": [...], "p": [...], "count": [...]}`` over those bins, in λ order.

    Example:
        >>> GapResult({"kid": 0.1}).curve
        {'lam_mid': [], 'mmd': [], 'p': [], 'count': []}
    """

    metrics: dict[str, float]
    curve: dict[str, list[float]] = field(default_factory=lambda: {"lam_mid": [], "mmd": [], "p": [], "count": []})


# ------------------------------------------------------------------ two-sample statistics


def median_bandwidth(x: Tensor, y: Tensor) -> float:
    """The median Euclidean distance between distinct points of the pooled sample ``x ∪ y``.

    The median of the ``N(N-1)/2`` distances over pairs ``i < j`` (the mean of the two
    middle ones for an even count): the bandwidth heuristic of Gretton et al., JMLR 2012, Sec. 8.

    Example:
        >>> median_bandwidth(torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0], [7.0]]))  # 1, 2, 3, 4, 6, 7
        3.5
    """
    x, y = _check_pair(x, y)
    return _median_distance(_squared_distances(torch.cat([x, y])))


def mmd2_unbiased(x: Tensor, y: Tensor, *, bandwidth: float | None = None) -> float:
    """The unbiased squared MMD between samples ``x (n, D)`` and ``y (m, D)`` with an RBF kernel.

    ``MMD²_u = Σ_{i≠j} k(x_i, x_j) / (n(n-1)) + Σ_{i≠j} k(y_i, y_j) / (m(m-1)) - 2 Σ_{i,j} k(x_i, y_j) / (nm)``
    with ``k(a, b) = exp(-|a - b|² / (2 s²))`` (Gretton et al., JMLR 2012, Eq. 3). Its expectation is
    the population MMD², 0 when both samples come from one distribution, so estimates can be slightly
    negative. ``s`` is ``bandwidth`` or, when ``None``, :func:`median_bandwidth` of the pooled sample.

    Example:
        >>> x = torch.tensor([[0.0], [1.0]])
        >>> round(mmd2_unbiased(x, x + 10.0, bandwidth=1.0), 4)  # 2 e^{-1/2} - 0 - 0: the cross terms vanish
        1.2131
    """
    x, y = _check_pair(x, y)
    kernel = _rbf_kernel(_squared_distances(torch.cat([x, y])), bandwidth)
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * kxy.sum() / (n * m))


def mmd_test(
    x: Tensor, y: Tensor, *, n_permutations: int = 200, seed: int = 0, bandwidth: float | None = None
) -> tuple[float, float]:
    """``(MMD²_u, p)``: the MMD of :func:`mmd2_unbiased` and its permutation-test p-value.

    The pooled sample's labels are permuted ``n_permutations`` times (a CPU generator seeded with
    ``seed``) and ``p = (1 + #{permuted MMD²_u >= observed}) / (1 + n_permutations)``, a valid p-value
    for the null ``P_x = P_y`` (Gretton et al., JMLR 2012, Sec. 5). The pooled kernel matrix is computed
    once; each permutation's statistic comes from it by matrix products. The bandwidth (given, or the
    pooled median) does not depend on the labels, so it is the same for every permutation.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [0.2]])
        >>> mmd_test(x, x + 5.0, n_permutations=19, bandwidth=1.0)[1] <= 0.2  # 2 of 20 labellings are as extreme
        True
    """
    x, y = _check_pair(x, y)
    n_permutations = check_int("n_permutations", n_permutations, minimum=1)
    seed = check_int("seed", seed)
    kernel = _rbf_kernel(_squared_distances(torch.cat([x, y])), bandwidth)
    return _permutation_test(kernel, x.shape[0], n_permutations, torch.Generator().manual_seed(seed))


def kid(x: Tensor, y: Tensor, *, subset_size: int | None = None, n_subsets: int = 10, seed: int = 0) -> float:
    """Kernel Inception Distance: unbiased MMD² with ``k(a, b) = (a·b / D + 1)³``, averaged over random subsets.

    Each of ``n_subsets`` rounds draws ``s = subset_size`` rows of ``x`` and ``s`` rows of ``y`` without
    replacement (default ``s = min(n, m, 1000)``) and computes
    ``(Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)) / (s(s-1)) - 2 Σ_{i,j} k(x_i, y_j) / s²``; the result is
    their mean (computed once when ``s`` is both samples' size: every subset is then the whole sample).
    Bińkowski, Sutherland, Arbel & Gretton, "Demystifying MMD GANs", ICLR 2018, arXiv 1801.01401
    (as in the authors' ``polynomial_mmd_averages``). Draws come from a CPU generator seeded with ``seed``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> abs(kid(torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g))) < 0.05
        True
    """
    x, y = _check_pair(x, y)
    n_subsets = check_int("n_subsets", n_subsets, minimum=1)
    seed = check_int("seed", seed)
    largest = min(x.shape[0], y.shape[0])
    size = min(largest, 1000) if subset_size is None else check_int("subset_size", subset_size, minimum=2)
    if size > largest:
        raise MixlabValueError(
            f"subset_size must be at most the smaller sample's size {largest} (subsets are drawn without "
            f"replacement); got {size}"
        )
    generator = torch.Generator().manual_seed(seed)
    # subsets as large as both samples are the samples themselves, reordered: every round gives one value
    rounds = 1 if size == x.shape[0] == y.shape[0] else n_subsets
    estimates = []
    for _ in range(rounds):  # a handful of subsets, each fully vectorised
        rows_x = torch.randperm(x.shape[0], generator=generator)[:size].to(x.device)
        rows_y = torch.randperm(y.shape[0], generator=generator)[:size].to(y.device)
        estimates.append(_polynomial_mmd2(x[rows_x], y[rows_y]))
    return float(torch.stack(estimates).mean())


def intrusion_rate(probs: Tensor, target_a: Tensor, target_b: Tensor, *, threshold: float = 0.5) -> float:
    """The share of mixed samples predicted, with probability > ``threshold``, as neither source's class.

    Sample ``i`` intrudes when ``max_k probs[i, k] > threshold`` and ``argmax_k probs[i, k]`` is neither
    ``target_a[i]`` nor ``target_b[i]`` (soft-label targets ``(N, K)`` are reduced to their argmax). Guo,
    Mao & Zhang, "MixUp as Locally Linear Out-of-Manifold Regularization", AAAI 2019, arXiv 1809.02499,
    call a mixed sample that collides with real data of another class a manifold intrusion; this rate is
    the model-based reading of it: mixed points the classifier places confidently in a third class.

    Example:
        >>> probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
        >>> intrusion_rate(probs, torch.tensor([1, 1]), torch.tensor([2, 0]))  # the first: class 0, sources 1 and 2
        0.5
    """
    threshold = check_probability("threshold", threshold)
    if not isinstance(probs, Tensor) or probs.ndim != 2 or probs.shape[0] == 0 or not probs.is_floating_point():
        shown = f"{probs.dtype} {tuple(probs.shape)}" if isinstance(probs, Tensor) else type(probs).__name__
        raise MixlabValueError(f"probs must be floating class probabilities (N, K) with N >= 1; got {shown}")
    classes = [_as_class_indices(name, t, probs) for name, t in (("target_a", target_a), ("target_b", target_b))]
    confidence, predicted = probs.max(dim=1)
    intruded = (confidence > threshold) & (predicted != classes[0]) & (predicted != classes[1])
    return int(intruded.sum()) / intruded.numel()


# ------------------------------------------------------------------ the mixed-vs-real gap of a model


def mixed_real_gap(
    model: nn.Module,
    mixer: Mixer,
    x: Tensor,
    y: Tensor,
    *,
    preprocess: Preprocess,
    n_bins: int = 5,
    samples: int = 1000,
    n_permutations: int = 200,
    seed: int = 0,
    batch_size: int = 256,
    device: DeviceLike = None,
    min_per_bin: int = 20,
) -> GapResult:
    """The gap between the penultimate features of mixed and of real samples, per bin of λ.

    A seeded permutation of ``x`` gives two disjoint subsets of ``s = min(samples, N // 2)`` samples each:
    one gives the real features, the other is mixed by ``mixer`` in batches of ``batch_size`` after
    ``preprocess`` (as the training engine mixes after ``augment``), with the context the engine gives
    (``MixContext(mixer, model)(inputs, y)`` for model-aware mixers, else ``{"model": model}``) and a CPU
    generator seeded from ``seed``, and run with ``mb.forward(model)`` so that in-model mixers (Manifold
    Mixup) mix inside it. Features are the input of ``model.head`` (a forward pre-hook), so both sets
    come from the same layer; the model runs in eval mode and its modes are restored afterwards.

    Each mixed sample falls in one of ``n_bins`` equal-width bins of its λ (``mb.lam``, the label weight
    of ``target_a``) over [0, 1] (λ = 1 in the last bin). A bin with at least ``min_per_bin`` samples is
    tested against the **whole** real feature set with :func:`mmd_test`: the unbiased MMD²'s expectation
    does not depend on the sample sizes, so bins of different sizes stay comparable, and the full real set
    gives the lowest-variance estimate and the most powerful test from the same data, with every bin
    measured against one reference. One RBF bandwidth, the median distance of all real and mixed
    features pooled, serves every bin, so the curve over λ compares one kernel's values (it does not
    depend on the permutation labels, so each test stays exact).

    Metrics (fractions, plain floats): ``"mmd/lam_<lo>_<hi>"`` and ``"mmd_p/lam_<lo>_<hi>"`` per bin
    (e.g. ``"mmd/lam_0.0_0.2"``; bins with fewer than ``min_per_bin`` samples are absent),
    ``"mmd_mixed_real"`` (their mean over those bins; absent when there is none), ``"intrusion_rate"``
    (:func:`intrusion_rate` of the softmax outputs over all mixed samples) and ``"kid"`` (:func:`kid`
    between all real and all mixed features). A mixer that draws one λ per batch (``lam_mode="batch"``,
    the default) yields ``ceil(s / batch_size)`` distinct λ values: use a smaller ``batch_size`` for a
    finer curve. Memory grows as ``(2 s)²`` (the pooled kernel matrix).

    Args:
        model: a classifier with ``features`` (callable) and ``head``, ``model(x) == head(features(x))``.
        mixer: a :class:`~mixlab.methods.base.Mixer`.
        x: raw inputs ``(N, ...)``, N >= 4; y: integer class indices ``(N,)`` (regression is refused).
        preprocess: raw batch on ``device`` -> model input (in mixlab ``lambda b: augment(b, train=False)``).
        n_bins: λ bins, 1 to 10 (keys carry one decimal).
        samples: samples per subset (real and mixed), >= 2.
        n_permutations: permutations per bin test; seed: seeds every draw.
        batch_size: samples per mixed batch and forward pass; device: as in
            :func:`~mixlab.evaluate.robustness.predict_logits`.
        min_per_bin: the fewest samples for a bin to be tested, >= 2.

    Example:
        >>> from mixlab.methods import create_mixer
        >>> from mixlab.models import create_model
        >>> net = create_model("cnn_small", num_classes=3)
        >>> x, y = torch.randint(0, 256, (80, 1, 28, 28), dtype=torch.uint8), torch.arange(80) % 3
        >>> mixer = create_mixer("mixup", lam=0.5)
        >>> result = mixed_real_gap(net, mixer, x, y, preprocess=lambda b: b.float() / 255, n_permutations=20)
        >>> sorted(result.metrics)
        ['intrusion_rate', 'kid', 'mmd/lam_0.4_0.6', 'mmd_mixed_real', 'mmd_p/lam_0.4_0.6']
        >>> result.curve["count"]
        [40.0]
    """
    _check_gap_model(model)
    if not isinstance(mixer, Mixer):
        raise MixlabTypeError(
            f"mixer must be a mixlab Mixer (e.g. create_mixer('mixup', alpha=1.0)); got {type(mixer).__name__}"
        )
    if isinstance(y, Tensor) and y.is_floating_point():
        raise MixlabValueError(
            f"mixed_real_gap needs class labels; y must be integer class indices (N,), got {y.dtype} "
            f"{tuple(y.shape)} (regression targets have no classes to intrude on)"
        )
    batch_size = check_model_inputs(model, x, y, preprocess, batch_size)
    if x.shape[0] < 4:
        raise MixlabValueError(f"x must hold at least 4 samples (two disjoint subsets of >= 2); got {x.shape[0]}")
    n_bins = check_int("n_bins", n_bins, minimum=1)
    if n_bins > MAX_BINS:
        raise MixlabValueError(f"n_bins must be at most {MAX_BINS} (bin keys carry one decimal); got {n_bins}")
    samples = check_int("samples", samples, minimum=2)
    n_permutations = check_int("n_permutations", n_permutations, minimum=1)
    seed = check_int("seed", seed)
    min_per_bin = check_int("min_per_bin", min_per_bin, minimum=2)

    generator = torch.Generator().manual_seed(seed)
    size = min(samples, x.shape[0] // 2)
    order = torch.randperm(x.shape[0], generator=generator)
    real_rows, mixed_rows = order[:size], order[size : 2 * size]
    preprocess = in_model_layout(model, preprocess)
    device = place_model(model, device)
    with eval_mode(model):
        real = _real_features(model, x[real_rows], preprocess, batch_size, device)
        mixed = _mixed_features(model, mixer, x[mixed_rows], y[mixed_rows], preprocess, batch_size, device, generator)
    return _gap_metrics(real, mixed, n_bins, n_permutations, seed, min_per_bin)


@dataclass
class _Mixed:
    """Per mixed sample: head-input features, softmax probabilities, λ and both sources' targets."""

    features: Tensor
    probs: Tensor
    lam: Tensor
    target_a: Tensor
    target_b: Tensor


def _gap_metrics(
    real: Tensor, mixed: _Mixed, n_bins: int, n_permutations: int, seed: int, min_per_bin: int
) -> GapResult:
    """The per-bin MMD tests, their mean, the intrusion rate and KID from collected features."""
    pooled = torch.cat([real, mixed.features]).to(float64_device(real.device), torch.float64)
    squared = _squared_distances(pooled)
    kernel = _rbf_kernel(squared, _median_distance(squared))
    n_real = real.shape[0]
    bins = torch.clamp((mixed.lam.to(pooled.device, torch.float64) * n_bins).floor().long(), 0, n_bins - 1)
    metrics: dict[str, float] = {}
    curve: dict[str, list[float]] = {"lam_mid": [], "mmd": [], "p": [], "count": []}
    for index in range(n_bins):  # a few bins; each test is vectorised
        members = torch.nonzero(bins == index).flatten()
        if members.numel() < min_per_bin:
            continue
        rows = torch.cat([torch.arange(n_real, device=kernel.device), n_real + members.to(kernel.device)])
        mmd2, p = _permutation_test(
            kernel[rows[:, None], rows],
            n_real,
            n_permutations,
            torch.Generator().manual_seed(_derived_seed(seed, 1, index)),
        )
        low, high = index / n_bins, (index + 1) / n_bins
        metrics[f"mmd/lam_{low:.1f}_{high:.1f}"] = mmd2
        metrics[f"mmd_p/lam_{low:.1f}_{high:.1f}"] = p
        for key, value in zip(curve, ((low + high) / 2, mmd2, p, float(members.numel())), strict=True):
            curve[key].append(value)
    if curve["mmd"]:
        metrics["mmd_mixed_real"] = float(np.mean(curve["mmd"]))
    metrics["intrusion_rate"] = intrusion_rate(mixed.probs, mixed.target_a, mixed.target_b)
    metrics["kid"] = kid(real, mixed.features, seed=_derived_seed(seed, 2))
    return GapResult(metrics, curve)


def _real_features(
    model: nn.Module, x: Tensor, preprocess: Preprocess, batch_size: int, device: torch.device
) -> Tensor:
    features = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            inputs = preprocess(x[start : start + batch_size].to(device))
            with _head_inputs(model) as caught:
                model(inputs)
            features.append(_one_head_call(caught, inputs.shape[0]))
    return torch.cat(features)


def _mixed_features(
    model: nn.Module,
    mixer: Mixer,
    x: Tensor,
    y: Tensor,
    preprocess: Preprocess,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
) -> _Mixed:
    """Mix ``(x, y)`` batch by batch as the engine does and collect what each mixed sample gives."""
    make_context = MixContext(mixer, model) if mixer.needs.anything else None
    parts: list[tuple[Tensor, ...]] = []
    for start in range(0, x.shape[0], batch_size):
        inputs = preprocess(x[start : start + batch_size].to(device))
        labels = y[start : start + batch_size].to(device=device, dtype=torch.long)
        context = {"model": model} if make_context is None else make_context(inputs, labels)
        # grad mode as in a training step: a mixer may differentiate through the model while mixing
        mb = mixer(inputs, labels, generator, context=context)
        with torch.no_grad(), _head_inputs(model) as caught:
            outputs = mb.forward(model).float()
        features = _one_head_call(caught, mb.batch_size)
        parts.append((features, outputs.softmax(dim=1), mb.lam.detach().float(), mb.target_a, mb.target_b))
    features, probs, lam, target_a, target_b = (torch.cat(column) for column in zip(*parts, strict=True))
    return _Mixed(features, probs, lam, target_a, target_b)


@contextmanager
def _head_inputs(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect, while inside, the input of every call of ``model.head`` (the penultimate features)."""
    caught: list[Tensor] = []

    def catch(_module: nn.Module, args: tuple[Any, ...]) -> None:
        caught.append(args[0].detach().float())

    handle = unwrap(model).head.register_forward_pre_hook(catch)
    try:
        yield caught
    finally:
        handle.remove()


def _one_head_call(caught: list[Tensor], rows: int) -> Tensor:
    if len(caught) != 1 or caught[0].ndim != 2 or caught[0].shape[0] != rows:
        shapes = [tuple(t.shape) for t in caught]
        raise MixlabValueError(
            f"model.head must be called once per forward on features (N={rows}, D); got calls with inputs {shapes}"
        )
    return caught[0]


def _check_gap_model(model: nn.Module) -> None:
    module = unwrap(model)
    head = getattr(module, "head", None)
    if not callable(getattr(module, "features", None)) or not isinstance(head, nn.Module):
        raise MixlabTypeError(
            f"mixed_real_gap needs a model with a callable features() and a head module (a mixlab Backbone); "
            f"got {type(module).__name__}"
        )


# ------------------------------------------------------------------ kernel helpers


def _check_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Both samples as float64 ``(n, D)`` on ``x``'s device, each with >= 2 rows and the same D."""
    for name, sample in (("x", x), ("y", y)):
        if not isinstance(sample, Tensor) or sample.ndim != 2 or sample.shape[0] < 2:
            shown = tuple(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__
            raise MixlabValueError(f"{name} must be a tensor of shape (n, D) with n >= 2 samples; got {shown}")
        if not bool(torch.isfinite(sample).all()):
            raise MixlabValueError(f"{name} must be finite; got NaN or infinite values")
    if x.shape[1] != y.shape[1]:
        raise MixlabValueError(f"x and y must have the same feature width; got {x.shape[1]} and {y.shape[1]}")
    where = float64_device(x.device)
    return x.to(where, torch.float64), y.to(where, torch.float64)


def _squared_distances(points: Tensor) -> Tensor:
    """``(N, N)`` squared Euclidean distances (float64, Gram form: one matrix product; exact zero diagonal)."""
    norms = points.square().sum(dim=1)
    squared = torch.addmm(norms[:, None] + norms[None, :], points, points.T, alpha=-2.0).clamp_min_(0.0)
    squared.fill_diagonal_(0.0)
    return squared


def _median_distance(squared: Tensor) -> float:
    """The median of the distances over pairs ``i < j`` (mean of the two middle ones for an even count)."""
    n = squared.shape[0]
    upper = torch.ones(n, n, dtype=torch.bool, device=squared.device).triu_(diagonal=1)
    distances = squared[upper].sqrt()
    count = distances.numel()
    low = distances.kthvalue((count + 1) // 2).values
    high = distances.kthvalue(count // 2 + 1).values
    return float((low + high) / 2)


def _rbf_kernel(squared: Tensor, bandwidth: float | None) -> Tensor:
    if bandwidth is None:
        bandwidth = _median_distance(squared)
        if bandwidth <= 0.0:
            raise MixlabValueError(
                "the median heuristic gave bandwidth 0 (at least half the pooled pairs coincide); pass bandwidth > 0"
            )
    bandwidth = check_positive("bandwidth", bandwidth)
    return squared.div(-2.0 * bandwidth**2).exp_()


def _permutation_test(kernel: Tensor, n: int, n_permutations: int, generator: torch.Generator) -> tuple[float, float]:
    """``(MMD²_u, p)`` for the first ``n`` rows of the pooled ``kernel`` against the rest.

    With a 0/1 row ``a`` marking the first sample and ``K0`` the kernel with a zero diagonal:
    ``Σ_{x≠x'} k = aᵀK0a``, ``Σ_{x,y} k = aᵀr - aᵀK0a`` and ``Σ_{y≠y'} k = 1ᵀr - 2aᵀr + aᵀK0a``
    with ``r = K0 1``; one product ``A K0`` gives a chunk of permutations at once.
    """
    total = kernel.shape[0]
    zero_diagonal = kernel.clone().fill_diagonal_(0.0)
    row_sums = zero_diagonal.sum(dim=1)
    identity = torch.zeros(1, total, dtype=kernel.dtype, device=kernel.device)
    identity[0, :n] = 1.0
    observed = _label_statistics(zero_diagonal, row_sums, identity, n)[0]
    chunk = max(1, min(n_permutations, _CHUNK_ELEMENTS // total))
    at_least = 0
    for start in range(0, n_permutations, chunk):  # chunks of permutations, each one matrix product
        count = min(chunk, n_permutations - start)
        order = torch.rand(count, total, generator=generator, dtype=torch.float64).argsort(dim=1)
        labels = torch.zeros(count, total, dtype=kernel.dtype).scatter_(1, order[:, :n], 1.0).to(kernel.device)
        permuted = _label_statistics(zero_diagonal, row_sums, labels, n)
        at_least += int((permuted >= observed - TIE_TOLERANCE).sum())
    return float(observed), (1 + at_least) / (1 + n_permutations)


def _label_statistics(zero_diagonal: Tensor, row_sums: Tensor, labels: Tensor, n: int) -> Tensor:
    """MMD²_u for each row of ``labels`` (0/1, ``n`` ones marking the first sample)."""
    m = zero_diagonal.shape[0] - n
    within_x = (labels @ zero_diagonal * labels).sum(dim=1)
    to_all = labels @ row_sums
    between = to_all - within_x
    within_y = row_sums.sum() - 2.0 * to_all + within_x
    return within_x / (n * (n - 1)) + within_y / (m * (m - 1)) - 2.0 * between / (n * m)


def _polynomial_mmd2(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD² of equal-size samples with the cubic kernel ``(a·b / D + 1)³``."""
    size, width = x.shape

    def cubic(a: Tensor, b: Tensor) -> Tensor:  # in place after the product: the allocations dominate on CPU
        return torch.addmm(torch.ones((), dtype=a.dtype, device=a.device), a, b.T, alpha=1.0 / width).pow_(3)

    kxx, kyy, kxy = cubic(x, x), cubic(y, y), cubic(x, y)
    within = kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()
    return within / (size * (size - 1)) - 2.0 * kxy.sum() / size**2


def _as_class_indices(name: str, targets: Tensor, probs: Tensor) -> Tensor:
    if not isinstance(targets, Tensor) or targets.shape[:1] != probs.shape[:1] or targets.ndim not in (1, 2):
        shown = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise MixlabValueError(f"{name} must be class indices (N={probs.shape[0]},) or soft labels (N, K); got {shown}")
    if targets.ndim == 2:
        return targets.argmax(dim=1).to(probs.device)
    if targets.is_floating_point():
        raise MixlabValueError(f"{name} must hold integer class indices; got {targets.dtype}")
    return targets.to(probs.device)


def _derived_seed(seed: int, *parts: int) -> int:
    """An independent seed for one part of the analysis (a bin's permutations, KID's subsets)."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


__all__ = ["GapResult", "intrusion_rate", "kid", "median_bandwidth", "mixed_real_gap", "mmd2_unbiased", "mmd_test"]
