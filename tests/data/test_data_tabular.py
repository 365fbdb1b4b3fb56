"""scikit-learn's digits and diabetes, and CSV tables."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mixlab.data import load_dataset
from mixlab.errors import MixlabValueError, UnknownNameError


def test_digits_shapes_and_stratified_split():
    s = load_dataset("digits")
    assert s.train.x.shape == (1438, 64) and s.test.x.shape == (359, 64)
    assert s.train.x.dtype == torch.float32 and s.train.y.dtype == torch.int64
    assert float(s.train.x.max()) == 16.0 and float(s.train.x.min()) == 0.0
    counts = torch.bincount(s.test.y, minlength=10).float()
    share = counts / torch.bincount(torch.cat([s.train.y, s.test.y]), minlength=10).float()
    assert torch.all((share - 0.2).abs() < 0.02)


def test_digits_test_set_independent_of_training_seed():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=7)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    c = load_dataset("digits", split_seed=1)
    assert not torch.equal(a.test.x, c.test.x)
    d = load_dataset("digits", test_fraction=0.5)
    assert len(d.test) == 899  # 0.5 * 1797 = 898.5, halves rounded up


def test_diabetes_regression():
    s = load_dataset("diabetes")
    assert s.task == "regression" and s.num_classes is None and s.class_names is None
    assert s.train.x.shape == (354, 10) and s.test.x.shape == (88, 10) and s.input_shape == (10,)
    assert s.train.y.dtype == torch.float32 and s.train.y.shape == (354,)
    assert torch.equal(load_dataset("diabetes", seed=3).test.y, s.test.y)
    v = load_dataset("diabetes", val_fraction=0.1)
    assert len(v.val) == 35 and len(v.train) == 319


@pytest.mark.parametrize("option", [{"subset_per_class": 5}, {"label_noise": 0.1}])
def test_regression_refuses_class_options(option):
    with pytest.raises(MixlabValueError, match="regression"):
        load_dataset("diabetes", **option)


def _write_csv(path, header, rows):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_string_classes_sorted(tmp_path):
    rows = [[i, i * 0.5, ["pear", "apple", "fig"][i % 3]] for i in range(30)]
    path = _write_csv(tmp_path / "t.csv", ["a", "b", "fruit"], rows)
    s = load_dataset("csv", path=path, target="fruit")
    assert s.task == "classification" and s.class_names == ["apple", "fig", "pear"] and s.num_classes == 3
    assert s.input_shape == (2,) and len(s.train) == 24 and len(s.test) == 6
    x = torch.cat([s.train.x, s.test.x])
    y = torch.cat([s.train.y, s.test.y])
    for xi, yi in zip(x, y, strict=True):
        assert s.class_names[int(yi)] == ["pear", "apple", "fig"][int(xi[0]) % 3]
        assert float(xi[1]) == float(xi[0]) * 0.5


def test_csv_auto_task(tmp_path):
    ints = _write_csv(tmp_path / "i.csv", ["x", "y"], [[i, i % 4 + 10] for i in range(20)])
    s = load_dataset("csv", path=ints, target="y")
    assert s.task == "classification" and s.class_names == ["10", "11", "12", "13"]
    floats = _write_csv(tmp_path / "f.csv", ["x", "y"], [[i, i / 3] for i in range(20)])
    r = load_dataset("csv", path=floats, target="y")
    assert r.task == "regression" and r.train.y.dtype == torch.float32
    many = _write_csv(tmp_path / "m.csv", ["x", "y"], [[i, i] for i in range(60)])
    assert load_dataset("csv", path=many, target="y").task == "regression"
    assert load_dataset("csv", path=many, target="y", task="classification").num_classes == 60


def test_csv_multi_target_regression_and_features(tmp_path):
    rows = [[i, 2 * i, 3 * i, "id"] for i in range(10)]
    path = _write_csv(tmp_path / "t.csv", ["a", "b", "c", "name"], rows)
    s = load_dataset("csv", path=path, target=["b", "c"], features=["a"], test_fraction=0.3)
    assert s.task == "regression" and s.train.y.shape == (7, 2) and s.input_shape == (1,)
    assert torch.equal(s.train.y, torch.stack([2 * s.train.x[:, 0], 3 * s.train.x[:, 0]], 1))


def test_csv_errors(tmp_path):
    path = _write_csv(tmp_path / "t.csv", ["a", "b", "label"], [[1, 2, "x"], [3, "oops", "y"], [4, 5, "x"]])
    with pytest.raises(MixlabValueError, match="no column 'lbl'; the columns are: a, b, label"):
        load_dataset("csv", path=path, target="lbl")
    with pytest.raises(MixlabValueError, match="column 'b' must be numeric; row 3 holds 'oops'"):
        load_dataset("csv", path=path, target="label")
    with pytest.raises(MixlabValueError, match="needs option 'target'"):
        load_dataset("csv", path=path)
    with pytest.raises(UnknownNameError, match="classificaton"):
        load_dataset("csv", path=path, target="label", task="classificaton")
    with pytest.raises(MixlabValueError, match="not both"):
        load_dataset("csv", path=path, target="label", test_path=path, test_fraction=0.2)


def test_csv_separate_test_file(tmp_path):
    train = _write_csv(tmp_path / "train.csv", ["x", "y"], [[i, "ab"[i % 2]] for i in range(6)])
    test = _write_csv(tmp_path / "test.csv", ["y", "x"], [["b", 10], ["a", 11]])
    s = load_dataset("csv", path=train, target="y", test_path=test)
    assert len(s.train) == 6 and s.test.x[:, 0].tolist() == [10.0, 11.0] and s.test.y.tolist() == [1, 0]
    bad = _write_csv(tmp_path / "bad.csv", ["x", "y"], [[1, "c"]])
    with pytest.raises(MixlabValueError, match="not seen in the training file") as err:
        load_dataset("csv", path=train, target="y", test_path=bad)
    assert str(bad) in str(err.value)


def test_csv_labels_as_floats_are_one_class(tmp_path):
    path = _write_csv(tmp_path / "t.csv", ["x", "y"], [[0, "1"], [1, "1.0"], [2, "2"], [3, "2.0"], [4, "1"]])
    s = load_dataset("csv", path=path, target="y", task="classification", test_fraction=0.4)
    assert s.class_names == ["1", "2"]
    assert np.array_equal(np.sort(torch.cat([s.train.x[:, 0], s.test.x[:, 0]]).numpy()), np.arange(5.0))
