"""Corruptions at five severities and the accuracy under them, pinned against hand formulas and known answers."""

from __future__ import annotations

import itertools
import math

import pytest
import scipy.fft
import torch
from torch import nn

from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.evaluate import corruptions as corruptions_module
from mixlab.evaluate.corruptions import (
    CORRUPTIONS_1D,
    CORRUPTIONS_2D,
    NOISE_BLOCK,
    SEVERITIES,
    SEVERITY_TABLE_1D,
    SEVERITY_TABLE_2D,
    corrupt,
    corruption_accuracy,
    corruption_names,
    mean_corruption_error,
    per_corruption_accuracy,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scene(channels: int = 1, size: int = 28) -> torch.Tensor:
    """A fixed image in [0.05, 0.95] with a bright disk, a gradient and a texture (1, C, size, size)."""
    coords = torch.linspace(-1.0, 1.0, size)
    yy, xx = coords[:, None], coords[None, :]
    disk = ((xx - 0.2) ** 2 + (yy + 0.1) ** 2 < 0.3).float()
    texture = 0.5 + 0.5 * torch.sin(9.0 * xx + 4.0 * yy) * torch.cos(7.0 * yy)
    planes = [0.45 * disk + 0.25 * texture + 0.2 * (xx + 1.0) / 2.0 + 0.05 * c for c in range(channels)]
    return torch.stack(planes)[None].clamp(0.05, 0.95)


def signal(channels: int = 2, length: int = 128) -> torch.Tensor:
    """A fixed signal (1, C, L) in its own units, about unit amplitude: a slow chirp, a bump and a trend.

    Slow and not periodic, so that shifting it further moves it further from itself (a periodic signal shifted
    by a whole period is unchanged: shift and time_warp are monotone in distortion only on such signals).
    """
    t = torch.linspace(0.0, 1.0, length)
    rows = [
        torch.sin(2 * math.pi * ((0.75 + 0.5 * c) * t + t**2)) + torch.exp(-((t - 0.6) ** 2) / 0.002) + 2 * t
        for c in range(channels)
    ]
    return torch.stack(rows)[None]


def mean_distortion(x: torch.Tensor, name: str, severity: int, unit_range: bool) -> float:
    return float((corrupt(x, name, severity, generator=generator(7), unit_range=unit_range) - x).abs().mean())


class ConstantModel(nn.Module):
    """Ignores its input: the same logits for every sample."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


class MeanThreshold(nn.Module):
    """Class 1 when the mean pixel exceeds 0.5, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1).mean(dim=1) - 0.5
        return torch.stack((-score, score), dim=1)


class Recorder:
    """A preprocess that keeps every batch it is given."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen.append(batch.clone())
        return batch


# ------------------------------------------------------------------ names and tables


def test_names_cover_the_papers_sets_and_follow_the_input_rank():
    needed_2d = {
        "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "defocus_blur",
        "motion_blur", "contrast", "brightness", "fog", "elastic", "pixelate", "jpeg",
    }  # fmt: skip
    assert len(CORRUPTIONS_2D) >= 12 and needed_2d <= set(CORRUPTIONS_2D)
    assert {"gaussian_noise", "gaussian_blur", "contrast", "offset", "shift", "dropout", "quantize"} <= set(
        CORRUPTIONS_1D
    )
    assert corruption_names((5, 3, 32, 32)) == CORRUPTIONS_2D
    assert corruption_names(torch.Size((5, 2, 40))) == CORRUPTIONS_1D
    assert SEVERITIES == (1, 2, 3, 4, 5)
    for table in (SEVERITY_TABLE_2D, SEVERITY_TABLE_1D):
        assert all(len(values) == 5 for values in table.values())


def test_the_module_docstring_states_every_severity_row():
    doc = corruptions_module.__doc__
    for table in (SEVERITY_TABLE_2D, SEVERITY_TABLE_1D):
        for name, values in table.items():
            if name == "quantize":
                assert "(1/64, 1/32, 1/16, 1/8, 1/4)" in doc
                continue
            row = "(" + ", ".join(f"{v:g}" for v in values) + ")"
            assert f"``{name}``" in doc and row in doc, (name, row)


# ------------------------------------------------------------------ identity, shape, dtype, range


@pytest.mark.parametrize("name", CORRUPTIONS_2D)
def test_severity_zero_is_the_identity_on_images(name):
    x = scene(3)
    out = corrupt(x, name, 0, generator=generator(), unit_range=True)
    assert out is x and torch.equal(out, scene(3))


@pytest.mark.parametrize("name", CORRUPTIONS_1D)
def test_severity_zero_is_the_identity_on_signals(name):
    x = signal()
    assert corrupt(x, name, 0, generator=generator(), unit_range=False) is x


@pytest.mark.parametrize("name", CORRUPTIONS_2D)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_image_corruptions_keep_shape_and_dtype_stay_in_the_unit_range_and_change_the_image(name, dtype):
    x = torch.cat([scene(3, 30), scene(3, 30).flip(-1)]).to(dtype)  # 30: not a multiple of 8 (jpeg pads)
    for severity in SEVERITIES:
        out = corrupt(x, name, severity, generator=generator(severity), unit_range=True)
        assert out.shape == x.shape and out.dtype == dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert not torch.equal(out, x), (name, severity)


@pytest.mark.parametrize("name", CORRUPTIONS_1D)
def test_signal_corruptions_keep_shape_and_dtype_are_finite_and_unclamped_in_own_units(name):
    x = 3.0 * signal(3, 90).repeat(4, 1, 1)
    for severity in SEVERITIES:
        out = corrupt(x, name, severity, generator=generator(severity), unit_range=False)
        assert out.shape == x.shape and out.dtype == x.dtype and bool(torch.isfinite(out).all())
    assert float(corrupt(x, "offset", 5, generator=generator(), unit_range=False).max()) > 1.0


# ------------------------------------------------------------------ determinism


@pytest.mark.parametrize("name", CORRUPTIONS_2D)
def test_the_same_generator_seed_gives_the_same_images(name):
    x = scene(1)
    first = corrupt(x, name, 4, generator=generator(3), unit_range=True)
    assert torch.equal(first, corrupt(x, name, 4, generator=generator(3), unit_range=True))


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "fog", "elastic", "motion_blur"])
def test_another_seed_gives_other_draws(name):
    x = scene(1).repeat(8, 1, 1, 1)
    a = corrupt(x, name, 5, generator=generator(3), unit_range=True)
    assert not torch.equal(a, corrupt(x, name, 5, generator=generator(4), unit_range=True))


@pytest.mark.parametrize("name", ["elastic", "shot_noise"])
def test_the_corrupted_inputs_and_the_accuracy_do_not_depend_on_batch_size(name):
    n = NOISE_BLOCK * 2 + 88
    x = (scene(1, 12).repeat(n, 1, 1, 1) * 255).to(torch.uint8)
    x[::3] = 255 - x[::3]
    y = (torch.arange(n) % 2).long()
    seen, accuracies = [], []
    for batch_size in (100, 300, 1000):
        recorder = Recorder()
        out = corruption_accuracy(
            MeanThreshold(), x, y, preprocess=recorder, corruptions=[name], severities=[5], batch_size=batch_size
        )
        assert max(b.shape[0] for b in recorder.seen) <= batch_size
        seen.append(torch.cat(recorder.seen))
        accuracies.append(out)
    assert seen[0].shape == (n, 1, 12, 12)
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[0], seen[2])
    assert accuracies[0] == accuracies[1] == accuracies[2]
    # and the samples of a batch do not share one draw
    assert not torch.equal(seen[0][1], seen[0][2])


def test_a_different_seed_gives_a_different_corrupted_set():
    x = (scene(1, 12).repeat(20, 1, 1, 1) * 255).to(torch.uint8)
    y = torch.zeros(20, dtype=torch.long)
    runs = []
    for seed in (0, 0, 1):
        recorder = Recorder()
        corruption_accuracy(MeanThreshold(), x, y, preprocess=recorder, corruptions=["gaussian_noise"], seed=seed)
        runs.append(torch.cat(recorder.seen))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# ------------------------------------------------------------------ severities are monotone


@pytest.mark.parametrize("name", CORRUPTIONS_2D)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 64)])
def test_image_distortion_grows_with_severity(name, channels, size):
    x = scene(channels, size)
    distortion = [mean_distortion(x, name, s, unit_range=True) for s in (0, *SEVERITIES)]
    assert distortion[0] == 0.0 and distortion[1] > 0.0
    assert all(b >= a for a, b in itertools.pairwise(distortion)), distortion


@pytest.mark.parametrize("name", CORRUPTIONS_1D)
def test_signal_distortion_grows_with_severity(name):
    x = signal(3, 512)
    distortion = [mean_distortion(x, name, s, unit_range=False) for s in (0, *SEVERITIES)]
    assert distortion[0] == 0.0 and distortion[1] > 0.0
    assert all(b >= a for a, b in itertools.pairwise(distortion)), distortion


# ------------------------------------------------------------------ hand formulas and known answers


def test_brightness_and_contrast_by_hand():
    x = scene(3, 16)
    bright = corrupt(x, "brightness", 3, generator=generator(), unit_range=True)
    torch.testing.assert_close(bright, (x + 0.3).clamp(0.0, 1.0))
    assert float(bright.max()) == 1.0  # clamped: the scene reaches 0.95
    unclamped = corrupt(x, "brightness", 5, generator=generator(), unit_range=False)
    torch.testing.assert_close(unclamped, x + 0.5)
    mean = x.mean()  # over (C, H, W): one image
    torch.testing.assert_close(
        corrupt(x, "contrast", 3, generator=generator(), unit_range=True), (x - mean) * 0.4 + mean
    )
    s = signal(2, 50)
    channel_mean = s.mean(dim=2, keepdim=True)
    torch.testing.assert_close(
        corrupt(s, "contrast", 5, generator=generator(), unit_range=False), (s - channel_mean) * 0.15 + channel_mean
    )
    torch.testing.assert_close(corrupt(s, "offset", 2, generator=generator(), unit_range=False), s + 0.2)


def test_gaussian_and_shot_noise_have_the_stated_moments():
    x = torch.full((4, 1, 100, 100), 0.5)
    noise = corrupt(x, "gaussian_noise", 3, generator=generator(), unit_range=False) - x
    assert abs(float(noise.mean())) < 0.002 and abs(float(noise.std()) - 0.1) < 0.002
    shot = corrupt(x, "shot_noise", 3, generator=generator(), unit_range=True)  # Poisson(25 * 0.5) / 25
    torch.testing.assert_close(shot * 25, (shot * 25).round())  # whole photon counts
    assert abs(float(shot.mean()) - 0.5) < 0.003 and abs(float(shot.var()) - 0.5 / 25) < 0.001
    speckle = corrupt(x, "speckle_noise", 4, generator=generator(), unit_range=False) - x
    assert abs(float(speckle.std()) - 0.5 * 0.22) < 0.003


def test_impulse_noise_sets_the_stated_share_to_the_extremes():
    x = torch.full((4, 3, 100, 100), 0.5)
    out = corrupt(x, "impulse_noise", 4, generator=generator(), unit_range=True)
    assert abs(float((out == 0.0).double().mean()) - 0.035) < 0.003
    assert abs(float((out == 1.0).double().mean()) - 0.035) < 0.003
    assert float(((out != 0.0) & (out != 1.0) & (out != 0.5)).sum()) == 0
    s = signal(2, 1000)
    noisy = corrupt(s, "impulse_noise", 5, generator=generator(), unit_range=False)
    hit = noisy != s
    lows, highs = s.amin(dim=2, keepdim=True).expand_as(s), s.amax(dim=2, keepdim=True).expand_as(s)
    assert torch.equal(noisy[hit] == lows[hit], ~(noisy[hit] == highs[hit]))
    assert abs(float(hit.double().mean()) - 0.1) < 0.02


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur", "pixelate", "elastic", "rotate"])
def test_a_constant_image_stays_constant(name):
    x = torch.full((3, 2, 28, 28), 0.5)
    out = corrupt(x, name, 5, generator=generator(), unit_range=True)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0.0)


def test_pixelate_of_a_constant_is_that_constant():
    half = torch.full((3, 2, 28, 28), 0.5)
    assert torch.equal(corrupt(half, "pixelate", 4, generator=generator(), unit_range=True), half)  # exact means
    value = torch.rand(3, 1, 1, 1, generator=generator(1)).expand(3, 2, 28, 28)
    torch.testing.assert_close(corrupt(value, "pixelate", 5, generator=generator(), unit_range=True), value)


def test_gaussian_blur_of_an_impulse_is_the_separable_gaussian():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 16, 16] = 1.0
    out = corrupt(x, "gaussian_blur", 3, generator=generator(), unit_range=False)  # sigma 1 px on 32×32
    offsets = torch.arange(-3, 4, dtype=torch.float32)
    g = torch.exp(-(offsets**2) / 2.0)
    g = g / g.sum()
    expected = torch.zeros(32, 32)
    expected[13:20, 13:20] = g[:, None] * g[None, :]
    torch.testing.assert_close(out[0, 0], expected)


def test_blur_radius_scales_with_the_image_size():
    """sigma 1 px@32 is sigma 2 px on 64×64: the blurred impulse's second moment along a row is sigma²."""
    for size, sigma in ((32, 1.0), (64, 2.0), (28, 0.875)):
        x = torch.zeros(1, 1, size, size, dtype=torch.float64)
        x[0, 0, size // 2, size // 2] = 1.0
        row = corrupt(x, "gaussian_blur", 3, generator=generator(), unit_range=False)[0, 0].sum(dim=0)
        offsets = torch.arange(size, dtype=torch.float64) - size // 2
        variance = float((row * offsets**2).sum())
        assert abs(variance - sigma**2) < 0.05 * sigma**2, (size, variance)


def test_jpeg_keeps_a_constant_block_and_blocks_on_the_quantisation_grid():
    """Quality 25 (severity 3) doubles the luminance table; the DCT is checked against scipy's orthonormal DCT-II."""
    steps = torch.tensor(corruptions_module._JPEG_LUMINANCE, dtype=torch.float64) * 2.0 / 255.0
    value = 0.37
    constant = torch.full((1, 1, 8, 8), value, dtype=torch.float64)
    out = corrupt(constant, "jpeg", 3, generator=generator(), unit_range=True)
    dc_step = float(steps[0, 0])  # the DC coefficient of a constant block is 8 · value
    assert float(out.std()) < 1e-12
    assert float(out[0, 0, 0, 0]) == pytest.approx(round(8 * value / dc_step) * dc_step / 8, abs=1e-12)
    assert abs(float(out[0, 0, 0, 0]) - value) <= dc_step / 16
    integers = torch.randint(-3, 4, (2, 3, 8, 8), generator=generator(5)).double()
    on_grid = torch.from_numpy(scipy.fft.idctn((integers * steps).numpy(), axes=(-2, -1), norm="ortho"))
    tiled = on_grid.repeat(1, 1, 2, 3)  # (2, 3, 16, 24): six blocks per channel
    torch.testing.assert_close(corrupt(tiled, "jpeg", 3, generator=generator(), unit_range=False), tiled)
    # the DC step at every severity, by the IJG rule on the table's 16: 16·(2 − 65/50), 16·50/40, 16·50/25, ...
    for severity, dc_units in zip(SEVERITIES, (11, 20, 32, 53, 100), strict=True):
        dc = dc_units / 255.0
        block = corrupt(constant, "jpeg", severity, generator=generator(), unit_range=True)
        assert float(block.std()) < 1e-12
        assert float(block[0, 0, 0, 0]) == pytest.approx(round(8 * value / dc) * dc / 8, abs=1e-12), severity
    off_grid = tiled + 0.3 * steps[0, 0]  # shifts every DC coefficient by 2.4 steps: rounds back by 0.4 step
    restored = corrupt(off_grid, "jpeg", 3, generator=generator(), unit_range=False)
    torch.testing.assert_close(restored, tiled + 0.25 * steps[0, 0])


def test_pixelate_averages_blocks():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4) / 16
    out = corrupt(x, "pixelate", 3, generator=generator(), unit_range=True)  # fraction 0.5: 2×2 blocks
    means = x.reshape(1, 1, 2, 2, 2, 2).mean(dim=(3, 5))
    torch.testing.assert_close(out, means.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def test_elastic_moves_pixels_by_the_stated_rms_length():
    """On the ramp I = column index, bilinear sampling returns the source column: the horizontal displacement."""
    size = 64
    ramp = torch.arange(size, dtype=torch.float64).expand(8, 1, size, size).clone()
    moved = corrupt(ramp, "elastic", 5, generator=generator(), unit_range=False)  # 2 px@32 = 4 px on 64×64
    inner = (moved - ramp)[..., 8:-8, 8:-8]  # away from the reflected border
    per_component = 4.0 / math.sqrt(2.0)
    assert abs(float(inner.pow(2).mean().sqrt()) - per_component) < 0.15 * per_component


def test_rotate_turns_about_the_centre_by_the_stated_angle():
    size = 33
    centred = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    ramp = centred.expand(1, 1, size, size).clone()
    out = corrupt(ramp, "rotate", 3, generator=generator(), unit_range=False)[0, 0]  # 18 degrees
    rows, cols = centred[:, None].expand(size, size), centred[None, :].expand(size, size)
    angle = math.radians(18.0)
    inner = (rows.abs() < 8) & (cols.abs() < 8)
    matches = [
        torch.allclose(out[inner], (math.cos(angle) * cols + sign * math.sin(angle) * rows)[inner]) for sign in (1, -1)
    ]
    assert any(matches)


def test_signal_shift_dropout_and_quantize_by_hand():
    ramp = torch.arange(100, dtype=torch.float32).expand(1, 2, 100).clone()
    shifted = corrupt(ramp, "shift", 3, generator=generator(), unit_range=False)  # 10 samples
    later = torch.cat([torch.zeros(10), torch.arange(90.0)])
    earlier = torch.cat([torch.arange(10.0, 100.0), torch.full((10,), 99.0)])
    assert torch.equal(shifted[0, 0], later) or torch.equal(shifted[0, 0], earlier)
    ones = torch.ones(50, 3, 200)
    dropped = corrupt(ones, "dropout", 4, generator=generator(), unit_range=False)
    assert torch.equal(dropped[:, 0], dropped[:, 1]) and torch.equal(dropped[:, 0], dropped[:, 2])
    assert abs(float((dropped == 0).double().mean()) - 0.2) < 0.01
    unit = torch.rand(4, 2, 64, generator=generator(2))
    quantised = corrupt(unit, "quantize", 5, generator=generator(), unit_range=True)  # step 1/4
    torch.testing.assert_close(quantised, torch.round(unit * 4) / 4)
    s = signal(2, 64)
    low, high = s.amin(dim=2, keepdim=True), s.amax(dim=2, keepdim=True)
    step = (high - low) / 8
    expected = low + torch.round((s - low) / step) * step
    torch.testing.assert_close(corrupt(s, "quantize", 4, generator=generator(), unit_range=False), expected)


# ------------------------------------------------------------------ accuracy and mCE


def test_a_model_that_ignores_its_input_keeps_its_clean_accuracy_everywhere():
    x = (scene(1, 16).repeat(30, 1, 1, 1) * 255).to(torch.uint8)
    y = torch.tensor([2] * 12 + [0] * 18)
    model = ConstantModel([0.0, 0.1, 0.9])  # always class 2: 12 of 30 right
    out = corruption_accuracy(model, x, y, preprocess=lambda b: b, batch_size=7)
    assert set(out) == (
        {"corr_acc"}
        | {f"corr_acc/{n}" for n in CORRUPTIONS_2D}
        | {f"corr_acc/{n}/{s}" for n in CORRUPTIONS_2D for s in SEVERITIES}
    )
    assert all(value == pytest.approx(0.4, abs=1e-12) for value in out.values())


def test_accuracy_cells_by_hand_for_a_mean_threshold_model():
    """Constant images 64/255 (class 0) and 191/255 (class 1); brightness +0.1..+0.5 flips class 0 from severity 3."""
    x = torch.cat([torch.full((10, 1, 6, 6), 64), torch.full((10, 1, 6, 6), 191)]).to(torch.uint8)
    y = torch.tensor([0] * 10 + [1] * 10)
    out = corruption_accuracy(MeanThreshold(), x, y, preprocess=lambda b: b, corruptions=["brightness", "contrast"])
    assert [out[f"corr_acc/brightness/{s}"] for s in SEVERITIES] == [1.0, 1.0, 0.5, 0.5, 0.5]
    assert all(out[f"corr_acc/contrast/{s}"] == 1.0 for s in SEVERITIES)  # constant images keep their mean
    assert out["corr_acc/brightness"] == pytest.approx(0.7)
    assert out["corr_acc"] == pytest.approx(0.85)
    clean = corruption_accuracy(MeanThreshold(), x, y, preprocess=lambda b: b, corruptions=["fog"], severities=[0])
    assert clean == {"corr_acc": 1.0, "corr_acc/fog": 1.0, "corr_acc/fog/0": 1.0}


def test_signals_work_end_to_end():
    x = torch.randn(40, 2, 64, generator=generator())
    y = (x.mean(dim=(1, 2)) > 0).long()
    model = nn.Sequential(nn.Conv1d(2, 4, 5), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    out = corruption_accuracy(model, x, y, preprocess=lambda b: b, severities=[1, 5])
    assert set(out) == {"corr_acc"} | {f"corr_acc/{n}" for n in CORRUPTIONS_1D} | {
        f"corr_acc/{n}/{s}" for n in CORRUPTIONS_1D for s in (1, 5)
    }
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_mean_corruption_error_by_hand():
    model = {"fog": 0.8, "jpeg": 0.5}
    baseline = {"fog": 0.6, "jpeg": 0.75}
    assert mean_corruption_error(model, baseline) == pytest.approx((0.2 / 0.4 + 0.5 / 0.25) / 2)  # 1.25
    assert mean_corruption_error(baseline, baseline) == 1.0
    metrics = {"corr_acc": 0.6, "corr_acc/fog": 0.8, "corr_acc/fog/1": 0.9, "corr_acc/jpeg": 0.5, "top1": 0.9}
    assert per_corruption_accuracy(metrics) == model
    with pytest.raises(MixlabValueError, match="same corruptions"):
        mean_corruption_error({"fog": 0.8}, baseline)
    with pytest.raises(MixlabValueError, match=r"error is 0 on \['fog'\]"):
        mean_corruption_error(model, {"fog": 1.0, "jpeg": 0.5})
    with pytest.raises(MixlabValueError, match="in \\[0, 1\\]"):
        mean_corruption_error({"fog": 80.0, "jpeg": 0.5}, baseline)


# ------------------------------------------------------------------ bad input


def test_bad_input_is_refused_with_the_value_seen():
    x = scene(1)
    with pytest.raises(UnknownNameError, match=r"'snow'.*defocus_blur.*gaussian_noise"):
        corrupt(x, "snow", 1, generator=generator(), unit_range=True)
    with pytest.raises(UnknownNameError, match="'shift'"):  # a signal corruption asked of an image
        corrupt(x, "shift", 1, generator=generator(), unit_range=True)
    with pytest.raises(MixlabValueError, match=r"severity must be an int in 0\.\.5; got 6"):
        corrupt(x, "fog", 6, generator=generator(), unit_range=True)
    with pytest.raises(MixlabValueError, match="severity"):
        corrupt(x, "fog", -1, generator=generator(), unit_range=True)
    with pytest.raises(MixlabTypeError, match="severity"):
        corrupt(x, "fog", 2.0, generator=generator(), unit_range=True)
    with pytest.raises(MixlabValueError, match=r"tables \(N, D\).*got shape \(4, 7\)"):
        corrupt(torch.rand(4, 7), "gaussian_noise", 1, generator=generator(), unit_range=False)
    with pytest.raises(MixlabValueError, match=r"tables \(N, D\)"):
        corruption_names((4, 7))
    with pytest.raises(MixlabTypeError, match=r"float tensor.*uint8"):
        corrupt(x.to(torch.uint8), "fog", 1, generator=generator(), unit_range=True)
    with pytest.raises(MixlabTypeError, match=r"torch\.Generator; got int"):
        corrupt(x, "fog", 1, generator=0, unit_range=True)


def test_corruption_accuracy_refuses_bad_arguments_before_any_work():
    model = ConstantModel([0.0, 1.0])
    recorder = Recorder()
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(MixlabValueError, match=r"tables \(N, D\).*\(4, 5\)"):
        corruption_accuracy(model, torch.rand(4, 5), y, preprocess=recorder)
    with pytest.raises(UnknownNameError, match="'blur'"):
        corruption_accuracy(model, images, y, preprocess=recorder, corruptions=["fog", "blur"])
    with pytest.raises(MixlabValueError, match="got 6"):
        corruption_accuracy(model, images, y, preprocess=recorder, severities=[1, 6])
    with pytest.raises(MixlabValueError, match="without repeats"):
        corruption_accuracy(model, images, y, preprocess=recorder, corruptions=["fog", "fog"])
    with pytest.raises(MixlabTypeError, match="severities"):
        corruption_accuracy(model, images, y, preprocess=recorder, severities=3)
    with pytest.raises(MixlabValueError, match="as many samples"):
        corruption_accuracy(model, images, y[:3], preprocess=recorder)
    assert recorder.seen == []
