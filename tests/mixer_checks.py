"""Shared checks of every mixer: the one contract checker, and a short training in a user's own loop.

:func:`assert_mixer_contract` is the contract every mixer passes (the registry-driven
suite in ``tests/methods/test_contract.py`` runs it for each name of ``list_mixers()``;
the hypothesis properties of ``tests/test_mixers.py`` and the method tests call it too).

The data is scikit-learn's bundled digits (real 8x8 handwriting), upsampled
to 16x16 so that the image models and block grids have room.
"""

from __future__ import annotations

import copy
import functools
import pickle
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


def assert_mixer_contract(
    mixer: mixlab.Mixer,
    x: Tensor,
    y: Tensor,
    model: nn.Module | None = None,
    *,
    seed: int = 3,
    num_classes: int | None = None,
    lam_is_mask_mean: bool = False,
    round_trip: bool = True,
) -> mixlab.MixedBatch:
    """Assert the mixing contract on ``(x, y)`` and return the mixed batch.

    - shape, dtype and device of the inputs; ``lam`` ``(N,)`` float32 in [0, 1]; ``perm`` indexes the batch;
    - ``sources``/``weights``: ``(N, K)``, weights non-negative summing to 1, ``source_targets == y[sources]``,
      and for two sources ``[arange, perm]`` / ``[lam, 1 - lam]`` with ``target_a == y``, ``target_b == y[perm]``;
    - soft targets are distributions (class indices and soft labels, ``num_classes`` given);
    - the same generator state gives the same batch; ``sample`` then ``apply`` (twice) replays the call;
    - a pickled and a deep-copied mixer give the same batch (``round_trip``);
    - the caller's tensors are left alone, and so is the model (the context is computed first: its
      clean-loss pass may update BatchNorm statistics as a training step would);
    - ``lam_is_mask_mean``: ``lam`` is the exact kept fraction (the mean of ``mb.mask`` per sample).
    """
    x_before, y_before = x.clone(), y.clone()
    context = None if model is None else MixContext(mixer, model)
    ctx = None if context is None else context(x, y)
    model_before = None if model is None else snapshot(model)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(seed), context=ctx)
    n = x.shape[0]
    assert mb.inputs.shape == x.shape and mb.inputs.dtype == x.dtype and mb.inputs.device == x.device
    assert mb.lam.shape == (n,) and mb.lam.dtype == torch.float32
    assert bool(((mb.lam >= 0) & (mb.lam <= 1)).all()), mb.lam
    assert mb.perm.shape == (n,) and mb.perm.dtype == torch.long
    assert bool(((mb.perm >= 0) & (mb.perm < n)).all())
    _assert_sources(mb, y)
    if num_classes is not None and (not y.is_floating_point() or y.ndim == 2):
        soft = mb.soft_targets(num_classes, smoothing=0.1)
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(n, device=soft.device), atol=1e-5, rtol=0)
        assert bool((soft >= 0).all())
    _assert_replays(mixer, x, y, seed, ctx, mb, round_trip=round_trip)
    assert torch.equal(x, x_before) and torch.equal(y, y_before), "the caller's tensors changed"
    if model is not None:
        for key, value in snapshot(model).items():
            assert torch.equal(value, model_before[key]), f"mixing changed the model's {key}"
    if lam_is_mask_mean:
        assert mb.mask is not None
        kept = mb.mask.expand_as(x).flatten(1).double().mean(1).float()
        torch.testing.assert_close(mb.lam, kept, atol=1e-6, rtol=0)
    return mb


def _assert_sources(mb: mixlab.MixedBatch, y: Tensor) -> None:
    n, k = mb.sources.shape
    assert n == y.shape[0] and k == mb.num_sources >= 2 and mb.sources.dtype == torch.long
    assert mb.weights.shape == (n, k) and bool((mb.weights >= 0).all())
    torch.testing.assert_close(mb.weights.sum(1), torch.ones(n, device=mb.weights.device), atol=1e-5, rtol=0)
    assert torch.equal(mb.source_targets, y[mb.sources])
    torch.testing.assert_close(mb.weights[:, 0], mb.lam)
    assert torch.equal(mb.sources[:, 1], mb.perm)
    if k == 2 and torch.equal(mb.sources[:, 0], torch.arange(n, device=y.device)):
        assert torch.equal(mb.target_a, y) and torch.equal(mb.target_b, y[mb.perm])


def _assert_replays(
    mixer: mixlab.Mixer,
    x: Tensor,
    y: Tensor,
    seed: int,
    ctx: dict[str, Any] | None,
    mb: mixlab.MixedBatch,
    *,
    round_trip: bool,
) -> None:
    def same(other: mixlab.MixedBatch, what: str) -> None:
        assert torch.equal(other.inputs, mb.inputs), f"{what}: different inputs"
        assert torch.equal(other.lam, mb.lam) and torch.equal(other.perm, mb.perm), f"{what}: different labels"
        assert torch.equal(other.sources, mb.sources) and torch.equal(other.weights, mb.weights), what

    same(mixer(x, y, generator=torch.Generator().manual_seed(seed), context=ctx), "the same generator state")
    params = mixer.sample(x, y, torch.Generator().manual_seed(seed), context=ctx)
    same(mixer.apply(x, y, params, context=ctx), "sample then apply")
    same(mixer.apply(x, y, params, context=ctx), "apply replayed")
    if round_trip:
        for what, copy_of in (("pickle", pickle.loads(pickle.dumps(mixer))), ("deepcopy", copy.deepcopy(mixer))):
            same(copy_of(x, y, generator=torch.Generator().manual_seed(seed), context=ctx), f"a {what} round trip")


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


