"""The `show` picture: pairs A, B and their mix, for input-mixing, hidden-mixing and no mixing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))  # the engine tests' IDX writer
from engine_fixtures import write_fashion_like

from mixlab.bench.records import RunRecord
from mixlab.bench.report import write_report
from mixlab.bench.show import mix_figure, mix_gallery, mix_grid, partner_indices, show_method
from mixlab.errors import MixlabValueError, UnknownNameError
from mixlab.methods import list_mixers

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def striped_images(n: int = 24, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (n, 1, 28, 28): dark noise with a bright band whose height gives the class."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 60, (n, 1, 28, 28), generator=generator, dtype=torch.uint8)
    y = torch.arange(n) % classes
    for k in range(classes):
        x[y == k, :, 2 + 4 * k : 5 + 4 * k, 4:24] = 230
    return x, y


def panel_images(figure) -> list[list[np.ndarray]]:
    """The pictures of the grid, by row (A, B, mixed)."""
    grid = [axes for axes in figure.axes if axes.images]
    columns = len(grid) // 3
    return [
        [np.asarray(axes.images[0].get_array()) for axes in grid[r * columns : (r + 1) * columns]] for r in range(3)
    ]


@pytest.mark.parametrize("method", ["cutmix", "mixup", "manifold_mixup", "none"])
def test_mix_grid_is_an_rgb_picture(method: str) -> None:
    x, y = striped_images()
    image = mix_grid(method, x, y, pairs=3)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 100 and image.shape[1] > 200
    assert image.std() > 0  # something was drawn


def test_input_mixing_changes_the_mixed_row_and_says_so() -> None:
    x, y = striped_images()
    figure = mix_figure({"method": "mixup", "options": {"alpha": 1.0}}, x, y, pairs=4, seed=1)
    a_row, b_row, mixed_row = panel_images(figure)
    assert len(a_row) == 4
    assert "mixed input" in figure.get_suptitle()
    lam = float(figure.axes[8].get_title().removeprefix("mix λ="))
    expected = lam * a_row[0] + (1 - lam) * b_row[0]
    assert np.allclose(mixed_row[0], expected, atol=0.006)  # titles round λ to 2 decimals


def test_hidden_feature_mixing_shows_unchanged_inputs_with_a_caption() -> None:
    x, y = striped_images()
    figure = mix_figure("manifold_mixup", x, y, pairs=3)
    a_row, _, mixed_row = panel_images(figure)
    assert "hidden features inside the model" in figure.get_suptitle()
    assert all(np.array_equal(a, m) for a, m in zip(a_row, mixed_row, strict=True))
    hidden_layer = mix_figure({"method": "manifold_mixup", "options": {"layers": ["stage1"]}}, x, y, pairs=2)
    assert "hidden features" in hidden_layer.get_suptitle()


def test_no_mixing_shows_the_inputs_unchanged() -> None:
    x, y = striped_images()
    figure = mix_figure("none", x, y, pairs=3)
    a_row, _, mixed_row = panel_images(figure)
    assert figure.get_suptitle().startswith("no mixing")
    assert all(np.array_equal(a, m) for a, m in zip(a_row, mixed_row, strict=True))


def test_partners_with_another_label_are_shown_first() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    perm = torch.tensor([1, 0, 3, 4, 4])  # only 3 (-> 4) has a partner of another label; 4 is its own partner
    assert partner_indices(labels, perm, 3) == [3, 0, 1]
    x, y = striped_images()
    figure = mix_figure("cutmix", x, y, pairs=5, class_names=[f"class{k}" for k in range(6)])
    titles = [axes.get_title() for axes in figure.axes]
    a_names, b_names = [t.removeprefix("A: ") for t in titles[:5]], [t.removeprefix("B: ") for t in titles[5:10]]
    assert all(name.startswith("class") for name in a_names + b_names)
    assert all(a != b for a, b in zip(a_names, b_names, strict=True))


def test_strip_layout_puts_each_pair_side_by_side() -> None:
    x, y = striped_images()
    grid = mix_grid("mixup", x, y, pairs=3)
    strip = mix_grid("mixup", x, y, pairs=3, layout="strip")
    assert strip.shape[1] > 2 * grid.shape[1] and strip.shape[0] < grid.shape[0]
    titles = [axes.get_title() for axes in mix_figure("mixup", x, y, pairs=2, layout="strip").axes]
    assert [title.split(":")[0].split(" ")[0] for title in titles] == ["A", "B", "mix", "A", "B", "mix"]


def test_same_seed_same_picture_and_signals_are_drawn_as_lines() -> None:
    x, y = striped_images()
    assert np.array_equal(mix_grid("fmix", x, y, pairs=2, seed=3), mix_grid("fmix", x, y, pairs=2, seed=3))
    signals, labels = torch.randn(12, 2, 40), torch.arange(12) % 3
    figure = mix_figure({"method": "cutmix", "options": {"alpha": 1.0}}, signals, labels, pairs=3)
    assert not any(axes.images for axes in figure.axes)
    assert len(figure.axes[-1].lines) == 3 * 2  # A and B faintly, the mix, each with 2 channels


def test_mix_grid_refuses_what_it_cannot_draw() -> None:
    x, y = striped_images()
    with pytest.raises(UnknownNameError, match=r"unknown mixer 'mixupp'; known: .*cutmix.*none"):
        mix_grid("mixupp", x, y)
    with pytest.raises(MixlabValueError, match=r"\(24, 784\)"):
        mix_grid("mixup", x.reshape(24, -1).float(), y)


def test_show_method_writes_a_png_of_the_test_split(tmp_path: Path) -> None:
    root = write_fashion_like(tmp_path / "data", n_train=16, n_test=40)
    output = show_method(
        "cutmix", data_root=root, output=tmp_path / "pics" / "cutmix.png", pairs=3, options={"alpha": 1.0}
    )
    assert output == tmp_path / "pics" / "cutmix.png"
    assert output.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in output.parent.iterdir()] == ["cutmix.png"]


def test_show_method_refuses_an_unknown_method_before_reading_data(tmp_path: Path) -> None:
    output = tmp_path / "x.png"
    # no data under tmp_path: reading it would raise DataNotFoundError instead
    with pytest.raises(UnknownNameError, match="'cutmixx'"):
        show_method("cutmixx", data_root=tmp_path, output=output)
    assert not output.exists()


def test_mix_gallery_feeds_the_report(tmp_path: Path) -> None:
    x, y = striped_images()
    runs = [
        RunRecord(
            "quick", i, f"k{i}", "d", "m", method, 0, "finished", config={"mix": {"method": mix}}, final={"top1": 0.8}
        )
        for i, (method, mix) in enumerate([("erm", "none"), ("mixup", "mixup"), ("manifold", "manifold_mixup")])
    ]
    written = write_report(runs, tmp_path, suite="quick", gallery=mix_gallery(x, y, pairs=2))
    assert written["gallery"].read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("method", [m for m in list_mixers() if m != "random_choice"])
def test_every_mixer_can_be_drawn(method: str) -> None:
    x, y = torch.rand(24, 1, 28, 28), torch.arange(24) % 10
    image = mix_grid(method, x, y, pairs=2, layout="strip")
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
