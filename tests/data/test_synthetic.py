"""Synthetic feature-learning data: shapes, seeding, the structure each paper specifies, bad options refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixlab.data import load_dataset
from mixlab.data.synthetic import (
    make_multi_view_data,
    make_rare_feature_data,
    orthonormal_features,
    split_generators,
)
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError

SMALL_RARE = {"num_train": 200, "num_test": 100, "dim": 64}
SMALL_VIEW = {"num_train": 120, "num_test": 60, "num_classes": 4, "dim": 16, "num_patches": 5}


def _rare(n: int = 400, **kw):
    rng = split_generators(0)
    features = orthonormal_features(2, 32, rng["features"])
    options = {"num_patches": 4, "rare_fraction": 0.1, "feature_noise": 0.2, "noise_std": 0.3, **kw}
    return features, make_rare_feature_data(n, features, rng=rng["train"], **options)


def _views(n: int = 300, views: str = "both", k: int = 4):
    rng = split_generators(0)
    features = orthonormal_features(2 * k, 16, rng["features"]).reshape(k, 2, 16)
    options = {"num_patches": 5, "signal_range": (0.25, 0.5), "feature_noise": 1.0}
    return features, make_multi_view_data(n, features, views=views, rng=rng["train"], **options)


# ---------------------------------------------------------------- loading through the registry


@pytest.mark.parametrize(("name", "options", "shape", "classes"), [
    ("rare_features", SMALL_RARE, (3, 64), 2),
    ("multi_view", SMALL_VIEW, (5, 16), 4),
])  # fmt: skip
def test_shapes_types_and_sizes(name: str, options: dict, shape: tuple, classes: int) -> None:
    s = load_dataset(name, **options)
    assert s.sizes() == {"train": options["num_train"], "val": 0, "test": options["num_test"]}
    assert s.input_shape == shape and s.train.x.shape[1:] == shape and s.test.x.shape[1:] == shape
    assert s.train.x.dtype == torch.float32 and s.train.y.dtype == torch.int64
    assert s.num_classes == classes and set(s.train.y.tolist()) == set(range(classes))
    assert s.task == "classification"


@pytest.mark.parametrize(("name", "options"), [("rare_features", SMALL_RARE), ("multi_view", SMALL_VIEW)])
def test_same_generation_seed_same_data_other_seed_other_data(name: str, options: dict) -> None:
    a, b = load_dataset(name, **options), load_dataset(name, **options)
    c = load_dataset(name, **options, generation_seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)
    # the training seed (split/noise seed) does not move the generated data
    assert torch.equal(a.train.x, load_dataset(name, **options, seed=5).train.x)
    assert not torch.equal(a.train.x[:10], a.test.x[:10])  # train and test are different draws


def test_generation_leaves_the_global_generators_alone() -> None:
    np.random.seed(3)
    torch.manual_seed(3)
    expected_np, expected_torch = np.random.random(), torch.rand(1)
    np.random.seed(3)
    torch.manual_seed(3)
    load_dataset("rare_features", **SMALL_RARE)
    load_dataset("multi_view", **SMALL_VIEW)
    assert np.random.random() == expected_np and torch.equal(torch.rand(1), expected_torch)


# ---------------------------------------------------------------- rare features (Zou et al.)


def test_rare_fraction_is_exact_and_recorded() -> None:
    _, d = _rare(400, rare_fraction=0.1)
    assert int(d["rare"].sum()) == 40
    s = load_dataset("rare_features", **SMALL_RARE, rare_fraction=0.25)
    assert s.info["rare_counts"] == {"train": 50, "test": 25}


def test_rare_feature_patches_follow_the_data_model() -> None:
    (common, rare_feature), d = _rare(400)
    x, y, rare = d["x"].astype(np.float64), d["y"], d["rare"]
    sign = 2.0 * y - 1.0
    expected = sign[:, None] * np.where(rare[:, None], rare_feature, common)
    assert np.allclose(x[:, 0], expected, atol=1e-6)  # the class's rare feature iff rare, else its common one
    assert np.allclose(x[:, 1], -0.2 * sign[:, None] * common, atol=1e-6)  # feature noise: the other class's
    noise = x[:, 2:]
    assert np.abs(noise @ common).max() < 1e-5 and np.abs(noise @ rare_feature).max() < 1e-5
    assert noise.std() == pytest.approx(0.3 * np.sqrt(30 / 32), rel=0.05)  # isotropic off the 2 features


def test_classes_are_balanced_in_expectation() -> None:
    _, d = _rare(2000)
    assert abs(d["y"].mean() - 0.5) < 0.05


# ---------------------------------------------------------------- multi-view data (Chidambaram et al.)


def test_training_points_carry_both_views_with_dependent_strengths() -> None:
    features, d = _views(300, "both")
    x, y = d["x"].astype(np.float64), d["y"]
    beta = np.einsum("nd,nd->n", x[:, 0], features[y, 0])
    other = np.einsum("nd,nd->n", x[:, 1], features[y, 1])
    assert np.allclose(x[:, 0], beta[:, None] * features[y, 0], atol=1e-6)
    assert np.allclose(x[:, 1], other[:, None] * features[y, 1], atol=1e-6)
    assert np.allclose(beta + other, 0.75, atol=1e-6)
    assert beta.min() >= 0.25 - 1e-6 and beta.max() <= 0.5 + 1e-6
    assert (d["view"] == -1).all()


def test_test_points_carry_one_view_only() -> None:
    features, d = _views(400, "one")
    x, y, view = d["x"].astype(np.float64), d["y"], d["view"]
    shown, hidden = features[y, view], features[y, 1 - view]
    for patch in (0, 1):
        strength = np.einsum("nd,nd->n", x[:, patch], shown)
        assert np.allclose(x[:, patch], strength[:, None] * shown, atol=1e-6)
        assert strength.min() >= 0.25 - 1e-6 and strength.max() <= 0.5 + 1e-6
    assert np.abs(np.einsum("npd,nd->np", x, hidden)).max() < 1e-6  # the other view appears nowhere
    assert 0.4 < view.mean() < 0.6  # each view shown about half the time


def test_feature_noise_holds_only_other_classes_features() -> None:
    features, d = _views(300, "both")
    x, y = d["x"].astype(np.float64), d["y"]
    coefficients = np.einsum("npd,kvd->npkv", x[:, 2:], features)  # (N, P-2, k, 2)
    own = coefficients[np.arange(len(y)), :, y]
    assert np.abs(own).max() < 1e-6
    scale = 1.0 / 4**1.5
    nonzero = coefficients[np.abs(coefficients) > 1e-4]  # float32 round-off aside
    assert nonzero.size == len(y) * 3 * (4 - 1) * 2  # every other class's two views, in each noise patch
    assert nonzero.min() >= 0.25 * scale - 1e-6 and nonzero.max() <= 0.75 * scale + 1e-6
    # the patches lie in the span of the features: nothing else is added
    reconstruction = np.einsum("npkv,kvd->npd", coefficients, features)
    assert np.allclose(reconstruction, x[:, 2:], atol=1e-6)


def test_orthonormal_features_refuse_more_than_the_dimension() -> None:
    with pytest.raises(MixlabValueError, match="dim >= 5"):
        orthonormal_features(5, 4, np.random.default_rng(0))


# ---------------------------------------------------------------- bad options are refused before any work


@pytest.mark.parametrize(("name", "options", "error", "message"), [
    ("rare_features", {"rare_fraction": 0.0}, MixlabValueError, "rare_fraction must be in"),
    ("rare_features", {"rare_fraction": 1.5}, MixlabValueError, "got 1.5"),
    ("rare_features", {"noise_std": -0.1}, MixlabValueError, "noise_std"),
    ("rare_features", {"feature_noise": "a lot"}, MixlabTypeError, "feature_noise must be a number"),
    ("rare_features", {"num_patches": 2}, MixlabValueError, "num_patches must be >= 3"),
    ("rare_features", {"dim": 1}, MixlabValueError, "dim must be >= 2"),
    ("rare_features", {"num_train": 0}, MixlabValueError, "num_train"),
    ("multi_view", {"num_classes": 1}, MixlabValueError, "num_classes"),
    ("multi_view", {"dim": 5, "num_classes": 3}, MixlabValueError, "dim must be >= 6"),
    ("multi_view", {"signal_range": [0.5, 0.25]}, MixlabValueError, "low < high"),
    ("multi_view", {"signal_range": 0.3}, MixlabTypeError, "two numbers"),
    ("multi_view", {"test_views": "two"}, UnknownNameError, "known: both, one"),
    ("multi_view", {"views": "one"}, UnknownNameError, "test_views"),
])  # fmt: skip
def test_bad_options_are_refused_with_a_clear_message(name: str, options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        load_dataset(name, **options)


def test_data_info_reports_an_in_memory_generated_dataset() -> None:
    """Generated datasets other than MNIST-1D have no cache to look for: they are always available."""
    from mixlab.data.api import data_search_paths, dataset_info, find_data
    from mixlab.errors import MixlabValueError

    info = dataset_info("rare_features")
    assert info["found"] is True and info["path"] is None and info["splits"]["train"] > 0
    assert data_search_paths("multi_view") == []
    with pytest.raises(MixlabValueError, match="generated in memory"):
        find_data("multi_view")
