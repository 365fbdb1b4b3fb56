"""Seeded splits, per-class subsets, long-tailed imbalance and label noise, applied to the train split by ``load_dataset``.

Every function draws from a ``numpy.random.Generator`` it is given (see :func:`rng_for`); none touches a
global RNG. Each step has its own stream, so changing one option (say ``val_fraction``) does not change
which labels another step (say the noise) picks beyond what the changed train set implies.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mixlab.data.base import DataSplits
from mixlab.errors import (
    MixlabTypeError,
    MixlabValueError,
    check_choice,
    check_int,
    check_non_negative,
    check_probability,
)

NOISE_KINDS = ("symmetric", "flip")
# One stream per purpose: the seed picks the run, the purpose keeps the steps independent.
_STREAMS = {"test": 0, "val": 1, "subset": 2, "noise": 3, "imbalance": 4}


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """The generator for one purpose (``"test"``, ``"val"``, ``"subset"``, ``"imbalance"``, ``"noise"``) under ``seed``.

    Example:
        >>> int(rng_for(0, "val").integers(100)) == int(rng_for(0, "val").integers(100))
        True
    """
    return np.random.default_rng([check_int("seed", seed), _STREAMS[purpose]])


def round_half_up(value: float) -> int:
    """Round to the nearest int, halves up (Python's ``round`` rounds halves to even).

    Example:
        >>> round_half_up(2.5), round_half_up(0.49)
        (3, 0)
    """
    return int(np.floor(value + 0.5))


def stratified_split(labels: np.ndarray | torch.Tensor, fraction: float, rng: np.random.Generator):
    """Split ``range(N)`` into sorted ``(kept, held)`` index arrays, class by class.

    ``held`` has exactly ``round(fraction * N)`` indices; each class gives ``fraction`` of its samples,
    the rounding remainder going to the classes with the largest fractional share.

    Example:
        >>> kept, held = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.5, np.random.default_rng(0))
        >>> len(held), sorted(np.array([0, 0, 0, 0, 1, 1, 1, 1])[held].tolist())
        (4, [0, 0, 1, 1])
    """
    labels = np.asarray(labels)
    n = len(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = fraction * counts
    take = np.floor(quotas).astype(np.int64)
    remainder = round_half_up(fraction * n) - int(take.sum())
    if remainder > 0:
        # Largest fractional parts first; ties broken at random so no class is always favoured.
        order = np.lexsort((rng.random(len(classes)), -(quotas - take)))
        take[order[:remainder]] += 1
    held = [rng.choice(np.flatnonzero(inverse == c), size=k, replace=False) for c, k in enumerate(take) if k > 0]
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(n), held_idx), held_idx


def random_split(n: int, fraction: float, rng: np.random.Generator):
    """Split ``range(n)`` into sorted ``(kept, held)`` index arrays with ``round(fraction * n)`` held.

    Example:
        >>> kept, held = random_split(10, 0.3, np.random.default_rng(0))
        >>> len(kept), len(held), sorted(kept.tolist() + held.tolist()) == list(range(10))
        (7, 3, True)
    """
    held = np.sort(rng.permutation(n)[: round_half_up(fraction * n)])
    return np.setdiff1d(np.arange(n), held), held


def subset_indices(labels: np.ndarray | torch.Tensor, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices keeping at most ``per_class`` samples of each class (a seeded random choice).

    Example:
        >>> idx = subset_indices(np.array([0, 0, 0, 1, 1, 2]), 2, np.random.default_rng(0))
        >>> np.bincount(np.array([0, 0, 0, 1, 1, 2])[idx]).tolist()
        [2, 2, 1]
    """
    labels = np.asarray(labels)
    kept = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        kept.append(members if len(members) <= per_class else rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def check_classes(classes: Sequence[int] | None) -> list[int] | None:
    """``classes`` as a list of distinct class indices (at least two), or ``None``; else raise.

    Example:
        >>> check_classes((0, 6))
        [0, 6]
    """
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise MixlabTypeError(f"classes must be a list of class indices, e.g. [0, 6]; got {classes!r}")
    chosen = [check_int("classes item", c) for c in classes]
    if len(chosen) < 2 or len(set(chosen)) != len(chosen):
        raise MixlabValueError(f"classes must list at least two distinct class indices; got {list(classes)!r}")
    return chosen


def select_classes(splits: DataSplits, classes: Sequence[int]) -> DataSplits:
    """Keep only ``classes`` in every split (train, val, test), relabelled ``0..k-1`` in the order given, in place.

    Recorded in ``splits.info["classes"]``; ``num_classes`` and ``class_names`` follow. It runs before
    the train options, so class 0 of an imbalance profile is ``classes[0]``.

    Example:
        >>> from mixlab.data.base import ArrayData
        >>> part = ArrayData(torch.zeros(6, 1), torch.tensor([0, 1, 2, 0, 1, 2]))
        >>> s = select_classes(DataSplits("t", "classification", part, None, part, 3, (1,), ["a", "b", "c"], {}), [2, 0])
        >>> s.train.y.tolist(), s.num_classes, s.class_names
        ([1, 0, 1, 0], 2, ['c', 'a'])
    """
    chosen = check_classes(classes)
    if splits.task != "classification" or splits.num_classes is None:
        raise MixlabValueError(f"classes={chosen} needs classes; dataset {splits.name!r} is a {splits.task} task")
    unknown = [c for c in chosen if c >= splits.num_classes]
    if unknown:
        raise MixlabValueError(
            f"classes {unknown} are not classes of dataset {splits.name!r}, which has {splits.num_classes} "
            f"(0 to {splits.num_classes - 1})"
        )
    relabel = torch.full((splits.num_classes,), -1, dtype=torch.int64)
    relabel[torch.tensor(chosen)] = torch.arange(len(chosen))
    before = splits.sizes()
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part is not None:
            kept = relabel[part.labels.long()]
            index = torch.nonzero(kept >= 0).squeeze(1)
            setattr(splits, name, part.subset(index.numpy()).with_labels(kept[index]))
    names = splits.class_names
    splits.num_classes = len(chosen)
    splits.class_names = [names[c] for c in chosen] if names else None
    splits.info["classes"] = {"kept": chosen, "names": splits.class_names, "sizes_before": before}
    return splits


def long_tailed_counts(num_classes: int, largest: int, ratio: float) -> np.ndarray:
    """Per-class counts of an exponential long-tailed profile: class ``c`` gets ``largest * ratio ** (-c / (K - 1))``.

    Class 0 keeps ``largest``, class ``K - 1`` keeps ``largest / ratio``; counts are rounded half up and
    never below one. This is the long-tailed profile of Cao, Wei, Gaidon, Arechiga & Ma, "Learning
    Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019, arXiv 1906.07413
    (``n_c = n_max * mu ** c`` with ``mu = ratio ** (-1 / (K - 1))``).

    Example:
        >>> long_tailed_counts(4, 100, 10.0).tolist()
        [100, 46, 22, 10]
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    largest = check_int("largest", largest, minimum=1)
    ratio = check_imbalance_ratio(ratio)
    shares = ratio ** (-np.arange(num_classes) / (num_classes - 1))
    return np.maximum(np.floor(largest * shares + 0.5).astype(np.int64), 1)


def check_imbalance_ratio(ratio: float) -> float:
    """``ratio`` as a float if it is a finite real number >= 1 (largest class size over smallest), else raise.

    Example:
        >>> check_imbalance_ratio(100)
        100.0
    """
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise MixlabTypeError(f"imbalance_ratio must be a real number; got {ratio!r} of type {type(ratio).__name__}")
    if not (np.isfinite(ratio) and ratio >= 1.0):
        raise MixlabValueError(
            f"imbalance_ratio must be a finite number >= 1 (largest class size over smallest); got {ratio!r}"
        )
    return float(ratio)


def imbalance_indices(
    labels: np.ndarray | torch.Tensor, num_classes: int, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices keeping a long-tailed subset of each class (see :func:`long_tailed_counts`), a seeded choice.

    The largest class count of ``labels`` is the profile's head (class 0); a class with fewer samples
    than its profile count keeps them all.

    Example:
        >>> labels = np.repeat(np.arange(3), 10)
        >>> idx = imbalance_indices(labels, 3, 4.0, np.random.default_rng(0))
        >>> np.bincount(labels[idx]).tolist()
        [10, 5, 3]
    """
    labels = np.asarray(labels)
    largest = int(np.bincount(labels, minlength=num_classes).max()) if len(labels) else 1
    targets = long_tailed_counts(num_classes, largest, ratio)
    kept = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        kept.append(members if len(members) <= targets[c] else rng.choice(members, size=targets[c], replace=False))
    return np.sort(np.concatenate(kept))


def add_label_noise(labels: torch.Tensor, num_classes: int, rate: float, kind: str, rng: np.random.Generator):
    """Return ``(noisy_labels, flipped)``: exactly ``round(rate * N)`` labels changed, at sorted indices ``flipped``.

    ``"symmetric"`` replaces each chosen label by a uniformly drawn *different* class; ``"flip"`` maps
    class ``c`` to ``(c + 1) mod K`` (pair / class-flip noise).

    Example:
        >>> y = torch.arange(10) % 5
        >>> noisy, flipped = add_label_noise(y, 5, 0.3, "flip", np.random.default_rng(0))
        >>> len(flipped), bool(((y[flipped] + 1) % 5 == noisy[flipped]).all())
        (3, True)
    """
    check_choice("noise_kind", kind, NOISE_KINDS)
    y = labels.numpy().astype(np.int64)
    flipped = np.sort(rng.permutation(len(y))[: round_half_up(rate * len(y))])
    if kind == "flip":
        y[flipped] = (y[flipped] + 1) % num_classes
    else:
        # An offset in 1..K-1 gives a uniform draw over the K-1 other classes.
        y[flipped] = (y[flipped] + rng.integers(1, num_classes, size=len(flipped))) % num_classes
    return torch.from_numpy(y), flipped


def check_train_options(
    val_fraction: float,
    subset_per_class: int | None,
    label_noise: float,
    noise_kind: str,
    seed: int,
    *,
    imbalance_ratio: float | None = None,
):
    """Validate the options ``load_dataset`` applies to the train split; return them normalised.

    Returns ``(val_fraction, subset_per_class, label_noise, noise_kind, seed, imbalance_ratio)``.

    Example:
        >>> check_train_options(0.1, None, 0, "flip", 3, imbalance_ratio=10)
        (0.1, None, 0.0, 'flip', 3, 10.0)
    """
    val_fraction = check_non_negative("val_fraction", val_fraction)
    if val_fraction >= 1.0:
        raise MixlabValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    if subset_per_class is not None:
        subset_per_class = check_int("subset_per_class", subset_per_class, minimum=1)
    label_noise = check_probability("label_noise", label_noise)
    noise_kind = check_choice("noise_kind", noise_kind, NOISE_KINDS)
    if imbalance_ratio is not None:
        imbalance_ratio = check_imbalance_ratio(imbalance_ratio)
    return val_fraction, subset_per_class, label_noise, noise_kind, check_int("seed", seed), imbalance_ratio


def apply_train_options(
    splits: DataSplits,
    val_fraction: float,
    subset_per_class: int | None,
    label_noise: float,
    noise_kind: str,
    seed: int,
    *,
    imbalance_ratio: float | None = None,
) -> DataSplits:
    """Hold out val, take the per-class subset, make it long-tailed, then add label noise, on ``splits.train``, in place.

    Each step records what it did in ``splits.info`` (``"val_split"``, ``"subset"``, ``"imbalance"``,
    ``"label_noise"``). The val split is held out first, so it keeps the classes' original shares;
    the test split is never touched.
    """
    classification = splits.task == "classification"
    if val_fraction > 0:
        _hold_out_val(splits, val_fraction, seed, classification)
    if subset_per_class is not None:
        if not classification:
            raise MixlabValueError(
                f"subset_per_class={subset_per_class} needs classes; dataset {splits.name!r} is a regression task"
            )
        before = len(splits.train)
        splits.train = splits.train.subset(
            subset_indices(splits.train.labels, subset_per_class, rng_for(seed, "subset"))
        )
        splits.info["subset"] = {
            "per_class": subset_per_class,
            "seed": seed,
            "num_before": before,
            "num_kept": len(splits.train),
        }
    if imbalance_ratio is not None:
        _make_long_tailed(splits, imbalance_ratio, seed)
    if label_noise > 0:
        _add_noise(splits, label_noise, noise_kind, seed)
    splits.info["sizes"] = splits.sizes()
    return splits


def _hold_out_val(splits: DataSplits, fraction: float, seed: int, stratified: bool) -> None:
    if splits.val is not None:
        raise MixlabValueError(
            f"val_fraction={fraction} asks to hold out a validation split, but dataset {splits.name!r} already has one "
            f"({len(splits.val)} samples); use val_fraction=0"
        )
    train, rng = splits.train, rng_for(seed, "val")
    if stratified:
        kept, held = stratified_split(train.labels, fraction, rng)
    else:
        kept, held = random_split(len(train), fraction, rng)
    if len(held) == 0 or len(kept) == 0:
        raise MixlabValueError(
            f"val_fraction={fraction} of {len(train)} training samples leaves {len(held)} for val and "
            f"{len(kept)} for train; both need at least one"
        )
    splits.train, splits.val = train.subset(kept), train.subset(held)
    splits.info["val_split"] = {
        "fraction": fraction,
        "seed": seed,
        "stratified": stratified,
        "num_train": len(kept),
        "num_val": len(held),
    }


def _make_long_tailed(splits: DataSplits, ratio: float, seed: int) -> None:
    if splits.task != "classification" or splits.num_classes is None:
        raise MixlabValueError(
            f"imbalance_ratio={ratio} needs classes; dataset {splits.name!r} is a {splits.task} task"
        )
    if splits.num_classes < 2:
        raise MixlabValueError(
            f"imbalance_ratio needs at least 2 classes; dataset {splits.name!r} has {splits.num_classes}"
        )
    before = len(splits.train)
    kept = imbalance_indices(splits.train.labels, splits.num_classes, ratio, rng_for(seed, "imbalance"))
    splits.train = splits.train.subset(kept)
    splits.info["imbalance"] = {
        "ratio": ratio,
        "profile": "exponential",
        "seed": seed,
        "per_class": torch.bincount(splits.train.labels.long(), minlength=splits.num_classes).tolist(),
        "num_before": before,
        "num_kept": len(splits.train),
    }


def _add_noise(splits: DataSplits, rate: float, kind: str, seed: int) -> None:
    if splits.task != "classification" or splits.num_classes is None:
        raise MixlabValueError(f"label_noise={rate} needs classes; dataset {splits.name!r} is a regression task")
    if splits.num_classes < 2:
        raise MixlabValueError(
            f"label_noise needs at least 2 classes; dataset {splits.name!r} has {splits.num_classes}"
        )
    clean = splits.train.labels.clone()
    noisy, flipped = add_label_noise(clean, splits.num_classes, rate, kind, rng_for(seed, "noise"))
    splits.train = splits.train.with_labels(noisy)
    splits.clean_train_y = clean
    record: dict[str, Any] = {
        "kind": kind,
        "rate": rate,
        "seed": seed,
        "num_flipped": len(flipped),
        "flipped": flipped.tolist(),
    }
    splits.info["label_noise"] = record
