"""Image folders: both layouts, decoded in memory or read lazily, and unreadable files named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import write_images
from PIL import Image

from mixlab.data import ArrayData, ImageFolderData, load_dataset
from mixlab.errors import MixlabValueError


def _split_layout(root):
    write_images(root / "train", {"cat": 3, "dog": 4}, seed=0)
    write_images(root / "test", {"cat": 1, "dog": 2}, seed=1)
    return root


def test_train_test_layout_in_memory(tmp_path):
    root = _split_layout(tmp_path / "pets")
    s = load_dataset("imagefolder", path=root, image_size=8, in_memory=True)
    assert isinstance(s.train, ArrayData) and s.train.x.shape == (7, 3, 8, 8) and s.train.x.dtype == torch.uint8
    assert s.test.x.shape == (3, 3, 8, 8)
    assert s.class_names == ["cat", "dog"] and s.num_classes == 2 and s.input_shape == (3, 8, 8)
    assert s.train.y.tolist() == [0, 0, 0, 1, 1, 1, 1] and s.test.y.tolist() == [0, 1, 1]


def test_lazy_matches_in_memory(tmp_path):
    root = _split_layout(tmp_path / "pets")
    eager = load_dataset("imagefolder", path=root, image_size=5, in_memory=True)
    lazy = load_dataset("imagefolder", path=root, image_size=5, in_memory=False)
    assert isinstance(lazy.train, ImageFolderData) and len(lazy.train) == 7
    assert lazy.train.classes == ["cat", "dog"] and lazy.train.image_size == 5 and lazy.train.channels == 3
    for i in range(len(lazy.train)):
        x, y = lazy.train[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 5, 5)
        assert torch.equal(x, eager.train.x[i]) and y == int(eager.train.y[i])


def test_pixels_survive_without_resizing(tmp_path):
    paths = write_images(tmp_path / "one" / "train", {"a": 1, "b": 1}, size=(6, 6))
    write_images(tmp_path / "one" / "test", {"a": 1}, size=(6, 6))
    s = load_dataset("imagefolder", path=tmp_path / "one", image_size=6)
    expected = np.asarray(Image.open(paths[0]).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(s.train.x[0].numpy(), expected)


def test_grayscale_and_auto(tmp_path):
    root = _split_layout(tmp_path / "pets")
    s = load_dataset("imagefolder", path=root, image_size=4, grayscale=True)
    assert isinstance(s.train, ArrayData)  # "auto": tiny, so decoded up front
    assert s.train.x.shape == (7, 1, 4, 4) and s.input_shape == (1, 4, 4)
    assert s.info["in_memory"] is True


def test_auto_goes_lazy_above_the_limit(tmp_path, monkeypatch):
    import mixlab.data.imagefolder as imagefolder

    monkeypatch.setattr(imagefolder, "IN_MEMORY_LIMIT", 100)
    s = load_dataset("imagefolder", path=_split_layout(tmp_path / "pets"), image_size=8)
    assert isinstance(s.train, ImageFolderData) and s.info["in_memory"] is False


def test_val_folder_is_the_test_split_without_test(tmp_path):
    write_images(tmp_path / "p" / "train", {"a": 2, "b": 2})
    write_images(tmp_path / "p" / "val", {"b": 1})
    s = load_dataset("imagefolder", path=tmp_path / "p", image_size=4)
    assert s.test.y.tolist() == [1] and s.val is None


def test_test_and_val_folders_give_three_splits(tmp_path):
    root = _split_layout(tmp_path / "pets")
    write_images(root / "val", {"cat": 2}, seed=3)
    s = load_dataset("imagefolder", path=root, image_size=4)
    assert s.sizes() == {"train": 7, "val": 2, "test": 3}
    with pytest.raises(MixlabValueError, match="already has one"):
        load_dataset("imagefolder", path=root, image_size=4, val_fraction=0.2)


def test_single_tree_gets_a_stratified_seeded_test_split(tmp_path):
    write_images(tmp_path / "flat", {"a": 10, "b": 5, "c": 5})
    s = load_dataset("imagefolder", path=tmp_path / "flat", image_size=4, test_fraction=0.2)
    assert torch.bincount(s.test.y).tolist() == [2, 1, 1]
    assert torch.bincount(s.train.y).tolist() == [8, 4, 4]
    again = load_dataset("imagefolder", path=tmp_path / "flat", image_size=4, test_fraction=0.2, seed=5)
    assert torch.equal(s.test.x, again.test.x)  # the training seed does not move the test set
    other = load_dataset("imagefolder", path=tmp_path / "flat", image_size=4, test_fraction=0.2, split_seed=1)
    assert not torch.equal(s.test.x, other.test.x)


def test_unreadable_image_is_named(tmp_path):
    root = _split_layout(tmp_path / "pets")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(MixlabValueError, match="cannot read image") as err:
        load_dataset("imagefolder", path=root, image_size=4, in_memory=True)
    assert str(bad) in str(err.value)
    lazy = load_dataset("imagefolder", path=root, image_size=4, in_memory=False)
    index = lazy.train.paths.index(str(bad))
    with pytest.raises(MixlabValueError) as err:
        lazy.train[index]
    assert str(bad) in str(err.value)


def test_test_class_not_in_train_and_missing_path(tmp_path):
    write_images(tmp_path / "p" / "train", {"a": 1})
    write_images(tmp_path / "p" / "test", {"zebra": 1})
    with pytest.raises(MixlabValueError, match="zebra"):
        load_dataset("imagefolder", path=tmp_path / "p")
    with pytest.raises(MixlabValueError, match="needs option 'path'"):
        load_dataset("imagefolder")
    with pytest.raises(MixlabValueError, match="not a directory"):
        load_dataset("imagefolder", path=tmp_path / "nope")


def test_lazy_split_supports_val_subset_and_noise(tmp_path):
    write_images(tmp_path / "p" / "train", {"a": 6, "b": 6})
    write_images(tmp_path / "p" / "test", {"a": 1})
    s = load_dataset(
        "imagefolder",
        path=tmp_path / "p",
        image_size=4,
        in_memory=False,
        val_fraction=0.25,
        subset_per_class=4,
        label_noise=0.5,
        noise_kind="flip",
        seed=2,
    )
    assert isinstance(s.train, ImageFolderData) and isinstance(s.val, ImageFolderData)
    assert len(s.val) == 3 and len(s.train) == 8
    flipped = s.info["label_noise"]["flipped"]
    assert len(flipped) == 4
    assert torch.equal(s.train.labels[flipped], (s.clean_train_y[flipped] + 1) % 2)
