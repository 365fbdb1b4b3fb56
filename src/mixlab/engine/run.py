"""A training run from a config: output directory checks, data, model, mixer, loop, checkpoints and logs.

Every check that can refuse the run (config, output directory, resume
compatibility, data present) happens before anything is written, so a refused
run never touches what an earlier one left.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

import mixlab
from mixlab.data import ArrayData, DataSplits, load_dataset
from mixlab.data.augment import BatchAugment, channel_stats
from mixlab.data.loader import FolderLoader, TensorLoader
from mixlab.data.pairs import PartnerBatchSampler, PartnerTensorLoader, anchor_mixes
from mixlab.data.resample import ClassBalancedFolderLoader, ClassBalancedTensorLoader
from mixlab.engine import checkpoint as ckpt
from mixlab.engine.builders import build_mixer, build_objective, build_optimizer, build_schedule, lr_factor
from mixlab.engine.config import RunConfig, config_diff, config_to_dict
from mixlab.engine.distributed import DistInfo, barrier, broadcast_tensors, setup_distributed
from mixlab.engine.loop import LoopSettings, Trainer
from mixlab.engine.progress import EpochProgress
from mixlab.errors import MissingDependencyError, MixlabValueError
from mixlab.models import create_model
from mixlab.sampling import CMixupPairing, derive_seed
from mixlab.schedules import ScheduledMixer

#: config keys that may change between a run and its resumption (they do not affect the result).
RESUMABLE_CHANGES = ("name", "train.progress", "data.workers", "data.root")


class RunRefusedError(MixlabValueError):
    """The output directory or checkpoint does not allow this run; nothing was written."""


@dataclass
class RunResult:
    """What :func:`train` returns: the trained model (unwrapped), per-epoch records, final metrics, the mixer's state, the splits."""

    model: nn.Module
    history: list[dict[str, Any]]
    final: dict[str, Any]
    output: Path | None
    mixer_state: dict[str, Any]
    splits: DataSplits | None = None  # the data it trained on, so evaluation need not read it again


def train(
    config: RunConfig,
    output: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    echo: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run the training described by ``config``; outputs go to ``output`` (nothing written when ``None``).

    The run directory receives ``config.yaml`` (resolved), ``run.json``
    (versions, device, ranks), ``metrics.jsonl`` (one line per epoch),
    ``checkpoint.pt`` (atomically, every epoch) and ``final.json`` when done.
    Launched by ``torchrun``, every rank trains its shard and only rank 0 writes.

    Args:
        resume: continue from ``output/checkpoint.pt``; refused if the config differs.
        overwrite: replace a finished (or unfinished) run in ``output``.
        progress: show the live bar (``None``: when stderr is a terminal and ``train.progress`` is auto).
        on_epoch_end: called on the main process with each epoch's record, after the checkpoint is written.
    """
    dist = setup_distributed(config.train.device)
    out = Path(output) if output is not None else None
    resume_state = _check_output(config, out, resume=resume, overwrite=overwrite)
    if config.train.tensorboard:
        _tensorboard_writer_class()  # fail now, before any output is touched
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.deterministic:
        use_deterministic_kernels()
    splits = load_run_data(config)
    trainer = _build_trainer(config, splits, dist, progress, echo)
    if trainer.steps_per_epoch == 0:
        raise MixlabValueError(
            f"train.batch_size is {config.train.batch_size} but each of the {dist.world_size} process(es) has only "
            f"{len(splits.train) // dist.world_size} training samples: an epoch would have no step; lower the batch size"
        )
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
    if out is not None and dist.is_main:
        _start_outputs(config, out, dist, splits, trainer.state.history, overwrite=overwrite)
        trainer.on_epoch_end.append(_writer(config, out))
    if on_epoch_end is not None and dist.is_main:
        trainer.on_epoch_end.append(lambda _trainer, record: on_epoch_end(dict(record)))
    barrier()
    history = trainer.fit()
    final = _final_metrics(trainer, history)
    if out is not None and dist.is_main:
        ckpt.atomic_write_text(out / ckpt.FINAL, json.dumps(final, indent=2))
    return RunResult(trainer.module, history, final, out, trainer.state_dict()["mixer"], splits)


# ------------------------------------------------------------------ output directory


def _check_output(config: RunConfig, out: Path | None, *, resume: bool, overwrite: bool) -> dict | None:
    """Refuse before any work if the directory holds a run this one must not clobber; load a resume state."""
    if out is None:
        if resume:
            raise RunRefusedError("--resume needs the output directory of the run to continue")
        return None
    if out.exists() and not out.is_dir():
        raise RunRefusedError(f"output {str(out)!r} exists and is not a directory")
    has_checkpoint, finished = (out / ckpt.CHECKPOINT).is_file(), (out / ckpt.FINAL).is_file()
    if resume:
        if overwrite:
            raise RunRefusedError("give either --resume or --overwrite, not both")
        if not has_checkpoint:
            raise RunRefusedError(f"nothing to resume: no {ckpt.CHECKPOINT} in {str(out)!r}")
        state = ckpt.load_checkpoint(out / ckpt.CHECKPOINT)
        _check_same_config(state.get("config", {}), config_to_dict(config), out)
        if finished and state["epoch"] >= config.train.epochs:
            raise RunRefusedError(f"the run in {str(out)!r} is already finished ({state['epoch']} epochs)")
        return state
    if (finished or has_checkpoint) and not overwrite:
        what = "a finished run" if finished else "an unfinished run (continue it with --resume)"
        raise RunRefusedError(
            f"{str(out)!r} already holds {what}; pass --overwrite to replace it, or choose another --output"
        )
    return None


def _check_same_config(saved: dict, current: dict, out: Path) -> None:
    diffs = [d for d in config_diff(saved, current) if not d.startswith(RESUMABLE_CHANGES)]
    if diffs:
        listing = "\n  ".join(diffs)
        raise RunRefusedError(
            f"the checkpoint in {str(out)!r} was made with a different config (saved -> now):\n  {listing}"
        )


def _start_outputs(
    config: RunConfig, out: Path, dist: DistInfo, splits: DataSplits, history: list[dict], *, overwrite: bool
) -> None:
    fresh = not history
    if fresh and overwrite:
        for name in (ckpt.CHECKPOINT, ckpt.FINAL, ckpt.METRICS, ckpt.RUN_INFO, ckpt.CONFIG):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(out / ckpt.CONFIG, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    if fresh or not (out / ckpt.RUN_INFO).is_file():
        info = {**run_info(dist), "data": splits.info, "resumes": []}
    else:  # keep the original launch facts; record this resumption
        info = json.loads((out / ckpt.RUN_INFO).read_text())
        info.setdefault("resumes", []).append({**run_info(dist), "after_epoch": len(history)})
    ckpt.atomic_write_text(out / ckpt.RUN_INFO, json.dumps(info, indent=2, default=str))
    # the metrics log restarts from the checkpoint's history: an epoch redone after a kill is logged once
    ckpt.atomic_write_text(out / ckpt.METRICS, "".join(json.dumps(record) + "\n" for record in history))


def run_info(dist: DistInfo) -> dict[str, Any]:
    """Versions, device and launch facts saved next to a run's outputs.

    Example:
        >>> from mixlab.engine.distributed import DistInfo
        >>> run_info(DistInfo(0, 1, torch.device("cpu")))["world_size"]
        1
    """
    device = dist.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "mixlab": mixlab.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "world_size": dist.world_size,
        "argv": sys.argv,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _writer(config: RunConfig, out: Path) -> Any:
    writer = _tensorboard(out) if config.train.tensorboard else None
    resolved = config_to_dict(config)

    def write(trainer: Trainer, record: dict[str, Any]) -> None:
        ckpt.save_checkpoint(out / ckpt.CHECKPOINT, {**trainer.state_dict(), "config": resolved})
        ckpt.append_jsonl(out / ckpt.METRICS, record)
        if writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(key, value, record["epoch"])
            writer.flush()

    return write


def _tensorboard(out: Path) -> Any:
    return _tensorboard_writer_class()(str(out / "tensorboard"))


def _tensorboard_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingDependencyError(
            "train.tensorboard needs the tensorboard package: pip install 'mixlab[tensorboard]'"
        ) from None
    return SummaryWriter


# ------------------------------------------------------------------ building the run


def load_run_data(config: RunConfig) -> DataSplits:
    """The splits a run trains and evaluates on: ``config.data`` read, split, subset and noised.

    Example:
        >>> cfg = RunConfig.model_validate({"data": {"name": "digits"}, "model": {"name": "mlp"}})
        >>> load_run_data(cfg).num_classes
        10
    """
    data = config.data
    return load_dataset(
        data.name,
        root=data.root,
        val_fraction=data.val_fraction,
        subset_per_class=data.subset_per_class,
        label_noise=data.label_noise,
        noise_kind=data.noise_kind,
        imbalance_ratio=data.imbalance_ratio,
        classes=data.classes,
        seed=config.train.seed if data.split_seed is None else data.split_seed,
        **data.options,
    )


def _build_trainer(config: RunConfig, splits: DataSplits, dist: DistInfo, progress: bool | None, echo: bool) -> Trainer:
    check_sampling(config, splits)
    settings = _loop_settings(config, splits, dist)
    target_mean, target_scale = target_stats(splits)
    settings.target_scale = target_scale
    torch.manual_seed(derive_seed(config.train.seed, "init"))  # same initial weights on every rank
    model = build_model(config, splits).to(dist.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped: nn.Module = model
    if dist.distributed:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    augment = build_augment(config, splits)
    input_std = None if augment.std is None else augment.std.tolist()
    mixer = build_mixer(config.mix, model, seed=derive_seed(config.train.seed, "mixer", dist.rank), input_std=input_std)
    pairing = fit_partner_pairing(mixer, splits, loop_targets(splits.train, target_mean, target_scale))
    if mixer is not None:
        mixer.to(dist.device)
        broadcast_tensors([p.data for p in mixer.trainable_parameters()])  # one starting point on every rank
    scheduled = None
    if mixer is not None:
        schedule = build_schedule(_seeded_schedule(config))
        scheduled = ScheduledMixer(mixer, schedule) if pairing is None else AnchorMixes(mixer, schedule)
    optimizer = build_optimizer(model.parameters(), config.optim, mixer.optimizer_groups() if mixer else ())
    train_loader = _loader(
        config, splits.train, dist, train=True, target_mean=target_mean, target_scale=target_scale, pairing=pairing
    )
    eval_loaders = {
        name: _loader(config, part, dist, train=False, target_mean=target_mean, target_scale=target_scale)
        for name, part in (("val", splits.val), ("test", splits.test))
        if part is not None
    }
    steps = (
        len(train_loader)
        if not config.train.max_steps_per_epoch
        else min(len(train_loader), config.train.max_steps_per_epoch)
    )
    show = None if config.train.progress == "auto" else config.train.progress == "on"
    return Trainer(
        wrapped,
        train_loader=train_loader,
        eval_loaders=eval_loaders,
        augment=augment,
        mixer=scheduled,
        objective=build_objective(config.mix, splits.task),
        optimizer=optimizer,
        lr_factor=lr_factor(config.optim, steps, config.train.epochs),
        dist=dist,
        settings=settings,
        progress=EpochProgress(
            enabled=(progress if progress is not None else show) if dist.is_main else False, echo=echo and dist.is_main
        ),
    )


def build_model(config: RunConfig, splits: DataSplits) -> nn.Module:
    """The configured backbone, sized for the dataset (classes, channels, input size).

    Example:
        >>> from mixlab.data import ArrayData, DataSplits
        >>> part = ArrayData(torch.zeros(4, 3), torch.zeros(4))
        >>> splits = DataSplits("t", "regression", part, None, part, None, (3,), None, {})
        >>> cfg = RunConfig.model_validate({"model": {"name": "mlp"}, "mix": {"loss": "mse"}})
        >>> build_model(cfg, splits)(torch.zeros(2, 3)).shape
        torch.Size([2, 1])
    """
    shape = tuple(splits.input_shape)
    outputs = splits.num_classes if splits.task == "classification" else _target_width(splits)
    size = shape[1:] if len(shape) > 1 else None
    if (size is not None and len(size) == 1) or (size is not None and len(set(size)) == 1):
        size = size[0]
    return create_model(
        config.model.name, num_classes=outputs, in_channels=shape[0], input_size=size, **config.model.options
    )


def _target_width(splits: DataSplits) -> int:
    y = splits.train.y if isinstance(splits.train, ArrayData) else None
    return 1 if y is None or y.ndim == 1 else int(y.shape[1])


def _loop_settings(config: RunConfig, splits: DataSplits, dist: DistInfo) -> LoopSettings:
    train = config.train
    return LoopSettings(
        epochs=train.epochs,
        seed=train.seed,
        task=splits.task,
        amp_dtype=amp_dtype(train.amp, dist.device),
        grad_clip=train.grad_clip,
        channels_last=train.channels_last == "on" or (train.channels_last == "auto" and len(splits.input_shape) == 3),
        eval_every=train.eval_every,
        max_steps_per_epoch=train.max_steps_per_epoch,
    )


def use_deterministic_kernels() -> None:
    """Ask torch, cuDNN and cuBLAS for deterministic kernels (``train.deterministic``).

    On CUDA this is what makes a resumed run match an uninterrupted one
    exactly; kernels without a deterministic version warn instead of failing.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (``None``: full precision).

    ``auto`` is bfloat16 on CUDA GPUs that support it, else float16 on CUDA,
    and off on other devices; ``fp16`` needs CUDA.

    Example:
        >>> amp_dtype("bf16", torch.device("cpu"))
        torch.bfloat16
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        if amp == "fp16":
            raise MixlabValueError(f"train.amp: fp16 needs a CUDA device; this run is on {device}. Use bf16 or off")
        return None
    if amp == "auto" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _seeded_schedule(config: RunConfig) -> list:
    """Schedules that draw (probability, probability ramps) get a seed from the run's seed unless given."""
    parts = []
    for i, part in enumerate(config.mix.schedule):
        if part.kind in ("probability", "ramp") and part.options.get("seed") is None:
            part = part.model_copy(
                update={"options": {**part.options, "seed": derive_seed(config.train.seed, "schedule", i)}}
            )
        parts.append(part)
    return parts


def build_augment(config: RunConfig, splits: DataSplits) -> BatchAugment:
    """The run's batch augmentation and normalisation; ``augment(x, train=False)`` only normalises.

    Example:
        >>> cfg = RunConfig.model_validate({"data": {"name": "digits"}, "model": {"name": "mlp"}})
        >>> aug = build_augment(cfg, load_run_data(cfg))
        >>> aug.mean.shape  # one statistic per input channel (each of the 64 pixels here)
        torch.Size([64])
    """
    aug = config.data.augment
    mean = std = None
    if aug.normalize and isinstance(splits.train, ArrayData):
        mean, std = channel_stats(splits.train.x)
    elif aug.normalize:  # lazily read folders: fixed statistics rather than a full pass over the files
        mean, std = [0.5] * splits.input_shape[0], [0.25] * splits.input_shape[0]
    return BatchAugment(mean, std, crop_padding=aug.crop_padding, hflip=aug.hflip, vflip=aug.vflip)


def dataset_pairings(mixer: Any) -> list[CMixupPairing]:
    """The dataset-scope C-Mixup pairings ``mixer`` draws partners with, each once.

    Looked for on the mixer, on the members of a ``random_choice`` and on
    the ``base`` of a relabelling mixer (TransMix, SUMix).

    Example:
        >>> members = [{"name": "mixup", "pairing": "c_mixup"}, {"name": "mixup", "pairing": "c_mixup_batch"}]
        >>> [p.scope for p in dataset_pairings(mixlab.create_mixer("random_choice", mixers=members))]
        ['dataset']
    """
    found: list[CMixupPairing] = []
    pending = [mixer]
    while pending:
        current = pending.pop(0)
        pairing = getattr(current, "pairing", None)
        if isinstance(pairing, CMixupPairing) and pairing.scope == "dataset" and all(pairing is not p for p in found):
            found.append(pairing)
        pending.extend(getattr(current, "mixers", ()))
        if getattr(current, "base", None) is not None:
            pending.append(current.base)
    return found


def fit_partner_pairing(mixer: Any, splits: DataSplits, train_targets: torch.Tensor) -> CMixupPairing | None:
    """Fit the mixer's dataset-scope C-Mixup pairing(s) on the training targets; ``None`` when it has none.

    C-Mixup (Yao et al., NeurIPS 2022, arXiv 2210.05775) draws each anchor's
    partner from the whole training set; the engine then loads each batch as
    its anchors followed by their partners and trains on the anchors' mixes
    (see :func:`mixlab.data.pairs.anchor_mixes`). ``train_targets`` are the
    targets as the loop sees them: the engine standardises regression targets
    held in memory, so there ``sigma`` is in standard deviations of the
    training targets. Several such pairings (e.g. on members of a
    ``random_choice``) must agree on their settings: one loader draws the
    partners of all of them. Refused for classification (and, by
    :meth:`~mixlab.sampling.CMixupPairing.fit`, for non-float targets).

    Example:
        >>> from mixlab.data import ArrayData, DataSplits
        >>> part = ArrayData(torch.zeros(4, 3), torch.tensor([0.0, 0.1, 2.0, 2.1]))
        >>> splits = DataSplits("t", "regression", part, None, part, None, (3,), None, {})
        >>> pairing = fit_partner_pairing(mixlab.Mixup(pairing="c_mixup", sigma=0.2), splits, part.y)
        >>> pairing.num_targets
        4
    """
    pairings = dataset_pairings(mixer)
    if not pairings:
        return None
    if splits.task != "regression":
        raise MixlabValueError(
            f"pairing 'c_mixup' draws partners by target distance, for regression; dataset {splits.name!r} is a "
            f"{splits.task} task. Use pairing 'random', 'same_class' or 'different_class'"
        )
    settings = {(p.sigma, p.exclude_self, p.top_k) for p in pairings}
    if len(settings) > 1:
        raise MixlabValueError(
            "one loader draws every dataset-scope c_mixup partner, so the mixer's c_mixup pairings must share "
            f"sigma, exclude_self and top_k; got {sorted(settings, key=str)}"
        )
    for pairing in pairings:
        pairing.fit(train_targets)
    return pairings[0]


class AnchorMixes(ScheduledMixer):
    """A scheduled mixer fed partner batches (anchors, then their partners) that returns the anchors' mixes only.

    Every loaded row is mixed (each partner with its anchor too), then
    :func:`mixlab.data.pairs.anchor_mixes` keeps the first half: the ``B``
    samples the authors' C-Mixup trains on per step (Yao et al., NeurIPS 2022,
    arXiv 2210.05775; huaxiuyao/C-Mixup ``src/algorithm.py``, ``train``).
    Clean steps (schedule inactive) give the ``B`` anchors unmixed.
    """

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        step: int,
        epoch: int,
        context: dict[str, Any] | None = None,
    ) -> Any:
        """Mix the whole partner batch as :class:`ScheduledMixer` does; return its anchors' rows."""
        return anchor_mixes(super().__call__(x, y, generator, step=step, epoch=epoch, context=context))


def loop_targets(part: Any, target_mean: float, target_scale: float) -> torch.Tensor:
    """A split's targets as the training loop sees them: float targets held in memory are standardised.

    Example:
        >>> from mixlab.data import ArrayData
        >>> loop_targets(ArrayData(torch.zeros(2, 1), torch.tensor([1.0, 3.0])), 2.0, 1.0).tolist()
        [-1.0, 1.0]
    """
    y = part.labels
    if isinstance(part, ArrayData) and y.is_floating_point() and (target_mean, target_scale) != (0.0, 1.0):
        y = (y - target_mean) / target_scale
    return y


def target_stats(splits: DataSplits) -> tuple[float, float]:
    """The mean and standard deviation the engine standardises regression targets with (``(0, 1)`` otherwise).

    The model learns ``(y - mean) / std``; metrics are reported in the original units.

    Example:
        >>> from mixlab.data import ArrayData
        >>> part = ArrayData(torch.zeros(4, 3), torch.tensor([1.0, 2.0, 3.0, 4.0]))
        >>> mean, std = target_stats(DataSplits("t", "regression", part, None, part, None, (3,), None, {}))
        >>> mean, round(std, 4)
        (2.5, 1.291)
    """
    if splits.task != "regression" or not isinstance(splits.train, ArrayData):
        return 0.0, 1.0
    y = splits.train.y.double()
    std = float(y.std()) if y.numel() > 1 else 1.0
    return float(y.mean()), std if std > 0 else 1.0


def check_sampling(config: RunConfig, splits: DataSplits) -> None:
    """Refuse ``mix.sampling: class_balanced`` on data without classes, before anything is built.

    Example:
        >>> from mixlab.data import ArrayData, DataSplits
        >>> part = ArrayData(torch.zeros(4, 3), torch.zeros(4))
        >>> splits = DataSplits("t", "regression", part, None, part, None, (3,), None, {})
        >>> cfg = RunConfig.model_validate({"model": {"name": "mlp"}, "mix": {"loss": "mse", "sampling": "class_balanced"}})
        >>> check_sampling(cfg, splits)
        Traceback (most recent call last):
        ...
        mixlab.errors.MixlabValueError: mix.sampling 'class_balanced' draws samples by class frequency; dataset 't' is a regression task. Use mix.sampling: uniform
    """
    if config.mix.sampling == "class_balanced" and splits.task != "classification":
        raise MixlabValueError(
            f"mix.sampling 'class_balanced' draws samples by class frequency; dataset {splits.name!r} is a "
            f"{splits.task} task. Use mix.sampling: uniform"
        )


def _loader(
    config: RunConfig,
    part: Any,
    dist: DistInfo,
    *,
    train: bool,
    target_mean: float,
    target_scale: float,
    pairing: CMixupPairing | None = None,
) -> TensorLoader:
    """The split's batches; with a fitted ``pairing``, each batch is its anchors followed by their partners.

    With ``mix.sampling: class_balanced`` the training batches are class-balanced draws (evaluation stays uniform).
    """
    balanced = train and config.mix.sampling == "class_balanced"
    if balanced and pairing is not None:
        raise MixlabValueError(
            "mix.sampling 'class_balanced' cannot be combined with the dataset-scope c_mixup pairing: its loader "
            "draws each anchor's partner itself. Use mix.sampling: uniform, or pairing 'c_mixup_batch'"
        )
    common = {
        "batch_size": config.train.batch_size if train else config.train.eval_batch_size,
        "shuffle": train,
        "drop_last": train,
        "device": dist.device,
        "seed": config.train.seed,
        "rank": dist.rank,
        "world_size": dist.world_size,
    }
    if balanced:
        common.pop("shuffle")  # the class-balanced draw is random by itself
    if isinstance(part, ArrayData):
        y = loop_targets(part, target_mean, target_scale)
        if pairing is not None:
            return PartnerTensorLoader(part.x, y, pairing, **common)
        return ClassBalancedTensorLoader(part.x, y, **common) if balanced else TensorLoader(part.x, y, **common)
    if balanced:
        return ClassBalancedFolderLoader(part, part.labels, workers=config.data.workers, **common)
    batches = None
    if pairing is not None:
        order = {k: v for k, v in common.items() if k != "device"}
        batches = PartnerBatchSampler(pairing, **order)
    return FolderLoader(part, workers=config.data.workers, batch_sampler=batches, **common)


def _final_metrics(trainer: Trainer, history: list[dict[str, Any]]) -> dict[str, Any]:
    last = dict(history[-1]) if history else {}
    last["epochs"] = trainer.state.epoch
    last["steps"] = trainer.state.step
    last["total_train_time_s"] = sum(r.get("epoch_time_s", 0.0) for r in history)
    return last
