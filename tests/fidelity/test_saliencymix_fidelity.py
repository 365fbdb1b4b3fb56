"""SaliencyMix against its authors' algorithm: the fine-grained saliency by hand, the box and the defaults.

Uddin et al., ICLR 2021, arXiv 2006.01791; the authors' CIFAR script
(afm-shahab-uddin/SaliencyMix, ``SaliencyMix_CIFAR/saliencymix.py``, ``saliency_bbox``)
takes OpenCV's ``StaticSaliencyFineGrained`` map (Montabone and Soto, Image and
Vision Computing 2010) of the first sample's partner, puts one box of side
``2 * (int(L * sqrt(1 - lam)) // 2)`` around its ``np.argmax``, and mixes a batch
with probability 0.5 and λ ~ Beta(1, 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mixlab
from mixlab.errors import MixlabValueError, UnknownNameError
from mixlab.methods.saliency import (
    FINE_GRAINED_SCALES,
    center_surround_contrast,
    fine_grained_saliency,
    saliency_box_bounds,
    saliency_peaks,
    smooth_intensity,
)

# OpenCV 4.10 (opencv-contrib-python-headless 4.10.0.84) StaticSaliencyFineGrained on the 8-bit image of
# ``wavy_image()``, times 255 and rounded. OpenCV truncates every step to 8 bits, the equations here do not.
OPENCV_MAP = [
    [31, 29, 21, 9, 6, 37, 65, 88, 106, 115, 115, 106, 88, 61, 38, 23],
    [48, 46, 37, 19, 1, 42, 78, 115, 138, 151, 151, 138, 110, 75, 37, 23],
    [87, 82, 64, 39, 7, 46, 105, 160, 196, 219, 214, 192, 151, 97, 41, 17],
    [107, 100, 80, 50, 12, 50, 122, 186, 232, 255, 255, 227, 173, 109, 45, 16],
    [97, 90, 72, 45, 10, 45, 113, 173, 209, 236, 236, 204, 159, 100, 45, 16],
    [57, 52, 42, 22, 0, 40, 86, 122, 150, 163, 159, 145, 113, 77, 36, 21],
    [0, 0, 0, 9, 18, 31, 40, 50, 54, 59, 59, 54, 45, 36, 27, 21],
    [106, 100, 78, 40, 13, 5, 12, 17, 22, 25, 25, 20, 12, 0, 17, 25],
    [197, 178, 96, 7, 55, 78, 80, 73, 73, 78, 75, 65, 45, 17, 8, 30],
    [251, 205, 59, 83, 164, 184, 161, 121, 103, 106, 103, 88, 63, 27, 3, 30],
    [246, 192, 5, 143, 239, 255, 207, 141, 106, 103, 100, 88, 63, 27, 3, 30],
    [188, 141, 14, 154, 244, 252, 199, 123, 78, 70, 70, 60, 40, 15, 12, 30],
    [93, 60, 27, 120, 178, 178, 130, 65, 24, 17, 17, 12, 4, 5, 22, 31],
    [8, 13, 34, 64, 79, 67, 31, 10, 60, 78, 78, 69, 60, 47, 33, 27],
    [61, 56, 49, 36, 18, 11, 66, 120, 157, 170, 170, 152, 125, 85, 44, 24],
    [80, 75, 58, 33, 4, 48, 103, 158, 195, 213, 208, 190, 149, 100, 50, 22],
]


def wavy_image() -> torch.Tensor:
    """A 16x16 8-bit grey image: a smooth wave with a bright 4x4 square, ``(1, 1, 16, 16)``."""
    r, c = np.mgrid[0:16, 0:16]
    gray = np.round(120 + 60 * np.sin(r / 2.0) * np.cos(c / 3.0))
    gray[9:13, 3:7] = 240
    return torch.tensor(gray, dtype=torch.float32)[None, None]


def test_opencv_scales() -> None:
    assert FINE_GRAINED_SCALES == (3 * 4, 3 * 4 * 2, 3 * 4 * 2 * 2, 7 * 4, 7 * 4 * 2, 7 * 4 * 2 * 2)


def test_smoothing_is_opencv_3x3_gaussian_twice_with_reflected_borders() -> None:
    # one pass of [1, 2, 1] / 4 on a spike at position 0 of [16, 0, 0, 0, 0] (the border reflects 1 -> -1):
    # [8, 4, 0, 0, 0]; a second pass: [0.5*8 + 0.25*4 + 0.25*4, 0.25*8 + 0.5*4, 0.25*4, 0, 0] = [6, 4, 1, 0, 0]
    row = torch.tensor([[[16.0, 0, 0, 0, 0]]])
    torch.testing.assert_close(smooth_intensity(row), torch.tensor([[6.0, 4, 1, 0, 0]]))
    # separable in 2-D: the outer product of the 1-D results, divided by the spike
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 0, 0] = 16.0 * 16.0
    expected = torch.outer(torch.tensor([6.0, 4, 1, 0, 0]), torch.tensor([6.0, 4, 1, 0, 0]))
    torch.testing.assert_close(smooth_intensity(image)[0], expected)
    # RGB inputs go to BT.601 luma first; other channel counts to their mean
    rgb = torch.zeros(1, 3, 4, 4)
    rgb[:, 0], rgb[:, 1], rgb[:, 2] = 1.0, 2.0, 4.0
    torch.testing.assert_close(smooth_intensity(rgb), torch.full((1, 4, 4), 0.299 + 2 * 0.587 + 4 * 0.114))
    torch.testing.assert_close(smooth_intensity(rgb[:, :2]), torch.full((1, 4, 4), 1.5))


def test_one_center_surround_value_by_hand() -> None:
    gray = torch.zeros(1, 6, 6)
    gray[0, 2, 2], gray[0, 3, 4], gray[0, 5, 2] = 9.0, 4.0, 3.0
    contrast = center_surround_contrast(gray, (2,))[0, 0]  # n = 2: the box [p - 1, p + 3) clipped to [0, 5]
    # (2, 2): rows and columns 1..4, 16 positions holding 9 and 4: m = (13 - 9) / 15
    assert contrast[2, 2].item() == pytest.approx(9.0 - 4.0 / 15.0)
    # (0, 0): rows and columns 0..2, 9 positions holding 9: m = (9 - 0) / 8
    assert contrast[0, 0].item() == pytest.approx(-9.0 / 8.0)
    # (5, 2): rows [4, 5) (OpenCV clips at L - 1, so the last row is never in a box), columns 1..4; the centre 3
    # is subtracted although it is not in the box: m = (0 - 3) / (4 - 1) = -1
    assert contrast[5, 2].item() == pytest.approx(3.0 - (-1.0))
    # (5, 5): the box is the single position (4, 4): too small, no response
    assert contrast[5, 5].item() == 0.0
    # every scale at once, each as if alone
    both = center_surround_contrast(gray, (1, 2))[0]
    torch.testing.assert_close(both[1], contrast)
    torch.testing.assert_close(both[0], center_surround_contrast(gray, (1,))[0, 0])


def test_whole_saliency_by_hand_in_1d() -> None:
    x = torch.tensor([[[0.0, 0.0, 16.0, 0.0]]])
    # smoothed twice (the right border reflects 4 -> 2): I = [2, 4, 7, 8]
    torch.testing.assert_close(smooth_intensity(x), torch.tensor([[2.0, 4, 7, 8]]))
    # n = 1, boxes [p, p + 2) within [0, 3): p=0 {2, 4}: m = 4, I - m = -2; p=1 {4, 7}: m = 7, I - m = -3;
    # p = 2, 3: fewer than 2 positions. on = 0 everywhere, off = [2, 3, 0, 0] / 3
    torch.testing.assert_close(fine_grained_saliency(x, (1,)), torch.tensor([[2 / 3, 1.0, 0, 0]]))
    # n = 2, boxes [p - 1, p + 3) within [0, 3): p=0 {2,4,7}: m = 5.5, I - m = -3.5; p=1: m = 4.5, I - m = -0.5;
    # p=2 {4, 7}: m = 4, I - m = 3; p=3: too small. With n = 1: on = [0, 0, 3, 0] / 3, off = [5.5, 3.5, 0, 0] / 5.5
    torch.testing.assert_close(fine_grained_saliency(x, (1, 2)), torch.tensor([[1.0, 7 / 11, 1.0, 0]]))
    # OpenCV's six scales (n >= 12) all clip to the box [0, 3) = {2, 4, 7}: m = (13 - I) / 2, so I - m is
    # [-3.5, -0.5, 4, 5.5] (the last position is not in its own box, yet I is subtracted from its sum):
    # on = [0, 0, 4, 5.5] / 5.5, off = [3.5, 0.5, 0, 0] / 3.5
    torch.testing.assert_close(fine_grained_saliency(x), torch.tensor([[1.0, 1 / 7, 8 / 11, 1.0]]))
    assert saliency_peaks(x).tolist() == [[0]]  # the first of the two maxima


def test_bright_square_on_centre_peak_and_argmax() -> None:
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 10:16, 10:16] = 220.0
    sal = fine_grained_saliency(x)[0]
    gray = smooth_intensity(x)
    on = center_surround_contrast(gray).clamp_min(0).sum(dim=1)[0]
    r, c = divmod(int(on.argmax()), 32)
    assert 10 <= r < 16 and 10 <= c < 16, "the on-centre peak lies in the square"
    assert float(sal[10:16, 10:16].max()) == 1.0 and float(sal.max()) == 1.0
    # the off-centre map reaches 1 too; the first maximum in row-major order (np.argmax in the authors' code)
    # is the dark (3, 3), as OpenCV's map of the same 8-bit image gives
    assert saliency_peaks(x).tolist() == [[3, 3]]
    assert saliency_peaks(x / 255.0 * 2 - 1).tolist() == [[3, 3]]  # any range of values: same map


def test_map_matches_opencv_up_to_its_8_bit_truncation() -> None:
    mine = fine_grained_saliency(wavy_image())[0] * 255
    reference = torch.tensor(OPENCV_MAP, dtype=torch.float32)
    assert float((mine - reference).abs().max()) < 16
    assert float((mine - reference).abs().mean()) < 5
    assert saliency_peaks(wavy_image()).tolist() == [[3, 9]] == [list(divmod(int(reference.argmax()), 16))]


def test_batched_over_samples_and_dims() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 20, 24, generator=g)
    together = fine_grained_saliency(x)
    alone = torch.cat([fine_grained_saliency(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(fine_grained_saliency(3.0 * x - 1.0), together, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fine_grained_saliency(x.half()), together, atol=2e-2, rtol=0)
    for shape in [(2, 1, 30), (2, 2, 6, 7, 8), (1, 1, 1, 1), (3, 3, 2, 2)]:
        sal = fine_grained_saliency(torch.rand(shape, generator=g))
        assert sal.shape == (shape[0], *shape[2:]) and bool(torch.isfinite(sal).all())
    assert torch.equal(fine_grained_saliency(torch.ones(2, 3, 8, 8)), torch.zeros(2, 8, 8))


def test_box_by_hand() -> None:
    # lam = 0.75 on 32x32: cut = int(32 * 0.5) = 16, 8 on each side of the centre (2, 20), clipped at the top
    lo, hi = saliency_box_bounds((32, 32), np.array([0.75]), np.array([[2, 20]]))
    assert lo.tolist() == [[0, 12]] and hi.tolist() == [[10, 28]]
    # lam = 0.78: cut = int(32 * sqrt(0.22)) = 15, and 15 // 2 = 7 on each side: the side is 14
    lo, hi = saliency_box_bounds((32, 32), np.array([0.78]), np.array([[16, 16]]))
    assert (hi - lo).tolist() == [[14, 14]]
    # per-sample ratios and centres; lam = 1 gives an empty box
    lo, hi = saliency_box_bounds((10,), np.array([0.5, 1.0]), np.array([[9], [4]]))
    assert lo.tolist() == [[7], [4]] and hi.tolist() == [[10], [4]]


def spotted_batch(n: int = 8, size: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(n, 3, size, size, generator=g)
    for i in range(n):  # one bright spot per image, at different places
        r, c = 3 + (5 * i) % 18, 2 + (7 * i) % 20
        x[i, :, r : r + 2, c : c + 2] = 1.0
    return x


def test_code_reference_one_box_around_the_first_partners_peak() -> None:
    x = spotted_batch()
    mixer = mixlab.SaliencyMix(lam=0.6, p=1.0)
    params = mixer.sample(x, torch.arange(8), torch.Generator().manual_seed(1))
    perm = params.perm
    centre = saliency_peaks(x[perm[:1]])[0].tolist()
    half = int(24 * np.sqrt(0.4)) // 2
    expected_lo = [max(v - half, 0) for v in centre]
    expected_hi = [min(v + half, 24) for v in centre]
    assert params.extra["lo"].tolist() == [expected_lo] and params.extra["hi"].tolist() == [expected_hi]
    mb = mixer.apply(x, torch.arange(8), params)
    area = (expected_hi[0] - expected_lo[0]) * (expected_hi[1] - expected_lo[1]) / 24**2
    torch.testing.assert_close(mb.lam, torch.full((8,), 1 - area))
    box = (slice(None), slice(expected_lo[0], expected_hi[0]), slice(expected_lo[1], expected_hi[1]))
    torch.testing.assert_close(mb.inputs[(slice(None), *box)], x[perm][(slice(None), *box)])


@pytest.mark.parametrize(("lam_mode", "reference"), [("batch", "paper"), ("sample", "paper"), ("sample", "code")])
def test_each_box_contains_its_own_partners_peak(lam_mode: str, reference: str) -> None:
    x = spotted_batch()
    mb = mixlab.SaliencyMix(alpha=1.0, p=1.0, lam_mode=lam_mode, reference=reference)(
        x, torch.arange(8), generator=torch.Generator().manual_seed(1)
    )
    peaks = saliency_peaks(x)[mb.perm]
    mask = mb.mask.expand(8, 1, 24, 24)
    assert bool((mb.lam < 1).sum() >= 6)
    for i in range(8):
        if mb.lam[i] < 1:
            assert mask[i, 0][tuple(peaks[i].tolist())] == 0, "the partner's saliency peak lies in the pasted box"


def test_spectral_residual_option() -> None:
    x = spotted_batch()
    mb = mixlab.SaliencyMix(alpha=1.0, p=1.0, saliency="spectral_residual", reference="paper")(
        x, torch.arange(8), generator=torch.Generator().manual_seed(1)
    )
    peaks = saliency_peaks(x, "spectral_residual")[mb.perm]
    for i in range(8):
        if mb.lam[i] < 1:
            assert mb.mask[i, 0][tuple(peaks[i].tolist())] == 0


def test_defaults_are_the_authors_cifar_setting() -> None:
    mixer = mixlab.SaliencyMix()
    assert mixer.lam_sampler.alpha == 1.0  # --beta 1.0
    assert mixer.p == 0.5 and mixer.lam_mode == "batch"  # --salmix_prob 0.5, drawn once per batch
    assert mixer.saliency == "fine_grained" and mixer.reference == "code"
    assert "saliency='fine_grained'" in repr(mixer) and "reference='code'" in repr(mixer)
    assert mixlab.create_mixer("saliencymix").p == 0.5
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    mixed = [mixer(x, y, generator=torch.Generator().manual_seed(s)).lam[0].item() < 1 for s in range(200)]
    assert 70 < sum(mixed) < 130, "about half of the batches are mixed"


def test_bad_options_are_refused_at_construction() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown saliencymix saliency 'opencv'; known: fine_grained"):
        mixlab.SaliencyMix(saliency="opencv")
    with pytest.raises(UnknownNameError, match=r"unknown saliencymix reference 'both'; known: code, paper"):
        mixlab.SaliencyMix(reference="both")
    with pytest.raises(MixlabValueError, match=r"p must be"):
        mixlab.SaliencyMix(p=1.5)
