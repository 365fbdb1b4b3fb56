"""Shared checks for model-aware mixers: the contract invariants and a short training in a user's own loop.

The data is scikit-learn's bundled digits (real 8x8 handwriting), upsampled
to 16x16 so that the image models and block grids have room.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import Tensor, nn

import mixlab
from mixlab.losses import mixed_cross_entropy
from mixlab.methods.context import MixContext
from mixlab.models import create_model


@functools.cache
def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return (x - 0.3) / 0.4, torch.tensor(data.target, dtype=torch.long)


def digits(n: int | None = None, size: int = 16) -> tuple[Tensor, Tensor]:
    """The first ``n`` digits as ``(N, 1, size, size)`` normalised images and ``(N,)`` labels."""
    x, y = _digits()
    if size != 16:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x, y) if n is None else (x[:n].clone(), y[:n].clone())


def small_cnn(num_classes: int = 10, size: int = 16, seed: int = 0) -> nn.Module:
    """mixlab's ``cnn_small`` for ``size x size`` grey images, with fixed initial weights."""
    torch.manual_seed(seed)
    return create_model("cnn_small", num_classes=num_classes, in_channels=1, input_size=size)


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """A copy of every parameter and buffer, to check that nothing changed."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def check_contract(
    mixer: mixlab.Mixer,
    x: Tensor,
    y: Tensor,
    model: nn.Module,
    *,
    lam_is_mask_mean: bool = False,
) -> mixlab.MixedBatch:
    """Assert the contract: shapes, dtype, device, lam range, determinism, caller's tensors and model untouched.

    ``lam_is_mask_mean``: the method defines ``lam`` as the exact kept fraction (``mb.mask`` mean per sample).
    Returns the first mixed batch.
    """
    x_before, y_before, model_before = x.clone(), y.clone(), snapshot(model)
    context = MixContext(mixer, model)
    ctx = context(x, y)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(3), context=ctx)
    again = mixer(x, y, generator=torch.Generator().manual_seed(3), context=context(x, y))
    assert mb.inputs.shape == x.shape and mb.inputs.dtype == x.dtype and mb.inputs.device == x.device
    assert mb.lam.shape == (x.shape[0],) and mb.lam.dtype == torch.float32
    assert bool(((mb.lam >= 0) & (mb.lam <= 1)).all()), mb.lam
    assert mb.perm.shape == (x.shape[0],) and mb.perm.dtype == torch.long
    assert torch.equal(mb.target_a, y) and torch.equal(mb.target_b, y[mb.perm])
    assert torch.equal(mb.inputs, again.inputs) and torch.equal(mb.lam, again.lam), "not deterministic"
    assert torch.equal(x, x_before) and torch.equal(y, y_before), "the caller's tensors changed"
    for key, value in snapshot(model).items():
        assert torch.equal(value, model_before[key]), f"mixing changed the model's {key}"
    if lam_is_mask_mean:
        assert mb.mask is not None
        kept = mb.mask.expand_as(x).flatten(1).double().mean(1).float()
        torch.testing.assert_close(mb.lam, kept, atol=1e-6, rtol=0)
    return mb


def own_loop(
    mixer: mixlab.Mixer,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 40,
    batch: int = 64,
    lr: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``model`` with ``mixer`` in a plain loop, the way the README shows.

    Returns the task losses (mixed cross-entropy), the total losses (with the
    mixer's loss terms), and the mixer's trainable parameters before and after.
    """
    context = MixContext(mixer, model)
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    for group in mixer.optimizer_groups():
        groups.append({"params": group["params"], "lr": lr * group.get("lr_scale", 1.0)})
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    before = [p.detach().clone() for p in mixer.trainable_parameters()]
    generator = torch.Generator().manual_seed(seed)
    task, total = [], []
    model.train()
    for _ in range(steps):
        index = torch.randint(0, x.shape[0], (batch,), generator=generator)
        xb, yb = x[index], y[index]
        mb = mixer(xb, yb, generator=generator, context=context(xb, yb))
        outputs = mb.forward(model)
        loss = mixed_cross_entropy(outputs, mb)
        task.append(loss.item())
        loss = loss + sum(mixer.loss_terms(mb, outputs).values())
        total.append(loss.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        mixer.after_step()
        context.after_step()
    after = [p.detach().clone() for p in mixer.trainable_parameters()]
    return {"task": task, "total": total, "params_before": before, "params_after": after}


def assert_trains(result: dict[str, Any]) -> None:
    """Finite losses, and the task loss of the last quarter below that of the first quarter."""
    task, total = torch.tensor(result["task"]), torch.tensor(result["total"])
    assert torch.isfinite(task).all() and torch.isfinite(total).all(), result["total"]
    quarter = max(len(task) // 4, 1)
    assert task[-quarter:].mean() < 0.8 * task[:quarter].mean(), result["task"]


def assert_parameters_changed(result: dict[str, Any]) -> None:
    """The mixer's own parameters exist and moved during training."""
    assert result["params_before"], "the mixer has no trainable parameters"
    moved = [not torch.equal(a, b) for a, b in zip(result["params_before"], result["params_after"], strict=True)]
    assert any(moved)


def clone_mixer(mixer: mixlab.Mixer) -> mixlab.Mixer:
    """A deep copy (for state-dict round trips)."""
    return copy.deepcopy(mixer)
