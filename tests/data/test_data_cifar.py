"""The CIFAR-10/100 pickle reader: round trips of the official layout and errors naming the file."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from data_fixtures import write_cifar

from mixlab.data import find_data, load_dataset
from mixlab.errors import MixlabValueError


def _expected_images(data: np.ndarray) -> np.ndarray:
    # Each row is the 1024 red values, then green, then blue, each plane row-major (official layout).
    n = len(data)
    out = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for i in range(n):
        for c in range(3):
            out[i, c] = data[i, c * 1024 : (c + 1) * 1024].reshape(32, 32)
    return out


def test_cifar10_round_trip(tmp_path):
    written = write_cifar(tmp_path / "cifar-10-batches-py", n=4)
    s = load_dataset("cifar10", root=tmp_path)
    assert s.train.x.shape == (20, 3, 32, 32) and s.train.x.dtype == torch.uint8
    assert s.test.x.shape == (4, 3, 32, 32) and s.input_shape == (3, 32, 32)
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = [label for i in range(1, 6) for label in written[f"data_batch_{i}"][1]]
    assert np.array_equal(s.train.x.numpy(), _expected_images(train_data))
    assert s.train.y.tolist() == train_labels and s.train.y.dtype == torch.int64
    assert np.array_equal(s.test.x.numpy(), _expected_images(written["test_batch"][0]))
    assert s.class_names == [f"c{i}" for i in range(10)] and s.num_classes == 10


def test_cifar10_inside_a_dataset_folder(tmp_path):
    # Where `mixlab data fetch cifar10` unpacks the archive: <root>/cifar10/cifar-10-batches-py/
    write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py", n=2)
    assert find_data("cifar10", tmp_path) == tmp_path / "cifar10"
    assert len(load_dataset("cifar10", root=tmp_path).train) == 10


@pytest.mark.parametrize("labels", ["fine", "coarse"])
def test_cifar100_round_trip(tmp_path, labels):
    written = write_cifar(tmp_path / "cifar-100-python", hundred=True, n=5)
    s = load_dataset("cifar100", root=tmp_path, labels=labels)
    column = 1 if labels == "fine" else 2
    assert np.array_equal(s.train.x.numpy(), _expected_images(written["train"][0]))
    assert s.train.y.tolist() == written["train"][column]
    assert s.test.y.tolist() == written["test"][column]
    assert s.num_classes == (100 if labels == "fine" else 20)
    assert s.class_names[3] == f"{labels}3"


def test_truncated_pickle_names_the_file(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", n=3)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MixlabValueError, match="corrupt or truncated") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value)


def test_pickle_with_code_is_refused(tmp_path):
    write_cifar(tmp_path / "cifar-100-python", hundred=True, n=2)
    path = tmp_path / "cifar-100-python" / "test"

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(MixlabValueError, match=r"refusing to load .*print") as err:
        load_dataset("cifar100", root=tmp_path)
    assert str(path) in str(err.value)


def test_bad_batch_contents_name_the_file(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", n=3)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, protocol=2))
    with pytest.raises(MixlabValueError, match=r"uint8 \(N, 3072\)") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value)
    path.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 10]}, protocol=2))
    with pytest.raises(MixlabValueError, match=r"label 10 .*\[0, 10\)") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value)
    path.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8)}, protocol=2))
    with pytest.raises(MixlabValueError, match="no b'labels' entry"):
        load_dataset("cifar10", root=tmp_path)
