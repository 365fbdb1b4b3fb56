"""The static masking mixers against their references, on small fixed tensors.

CutMix: Yun et al., ICCV 2019, arXiv 1905.04899 (clovaai/CutMix-PyTorch ``train.py``, README).
FMix: Harris et al., 2020, arXiv 2002.12047 (ecs-vlc/FMix ``fmix.py``, ``trainer.py``).
ResizeMix: Qin et al., 2020, arXiv 2012.11101.
GridMix: Baek, Bang and Shim, Pattern Recognition 2021 (grid of whole cells); the lattice of
holes of OpenMixup's ``gridmix`` (I. Dobrynin's GridMixup) as an option.
SmoothMix: Lee, Zaheer, Astrid and Lee, CVPR Workshops 2020.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mixlab
from mixlab import masks
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.sampling import torch_generator

CPU = torch.device("cpu")


def ramp_image(n: int, *spatial: int) -> torch.Tensor:
    """Sample i holds 100 * i plus its position index, so every value says where it came from."""
    numel = math.prod(spatial)
    base = torch.arange(numel, dtype=torch.float32).view(1, 1, *spatial)
    return base + 100.0 * torch.arange(n, dtype=torch.float32).view(n, 1, *([1] * len(spatial)))


# ---------------------------------------------------------------- CutMix


def test_cutmix_defaults_are_the_authors_cifar_setting():
    mixer = mixlab.CutMix()
    assert mixer.lam_sampler.alpha == 1.0 and mixer.p == 0.5 and mixer.lam_mode == "batch"
    # cutmix_prob is drawn once per batch: the whole batch is mixed or none of it
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    g = torch.Generator().manual_seed(0)
    mixed = []
    for _ in range(400):
        mb = mixer(x, y, generator=g)
        whole = bool((mb.lam == 1).all()) and torch.equal(mb.inputs, x)
        mixed.append(not whole)
    assert 150 < sum(mixed) < 250


def test_cutmix_pastes_the_partner_box_and_corrects_lam_to_its_area():
    x = ramp_image(2, 6, 6)
    mb = mixlab.CutMix(lam=0.75, p=1.0)(x, torch.arange(2), generator=torch.Generator().manual_seed(3))
    taken = (mb.mask[0, 0] == 0).nonzero()
    (r0, c0), (r1, c1) = taken.min(dim=0).values.tolist(), (taken.max(dim=0).values + 1).tolist()
    assert (r1 - r0) <= 3 and (c1 - c0) <= 3  # side round(6 * sqrt(1 - 0.75)) = 3, less where clipped
    expected = x.clone()
    expected[:, :, r0:r1, c0:c1] = x[mb.perm][:, :, r0:r1, c0:c1]
    assert torch.equal(mb.inputs, expected)
    # the authors' correction: lam = 1 - box area / image area
    assert mb.lam.tolist() == pytest.approx([1 - (r1 - r0) * (c1 - c0) / 36] * 2)


# ---------------------------------------------------------------- FMix


def hand_spectrum_scale(h: int, w: int, decay: float) -> torch.Tensor:
    """1 / max(f, 1 / max(h, w)) ** decay on the rfft grid, as the paper's low-pass filter."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 1][None, :]
    freq = np.sqrt(fx**2 + fy**2)
    return torch.from_numpy(1.0 / np.maximum(freq, 1.0 / max(h, w)) ** decay)


def test_fmix_defaults_are_the_authors_cifar_setting():
    mixer = mixlab.FMix()
    assert mixer.lam_sampler.alpha == 1.0 and mixer.decay_power == 3.0 and mixer.max_soft == 0.0 and mixer.p == 1.0


def test_fmix_mask_is_the_top_lam_share_of_the_low_pass_field():
    shape, lam, decay = (8, 6), np.array([0.3]), 3.0
    got = masks.fourier_weight(shape, lam, np.random.default_rng(11), CPU, decay)
    # by hand: the same Gaussian spectrum, scaled by 1 / f^decay, back to space, top 30% kept
    g = torch_generator(np.random.default_rng(11), CPU)
    noise = torch.randn((1, 8, 4, 2), generator=g)
    spectrum = torch.complex(noise[..., 0].double(), noise[..., 1].double()) * hand_spectrum_scale(8, 6, decay)
    field = torch.fft.irfftn(spectrum, s=shape, dim=(1, 2)).flatten()
    keep = round(0.3 * 48)
    expected = torch.zeros(48)
    expected[field.argsort(descending=True)[:keep]] = 1.0
    assert torch.equal(got.flatten(), expected)


def test_fmix_soft_edges_ramp_linearly_around_the_threshold():
    field = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6, 0.0]])
    lam = np.array([0.5])
    soft = masks._soft_widths(lam, 0.2, 10)  # int(10 * min(0.2, 0.5, 0.5)) = 2
    assert soft.tolist() == [2]
    got = masks._soft_top_k_rows(field, np.array([5]), soft)
    # ranks 0-2 (0.9, 0.8, 0.7) keep x_i, ranks 3-6 (0.6, 0.5, 0.4, 0.3) ramp 1, 2/3, 1/3, 0, the rest 0
    expected = torch.tensor([[1.0, 0.0, 2 / 3, 1.0, 0.0, 0.0, 1.0, 1 / 3, 1.0, 0.0]])
    torch.testing.assert_close(got, expected)
    assert float(got.sum()) == pytest.approx(5.0)  # the mean is unchanged
    # max_soft above min(lam, 1 - lam) is capped there
    assert masks._soft_widths(np.array([0.25, 0.75]), 0.5, 8).tolist() == [2, 2]


def test_fmix_with_max_soft_keeps_the_mean_and_reports_it_as_lam():
    x = torch.randn(4, 1, 16, 16)
    mb = mixlab.FMix(lam=0.4, max_soft=0.1, lam_mode="sample")(
        x, torch.arange(4), generator=torch.Generator().manual_seed(0)
    )
    w = mb.mask[:, 0].flatten(1)
    assert bool(((w > 0) & (w < 1)).any())
    torch.testing.assert_close(w.mean(dim=1), torch.full((4,), round(0.4 * 256) / 256))
    torch.testing.assert_close(mb.lam, w.mean(dim=1))
    torch.testing.assert_close(mb.inputs, mb.mask * x + (1 - mb.mask) * x[mb.perm])


# ---------------------------------------------------------------- ResizeMix


def test_resizemix_defaults_follow_the_paper():
    mixer = mixlab.ResizeMix()
    assert mixer.scale == (0.1, 0.8) and mixer.p == 1.0


def test_resizemix_pastes_the_whole_shrunk_partner_and_labels_by_its_area():
    x = ramp_image(3, 8, 8)
    mb = mixlab.ResizeMix(scale=(0.5, 0.5), lam_mode="sample")(
        x, torch.arange(3), generator=torch.Generator().manual_seed(1)
    )
    for i in range(3):
        taken = (mb.mask[i, 0] == 0).nonzero()
        (r0, c0), (r1, c1) = taken.min(dim=0).values.tolist(), (taken.max(dim=0).values + 1).tolist()
        assert (r1 - r0, c1 - c0) == (4, 4)  # tau * size, never clipped by the border
        patch = F.interpolate(x[mb.perm[i]][None], size=(4, 4), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(mb.inputs[i, :, r0:r1, c0:c1], patch)
        outside = mb.mask[i, 0] == 1
        assert torch.equal(mb.inputs[i, 0][outside], x[i, 0][outside])
    assert mb.lam.tolist() == [0.75] * 3  # 1 - (4 * 4) / (8 * 8)


def test_resizemix_scale_is_uniform_in_its_range():
    x = torch.zeros(400, 1, 20, 20)
    mb = mixlab.ResizeMix(lam_mode="sample")(x, torch.arange(400), generator=torch.Generator().manual_seed(2))
    sides = (mb.mask[:, 0] == 0).any(dim=2).sum(dim=1).float()  # rows covered by the patch
    assert sides.min() >= 2 and sides.max() <= 16  # rint(20 * tau), tau in [0.1, 0.8]
    assert abs(float(sides.mean()) - 9.0) < 0.6  # 20 * 0.45


# ---------------------------------------------------------------- GridMix


def test_gridmix_cells_are_taken_whole_by_default():
    mixer = mixlab.GridMix()
    assert mixer.layout == "cells" and mixer.n_holes == (2, 6) and mixer.lam_sampler.alpha == 1.0
    x = ramp_image(4, 6, 6)
    mb = mixlab.GridMix(n_holes=(3, 3), lam_mode="sample")(
        x, torch.arange(4), generator=torch.Generator().manual_seed(0)
    )
    cells = mb.mask[:, 0].reshape(4, 3, 2, 3, 2)
    assert torch.equal(cells.amax(dim=(2, 4)), cells.amin(dim=(2, 4)))  # constant on every 2 x 2 cell
    kept_cells = cells[:, :, 0, :, 0].flatten(1).sum(dim=1)
    torch.testing.assert_close(mb.lam, kept_cells / 9)
    torch.testing.assert_close(mb.inputs, mb.mask * x + (1 - mb.mask) * x[mb.perm])


def test_gridmix_holes_option_cuts_a_regular_lattice():
    x = ramp_image(2, 6, 6)
    mb = mixlab.GridMix(n_holes=(3, 3), lam=0.75, layout="holes")(
        x, torch.arange(2), generator=torch.Generator().manual_seed(0)
    )
    # 2 x 2 cells, hole side round(2 * sqrt(1 - 0.75)) = 1 at each cell's first corner
    expected = torch.ones(6, 6)
    expected[0::2, 0::2] = 0.0
    assert torch.equal(mb.mask[0, 0], expected)
    assert mb.lam.tolist() == [0.75, 0.75]
    torch.testing.assert_close(mb.inputs, expected * x + (1 - expected) * x[mb.perm])


def test_grid_hole_lattice_on_uneven_cells_by_hand():
    # 7 positions in 3 cells of sides 3, 2, 2 (block_index); hole sides round(side * (1 - lam)), in [1, side - 1]
    w = masks.grid_hole_weight((7,), np.array([0.5, 0.0, 1.0]), np.array([3, 2, 2]), CPU)[:, 0]
    assert w.int().tolist() == [
        [0, 0, 1, 0, 1, 0, 1],  # lam 0.5: holes 2, 1, 1
        [0, 0, 0, 1, 0, 0, 1],  # lam 0: cells 4 and 3 keep one position each
        [1, 1, 1, 1, 1, 1, 1],  # lam 1: unmixed
    ]


# ---------------------------------------------------------------- SmoothMix


def hand_blob(h: int, w: int, centre: tuple[float, float], s: float) -> torch.Tensor:
    """exp(-((r + .5 - c_r h)^2 / (2 (s h)^2) + (c + .5 - c_c w)^2 / (2 (s w)^2))), one position at a time."""
    out = torch.empty(h, w, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            dr = (r + 0.5 - centre[0] * h) / (s * h)
            dc = (c + 0.5 - centre[1] * w) / (s * w)
            out[r, c] = math.exp(-0.5 * (dr * dr + dc * dc))
    return out


def test_smoothmix_mask_is_one_minus_the_gaussian_blob_by_hand():
    rng = np.random.default_rng(4)
    got = masks.smooth_weight((4, 6), np.array([0.5]), rng, CPU, rel_sigma=np.array([0.3]))
    centre = np.random.default_rng(4).random((1, 2))[0]
    torch.testing.assert_close(got[0, 0].double(), 1.0 - hand_blob(4, 6, tuple(centre), 0.3), atol=1e-6, rtol=0)


def test_smoothmix_default_blob_is_drawn_apart_from_lam_and_labelled_by_its_mean():
    mixer = mixlab.SmoothMix()
    assert mixer.blob_size == "sigma" and mixer.blob_sigma == (0.25, 0.5)
    x = torch.randn(3, 2, 12, 12)
    a = mixlab.SmoothMix(lam=0.9, lam_mode="sample")(x, torch.arange(3), generator=torch.Generator().manual_seed(5))
    b = mixlab.SmoothMix(lam=0.1, lam_mode="sample")(x, torch.arange(3), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.mask, b.mask)  # the same draws give the same blob whatever lambda
    torch.testing.assert_close(a.lam, a.mask[:, 0].flatten(1).mean(dim=1))
    torch.testing.assert_close(a.inputs, a.mask * x + (1 - a.mask) * x[a.perm])
    # blobs of sigma in [0.25, 0.5] of the side cover between about 10% and 75% of the input
    many = mixlab.SmoothMix(lam_mode="sample")(
        torch.zeros(300, 1, 32, 32), torch.arange(300), generator=torch.Generator().manual_seed(6)
    )
    assert float(many.lam.min()) > 0.2 and float(many.lam.max()) < 0.95


def test_smoothmix_lambda_option_is_the_earlier_beta_tied_blob():
    mixer = mixlab.SmoothMix(blob_size="lambda")
    assert mixer.lam_sampler.alpha == 0.2
    assert mixlab.SmoothMix(blob_size="lambda", alpha=0.5).lam_sampler.alpha == 0.5
    x = torch.randn(2, 1, 12, 12)
    a = mixlab.SmoothMix(blob_size="lambda", lam=0.9)(x, torch.arange(2), generator=torch.Generator().manual_seed(5))
    b = mixlab.SmoothMix(blob_size="lambda", lam=0.1)(x, torch.arange(2), generator=torch.Generator().manual_seed(5))
    assert float(a.lam[0]) > float(b.lam[0])  # the blob grows as lambda falls


# ---------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda: mixlab.GridMix(layout="lattice"), UnknownNameError, ["'lattice'", "cells", "holes"]),
        (lambda: mixlab.SmoothMix(blob_size="box"), UnknownNameError, ["'box'", "sigma", "lambda"]),
        (lambda: mixlab.SmoothMix(blob_sigma=(0.5, 0.25)), MixlabValueError, ["(0.5, 0.25)"]),
        (lambda: mixlab.SmoothMix(blob_sigma=(0.0, 0.5)), MixlabValueError, ["blob_sigma", "0.0"]),
        (lambda: mixlab.SmoothMix(blob_sigma=0.3), MixlabValueError, ["0.3"]),
        (lambda: mixlab.FMix(max_soft=0.6), MixlabValueError, ["[0, 0.5]", "0.6"]),
        (lambda: mixlab.FMix(max_soft=-0.1), MixlabValueError, ["max_soft", "-0.1"]),
        (lambda: mixlab.CutMix(p=1.5), MixlabValueError, ["p", "1.5"]),
        (lambda: mixlab.ResizeMix(scale=(0.9, 0.5)), MixlabValueError, ["(0.9, 0.5)"]),
        (lambda: mixlab.GridMix(n_holes=(2.0, 3)), MixlabTypeError, ["(2.0, 3)"]),
    ],
)
def test_bad_settings_are_refused_at_construction(build, error, words):
    with pytest.raises(error) as info:
        build()
    for word in words:
        assert word in str(info.value)
