"""Rotated (and RCF-MNIST-coloured) Fashion-MNIST: the rotation, the angle target, the seeding, the options.

After RCF-MNIST of Yao et al., "C-Mixup", NeurIPS 2022, arXiv 2210.05775 (huaxiuyao/C-Mixup
``src/data/RCF_MNIST.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import write_idx_dataset

from mixlab.data import DataNotFoundError, load_dataset
from mixlab.data.rotation import color_by_ratio, rotate_images, rotation_grids
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
NAME = "rotated_fashion_mnist"


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    """A fashion-mnist folder of 40 train and 12 test random 28x28 images in the IDX format."""
    write_idx_dataset(tmp_path / "data" / "fashion-mnist", n_train=40, n_test=12)
    return tmp_path / "data"


def asymmetric_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 images: no rotation by a multiple of 90 degrees maps one onto itself."""
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---------------------------------------------------------------- the rotation


def test_rotating_by_zero_leaves_the_images_unchanged():
    x = asymmetric_images(3, 28)
    assert torch.equal(rotate_images(x, torch.zeros(3)), x)
    assert torch.equal(rotate_images(x, torch.full((3,), 360.0)), x)
    # Floating images keep their dtype; the grid's float32 coordinates leave only rounding error.
    turned = rotate_images(x.float(), torch.zeros(3))
    assert turned.dtype == torch.float32 and torch.allclose(turned, x.float(), atol=1e-3)


@pytest.mark.parametrize("size", [5, 28])
@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_quarter_turns_are_rot90_counter_clockwise(size, quarter_turns):
    x = asymmetric_images(4, size)
    turned = rotate_images(x, torch.full((4,), 90.0 * quarter_turns))
    assert torch.equal(turned, torch.rot90(x, quarter_turns, dims=(-2, -1)))


def test_each_image_turns_by_its_own_angle_in_chunks():
    x = asymmetric_images(5, 28)
    degrees = torch.tensor([0.0, 90.0, 180.0, 270.0, 90.0])
    turned = rotate_images(x, degrees, chunk=2)
    for i, k in enumerate([0, 1, 2, 3, 1]):
        assert torch.equal(turned[i], torch.rot90(x[i], k, dims=(-2, -1)))


def test_non_square_rotation_keeps_the_centre_and_does_not_shear():
    # A 180-degree turn of any rectangle is the double flip, exactly.
    x = torch.randint(0, 256, (2, 3, 6, 10), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    assert torch.equal(rotate_images(x, torch.full((2,), 180.0)), x.flip(-1).flip(-2))
    grid = rotation_grids(torch.tensor([37.0]), 6, 10)
    assert grid.shape == (1, 6, 10, 2)


def test_rotate_refuses_bad_shapes():
    with pytest.raises(MixlabValueError, match=r"\(N, C, H, W\)"):
        rotate_images(torch.zeros(28, 28), torch.zeros(28))
    with pytest.raises(MixlabValueError, match="one angle per image"):
        rotate_images(torch.zeros(3, 1, 8, 8), torch.zeros(2))


# ---------------------------------------------------------------- the colour


def test_colour_follows_the_red_ratio_on_the_foreground_only():
    grey = torch.tensor([[[[0, 5, 6, 255]]], [[[0, 5, 100, 200]]]], dtype=torch.uint8)
    out = color_by_ratio(grey, torch.tensor([1.0, 0.25]))
    assert out.shape == (2, 3, 1, 4) and out.dtype == torch.uint8
    assert out[0, :, 0].tolist() == [[0, 5, 6, 255], [0, 5, 0, 0], [0, 5, 0, 0]]
    assert out[1, :, 0].tolist() == [[0, 5, 25, 50], [0, 5, 0, 0], [0, 5, 75, 150]]
    with pytest.raises(MixlabValueError, match="grey uint8"):
        color_by_ratio(grey.float(), torch.ones(2))


# ---------------------------------------------------------------- the dataset


def test_fixture_loads_as_a_regression_on_the_angle(fixture_root):
    s = load_dataset(NAME, root=fixture_root)
    assert s.task == "regression" and s.num_classes is None and s.class_names is None
    assert s.sizes() == {"train": 40, "val": 0, "test": 12}
    assert s.input_shape == (1, 28, 28) and s.train.x.dtype == torch.uint8
    assert s.train.y.dtype == torch.float32 and s.train.y.shape == (40,)
    assert float(s.train.y.min()) >= 0.0 and float(s.train.y.max()) < 1.0
    assert s.info["source"] == str(fixture_root / "fashion-mnist") and s.info["color"] == "none"


def test_the_target_is_the_angle_over_360(tmp_path):
    originals = write_idx_dataset(tmp_path / "fashion-mnist", n_train=1, n_test=1)
    s = load_dataset(NAME, root=tmp_path)
    source = torch.from_numpy(originals["train"][0]).unsqueeze(1)
    degrees = s.train.y.double() * 360.0
    redone = rotate_images(source, degrees).int()
    assert int((redone - s.train.x.int()).abs().max()) <= 1  # the float32 target rounds the angle
    other = rotate_images(source, degrees + 90.0).int()
    assert float((other - s.train.x.int()).abs().float().mean()) > 20


def test_max_degrees_bounds_the_targets(fixture_root):
    s = load_dataset(NAME, root=fixture_root, max_degrees=45)
    assert float(s.train.y.max()) < 45 / 360 and float(s.test.y.max()) < 45 / 360


def test_seeding_fixes_the_data_whatever_the_training_seed(fixture_root):
    a = load_dataset(NAME, root=fixture_root, generation_seed=3, seed=0)
    b = load_dataset(NAME, root=fixture_root, generation_seed=3, seed=7)
    c = load_dataset(NAME, root=fixture_root, generation_seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
    assert torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.y, c.train.y)


def test_subsets_are_drawn_and_the_test_split_does_not_move_with_num_train(fixture_root):
    small = load_dataset(NAME, root=fixture_root, num_train=10, num_test=5)
    large = load_dataset(NAME, root=fixture_root, num_train=30, num_test=5)
    assert small.sizes() == {"train": 10, "val": 0, "test": 5}
    assert torch.equal(small.test.x, large.test.x) and torch.equal(small.test.y, large.test.y)
    assert torch.equal(small.train.y, large.train.y[:10])  # one permutation, then one angle per drawn image


def red_share(x: torch.Tensor) -> torch.Tensor:
    """Each coloured image's red / (red + blue) over its foreground (green is 0 there)."""
    rgb = x.double()
    foreground = rgb[:, 1] == 0
    red = (rgb[:, 0] * foreground).sum((1, 2))
    blue = (rgb[:, 2] * foreground).sum((1, 2))
    return red / (red + blue).clamp(min=1.0)


def test_spurious_colour_follows_the_angle_in_train_and_is_inverted_in_test(tmp_path):
    write_idx_dataset(tmp_path / "fashion-mnist", n_train=50, n_test=40)
    s = load_dataset(NAME, root=tmp_path, color="spurious", spurious_fraction=0.8)
    assert s.input_shape == (3, 28, 28) and s.train.x.shape == (50, 3, 28, 28)
    for part, follow in ((s.train, 40), (s.test, 8)):  # int(0.8 * 50) follow in train; int(0.2 * 40) in test
        share = red_share(part.x)
        follows = (share - part.y.double()).abs() < 0.02
        inverts = (share - (1.0 - part.y.double())).abs() < 0.02
        assert int(follows.sum()) >= follow - 1 and int(inverts.sum()) >= len(part.y) - follow - 1
        assert int((follows & ~inverts).sum()) <= follow  # no more follow the angle than the fraction says


def test_options_are_refused_with_clear_messages(fixture_root):
    with pytest.raises(MixlabValueError, match=r"max_degrees must be in \(0, 360\]"):
        load_dataset(NAME, root=fixture_root, max_degrees=400)
    with pytest.raises(MixlabValueError, match="max_degrees"):
        load_dataset(NAME, root=fixture_root, max_degrees=0)
    with pytest.raises(MixlabTypeError, match="max_degrees"):
        load_dataset(NAME, root=fixture_root, max_degrees="90")
    with pytest.raises(UnknownNameError, match="spurious"):
        load_dataset(NAME, root=fixture_root, color="red")
    with pytest.raises(MixlabValueError, match="spurious_fraction must be in"):
        load_dataset(NAME, root=fixture_root, spurious_fraction=1.5)
    with pytest.raises(MixlabValueError, match="num_train must be an int >= 1"):
        load_dataset(NAME, root=fixture_root, num_train=0)
    with pytest.raises(MixlabValueError, match=r"num_train=41 .* files hold \(40\)"):
        load_dataset(NAME, root=fixture_root, num_train=41)
    with pytest.raises(UnknownNameError, match="generation_seed"):
        load_dataset(NAME, root=fixture_root, angle_seed=1)
    with pytest.raises(MixlabValueError, match="needs classes"):
        load_dataset(NAME, root=fixture_root, label_noise=0.1)


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(NAME, root=tmp_path / "empty")
    message = str(info.value)
    assert str(tmp_path / "empty" / "fashion-mnist") in message and "mixlab data fetch fashion_mnist" in message


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="the Fashion-MNIST files are not installed")
def test_real_fashion_mnist():
    s = load_dataset(NAME, root=FASHION_DIR.parent, num_train=500, num_test=200, color="spurious")
    assert s.sizes() == {"train": 500, "val": 0, "test": 200} and s.input_shape == (3, 28, 28)
    share, y = red_share(s.train.x).numpy(), s.train.y.numpy()
    # 80% follow the angle, 20% its inverse: correlation 0.8 - 0.2; the test split inverts it.
    assert np.corrcoef(share, y)[0, 1] == pytest.approx(0.6, abs=0.1)
    assert np.corrcoef(red_share(s.test.x).numpy(), s.test.y.numpy())[0, 1] == pytest.approx(-0.6, abs=0.15)
