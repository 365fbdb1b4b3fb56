"""Common corruptions at five severities, generated on the device in batches, and a model's accuracy under them.

In the style of CIFAR-10-C (Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019, arXiv:1903.12261)
and MNIST-C (Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision",
ICML 2019 workshop, arXiv:1906.02337), re-implemented in torch so that the
corrupted sets never touch the disk: every corruption is a vectorised function of
a batch, its random draws come from an explicit ``torch.Generator`` on the batch's
device, and severity 0 is the identity.

Scale convention (as in :mod:`mixlab.evaluate.robustness`): ``uint8`` images are
divided by 255, corrupted in [0, 1] and clamped to [0, 1] (``unit_range=True``);
float inputs are corrupted in their own units, unclamped, so amplitudes
(noise standard deviations, offsets, fog) are in those units.

Images ``(N, C, H, W)`` (any C; nothing needs colour, so grey images get the full
set). Spatial parameters are given in pixels of a 32×32 image and multiplied by
``min(H, W) / 32`` (a blur of sigma 1 px on CIFAR is sigma 0.875 px on 28×28 and
7 px on 224×224); fractions (pixelate) and scale-free fields (fog) need no scaling.
Severities 1..5 of ``SEVERITY_TABLE_2D``:

- ``gaussian_noise`` std (0.04, 0.07, 0.1, 0.14, 0.2): ``x + std·n``, n ~ N(0, 1) per pixel.
- ``shot_noise`` photons λ (100, 50, 25, 12, 6): ``x + Poisson(λ·x⁺)/λ − x⁺`` (x⁺ = max(x, 0));
  on [0, 1] images this is ``Poisson(λx)/λ``.
- ``impulse_noise`` fraction (0.01, 0.02, 0.04, 0.07, 0.1): that share of pixels (per channel) set to
  the low or the high end, half each (0 and 1 on [0, 1] images, else the sample-channel min and max).
- ``speckle_noise`` std (0.06, 0.1, 0.15, 0.22, 0.3): ``x + x·std·n``.
- ``gaussian_blur`` sigma px@32 (0.5, 0.75, 1, 1.25, 1.5): separable Gaussian, radius ⌈3σ⌉, reflect padding.
- ``defocus_blur`` radius px@32 (0.75, 1, 1.5, 2, 2.5): normalised anti-aliased disk,
  weight ``clip(r + 1/2 − |d|, 0, 1)`` at offset d.
- ``motion_blur`` length px@32 (2, 3, 4, 6, 8): a centred line segment of that length at an angle
  uniform in [0, π) drawn per image, weight ``clip(1 − perpendicular distance, 0, 1)``.
- ``contrast`` factor c (0.75, 0.5, 0.4, 0.3, 0.15): ``(x − m)·c + m``, m the image's mean over (C, H, W).
- ``brightness`` offset b (0.1, 0.2, 0.3, 0.4, 0.5): ``x + b`` (an additive shift of every channel;
  CIFAR-10-C shifts HSV value, which grey images do not have).
- ``fog`` amplitude a (0.2, 0.5, 0.75, 1, 1.5): F a random field with amplitude spectrum ``|f|^-1.5``
  (zero mean, built with the FFT, shared by the channels, min-max scaled to [0, 1] per image);
  ``(x + a·F)·M/(M + a)`` on [0, 1] images (M the image's max, as ImageNet-C's fog), ``x + a·F`` otherwise.
- ``elastic`` RMS displacement px@32 (0.5, 0.8, 1.1, 1.5, 2): a displacement field of white noise
  low-passed by a Gaussian of sigma 4 px@32 (FFT, zero mean), scaled to that root-mean-square length,
  applied with bilinear ``grid_sample`` and reflection padding (Simard, Steinkraus & Platt, ICDAR 2003).
- ``pixelate`` fraction s (0.8, 0.65, 0.5, 0.4, 0.3): every pixel becomes the mean of its block, the
  blocks being a ``round(s·H) × round(s·W)`` grid (pixel i in block ``⌊i·round(s·H)/H⌋``): downsampling by
  block means and nearest-neighbour upsampling, with down and up bins that agree.
- ``jpeg`` quality q (65, 40, 25, 15, 8): every 8×8 block of every channel (replicate-padded to a
  multiple of 8) goes through an orthonormal DCT-II (a matrix product), its coefficients are rounded to
  multiples of the JPEG luminance table (ITU-T T.81 Annex K) scaled by the IJG quality rule
  (``50/q`` below 50, ``2 − q/50`` above) and divided by 255, and the block is transformed back.
  No colour transform or chroma subsampling.
- ``rotate`` angle in degrees (6, 12, 18, 24, 30), sign drawn per image: bilinear ``grid_sample``
  about the centre, reflection padding (MNIST-C's rotate).

Signals ``(N, C, L)``: lengths in samples of a 128-sample signal, multiplied by ``L / 128``.
Severities 1..5 of ``SEVERITY_TABLE_1D``:

- ``gaussian_noise``, ``impulse_noise``, ``speckle_noise``: as for images, with the same tables
  (impulse extremes per sample and channel).
- ``gaussian_blur`` sigma samples@128 (0.5, 1, 1.5, 2, 3): along the length, reflect padding.
- ``contrast`` factor c (0.75, 0.5, 0.4, 0.3, 0.15): ``(x − m)·c + m``, m the mean of each sample and channel.
- ``offset`` b (0.1, 0.2, 0.3, 0.4, 0.5): ``x + b``.
- ``drift`` amplitude a (0.1, 0.2, 0.3, 0.5, 0.8): ``x + a·D``, D a zero-mean random field with
  amplitude spectrum ``|f|^-2`` per sample and channel, scaled to max |D| = 1 (baseline wander).
- ``shift`` fraction (0.02, 0.05, 0.1, 0.15, 0.2): a shift by ``round(fraction·L)`` samples in a
  direction drawn per sample, the edge value repeated.
- ``time_warp`` RMS displacement samples@128 (1, 2, 3, 4, 6): as ``elastic`` along the length
  (smoothing sigma 8 samples@128), linear interpolation, border padding.
- ``dropout`` fraction p (0.02, 0.05, 0.1, 0.2, 0.3): that share of time steps set to 0 in every channel.
- ``quantize`` step as a fraction of the range (1/64, 1/32, 1/16, 1/8, 1/4): ``lo + round((x − lo)/Δ)·Δ``,
  Δ = fraction·(hi − lo), [lo, hi] = [0, 1] when ``unit_range`` else each sample-channel's min and max.

Tables ``(N, D)`` have no corruption set and are refused.

Example:
    >>> x = torch.rand(2, 1, 28, 28)
    >>> g = torch.Generator().manual_seed(0)
    >>> corrupt(x, "pixelate", 3, generator=g, unit_range=True).shape
    torch.Size([2, 1, 28, 28])
    >>> corrupt(x, "fog", 0, generator=g, unit_range=True) is x
    True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice, check_int
from mixlab.evaluate.running import (
    DeviceLike,
    Preprocess,
    check_model_inputs,
    count_correct,
    eval_mode,
    in_model_layout,
    place_model,
    unit_scale,
)

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

REFERENCE_SIDE = 32
"""Spatial 2-D parameters are in pixels of a 32×32 image, scaled by ``min(H, W) / REFERENCE_SIDE``."""
REFERENCE_LENGTH = 128
"""Length 1-D parameters are in samples of a 128-sample signal, scaled by ``L / REFERENCE_LENGTH``."""
NOISE_BLOCK = 256
"""Samples per noise block: every block has its own generator, so results do not depend on ``batch_size``."""

_NOISE_STD = (0.04, 0.07, 0.1, 0.14, 0.2)
_IMPULSE_FRACTION = (0.01, 0.02, 0.04, 0.07, 0.1)
_SPECKLE_STD = (0.06, 0.1, 0.15, 0.22, 0.3)
_CONTRAST_FACTOR = (0.75, 0.5, 0.4, 0.3, 0.15)
_OFFSET = (0.1, 0.2, 0.3, 0.4, 0.5)

SEVERITY_TABLE_2D: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "gaussian_noise": _NOISE_STD,  # standard deviation
        "shot_noise": (100.0, 50.0, 25.0, 12.0, 6.0),  # photons per unit intensity
        "impulse_noise": _IMPULSE_FRACTION,  # share of pixels
        "speckle_noise": _SPECKLE_STD,  # relative standard deviation
        "gaussian_blur": (0.5, 0.75, 1.0, 1.25, 1.5),  # sigma, px@32
        "defocus_blur": (0.75, 1.0, 1.5, 2.0, 2.5),  # disk radius, px@32
        "motion_blur": (2.0, 3.0, 4.0, 6.0, 8.0),  # segment length, px@32
        "contrast": _CONTRAST_FACTOR,  # factor on the deviation from the mean
        "brightness": _OFFSET,  # additive offset
        "fog": (0.2, 0.5, 0.75, 1.0, 1.5),  # field amplitude
        "elastic": (0.5, 0.8, 1.1, 1.5, 2.0),  # RMS displacement, px@32
        "pixelate": (0.8, 0.65, 0.5, 0.4, 0.3),  # kept fraction of each side
        "jpeg": (65.0, 40.0, 25.0, 15.0, 8.0),  # IJG quality
        "rotate": (6.0, 12.0, 18.0, 24.0, 30.0),  # degrees
    }
)
SEVERITY_TABLE_1D: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "gaussian_noise": _NOISE_STD,
        "impulse_noise": _IMPULSE_FRACTION,
        "speckle_noise": _SPECKLE_STD,
        "gaussian_blur": (0.5, 1.0, 1.5, 2.0, 3.0),  # sigma, samples@128
        "contrast": _CONTRAST_FACTOR,
        "offset": _OFFSET,
        "drift": (0.1, 0.2, 0.3, 0.5, 0.8),  # max |baseline wander|
        "shift": (0.02, 0.05, 0.1, 0.15, 0.2),  # fraction of the length
        "time_warp": (1.0, 2.0, 3.0, 4.0, 6.0),  # RMS displacement, samples@128
        "dropout": (0.02, 0.05, 0.1, 0.2, 0.3),  # share of time steps zeroed
        "quantize": (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4),  # step as a fraction of the range
    }
)
CORRUPTIONS_2D: tuple[str, ...] = tuple(SEVERITY_TABLE_2D)
CORRUPTIONS_1D: tuple[str, ...] = tuple(SEVERITY_TABLE_1D)

_ELASTIC_SMOOTHING_PX = 4.0  # px@32 (Simard et al. use sigma 4 on 28×28 digits)
_WARP_SMOOTHING_SAMPLES = 8.0  # samples@128
_FOG_EXPONENT = 1.5
_DRIFT_EXPONENT = 2.0
# JPEG luminance quantisation table, ITU-T T.81 Annex K.1, in 0..255 units
_JPEG_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)

Corruption = Callable[[Tensor, float, torch.Generator, bool], Tensor]


# ------------------------------------------------------------------ public API


def corruption_names(x_shape: Sequence[int]) -> tuple[str, ...]:
    """The corruptions defined for inputs of shape ``x_shape``: images ``(N, C, H, W)`` or signals ``(N, C, L)``.

    Example:
        >>> len(corruption_names((10, 1, 28, 28))) >= 12, corruption_names((10, 1, 40))[:2]
        (True, ('gaussian_noise', 'impulse_noise'))
    """
    return tuple(_table_for(tuple(x_shape)))


def corrupt(x: Tensor, name: str, severity: int, *, generator: torch.Generator, unit_range: bool) -> Tensor:
    """``x`` with corruption ``name`` at ``severity`` (0: ``x`` itself, 1..5: the module's tables).

    Args:
        x: float images ``(N, C, H, W)`` or signals ``(N, C, L)``, on the generator's device.
        name: one of :func:`corruption_names` for that shape.
        severity: 0 (identity, returns ``x`` unchanged) to 5.
        generator: source of every random draw, on ``x``'s device.
        unit_range: ``x`` is in [0, 1] (integer images / 255); the result is clamped to [0, 1].

    Returns:
        a new tensor of ``x``'s shape and dtype (``x`` itself at severity 0).

    Example:
        >>> x = torch.full((1, 1, 4, 4), 0.5)
        >>> corrupt(x, "brightness", 2, generator=torch.Generator(), unit_range=True).flatten()[0].item()
        0.699999988079071
    """
    _check_corrupt_args(x, name, severity, generator, unit_range)
    if severity == 0:
        return x
    operation = (_OPERATIONS_2D if x.ndim == 4 else _OPERATIONS_1D)[name]
    parameter = _table_for(tuple(x.shape))[name][severity - 1]
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = operation(work, parameter, generator, unit_range)
    if unit_range:
        out = out.clamp(0.0, 1.0)
    return out.to(x.dtype)


def corruption_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    preprocess: Preprocess,
    corruptions: Iterable[str] | None = None,
    severities: Iterable[int] = SEVERITIES,
    seed: int = 0,
    batch_size: int = 1000,
    device: DeviceLike = None,
) -> dict[str, float]:
    """Accuracy of ``model`` on every (corruption, severity) cell, per corruption and overall.

    The corruptions are generated on ``device`` from the raw inputs (integer
    images / 255, see :func:`corrupt`), in blocks of ``NOISE_BLOCK`` samples whose
    generators are seeded from (seed, corruption, severity, block start), so the
    result depends on neither ``batch_size`` nor the call; it may differ between
    device types (a CUDA generator draws other numbers than the CPU one). The model
    runs in eval mode without gradients, ``batch_size`` samples per forward pass.
    The mean over cells is the paper's corruption accuracy (Hendrycks & Dietterich,
    ICLR 2019, arXiv:1903.12261).

    Args:
        model: the classifier.
        x: raw inputs, ``uint8`` images ``(N, C, H, W)`` or float images or signals ``(N, C, L)``.
        y: class indices ``(N,)``.
        preprocess: maps a raw batch, or its float [0, 1] version, to the model's input.
        corruptions: names (default: all of :func:`corruption_names` for ``x``'s shape).
        severities: severities to evaluate, each in 0..5 (0 is the clean input).
        seed: seed of every random draw; batch_size, device: as in
            :func:`mixlab.evaluate.robustness.predict_logits`.

    Returns:
        ``{"corr_acc": mean over cells, "corr_acc/<name>": mean over severities,
        "corr_acc/<name>/<severity>": the cell}``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> x, y = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8), torch.randint(0, 2, (8,))
        >>> out = corruption_accuracy(model, x, y, preprocess=lambda b: b, corruptions=["contrast"], severities=[1, 5])
        >>> sorted(out)
        ['corr_acc', 'corr_acc/contrast', 'corr_acc/contrast/1', 'corr_acc/contrast/5']
    """
    batch_size = check_model_inputs(model, x, y, preprocess, batch_size)
    names = _check_names(corruptions, tuple(x.shape))
    severities = _check_severities(severities)
    seed = check_int("seed", seed, minimum=0)
    preprocess = in_model_layout(model, preprocess)
    device = place_model(model, device)
    correct = {(name, severity): 0 for name in names for severity in severities}
    group = max(1, batch_size // NOISE_BLOCK) * NOISE_BLOCK
    with eval_mode(model), torch.no_grad():
        for start in range(0, x.shape[0], group):
            raw = x[start : start + group].to(device)
            labels = y[start : start + group].to(device=device, dtype=torch.long)
            unit, unit_range = unit_scale(raw), not raw.is_floating_point()
            for name, severity in correct:
                corrupted = _corrupt_blocks(unit, unit_range, name, severity, seed, start)
                for first in range(0, unit.shape[0], batch_size):
                    inputs = preprocess(corrupted[first : first + batch_size])
                    correct[name, severity] += count_correct(model, inputs, labels[first : first + batch_size])
    return _accuracy_keys(correct, names, severities, x.shape[0])


def mean_corruption_error(per_corruption_acc: Mapping[str, float], baseline_acc: Mapping[str, float]) -> float:
    """Mean corruption error (mCE) of a model relative to a baseline, from accuracies per corruption.

    ``mCE = mean_c (1 − acc_f(c)) / (1 − acc_base(c))`` with ``acc(c)`` the
    accuracy on corruption c averaged over severities; the ratio of the sums over
    severities in Hendrycks & Dietterich (ICLR 2019, arXiv:1903.12261) equals this
    ratio of means. The baseline against itself gives 1.0; below 1 is more robust.

    Args:
        per_corruption_acc: ``{corruption: accuracy}`` of the model (see :func:`per_corruption_accuracy`).
        baseline_acc: the same for the baseline, with the same corruptions.

    Example:
        >>> mean_corruption_error({"fog": 0.8, "jpeg": 0.9}, {"fog": 0.6, "jpeg": 0.9})
        0.75
    """
    model_acc = _check_accuracies("per_corruption_acc", per_corruption_acc)
    base_acc = _check_accuracies("baseline_acc", baseline_acc)
    if set(model_acc) != set(base_acc):
        raise MixlabValueError(
            "per_corruption_acc and baseline_acc must name the same corruptions; got "
            f"{sorted(model_acc)} and {sorted(base_acc)}"
        )
    perfect = sorted(name for name, acc in base_acc.items() if acc == 1.0)
    if perfect:
        raise MixlabValueError(f"the baseline's error is 0 on {perfect}: the relative error is undefined there")
    ratios = [(1.0 - model_acc[name]) / (1.0 - base_acc[name]) for name in sorted(model_acc)]
    return sum(ratios) / len(ratios)


def per_corruption_accuracy(metrics: Mapping[str, float]) -> dict[str, float]:
    """``{name: accuracy}`` from the ``"corr_acc/<name>"`` keys of :func:`corruption_accuracy`'s result (or a store).

    Example:
        >>> per_corruption_accuracy({"corr_acc": 0.7, "corr_acc/fog": 0.6, "corr_acc/fog/1": 0.9, "top1": 0.9})
        {'fog': 0.6}
    """
    found = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 2 and parts[0] == "corr_acc":
            found[parts[1]] = float(value)
    return found


# ------------------------------------------------------------------ checks and bookkeeping


def _table_for(shape: tuple[int, ...]) -> Mapping[str, tuple[float, ...]]:
    if len(shape) == 4:
        return SEVERITY_TABLE_2D
    if len(shape) == 3:
        return SEVERITY_TABLE_1D
    if len(shape) == 2:
        raise MixlabValueError(
            f"tables (N, D) have no corruption set; corruptions apply to images (N, C, H, W) and signals "
            f"(N, C, L); got shape {shape}"
        )
    raise MixlabValueError(f"corruptions need images (N, C, H, W) or signals (N, C, L); got shape {shape}")


def _check_corrupt_args(x: Tensor, name: str, severity: int, generator: torch.Generator, unit_range: bool) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        shown = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise MixlabTypeError(f"x must be a float tensor (integer images divided by 255 first); got {shown}")
    table = _table_for(tuple(x.shape))
    kind = "corruption for images (N, C, H, W)" if x.ndim == 4 else "corruption for signals (N, C, L)"
    check_choice(kind, name, table)
    _check_severity(severity)
    if not isinstance(generator, torch.Generator):
        raise MixlabTypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    if generator.device.type != x.device.type:
        raise MixlabValueError(f"the generator must be on x's device {x.device}; got a generator on {generator.device}")
    if not isinstance(unit_range, bool):
        raise MixlabTypeError(f"unit_range must be a bool; got {unit_range!r}")


def _check_severity(severity: object) -> int:
    severity = check_int("severity", severity, minimum=0)
    if severity > len(SEVERITIES):
        raise MixlabValueError(f"severity must be an int in 0..{len(SEVERITIES)}; got {severity}")
    return severity


def _check_severities(severities: Iterable[int]) -> tuple[int, ...]:
    if isinstance(severities, int | str) or not isinstance(severities, Iterable):
        raise MixlabTypeError(f"severities must be a sequence of ints in 0..5; got {severities!r}")
    checked = tuple(_check_severity(s) for s in severities)
    if not checked or len(set(checked)) != len(checked):
        raise MixlabValueError(f"severities must be a non-empty sequence without repeats; got {checked}")
    return checked


def _check_names(corruptions: Iterable[str] | None, shape: tuple[int, ...]) -> tuple[str, ...]:
    table = _table_for(shape)
    if corruptions is None:
        return tuple(table)
    if isinstance(corruptions, str) or not isinstance(corruptions, Iterable):
        raise MixlabTypeError(f"corruptions must be a sequence of names or None; got {corruptions!r}")
    kind = "corruption for images (N, C, H, W)" if len(shape) == 4 else "corruption for signals (N, C, L)"
    names = tuple(check_choice(kind, name, table) for name in corruptions)
    if not names or len(set(names)) != len(names):
        raise MixlabValueError(f"corruptions must be a non-empty sequence without repeats; got {names}")
    return names


def _check_accuracies(argument: str, accuracies: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(accuracies, Mapping) or not accuracies:
        raise MixlabValueError(f"{argument} must be a non-empty mapping corruption -> accuracy; got {accuracies!r}")
    bad = {name: acc for name, acc in accuracies.items() if not 0.0 <= float(acc) <= 1.0}
    if bad:
        raise MixlabValueError(f"{argument} must hold accuracies in [0, 1]; got {bad}")
    return {name: float(acc) for name, acc in accuracies.items()}


def _block_generator(seed: int, name: str, severity: int, start: int, device: torch.device) -> torch.Generator:
    # a stable hash (Python's hash() of a str changes between runs)
    digest = hashlib.blake2b(f"{seed}/{name}/{severity}/{start}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)


def _corrupt_blocks(unit: Tensor, unit_range: bool, name: str, severity: int, seed: int, start: int) -> Tensor:
    """The corrupted float batch ``unit`` (which starts at sample ``start``, a multiple of ``NOISE_BLOCK``)."""
    blocks = [
        corrupt(
            unit[first : first + NOISE_BLOCK],
            name,
            severity,
            generator=_block_generator(seed, name, severity, start + first, unit.device),
            unit_range=unit_range,
        )
        for first in range(0, unit.shape[0], NOISE_BLOCK)
    ]
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def _accuracy_keys(
    correct: dict[tuple[str, int], int], names: tuple[str, ...], severities: tuple[int, ...], total: int
) -> dict[str, float]:
    cells = {cell: count / total for cell, count in correct.items()}
    out = {"corr_acc": sum(cells.values()) / len(cells)}
    for name in names:
        out[f"corr_acc/{name}"] = sum(cells[name, s] for s in severities) / len(severities)
    for (name, severity), accuracy in cells.items():
        out[f"corr_acc/{name}/{severity}"] = accuracy
    return out


# ------------------------------------------------------------------ shared pieces


def _scale(x: Tensor) -> float:
    """Pixels (samples) of the input per pixel (sample) of the reference size."""
    if x.ndim == 4:
        return min(x.shape[-2:]) / REFERENCE_SIDE
    return x.shape[-1] / REFERENCE_LENGTH


def _normal(x: Tensor, generator: torch.Generator, shape: Sequence[int] | None = None) -> Tensor:
    return torch.randn(tuple(shape or x.shape), generator=generator, device=x.device, dtype=x.dtype)


def _uniform(x: Tensor, generator: torch.Generator, shape: Sequence[int] | None = None) -> Tensor:
    return torch.rand(tuple(shape or x.shape), generator=generator, device=x.device, dtype=x.dtype)


def _per_sample(x: Tensor) -> tuple[int, ...]:
    """Shape of one value per sample, broadcastable against ``x``."""
    return (x.shape[0],) + (1,) * (x.ndim - 1)


def _random_sign(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.where(_uniform(x, generator, (x.shape[0],)) < 0.5, -1.0, 1.0).to(x.dtype)


def _extremes(x: Tensor, unit_range: bool) -> tuple[Tensor | float, Tensor | float]:
    """Low and high ends of the range: [0, 1] for unit-range inputs, else each sample-channel's min and max."""
    if unit_range:
        return 0.0, 1.0
    spatial = tuple(range(2, x.ndim))
    return x.amin(dim=spatial, keepdim=True), x.amax(dim=spatial, keepdim=True)


def _frequency_radius(size: Sequence[int], x: Tensor) -> Tensor:
    """|f| in cycles per sample on the ``rfftn`` grid of ``size`` (1 or 2 dimensions)."""
    last = torch.fft.rfftfreq(size[-1], device=x.device, dtype=x.dtype)
    if len(size) == 1:
        return last
    first = torch.fft.fftfreq(size[0], device=x.device, dtype=x.dtype)
    return torch.sqrt(first[:, None] ** 2 + last[None, :] ** 2)


def _random_field(x: Tensor, channels: int, spectrum: Callable[[Tensor], Tensor], generator: torch.Generator) -> Tensor:
    """Zero-mean random fields ``(N, channels, *spatial)``: white noise filtered by ``spectrum(|f|)`` with the FFT."""
    size = tuple(x.shape[2:])
    dims = tuple(range(2, x.ndim))
    white = _normal(x, generator, (x.shape[0], channels, *size))
    radius = _frequency_radius(size, x)
    gain = torch.where(radius > 0, spectrum(radius.clamp_min(1e-12)), 0.0)
    return torch.fft.irfftn(torch.fft.rfftn(white, dim=dims) * gain, s=size, dim=dims)


def _power_law(exponent: float) -> Callable[[Tensor], Tensor]:
    return lambda radius: radius.pow(-exponent)


def _gaussian_low_pass(sigma: float) -> Callable[[Tensor], Tensor]:
    # the Fourier transform of a Gaussian of standard deviation sigma samples
    return lambda radius: torch.exp(-2.0 * (math.pi * sigma * radius) ** 2)


def _rms_normalised(field: Tensor) -> Tensor:
    dims = tuple(range(1, field.ndim))
    return field / field.pow(2).mean(dim=dims, keepdim=True).sqrt().clamp_min(1e-12)


def _gaussian_kernel(sigma: float, radius: int, x: Tensor) -> Tensor:
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _blur_radius(sigma: float, size: int) -> int:
    # reflect padding needs a pad smaller than the side
    return min(math.ceil(3.0 * sigma), size - 1)


def _filter_each_channel(x: Tensor, kernel: Tensor) -> Tensor:
    """``x`` (N, C, H, W) convolved per channel with one 2-D kernel (kh, kw), reflect padding."""
    n, c, h, w = x.shape
    pad_h, pad_w = kernel.shape[0] // 2, kernel.shape[1] // 2
    planes = F.pad(x.reshape(n * c, 1, h, w), (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    return F.conv2d(planes, kernel[None, None]).reshape(n, c, h, w)


def _filter_each_image(x: Tensor, kernels: Tensor) -> Tensor:
    """``x`` (N, C, H, W) convolved with its own kernel per image, kernels (N, k, k), reflect padding."""
    n, c, h, w = x.shape
    pad = kernels.shape[-1] // 2
    planes = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    weights = kernels.repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(planes, weights, groups=n * c).reshape(n, c, h, w)


def _kernel_offsets(radius: int, x: Tensor) -> tuple[Tensor, Tensor]:
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    return offsets[:, None], offsets[None, :]  # rows (dy), columns (dx)


def _sample_at(x: Tensor, source_x: Tensor, source_y: Tensor, padding: str) -> Tensor:
    """``x`` (N, C, H, W) read at pixel positions (source_x, source_y) (N, H, W), bilinear."""
    h, w = x.shape[-2:]
    grid = torch.stack(((2.0 * source_x + 1.0) / w - 1.0, (2.0 * source_y + 1.0) / h - 1.0), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _pixel_grid(x: Tensor) -> tuple[Tensor, Tensor]:
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device, dtype=x.dtype)[:, None].expand(h, w)
    cols = torch.arange(w, device=x.device, dtype=x.dtype)[None, :].expand(h, w)
    return cols, rows


# ------------------------------------------------------------------ corruptions valid for both ranks


def _gaussian_noise(x: Tensor, std: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    return x + std * _normal(x, generator)


def _shot_noise(x: Tensor, photons: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    intensity = x.clamp_min(0.0)
    counts = torch.poisson(intensity * photons, generator=generator)
    return x + counts / photons - intensity


def _impulse_noise(x: Tensor, fraction: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    # one uniform per value: the pixels hit at a lower severity are hit at every higher one
    draw = _uniform(x, generator)
    low, high = _extremes(x, unit_range)
    out = torch.where(draw < fraction / 2, low, x)
    return torch.where((draw >= fraction / 2) & (draw < fraction), high, out)


def _speckle_noise(x: Tensor, std: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    return x + x * std * _normal(x, generator)


def _contrast(x: Tensor, factor: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    dims = (1, 2, 3) if x.ndim == 4 else (2,)
    mean = x.mean(dim=dims, keepdim=True)
    return (x - mean) * factor + mean


def _offset(x: Tensor, offset: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    return x + offset


# ------------------------------------------------------------------ image corruptions


def _gaussian_blur_2d(x: Tensor, sigma_px: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    sigma = sigma_px * _scale(x)
    rows = _gaussian_kernel(sigma, _blur_radius(sigma, x.shape[-2]), x)
    cols = _gaussian_kernel(sigma, _blur_radius(sigma, x.shape[-1]), x)
    return _filter_each_channel(_filter_each_channel(x, cols[None, :]), rows[:, None])


def _defocus_blur(x: Tensor, radius_px: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    radius = radius_px * _scale(x)
    dy, dx = _kernel_offsets(min(math.ceil(radius), min(x.shape[-2:]) - 1), x)
    disk = (radius + 0.5 - torch.sqrt(dx**2 + dy**2)).clamp(0.0, 1.0)
    return _filter_each_channel(x, disk / disk.sum())


def _motion_blur(x: Tensor, length_px: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    length = length_px * _scale(x)
    angle = math.pi * _uniform(x, generator, (x.shape[0], 1, 1))
    dy, dx = _kernel_offsets(min(math.ceil(length / 2), min(x.shape[-2:]) - 1), x)
    along = dx * torch.cos(angle) + dy * torch.sin(angle)
    across = -dx * torch.sin(angle) + dy * torch.cos(angle)
    kernels = (1.0 - across.abs()).clamp_min(0.0) * (length / 2 + 0.5 - along.abs()).clamp(0.0, 1.0)
    return _filter_each_image(x, kernels / kernels.sum(dim=(1, 2), keepdim=True))


def _fog(x: Tensor, amplitude: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    field = _random_field(x, 1, _power_law(_FOG_EXPONENT), generator)
    low = field.amin(dim=(1, 2, 3), keepdim=True)
    high = field.amax(dim=(1, 2, 3), keepdim=True)
    field = (field - low) / (high - low).clamp_min(1e-12)
    if not unit_range:
        return x + amplitude * field
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + amplitude * field) * peak / (peak + amplitude)


def _elastic(x: Tensor, rms_px: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    smoothing = _ELASTIC_SMOOTHING_PX * _scale(x)
    displacement = _rms_normalised(_random_field(x, 2, _gaussian_low_pass(smoothing), generator))
    # unit RMS per component; the displacement vector's RMS length is then sqrt(2) before scaling
    displacement = displacement * (rms_px * _scale(x) / math.sqrt(2.0))
    cols, rows = _pixel_grid(x)
    return _sample_at(x, cols + displacement[:, 0], rows + displacement[:, 1], "reflection")


def _rotate(x: Tensor, degrees: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    angle = (math.radians(degrees) * _random_sign(x, generator))[:, None, None]
    h, w = x.shape[-2:]
    cols, rows = _pixel_grid(x)
    cx, cy = cols - (w - 1) / 2, rows - (h - 1) / 2
    # each output pixel reads the input at its position rotated back about the centre
    source_x = torch.cos(angle) * cx + torch.sin(angle) * cy + (w - 1) / 2
    source_y = -torch.sin(angle) * cx + torch.cos(angle) * cy + (h - 1) / 2
    return _sample_at(x, source_x, source_y, "reflection")


def _same_block(size: int, blocks: int, x: Tensor) -> Tensor:
    """(size, size) indicator of positions in the same block; position i is in block ``floor(i · blocks / size)``."""
    block = torch.arange(size, device=x.device) * blocks // size
    return (block[:, None] == block[None, :]).to(x.dtype)


def _pixelate(x: Tensor, fraction: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    # block means on the nearest-neighbour grid: F.interpolate's "area" bins overlap for non-integer ratios and
    # then do not match the "nearest" blocks, which made 0.65 distort more than 0.5
    h, w = x.shape[-2:]
    rows = _same_block(h, max(1, round(h * fraction)), x)
    cols = _same_block(w, max(1, round(w * fraction)), x)
    counts = rows.sum(dim=1)[:, None] * cols.sum(dim=1)[None, :]
    return rows @ x @ cols / counts  # sums first, one division: a constant stays exactly constant


def _dct_matrix(x: Tensor, size: int = 8) -> Tensor:
    """The orthonormal DCT-II matrix D (coefficients = D @ block @ D.T)."""
    k = torch.arange(size, device=x.device, dtype=x.dtype)[:, None]
    n = torch.arange(size, device=x.device, dtype=x.dtype)[None, :]
    matrix = torch.cos(math.pi * (2 * n + 1) * k / (2 * size)) * math.sqrt(2.0 / size)
    matrix[0] /= math.sqrt(2.0)
    return matrix


def _jpeg_steps(quality: float, x: Tensor) -> Tensor:
    """The quantisation steps of the luminance table at IJG ``quality``, in [0, 1] units."""
    factor = 50.0 / quality if quality < 50 else 2.0 - quality / 50.0
    table = torch.tensor(_JPEG_LUMINANCE, device=x.device, dtype=x.dtype)
    return (table * factor).round().clamp_min(1.0) / 255.0


def _jpeg(x: Tensor, quality: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    n, c, h, w = x.shape
    padded = F.pad(x, (0, -w % 8, 0, -h % 8), mode="replicate")
    hb, wb = padded.shape[-2] // 8, padded.shape[-1] // 8
    blocks = padded.reshape(n, c, hb, 8, wb, 8).transpose(3, 4)  # (N, C, Hb, Wb, 8, 8)
    dct, steps = _dct_matrix(x), _jpeg_steps(quality, x)
    coefficients = dct @ blocks @ dct.T
    restored = dct.T @ (torch.round(coefficients / steps) * steps) @ dct
    return restored.transpose(3, 4).reshape(n, c, hb * 8, wb * 8)[..., :h, :w]


# ------------------------------------------------------------------ signal corruptions


def _gaussian_blur_1d(x: Tensor, sigma_samples: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    n, c, length = x.shape
    sigma = sigma_samples * _scale(x)
    kernel = _gaussian_kernel(sigma, _blur_radius(sigma, length), x)
    pad = kernel.shape[0] // 2
    rows = F.pad(x.reshape(n * c, 1, length), (pad, pad), mode="reflect")
    return F.conv1d(rows, kernel[None, None]).reshape(n, c, length)


def _drift(x: Tensor, amplitude: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    field = _random_field(x, x.shape[1], _power_law(_DRIFT_EXPONENT), generator)
    peak = field.abs().amax(dim=2, keepdim=True).clamp_min(1e-12)
    return x + amplitude * field / peak


def _shift(x: Tensor, fraction: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    length = x.shape[-1]
    steps = (round(fraction * length) * _random_sign(x, generator)).long()
    source = (torch.arange(length, device=x.device)[None, :] - steps[:, None]).clamp(0, length - 1)
    return torch.gather(x, 2, source[:, None, :].expand_as(x))


def _time_warp(x: Tensor, rms_samples: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    smoothing = _WARP_SMOOTHING_SAMPLES * _scale(x)
    displacement = _rms_normalised(_random_field(x, 1, _gaussian_low_pass(smoothing), generator))
    positions = torch.arange(x.shape[-1], device=x.device, dtype=x.dtype) + rms_samples * _scale(x) * displacement
    image = x[:, :, None, :]  # (N, C, 1, L): grid_sample reads 2-D inputs
    rows = torch.zeros_like(positions)
    return _sample_at(image, positions, rows, "border")[:, :, 0, :]


def _dropout(x: Tensor, fraction: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    dropped = _uniform(x, generator, (x.shape[0], 1, x.shape[2])) < fraction
    return x.masked_fill(dropped, 0.0)


def _quantize(x: Tensor, fraction: float, generator: torch.Generator, unit_range: bool) -> Tensor:
    low, high = _extremes(x, unit_range)
    step = (high - low) * fraction
    if unit_range:
        return torch.round(x / step) * step
    safe_step = torch.where(step > 0, step, 1.0)
    return torch.where(step > 0, low + torch.round((x - low) / safe_step) * safe_step, x)


_OPERATIONS_2D: Mapping[str, Corruption] = MappingProxyType(
    {
        "gaussian_noise": _gaussian_noise,
        "shot_noise": _shot_noise,
        "impulse_noise": _impulse_noise,
        "speckle_noise": _speckle_noise,
        "gaussian_blur": _gaussian_blur_2d,
        "defocus_blur": _defocus_blur,
        "motion_blur": _motion_blur,
        "contrast": _contrast,
        "brightness": _offset,
        "fog": _fog,
        "elastic": _elastic,
        "pixelate": _pixelate,
        "jpeg": _jpeg,
        "rotate": _rotate,
    }
)
_OPERATIONS_1D: Mapping[str, Corruption] = MappingProxyType(
    {
        "gaussian_noise": _gaussian_noise,
        "impulse_noise": _impulse_noise,
        "speckle_noise": _speckle_noise,
        "gaussian_blur": _gaussian_blur_1d,
        "contrast": _contrast,
        "offset": _offset,
        "drift": _drift,
        "shift": _shift,
        "time_warp": _time_warp,
        "dropout": _dropout,
        "quantize": _quantize,
    }
)
assert tuple(_OPERATIONS_2D) == CORRUPTIONS_2D and tuple(_OPERATIONS_1D) == CORRUPTIONS_1D
