"""Synthetic feature-learning data from two theory papers on mixup, generated in memory.

Both datasets are patch data: one sample is ``P`` patches of dimension ``d``, stored as a float32
tensor ``(P, d)`` (``input_shape == (P, d)``), meant for the patch-wise two-layer network
:class:`~mixlab.models.patch.PatchCNN`. Every array is drawn, vectorised, from NumPy generators
seeded by ``generation_seed`` alone (independent streams for the features, the train split and the
test split), so the data stay the same whatever the training seed and no global RNG is touched.

- ``rare_features``: the feature-noise data of Zou, Cao, Li & Gu, "The Benefits of Mixup for Feature
  Learning", ICML 2023, arXiv 2303.08433. Two classes; each sample carries its class's *common*
  feature, or, for a ``rare_fraction`` of the samples, its class's *rare* feature, plus a weak copy
  of the other class's common feature (feature noise) and Gaussian noise patches. Standard training
  fits the few rare samples by memorising their noise; mixup learns the rare feature from its
  mixtures with the common one.
- ``multi_view``: the noisy multi-view data of Chidambaram, Wang, Wu & Ge, "Provably Learning Diverse
  Features in Multi-View Data with Midpoint Mixup", ICML 2023, arXiv 2210.13512. ``k`` classes, two
  orthonormal features (views) per class; every training sample carries both views of its class, in
  two signal patches with dependent strengths ``beta`` and ``low + high - beta``, and the other
  patches hold weak copies of the other classes' features. The test split (``test_views="one"``)
  carries a single view per sample, so a model that learned only one view of a class fails on half
  of that class's test points.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixlab.data.base import ArrayData, DataSplits
from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice, check_int
from mixlab.sampling import derive_seed

#: where each patch of a ``rare_features`` sample sits (the feature patch must share its position across
#: samples: mixup then mixes a rare feature with a common one inside one patch, the paper's mechanism).
FEATURE_PATCH, FEATURE_NOISE_PATCH = 0, 1
#: ``multi_view`` views per class (the paper's theory has two).
VIEWS_PER_CLASS = 2
TEST_VIEWS = ("one", "both")


# ------------------------------------------------------------------ option checkers: (name, value) -> value


def check_real(name: str, value: Any, *, low: float, high: float = float("inf"), closed_low: bool = True) -> float:
    """``value`` as a float in ``[low, high)`` (``(low, high)`` when ``closed_low`` is False), else a clear error.

    Example:
        >>> check_real("rare_fraction", 0.1, low=0.0, high=1.0, closed_low=False)
        0.1
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MixlabTypeError(f"{name} must be a number; got {value!r}")
    value = float(value)
    inside = (value >= low if closed_low else value > low) and value < high
    if not inside or value != value:
        bracket = "[" if closed_low else "("
        raise MixlabValueError(f"{name} must be in {bracket}{low:g}, {high:g}); got {value!r}")
    return value


def check_open_fraction(name: str, value: Any) -> float:
    """A fraction in (0, 1).

    Example:
        >>> check_open_fraction("rare_fraction", 0.1)
        0.1
    """
    return check_real(name, value, low=0.0, high=1.0, closed_low=False)


def check_non_negative_real(name: str, value: Any) -> float:
    """A finite number >= 0.

    Example:
        >>> check_non_negative_real("feature_noise", 0)
        0.0
    """
    return check_real(name, value, low=0.0)


def check_signal_range(name: str, value: Any) -> tuple[float, float]:
    """Two numbers ``[low, high]`` with ``0 < low < high``: the range of a signal patch's strength.

    Example:
        >>> check_signal_range("signal_range", [0.25, 0.5])
        (0.25, 0.5)
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != 2:
        raise MixlabTypeError(f"{name} must be two numbers [low, high]; got {value!r}")
    low = check_real(f"{name}[0]", value[0], low=0.0, closed_low=False)
    high = check_real(f"{name}[1]", value[1], low=0.0, closed_low=False)
    if not low < high:
        raise MixlabValueError(f"{name} must have low < high; got {value!r}")
    return low, high


def check_test_views(name: str, value: Any) -> str:
    """``"one"`` (each test sample shows one view of its class) or ``"both"`` (as the training samples).

    Example:
        >>> check_test_views("test_views", "one")
        'one'
    """
    return check_choice(name, value, TEST_VIEWS)


# ------------------------------------------------------------------ shared pieces


def split_generators(generation_seed: int) -> dict[str, np.random.Generator]:
    """Independent NumPy generators for the ``features``, ``train`` and ``test`` draws of one dataset.

    Example:
        >>> a, b = split_generators(0), split_generators(0)
        >>> float(a["train"].random()) == float(b["train"].random()) != float(a["test"].random())
        True
    """
    seed = check_int("generation_seed", generation_seed)
    return {part: np.random.default_rng(derive_seed(seed, "synthetic", part)) for part in ("features", "train", "test")}


def orthonormal_features(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random orthonormal vectors in ``R^dim``, as the rows of a ``(count, dim)`` float64 array.

    The Q factor of a Gaussian matrix: a uniformly random orthonormal frame.

    Example:
        >>> f = orthonormal_features(3, 8, np.random.default_rng(0))
        >>> bool(np.allclose(f @ f.T, np.eye(3)))
        True
    """
    count, dim = check_int("count", count, minimum=1), check_int("dim", dim, minimum=1)
    if count > dim:
        raise MixlabValueError(f"{count} orthonormal features need dim >= {count}; got dim={dim}")
    q, r = np.linalg.qr(rng.standard_normal((dim, count)))
    return (q * np.sign(np.diag(r))).T  # the signs make the frame's distribution uniform


def _check_size(name: str, value: int, minimum: int, reason: str) -> None:
    if value < minimum:
        raise MixlabValueError(f"{name} must be >= {minimum} ({reason}); got {value}")


def _as_splits(name: str, train: tuple, test: tuple, num_classes: int, info: dict) -> DataSplits:
    train_data = ArrayData(torch.from_numpy(train[0]), torch.from_numpy(train[1]))
    test_data = ArrayData(torch.from_numpy(test[0]), torch.from_numpy(test[1]))
    shape = tuple(train_data.x.shape[1:])
    names = [str(c) for c in range(num_classes)]
    return DataSplits(name, "classification", train_data, None, test_data, num_classes, shape, names, info)


# ------------------------------------------------------------------ rare features (Zou et al., ICML 2023)


def make_rare_feature_data(
    num_samples: int,
    features: np.ndarray,
    *,
    num_patches: int,
    rare_fraction: float,
    feature_noise: float,
    noise_std: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Draw ``num_samples`` points of the feature-noise data model of Zou, Cao, Li & Gu (ICML 2023, arXiv 2303.08433).

    Labels ``y`` are uniform on ``{0, 1}``, with sign ``s = 2y - 1``. ``features`` holds the common
    feature ``v`` (row 0) and the rare feature ``u`` (row 1), orthonormal; class 1 carries ``+v`` /
    ``+u``, class 0 ``-v`` / ``-u``. Patch 0 is ``s * u`` for exactly ``round(rare_fraction * N)``
    samples chosen at random and ``s * v`` for the others; patch 1 is the feature noise
    ``-feature_noise * s * v`` (the other class's common feature, weakly); patches ``2 .. P-1`` are
    Gaussian noise ``N(0, noise_std^2 (I - v v^T - u u^T))``, orthogonal to both features.

    Returns ``x`` float32 ``(N, P, d)``, ``y`` int64 ``(N,)`` and ``rare`` bool ``(N,)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> f = orthonormal_features(2, 16, rng)
        >>> d = make_rare_feature_data(10, f, num_patches=3, rare_fraction=0.2, feature_noise=0.1,
        ...                            noise_std=0.5, rng=rng)
        >>> d["x"].shape, int(d["rare"].sum())
        ((10, 3, 16), 2)
    """
    common, rare_feature = features[0], features[1]
    dim = features.shape[1]
    y = rng.integers(0, 2, size=num_samples)
    sign = (2 * y - 1).astype(np.float64)[:, None]
    rare = np.zeros(num_samples, dtype=bool)
    rare[rng.permutation(num_samples)[: round(rare_fraction * num_samples)]] = True
    x = np.empty((num_samples, num_patches, dim), dtype=np.float64)
    x[:, FEATURE_PATCH] = sign * np.where(rare[:, None], rare_feature, common)
    x[:, FEATURE_NOISE_PATCH] = -feature_noise * sign * common
    noise = rng.standard_normal((num_samples, num_patches - 2, dim)) * noise_std
    noise -= np.einsum("npd,fd->npf", noise, features) @ features  # project out v and u
    x[:, 2:] = noise
    return {"x": x.astype(np.float32), "y": y.astype(np.int64), "rare": rare}


def load_rare_features(root: Path | None, spec: Any, options: dict) -> DataSplits:
    """The ``rare_features`` :class:`DataSplits` (see :func:`make_rare_feature_data`); ``root`` is unused.

    Example:
        >>> s = load_rare_features(None, None, {"num_train": 20, "num_test": 10, "dim": 8, "num_patches": 3,
        ...     "rare_fraction": 0.1, "feature_noise": 0.1, "noise_std": 0.1, "generation_seed": 0})
        >>> s.input_shape, s.num_classes, s.info["rare_counts"]
        ((3, 8), 2, {'train': 2, 'test': 1})
    """
    o = options
    _check_size("num_patches", o["num_patches"], 3, "a feature patch, a feature-noise patch and a noise patch")
    _check_size("dim", o["dim"], 2, "the common and the rare feature are orthogonal")
    rngs = split_generators(o["generation_seed"])
    features = orthonormal_features(2, o["dim"], rngs["features"])
    draw = {
        "num_patches": o["num_patches"],
        "rare_fraction": o["rare_fraction"],
        "feature_noise": o["feature_noise"],
        "noise_std": o["noise_std"],
    }
    train = make_rare_feature_data(o["num_train"], features, rng=rngs["train"], **draw)
    test = make_rare_feature_data(o["num_test"], features, rng=rngs["test"], **draw)
    info = {
        "source": "mixlab.data.synthetic.make_rare_feature_data (Zou, Cao, Li & Gu, ICML 2023, arXiv 2303.08433)",
        "rare_counts": {"train": int(train["rare"].sum()), "test": int(test["rare"].sum())},
        **{k: o[k] for k in ("num_train", "num_test", "generation_seed")},
    }
    return _as_splits("rare_features", (train["x"], train["y"]), (test["x"], test["y"]), 2, info)


# ------------------------------------------------------------------ multi-view data (Chidambaram et al., ICML 2023)


def make_multi_view_data(
    num_samples: int,
    features: np.ndarray,
    *,
    num_patches: int,
    signal_range: tuple[float, float],
    feature_noise: float,
    views: str,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Draw ``num_samples`` points of the noisy multi-view data of Chidambaram, Wang, Wu & Ge (ICML 2023, arXiv 2210.13512).

    ``features`` is ``(k, 2, d)``: two orthonormal views per class. Labels are uniform on ``k`` classes.
    ``views="both"`` (training data): patch 0 is ``beta * v[y, 0]`` and patch 1 is
    ``(low + high - beta) * v[y, 1]``, ``beta ~ U(low, high)``: both views, with strengths that sum to
    ``low + high`` (the dependence between views the paper's Midpoint Mixup argument uses).
    ``views="one"`` (the test data that reveal which views a model learned): one view ``v[y, l]``,
    ``l`` uniform on {0, 1}, in both signal patches, each with its own strength ``~ U(low, high)``.
    Patches ``2 .. P-1`` are feature noise: ``sum over s != y, l of gamma * v[s, l]`` with
    ``gamma ~ feature_noise * U(0.25, 0.75) / k^1.5`` (the paper's ``k^-1.5`` order of the noise).

    Returns ``x`` float32 ``(N, P, d)``, ``y`` int64 ``(N,)`` and ``view`` int8 ``(N,)`` (the view shown, or -1
    for both).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> f = orthonormal_features(6, 9, rng).reshape(3, 2, 9)
        >>> d = make_multi_view_data(4, f, num_patches=4, signal_range=(0.25, 0.5), feature_noise=1.0,
        ...                          views="one", rng=rng)
        >>> d["x"].shape, sorted(set(d["view"].tolist())) <= [0, 1]
        ((4, 4, 9), True)
    """
    num_classes, dim = features.shape[0], features.shape[2]
    low, high = signal_range
    y = rng.integers(0, num_classes, size=num_samples)
    x = np.empty((num_samples, num_patches, dim), dtype=np.float64)
    if views == "both":
        beta = rng.uniform(low, high, size=num_samples)[:, None]
        x[:, 0] = beta * features[y, 0]
        x[:, 1] = (low + high - beta) * features[y, 1]
        view = np.full(num_samples, -1, dtype=np.int8)
    else:
        view = rng.integers(0, VIEWS_PER_CLASS, size=num_samples).astype(np.int8)
        strengths = rng.uniform(low, high, size=(num_samples, 2, 1))
        x[:, :2] = strengths * features[y, view][:, None, :]
    gamma = rng.uniform(0.25, 0.75, size=(num_samples, num_patches - 2, num_classes, VIEWS_PER_CLASS))
    gamma *= feature_noise / num_classes**1.5
    gamma[np.arange(num_samples), :, y] = 0.0  # feature noise comes from the other classes only
    x[:, 2:] = np.einsum("npkv,kvd->npd", gamma, features)
    return {"x": x.astype(np.float32), "y": y.astype(np.int64), "view": view}


def load_multi_view(root: Path | None, spec: Any, options: dict) -> DataSplits:
    """The ``multi_view`` :class:`DataSplits` (see :func:`make_multi_view_data`); ``root`` is unused.

    Example:
        >>> s = load_multi_view(None, None, {"num_train": 20, "num_test": 10, "num_classes": 3, "dim": 9,
        ...     "num_patches": 4, "signal_range": (0.25, 0.5), "feature_noise": 1.0, "test_views": "one",
        ...     "generation_seed": 0})
        >>> s.input_shape, s.num_classes, s.info["test_views"]
        ((4, 9), 3, 'one')
    """
    o = options
    k = o["num_classes"]
    _check_size("num_patches", o["num_patches"], 3, "two signal patches and at least one feature-noise patch")
    _check_size("dim", o["dim"], VIEWS_PER_CLASS * k, f"{VIEWS_PER_CLASS} orthonormal views for each of {k} classes")
    rngs = split_generators(o["generation_seed"])
    features = orthonormal_features(VIEWS_PER_CLASS * k, o["dim"], rngs["features"]).reshape(k, VIEWS_PER_CLASS, -1)
    draw = {"num_patches": o["num_patches"], "signal_range": o["signal_range"], "feature_noise": o["feature_noise"]}
    train = make_multi_view_data(o["num_train"], features, views="both", rng=rngs["train"], **draw)
    test = make_multi_view_data(o["num_test"], features, views=o["test_views"], rng=rngs["test"], **draw)
    info = {
        "source": (
            "mixlab.data.synthetic.make_multi_view_data (Chidambaram, Wang, Wu & Ge, ICML 2023, arXiv 2210.13512)"
        ),
        "test_views": o["test_views"],
        **{key: o[key] for key in ("num_train", "num_test", "generation_seed")},
    }
    return _as_splits("multi_view", (train["x"], train["y"]), (test["x"], test["y"]), k, info)
