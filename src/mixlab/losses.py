"""Losses for mixed batches: mixed soft cross-entropy, mixed BCE, BCE on softmax, Decoupled Mixup, RegMixup, RankMixup.

Every loss takes the :class:`~mixlab.batch.MixedBatch` the mixer returned and
accepts a per-sample ``lam``. Log-probabilities are computed in float32 so
the losses are safe under autocast.

Sources per sample: :func:`mixed_cross_entropy`, :func:`mixed_bce`,
:func:`bce_softmax` and :func:`regmixup_loss` score batches that mix any number
of inputs (``mb.sources``/``mb.weights``, e.g. Co-Mixup, AdAutoMix);
:func:`decoupled_mixup_loss` and :func:`rankmixup_loss` are defined for two
sources only and refuse a batch with more.

Example:
    >>> import torch, mixlab
    >>> x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    >>> mb = mixlab.create_mixer("mixup")(x, y, generator=torch.Generator().manual_seed(0))
    >>> loss = mixlab.losses.mixed_cross_entropy(torch.randn(4, 3), mb, smoothing=0.1)
    >>> loss.ndim
    0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.batch import MixedBatch, _check_class_indices, check_soft_labels
from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice, check_non_negative, check_probability

REDUCTIONS = ("mean", "sum", "none")
REGMIXUP_SCALINGS = ("code", "paper")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    check_choice("reduction", reduction, REDUCTIONS)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def _check_logits(logits: Tensor, n: int, what: str = "logits") -> int:
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise MixlabValueError(f"{what} must be a floating tensor (N, num_classes); got {shape}")
    if logits.shape[0] != n:
        raise MixlabValueError(f"{what} have {logits.shape[0]} rows but the batch has {n} samples")
    return int(logits.shape[1])


def _check_targets(y: Tensor, num_classes: int, n: int) -> None:
    if y.ndim < 1 or y.shape[0] != n:
        raise MixlabValueError(f"targets must have one row per logits row ({n}); got shape {tuple(y.shape)}")
    if y.is_floating_point():
        if y.shape != (y.shape[0], num_classes):
            raise MixlabValueError(f"soft labels must have shape (N, {num_classes}); got {tuple(y.shape)}")
        check_soft_labels(y)
    else:
        _check_class_indices(y, num_classes)


def cross_entropy(logits: Tensor, y: Tensor, smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """Cross-entropy on clean data for class indices or soft labels, with label smoothing.

    Label smoothing: Szegedy et al., CVPR 2016, arXiv 1512.00567.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0]])
        >>> torch.isclose(cross_entropy(logits, torch.tensor([0])), torch.nn.functional.cross_entropy(logits, torch.tensor([0])))
        tensor(True)
    """
    return mixed_cross_entropy(logits, MixedBatch.unmixed(logits, y), smoothing=smoothing, reduction=reduction)


def mixed_cross_entropy(logits: Tensor, mb: MixedBatch, smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """``lam * CE(z, y_a) + (1 - lam) * CE(z, y_b)`` per sample, with optional label smoothing.

    Mixup's loss (Zhang et al., ICLR 2018, arXiv 1710.09412). With ``lam`` in
    {0, 1} it equals the plain cross-entropy on the corresponding target. A batch
    of ``K > 2`` sources is scored as ``sum_k weights[:, k] * CE(z, y[sources[:, k]])``.

    Args:
        logits: ``(N, K)`` model outputs on ``mb``.
        mb: the mixed batch (class-index or soft-label targets).
        smoothing: label-smoothing mass in [0, 1].
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample losses).

    Example:
        >>> y = torch.tensor([1])
        >>> mb = MixedBatch(torch.zeros(1, 1), y, torch.tensor([0]), torch.tensor([1.0]), torch.tensor([0]))
        >>> float(mixed_cross_entropy(torch.tensor([[0.0, 0.0]]), mb))
        0.6931471824645996
    """
    smoothing = check_probability("smoothing", smoothing)
    k = _check_logits(logits, mb.batch_size)
    _check_targets(mb.target_a, k, mb.batch_size)
    _check_targets(mb.target_b, k, mb.batch_size)
    log_p = F.log_softmax(logits.float(), dim=-1)
    if mb.target_a.is_floating_point():
        per_sample = -(mb.soft_targets(k, smoothing) * log_p).sum(dim=-1)
        return _reduce(per_sample, reduction)
    if mb.num_sources > 2:
        _check_class_indices(mb.source_targets, k)
        nll = -log_p.gather(1, mb.source_targets.long())
        per_sample = (mb.weights.to(log_p.device, torch.float32) * nll).sum(dim=1)
        if smoothing:
            per_sample = (1.0 - smoothing) * per_sample - smoothing * log_p.mean(dim=-1)
        return _reduce(per_sample, reduction)
    lam = mb.lam.to(log_p.device, torch.float32)
    nll_a = -log_p.gather(1, mb.target_a.long().unsqueeze(1)).squeeze(1)
    nll_b = -log_p.gather(1, mb.target_b.long().unsqueeze(1)).squeeze(1)
    per_sample = lam * nll_a + (1.0 - lam) * nll_b
    if smoothing:
        per_sample = (1.0 - smoothing) * per_sample - smoothing * log_p.mean(dim=-1)
    return _reduce(per_sample, reduction)


BCE_CLASS_REDUCTIONS = ("mean", "sum")


def mixed_bce(
    logits: Tensor,
    mb: MixedBatch,
    smoothing: float = 0.0,
    target_threshold: float | None = None,
    reduction: str = "mean",
    class_reduction: str = "mean",
) -> Tensor:
    """One-vs-all sigmoid cross-entropy on the mixed (optionally smoothed) target.

    The target is the mixed soft label, each source smoothed as timm does
    (``1 - s + s/K`` on its class, ``s/K`` elsewhere). With ``target_threshold``
    it is binarised (``target > threshold``). The per-sample loss is the mean over
    classes (``class_reduction="sum"``: the sum, timm's ``sum_classes=True``), then
    ``reduction`` runs over samples; the default equals ``BCEWithLogitsLoss``'s mean
    over all ``N * K`` terms, as timm's ``BinaryCrossEntropy``
    (``timm/loss/binary_cross_entropy.py``) computes it.

    DeiT III (Touvron et al., ECCV 2022, arXiv 2204.07118; facebookresearch/deit
    ``main.py``/``engine.py`` with ``--bce-loss``, ``--smoothing 0.0``) trains with
    ``target_threshold=0.0``: both mixed classes become positives (a two-hot target).

    Args:
        logits: ``(N, K)`` model outputs on ``mb``.
        mb: the mixed batch (any number of sources).
        smoothing: label-smoothing mass in [0, 1].
        target_threshold: in [0, 1], or ``None`` for the soft target. It must not
            be below the smoothed floor ``smoothing / K``, which would make every class a positive.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        class_reduction: ``"mean"`` or ``"sum"`` over classes.

    Example:
        >>> y = torch.tensor([0, 1])
        >>> mb = MixedBatch(torch.zeros(2, 1), y, y.flip(0), torch.tensor([0.7, 0.7]), torch.tensor([1, 0]))
        >>> mixed_bce(torch.zeros(2, 2), mb).item() > 0
        True
    """
    check_choice("mixed_bce class_reduction", class_reduction, BCE_CLASS_REDUCTIONS)
    k = _check_logits(logits, mb.batch_size)
    targets = mb.soft_targets(k, smoothing)
    if target_threshold is not None:
        threshold = check_probability("target_threshold", target_threshold)
        if threshold < smoothing / k:
            raise MixlabValueError(
                f"target_threshold={target_threshold} is below the smoothed floor smoothing/K = {smoothing}/{k}: "
                "every class would be a positive; use a threshold >= smoothing/K (or smoothing=0)"
            )
        targets = (targets > threshold).to(torch.float32)
    per_element = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    per_sample = per_element.sum(dim=-1) if class_reduction == "sum" else per_element.mean(dim=-1)
    return _reduce(per_sample, reduction)


def bce_softmax(logits: Tensor, mb: MixedBatch, smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of the softmax probabilities against the mixed soft target.

    ``-(t log p + (1 - t) log(1 - p))`` averaged over classes, with ``p = softmax(z)``
    and ``t`` the mixed target: the loss PuzzleMix and Co-Mixup train with
    (``BCELoss(softmax(output), target)``; Kim et al., ICML 2020, arXiv 2009.06962;
    Kim et al., ICLR 2021, arXiv 2102.03065). Unlike the sigmoid BCE of
    :func:`mixed_bce`, the classes still compete through the softmax; the
    ``(1 - t) log(1 - p)`` term also pushes down the classes absent from the target.
    Logarithms are clamped at -100, as ``torch.nn.BCELoss`` does. Any number of sources.

    Example:
        >>> y = torch.tensor([0, 1])
        >>> mb = MixedBatch(torch.zeros(2, 1), y, y.flip(0), torch.tensor([0.7, 0.7]), torch.tensor([1, 0]))
        >>> z = torch.randn(2, 3)
        >>> ref = torch.nn.functional.binary_cross_entropy(z.softmax(1), mb.soft_targets(3))
        >>> torch.isclose(bce_softmax(z, mb), ref)
        tensor(True)
    """
    k = _check_logits(logits, mb.batch_size)
    targets = mb.soft_targets(k, smoothing)
    log_p = F.log_softmax(logits.float(), dim=-1)
    # log(1 - p), exact for small p; a saturated p gets BCELoss's -100 and a zero (not NaN) gradient
    not_p = -torch.expm1(log_p)
    tiny = torch.finfo(not_p.dtype).tiny
    log_not_p = torch.where(not_p > 0, torch.log(not_p.clamp_min(tiny)), -100.0).clamp_min(-100.0)
    per_element = -(targets * log_p.clamp_min(-100.0) + (1.0 - targets) * log_not_p)
    return _reduce(per_element.mean(dim=-1), reduction)


DECOUPLED_CLASSES = ("both", "smaller", "larger")


def decoupled_mixup_loss(
    logits: Tensor,
    mb: MixedBatch,
    eta: float = 0.1,
    lam_power: float = 1.0,
    smoothing: float = 0.0,
    reduction: str = "mean",
    classes: str = "both",
) -> Tensor:
    """Mixed CE plus Decoupled Mixup's regulariser, for class-index targets.

    For a sample mixing classes ``a`` (weight λ) and ``b``, the decoupled softmax
    scores ``a`` with ``b`` removed from the normaliser (and ``b`` without
    ``a``): ``H_a = exp(z_a) / (exp(z_a) + sum_{c not in {a, b}} exp(z_c))``.
    The loss is the mixed CE (over all classes) **plus**
    ``eta * (λ^q * -log H_a + (1-λ)^q * -log H_b)`` with ``q = lam_power``
    (0 weighs both classes equally); samples that are not mixed (``a == b``, or
    λ in {0, 1}) get no extra term. Hard mixed samples, whose two classes compete,
    keep a strong gradient, and no extra forward pass is needed.
    Liu et al., "Harnessing Hard Mixed Samples with Decoupled Regularizer",
    NeurIPS 2023, arXiv 2203.10761.

    The authors' code is OpenMixup (``openmixup/models/losses/cross_entropy_loss.py``,
    ``soft_mix_cross_entropy``, with the weights of ``ClsMixupHead.loss`` in
    ``openmixup/models/heads/cls_mixup_head.py``). The defaults are its CIFAR-100
    DM config (``configs/classification/cifar100/mixups/decouple/r18_mixups_CE_soft_decouple.py``:
    ``eta=0.1``, ``mode="both"``, ``lam_idx=1``). Its tuned per-mixer configs change
    all three (e.g. mixup with α = 0.2: ``eta=0.01``, ``lam_power=0.5``, ``classes="larger"``).

    Where mixlab departs from that code, on purpose:

    - the code orders the two weights by class index in the batch's first row: it
      gives ``eta * λ^q`` to class ``a`` only when ``y_a < y_b`` there, otherwise (for
      the whole batch) to class ``b``, and ``eta * (1-λ)^q`` to ``a``. For about half
      the batches the weights are swapped (a bug; averaged over batches each class gets
      ``eta/2`` when ``q = 1``). mixlab weighs each class by its own ratio, per sample.
    - the code skips the decoupled term for the whole batch when λ = 0.5 exactly (its
      masking cannot tell the two classes apart); mixlab applies it.
    - with label smoothing the code's decoupled target becomes all ones; mixlab keeps
      the one-hot target there and smooths only the mixed CE.

    Args:
        logits: ``(N, K)`` model outputs on ``mb``.
        mb: a two-source mixed batch with class-index targets.
        eta: weight of the decoupled term (OpenMixup's ``eta_weight["eta"]``).
        lam_power: ``q`` in ``λ^q`` (OpenMixup's ``lam_idx`` with ``lam_scale_mode="pow"``, ``lam_thr=1``).
        smoothing: label smoothing of the mixed CE.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        classes: which mixed classes get the decoupled term: ``"both"``, only the one
            with the ``"smaller"`` label weight, or the ``"larger"`` (OpenMixup's
            ``eta_weight`` modes ``"both"``, ``"less"`` and ``"more"`` with ``thr=0.5``).

    Example:
        >>> y = torch.tensor([0, 1])
        >>> mb = MixedBatch(torch.zeros(2, 1), y, y.flip(0), torch.tensor([0.5, 0.5]), torch.tensor([1, 0]))
        >>> float(decoupled_mixup_loss(torch.zeros(2, 3), mb, eta=0.0)) == float(mixed_cross_entropy(torch.zeros(2, 3), mb))
        True
    """
    eta = check_non_negative("eta", eta)
    lam_power = check_non_negative("lam_power", lam_power)
    classes = check_choice("decoupled_mixup_loss classes", classes, DECOUPLED_CLASSES)
    mb.require_two_sources("decoupled_mixup_loss")
    if mb.target_a.is_floating_point():
        raise MixlabTypeError(
            f"decoupled_mixup_loss needs class-index targets to know the two mixed classes; got dtype {mb.target_a.dtype}"
        )
    base = mixed_cross_entropy(logits, mb, smoothing=smoothing, reduction="none")
    z = logits.float()
    ya, yb = mb.target_a.long().unsqueeze(1), mb.target_b.long().unsqueeze(1)
    without_b = z.scatter(1, yb, float("-inf"))
    without_a = z.scatter(1, ya, float("-inf"))
    nll_a = torch.logsumexp(without_b, dim=1) - z.gather(1, ya).squeeze(1)
    nll_b = torch.logsumexp(without_a, dim=1) - z.gather(1, yb).squeeze(1)
    weight_a, weight_b = _decoupled_weights(mb.lam.to(z.device, torch.float32), lam_power, classes)
    decoupled = weight_a * nll_a + weight_b * nll_b
    decoupled = torch.where(_mixed_pairs(mb).to(decoupled.device), decoupled, torch.zeros_like(decoupled))
    return _reduce(base + eta * decoupled, reduction)


def _decoupled_weights(lam: Tensor, lam_power: float, classes: str) -> tuple[Tensor, Tensor]:
    """``(λ^q, (1-λ)^q)``, zeroed for the class left out by ``classes`` (threshold 0.5, as OpenMixup's)."""
    weight_a, weight_b = lam.pow(lam_power), (1.0 - lam).pow(lam_power)
    if classes == "both":
        return weight_a, weight_b
    a_is_smaller = lam < 0.5
    keep_a = a_is_smaller if classes == "smaller" else ~a_is_smaller
    return torch.where(keep_a, weight_a, 0.0), torch.where(keep_a, 0.0, weight_b)


def regmixup_loss(
    logits_clean: Tensor,
    logits_mixed: Tensor,
    y: Tensor,
    mb: MixedBatch,
    eta: float = 1.0,
    scaling: str = "code",
    smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """RegMixup: clean CE on ``x`` plus ``eta`` times mixup CE on ``mb``.

    ``scaling="code"`` (default) halves the sum, ``(CE_clean + eta * CE_mix) / 2``:
    the authors' code takes the mean cross-entropy over the concatenated clean
    and mixed batch, and their published numbers come from it.
    ``scaling="paper"`` is the paper's formula, ``CE_clean + eta * CE_mix`` (twice
    the gradient, i.e. twice the effective learning rate with SGD). Use a mixer with
    a large α: the authors use α = 20 on CIFAR-10 and 10 on CIFAR-100, ``eta = 1``.
    Pinto et al., NeurIPS 2022, arXiv 2206.14502. Any number of sources.

    Example:
        >>> y = torch.tensor([0, 1])
        >>> mb = MixedBatch.unmixed(torch.zeros(2, 1), y)
        >>> z = torch.randn(2, 2)
        >>> torch.isclose(regmixup_loss(z, z, y, mb, scaling="paper"), 2 * cross_entropy(z, y))
        tensor(True)
        >>> torch.isclose(regmixup_loss(z, z, y, mb), cross_entropy(z, y))
        tensor(True)
    """
    eta = check_non_negative("eta", eta)
    scale = 0.5 if check_choice("regmixup scaling", scaling, REGMIXUP_SCALINGS) == "code" else 1.0
    clean = cross_entropy(logits_clean, y, smoothing=smoothing, reduction="none")
    mixed = mixed_cross_entropy(logits_mixed, mb, smoothing=smoothing, reduction="none")
    return _reduce(scale * (clean + eta * mixed), reduction)


RANK_MODES = ("mrl", "ndcg")
RANK_SCORES = ("logit", "confidence")


def rankmixup_loss(
    logits_clean: Tensor,
    logits_mixed: Tensor | Sequence[Tensor],
    y: Tensor,
    mb: MixedBatch | Sequence[MixedBatch],
    mode: str = "mrl",
    eta: float = 0.1,
    margin: float = 2.0,
    score: str = "logit",
    smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """RankMixup: clean CE plus a ranking loss that keeps mixed samples less confident than raw ones.

    ``mode="mrl"`` (mixup-based ranking loss): per sample,
    ``max(0, s(mixed_i) - s(clean_i) + margin)`` with ``s`` the largest logit
    (``score="logit"``, margin 2 on CIFAR, 1 on Tiny-ImageNet) or the largest softmax
    probability (``score="confidence"``); samples that are not mixed (same class, or
    λ in {0, 1}) are skipped, and the mean runs over all samples.

    ``mode="ndcg"`` (M-NDCG): give several mixed batches (one logits tensor and
    one :class:`MixedBatch` each; the authors use 3, each with its own λ and
    partners). For every raw sample, the list ``[raw, mixed_1, ..., mixed_M]`` has
    relevance 1 for the raw sample and ``max(lam, 1 - lam)`` for each mixed one
    (1 when both sources share the class), scores are the largest softmax
    probability, and the loss is ``1 - NDCG`` of the scores in the order of
    decreasing relevance (ties kept in the given order), the ratio inverted when the
    DCG exceeds the ideal.

    The total is ``CE(logits_clean, y) + eta * ranking``: the mixed batch is scored
    only through the ranking term (no mixed CE).
    Noh et al., ICCV 2023, arXiv 2308.11990.

    The authors' code (cvlab-yonsei/RankMixup: ``calibrate/losses/rankmixup.py``,
    ``configs/loss/mrl.yaml``, ``configs/model/resnet50_mixup.yaml``,
    ``calibrate/engine/trainer.py``) sets, for CIFAR: ``eta`` (their ``alpha``) 0.1,
    ``margin`` 2.0, the logit score; mixed batches drawn with λ ~ Beta(2, 2), one λ and
    one permutation per mixed batch (use ``Mixup(alpha=2.0)``); 1 mixed batch for MRL,
    3 for M-NDCG; the clean and the mixed batches go through the model in separate
    forward passes (each with its own BatchNorm statistics). Where mixlab departs:
    the code's MRL mask, ``(N,)``, multiplies hinge values of shape ``(N, 1)`` and
    broadcasts to ``(N, N)``, so its loss is ``mean(mixed) * mean(hinge over all
    samples)``: same-class samples are penalised too, and the total is scaled by the
    fraction of mixed samples. The per-sample mask was evidently meant (it is built
    per sample and discarded by the broadcast); mixlab applies it per sample.

    Example:
        >>> y = torch.tensor([0, 1])
        >>> mb = MixedBatch(torch.zeros(2, 1), y, y.flip(0), torch.tensor([0.6, 0.6]), torch.tensor([1, 0]))
        >>> rankmixup_loss(torch.randn(2, 2), torch.randn(2, 2), y, mb).ndim
        0
    """
    check_choice("rankmixup mode", mode, RANK_MODES)
    check_choice("rankmixup score", score, RANK_SCORES)
    eta = check_non_negative("eta", eta)
    margin = check_non_negative("margin", margin)
    clean = cross_entropy(logits_clean, y, smoothing=smoothing, reduction="none")
    logits_list = [logits_mixed] if isinstance(logits_mixed, Tensor) else list(logits_mixed)
    mb_list = [mb] if isinstance(mb, MixedBatch) else list(mb)
    if len(logits_list) != len(mb_list) or not mb_list:
        raise MixlabValueError(
            f"give one mixed batch per mixed logits tensor; got {len(logits_list)} logits and {len(mb_list)} batches"
        )
    for z, batch in zip(logits_list, mb_list, strict=False):
        batch.require_two_sources("rankmixup_loss")
        _check_logits(z, logits_clean.shape[0], "mixed logits")
        if batch.batch_size != logits_clean.shape[0]:
            raise MixlabValueError(f"mixed batch has {batch.batch_size} samples, clean logits {logits_clean.shape[0]}")
    if mode == "mrl":
        if len(mb_list) != 1:
            raise MixlabValueError(f"mode='mrl' takes one mixed batch; got {len(mb_list)}")
        ranking = _margin_ranking(logits_clean, logits_list[0], mb_list[0], margin, score)
    else:
        ranking = _mixup_ndcg(logits_clean, logits_list, mb_list)
    return _reduce(clean + eta * ranking, reduction)


def _top_score(logits: Tensor, score: str) -> Tensor:
    z = logits.float()
    return z.max(dim=1).values if score == "logit" else z.softmax(dim=1).max(dim=1).values


def _different_pairs(mb: MixedBatch) -> Tensor:
    ya, yb = mb.target_a, mb.target_b
    if ya.is_floating_point():
        return (ya.reshape(ya.shape[0], -1) != yb.reshape(yb.shape[0], -1)).any(dim=1)
    return ya != yb


def _mixed_pairs(mb: MixedBatch) -> Tensor:
    """Samples whose label really mixes two different targets (different partner, 0 < λ < 1)."""
    lam = mb.lam.to(mb.target_a.device)
    return _different_pairs(mb) & (lam > 0) & (lam < 1)


def _margin_ranking(logits_clean: Tensor, logits_mixed: Tensor, mb: MixedBatch, margin: float, score: str) -> Tensor:
    gap = _top_score(logits_mixed, score) - _top_score(logits_clean, score) + margin
    hinge = F.relu(gap)
    return torch.where(_mixed_pairs(mb).to(hinge.device), hinge, torch.zeros_like(hinge))


def _mixup_ndcg(logits_clean: Tensor, logits_mixed: list[Tensor], batches: list[MixedBatch]) -> Tensor:
    scores = [_top_score(logits_clean, "confidence")]
    relevance = [torch.ones_like(scores[0])]
    for z, batch in zip(logits_mixed, batches, strict=False):
        scores.append(_top_score(z, "confidence"))
        lam = batch.lam.to(scores[0].device, torch.float32)
        rel = torch.maximum(lam, 1.0 - lam)
        relevance.append(torch.where(_different_pairs(batch).to(rel.device), rel, torch.ones_like(rel)))
    scores_t, relevance_t = torch.stack(scores, dim=1), torch.stack(relevance, dim=1)
    # The raw sample stays first; mixed ones are ranked by decreasing relevance.
    order = torch.cat(
        [
            torch.zeros_like(relevance_t[:, :1], dtype=torch.long),
            1 + relevance_t[:, 1:].argsort(dim=1, descending=True, stable=True),
        ],
        dim=1,
    )
    scores_t, relevance_t = scores_t.gather(1, order), relevance_t.gather(1, order)
    discount = 1.0 / torch.log2(torch.arange(2, scores_t.shape[1] + 2, device=scores_t.device, dtype=torch.float32))
    dcg, idcg = (scores_t * discount).sum(dim=1), (relevance_t * discount).sum(dim=1)
    ndcg = torch.where(idcg > dcg, dcg / idcg, idcg / dcg)
    return 1.0 - ndcg


def smooth_labels(y: Tensor, num_classes: int, smoothing: float = 0.1) -> Tensor:
    """Smoothed one-hot (or soft) targets, ``(N, num_classes)`` float32.

    Szegedy et al., CVPR 2016, arXiv 1512.00567.

    Example:
        >>> smooth_labels(torch.tensor([0]), 2, 0.2)
        tensor([[0.9000, 0.1000]])
    """
    return MixedBatch.unmixed(y, y).soft_targets(num_classes, smoothing)
