"""The data an analysis compares a trained model against: out-of-distribution sets and transfer targets.

A *source* is named in a suite's ``evaluate:`` section (``ood: [...]``, ``transfer: [...]``):

- ``held_out_classes``: the test samples of the classes the run did not train on (the run's
  ``data.classes`` leaves them out), relabelled ``0..m-1`` in class order. Near-OOD and a transfer
  task to new classes of the same domain.
- ``digits``: scikit-learn's bundled 8×8 digits (1,797 images), scaled to 0..255 and resized
  (bilinear) to the model's image size, channels repeated: another dataset, for image models.
- ``fashion_mnist``: the Fashion-MNIST test images resized likewise, for image models trained on
  something else (its files must be found, as for training).
- ``mnist1d``: the MNIST-1D test signals (generated locally), resampled (linear) to the model's
  signal length: another dataset for 1-D models.

Every source is delivered in the raw format the run's model reads (``uint8`` images or float
signals of the training input's shape), so the run's own eval preprocessing applies to it.

Example:
    >>> from mixlab.engine.config import RunConfig
    >>> config = RunConfig.model_validate({"data": {"name": "mnist1d"}, "model": {"name": "cnn1d"}})
    >>> default_sources(config, (1, 40))
    []
    >>> check_source("held_out_classes", config, (1, 40))
    Traceback (most recent call last):
    ...
    mixlab.errors.MixlabValueError: source 'held_out_classes' needs data.classes (the classes to train on); \
the run trains on every class of 'mnist1d'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.data import load_dataset
from mixlab.data.api import find_data
from mixlab.data.locate import DataNotFoundError
from mixlab.data.registry import get_spec
from mixlab.engine.config import RunConfig
from mixlab.errors import MixlabValueError, check_choice
from mixlab.evaluate.running import seeded_indices

SOURCES = ("held_out_classes", "digits", "fashion_mnist", "mnist1d")
_IMAGE_SOURCES = ("digits", "fashion_mnist")
_SIGNAL_SOURCES = ("mnist1d",)


@dataclass
class SourceData:
    """A source's samples in the model's raw input format, with labels ``0..num_classes-1``.

    Example:
        >>> SourceData("digits", torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), 10).num_samples
        2
    """

    name: str
    x: Tensor
    y: Tensor
    num_classes: int

    @property
    def num_samples(self) -> int:
        """How many samples the source holds."""
        return int(self.x.shape[0])


def default_sources(config: RunConfig, input_shape: tuple[int, ...] | None) -> list[str]:
    """The sources used when a suite names none: the held-out classes when the run leaves classes out,
    then another dataset of the model's input kind (digits for images, MNIST-1D for signals).

    Example:
        >>> config = RunConfig.model_validate({"data": {"name": "fashion_mnist", "classes": [0, 1]}})
        >>> default_sources(config, (1, 28, 28))
        ['held_out_classes', 'digits']
    """
    names = ["held_out_classes"] if config.data.classes is not None else []
    kind = _input_kind(input_shape)
    if kind == "image":
        names.append("digits" if config.data.name != "digits" else "fashion_mnist")
    elif kind == "signal" and config.data.name != "mnist1d":  # an MNIST-1D model has no other 1-D set offline
        names.append("mnist1d")
    return names


def check_source(name: str, config: RunConfig, input_shape: tuple[int, ...] | None, *, min_classes: int = 1) -> None:
    """Raise :class:`~mixlab.errors.MixlabValueError` if source ``name`` cannot serve this run, naming why.

    Reads no data (only looks for Fashion-MNIST's files). ``input_shape`` is the shape of one
    training sample, ``None`` when unknown before loading (a CSV table). ``min_classes``: the classes the
    source must hold (a transfer target needs 2), checked for the held-out classes when the dataset's
    class count is known.

    Example:
        >>> config = RunConfig.model_validate({"data": {"name": "digits"}, "model": {"name": "mlp"}})
        >>> check_source("digits", config, (64,))
        Traceback (most recent call last):
        ...
        mixlab.errors.MixlabValueError: source 'digits' is the run's own dataset; name another one
    """
    check_choice("source", name, SOURCES)
    if name == config.data.name:
        raise MixlabValueError(f"source {name!r} is the run's own dataset; name another one")
    if name == "held_out_classes":
        _check_held_out(config, min_classes)
        return
    kind = "table" if input_shape is None and config.data.name == "csv" else _input_kind(input_shape)
    needed = "image" if name in _IMAGE_SOURCES else "signal"
    if kind is not None and kind != needed:
        shown = "are tables" if input_shape is None else f"have shape {tuple(input_shape)} ({kind}s)"
        raise MixlabValueError(
            f"source {name!r} holds {needed}s; the run's inputs {shown}. "
            f"Sources for {kind} models: {', '.join(_sources_for(kind)) or 'held_out_classes only'}"
        )
    if name == "fashion_mnist":
        try:
            find_data("fashion_mnist", config.data.root)
        except DataNotFoundError as error:
            raise MixlabValueError(f"source 'fashion_mnist' was not found:\n{error}") from None


def load_source(
    name: str, config: RunConfig, input_shape: tuple[int, ...], *, max_samples: int | None = None, seed: int = 0
) -> SourceData:
    """Source ``name`` for a run of ``config`` whose samples have ``input_shape``, at most ``max_samples``
    of them (a seeded random subset).

    Example:
        >>> config = RunConfig.model_validate({"data": {"name": "fashion_mnist", "classes": [0, 1]}})
        >>> source = load_source("digits", config, (3, 32, 32), max_samples=5)
        >>> source.x.shape, source.x.dtype, source.num_classes
        (torch.Size([5, 3, 32, 32]), torch.uint8, 10)
    """
    check_source(name, config, tuple(input_shape))
    if name == "held_out_classes":
        x, y = _held_out_classes(config)
    else:
        x, y = _other_dataset(name, config, tuple(input_shape))
    num_classes = int(y.max()) + 1 if y.numel() else 0
    keep = seeded_indices(x.shape[0], max_samples, seed)
    if keep is not None:
        x, y = x[keep], y[keep]
    return SourceData(name, x, y, num_classes)


def expected_input_shape(config: RunConfig) -> tuple[int, ...] | None:
    """One sample's shape for ``config``'s data, from the dataset and its options, without reading it
    (``None`` for a CSV table, whose width is known only from the file).

    Example:
        >>> config = RunConfig.model_validate({"data": {"name": "imagefolder", "options": {"path": "x", "image_size": 64}}})
        >>> expected_input_shape(config)
        (3, 64, 64)
    """
    spec = get_spec(config.data.name)
    if spec.input_shape is not None:
        return tuple(spec.input_shape)
    options = {**{o.name: o.default for o in spec.options}, **config.data.options}
    if config.data.name == "imagefolder":
        size = options["image_size"]
        return (1 if options["grayscale"] else 3, size, size)
    if "num_patches" in options and "dim" in options:  # the synthetic patch datasets: (P, d)
        return (options["num_patches"], options["dim"])
    return None


# ------------------------------------------------------------------ helpers


def _check_held_out(config: RunConfig, min_classes: int) -> None:
    data = config.data
    if data.classes is None:
        raise MixlabValueError(
            f"source 'held_out_classes' needs data.classes (the classes to train on); the run trains on every "
            f"class of {data.name!r}"
        )
    spec = get_spec(data.name)
    # a dataset whose options set its classes (CIFAR-100's coarse labels, multi_view) is checked when loaded
    total = None if any(o.name in ("num_classes", "labels") for o in spec.options) else spec.num_classes
    if total is not None and total - len(data.classes) < min_classes:
        raise MixlabValueError(
            f"source 'held_out_classes' needs at least {min_classes} class(es) left out of the {total} of {data.name!r}; "
            f"data.classes keeps {len(data.classes)}"
        )


def _input_kind(input_shape: tuple[int, ...] | None) -> str | None:
    if input_shape is None:
        return None
    return {3: "image", 2: "signal"}.get(len(input_shape), "table")


def _sources_for(kind: str | None) -> list[str]:
    return list(_IMAGE_SOURCES if kind == "image" else _SIGNAL_SOURCES if kind == "signal" else ())


def _held_out_classes(config: RunConfig) -> tuple[Tensor, Tensor]:
    """The test samples of the classes ``config.data.classes`` leaves out, relabelled in class order."""
    data = config.data
    splits = load_dataset(data.name, root=data.root, **data.options)
    held_out = sorted(set(range(splits.num_classes or 0)) - set(data.classes or ()))
    if not held_out:
        raise MixlabValueError(f"data.classes {data.classes} keeps every class of {data.name!r}: none is held out")
    test = splits.test
    relabel = torch.full((splits.num_classes,), -1, dtype=torch.int64)
    relabel[torch.tensor(held_out)] = torch.arange(len(held_out))
    labels = relabel[test.y]
    keep = labels >= 0
    return test.x[keep], labels[keep]


def _other_dataset(name: str, config: RunConfig, input_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    if name == "digits":
        splits = load_dataset("digits")
        x = torch.cat([splits.train.x, splits.test.x]).reshape(-1, 1, 8, 8)
        y = torch.cat([splits.train.y, splits.test.y])
        return _as_images((x * (255.0 / 16.0)), input_shape), y
    if name == "fashion_mnist":
        test = load_dataset("fashion_mnist", root=config.data.root).test
        return _as_images(test.x.float(), input_shape), test.y
    test = load_dataset("mnist1d", root=config.data.root).test
    return _as_signals(test.x, input_shape), test.y


def _as_images(x: Tensor, input_shape: tuple[int, ...]) -> Tensor:
    """Float images in 0..255 → ``uint8`` of ``input_shape`` (bilinear resize, channels repeated or averaged)."""
    channels, height, width = input_shape
    x = x.float()
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1)
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _as_signals(x: Tensor, input_shape: tuple[int, ...]) -> Tensor:
    """Float signals → ``input_shape`` (linear resampling, channels repeated or averaged)."""
    channels, length = input_shape
    x = x.float()
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True).expand(-1, channels, -1)
    if x.shape[-1] != length:
        x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x.contiguous()
