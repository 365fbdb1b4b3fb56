"""The IDX reader (MNIST, Fashion-MNIST): round trips and every corruption naming its file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import idx_bytes, write_idx_dataset

from mixlab.data import DATASETS, load_dataset
from mixlab.data.idx import read_idx
from mixlab.errors import MixlabValueError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_round_trip(tmp_path, compress):
    arrays = write_idx_dataset(tmp_path / "mnist", n_train=30, n_test=10, compress=compress)
    s = load_dataset("mnist", root=tmp_path)
    assert s.train.x.dtype == torch.uint8 and s.train.x.shape == (30, 1, 28, 28)
    assert s.test.x.shape == (10, 1, 28, 28) and s.input_shape == (1, 28, 28)
    assert s.train.y.dtype == torch.int64
    assert np.array_equal(s.train.x[:, 0].numpy(), arrays["train"][0])
    assert np.array_equal(s.train.y.numpy(), arrays["train"][1])
    assert np.array_equal(s.test.x[:, 0].numpy(), arrays["t10k"][0])
    assert s.num_classes == 10 and s.task == "classification" and s.val is None
    assert s.info["source"] == str(tmp_path / "mnist")


def test_fashion_mnist_names_and_other_image_sizes(tmp_path):
    write_idx_dataset(tmp_path / "fashion-mnist", size=12)
    s = load_dataset("fashion_mnist", root=tmp_path)
    assert s.class_names[0] == "T-shirt/top" and s.class_names[9] == "Ankle boot"
    assert s.input_shape == (1, 12, 12)


@pytest.mark.parametrize("type_code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_every_type(tmp_path, type_code, compress):
    array = np.arange(24).reshape(2, 3, 4) * (1 if type_code in (0x08, 0x09) else 1000)
    array = (array % 100) if type_code in (0x08, 0x09) else array
    data = idx_bytes(array, type_code)
    path = tmp_path / "f"
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.shape == (2, 3, 4)
    assert np.array_equal(out, array)
    assert out.dtype.isnative


def _corrupt(tmp_path: Path, file: str, data: bytes) -> Path:
    write_idx_dataset(tmp_path / "mnist", compress=False)
    path = tmp_path / "mnist" / file
    path.write_bytes(data)
    return path


CORRUPTIONS = {
    "bad magic": ("train-images-idx3-ubyte", b"\x12\x34\x08\x03" + b"\x00" * 12, "magic"),
    "wrong dtype": ("train-images-idx3-ubyte", idx_bytes(np.zeros((30, 28, 28)), 0x0D), "0x00000D03"),
    "wrong ndim": ("train-labels-idx1-ubyte", idx_bytes(np.zeros((30, 2), np.uint8)), "0x00000802"),
    "truncated pixels": (
        "train-images-idx3-ubyte",
        struct.pack(">HBBIII", 0, 8, 3, 60000, 28, 28) + b"\x00" * 1000,
        "expected 47040000 bytes of data after the header",
    ),
    "extra bytes": ("t10k-labels-idx1-ubyte", idx_bytes(np.zeros(10, np.uint8)) + b"\x00", "expected 10 bytes"),
    "short header": ("t10k-images-idx3-ubyte", struct.pack(">HBBI", 0, 8, 3, 10), "truncated IDX header"),
    "empty": ("t10k-images-idx3-ubyte", b"", "shorter than the 4-byte magic"),
    "count mismatch": ("train-labels-idx1-ubyte", idx_bytes(np.zeros(29, np.uint8)), "30 images but"),
    "label out of range": ("t10k-labels-idx1-ubyte", idx_bytes(np.array([0] * 9 + [10], np.uint8)), "label 10"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_idx_names_the_file(tmp_path, case):
    file, data, shown = CORRUPTIONS[case]
    path = _corrupt(tmp_path, file, data)
    with pytest.raises(MixlabValueError) as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value)
    assert shown in str(err.value)


def test_label_range_message_gives_value_and_range(tmp_path):
    _corrupt(tmp_path, "t10k-labels-idx1-ubyte", idx_bytes(np.array([0] * 9 + [12], np.uint8)))
    with pytest.raises(MixlabValueError, match=r"label 12 at index 9 is outside the expected range \[0, 10\)"):
        load_dataset("mnist", root=tmp_path)


def test_truncated_gzip_names_the_file(tmp_path):
    write_idx_dataset(tmp_path / "mnist", compress=True)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(MixlabValueError, match="truncated gzip") as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value)


def test_corrupt_gzip_names_the_file(tmp_path):
    write_idx_dataset(tmp_path / "mnist", compress=True)
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[12:20] = b"\xff" * 8  # inside the deflate stream
    path.write_bytes(bytes(raw))
    with pytest.raises(MixlabValueError) as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value)


def test_plain_file_preferred_over_gz(tmp_path):
    write_idx_dataset(tmp_path / "mnist", compress=True, seed=1)
    plain = write_idx_dataset(tmp_path / "mnist", compress=False, seed=2)
    s = load_dataset("mnist", root=tmp_path)
    assert np.array_equal(s.train.x[:, 0].numpy(), plain["train"][0])


@pytest.mark.skipif(
    not all(
        (FASHION_DIR / f).is_file()
        for f in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
    ),
    reason="Fashion-MNIST is not installed in /usr/share/datasets/fashion-mnist",
)
def test_real_fashion_mnist_from_the_system_location(monkeypatch):
    import mixlab.data.locate as locate

    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS", [FASHION_DIR.parent])
    s = load_dataset("fashion_mnist")
    assert s.info["source"] == str(FASHION_DIR)
    assert s.train.x.shape == (60000, 1, 28, 28) and s.train.x.dtype == torch.uint8
    assert s.test.x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(s.train.y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(s.test.y), torch.full((10,), 1000))
    assert list(s.class_names) == list(DATASETS["fashion_mnist"].class_names)
