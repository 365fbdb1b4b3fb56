"""The training loop: mixing, AMP, gradient clipping, per-step learning rate, evaluation, DDP reductions.

The loop knows no method by name. It asks the mixer (through its schedule)
for a :class:`~mixlab.MixedBatch`, the objective for the loss, and the mixer
for its trainable parameters and extra loss terms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mixlab.batch import MixedBatch
from mixlab.data.augment import BatchAugment
from mixlab.engine.builders import Objective
from mixlab.engine.distributed import DistInfo, all_reduce_sum, average_gradients, broadcast_tensors
from mixlab.engine.progress import EpochProgress
from mixlab.methods.context import MixContext, unwrap
from mixlab.sampling import derive_seed
from mixlab.schedules import ScheduledMixer

#: how often (in steps) the running figures are read back for the progress bar.
DISPLAY_EVERY = 20


@dataclass
class LoopSettings:
    """Settings of :class:`Trainer` that are not objects.

    Example:
        >>> LoopSettings(epochs=3).amp_dtype is None
        True
    """

    epochs: int
    seed: int = 0
    task: str = "classification"
    amp_dtype: torch.dtype | None = None
    grad_clip: float | None = None
    channels_last: bool = False
    eval_every: int = 1
    max_steps_per_epoch: int | None = None
    target_scale: float = 1.0


@dataclass
class TrainState:
    """What a checkpoint needs besides the weights: epochs done, optimiser steps, the metrics so far."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Train ``model`` on ``train_loader`` with an optional (scheduled) mixer; evaluate on ``eval_loaders``.

    Every epoch re-derives its random streams (batch order, augmentation,
    mixing, dropout) from ``(seed, epoch, rank)``, so resuming at an epoch
    boundary reproduces an uninterrupted run exactly on the same device.

    Args:
        model: the network, possibly wrapped in ``DistributedDataParallel``.
        train_loader, eval_loaders: from :mod:`mixlab.data.loader` (``set_epoch`` and iteration).
        augment: batched augmentation and normalisation applied on the device.
        mixer: a :class:`~mixlab.schedules.ScheduledMixer` or ``None`` for plain training.
        objective: ``(model, x, y, mb) -> (loss, outputs)``.
        optimizer: holds the model's and the mixer's trainable parameters.
        lr_factor: learning-rate multiplier per optimiser step.
        dist: rank, world size and device.
        settings: :class:`LoopSettings`.
        on_epoch_end: called with ``(trainer, record)`` after each epoch (checkpoints, logs).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        train_loader: Any,
        eval_loaders: dict[str, Any],
        augment: BatchAugment,
        mixer: ScheduledMixer | None,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        lr_factor: Callable[[int], float],
        dist: DistInfo,
        settings: LoopSettings,
        progress: EpochProgress | None = None,
        on_epoch_end: Iterable[Callable[[Trainer, dict[str, Any]], None]] = (),
    ):
        self.model = model
        self.module = unwrap(model)
        self.train_loader, self.eval_loaders = train_loader, eval_loaders
        self.augment, self.mixer, self.objective = augment, mixer, objective
        self.optimizer, self.lr_factor = optimizer, lr_factor
        self.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["initial_lr"] = lr
        self.dist, self.settings = dist, settings
        self.progress = progress or EpochProgress(enabled=False, echo=False)
        self.on_epoch_end = list(on_epoch_end)
        self.mixer_params = mixer.trainable_parameters() if mixer is not None else []
        # What a model-aware mixer needs (saliency, features, an EMA copy) is computed here, once per mixed step.
        self.mix_context = (
            MixContext(mixer, model).to(dist.device) if mixer is not None and mixer.needs.anything else None
        )
        self.state = TrainState()
        fp16 = settings.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=fp16)

    # ------------------------------------------------------------ public

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch on this rank."""
        steps = len(self.train_loader)
        cap = self.settings.max_steps_per_epoch
        return min(steps, cap) if cap else steps

    def fit(self) -> list[dict[str, Any]]:
        """Train from the current state to ``settings.epochs``; return the per-epoch records."""
        if self.mixer is not None:
            self.mixer.start_training(self.settings.epochs * self.steps_per_epoch)
        try:
            for epoch in range(self.state.epoch, self.settings.epochs):
                record = {"epoch": epoch + 1, **self.train_epoch(epoch)}
                last = epoch + 1 == self.settings.epochs
                if last or (epoch + 1) % self.settings.eval_every == 0:
                    for name, loader in self.eval_loaders.items():
                        record.update({f"{name}_{k}": v for k, v in self.evaluate(loader).items()})
                self.state.epoch = epoch + 1
                self.state.history.append(record)
                self.progress.end_epoch(_summary(record, self.settings.epochs))
                for callback in self.on_epoch_end:
                    callback(self, record)
        finally:
            self.progress.close()
        return self.state.history

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of training; returns mean loss, (mixed-label) accuracy, images/s, lr, time."""
        rank, device = self.dist.rank, self.dist.device
        self._seed_epoch(epoch)
        augment_gen = torch.Generator().manual_seed(derive_seed(self.settings.seed, "augment", epoch, rank))
        mix_gen = torch.Generator().manual_seed(derive_seed(self.settings.seed, "mix", epoch, rank))
        self.train_loader.set_epoch(epoch)
        self.model.train()
        steps = self.steps_per_epoch
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, correct, n
        self.progress.start_epoch(epoch, steps, total_epochs=self.settings.epochs)
        start = time.perf_counter()
        for i, (x, y) in enumerate(self.train_loader):
            if i >= steps:
                break
            loss, correct, rows = self._train_step(x, y, augment_gen, mix_gen, epoch)
            sums[0] += loss.detach().double() * rows
            sums[1] += correct
            sums[2] += rows
            if (i + 1) % DISPLAY_EVERY == 0 and self.progress.enabled:
                self._show(i + 1, sums, start)
        elapsed = time.perf_counter() - start
        loss_sum, correct, count = all_reduce_sum(sums).tolist()
        record = {
            "train_loss": loss_sum / max(count, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": count / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
        }
        if self.settings.task == "classification":
            record["train_acc"] = correct / max(count, 1)
        return record

    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        """Loss and accuracy (classification) or MSE/RMSE/MAE in the targets' units (regression)."""
        self.model.eval()
        # Every rank evaluates with rank 0's buffers (BN statistics drift apart in the last training
        # forward); the bare module is used so that a rank with no evaluation batch cannot hang DDP.
        broadcast_tensors(list(self.module.buffers()))
        sums = torch.zeros(3, dtype=torch.float64, device=self.dist.device)
        for x, y in loader:
            inputs = self._prepare(self.augment(x, train=False))
            with self._autocast():
                outputs = self.module(inputs).float()
            sums += self._eval_sums(outputs, y)
        total, second, count = all_reduce_sum(sums).tolist()
        count = max(count, 1)
        if self.settings.task == "classification":
            return {"loss": total / count, "acc": second / count}
        scale = self.settings.target_scale
        mse = total / count * scale**2
        return {"mse": mse, "rmse": math.sqrt(mse), "mae": second / count * scale}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser, scaler, mixer, epoch, step, history."""
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "mixer": self.mixer.state_dict() if self.mixer is not None else {},
            "mix_context": self.mix_context.state_dict() if self.mix_context is not None else {},
            "epoch": self.state.epoch,
            "step": self.state.step,
            "history": self.state.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the model's weights included)."""
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.mixer is not None:
            self.mixer.load_state_dict(state["mixer"])
        if self.mix_context is not None:
            self.mix_context.load_state_dict(state.get("mix_context", {}))
        self.state = TrainState(int(state["epoch"]), int(state["step"]), list(state["history"]))

    # ------------------------------------------------------------ the step

    def _train_step(
        self, x: Tensor, y: Tensor, augment_gen: torch.Generator, mix_gen: torch.Generator, epoch: int
    ) -> tuple[Tensor, Tensor, int]:
        """One optimiser step; returns the loss, the (mixed-label) correct count and the rows trained on.

        The rows are the mixed batch's, which can be fewer than the loaded ones (C-Mixup loads each
        anchor's partner and trains on the anchors' mixes).
        """
        self._set_lr()
        x = self._prepare(self.augment(x, augment_gen))
        if self.mixer is None:
            mb = MixedBatch.unmixed(x, y)
        else:
            context = self._mix_context(x, y, epoch)
            with self._autocast():  # learned mixers run networks while mixing
                mb = self.mixer(x, y, mix_gen, step=self.state.step, epoch=epoch, context=context)
        with self._autocast():
            loss, outputs = self.objective(self.model, x, y, mb)
            if self.mixer is not None:
                for term in self.mixer.loss_terms(mb, outputs).values():
                    loss = loss + term
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.mixer_params and self.dist.distributed:
            average_gradients(self.mixer_params)  # DDP averages the model's gradients, not the mixer's
        if self.settings.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.mixer is not None:
            self.mixer.after_step()
        if self.mix_context is not None:
            self.mix_context.after_step()
        self.state.step += 1
        return loss, self._correct(outputs.detach(), mb), int(outputs.shape[0])

    def _mix_context(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, Any]:
        """The mixer's context; computed only on steps the schedule mixes."""
        assert self.mixer is not None
        if self.mix_context is None or not self.mixer.active(self.state.step, epoch):
            return {"model": self.model}
        with self._autocast():
            return self.mix_context(x, y)

    def _set_lr(self) -> None:
        factor = self.lr_factor(self.state.step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def _prepare(self, x: Tensor) -> Tensor:
        if self.settings.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> Any:
        dtype = self.settings.amp_dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def _correct(self, outputs: Tensor, mb: MixedBatch) -> Tensor:
        """Correct predictions, each counted by the weight of the label it matches."""
        if self.settings.task != "classification":
            return torch.zeros((), dtype=torch.float64, device=outputs.device)
        labels = mb.source_targets
        if labels.is_floating_point():  # soft labels
            labels = labels.argmax(-1)
        weights = mb.weights.to(outputs.device, torch.float64)
        return (weights * (outputs.argmax(1, keepdim=True) == labels)).sum()

    def _eval_sums(self, outputs: Tensor, y: Tensor) -> Tensor:
        n = torch.tensor(float(y.shape[0]), dtype=torch.float64, device=outputs.device)
        if self.settings.task == "classification":
            nll = nn.functional.cross_entropy(outputs, y, reduction="sum").double()
            return torch.stack([nll, (outputs.argmax(1) == y).sum().double(), n])
        error = outputs.reshape(y.shape) - y
        return torch.stack([error.square().sum().double(), error.abs().sum().double(), n])

    def _seed_epoch(self, epoch: int) -> None:
        # dropout and any other use of the global generator: reproducible per (seed, epoch, rank)
        torch.manual_seed(derive_seed(self.settings.seed, "torch", epoch, self.dist.rank))

    def _show(self, step: int, sums: Tensor, start: float) -> None:
        loss_sum, correct, count = sums.tolist()
        acc = correct / count if self.settings.task == "classification" else None
        ips = count * self.dist.world_size / max(time.perf_counter() - start, 1e-9)
        self.progress.update(step, loss=loss_sum / count, acc=acc, images_per_s=ips)


def _summary(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"train loss {record['train_loss']:.4f}"]
    if "train_acc" in record:
        parts.append(f"train acc {record['train_acc']:.2%}")
    for key, value in record.items():
        if key.startswith(("val_", "test_")):
            parts.append(
                f"{key.replace('_', ' ')} {value:.2%}"
                if key.endswith("_acc")
                else f"{key.replace('_', ' ')} {value:.4f}"
            )
    parts.append(f"{record['images_per_s']:,.0f} img/s")
    return "  ".join(parts)
