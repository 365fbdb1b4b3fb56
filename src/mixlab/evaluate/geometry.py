"""The geometry of a trained classifier: neural collapse of its penultimate features, and the flatness of its loss.

Neural collapse (Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep
learning training", PNAS 2020, arXiv 2008.08186) is measured on the training features ``h = model.features(x)``
of K classes, with class means μ_c, their average μ_G = (1/K) Σ_c μ_c (the unweighted mean of the class means:
Papyan's global mean for balanced classes, and with it the centred means M_c = μ_c − μ_G sum to zero whatever
the class sizes), Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ and Σ_B = (1/K) Σ_c M_c M_cᵀ:

- ``nc1`` = tr(Σ_W Σ_B^†) / K, within-class variability relative to between-class (0 when collapsed);
- ``nc2_norm`` = std_c ‖M_c‖ / mean_c ‖M_c‖ (equinorm; population std; 0 for a simplex ETF);
- ``nc2_angle`` = std over the pairs c < c' of cos(M_c, M_c') (equiangularity; population std; 0 for a simplex
  ETF, whose cosines all equal −1/(K−1)). Papyan et al. also plot mean_{c≠c'} |cos(M_c, M_c') + 1/(K−1)|, which
  is 0 only at the maximal angle; the std is kept here because it isolates equiangularity from the angle's size
  (for K = 2 the one pair makes it 0 always);
- ``nc3`` = ‖W/‖W‖_F − M/‖M‖_F‖_F², W the head's weight (K×D) and M the centred means (K×D) (self-duality;
  0 when W ∝ M, 2 when orthogonal, 4 when W ∝ −M);
- ``nc4`` = share of samples whose nearest class mean argmin_c ‖h − μ_c‖ is not the model's prediction.

The flatness measures are :func:`hessian_trace` (Hutchinson's estimator) and :func:`sharpness_avg` (average-case
sharpness under relative Gaussian weight noise).

Example:
    >>> etf = torch.eye(3) - 1 / 3                      # a simplex ETF: three class means, equal norms and angles
    >>> features, labels = etf.repeat(4, 1), torch.arange(3).repeat(4)
    >>> nc = neural_collapse_from_features(features, labels, head_weight=2 * etf, num_classes=3)
    >>> {key: round(value, 6) + 0.0 for key, value in nc.items()}
    {'nc1': 0.0, 'nc2_norm': 0.0, 'nc2_angle': 0.0, 'nc3': 0.0}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int, check_positive
from mixlab.evaluate.running import (
    DeviceLike,
    Preprocess,
    batches,
    check_class_labels,
    check_model_inputs,
    eval_mode,
    float64_device,
    in_model_layout,
    place_model,
    seeded_indices,
)

LossFn = Callable[[Tensor, Tensor], Tensor]

#: singular values of the centred class means below this share of the largest are treated as 0 in Σ_B^†
PINV_RTOL = 1e-10


# ------------------------------------------------------------------ neural collapse


def neural_collapse(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    preprocess: Preprocess,
    num_classes: int,
    batch_size: int = 1000,
    device: DeviceLike = None,
) -> dict[str, float]:
    """The neural-collapse measures ``nc1``, ``nc2_norm``, ``nc2_angle``, ``nc3``, ``nc4`` of a model on (x, y).

    The formulas are in the module docstring (Papyan, Han & Donoho, PNAS 2020, arXiv 2008.08186). Features
    ``model.features(preprocess(x))`` are streamed batch by batch in eval mode without gradients: one pass keeps
    per-class sums and counts and a single D×D within-class scatter in float64; a second pass finds each sample's
    nearest class mean for ``nc4`` (the prediction is ``model.head(features)``, which is ``model(x)`` for a
    mixlab Backbone). All features are never held at once. Every class in ``range(num_classes)`` must occur in
    ``y`` (a missing class is refused, not skipped: the head has a row for it and NC3 compares all rows). A
    measure that is undefined (all class means equal; a class mean at μ_G for ``nc2_angle``; a zero head) is
    absent from the result.

    Args:
        model: a Backbone-like model with ``features(x) -> (N, D)`` and an ``nn.Linear`` ``head``.
        x: raw training inputs ``(N, ...)``; y: class indices ``(N,)``.
        preprocess: maps a raw batch on ``device`` to the model's input.
        num_classes: K, >= 2, the head's output width.
        batch_size, device: as in :func:`mixlab.evaluate.robustness.predict_logits`.

    Example:
        >>> from mixlab.models import create_model
        >>> net = create_model("mlp", num_classes=3, in_channels=4)
        >>> x, y = torch.randn(30, 4), torch.arange(30) % 3
        >>> sorted(neural_collapse(net, x, y, preprocess=lambda b: b, num_classes=3))
        ['nc1', 'nc2_angle', 'nc2_norm', 'nc3', 'nc4']
    """
    num_classes = _check_feature_model(model, num_classes)
    batch_size = check_model_inputs(model, x, y, preprocess, batch_size)
    _check_label_range(y, num_classes)
    preprocess = in_model_layout(model, preprocess)
    device = place_model(model, device)
    stats = _ClassStatistics(num_classes, float64_device(device))
    with eval_mode(model), torch.no_grad():
        for raw, labels in batches(x, y, batch_size, device):
            stats.add(model.features(preprocess(raw)), labels)
        means = stats.finish()
        metrics = _collapse_metrics(stats, model.head.weight)
        if metrics:
            disagreeing = 0
            for raw, _labels in batches(x, y, batch_size, device):
                features = model.features(preprocess(raw))
                disagreeing += _count_nearest_mean_disagreements(features, model.head(features), means)
            metrics["nc4"] = disagreeing / x.shape[0]
    return metrics


def neural_collapse_from_features(
    features: Tensor, labels: Tensor, head_weight: Tensor, num_classes: int, logits: Tensor | None = None
) -> dict[str, float]:
    """The neural-collapse measures of given features; as :func:`neural_collapse`, for features already computed.

    ``nc4`` needs the model's predictions, so it is present only when ``logits`` (N, K) are given. Papyan, Han &
    Donoho, PNAS 2020, arXiv 2008.08186; the formulas are in the module docstring.

    Args:
        features: ``(N, D)`` penultimate features; labels: class indices ``(N,)``, every class present.
        head_weight: the linear head's weight ``(K, D)``.
        num_classes: K, >= 2.
        logits: the model's logits ``(N, K)`` on these samples, for ``nc4``.

    Example:
        >>> means = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
        >>> features = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> nc = neural_collapse_from_features(features, labels, means, 2)  # spread orthogonal to the class means
        >>> round(nc["nc1"], 6), round(nc["nc3"], 6)
        (0.0, 0.0)
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] == 0:
        shown = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise MixlabValueError(f"features must be a tensor (N, D) with N >= 1; got {shown}")
    check_class_labels(labels, features.shape[0], "features")
    _check_label_range(labels, num_classes)
    if not isinstance(head_weight, Tensor) or tuple(head_weight.shape) != (num_classes, features.shape[1]):
        shown = tuple(head_weight.shape) if isinstance(head_weight, Tensor) else type(head_weight).__name__
        raise MixlabValueError(
            f"head_weight must have shape (K, D) = ({num_classes}, {features.shape[1]}); got {shown}"
        )
    if logits is not None and (
        not isinstance(logits, Tensor) or tuple(logits.shape) != (features.shape[0], num_classes)
    ):
        shown = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise MixlabValueError(f"logits must have shape (N, K) = ({features.shape[0]}, {num_classes}); got {shown}")
    stats = _ClassStatistics(num_classes, float64_device(features.device))
    stats.add(features.detach(), labels.to(features.device))
    means = stats.finish()
    metrics = _collapse_metrics(stats, head_weight.detach())
    if metrics and logits is not None:
        disagreeing = _count_nearest_mean_disagreements(features.detach(), logits.detach(), means)
        metrics["nc4"] = disagreeing / features.shape[0]
    return metrics


class _ClassStatistics:
    """Running per-class sums and counts and the within-class scatter of streamed features, in float64.

    Each class's rows are shifted by a fixed reference (its mean in the first batch it appears in) before
    accumulating, so that Σ (h − s)(h − s)ᵀ − Σ_c n_c (μ_c − s_c)(μ_c − s_c)ᵀ does not cancel two large numbers
    when the features sit far from the origin; the result does not depend on the shifts (beyond rounding).
    """

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes, self.device = num_classes, device
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.shifts: Tensor | None = None  # (K, D) once the feature width is known
        self.shifted_sums: Tensor | None = None
        self.scatter: Tensor | None = None
        self.means: Tensor | None = None
        self.within: Tensor | None = None

    def add(self, features: Tensor, labels: Tensor) -> None:
        if features.ndim != 2 or features.shape[0] != labels.shape[0]:
            raise MixlabValueError(
                f"features must be (N, D) for N = {labels.shape[0]} samples; got shape {tuple(features.shape)}"
            )
        features = features.to(self.device, torch.float64)
        labels = labels.to(self.device)
        if self.shifts is None:
            width = features.shape[1]
            self.shifts = features.new_zeros(self.num_classes, width)
            self.shifted_sums = features.new_zeros(self.num_classes, width)
            self.scatter = features.new_zeros(width, width)
        batch_counts = torch.bincount(labels, minlength=self.num_classes).double()
        new = (self.counts == 0) & (batch_counts > 0)
        if bool(new.any()):
            batch_sums = features.new_zeros(self.shifts.shape).index_add_(0, labels, features)
            self.shifts[new] = batch_sums[new] / batch_counts[new, None]
        shifted = features - self.shifts[labels]
        self.scatter += shifted.T @ shifted
        self.shifted_sums.index_add_(0, labels, shifted)
        self.counts += batch_counts

    def finish(self) -> Tensor:
        """The class means (K, D) in float64; sets ``means`` and ``within`` (Σ_W)."""
        missing = (self.counts == 0).nonzero().flatten().tolist()
        if missing:
            raise MixlabValueError(
                f"every class in range({self.num_classes}) must occur in the data; classes {missing} have no sample"
            )
        assert self.shifts is not None and self.shifted_sums is not None and self.scatter is not None
        offsets = self.shifted_sums / self.counts[:, None]  # μ_c − s_c
        self.means = self.shifts + offsets
        between_part = (offsets * self.counts[:, None]).T @ offsets  # Σ_c n_c (μ_c − s_c)(μ_c − s_c)ᵀ
        self.within = (self.scatter - between_part) / self.counts.sum()
        return self.means


def _collapse_metrics(stats: _ClassStatistics, head_weight: Tensor) -> dict[str, float]:
    """NC1-NC3 from finished statistics; empty when all class means coincide (Σ_B = 0: nothing is defined)."""
    assert stats.means is not None and stats.within is not None
    centred = stats.means - stats.means.mean(dim=0)
    norms = centred.norm(dim=1)
    if float(norms.max()) == 0.0:
        return {}
    # Σ_B = MᵀM/K, so Σ_B^† = K M⁺M⁺ᵀ and tr(Σ_W Σ_B^†)/K = tr(M⁺ᵀ Σ_W M⁺): the pseudo-inverse of the small K×D
    # matrix M, whose condition number is the square root of Σ_B's
    pinv = torch.linalg.pinv(centred, rtol=PINV_RTOL)  # (D, K)
    metrics = {
        "nc1": float(((stats.within @ pinv) * pinv).sum()),
        "nc2_norm": float(norms.std(correction=0) / norms.mean()),
    }
    if float(norms.min()) > 0.0:
        unit = centred / norms[:, None]
        rows, cols = torch.triu_indices(stats.num_classes, stats.num_classes, offset=1, device=unit.device)
        metrics["nc2_angle"] = float((unit @ unit.T)[rows, cols].std(correction=0))
    weight = head_weight.to(centred.device, torch.float64)
    weight_norm = weight.norm()
    if float(weight_norm) > 0.0:
        metrics["nc3"] = float((weight / weight_norm - centred / centred.norm()).pow(2).sum())
    return metrics


def _count_nearest_mean_disagreements(features: Tensor, logits: Tensor, means: Tensor) -> int:
    """How many samples' nearest class mean (Euclidean, float64) differs from the argmax of their logits."""
    if logits.ndim != 2 or logits.shape[1] != means.shape[0]:
        raise MixlabValueError(f"the logits must be (N, {means.shape[0]}) (num_classes); got {tuple(logits.shape)}")
    nearest = torch.cdist(features.to(means.device, torch.float64), means).argmin(dim=1)
    return int((nearest != logits.argmax(dim=1).to(means.device)).sum())


# ------------------------------------------------------------------ flatness


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    preprocess: Preprocess,
    n_probes: int = 20,
    seed: int = 0,
    batch_size: int = 1000,
    device: DeviceLike = None,
) -> float:
    """Hutchinson's estimate of tr(H), H the Hessian of the mean loss over (x, y) w.r.t. the trainable parameters.

    tr(H) ≈ (1/P) Σ_p v_pᵀ H v_p with P = ``n_probes`` Rademacher vectors v_p (entries ±1, seeded by ``seed``)
    over all parameters with ``requires_grad``; E[vᵀHv] = tr(H), the error of one probe has variance
    2 Σ_{i≠j} H_ij², so it is exact for a diagonal H. Hutchinson, Commun. Stat. Simul. Comput. 1990; as used for
    networks by Yao et al., "PyHessian", IEEE BigData 2020, arXiv 1912.07145 (written here from the formula).
    The loss is L(w) = Σ_b (n_b / N) ``loss_fn(model(preprocess(x_b)), y_b)`` over batches b of ``batch_size``,
    so ``loss_fn`` must return the mean over its batch (as ``F.cross_entropy`` does); H v comes from double
    backpropagation (``torch.autograd.grad`` with ``create_graph=True``). The model runs in eval mode, so
    BatchNorm uses its running statistics and dropout is off: the function is deterministic given ``seed``. The
    parameters, their ``requires_grad`` and ``.grad``, and every submodule's train/eval mode are left as they were.

    Args:
        model: any ``nn.Module`` with at least one trainable parameter.
        loss_fn: ``(outputs, y_batch) -> scalar`` mean loss.
        x: raw inputs ``(N, ...)`` (a fixed subset chosen by the caller); y: their targets ``(N, ...)``.
        preprocess: maps a raw batch on ``device`` to the model's input.
        n_probes: Rademacher probes, >= 1; seed: their seed.
        batch_size, device: as in :func:`mixlab.evaluate.robustness.predict_logits`.

    Example:
        >>> model = torch.nn.Linear(3, 1, bias=False)
        >>> x = torch.eye(3) * torch.tensor([[1.0], [2.0], [3.0]])  # L = mean_i ½(x_i·w)²: H = diag(1, 4, 9) / 3
        >>> mse = lambda out, target: 0.5 * (out.squeeze(1) - target).pow(2).mean()
        >>> round(hessian_trace(model, mse, x, torch.zeros(3), preprocess=lambda b: b, n_probes=2), 6)
        4.666667
    """
    n_probes = check_int("n_probes", n_probes, minimum=1)
    batch_size, params, preprocess, device = _check_flatness_inputs(
        model, loss_fn, x, y, preprocess, batch_size, device, seed
    )
    probe_seeds = torch.randint(0, 2**62, (n_probes,), generator=torch.Generator().manual_seed(seed)).tolist()
    totals = [0.0] * n_probes
    with eval_mode(model), torch.enable_grad():
        for raw, targets in _target_batches(x, y, batch_size, device):
            with torch.no_grad():
                inputs = preprocess(raw)
            loss = _checked_loss(loss_fn, model(inputs), targets)
            gradients = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            # a gradient without a graph is constant in the weights: its rows of H are 0
            curved = [(i, g) for i, g in enumerate(gradients) if g is not None and g.requires_grad]
            weight = raw.shape[0] / x.shape[0]
            for index, probe_seed in enumerate(probe_seeds):
                # the same probe for every batch: its own generator, reseeded (no P-sized probes kept)
                probe = _rademacher(params, probe_seed)
                totals[index] += weight * _probe_curvature(curved, params, probe)
            del gradients, curved, loss
    return sum(totals) / n_probes


def sharpness_avg(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    preprocess: Preprocess,
    sigma: float = 0.01,
    n_draws: int = 5,
    seed: int = 0,
    batch_size: int = 1000,
    device: DeviceLike = None,
) -> float:
    """Average-case sharpness: the mean over ``n_draws`` of L(w + ε) − L(w), ε_i ~ N(0, (σ |w_i|)²) elementwise.

    The noise is relative (σ times each trainable weight's magnitude, so it is invariant to rescaling a layer
    and leaves zero weights alone) and drawn from a CPU generator seeded by ``seed``. L is the mean loss over
    (x, y) as in :func:`hessian_trace` (``loss_fn`` returns a batch mean), computed in eval mode (deterministic).
    Average (rather than worst-case) sharpness after Keskar et al., "On Large-Batch Training for Deep Learning:
    Generalization Gap and Sharp Minima", ICLR 2017, arXiv 1609.04836, and the magnitude-aware average
    sharpness of Jiang et al., "Fantastic Generalization Measures and Where to Find Them", ICLR 2020,
    arXiv 1912.02178. The weights are copied before and restored bitwise after (also on error); their
    ``requires_grad``, ``.grad`` and the modules' train/eval modes are left as they were. For a smooth loss,
    E[L(w + ε) − L(w)] ≈ ½ σ² Σ_i H_ii w_i² at a minimum.

    Args:
        model: any ``nn.Module`` with at least one trainable parameter.
        loss_fn: ``(outputs, y_batch) -> scalar`` mean loss.
        x: raw inputs ``(N, ...)``; y: targets ``(N, ...)``.
        preprocess: maps a raw batch on ``device`` to the model's input.
        sigma: relative noise size, > 0; n_draws: draws, >= 1; seed: their seed.
        batch_size, device: as in :func:`mixlab.evaluate.robustness.predict_logits`.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)  # doctest: +ELLIPSIS
        (...)
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> sharpness_avg(model, torch.nn.functional.cross_entropy, x, y, preprocess=lambda b: b)  # zero weights: no noise
        0.0
    """
    sigma = check_positive("sigma", sigma)
    n_draws = check_int("n_draws", n_draws, minimum=1)
    batch_size, params, preprocess, device = _check_flatness_inputs(
        model, loss_fn, x, y, preprocess, batch_size, device, seed
    )
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model), torch.no_grad(), _restored(params) as originals:
        base = _mean_loss(model, loss_fn, x, y, preprocess, batch_size, device)
        increase = 0.0
        for _ in range(n_draws):
            for param, original in zip(params, originals, strict=True):
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                param.copy_(original + sigma * original.abs() * noise.to(device=original.device, dtype=original.dtype))
            increase += _mean_loss(model, loss_fn, x, y, preprocess, batch_size, device) - base
    return increase / n_draws


def geometry_metrics(
    model: nn.Module,
    train_x: Tensor,
    train_y: Tensor,
    *,
    preprocess: Preprocess,
    num_classes: int,
    hessian_samples: int = 512,
    n_probes: int = 10,
    sharpness_sigma: float = 0.01,
    sharpness_draws: int = 5,
    seed: int = 0,
    batch_size: int = 1000,
    device: DeviceLike = None,
    nc_samples: int | None = None,
) -> dict[str, float]:
    """Neural collapse and flatness of a trained classifier on its training data, under the cross-entropy loss.

    Keys ``nc1``, ``nc2_norm``, ``nc2_angle``, ``nc3``, ``nc4`` (:func:`neural_collapse`, on all of
    (train_x, train_y), or on a seeded subset of ``nc_samples``), ``hessian_trace`` (:func:`hessian_trace`) and
    ``sharpness_avg`` (:func:`sharpness_avg`), both on one fixed seeded subset of ``hessian_samples`` training
    samples, with ``F.cross_entropy`` on class indices. Papyan, Han & Donoho, PNAS 2020, arXiv 2008.08186;
    Yao et al., arXiv 1912.07145; Jiang et al., ICLR 2020, arXiv 1912.02178.

    Args:
        model: a Backbone-like model (``features`` and an ``nn.Linear`` ``head``).
        train_x: raw training inputs ``(N, ...)``; train_y: class indices ``(N,)``.
        preprocess: maps a raw batch on ``device`` to the model's input.
        num_classes: K, >= 2.
        hessian_samples: size of the subset for the Hessian trace and the sharpness.
        n_probes: Rademacher probes of the Hessian trace.
        sharpness_sigma, sharpness_draws: relative noise size and draws of the sharpness.
        seed: seed of the subsets, the probes and the noise.
        batch_size: samples per pass (the Hessian uses at most 256 per pass: double backprop keeps the graph).
        device: as in :func:`mixlab.evaluate.robustness.predict_logits`.
        nc_samples: training samples for neural collapse (``None``: all).

    Example:
        >>> from mixlab.models import create_model
        >>> net = create_model("mlp", num_classes=2, in_channels=3)
        >>> x, y = torch.randn(20, 3), torch.arange(20) % 2
        >>> sorted(geometry_metrics(net, x, y, preprocess=lambda b: b, num_classes=2, hessian_samples=8, n_probes=2))
        ['hessian_trace', 'nc1', 'nc2_angle', 'nc2_norm', 'nc3', 'nc4', 'sharpness_avg']
    """
    num_classes = _check_feature_model(model, num_classes)
    check_model_inputs(model, train_x, train_y, preprocess, batch_size)
    hessian_samples = check_int("hessian_samples", hessian_samples, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if nc_samples is not None:
        nc_samples = check_int("nc_samples", nc_samples, minimum=1)
    common = {"preprocess": preprocess, "batch_size": batch_size, "device": device}
    nc_x, nc_y = _seeded_subset(train_x, train_y, nc_samples, seed)
    metrics = neural_collapse(model, nc_x, nc_y, num_classes=num_classes, **common)
    flat_x, flat_y = _seeded_subset(train_x, train_y, hessian_samples, seed)
    metrics["hessian_trace"] = hessian_trace(
        model,
        F.cross_entropy,
        flat_x,
        flat_y,
        n_probes=n_probes,
        seed=seed,
        **{**common, "batch_size": min(batch_size, 256)},
    )
    metrics["sharpness_avg"] = sharpness_avg(
        model, F.cross_entropy, flat_x, flat_y, sigma=sharpness_sigma, n_draws=sharpness_draws, seed=seed, **common
    )
    return metrics


# ------------------------------------------------------------------ helpers


def _mean_loss(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    preprocess: Preprocess,
    batch_size: int,
    device: torch.device,
) -> float:
    total = 0.0
    for raw, targets in _target_batches(x, y, batch_size, device):
        total += raw.shape[0] * float(_checked_loss(loss_fn, model(preprocess(raw)), targets))
    return total / x.shape[0]


def _checked_loss(loss_fn: LossFn, outputs: Tensor, targets: Tensor) -> Tensor:
    loss = loss_fn(outputs, targets)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shown = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise MixlabValueError(f"loss_fn must return a scalar tensor (the batch mean); got {shown}")
    return loss.reshape(())


def _target_batches(x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    # targets keep their dtype: class indices for cross-entropy, floats for a regression loss
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)


def _probe_curvature(curved: list[tuple[int, Tensor]], params: list[Tensor], probe: list[Tensor]) -> float:
    """vᵀHv for the probe v: (∂/∂w)(gᵀv) = Hv by a second backward pass through the gradient g."""
    if not curved:
        return 0.0
    products = torch.autograd.grad(
        [g for _, g in curved], params, grad_outputs=[probe[i] for i, _ in curved], retain_graph=True, allow_unused=True
    )
    where = float64_device(params[0].device)
    return sum(
        float((v.to(where, torch.float64) * hv.to(where, torch.float64)).sum())
        for v, hv in zip(probe, products, strict=True)
        if hv is not None
    )


def _rademacher(params: list[Tensor], seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(device=p.device, dtype=p.dtype) for p in params
    ]


@contextmanager
def _restored(params: list[Tensor]) -> Iterator[list[Tensor]]:
    """Every parameter's values copied before the block (the copies are yielded) and written back, bitwise, after."""
    saved = [p.detach().clone() for p in params]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for param, values in zip(params, saved, strict=True):
                param.copy_(values)


def _seeded_subset(x: Tensor, y: Tensor, size: int | None, seed: int) -> tuple[Tensor, Tensor]:
    keep = seeded_indices(x.shape[0], size, seed)
    return (x, y) if keep is None else (x[keep.to(x.device)], y[keep.to(y.device)])


def _check_feature_model(model: nn.Module, num_classes: int) -> int:
    num_classes = check_int("num_classes", num_classes, minimum=2)
    if not callable(getattr(model, "features", None)):
        raise MixlabTypeError(
            f"neural collapse needs a model with features(x) -> (N, D) and a linear head (a mixlab Backbone); "
            f"got {type(model).__name__}, which has no features()"
        )
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise MixlabTypeError(
            f"neural collapse needs model.head to be a torch.nn.Linear; got {type(head).__name__} on {type(model).__name__}"
        )
    if head.out_features != num_classes:
        raise MixlabValueError(f"num_classes must match the head's {head.out_features} outputs; got {num_classes}")
    return num_classes


def _check_label_range(labels: Tensor, num_classes: int) -> None:
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise MixlabValueError(f"labels must be class indices in [0, {num_classes}); got values from {low} to {high}")


def _check_flatness_inputs(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    preprocess: Preprocess,
    batch_size: int,
    device: DeviceLike,
    seed: int,
) -> tuple[int, list[Tensor], Preprocess, torch.device]:
    """Checks shared by the Hessian trace and the sharpness; returns (batch_size, trainable params, preprocess, device)."""
    if not isinstance(model, nn.Module):
        raise MixlabTypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not callable(loss_fn):
        raise MixlabTypeError(f"loss_fn must be callable (outputs, targets) -> scalar; got {type(loss_fn).__name__}")
    check_int("seed", seed, minimum=0)
    batch_size = check_model_inputs(model, x, None, preprocess, batch_size)
    if not isinstance(y, Tensor) or y.ndim == 0 or y.shape[0] != x.shape[0]:
        shown = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise MixlabValueError(f"y must be a tensor (N, ...) with N = {x.shape[0]} targets; got {shown}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise MixlabValueError(
            f"the model must have trainable parameters (requires_grad); {type(model).__name__} has none"
        )
    return batch_size, params, in_model_layout(model, preprocess), place_model(model, device)
