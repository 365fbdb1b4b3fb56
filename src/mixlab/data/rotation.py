"""Rotated Fashion-MNIST: a regression task whose target is the angle each image was rotated by.

After RCF-MNIST (rotated coloured Fashion-MNIST) of Yao, Wang, Zhang, Zou & Finn, "C-Mixup: Improving
Generalization in Regression", NeurIPS 2022, arXiv 2210.05775 (built in the authors' code,
huaxiuyao/C-Mixup ``src/data/RCF_MNIST.py``): every image is rotated counter-clockwise by its own angle,
drawn uniformly in ``[0, max_degrees)``, and the target is the angle as a fraction of a full turn
(``degrees / 360``, the authors' normalisation, so a full-turn task has targets in ``[0, 1)``).

``color="spurious"`` adds the paper's spurious colour: the foreground pixels (grey value above 5,
the authors' ``5/255``) of an image with red ratio ``r`` become red ``v * r``, green 0 and blue
``v * (1 - r)``. A ``spurious_fraction`` of the training images take ``r = target`` and the others
``r = 1 - target``; the test images are the other way round (that fraction takes ``1 - target``),
the authors' subpopulation shift. ``color="none"`` keeps one grey channel.

The images come from the Fashion-MNIST IDX files; the train split is drawn from the 60,000 training
images and the test split from the 10,000 test images, so the two never share a picture. Angles,
subsets and colours are drawn from generators seeded by ``generation_seed`` alone, so the data stay
the same whatever the training seed. Rotation is one batched bilinear resampling
(:func:`torch.nn.functional.grid_sample`, zeros outside the picture as the authors' PIL rotation).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from mixlab.data.base import ArrayData, DataSplits
from mixlab.data.idx import read_idx_split
from mixlab.errors import MixlabTypeError, MixlabValueError, check_int
from mixlab.sampling import derive_seed, new_generator

FULL_TURN = 360.0
#: grey values above this are foreground and get coloured (the authors' 5/255 on [0, 1] images).
FOREGROUND_THRESHOLD = 5
COLORS = ("none", "spurious")
#: images rotated per grid_sample call (bounds the float32 copies, about 25 MB per 8,192 grey images).
ROTATE_CHUNK = 8192


def rotation_grids(degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The ``(N, H, W, 2)`` sampling grids that rotate ``H x W`` images counter-clockwise by ``degrees``.

    Each output pixel reads the input at its position turned back by the angle about the image centre;
    coordinates are normalised as :func:`torch.nn.functional.affine_grid` with ``align_corners=False``,
    with the aspect ratio accounted for so non-square images rotate without shearing.

    Example:
        >>> grid = rotation_grids(torch.tensor([90.0]), 2, 2)
        >>> grid[0, 0, 0].tolist()  # the top-left output pixel reads the top-right input pixel
        [0.5, -0.5]
    """
    radians = degrees.to(torch.float64) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    # In pixel units (x right, y down) the output point q reads the input at [[c, -s], [s, c]] q.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (height / width), zero], dim=1),
            torch.stack([sin * (width / height), cos, zero], dim=1),
        ],
        dim=1,
    )
    return F.affine_grid(theta.to(torch.float32), [len(degrees), 1, height, width], align_corners=False)


def rotate_images(images: torch.Tensor, degrees: torch.Tensor, chunk: int = ROTATE_CHUNK) -> torch.Tensor:
    """Rotate each image of ``images`` ``(N, C, H, W)`` counter-clockwise by its angle in ``degrees`` ``(N,)``.

    Bilinear resampling, zeros outside the picture; ``uint8`` images come back ``uint8`` (rounded),
    floating ones in their own dtype. Batched: one :func:`~torch.nn.functional.grid_sample` per
    ``chunk`` images.

    Example:
        >>> x = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 2, 2)
        >>> rotate_images(x, torch.tensor([90.0]))[0, 0].tolist()
        [[1, 3], [0, 2]]
    """
    if images.ndim != 4:
        raise MixlabValueError(f"rotate_images needs images (N, C, H, W); got shape {tuple(images.shape)}")
    if degrees.shape != (images.shape[0],):
        raise MixlabValueError(
            f"rotate_images needs one angle per image: degrees of shape ({images.shape[0]},); "
            f"got {tuple(degrees.shape)}"
        )
    out = torch.empty_like(images)
    height, width = images.shape[-2:]
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        grid = rotation_grids(degrees[start : start + chunk], height, width).to(images.device)
        turned = F.grid_sample(part.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if images.is_floating_point():
            out[start : start + chunk] = turned.to(images.dtype)
        else:
            out[start : start + chunk] = turned.round_().clamp_(0, 255).to(images.dtype)
    return out


def color_by_ratio(images: torch.Tensor, red_ratio: torch.Tensor) -> torch.Tensor:
    """Colour grey ``uint8`` images ``(N, 1, H, W)`` red/blue by ``red_ratio`` ``(N,)`` in [0, 1], as RCF-MNIST.

    Foreground pixels (value ``v`` above :data:`FOREGROUND_THRESHOLD`) become ``(v * r, 0, v * (1 - r))``;
    the background stays grey. (Yao et al., NeurIPS 2022, arXiv 2210.05775; huaxiuyao/C-Mixup
    ``src/data/RCF_MNIST.py``, ``red_blue_linear_map``.)

    Example:
        >>> x = torch.tensor([[[[200, 3]]]], dtype=torch.uint8)
        >>> color_by_ratio(x, torch.tensor([0.25]))[0, :, 0].tolist()
        [[50, 3], [0, 3], [150, 3]]
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 1:
        raise MixlabValueError(
            f"color_by_ratio needs grey uint8 images (N, 1, H, W); got {images.dtype} {tuple(images.shape)}"
        )
    grey = images.float()
    ratio = red_ratio.to(torch.float32).reshape(-1, 1, 1, 1)
    foreground = images > FOREGROUND_THRESHOLD
    red = torch.where(foreground, grey * ratio, grey)
    green = torch.where(foreground, torch.zeros_like(grey), grey)
    blue = torch.where(foreground, grey * (1.0 - ratio), grey)
    return torch.cat([red, green, blue], dim=1).round_().clamp_(0, 255).to(torch.uint8)


def rotated_split(
    images: torch.Tensor,
    count: int | None,
    max_degrees: float,
    seed: int,
    split: str,
    color: str = "none",
    follow_fraction: float = 1.0,
) -> ArrayData:
    """Draw ``count`` of ``images`` (all when None), rotate each by a uniform angle and return images and targets.

    Targets are ``degrees / 360`` (float32, ``(N,)``). With ``color="spurious"``, the first
    ``int(follow_fraction * N)`` of a seeded permutation of the drawn images get red ratio ``target``,
    the rest ``1 - target``. Every draw comes from a generator seeded by ``(seed, split)``.

    Example:
        >>> grey = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
        >>> part = rotated_split(grey, 3, 90.0, seed=0, split="train")
        >>> part.x.shape, bool((part.y < 0.25).all())
        (torch.Size([3, 1, 4, 4]), True)
    """
    available = len(images)
    count = available if count is None else count
    if count > available:
        raise MixlabValueError(f"num_{split}={count} asks for more {split} images than the files hold ({available})")
    generator = new_generator(derive_seed(seed, "rotated_fashion_mnist", split))
    chosen = torch.randperm(available, generator=generator)[:count]
    degrees = torch.rand(count, generator=generator, dtype=torch.float64) * max_degrees
    x = rotate_images(images[chosen], degrees)
    targets = degrees / FULL_TURN
    if color == "spurious":
        follows = torch.zeros(count, dtype=torch.bool)
        follows[torch.randperm(count, generator=generator)[: int(follow_fraction * count)]] = True
        x = color_by_ratio(x, torch.where(follows, targets, 1.0 - targets))
    return ArrayData(x, targets.to(torch.float32))


def load_rotated_fashion_mnist(directory: Path, spec, options: dict) -> DataSplits:
    """Build the rotated (optionally coloured) Fashion-MNIST regression splits from the IDX files in ``directory``.

    Options (checked by the registry before this runs): ``num_train``/``num_test`` (None: every image),
    ``max_degrees``, ``color``, ``spurious_fraction``, ``generation_seed``. See the module docstring.
    """
    color = options["color"]
    if color not in COLORS:
        raise MixlabValueError(f"color must be one of {', '.join(COLORS)}; got {color!r}")
    fraction = options["spurious_fraction"]
    sources = {}
    parts = {}
    for split, count, follow in (
        ("train", options["num_train"], fraction),
        ("test", options["num_test"], 1.0 - fraction),  # the test split inverts the colour correlation
    ):
        grey, files = read_idx_split(directory, split, num_classes=10)
        sources[split] = files
        parts[split] = rotated_split(
            grey.x, count, options["max_degrees"], options["generation_seed"], split, color, follow
        )
    info = {
        "source": str(directory),
        "files": sources,
        "target": "rotation angle / 360 (counter-clockwise)",
        "max_degrees": options["max_degrees"],
        "color": color,
        "spurious_fraction": fraction if color == "spurious" else None,
        "generation_seed": options["generation_seed"],
    }
    shape = tuple(parts["train"].x.shape[1:])
    return DataSplits(spec.name, "regression", parts["train"], None, parts["test"], None, shape, None, info)


# ---- option checkers for the registry: (name, value) -> normalised value ----


def check_max_degrees(name: str, value: object) -> float:
    """A rotation range in degrees, in (0, 360].

    Example:
        >>> check_max_degrees("max_degrees", 90)
        90.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MixlabTypeError(f"{name} must be a number of degrees in (0, 360]; got {value!r}")
    if not 0.0 < float(value) <= FULL_TURN:
        raise MixlabValueError(f"{name} must be in (0, 360] degrees; got {value!r}")
    return float(value)


def check_optional_count(name: str, value: object) -> int | None:
    """``None`` (every image) or an int >= 1.

    Example:
        >>> check_optional_count("num_train", None), check_optional_count("num_train", 500)
        (None, 500)
    """
    return None if value is None else check_int(name, value, minimum=1)


def check_fraction_closed(name: str, value: object) -> float:
    """A fraction in [0, 1].

    Example:
        >>> check_fraction_closed("spurious_fraction", 0.8)
        0.8
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MixlabTypeError(f"{name} must be a number in [0, 1]; got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise MixlabValueError(f"{name} must be in [0, 1]; got {value!r}")
    return float(value)
