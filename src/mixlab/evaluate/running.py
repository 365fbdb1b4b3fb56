"""How the evaluation runs a model on raw data: inputs checked, eval mode, device, memory layout, batches.

Shared by every measure of :mod:`mixlab.evaluate` that runs a model (robustness, corruptions, transfer,
the mixed-vs-real gap, geometry), so each checks and runs it the same way.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    >>> with eval_mode(model):
    ...     model.training, model[1].training
    (False, False)
    >>> model.training
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int

Preprocess = Callable[[Tensor], Tensor]
DeviceLike = torch.device | str | None


def in_model_layout(model: nn.Module, preprocess: Preprocess) -> Preprocess:
    """``preprocess`` followed by a channels-last copy of image batches when the model's convolutions are channels-last.

    The engine trains image models channels-last; feeding them contiguous NCHW
    batches makes every convolution convert, which is several times slower on CPU.

    Example:
        >>> prepare = in_model_layout(torch.nn.Linear(2, 2), lambda b: b * 2)
        >>> prepare(torch.ones(1, 2))
        tensor([[2., 2.]])
    """
    channels_last = any(
        p.ndim == 4 and p.shape[-1] > 1 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
    )
    if not channels_last:
        return preprocess
    return lambda batch: _channels_last(preprocess(batch))


def _channels_last(inputs: Tensor) -> Tensor:
    return inputs.contiguous(memory_format=torch.channels_last) if inputs.ndim == 4 else inputs


def count_correct(model: nn.Module, inputs: Tensor, labels: Tensor) -> int:
    """How many rows of ``model(inputs)`` have their arg-max at ``labels`` (no gradient).

    Example:
        >>> count_correct(torch.nn.Identity(), torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        1
    """
    with torch.no_grad():
        logits = model(inputs).float()
    check_labels_fit(logits, labels)
    return int((logits.argmax(dim=1) == labels).sum())


def unit_scale(raw: Tensor) -> Tensor:
    """Integer images as floats in [0, 1]; float inputs as they are.

    Example:
        >>> unit_scale(torch.tensor([0, 255], dtype=torch.uint8))
        tensor([0., 1.])
    """
    return raw if raw.is_floating_point() else raw.float() / 255.0


def clamp_like_raw(perturbed: Tensor, raw: Tensor) -> Tensor:
    """``perturbed`` clamped to [0, 1] when ``raw`` is an integer image batch; as it is for float inputs.

    Example:
        >>> clamp_like_raw(torch.tensor([1.5]), torch.tensor([255], dtype=torch.uint8))
        tensor([1.])
    """
    # only integer inputs are images with a known range; float signals have none
    return perturbed if raw.is_floating_point() else perturbed.clamp(0.0, 1.0)


def batches(x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` in consecutive batches of ``batch_size``, moved to ``device`` (labels as ``long``).

    Example:
        >>> [tuple(b.shape) for b, _ in batches(torch.zeros(5, 2), torch.zeros(5), 2, torch.device("cpu"))]
        [(2, 2), (2, 2), (1, 2)]
    """
    for start in range(0, x.shape[0], batch_size):
        stop = start + batch_size
        yield x[start:stop].to(device), y[start:stop].to(device=device, dtype=torch.long)


def place_model(model: nn.Module, device: DeviceLike) -> torch.device:
    """The device to run on: ``device`` (the model is moved there) or the model's own.

    Example:
        >>> place_model(torch.nn.Linear(1, 1), None)
        device(type='cpu')
    """
    if device is not None:
        device = torch.device(device)
        model.to(device)
        return device
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every submodule's own mode restored after it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_model_inputs(model: nn.Module, x: Tensor, y: Tensor | None, preprocess: Preprocess, batch_size: int) -> int:
    """Check a model, raw inputs, optional class labels, ``preprocess`` and ``batch_size``; return the batch size.

    Raises :class:`~mixlab.errors.MixlabValueError` / :class:`~mixlab.errors.MixlabTypeError` naming what
    was seen, before any forward pass.

    Example:
        >>> check_model_inputs(torch.nn.Linear(2, 2), torch.zeros(0, 2), None, lambda b: b, 10)
        Traceback (most recent call last):
        ...
        mixlab.errors.MixlabValueError: x must be a tensor (N, ...) with N >= 1 samples; got (0, 2)
    """
    if not isinstance(model, nn.Module):
        raise MixlabTypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not callable(preprocess):
        raise MixlabTypeError(
            f"preprocess must be callable (raw batch -> model input); got {type(preprocess).__name__}"
        )
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if not isinstance(x, Tensor) or x.ndim == 0 or x.shape[0] == 0:
        shown = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise MixlabValueError(f"x must be a tensor (N, ...) with N >= 1 samples; got {shown}")
    if y is None:
        return batch_size
    if not isinstance(y, Tensor) or y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
        shown = f"dtype {y.dtype}, shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise MixlabValueError(f"y must be integer class indices of shape (N,); got {shown}")
    if y.shape[0] != x.shape[0]:
        raise MixlabValueError(f"x and y must hold as many samples; got {x.shape[0]} inputs and {y.shape[0]} labels")
    if int(y.min()) < 0:
        raise MixlabValueError(f"y must be class indices >= 0; got a minimum of {int(y.min())}")
    return batch_size


def check_labels_fit(logits: Tensor, labels: Tensor) -> None:
    """Raise unless ``logits`` is ``(N, K)`` and every label is below ``K``.

    Example:
        >>> check_labels_fit(torch.zeros(2, 3), torch.tensor([0, 3]))
        Traceback (most recent call last):
        ...
        mixlab.errors.MixlabValueError: labels must be class indices in [0, 3) for a model with 3 outputs; got 3
    """
    if logits.ndim != 2:
        raise MixlabValueError(f"the model must return logits (N, K); got shape {tuple(logits.shape)}")
    if int(labels.max()) >= logits.shape[1]:
        raise MixlabValueError(
            f"labels must be class indices in [0, {logits.shape[1]}) for a model with {logits.shape[1]} outputs; "
            f"got {int(labels.max())}"
        )


def float64_device(device: torch.device) -> torch.device:
    """Where float64 statistics of tensors on ``device`` are computed: there, except on MPS (no float64): the CPU.

    Example:
        >>> float64_device(torch.device("mps"))
        device(type='cpu')
    """
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


def check_class_labels(labels: Tensor, n_samples: int, against: str) -> None:
    """Raise unless ``labels`` are integer class indices ``(N,)`` with one per row of ``against`` (``n_samples``).

    Example:
        >>> check_class_labels(torch.zeros(3), 3, "features")
        Traceback (most recent call last):
        ...
        mixlab.errors.MixlabValueError: labels must be integer class indices of shape (N,); got dtype torch.float32, \
shape (3,)
    """
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        shown = f"dtype {labels.dtype}, shape {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise MixlabValueError(f"labels must be integer class indices of shape (N,); got {shown}")
    if labels.shape[0] != n_samples:
        raise MixlabValueError(
            f"{against} and labels must hold as many samples; got {n_samples} rows and {labels.shape[0]} labels"
        )


def seeded_indices(n: int, size: int | None, seed: int) -> Tensor | None:
    """``size`` of ``range(n)`` drawn at random with ``seed``, in increasing order; ``None`` (keep all) when
    ``size`` is ``None`` or not below ``n``. Every analysis draws its subsets this way.

    Example:
        >>> kept = seeded_indices(10, 3, seed=0)
        >>> kept.tolist() == sorted(kept.tolist()) == seeded_indices(10, 3, seed=0).tolist(), seeded_indices(10, 10, 0)
        (True, None)
    """
    if size is None or n <= size:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values
