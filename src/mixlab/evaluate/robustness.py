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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.errors import check_int, check_non_negative
from mixlab.evaluate.running import (
    DeviceLike,
    Preprocess,
    batches,
    check_labels_fit,
    check_model_inputs,
    clamp_like_raw,
    count_correct,
    eval_mode,
    in_model_layout,
    place_model,
    unit_scale,
)


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
    batch_size = check_model_inputs(model, x, None, preprocess, batch_size)
    preprocess = in_model_layout(model, preprocess)
    device = place_model(model, device)
    outputs = []
    with eval_mode(model), torch.no_grad():
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
    batch_size = check_model_inputs(model, x, y, preprocess, batch_size)
    preprocess = in_model_layout(model, preprocess)
    if eps == 0.0:
        # the raw inputs themselves, not their float copy: the clean accuracy to the last sample
        return _clean_accuracy(model, x, y, preprocess, batch_size, device)
    device = place_model(model, device)
    correct = 0
    with eval_mode(model):
        for raw, labels in batches(x, y, batch_size, device):
            adversarial = _fgsm_step(model, raw, labels, eps, preprocess)
            correct += count_correct(model, preprocess(adversarial), labels)
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
    batch_size = check_model_inputs(model, x, y, preprocess, batch_size)
    preprocess = in_model_layout(model, preprocess)
    if std == 0.0:
        return _clean_accuracy(model, x, y, preprocess, batch_size, device)
    device = place_model(model, device)
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    with eval_mode(model), torch.no_grad():
        for raw, labels in batches(x, y, batch_size, device):
            unit = unit_scale(raw)
            noise = torch.randn(raw.shape, generator=generator).to(device=device, dtype=unit.dtype)
            noisy = clamp_like_raw(unit + std * noise, raw)
            correct += count_correct(model, preprocess(noisy), labels)
    return correct / x.shape[0]


# ------------------------------------------------------------------ helpers


def _fgsm_step(model: nn.Module, raw: Tensor, labels: Tensor, eps: float, preprocess: Preprocess) -> Tensor:
    start = unit_scale(raw).detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(preprocess(start)).float()
        check_labels_fit(logits, labels)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        # autograd.grad, not backward(): the gradient reaches the input only, never the parameters' .grad
        (gradient,) = torch.autograd.grad(loss, start)
    return clamp_like_raw(start.detach() + eps * gradient.sign(), raw)


def _clean_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, preprocess: Preprocess, batch_size: int, device: DeviceLike
) -> float:
    logits = predict_logits(model, x, preprocess=preprocess, batch_size=batch_size, device=device)
    check_labels_fit(logits, y)
    return float((logits.argmax(dim=1) == y.cpu()).double().mean())


