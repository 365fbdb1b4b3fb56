"""Validation hold-out, per-class subsets and label noise: exact, seeded, recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mixlab.data.registry as registry
from mixlab.data import ArrayData, DataSplits, load_dataset
from mixlab.data.splits import add_label_noise, apply_train_options, stratified_split
from mixlab.errors import MixlabError, MixlabTypeError, MixlabValueError, UnknownNameError


def _toy(counts=(40, 30, 20, 10)) -> DataSplits:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    x = torch.arange(len(y), dtype=torch.float32)[:, None]  # x remembers each sample's original index
    train = ArrayData(x, y)
    return DataSplits("toy", "classification", train, None, train, len(counts), (1,), None, {})


def _apply(s, val=0.0, subset=None, noise=0.0, kind="symmetric", seed=0):
    return apply_train_options(s, val, subset, noise, kind, seed)


def test_val_split_stratified_exact_and_disjoint():
    s = _apply(_toy(), val=0.2, seed=3)
    assert torch.bincount(s.val.y).tolist() == [8, 6, 4, 2]
    assert torch.bincount(s.train.y).tolist() == [32, 24, 16, 8]
    ids = torch.cat([s.train.x[:, 0], s.val.x[:, 0]]).long()
    assert sorted(ids.tolist()) == list(range(100))
    assert s.info["val_split"] == {"fraction": 0.2, "seed": 3, "stratified": True, "num_train": 80, "num_val": 20}


def test_val_split_deterministic_and_seeded():
    a, b, c = _apply(_toy(), val=0.3, seed=1), _apply(_toy(), val=0.3, seed=1), _apply(_toy(), val=0.3, seed=2)
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)


@pytest.mark.parametrize("fraction", [0.05, 0.13, 0.5, 0.77])
def test_stratified_split_total_and_per_class(fraction):
    labels = np.repeat(np.arange(7), [13, 1, 8, 21, 5, 5, 2])
    kept, held = stratified_split(labels, fraction, np.random.default_rng(0))
    assert len(held) == int(np.floor(fraction * len(labels) + 0.5))
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(labels)))
    per_class = np.bincount(labels[held], minlength=7)
    assert np.all(np.abs(per_class - fraction * np.bincount(labels)) < 1)


def test_subset_per_class_counts():
    s = _apply(_toy(), subset=15, seed=0)
    assert torch.bincount(s.train.y).tolist() == [15, 15, 15, 10]
    assert s.info["subset"] == {"per_class": 15, "seed": 0, "num_before": 100, "num_kept": 55}
    ids = s.train.x[:, 0].long()
    assert len(set(ids.tolist())) == 55 and torch.equal(s.train.y, _toy().train.y[ids])
    assert not torch.equal(ids, _apply(_toy(), subset=15, seed=1).train.x[:, 0].long())


@pytest.mark.parametrize("kind", ["symmetric", "flip"])
@pytest.mark.parametrize("rate", [0.0001, 0.1, 0.37, 1.0])
def test_label_noise_exact_and_recorded(kind, rate):
    s = _apply(_toy(), noise=rate, kind=kind, seed=4)
    record = s.info["label_noise"]
    n = len(s.train)
    assert record["num_flipped"] == int(np.floor(rate * n + 0.5)) == len(record["flipped"])
    assert record["kind"] == kind and record["rate"] == rate and record["seed"] == 4
    assert record["flipped"] == sorted(record["flipped"])
    differ = torch.nonzero(s.train.y != s.clean_train_y).flatten().tolist()
    assert differ == record["flipped"]  # every chosen label changes; nothing else does
    assert torch.equal(s.clean_train_y, _toy().train.y) and s.train_clean_y is s.clean_train_y
    f = torch.tensor(record["flipped"], dtype=torch.long)
    if kind == "flip":
        assert torch.equal(s.train.y[f], (s.clean_train_y[f] + 1) % 4)
    assert torch.equal(s.train.x, _toy().train.x)


def test_symmetric_noise_is_uniform_over_other_classes():
    y = torch.zeros(40000, dtype=torch.long)
    noisy, _ = add_label_noise(y, 5, 1.0, "symmetric", np.random.default_rng(0))
    counts = torch.bincount(noisy, minlength=5)
    assert counts[0] == 0 and torch.all((counts[1:].float() / 40000 - 0.25).abs() < 0.01)


def test_noise_deterministic_and_seed_dependent():
    a, b = _apply(_toy(), noise=0.3, seed=9), _apply(_toy(), noise=0.3, seed=9)
    assert torch.equal(a.train.y, b.train.y)
    assert a.info["label_noise"]["flipped"] != _apply(_toy(), noise=0.3, seed=10).info["label_noise"]["flipped"]


def test_no_noise_no_record():
    s = _apply(_toy())
    assert "label_noise" not in s.info and s.clean_train_y is None
    assert s.info["sizes"] == {"train": 100, "val": 0, "test": 100}


def test_order_val_then_subset_then_noise_on_digits():
    s = load_dataset("digits", val_fraction=0.25, subset_per_class=20, label_noise=0.5, noise_kind="flip", seed=0)
    assert torch.bincount(s.clean_train_y).tolist() == [20] * 10  # the noise comes after the subset
    assert len(s.val) == 360  # round(0.25 * 1438), held out before the subset
    assert s.info["label_noise"]["num_flipped"] == 100
    assert s.info["sizes"] == {"train": 200, "val": 360, "test": 359}


BAD = [
    ({"val_fraction": 1.0}, MixlabValueError, "val_fraction must be in [0, 1); got 1.0"),
    ({"val_fraction": -0.1}, MixlabValueError, "val_fraction"),
    ({"label_noise": 1.5}, MixlabValueError, "label_noise must be a probability"),
    ({"noise_kind": "pair"}, UnknownNameError, "unknown noise_kind 'pair'; known: flip, symmetric"),
    ({"subset_per_class": 0}, MixlabValueError, "subset_per_class must be an int >= 1"),
    ({"subset_per_class": 2.5}, MixlabTypeError, "subset_per_class must be an int"),
    ({"seed": -1}, MixlabValueError, "seed"),
    ({"image_size": 32}, UnknownNameError, "unknown option for dataset 'mnist' 'image_size'"),
]


@pytest.mark.parametrize("kwargs, kind, shown", BAD)
def test_bad_options_fail_before_reading(monkeypatch, kwargs, kind, shown):
    def must_not_run(*args, **kw):
        raise AssertionError("files were looked for before the options were checked")

    import mixlab.data.api as api

    monkeypatch.setattr(api, "find_data", must_not_run)
    with pytest.raises(kind) as err:
        load_dataset("mnist", **kwargs)
    assert shown in str(err.value)


def test_bad_dataset_options():
    with pytest.raises(UnknownNameError, match="known: split_seed, test_fraction"):
        load_dataset("digits", image_size=3)
    with pytest.raises(MixlabValueError, match=r"test_fraction must be in \(0, 1\); got 1.2"):
        load_dataset("digits", test_fraction=1.2)
    with pytest.raises(MixlabValueError, match="in_memory must be 'auto', True or False"):
        load_dataset("imagefolder", path=".", in_memory="yes")
    with pytest.raises(MixlabError, match="labels"):
        load_dataset("cifar100", labels="medium")
    assert registry.DATASETS["csv"].resolve_options({"path": "a.csv", "target": "y"})["task"] == "auto"


def test_val_too_small():
    with pytest.raises(MixlabValueError, match=r"val_fraction=0\.001 of 100 training samples"):
        _apply(_toy(), val=0.001)
