"""AttentiveMix against the paper (Walawalkar, Shen, Liu and Savvides, ICASSP 2020, arXiv 2003.13048), computed by
hand on small fixed tensors.

The paper: the final feature map of a frozen, ImageNet-pretrained ResNet-50 on a 224x224 image is a 7x7 grid;
its top N = 6 cells are the attentive regions; each cell maps back to a 32x32 patch (nearest upsampling),
which is cut from that image and pasted at the same place into the other one; the labels are mixed by area
(N/49 to the pasted image). No authors' code is public. mixlab ranks the cells by the channel mean of the
map and, without a ``feature_model``, takes the map from the model being trained, saying so once.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mixlab.errors import MixlabValueError, UnknownNameError
from mixlab.methods.feature import AttentiveMix

pytestmark = pytest.mark.usefixtures("one_thread")


def cell_images(cells: int, cell: int, channels: int = 2, n: int = 3) -> torch.Tensor:
    """``(n, channels, cells*cell, cells*cell)`` images constant on each cell, with fixed random cell values."""
    values = torch.rand(n, channels, cells, cells, generator=torch.Generator().manual_seed(cells * 100 + n))
    return values.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)


def hand_top_cells(attention: torch.Tensor, k: int) -> set[tuple[int, int]]:
    """The ``k`` highest cells of a ``(G, G)`` map, by a plain sort of (value, cell) pairs."""
    size = attention.shape[0]
    ranked = sorted((-float(attention[r, c]), r, c) for r in range(size) for c in range(size))  # ties: earlier cell
    return {(r, c) for _, r, c in ranked[:k]}


def test_top_k_cell_mask_by_hand_on_the_papers_224_geometry() -> None:
    # 224x224 images of 7x7 constant 32-pixel cells; the extractor's map is the cell values (AvgPool 32).
    x, y = cell_images(7, 32), torch.tensor([0, 1, 2])
    mixer = AttentiveMix(layer="0", feature_model=nn.Sequential(nn.AvgPool2d(32)))
    assert mixer.top_k == 6 and mixer.grid == "paper"
    mb = mixer(x, y, generator=torch.Generator().manual_seed(0))
    for i, j in enumerate(mb.perm.tolist()):
        attention = x[j, :, ::32, ::32].double().mean(dim=0)  # channel mean of the partner's 7x7 map
        top = hand_top_cells(attention, 6)
        # The mean ranks differently from either channel alone: the channel reduction is what is tested.
        assert all(top != hand_top_cells(x[j, c, ::32, ::32], 6) for c in range(2))
        mask = torch.ones(224, 224)
        for r, c in top:
            mask[32 * r : 32 * (r + 1), 32 * c : 32 * (c + 1)] = 0.0  # the partner's 32x32 patch goes here
        torch.testing.assert_close(mb.mask[i, 0], mask)
        torch.testing.assert_close(mb.inputs[i], mask * x[i] + (1 - mask) * x[j])
    torch.testing.assert_close(mb.lam, torch.full((3,), 1 - 6 / 49))  # labels by area: 6/49 to the partner


def test_the_paper_grid_pools_a_larger_map_and_upsamples_by_nearest() -> None:
    # 16x16 images, an 8x8 map pooled to 7x7 (windows [floor(8i/7), ceil(8(i+1)/7))), cells of 2 or 3 pixels.
    x, y = cell_images(8, 2, n=2), torch.tensor([0, 1])
    mixer = AttentiveMix(layer="0", feature_model=nn.Sequential(nn.AvgPool2d(2)), top_k=5)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(1))
    starts = [(8 * i) // 7 for i in range(7)]
    ends = [-(-8 * (i + 1) // 7) for i in range(7)]
    for i, j in enumerate(mb.perm.tolist()):
        fine = x[j, :, ::2, ::2].double().mean(dim=0)  # the partner's 8x8 channel mean
        pooled = torch.tensor(
            [[float(fine[starts[r] : ends[r], starts[c] : ends[c]].mean()) for c in range(7)] for r in range(7)]
        )
        top = hand_top_cells(pooled, 5)
        mask = torch.tensor(
            [[0.0 if ((h * 7) // 16, (w * 7) // 16) in top else 1.0 for w in range(16)] for h in range(16)]
        )
        torch.testing.assert_close(mb.mask[i, 0], mask)
        torch.testing.assert_close(mb.lam[i], mask.mean())


def test_warns_once_when_the_attention_comes_from_the_model_being_trained() -> None:
    x, y = cell_images(4, 4, n=4), torch.arange(4)
    net = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(32, 4))
    mixer = AttentiveMix(layer="0", model=net, grid=None)
    with pytest.warns(UserWarning, match=r"model being trained.*pretrained ResNet-50.*feature_model="):
        mixer(x, y, context={"model": net})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixer(x, y, context={"model": net})  # once per mixer
        frozen = AttentiveMix(layer="0", feature_model=nn.Sequential(nn.AvgPool2d(4)), grid=None)
        frozen(x, y)  # a frozen extractor, as the paper: no warning
    assert not any(p.requires_grad for p in frozen.feature_model.parameters())


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"grid": "auto"}, UnknownNameError, r"auto.*paper"),
        ({"grid": (7, 0)}, MixlabValueError, r"grid.*>= 1; got 0"),
        ({"top_k": -6}, MixlabValueError, r"top_k.*>= 1; got -6"),
    ],
)
def test_bad_options_are_refused_at_construction(options: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        AttentiveMix(layer="0", **options)


def test_more_cells_than_the_papers_grid_are_refused() -> None:
    x, y = cell_images(7, 2, n=2), torch.arange(2)
    mixer = AttentiveMix(layer="0", feature_model=nn.Sequential(nn.AvgPool2d(2)), top_k=50)
    with pytest.raises(MixlabValueError, match=r"top_k=50.*49 cells"):
        mixer(x, y)
