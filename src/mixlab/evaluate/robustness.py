"""A classifier's logits and its accuracy under perturbations: FGSM adversarial examples and Gaussian noise.

Perturbations are measured in the raw input's [0, 1] scale: integer images
(``uint8``) are divided by 255 first and the perturbed result is clamped to
[0, 1]; float inputs (signals, tables) are perturbed in their own units,
unclamped. ``preprocess`` turns a raw batch, or that float version of it,
into the model's input (in mixlab: ``lambda x: augment(x, train=False)``,
which scales integers by 1/255, leaves floats as they are and normalises).

Example:
    >>> model = torch.nn.Linear(2, 2)
    >>> x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    >>> 0.0 <= noise_accuracy(model, x, y, std=0.1, preprocess=lambda b: b) <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int, check_non_negative

Preprocess = Callable[[Tensor], Tensor]
DeviceLike = torch.device | str | None


def predict_logits(
    model: nn.Module, x: Tensor, *, preprocess: Preprocess, batch_size: int = 1000, device: DeviceLike = None
) -> Tensor:
    """The float32 logits ``(N, K)`` of ``model`` on ``x``, on the CPU, in eval mode and without gradients.

    Args:
        model: the classifier; its train/eval modes are restored afterwards.
        x: raw inputs ``(N, ...)`` (``uint8`` images or floats), on any device.
        preprocess: maps a raw batch on ``device`` to the model's input.
        batch_size: samples per forward pass.
        device: where to run (the model is moved there); default: the model's device.

    Example:
        >>> model = torch.nn.Linear(3, 4)
        >>> predict_logits(model, torch.ones(5, 3), preprocess=lambda b: b, batch_size=2).shape
        torch.Size([5, 4])
    """
    batch_size = _check_inputs(model, x, None, preprocess, batch_size)
    preprocess = _in_model_layout(model, preprocess)
    device = _place(model, device)
    outputs = []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size].to(device)
            outputs.append(model(preprocess(batch)).float().cpu())
    return torch.cat(outputs)


def fgsm_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    preprocess: Preprocess,
    batch_size: int = 1000,
    device: DeviceLike = None,
) -> float:
    """Accuracy on fast-gradient-sign adversarial examples at L∞ radius ``eps`` in the raw [0, 1] scale.

    Each input p (integer images divided by 255) becomes
    ``p + eps * sign(∇_p CE(model(preprocess(p)), y))``, clamped to [0, 1] for
    integer images. Goodfellow, Shlens and Szegedy, "Explaining and Harnessing
    Adversarial Examples", ICLR 2015, arXiv:1412.6572. The model runs in eval
    mode; its parameters' ``requires_grad`` and ``.grad`` are left untouched.
    ``eps=0`` is exactly the clean accuracy.

    Args:
        model: the classifier.
        x: raw inputs ``(N, ...)``; y: class indices ``(N,)``.
        eps: the perturbation radius, >= 0.
        preprocess: maps a raw batch, or its float [0, 1] version, to the model's input.
        batch_size: samples per step; device: as in :func:`predict_logits`.

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> x, y = torch.randn(16, 2), torch.randint(0, 2, (16,))
        >>> fgsm_accuracy(model, x, y, eps=1.0, preprocess=lambda b: b) <= fgsm_accuracy(model, x, y, eps=0.0, preprocess=lambda b: b)
        True
    """
    eps = check_non_negative("eps", eps)
    batch_size = _check_inputs(model, x, y, preprocess, batch_size)
    preprocess = _in_model_layout(model, preprocess)
    if eps == 0.0:
        # the raw inputs themselves, not their float copy: the clean accuracy to the last sample
        return _clean_accuracy(model, x, y, preprocess, batch_size, device)
    device = _place(model, device)
    correct = 0
    with _eval_mode(model):
        for raw, labels in _batches(x, y, batch_size, device):
            adversarial = _fgsm_step(model, raw, labels, eps, preprocess)
            correct += _count_correct(model, preprocess(adversarial), labels)
    return correct / x.shape[0]


def noise_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    std: float,
    preprocess: Preprocess,
    seed: int = 0,
    batch_size: int = 1000,
    device: DeviceLike = None,
) -> float:
    """Accuracy on inputs with additive Gaussian noise of standard deviation ``std`` in the raw [0, 1] scale.

    Integer images are divided by 255, noised and clamped to [0, 1]; float
    inputs are noised in their own units. The noise comes from a CPU
    ``torch.Generator`` seeded with ``seed``, so a (seed, batch_size) pair
    always gives the same result. ``std=0`` is exactly the clean accuracy.

    Args:
        model: the classifier.
        x: raw inputs ``(N, ...)``; y: class indices ``(N,)``.
        std: noise standard deviation, >= 0.
        preprocess: maps a raw batch, or its float [0, 1] version, to the model's input.
        seed: seed of the noise; batch_size, device: as in :func:`predict_logits`.

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> x, y = torch.randn(16, 2), torch.randint(0, 2, (16,))
        >>> a = noise_accuracy(model, x, y, std=0.5, preprocess=lambda b: b, seed=3)
        >>> a == noise_accuracy(model, x, y, std=0.5, preprocess=lambda b: b, seed=3)
        True
    """
    std = check_non_negative("std", std)
    seed = check_int("seed", seed, minimum=0)
    batch_size = _check_inputs(model, x, y, preprocess, batch_size)
    preprocess = _in_model_layout(model, preprocess)
    if std == 0.0:
        return _clean_accuracy(model, x, y, preprocess, batch_size, device)
    device = _place(model, device)
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    with _eval_mode(model), torch.no_grad():
        for raw, labels in _batches(x, y, batch_size, device):
            unit = _unit_scale(raw)
            noise = torch.randn(raw.shape, generator=generator).to(device=device, dtype=unit.dtype)
            noisy = _clamp_like_raw(unit + std * noise, raw)
            correct += _count_correct(model, preprocess(noisy), labels)
    return correct / x.shape[0]


# ------------------------------------------------------------------ helpers


def _in_model_layout(model: nn.Module, preprocess: Preprocess) -> Preprocess:
    """``preprocess`` followed by a channels-last copy of image batches when the model's convolutions are channels-last.

    The engine trains image models channels-last; feeding them contiguous NCHW
    batches makes every convolution convert, which is several times slower on CPU.
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


def _fgsm_step(model: nn.Module, raw: Tensor, labels: Tensor, eps: float, preprocess: Preprocess) -> Tensor:
    start = _unit_scale(raw).detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(preprocess(start)).float()
        _check_labels_fit(logits, labels)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        # autograd.grad, not backward(): the gradient reaches the input only, never the parameters' .grad
        (gradient,) = torch.autograd.grad(loss, start)
    return _clamp_like_raw(start.detach() + eps * gradient.sign(), raw)


def _clean_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, preprocess: Preprocess, batch_size: int, device: DeviceLike
) -> float:
    logits = predict_logits(model, x, preprocess=preprocess, batch_size=batch_size, device=device)
    _check_labels_fit(logits, y)
    return float((logits.argmax(dim=1) == y.cpu()).double().mean())


def _count_correct(model: nn.Module, inputs: Tensor, labels: Tensor) -> int:
    with torch.no_grad():
        logits = model(inputs).float()
    _check_labels_fit(logits, labels)
    return int((logits.argmax(dim=1) == labels).sum())


def _unit_scale(raw: Tensor) -> Tensor:
    """Integer images as floats in [0, 1]; float inputs as they are."""
    return raw if raw.is_floating_point() else raw.float() / 255.0


def _clamp_like_raw(perturbed: Tensor, raw: Tensor) -> Tensor:
    # only integer inputs are images with a known range; float signals have none
    return perturbed if raw.is_floating_point() else perturbed.clamp(0.0, 1.0)


def _batches(x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, x.shape[0], batch_size):
        stop = start + batch_size
        yield x[start:stop].to(device), y[start:stop].to(device=device, dtype=torch.long)


def _place(model: nn.Module, device: DeviceLike) -> torch.device:
    """The device to run on: ``device`` (the model is moved there) or the model's own."""
    if device is not None:
        device = torch.device(device)
        model.to(device)
        return device
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every submodule's own mode restored after it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_inputs(model: nn.Module, x: Tensor, y: Tensor | None, preprocess: Preprocess, batch_size: int) -> int:
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


def _check_labels_fit(logits: Tensor, labels: Tensor) -> None:
    if logits.ndim != 2:
        raise MixlabValueError(f"the model must return logits (N, K); got shape {tuple(logits.shape)}")
    if int(labels.max()) >= logits.shape[1]:
        raise MixlabValueError(
            f"labels must be class indices in [0, {logits.shape[1]}) for a model with {logits.shape[1]} outputs; "
            f"got {int(labels.max())}"
        )
