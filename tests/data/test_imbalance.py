"""Long-tailed training splits (data.imbalance_ratio) and class-balanced resampling (mix.sampling).

Together they build and undo a label shift: the train classes follow an exponential long-tailed profile
(Cao et al., NeurIPS 2019, arXiv 1906.07413), the test split stays as it is, and resampling draws every
class equally often (the mechanism Teney et al., ICML 2024, arXiv 2305.16817 find behind selective mixup).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixlab.data import ArrayData, DataSplits, load_dataset
from mixlab.data.loader import TensorLoader
from mixlab.data.resample import (
    ClassBalancedFolderLoader,
    ClassBalancedTensorLoader,
    class_balanced_order,
    class_balanced_weights,
)
from mixlab.data.splits import apply_train_options, check_train_options, imbalance_indices, long_tailed_counts
from mixlab.engine import load_config, train
from mixlab.engine.config import ConfigError
from mixlab.engine.distributed import DistInfo
from mixlab.engine.run import _loader
from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.sampling import CMixupPairing


def _toy(per_class=100, num_classes=5) -> DataSplits:
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = torch.arange(len(y), dtype=torch.float32)[:, None]  # x remembers each sample's original index
    train, test = ArrayData(x, y), ArrayData(x[:50].clone(), y[:50].clone())
    return DataSplits("toy", "classification", train, None, test, num_classes, (1,), None, {})


def _unbalance(splits, ratio, seed=0, val=0.0, subset=None, noise=0.0):
    return apply_train_options(splits, val, subset, noise, "symmetric", seed, imbalance_ratio=ratio)


# ------------------------------------------------------------------ the long-tailed profile


def test_profile_follows_the_exponential_law():
    counts = long_tailed_counts(10, 500, 100.0)
    expected = [int(np.floor(500 * 100.0 ** (-c / 9) + 0.5)) for c in range(10)]
    assert counts.tolist() == expected
    assert counts[0] == 500 and counts[-1] == 5
    assert np.all(np.diff(counts) <= 0)
    assert long_tailed_counts(3, 10, 1.0).tolist() == [10, 10, 10]  # ratio 1: balanced
    assert long_tailed_counts(4, 3, 1e6).tolist() == [3, 1, 1, 1]  # never below one sample


def test_train_split_gets_the_profile_and_info_records_it():
    splits = _toy()
    test_x, test_y = splits.test.x.clone(), splits.test.y.clone()
    s = _unbalance(splits, 10.0, seed=3)
    counts = torch.bincount(s.train.y, minlength=5).tolist()
    assert counts == long_tailed_counts(5, 100, 10.0).tolist() == [100, 56, 32, 18, 10]
    ids = s.train.x[:, 0].long()
    assert len(set(ids.tolist())) == len(ids) and torch.equal(s.train.y, _toy().train.y[ids])
    record = s.info["imbalance"]
    assert record == {
        "ratio": 10.0,
        "profile": "exponential",
        "seed": 3,
        "per_class": counts,
        "num_before": 500,
        "num_kept": sum(counts),
    }
    assert torch.equal(s.test.x, test_x) and torch.equal(s.test.y, test_y)  # the test split is untouched
    assert s.info["sizes"]["test"] == 50


def test_the_head_is_subset_per_class_when_given_and_val_keeps_the_original_shares():
    s = _unbalance(_toy(), 4.0, subset=40, val=0.2, seed=0)
    assert torch.bincount(s.val.y).tolist() == [20] * 5  # held out before: balanced like the test split
    assert torch.bincount(s.train.y).tolist() == long_tailed_counts(5, 40, 4.0).tolist()
    assert s.info["subset"]["num_kept"] == 200 and s.info["imbalance"]["num_before"] == 200


def test_a_class_smaller_than_its_profile_keeps_all_its_samples():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 10)
    kept = imbalance_indices(labels, 3, 2.0, np.random.default_rng(0))
    assert np.bincount(labels[kept]).tolist() == [10, 2, 5]


def test_the_choice_is_seeded_and_leaves_the_other_streams_alone():
    a, b, c = (_unbalance(_toy(), 5.0, seed=s).train.x[:, 0] for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with_imbalance = _unbalance(_toy(), 5.0, seed=1, val=0.1)
    without = apply_train_options(_toy(), 0.1, None, 0.0, "symmetric", 1)
    assert torch.equal(with_imbalance.val.x, without.val.x)


def test_label_noise_is_added_after_the_imbalance():
    s = _unbalance(_toy(), 10.0, seed=0, noise=0.2)
    assert torch.bincount(s.clean_train_y).tolist() == [100, 56, 32, 18, 10]
    assert s.info["label_noise"]["num_flipped"] == round(0.2 * 216)


def test_load_dataset_applies_it_to_a_real_dataset():
    s = load_dataset("digits", imbalance_ratio=10.0, seed=0)
    full = load_dataset("digits", seed=0)
    head = int(torch.bincount(full.train.y).max())
    expected = np.minimum(long_tailed_counts(10, head, 10.0), torch.bincount(full.train.y).numpy())
    assert torch.bincount(s.train.y, minlength=10).tolist() == expected.tolist()
    assert torch.equal(s.test.x, full.test.x) and torch.equal(s.test.y, full.test.y)


@pytest.mark.parametrize(
    ("ratio", "error", "match"),
    [
        (0.5, MixlabValueError, "imbalance_ratio must be a finite number >= 1.*got 0.5"),
        (float("inf"), MixlabValueError, "got inf"),
        (float("nan"), MixlabValueError, "got nan"),
        (True, MixlabTypeError, "imbalance_ratio must be a real number; got True"),
        ("10", MixlabTypeError, "got '10' of type str"),
    ],
)
def test_bad_ratios_are_refused_before_loading(ratio, error, match):
    with pytest.raises(error, match=match):
        check_train_options(0.0, None, 0.0, "symmetric", 0, imbalance_ratio=ratio)
    with pytest.raises(error, match=match):
        load_dataset("digits", imbalance_ratio=ratio)


def test_regression_and_single_class_data_are_refused():
    with pytest.raises(MixlabValueError, match="imbalance_ratio needs classes; dataset 'diabetes' is a regression"):
        load_dataset("diabetes", imbalance_ratio=2.0)
    part = ArrayData(torch.zeros(4, 1), torch.zeros(4))
    regression = DataSplits("r", "regression", part, None, part, None, (1,), None, {})
    with pytest.raises(MixlabValueError, match="needs classes; dataset 'r' is a regression task"):
        _unbalance(regression, 2.0)
    with pytest.raises(MixlabValueError, match="at least 2 classes; dataset 'toy' has 1"):
        _unbalance(_toy(num_classes=1), 2.0)


def test_class_selection_keeps_and_relabels_every_split_before_the_imbalance():
    full = load_dataset("digits", seed=0)
    s = load_dataset("digits", classes=[8, 3], imbalance_ratio=5.0, seed=0)
    assert s.num_classes == 2 and s.class_names == [full.class_names[8], full.class_names[3]]
    for name in ("train", "test"):
        assert set(getattr(s, name).y.tolist()) == {0, 1}
    assert torch.equal(s.test.x, full.test.x[(full.test.y == 8) | (full.test.y == 3)])
    assert torch.equal(s.test.y, (full.test.y[(full.test.y == 8) | (full.test.y == 3)] == 3).long())
    counts = [int((full.train.y == c).sum()) for c in (8, 3)]
    assert torch.bincount(s.train.y).tolist() == [counts[0], round(max(counts) / 5)]
    assert s.info["classes"]["kept"] == [8, 3] and s.info["classes"]["sizes_before"] == full.sizes()


@pytest.mark.parametrize(
    ("classes", "error", "match"),
    [
        ([0, 10], MixlabValueError, r"classes \[10\] are not classes of dataset 'digits', which has 10"),
        ([1, 1], MixlabValueError, "at least two distinct class indices"),
        ([2], MixlabValueError, "at least two distinct class indices"),
        ("01", MixlabTypeError, "classes must be a list of class indices"),
        ([0, 1.5], MixlabTypeError, "classes item must be an int"),
    ],
)
def test_bad_class_selections_are_refused(classes, error, match):
    with pytest.raises(error, match=match):
        load_dataset("digits", classes=classes)


def test_class_selection_needs_classes():
    with pytest.raises(MixlabValueError, match="classes needs classes; dataset 'diabetes' is a regression task"):
        load_dataset("diabetes", classes=[0, 1])


# ------------------------------------------------------------------ class-balanced resampling


def test_weights_give_every_class_the_same_mass():
    labels = torch.tensor([0] * 70 + [1] * 20 + [3] * 10)  # class 2 absent
    weights = class_balanced_weights(labels)
    assert weights.dtype == torch.float64 and torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    per_class = torch.zeros(4, dtype=torch.float64).index_add_(0, labels, weights)
    assert torch.allclose(per_class, torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3], dtype=torch.float64))


def test_draws_are_balanced_in_expectation():
    labels = torch.tensor([0] * 800 + [1] * 150 + [2] * 50)
    weights = class_balanced_weights(labels)
    drawn = torch.cat([labels[class_balanced_order(weights, epoch=e, seed=0, drop_last=False)] for e in range(20)])
    shares = torch.bincount(drawn, minlength=3).double() / len(drawn)
    # 20,000 draws: the standard error of each share is about 0.0033
    assert torch.allclose(shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02)


def test_orders_are_seeded_and_differ_across_epochs_and_seeds():
    weights = class_balanced_weights(torch.arange(200) % 7)

    def order(epoch, seed):
        return class_balanced_order(weights, epoch=epoch, seed=seed, drop_last=False)

    assert torch.equal(order(3, 5), order(3, 5))
    assert not torch.equal(order(3, 5), order(4, 5))
    assert not torch.equal(order(3, 5), order(3, 6))
    assert len(order(0, 0)) == 200


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_take_disjoint_shards_of_one_draw(drop_last):
    weights = class_balanced_weights(torch.arange(103) % 4)
    whole = class_balanced_order(weights, epoch=2, seed=1, drop_last=drop_last)
    shards = [
        class_balanced_order(weights, epoch=2, seed=1, drop_last=drop_last, rank=r, world_size=3) for r in range(3)
    ]
    kept = 102 if drop_last else 103
    assert sum(len(s) for s in shards) == kept
    if drop_last:
        assert {len(s) for s in shards} == {34}
    interleaved = torch.stack([s[:34] for s in shards], dim=1).reshape(-1)
    assert torch.equal(interleaved, whole[:102])  # position p of the draw goes to rank p % 3


def test_tensor_loader_batches_are_class_balanced_and_follow_set_epoch():
    y = torch.tensor([0] * 180 + [1] * 20)
    x = torch.arange(200, dtype=torch.float32)[:, None]
    loader = ClassBalancedTensorLoader(x, y, batch_size=50, drop_last=True, seed=4)
    assert len(loader) == 4 and loader.num_samples == 200
    batches = list(loader)
    assert all(torch.equal(b_y, y[b_x[:, 0].long()]) for b_x, b_y in batches)
    minority = sum(int((b_y == 1).sum()) for _, b_y in batches)
    assert 70 <= minority <= 130  # about half of 200 draws, where uniform order would give 20
    first = torch.cat([b for b, _ in loader])
    loader.set_epoch(1)
    assert not torch.equal(first, torch.cat([b for b, _ in loader]))
    loader.set_epoch(0)
    assert torch.equal(first, torch.cat([b for b, _ in loader]))


def test_folder_loader_draws_the_same_indices_as_the_tensor_loader():
    labels = torch.tensor([0] * 27 + [1] * 3)
    x = torch.arange(30, dtype=torch.float32)[:, None, None, None]
    folder = ClassBalancedFolderLoader(
        torch.utils.data.TensorDataset(x, labels), labels, batch_size=8, seed=2, workers=0
    )
    tensors = ClassBalancedTensorLoader(x, labels, batch_size=8, seed=2)
    folder.set_epoch(5)
    tensors.set_epoch(5)
    assert torch.equal(torch.cat([b for b, _ in folder]), torch.cat([b for b, _ in tensors]))


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (torch.tensor([0.5, 1.0]), MixlabTypeError, "integer class labels.*float32"),
        (torch.zeros(3, 2, dtype=torch.int64), MixlabTypeError, r"shape \(3, 2\)"),
        (torch.tensor([0, -1]), MixlabValueError, "labels must be >= 0; got -1"),
        (torch.zeros(0, dtype=torch.int64), MixlabValueError, "at least one sample"),
    ],
)
def test_bad_labels_are_refused(labels, error, match):
    with pytest.raises(error, match=match):
        class_balanced_weights(labels)


# ------------------------------------------------------------------ config and engine


def test_config_fields_are_validated():
    cfg = load_config({"data": {"imbalance_ratio": 50}, "mix": {"sampling": "class_balanced"}})
    assert cfg.data.imbalance_ratio == 50.0 and cfg.mix.sampling == "class_balanced"
    assert load_config({}).data.imbalance_ratio is None and load_config({}).mix.sampling is None  # None: uniform
    assert load_config({"mix": {"sampling": "uniform"}}).mix.sampling == "uniform"
    with pytest.raises(ConfigError, match=r"data.imbalance_ratio: Input should be greater than or equal to 1.*got 0.5"):
        load_config({"data": {"imbalance_ratio": 0.5}})
    with pytest.raises(ConfigError, match=r"data.imbalance_ratio: .*finite"):
        load_config({"data": {"imbalance_ratio": float("inf")}})
    with pytest.raises(ConfigError, match=r"mix.sampling: Input should be 'uniform' or 'class_balanced'.*got 'balanced'"):
        load_config({"mix": {"sampling": "balanced"}})
    assert load_config({"data": {"classes": [0, 6]}}).data.classes == [0, 6]
    with pytest.raises(ConfigError, match=r"data.classes: classes must list at least two distinct"):
        load_config({"data": {"classes": [4, 4]}})


def _digits_config(**mix):
    return load_config(
        {
            "data": {"name": "digits", "imbalance_ratio": 10.0},
            "model": {"name": "mlp"},
            "mix": {"method": "mixup", "options": {"alpha": 1.0, "pairing": "different_class"}, **mix},
            "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "progress": "off"},
        }
    )


def test_engine_trains_on_the_long_tailed_split_with_balanced_batches(tmp_path, one_thread):
    result = train(_digits_config(sampling="class_balanced"), tmp_path / "run", echo=False)
    assert result.splits.info["imbalance"]["per_class"][0] > result.splits.info["imbalance"]["per_class"][-1]
    assert result.splits.sizes()["train"] == sum(result.splits.info["imbalance"]["per_class"])
    assert result.final["epochs"] == 1 and "test_acc" in result.final
    assert '"imbalance"' in (tmp_path / "run" / "run.json").read_text()


def test_engine_builds_the_balanced_loader_for_training_only():
    config = _digits_config(sampling="class_balanced")
    part = ArrayData(torch.zeros(10, 3), torch.arange(10) % 2)
    dist = DistInfo(0, 1, torch.device("cpu"))
    common = {"target_mean": 0.0, "target_scale": 1.0}
    assert isinstance(_loader(config, part, dist, train=True, **common), ClassBalancedTensorLoader)
    evaluation = _loader(config, part, dist, train=False, **common)
    assert isinstance(evaluation, TensorLoader) and not isinstance(evaluation, ClassBalancedTensorLoader)


def test_engine_refuses_balanced_sampling_without_classes_or_with_dataset_c_mixup(tmp_path):
    config = load_config(
        {
            "data": {"name": "diabetes"},
            "model": {"name": "mlp"},
            "mix": {"loss": "mse", "sampling": "class_balanced"},
            "train": {"epochs": 1, "device": "cpu", "progress": "off"},
        }
    )
    with pytest.raises(MixlabValueError, match="'class_balanced' draws samples by class frequency; dataset 'diabetes'"):
        train(config, tmp_path / "run", echo=False)
    assert not (tmp_path / "run").exists()
    pairing = CMixupPairing(sigma=1.0)
    pairing.fit(torch.linspace(0, 1, 10))
    part = ArrayData(torch.zeros(10, 3), torch.linspace(0, 1, 10))
    with pytest.raises(MixlabValueError, match="cannot be combined with the dataset-scope c_mixup pairing"):
        dist = DistInfo(0, 1, torch.device("cpu"))
        _loader(config, part, dist, train=True, target_mean=0.0, target_scale=1.0, pairing=pairing)
