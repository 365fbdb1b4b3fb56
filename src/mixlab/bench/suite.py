"""Benchmark suites: datasets × models × methods × seeds, read from YAML and expanded into run configs.

A suite file looks like::

    name: quick
    description: ...
    base:                  # a partial run config shared by every run (data, optim, train sections)
      train: {epochs: 8, batch_size: 128}
    datasets:
      - name: fashion_mnist
        data: {subset_per_class: 1000, val_fraction: 0.05}
        fallback:          # used, with a notice, when this dataset's files cannot be found
          name: mnist1d
          models: [cnn1d]
    models: [cnn_small]
    methods:
      - name: erm          # a label; "erm" (no mixing) is the baseline of the step-time ratio
      - name: mixup
        mix: {method: mixup, options: {alpha: 1.0}}
      - name: transmix     # a method may be limited to some of the models (TransMix needs a ViT)
        mix: {method: transmix}
        models: [vit_tiny]
    seeds: [0]
    baseline: erm          # every method is compared with this one (default: erm)
    evaluate: {fgsm_eps: 0.00784, noise_std: 0.1}

Every run's config is validated when the suite is expanded, so an unknown
dataset, model, method or option fails before any training, listing the known ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mixlab.bench.records import BASELINE_METHOD
from mixlab.data.api import find_data
from mixlab.data.locate import DataNotFoundError
from mixlab.data.registry import get_spec
from mixlab.engine.config import ConfigError, RunConfig, apply_overrides, format_validation_error
from mixlab.errors import MixlabValueError
from mixlab.evaluate import EvalSettings, check_analyses

#: where suites named without a path are looked up, in order (a source checkout's configs/suites last).
SUITE_DIRS = (Path("configs") / "suites", Path(__file__).resolve().parents[3] / "configs" / "suites")
DEFAULT_SUITE = "quick"


class SuiteError(MixlabValueError):
    """A suite file is missing or invalid; raised before any run starts."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: the longest suite name or method label: each becomes a directory name under the output folder.
MAX_LABEL_LENGTH = 100
#: what a suite name or method label may hold (one path component; "." and ".." are refused by a validator).
LABEL_PATTERN = r"^[A-Za-z0-9_.+-]+$"


def _one_path_component(name: str) -> str:
    if name in (".", ".."):
        raise ValueError(f"{name!r} would name a directory outside the run's folder; use letters, digits, _ . + -")
    return name


class SuiteModel(_Strict):
    """A backbone entry: its name and options, and optimiser/training settings it needs (a ViT wants AdamW)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    optim: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)


class SuiteMethod(_Strict):
    """A method entry: a label, the run config's ``mix`` section (mixer, loss, schedule), optionally its models.

    ``models`` limits the method to those of the suite's (or dataset's) models
    with these names; ``None`` runs it on every model.
    """

    # a label names a run directory: one path component, well under the 255-byte file-name limit
    name: str = Field(pattern=LABEL_PATTERN, max_length=MAX_LABEL_LENGTH)
    description: str = ""
    mix: dict[str, Any] = Field(default_factory=dict)
    models: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _one_component(cls, name: str) -> str:
        return _one_path_component(name)


class SuiteDataset(_Strict):
    """A dataset entry: the ``data`` section, optional per-dataset models and settings, and a fallback."""

    name: str
    data: dict[str, Any] = Field(default_factory=dict)
    models: list[SuiteModel | str] | None = None
    optim: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    evaluate: dict[str, Any] = Field(default_factory=dict)
    fallback: SuiteDataset | None = None


class Suite(_Strict):
    """A benchmark suite (see the module docstring for the file format)."""

    name: str = Field(pattern=LABEL_PATTERN, max_length=MAX_LABEL_LENGTH)
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    datasets: list[SuiteDataset] = Field(min_length=1)
    models: list[SuiteModel | str] = Field(default_factory=lambda: ["cnn_small"])
    methods: list[SuiteMethod] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    evaluate: dict[str, Any] = Field(default_factory=dict)
    baseline: str = Field(BASELINE_METHOD, description="the method label every other method is compared with")

    @field_validator("name")
    @classmethod
    def _one_component(cls, name: str) -> str:
        return _one_path_component(name)

    @field_validator("methods")
    @classmethod
    def _unique_labels(cls, methods: list[SuiteMethod]) -> list[SuiteMethod]:
        labels = [m.name for m in methods]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"method labels must be unique; repeated: {', '.join(repeated)}")
        return methods

    @model_validator(mode="after")
    def _known_baseline(self) -> Suite:
        labels = [m.name for m in self.methods]
        if "baseline" in self.model_fields_set and self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is not one of the suite's methods: {', '.join(labels)}")
        return self

    @field_validator("seeds")
    @classmethod
    def _valid_seeds(cls, seeds: list[int]) -> list[int]:
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct and >= 0; got {seeds}")
        return seeds


@dataclass
class RunSpec:
    """One run of a suite: its key, identity, validated config and evaluation settings."""

    key: str
    dataset: str
    model: str
    method: str
    seed: int
    config: RunConfig
    evaluate: EvalSettings


@dataclass
class SuitePlan:
    """A suite expanded into runs, with notices (such as a dataset replaced by its fallback)."""

    suite: Suite
    runs: list[RunSpec]
    notices: list[str]


def suite_path(name_or_path: str | os.PathLike) -> Path:
    """The suite file for a name (``quick``) or a path (``my_suite.yaml``).

    Example:
        >>> suite_path("quick").name
        'quick.yaml'
    """
    return named_yaml(name_or_path, SUITE_DIRS, "suite", SuiteError)


def named_yaml(
    name_or_path: str | os.PathLike, folders: tuple[Path, ...], what: str, error: type[MixlabValueError]
) -> Path:
    """The YAML file for a name (looked up as ``NAME.yaml`` in ``folders``, in order) or a path.

    Raises ``error`` naming the file that does not exist, or the unknown name and the known ones.

    Example:
        >>> named_yaml("quick", SUITE_DIRS, "suite", SuiteError).name
        'quick.yaml'
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise error(f"{what} file {str(path)!r} does not exist")
        return path
    for folder in folders:
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = ", ".join(yaml_names(folders)) or "(none found)"
    raise error(f"unknown {what} {str(name_or_path)!r}; known: {known}")


def read_yaml_mapping(path: Path, error: type[MixlabValueError], keys: str) -> dict[str, Any]:
    """The mapping a YAML file holds; ``error`` names the file when it is not UTF-8, not YAML, or not a mapping.

    Example:
        >>> read_yaml_mapping(suite_path("quick"), SuiteError, "name, ...")["name"]
        'quick'
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as failure:
        raise error(f"{path}: not UTF-8 text ({failure})") from None
    except yaml.YAMLError as failure:
        raise error(f"{path}: not valid YAML: {failure}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping with {keys}; got {type(raw).__name__}")
    return raw


def yaml_names(folders: tuple[Path, ...]) -> list[str]:
    """The names (file stems) of the YAML files in ``folders``, sorted, each once.

    Example:
        >>> "quick" in yaml_names(SUITE_DIRS)
        True
    """
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})


def list_suites() -> list[str]:
    """Names of the suites found in :data:`SUITE_DIRS`.

    Example:
        >>> {"quick", "standard"} <= set(list_suites())
        True
    """
    return yaml_names(SUITE_DIRS)


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """Read and validate a suite file (not yet expanded; see :func:`plan_suite`).

    Example:
        >>> load_suite("quick").datasets[0].name
        'fashion_mnist'
    """
    path = suite_path(name_or_path)
    raw = read_yaml_mapping(path, SuiteError, "name, datasets, models, methods")
    raw.setdefault("name", path.stem)
    try:
        return Suite.model_validate(raw)
    except ValidationError as error:
        raise SuiteError(format_validation_error(error, f"suite {str(path)!r}")) from None


def plan_suite(
    suite: Suite,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    data_root: str | os.PathLike | None = None,
    methods: list[str] | None = None,
) -> SuitePlan:
    """Expand a suite into validated runs; every problem is reported before any run starts.

    Args:
        overrides: ``key.path=value`` settings applied to every run's config last.
        data_root: looked in first for every dataset (``data.root``).
        methods: keep only these method labels (all when ``None``).

    Example:
        >>> plan = plan_suite(load_suite("quick"), methods=["erm", "mixup"], overrides=["train.epochs=1"])
        >>> [run.method for run in plan.runs]
        ['erm', 'mixup']
    """
    chosen = _choose_methods(suite, methods)
    notices: list[str] = []
    runs: list[RunSpec] = []
    problems: list[str] = []
    for entry in suite.datasets:
        dataset = _available_dataset(entry, suite, data_root, notices)
        for model in dataset.models or suite.models:
            model = SuiteModel(name=model) if isinstance(model, str) else model
            for seed in suite.seeds:  # seed-major: each seed's methods run side by side, so drift in the
                for method in chosen:  # machine's speed hits every method alike, and seeds complete one by one
                    if method.models is not None and model.name not in method.models:
                        continue
                    try:
                        runs.append(_run_spec(suite, dataset, model, method, seed, overrides, data_root))
                    except (ConfigError, SuiteError) as error:
                        problems.append(f"{dataset.name}/{model.name}/{method.name}: {error}")
    problems += _unused_method_models(suite, chosen)
    if problems:
        raise SuiteError(f"suite {suite.name!r} has {len(problems)} invalid run(s):\n" + "\n".join(problems))
    return SuitePlan(suite, runs, notices)


def _unused_method_models(suite: Suite, methods: list[SuiteMethod]) -> list[str]:
    """A method limited to models the suite does not train (a typo would silently drop its runs)."""
    entries = [*suite.models, *(m for d in suite.datasets for m in (d.models or []))]
    known = {m if isinstance(m, str) else m.name for m in entries}
    return [
        f"method {method.name!r}: models {sorted(set(method.models) - known)} are not among the suite's models "
        f"{sorted(known)}"
        for method in methods
        if method.models is not None and set(method.models) - known
    ]


def _choose_methods(suite: Suite, methods: list[str] | None) -> list[SuiteMethod]:
    if methods is None:
        return list(suite.methods)
    known = [m.name for m in suite.methods]
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SuiteError(f"suite {suite.name!r} has no method(s) {', '.join(unknown)}; its methods: {', '.join(known)}")
    return [m for m in suite.methods if m.name in methods]


def _available_dataset(
    entry: SuiteDataset, suite: Suite, data_root: str | os.PathLike | None, notices: list[str]
) -> SuiteDataset:
    """The entry itself when its files are found (or it needs none); else its fallback, with a notice."""
    root = data_root if data_root is not None else entry.data.get("root", suite.base.get("data", {}).get("root"))
    try:
        spec = get_spec(entry.name)
    except MixlabValueError as error:
        raise SuiteError(f"suite {suite.name!r}: {error}") from None
    if spec.kind != "files":
        return entry
    try:
        find_data(entry.name, root)
        return entry
    except DataNotFoundError as error:
        if entry.fallback is None:
            raise SuiteError(f"suite {suite.name!r} needs dataset {entry.name!r}, which was not found.\n{error}") from None
        how = f"; to get it: {error.hints[0]}" if error.hints else ""
        notices.append(
            f"dataset {entry.name!r} was not found ({len(error.searched)} places looked{how}): "
            f"running suite {suite.name!r} on {entry.fallback.name!r} instead"
        )
        return _available_dataset(entry.fallback, suite, data_root, notices)


def _run_spec(
    suite: Suite,
    dataset: SuiteDataset,
    model: SuiteModel,
    method: SuiteMethod,
    seed: int,
    overrides: list[str] | tuple[str, ...],
    data_root: str | os.PathLike | None,
) -> RunSpec:
    key = f"{dataset.name}/{model.name}/{method.name}/seed{seed}"
    raw = _merge(
        suite.base,
        {"name": f"{suite.name}/{key}", "data": {"name": dataset.name, **dataset.data}},
        {"optim": dataset.optim, "train": dataset.train},
        {"optim": model.optim, "train": model.train},
        {"model": {"name": model.name, "options": model.options}, "mix": method.mix, "train": {"seed": seed}},
    )
    if data_root is not None:
        raw["data"]["root"] = str(data_root)
    raw = apply_overrides(raw, overrides)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, "run config")) from None
    try:
        settings = EvalSettings.model_validate({**suite.evaluate, **dataset.evaluate})
    except ValidationError as error:
        raise SuiteError(format_validation_error(error, "evaluate")) from None
    try:
        check_analyses(config, settings)
    except MixlabValueError as error:
        raise SuiteError(str(error)) from None
    return RunSpec(key, dataset.name, model.name, method.name, seed, config, settings)


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge dicts, later layers winning."""
    result: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = _merge(result[key], value)
            elif isinstance(value, dict):
                result[key] = _merge(value)
            else:
                result[key] = value
    return result
