"""Run configs: YAML files validated by pydantic before anything starts, with ``--set`` overrides.

Every key is checked: unknown keys, wrong types and out-of-range values fail
with the key's dotted path, the value seen and what is accepted. Names of
datasets, models, mixers, losses and schedules are checked against the
registries, and a mixer's options by building it.

Example:
    >>> cfg = RunConfig.model_validate({"train": {"epochs": 2}, "mix": {"method": "cutmix"}})
    >>> cfg.train.epochs, cfg.mix.method, cfg.model.name
    (2, 'cutmix', 'cnn_small')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mixlab.errors import MixlabError, MixlabValueError

LOSSES = ("ce", "bce", "decoupled", "regmixup", "rankmixup", "mse")
SCHEDULES = ("always", "probability", "warmup", "stop_after", "alternate", "ramp")
NO_MIXING = "none"


class ConfigError(MixlabValueError):
    """A config that cannot be run: one line per problem, each with its key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    """Batched on-device augmentation of the training split."""

    crop_padding: int = Field(0, ge=0, description="zero padding of the random crop, in pixels (0: no crop)")
    hflip: bool = Field(False, description="random horizontal flips")
    vflip: bool = Field(False, description="random vertical flips")
    normalize: bool = Field(True, description="per-channel standardisation with the training split's statistics")


class DataConfig(_Strict):
    """Which dataset, where to find it, and how to split, subsample and corrupt it."""

    name: str = "fashion_mnist"
    root: str | None = Field(None, description="looked in first, before $MIXLAB_DATA and the system locations")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    subset_per_class: int | None = Field(None, gt=0)
    imbalance_ratio: float | None = Field(
        None,
        ge=1.0,
        allow_inf_nan=False,
        description="long-tailed train split (after the subset): class c keeps n_max * ratio ** (-c / (K - 1))",
    )
    classes: list[int] | None = Field(
        None, min_length=2, description="keep only these classes (every split), relabelled 0..k-1 in this order"
    )
    label_noise: float = Field(0.0, ge=0.0, le=1.0)
    noise_kind: Literal["symmetric", "flip"] = "symmetric"
    split_seed: int | None = Field(None, ge=0, description="seed of the split/subset/imbalance/noise draws (train.seed if unset)")
    options: dict[str, Any] = Field(default_factory=dict, description="reader options, e.g. path/target for csv")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    workers: int = Field(2, ge=0, description="DataLoader workers for datasets read lazily from disk")

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from mixlab.data import list_datasets

        return _known("dataset", name, list_datasets())

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes: list[int] | None) -> list[int] | None:
        from mixlab.data.splits import check_classes

        return _as_value_error(check_classes, classes)


class ModelConfig(_Strict):
    """The backbone and its constructor options."""

    name: str = "cnn_small"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from mixlab.models import is_known_model, list_models

        return name if is_known_model(name) else _known("model", name, list_models())


class ScheduleConfig(_Strict):
    """One schedule; several in a list must all be active (their α strengths multiply)."""

    kind: Literal["always", "probability", "warmup", "stop_after", "alternate", "ramp"] = "always"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _buildable(self) -> ScheduleConfig:
        from mixlab.engine.builders import build_schedule

        _as_value_error(build_schedule, [self])
        return self


class MixConfig(_Strict):
    """The mixing method (``none`` for plain training), its loss and its schedule."""

    method: str = NO_MIXING
    options: dict[str, Any] = Field(default_factory=dict, description="mixer options, e.g. alpha, p, lam_mode")
    loss: Literal["ce", "bce", "bce_softmax", "decoupled", "regmixup", "rankmixup", "mse"] = "ce"
    loss_options: dict[str, Any] = Field(default_factory=dict)
    smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing folded into the targets")
    schedule: list[ScheduleConfig] = Field(default_factory=list)
    # None (the default) means uniform: configs saved before this key existed compare equal to new ones
    sampling: Literal["uniform", "class_balanced"] | None = Field(
        None,
        description="how each epoch draws the training samples the mixer receives: uniform (the default; each "
        "once, shuffled) or class_balanced (with replacement, probability inverse to class frequency: the "
        "resampling that selective mixup performs implicitly, Teney et al. 2023)",
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        from mixlab.methods import list_mixers

        return _known("mixer", method, [NO_MIXING, *list_mixers()])

    @model_validator(mode="after")
    def _buildable(self) -> MixConfig:
        from mixlab.engine.builders import build_mixer, check_loss_options

        mixer = _as_value_error(build_mixer, self, None) if self.method != NO_MIXING else None
        _as_value_error(check_loss_options, self.loss, self.loss_options, mixer)
        return self


class OptimConfig(_Strict):
    """Optimiser and learning-rate schedule (stepped every batch; warm-up is linear)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(5e-4, ge=0.0)
    lr_schedule: Literal["cosine", "step", "linear", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    milestones: list[int] = Field(
        default_factory=list, description="epochs at which a step schedule multiplies by gamma"
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    min_lr: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> OptimConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs name: sgd and momentum > 0")
        if self.lr_schedule == "step" and not self.milestones:
            raise ValueError("lr_schedule: step needs milestones (epochs), e.g. [100, 150]")
        return self


class TrainConfig(_Strict):
    """How long, on what, and how precisely to train."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(128, gt=0, description="per process; the global batch is this times the number of ranks")
    eval_batch_size: int = Field(1000, gt=0)
    seed: int = Field(0, ge=0)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    amp: Literal["off", "auto", "bf16", "fp16"] = Field("off", description="auto: fp16/bf16 on CUDA, off on CPU")
    channels_last: Literal["auto", "on", "off"] = "auto"
    grad_clip: float | None = Field(None, gt=0.0, description="max global gradient norm")
    eval_every: int = Field(1, gt=0, description="evaluate every N epochs (and always after the last)")
    max_steps_per_epoch: int | None = Field(None, gt=0, description="cap on steps per epoch (quick trials)")
    progress: Literal["auto", "on", "off"] = "auto"
    tensorboard: bool = False
    threads: int | None = Field(None, gt=0, description="CPU threads for torch (default: torch's choice)")
    deterministic: bool = Field(False, description="deterministic kernels (cuDNN, cuBLAS): exact resume on CUDA, slower")

    @field_validator("progress", "channels_last", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # YAML reads a bare on/off as a boolean
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        base, _, index = device.partition(":")
        if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not index.isdigit())):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps; got {device!r}")
        return device


class RunConfig(_Strict):
    """A whole training run.

    Example:
        >>> RunConfig().data.name
        'fashion_mnist'
    """

    name: str | None = Field(None, description="a label for the run (defaults to the config file's name)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.mix.loss in ("decoupled", "rankmixup", "regmixup") and self.mix.method == NO_MIXING:
            raise ValueError(f"mix.loss {self.mix.loss!r} needs a mixing method; mix.method is 'none'")
        return self


# ------------------------------------------------------------------ loading


def load_config(
    source: str | os.PathLike | dict | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Read a YAML file (or a dict), apply ``key.path=value`` overrides, and validate.

    Override values are parsed as YAML (``3`` is an int, ``[1, 2]`` a list,
    ``null`` is None). Raises :class:`ConfigError` listing every problem.

    Example:
        >>> load_config({"train": {"epochs": 5}}, ["train.epochs=3", "mix.method=mixup"]).train.epochs
        3
    """
    where = "config"
    if source is None:
        raw: dict = {}
    elif isinstance(source, dict):
        raw = source
    else:
        where = str(source)
        raw = _read_yaml(Path(source))
    raw = apply_overrides(raw, overrides)
    if raw.get("name") is None and where != "config":
        raw["name"] = Path(where).stem
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (data, model, mix, optim, train); got {type(raw).__name__}"
        )
    return raw


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A deep copy of ``raw`` with each ``a.b.c=value`` set (value parsed as YAML).

    Example:
        >>> apply_overrides({"train": {"epochs": 5}}, ["train.epochs=3", "mix.options.alpha=0.2"])
        {'train': {'epochs': 3}, 'mix': {'options': {'alpha': 0.2}}}
    """
    result = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set expects key.path=value, e.g. train.epochs=3; got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: depth + 1])} is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
    return result


def format_validation_error(err: ValidationError, where: str = "config") -> str:
    """One line per problem: ``key.path: what is wrong; got VALUE`` (unknown keys list the accepted ones)."""
    lines = [f"{where}: {err.error_count()} problem(s):"]
    for problem in err.errors():
        path = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = f"unknown key; accepted: {', '.join(_section_keys(problem['loc'][:-1]))}"
        seen = problem.get("input")
        shown = "" if isinstance(seen, dict) or problem["type"] == "missing" else f"; got {seen!r}"
        lines.append(f"  {path}: {message}{shown}")
    return "\n".join(lines)


def _section_keys(loc: tuple) -> list[str]:
    """The keys accepted by the config section at ``loc`` (e.g. ``("train",)`` or ``("mix", "schedule", 0)``)."""
    section: Any = RunConfig
    for part in loc:
        if isinstance(part, int):  # an item of a list of sections
            continue
        field = section.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *get_args(annotation)]
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not models:
            return []
        section = models[0]
    return sorted(section.model_fields)


def config_to_dict(config: RunConfig) -> dict:
    """The fully resolved config as plain JSON-able data (defaults filled in).

    Example:
        >>> config_to_dict(RunConfig())["train"]["epochs"]
        10
    """
    return config.model_dump(mode="json")


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs, with both values.

    Example:
        >>> config_diff({"train": {"epochs": 3, "seed": 0}}, {"train": {"epochs": 5, "seed": 0}})
        ['train.epochs: 3 -> 5']
    """
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(config_diff(a, b, path + "."))
        elif a != b:
            diffs.append(f"{path}: {a!r} -> {b!r}")
    return diffs


def _known(kind: str, name: str, known: list[str]) -> str:
    if name not in known:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")
    return name


def _as_value_error(build: Any, *args: Any) -> Any:
    """Run a builder, turning mixlab's errors into the ValueError pydantic reports with the key path."""
    try:
        return build(*args)
    except MixlabError as err:
        raise ValueError(str(err)) from None
