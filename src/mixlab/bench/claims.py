"""Claims: published findings about mixup, each tested at CPU scale by a benchmark suite and a decision rule.

A claim file (``configs/claims/<name>.yaml``) names the paper and its figure, the
suite that is the experiment (``configs/suites/claim_<name>.yaml``, run through
the same results store as ``mixlab bench``) and one or more *checks*: a method, a
baseline, a statistic and the direction the paper reports. Each check's 95 %
interval of ``method − baseline`` (runs paired by seed) decides it:

- per-sample test statistics (``top1``, ``nll``, ``brier``, ``ece``; ``rmse``,
  ``mae``, ``mse``): the hull of the paired bootstrap over test samples and the
  t-interval over seeds (:func:`mixlab.evaluate.paired.compare_predictions`);
- final run metrics (``fgsm_acc``, ``train_time_s``, ...) and epoch metrics of
  the training log (``test_acc`` with ``epoch: N``): the t-interval over seeds
  of the per-seed differences, or of the ratios − 1 with ``relative: true``.

A check expecting ``higher`` is *reproduced* when its interval lies above
``+margin``, *not reproduced* when it lies below zero (or within
``±equivalence``, when set), and *inconclusive* otherwise; ``lower`` is the
mirror image; ``same`` is reproduced when the interval lies within
``±equivalence`` and not reproduced when it lies entirely beyond it. A claim is
reproduced when every check is, not reproduced when any is not.

Every claim file, and its suite's plan, is validated before any training starts.

Example:
    >>> check_verdict("higher", 0.004, 0.021)
    'reproduced'
    >>> check_verdict("same", -0.004, 0.021, equivalence=0.01)
    'inconclusive'
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mixlab.bench.records import RunRecord
from mixlab.bench.runner import NullDisplay, run_suite, same_config
from mixlab.bench.store import ResultStore
from mixlab.bench.suite import RunSpec, SuitePlan, load_suite, plan_suite
from mixlab.data.registry import get_spec
from mixlab.errors import MixlabError, MixlabValueError
from mixlab.evaluate.catalog import METRICS
from mixlab.evaluate.paired import RESAMPLES, Interval, compare_predictions, t_interval
from mixlab.evaluate.predictions import STATISTICS

#: where claims named without a path are looked up, in order (a source checkout's configs/claims last).
CLAIM_DIRS = (Path("configs") / "claims", Path(__file__).resolve().parents[3] / "configs" / "claims")
#: the fewest seeds a claim's suite may have: a t-interval over two seeds is too wide to decide much.
MIN_SEEDS = 3
#: the longest a claim's suite may take (minutes on an idle 2-core CPU), as ``budget_minutes`` declares it.
MAX_BUDGET_MINUTES = 15.0

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
#: the verdicts, from best to worst news for the claim.
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)

#: statistics computed from each run's stored per-sample test predictions (compared sample by sample).
PER_SAMPLE_STATISTICS: tuple[str, ...] = tuple(dict.fromkeys(s for task in STATISTICS.values() for s in task))
#: catalog metrics the report derives but the store does not hold (and what to use instead).
_DERIVED = {"step_ratio": "compare images_per_s or train_time_s with relative: true"}
#: final run metrics the store holds (the metric catalog's keys), compared by a t-interval over seeds.
FINAL_METRICS: tuple[str, ...] = tuple(k for k in METRICS if k not in _DERIVED and k not in PER_SAMPLE_STATISTICS)
#: metrics the training loop logs per epoch (mixlab.engine.loop: the training epoch's figures, then each
#: evaluated split's loss and accuracy, or its regression errors); a check names the epoch with ``epoch: N``.
EPOCH_METRICS: tuple[str, ...] = (
    "train_loss",
    "train_acc",
    "lr",
    "images_per_s",
    "epoch_time_s",
    *(f"{split}_{name}" for split in ("val", "test") for name in ("loss", "acc", "mse", "rmse", "mae")),
)


class ClaimError(MixlabValueError):
    """A claim file is missing or invalid, or its suite cannot be planned; raised before any training."""


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonBlank = Annotated[str, AfterValidator(_non_blank)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paper(_Strict):
    """The paper a claim comes from, where in it, its own figure and its setting.

    Example:
        >>> p = Paper(authors="Zhang et al.", title="mixup", venue="ICLR 2018", arxiv="1710.09412", where="Table 2",
        ...           figure="-3.3 points of test error", setting="CIFAR-10, PreAct-ResNet-18, 200 epochs")
        >>> p.citation
        'Zhang et al., ICLR 2018, arXiv:1710.09412'
    """

    authors: NonBlank
    title: NonBlank
    venue: NonBlank
    arxiv: str | None = None
    where: NonBlank
    figure: NonBlank
    setting: NonBlank

    @field_validator("arxiv", mode="before")
    @classmethod
    def _arxiv_id(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(
                'write the arXiv id in quotes (arxiv: "1710.09412"): YAML read it as a number, which drops '
                "trailing zeros"
            )
        if isinstance(value, str) and not _is_arxiv_id(value):
            raise ValueError('expected an arXiv id such as "1710.09412" (or "1710.09412v2", "cs/0601001")')
        return value

    @property
    def citation(self) -> str:
        """Authors, venue and arXiv id, as the claims table shows them."""
        arxiv = f", arXiv:{self.arxiv}" if self.arxiv else ""
        return f"{self.authors}, {self.venue}{arxiv}"


def _is_arxiv_id(text: str) -> bool:
    return re.fullmatch(r"(\d{4}\.\d{4,5}|[a-z-]+(\.[A-Z]{2})?/\d{7})(v\d+)?", text) is not None


class ClaimCheck(_Strict):
    """One comparison of a claim: ``method`` against ``baseline`` in ``statistic``, and the rule deciding it.

    See the module docstring for the statistics and the verdict rules.

    Example:
        >>> c = ClaimCheck(label="mixup beats ERM", method="mixup", baseline="erm", statistic="top1", expect="higher")
        >>> c.kind, c.margin, c.equivalence
        ('per-sample', 0.0, None)
    """

    label: NonBlank
    dataset: str | None = None
    model: str | None = None
    method: NonBlank
    baseline: NonBlank
    statistic: str
    epoch: int | None = None
    relative: bool = False
    expect: Literal["higher", "lower", "same"]
    margin: float = 0.0
    equivalence: float | None = None

    @field_validator("statistic")
    @classmethod
    def _known_statistic(cls, value: str) -> str:
        if value in _DERIVED:
            raise ValueError(f"{value} is derived by the report, not stored: {_DERIVED[value]}")
        if value not in (*PER_SAMPLE_STATISTICS, *FINAL_METRICS, *EPOCH_METRICS):
            raise ValueError(
                f"unknown statistic; per-sample statistics: {', '.join(PER_SAMPLE_STATISTICS)}; final metrics: "
                f"{', '.join(FINAL_METRICS)}; epoch metrics (with epoch: N): {', '.join(EPOCH_METRICS)}"
            )
        return value

    @field_validator("epoch")
    @classmethod
    def _positive_epoch(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("epochs count from 1 (the training log's first epoch is epoch 1)")
        return value

    @field_validator("margin")
    @classmethod
    def _non_negative_margin(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("margin must be a finite number >= 0: how far beyond zero, in the expected direction, "
                             "the interval must lie")  # fmt: skip
        return value

    @field_validator("equivalence")
    @classmethod
    def _positive_equivalence(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise ValueError("equivalence must be a finite number > 0: the largest difference that counts as none")
        return value

    @model_validator(mode="after")
    def _rule_can_be_evaluated(self) -> ClaimCheck:
        problems = []
        if self.statistic in PER_SAMPLE_STATISTICS and self.epoch is not None:
            problems.append(
                f"epoch: {self.statistic} is a per-sample statistic of the final model's test predictions; it has "
                f"no epoch (got epoch {self.epoch}): remove epoch, or name an epoch metric such as test_acc"
            )
        elif self.epoch is None and self.statistic not in (*PER_SAMPLE_STATISTICS, *FINAL_METRICS):
            problems.append(f"epoch: {self.statistic} is an epoch metric of the training log: say which epoch's "
                            "value to compare (epoch: N)")  # fmt: skip
        elif self.epoch is not None and self.statistic not in EPOCH_METRICS:
            problems.append(
                f"epoch: {self.statistic} is a final metric, not logged per epoch (got epoch {self.epoch}): remove "
                f"epoch; epoch metrics: {', '.join(EPOCH_METRICS)}"
            )
        if self.relative and self.statistic in PER_SAMPLE_STATISTICS:
            problems.append(f"relative: {self.statistic} is compared as a difference (method − baseline); "
                            "relative: true is for final and epoch metrics such as costs")  # fmt: skip
        if self.expect == "same" and self.equivalence is None:
            problems.append("equivalence: expect: same needs an equivalence bound (the largest difference that "
                            "counts as the same), e.g. equivalence: 0.01")  # fmt: skip
        if self.expect == "same" and self.margin != 0.0:
            problems.append(f"margin: has no meaning with expect: same (got {self.margin}); the equivalence bound "
                            "decides: remove margin")  # fmt: skip
        if self.method == self.baseline:
            problems.append(f"baseline: equal to method {self.method!r}; a check compares two different methods")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def kind(self) -> str:
        """How the check's interval is computed: ``per-sample``, ``final`` or ``epoch``."""
        if self.statistic in PER_SAMPLE_STATISTICS:
            return "per-sample"
        return "final" if self.epoch is None else "epoch"


class Claim(_Strict):
    """A claim file (see the module docstring and ``configs/claims/``).

    Example:
        >>> claim = Claim.model_validate(yaml.safe_load(EXAMPLE_CLAIM))
        >>> claim.name, claim.checks[0].expect
        ('mixup_label_noise', 'higher')
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    statement: NonBlank
    paper: Paper
    regime: NonBlank
    suite: NonBlank
    budget_minutes: float
    checks: list[ClaimCheck] = Field(min_length=1)

    @field_validator("budget_minutes")
    @classmethod
    def _within_budget(cls, value: float) -> float:
        if not 0.0 < value <= MAX_BUDGET_MINUTES:
            raise ValueError(f"budget_minutes must be > 0 and <= {MAX_BUDGET_MINUTES:g} (the measured wall time "
                             "of the whole suite on an idle 2-core CPU)")  # fmt: skip
        return value

    @field_validator("checks")
    @classmethod
    def _unique_labels(cls, checks: list[ClaimCheck]) -> list[ClaimCheck]:
        labels = [c.label for c in checks]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"check labels must be unique; repeated: {', '.join(repeated)}")
        return checks


#: a complete claim file, for examples and tests.
EXAMPLE_CLAIM = """
name: mixup_label_noise
statement: mixup reduces the memorisation of corrupted labels
paper:
  authors: Zhang, Cisse, Dauphin & Lopez-Paz
  title: "mixup: Beyond Empirical Risk Minimization"
  venue: ICLR 2018
  arxiv: "1710.09412"
  where: Table 2
  figure: "CIFAR-10, 20 % noise: ERM 23.6 % best-epoch test error, mixup (alpha 8) 15.0 %"
  setting: CIFAR-10, PreAct-ResNet-18, 200 epochs, symmetric label noise
regime: Fashion-MNIST subset, small CNN, 40 % noise, enough epochs for ERM to memorise the noise.
suite: claim_mixup_label_noise
budget_minutes: 6
checks:
  - label: mixup vs ERM, test top-1 with 40 % label noise
    method: mixup
    baseline: erm
    statistic: top1
    expect: higher
"""


# ------------------------------------------------------------------ finding and loading claim files


def claim_path(name_or_path: str | os.PathLike) -> Path:
    """The claim file for a name (looked up in :data:`CLAIM_DIRS`) or a path (``my_claim.yaml``).

    Example:
        >>> claim_path("no_such_claim")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mixlab.bench.claims.ClaimError: unknown claim 'no_such_claim'; known: ...
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ClaimError(f"claim file {str(path)!r} does not exist")
        return path
    for folder in CLAIM_DIRS:
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    raise ClaimError(f"unknown claim {str(name_or_path)!r}; known: {', '.join(list_claims()) or '(none found)'}")


def list_claims() -> list[str]:
    """Names of the claims found in :data:`CLAIM_DIRS` (the working directory's first).

    Example:
        >>> isinstance(list_claims(), list)
        True
    """
    return sorted({p.stem for folder in CLAIM_DIRS if folder.is_dir() for p in folder.glob("*.yaml")})


def load_claim(name_or_path: str | os.PathLike) -> Claim:
    """Read and validate one claim file (its suite is checked by :func:`prepare_claim`).

    Every problem is reported at once, each naming the file and the key.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "mixup_label_noise.yaml"
        ...     _ = path.write_text(EXAMPLE_CLAIM)
        ...     load_claim(path).paper.citation
        'Zhang, Cisse, Dauphin & Lopez-Paz, ICLR 2018, arXiv:1710.09412'
    """
    path = claim_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ClaimError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ClaimError(f"{path}: expected a mapping with name, statement, paper, ...; got {type(raw).__name__}")
    try:
        claim = Claim.model_validate(raw)
    except ValidationError as error:
        raise ClaimError(_format_errors(error, path)) from None
    if claim.name != path.stem:
        raise ClaimError(f"{path}: name: must equal the file's stem {path.stem!r}; got {claim.name!r}")
    return claim


def _format_errors(error: ValidationError, path: Path) -> str:
    """One line per problem: ``key.path: what is wrong; got VALUE``, unknown keys listing the accepted ones."""
    lines = [f"claim file {str(path)!r}: {error.error_count()} problem(s):"]
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = f"unknown key; accepted: {', '.join(_accepted_keys(problem['loc'][:-1]))}"
        seen = problem.get("input")
        shown = "" if isinstance(seen, dict) or problem["type"] == "missing" else f"; got {seen!r}"
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def _accepted_keys(loc: tuple) -> list[str]:
    """The keys of the claim-file section at ``loc`` (e.g. ``("checks", 0)``)."""
    section: type[BaseModel] = Claim
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = section.model_fields[part].annotation
        nested = [c for c in (annotation, *get_args(annotation)) if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        section = nested[0]
    return sorted(section.model_fields)


# ------------------------------------------------------------------ checking a claim against its suite


@dataclass(frozen=True)
class PlannedClaim:
    """A valid claim, its file, and its suite expanded into runs; every check names its dataset and model.

    Example:
        >>> PlannedClaim.__dataclass_fields__.keys()
        dict_keys(['claim', 'path', 'plan'])
    """

    claim: Claim
    path: Path
    plan: SuitePlan

    @property
    def suite(self) -> str:
        """The name of the claim's suite (the store's key for its runs)."""
        return self.plan.suite.name


def prepare_claim(name_or_path: str | os.PathLike, *, data_root: str | os.PathLike | None = None) -> PlannedClaim:
    """Load a claim, plan its suite and check that every check can be evaluated on the suite's runs.

    Refused (each problem naming the file and the key): a suite with fewer than
    :data:`MIN_SEEDS` seeds; a method or baseline the suite does not run; a
    dataset or model left unnamed when the suite has several; an epoch the runs
    do not train or evaluate; a per-sample statistic of the other task; a
    dataset replaced by its fallback (a claim is tested on its own data only).

    Example (shell)::

        mixlab claims --list
    """
    claim = load_claim(name_or_path)
    path = claim_path(name_or_path)
    try:
        plan = plan_suite(load_suite(claim.suite), data_root=data_root)
    except MixlabError as error:
        raise ClaimError(f"claim file {str(path)!r}: suite: {error}") from None
    problems, checks = _plan_problems(claim, plan)
    if problems:
        listing = "\n".join(f"  {p}" for p in problems)
        raise ClaimError(
            f"claim file {str(path)!r}: {len(problems)} problem(s) with suite {plan.suite.name!r}:\n{listing}"
        )
    return PlannedClaim(claim.model_copy(update={"checks": checks}), path, plan)


def prepare_claims(
    names: Sequence[str] | None = None, *, data_root: str | os.PathLike | None = None
) -> list[PlannedClaim]:
    """:func:`prepare_claim` for each name (every claim found when ``None``); all problems reported together.

    Example:
        >>> prepare_claims(["no_such_claim"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mixlab.bench.claims.ClaimError: 1 claim(s) cannot be run:
        unknown claim 'no_such_claim'; known: ...
    """
    chosen = list(dict.fromkeys(names)) if names else list_claims()
    if not chosen:
        raise ClaimError(f"no claim files found in {', '.join(str(d) for d in CLAIM_DIRS)}")
    planned, problems = [], []
    for name in chosen:
        try:
            planned.append(prepare_claim(name, data_root=data_root))
        except MixlabError as error:
            problems.append(str(error))
    if problems:
        raise ClaimError(f"{len(problems)} claim(s) cannot be run:\n" + "\n".join(problems))
    return planned


def _plan_problems(claim: Claim, plan: SuitePlan) -> tuple[list[str], list[ClaimCheck]]:
    """What makes the claim's checks impossible to evaluate on the plan's runs; the checks with dataset/model named."""
    problems = []
    seeds = plan.suite.seeds
    if len(seeds) < MIN_SEEDS:
        problems.append(f"suite: {plan.suite.name!r} has {len(seeds)} seed(s) {seeds}; a claim needs at least "
                        f"{MIN_SEEDS} (the t-interval over seeds carries the training's randomness)")  # fmt: skip
    problems += [f"suite: {notice}; a claim is tested on its own data only" for notice in plan.notices]
    labels = [m.name for m in plan.suite.methods]
    checks = []
    for index, check in enumerate(claim.checks):
        where = f"checks.{index} ({check.label})"
        found = _check_problems(check, plan, labels)
        problems += [f"{where}: {p}" for p in found[0]]
        checks.append(found[1])
    return problems, checks


def _check_problems(check: ClaimCheck, plan: SuitePlan, labels: list[str]) -> tuple[list[str], ClaimCheck]:
    problems = [
        f"{key}: {label!r} is not a method of the suite; its methods: {', '.join(labels)}"
        for key, label in (("method", check.method), ("baseline", check.baseline))
        if label not in labels
    ]
    dataset = _resolve("dataset", check.dataset, sorted({r.dataset for r in plan.runs}), problems)
    models = sorted({r.model for r in plan.runs if r.dataset == dataset})
    model = _resolve("model", check.model, models, problems) if dataset else None
    if problems:
        return problems, check
    resolved = check.model_copy(update={"dataset": dataset, "model": model})
    runs = [
        r for r in plan.runs if (r.dataset, r.model) == (dataset, model) and r.method in (check.method, check.baseline)
    ]
    for label in (check.method, check.baseline):
        if not any(r.method == label for r in runs):
            problems.append(f"method {label!r} has no runs on {dataset}/{model} (it is limited to other models)")
    task = get_spec(dataset).task
    if check.kind == "per-sample" and task in STATISTICS and check.statistic not in STATISTICS[task]:
        problems.append(f"statistic: {check.statistic!r} is not a statistic of {task} predictions ({dataset}); "
                        f"known: {', '.join(STATISTICS[task])}")  # fmt: skip
    if check.kind == "epoch":
        problems += [p for r in runs if (p := _epoch_problem(check, r))][:1]
    return problems, resolved


def _resolve(key: str, named: str | None, available: list[str], problems: list[str]) -> str | None:
    """The check's dataset (or model): the one named, or the suite's only one."""
    if named is None:
        if len(available) == 1:
            return available[0]
        problems.append(f"{key}: the suite runs several ({', '.join(available)}); say which one the check compares")
        return None
    if named not in available:
        problems.append(f"{key}: {named!r} is not run by the suite; it runs: {', '.join(available) or '(none)'}")
        return None
    return named


def _epoch_problem(check: ClaimCheck, spec: RunSpec) -> str | None:
    train = spec.config.train
    epoch = check.epoch or 0
    if epoch > train.epochs:
        return f"epoch: {epoch} is past the runs' last epoch ({train.epochs})"
    evaluated = epoch == train.epochs or epoch % train.eval_every == 0
    if check.statistic.startswith(("val_", "test_")) and not evaluated:
        return (f"epoch: {check.statistic} is logged only on evaluated epochs (every {train.eval_every}, and the "
                f"last, {train.epochs}); epoch {epoch} is not one")  # fmt: skip
    return None


# ------------------------------------------------------------------ verdicts


def check_verdict(
    expect: str, low: float, high: float, *, margin: float = 0.0, equivalence: float | None = None
) -> str:
    """The verdict of one check from its interval ``[low, high]`` of ``method − baseline``.

    - ``higher``: reproduced if ``low > margin``; not reproduced if ``high < 0``, or
      if ``equivalence`` is set and the interval lies within ``±equivalence``
      (checked after "reproduced": an interval clearing the margin reproduces);
      else inconclusive. ``lower`` is the mirror image.
    - ``same``: reproduced if the interval lies within ``±equivalence``; not
      reproduced if it lies entirely beyond it; else inconclusive.

    Example:
        >>> check_verdict("lower", -0.03, -0.01, margin=0.005), check_verdict("lower", -0.03, 0.01)
        ('reproduced', 'inconclusive')
        >>> check_verdict("higher", -0.004, 0.006, equivalence=0.01)
        'not reproduced'
    """
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise MixlabValueError(f"an interval needs finite bounds low <= high; got [{low}, {high}]")
    within = equivalence is not None and -equivalence <= low and high <= equivalence
    if expect == "higher":
        if low > margin:
            return REPRODUCED
        if high < 0.0 or within:
            return NOT_REPRODUCED
    elif expect == "lower":
        if high < -margin:
            return REPRODUCED
        if low > 0.0 or within:
            return NOT_REPRODUCED
    elif expect == "same":
        if equivalence is None:
            raise MixlabValueError("expect 'same' needs an equivalence bound")
        if within:
            return REPRODUCED
        if low > equivalence or high < -equivalence:
            return NOT_REPRODUCED
    else:
        raise MixlabValueError(f"expect must be one of higher, lower, same; got {expect!r}")
    return INCONCLUSIVE


def claim_verdict(verdicts: Iterable[str]) -> str:
    """Reproduced if every check is, not reproduced if any is not, else (or with no checks) inconclusive.

    Example:
        >>> claim_verdict(["reproduced", "inconclusive"]), claim_verdict(["inconclusive", "not reproduced"])
        ('inconclusive', 'not reproduced')
    """
    verdicts = list(verdicts)
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return INCONCLUSIVE


# ------------------------------------------------------------------ evaluating a claim on stored runs


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: its interval of ``method − baseline`` (or ratio − 1), the means, and the verdict.

    ``reason`` says why a check is inconclusive without an interval (runs missing,
    failed, or stored without predictions). ``dataset`` and ``model`` are the ones compared.

    Example:
        >>> check = ClaimCheck(label="c", method="mixup", baseline="erm", statistic="top1", expect="higher")
        >>> CheckResult(check, INCONCLUSIVE, reason="no runs").interval is None
        True
    """

    check: ClaimCheck
    verdict: str
    interval: Interval | None = None
    method_value: float | None = None
    baseline_value: float | None = None
    seeds: tuple[int, ...] = ()
    per_seed: tuple[float, ...] = ()
    dataset: str | None = None
    model: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ClaimResult:
    """A claim's outcome: each check's result, the claim's verdict and what went wrong on the way.

    ``error`` is set when the claim's suite could not be run or its runs not read
    (the verdict then rests on what the store held); ``notices`` say what else the
    reader should know (stored runs of an older suite version left out);
    ``wall_time_s`` sums the wall times of the claim's finished runs.

    Example:
        >>> claim = Claim.model_validate(yaml.safe_load(EXAMPLE_CLAIM))
        >>> ClaimResult(claim, (), INCONCLUSIVE, error="no store").verdict
        'inconclusive'
    """

    claim: Claim
    checks: tuple[CheckResult, ...]
    verdict: str
    error: str | None = None
    notices: tuple[str, ...] = ()
    wall_time_s: float | None = None
    finished_runs: int = 0
    total_runs: int | None = None


def evaluate_claim(
    claim: Claim,
    records: Sequence[RunRecord],
    *,
    seeds: Sequence[int] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> ClaimResult:
    """Decide each check of ``claim`` from the suite's stored runs ``records`` (with predictions), paired by seed.

    Args:
        records: the runs of the claim's suite (``ResultStore.records(suite, with_predictions=True)``).
        seeds: the seeds every compared method must have finished (the suite's); by default
            those found among the records of the check's two methods.
        resamples, seed: the paired bootstrap's resamples and seed (per-sample statistics).

    A check missing a run, with a failed or unfinished run, or with a run stored
    without predictions (a per-sample statistic) is inconclusive, saying why.

    Example:
        >>> claim = Claim.model_validate(yaml.safe_load(EXAMPLE_CLAIM))
        >>> result = evaluate_claim(claim, [])
        >>> result.verdict, result.checks[0].reason
        ('inconclusive', 'no runs of mixup and erm in the store')
    """
    results = []
    for check in claim.checks:
        try:
            results.append(evaluate_check(check, records, seeds=seeds, resamples=resamples, seed=seed))
        except MixlabError as error:  # e.g. two runs' predictions are not on the same test set
            results.append(CheckResult(check, INCONCLUSIVE, reason=str(error)))
    finished = [r for r in records if r.finished]
    wall = sum(r.final.get("wall_time_s", 0.0) for r in finished) if finished else None
    return ClaimResult(
        claim, tuple(results), claim_verdict(r.verdict for r in results), wall_time_s=wall,
        finished_runs=len(finished), total_runs=len(records),
    )  # fmt: skip


def evaluate_check(
    check: ClaimCheck,
    records: Sequence[RunRecord],
    *,
    seeds: Sequence[int] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> CheckResult:
    """One check of a claim (see :func:`evaluate_claim`).

    Example:
        >>> check = ClaimCheck(label="c", method="mixup", baseline="erm", statistic="train_time_s", relative=True,
        ...                    expect="higher")
        >>> runs = [RunRecord("s", i, f"d/m/{m}/seed{s}", "d", "m", m, s, "finished", final={"train_time_s": t})
        ...         for i, (m, s, t) in enumerate([("erm", 0, 10.0), ("erm", 1, 10.0), ("erm", 2, 10.0),
        ...                                        ("mixup", 0, 12.0), ("mixup", 1, 12.5), ("mixup", 2, 11.5)])]
        >>> result = evaluate_check(check, runs)
        >>> result.verdict, round(result.interval.estimate, 3), result.seeds
        ('reproduced', 0.2, (0, 1, 2))
    """
    labels = (check.method, check.baseline)
    relevant = [r for r in records if r.method in labels]
    if not relevant:
        return _Inconclusive(check, check.dataset, check.model)(f"no runs of {' and '.join(labels)} in the store")
    dataset, relevant, ambiguous = _narrow(relevant, "dataset", check.dataset)
    model, relevant, ambiguous = _narrow(relevant, "model", check.model) if not ambiguous else (None, [], ambiguous)
    inconclusive = _Inconclusive(check, dataset, model)
    if ambiguous:
        return inconclusive(ambiguous)
    by_run = {(r.method, r.seed): r for r in relevant}
    expected = sorted(seeds) if seeds is not None else sorted({r.seed for r in relevant})
    missing = [_missing(label, s, by_run.get((label, s))) for label in labels for s in expected]
    missing = [m for m in missing if m]
    if missing:
        return inconclusive("runs missing or not finished: " + "; ".join(missing))
    if len(expected) < MIN_SEEDS:
        return inconclusive(f"{len(expected)} seed(s) paired; a claim needs at least {MIN_SEEDS}")
    pairs = [(by_run[(check.method, s)], by_run[(check.baseline, s)]) for s in expected]
    if check.kind == "per-sample":
        return _per_sample_result(check, pairs, tuple(expected), inconclusive, resamples, seed)
    return _metric_result(check, pairs, tuple(expected), inconclusive)


def _narrow(records: list[RunRecord], key: str, named: str | None) -> tuple[str | None, list[RunRecord], str | None]:
    """The records of the dataset (or model) ``named``, or of the only one they hold; else why not."""
    found = sorted({getattr(r, key) for r in records})
    if named is None and len(found) > 1:
        return None, [], f"the runs span several {key}s ({', '.join(found)}): name the {key} in the check"
    chosen = found[0] if named is None else named
    kept = [r for r in records if getattr(r, key) == chosen]
    return chosen, kept, None if kept else f"no runs of the check's methods on {key} {chosen!r} in the store"


@dataclass(frozen=True)
class _Inconclusive:
    check: ClaimCheck
    dataset: str | None
    model: str | None

    def __call__(self, reason: str) -> CheckResult:
        return CheckResult(self.check, INCONCLUSIVE, dataset=self.dataset, model=self.model, reason=reason)


def _missing(label: str, seed: int, record: RunRecord | None) -> str | None:
    if record is None:
        return f"{label} seed {seed} not run"
    if record.finished:
        return None
    error = f": {record.error.splitlines()[0]}" if record.error else ""
    return f"{label} seed {seed} {record.status}{error}"


def _per_sample_result(
    check: ClaimCheck, pairs: list[tuple[RunRecord, RunRecord]], seeds: tuple[int, ...], inconclusive: _Inconclusive,
    resamples: int, seed: int,
) -> CheckResult:  # fmt: skip
    without = [f"{r.method} seed {r.seed}" for pair in pairs for r in pair if r.predictions is None]
    if without:
        return inconclusive(
            f"no stored test predictions for {', '.join(without)} (stored by an older mixlab: run them again to "
            f"compare {check.statistic} sample by sample)"
        )
    method = [m.predictions for m, _ in pairs]
    baseline = [b.predictions for _, b in pairs]
    difference = compare_predictions(method, baseline, [check.statistic], resamples=resamples, seed=seed)[
        check.statistic
    ]
    return _decided(
        check, difference.interval, inconclusive, seeds, difference.per_seed,
        float(np.mean([p.metric(check.statistic) for p in method])),
        float(np.mean([p.metric(check.statistic) for p in baseline])),
    )  # fmt: skip


def _metric_result(
    check: ClaimCheck, pairs: list[tuple[RunRecord, RunRecord]], seeds: tuple[int, ...], inconclusive: _Inconclusive
) -> CheckResult:
    values = {r.key: _metric_value(check, r) for pair in pairs for r in pair}
    absent = [key for key, value in values.items() if value is None or not math.isfinite(value)]
    if absent:
        what = check.statistic if check.epoch is None else f"{check.statistic} at epoch {check.epoch}"
        return inconclusive(f"{what} is not stored (or not finite) for {', '.join(absent)}")
    method = np.array([values[m.key] for m, _ in pairs])
    baseline = np.array([values[b.key] for _, b in pairs])
    if check.relative:
        if np.any(baseline == 0.0):
            return inconclusive(f"relative: a baseline {check.statistic} is 0; the ratio is undefined")
        per_seed = method / baseline - 1.0
    else:
        per_seed = method - baseline
    interval = t_interval(per_seed.tolist())
    assert interval is not None  # at least MIN_SEEDS pairs
    return _decided(
        check, interval, inconclusive, seeds, tuple(per_seed.tolist()), float(method.mean()), float(baseline.mean())
    )


def _metric_value(check: ClaimCheck, record: RunRecord) -> float | None:
    if check.epoch is None:
        return record.final.get(check.statistic)
    logged = next((e for e in record.epochs if int(e.get("epoch", -1)) == check.epoch), None)
    return None if logged is None else logged.get(check.statistic)


def _decided(
    check: ClaimCheck, interval: Interval, inconclusive: _Inconclusive, seeds: tuple[int, ...],
    per_seed: tuple[float, ...], method_value: float, baseline_value: float,
) -> CheckResult:  # fmt: skip
    verdict = check_verdict(
        check.expect, interval.low, interval.high, margin=check.margin, equivalence=check.equivalence
    )
    return CheckResult(
        check,
        verdict,
        interval,
        method_value,
        baseline_value,
        seeds,
        per_seed,
        inconclusive.dataset,
        inconclusive.model,
    )


# ------------------------------------------------------------------ running claims


def current_records(plan: SuitePlan, records: Sequence[RunRecord]) -> tuple[list[RunRecord], list[str]]:
    """The records of the plan's runs stored with the plan's config; and the keys stored with another config.

    A run of an older version of the suite (other epochs, say) is not evidence for this one.

    Example:
        >>> from mixlab.bench.suite import load_suite
        >>> current_records(plan_suite(load_suite("mnist1d")), [])
        ([], [])
    """
    specs = {spec.key: spec for spec in plan.runs}
    current, stale = [], []
    for record in records:
        spec = specs.get(record.key)
        if spec is None:
            continue
        if same_config(record.config, spec):
            current.append(record)
        else:
            stale.append(record.key)
    return current, stale


def run_claims(
    names: Sequence[str] | None,
    store: ResultStore,
    *,
    output: str | os.PathLike = "runs",
    workers: int = 1,
    data_root: str | os.PathLike | None = None,
    train: bool = True,
    display: Callable[[PlannedClaim], NullDisplay] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[ClaimResult]:
    """Run each claim's suite through ``store`` (finished runs are skipped), then evaluate the claim.

    Every claim is validated and its suite planned before any training starts
    (:func:`prepare_claims` raises :class:`ClaimError` listing every problem).
    A claim whose suite fails to run is evaluated on what the store holds, with
    its ``error`` set; the others go on.

    Args:
        names: claim names or files (every claim found when ``None`` or empty).
        output: run directories go to ``output/<suite>/<run key>``.
        workers: runs trained at once (see :func:`mixlab.bench.runner.run_suite`).
        train: ``False`` evaluates what the store holds, training nothing.
        display: makes the progress display of each claim's suite.

    Example (shell)::

        mixlab claims mixup_label_noise --workers 2
    """
    planned = prepare_claims(names, data_root=data_root)
    return [
        _run_claim(item, store, output, workers, train, display, resamples=resamples, seed=seed) for item in planned
    ]


def _run_claim(
    item: PlannedClaim,
    store: ResultStore,
    output: str | os.PathLike,
    workers: int,
    train: bool,
    display: Callable[[PlannedClaim], NullDisplay] | None,
    **bootstrap: int,
) -> ClaimResult:
    error = None
    if train:
        try:
            run_suite(item.plan, store, output=output, workers=workers, display=display(item) if display else None)
        except Exception as failure:  # one claim's failure must not stop the others
            error = f"suite {item.suite!r} did not run: {type(failure).__name__}: {failure}"
    try:
        records, stale = current_records(item.plan, store.records(item.suite, with_predictions=True))
        result = evaluate_claim(item.claim, records, seeds=item.plan.suite.seeds, **bootstrap)
    except Exception as failure:  # an unreadable store row must not stop the other claims either
        reason = f"the runs of suite {item.suite!r} could not be evaluated: {type(failure).__name__}: {failure}"
        return ClaimResult(item.claim, (), INCONCLUSIVE, error="; ".join(filter(None, (error, reason))))
    notices = tuple(item.plan.notices)
    if stale:
        notices += (f"{len(stale)} stored run(s) of an older version of suite {item.suite!r} were left out "
                    f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}): run the claim to redo them",)  # fmt: skip
    return replace(result, error=error, notices=notices, total_runs=len(item.plan.runs))


# ------------------------------------------------------------------ listing claims


@dataclass(frozen=True)
class ClaimListing:
    """What ``mixlab claims --list`` shows of one claim: the claim and its suite's size, or why it is invalid.

    Example:
        >>> ClaimListing("x", error="bad file").valid
        False
    """

    name: str
    claim: Claim | None = None
    runs: int | None = None
    suite: str | None = None
    measured_s: float | None = None
    finished_runs: int = 0
    error: str | None = None

    @property
    def valid(self) -> bool:
        """Whether the claim file and its suite are valid."""
        return self.error is None


def list_claim_details(
    names: Sequence[str] | None = None,
    *,
    store: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
) -> list[ClaimListing]:
    """Each claim with its suite's number of runs and, when ``store`` holds its finished runs, their wall time.

    Trains nothing and creates no store; an invalid claim is listed with its error.

    Example:
        >>> list_claim_details(["no_such_claim"])[0].error  # doctest: +ELLIPSIS
        "unknown claim 'no_such_claim'; known: ..."
    """
    listings = []
    opened = ResultStore(store) if store is not None and Path(store).is_file() else None
    try:
        for name in list(dict.fromkeys(names)) if names else list_claims():
            try:
                item = prepare_claim(name, data_root=data_root)
            except MixlabError as error:
                listings.append(ClaimListing(str(name), error=str(error)))
                continue
            measured, finished = None, 0
            if opened is not None:
                records = [r for r in current_records(item.plan, opened.records(item.suite))[0] if r.finished]
                finished = len(records)
                measured = sum(r.final.get("wall_time_s", 0.0) for r in records) if records else None
            listings.append(
                ClaimListing(item.claim.name, item.claim, len(item.plan.runs), item.suite, measured, finished)
            )
    finally:
        if opened is not None:
            opened.close()
    return listings


# ------------------------------------------------------------------ the claims report


def _is_percent(statistic: str) -> bool:
    info = METRICS.get(statistic)
    return info.percent if info is not None else statistic.endswith("_acc")


def _statistic_label(check: ClaimCheck) -> str:
    info = METRICS.get(check.statistic)
    label = info.label if info is not None else check.statistic
    return label if check.epoch is None else f"{label} at epoch {check.epoch}"


def format_value(statistic: str, value: float) -> str:
    """A statistic's value in its display units: accuracies in percent, times in seconds, others as they are.

    Example:
        >>> format_value("top1", 0.8512), format_value("train_time_s", 12.345), format_value("nll", 0.41234)
        ('85.12 %', '12.35 s', '0.4123')
    """
    info = METRICS.get(statistic)
    if _is_percent(statistic):
        return f"{value * 100:.2f} %"
    unit = f" {info.unit}" if info is not None and info.unit else ""
    return f"{value:.4g}{unit}"


def _difference_units(check: ClaimCheck) -> tuple[float, str]:
    """The scale and unit of a check's differences: percent of the baseline, points, or the metric's own unit."""
    if check.relative:
        return 100.0, " %"
    if _is_percent(check.statistic):
        return 100.0, " pts"
    info = METRICS.get(check.statistic)
    return 1.0, f" {info.unit}" if info is not None and info.unit else ""


def format_difference(check: ClaimCheck, interval: Interval) -> str:
    """``Δ [low, high]`` in the check's units: points for accuracies, percent for ratios, else the metric's own.

    Example:
        >>> check = ClaimCheck(label="c", method="mixup", baseline="erm", statistic="top1", expect="higher")
        >>> format_difference(check, Interval(0.0123, 0.0045, 0.0201))
        '+1.23 pts [+0.45, +2.01]'
    """
    scale, unit = _difference_units(check)
    digits = ".1f" if check.relative else ".2f" if _is_percent(check.statistic) else ".4g"

    def number(value: float) -> str:
        return f"{value * scale:+{digits}}"

    return f"{number(interval.estimate)}{unit} [{number(interval.low)}, {number(interval.high)}]"


def describe_check(result: CheckResult) -> str:
    """One line of a check's outcome: the difference, its interval, the two means and the verdict (or why none).

    Example:
        >>> check = ClaimCheck(label="mixup vs ERM", method="mixup", baseline="erm", statistic="top1", expect="higher")
        >>> describe_check(CheckResult(check, "reproduced", Interval(0.0123, 0.0045, 0.0201), 0.8512, 0.8389))
        'mixup vs ERM: mixup − erm, top-1 +1.23 pts [+0.45, +2.01] (mixup 85.12 %, erm 83.89 %): reproduced'
    """
    check = result.check
    compared = f"{check.method} / {check.baseline} − 1" if check.relative else f"{check.method} − {check.baseline}"
    head = f"{check.label}: {compared}, {_statistic_label(check)}"
    if result.interval is None:
        return f"{head}: {result.verdict} ({result.reason})"
    means = ""
    if result.method_value is not None and result.baseline_value is not None:
        means = (f" ({check.method} {format_value(check.statistic, result.method_value)}, "
                 f"{check.baseline} {format_value(check.statistic, result.baseline_value)})")  # fmt: skip
    return f"{head} {format_difference(check, result.interval)}{means}: {result.verdict}"


def _rule(check: ClaimCheck) -> str:
    """The decision rule in words, in the check's units."""
    scale, unit = _difference_units(check)
    if check.expect == "same":
        return f"same: within ±{check.equivalence * scale:g}{unit}"
    rule = f"{check.expect}" + (f" by more than {check.margin * scale:g}{unit}" if check.margin else "")
    if check.equivalence is not None:
        rule += f"; not reproduced within ±{check.equivalence * scale:g}{unit}"
    return rule


def claims_markdown(results: Sequence[ClaimResult]) -> str:
    """The claims table (claim, paper, the paper's figure, mixlab's figure with its 95 % interval, verdict),
    then each claim's details: setting, regime, rules, per-seed differences and anything that went wrong.

    Example:
        >>> claim = Claim.model_validate(yaml.safe_load(EXAMPLE_CLAIM))
        >>> print(claims_markdown([evaluate_claim(claim, [])]).splitlines()[2])
        | claim | paper | the paper's figure | mixlab (95 % interval) | verdict |
    """
    lines = [
        "# Claims",
        "",
        "| claim | paper | the paper's figure | mixlab (95 % interval) | verdict |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        claim = result.claim
        paper = f"{claim.paper.citation} ({claim.paper.where})"
        figures = "<br>".join(_cell(describe_check(c)) for c in result.checks) or _cell(result.error or "")
        lines.append(
            f"| **{claim.name}**: {_cell(claim.statement)} | {_cell(paper)} | {_cell(claim.paper.figure)} "
            f"| {figures} | **{result.verdict}** |"
        )
    lines += ["", _INTERVALS_NOTE, ""]
    for result in results:
        lines += _details_markdown(result)
    return "\n".join(lines) + "\n"


_INTERVALS_NOTE = (
    "Intervals are 95 % intervals of method − baseline over the suite's seeds (runs paired by seed): for per-sample "
    "test statistics the hull of the paired bootstrap over test samples and the t-interval over seeds, for other "
    "metrics the t-interval over seeds. Accuracies are in points (pts), ratios (method / baseline − 1) in percent."
)


def _details_markdown(result: ClaimResult) -> list[str]:
    claim = result.claim
    lines = [f"## {claim.name}: {result.verdict}", "", claim.statement, ""]
    lines.append(f"- paper: {claim.paper.authors}, \"{claim.paper.title}\", {claim.paper.venue}"
                 + (f", arXiv:{claim.paper.arxiv}" if claim.paper.arxiv else "") + f"; {claim.paper.where}")  # fmt: skip
    lines.append(f"- the paper's setting: {_line(claim.paper.setting)}")
    lines.append(f"- the paper's figure: {_line(claim.paper.figure)}")
    lines.append(f"- regime at CPU scale: {_line(claim.regime)}")
    lines.append(f"- suite: {claim.suite}; {_runs_and_time(result)}")
    for check_result in result.checks:
        check = check_result.check
        where = f" on {check_result.dataset}/{check_result.model}" if check_result.dataset else ""
        lines.append(f"- check{where}: {describe_check(check_result)}; rule: {_rule(check)}")
        if check_result.per_seed:
            scale, unit = _difference_units(check)
            per_seed = ", ".join(
                f"seed {s}: {d * scale:+.4g}{unit}"
                for s, d in zip(check_result.seeds, check_result.per_seed, strict=True)
            )
            lines.append(f"  - per seed: {per_seed}")
    if result.error:
        lines.append(f"- error: {_line(result.error)}")
    lines += [f"- note: {_line(n)}" for n in result.notices]
    return [*lines, ""]


def _runs_and_time(result: ClaimResult) -> str:
    total = f" of {result.total_runs}" if result.total_runs is not None else ""
    text = f"{result.finished_runs}{total} run(s) finished"
    if result.wall_time_s is not None:
        text += (f", {result.wall_time_s / 60:.1f} min of run wall time (budget {result.claim.budget_minutes:g} min "
                 "on an idle 2-core CPU)")  # fmt: skip
    return text


def _cell(text: str) -> str:
    return _line(text).replace("|", "\\|")


def _line(text: str) -> str:
    return " ".join(text.split())


def claims_html(results: Sequence[ClaimResult]) -> str:
    """The claims table and details as one standalone HTML page (no scripts, no external files).

    Example:
        >>> claim = Claim.model_validate(yaml.safe_load(EXAMPLE_CLAIM))
        >>> page = claims_html([evaluate_claim(claim, [])])
        >>> page.startswith("<!DOCTYPE html>"), "mixup_label_noise" in page
        (True, True)
    """
    rows = []
    for result in results:
        claim = result.claim
        checks = "".join(f"<li>{html.escape(describe_check(c))}</li>" for c in result.checks)
        if result.error:
            checks += f"<li class='error'>{html.escape(result.error)}</li>"
        rows.append(
            "<tr>"
            f"<td><b>{html.escape(claim.name)}</b><br>{html.escape(claim.statement)}</td>"
            f"<td>{html.escape(claim.paper.citation)}<br><i>{html.escape(claim.paper.title)}</i>, "
            f"{html.escape(claim.paper.where)}</td>"
            f"<td>{html.escape(claim.paper.figure)}</td>"
            f"<td><ul>{checks}</ul></td>"
            f"<td class='{result.verdict.replace(' ', '-')}'>{html.escape(result.verdict)}</td>"
            "</tr>"
        )
    details = "".join(_details_html(result) for result in results)
    return _PAGE.format(rows="\n".join(rows), note=html.escape(_INTERVALS_NOTE), details=details)


def _details_html(result: ClaimResult) -> str:
    items = _details_markdown(result)[4:]  # the bullet lines, after the heading and the statement
    bullets = "".join(f"<li>{html.escape(line.lstrip('- ').strip())}</li>" for line in items if line.strip())
    claim = result.claim
    return (
        f"<h2 id='{html.escape(claim.name)}'>{html.escape(claim.name)}: {html.escape(result.verdict)}</h2>"
        f"<p>{html.escape(claim.statement)}</p><ul>{bullets}</ul>"
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mixlab claims</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 0.4em; vertical-align: top; text-align: left; }}
ul {{ margin: 0; padding-left: 1.2em; }}
.reproduced {{ background: #dff0d8; }} .not-reproduced {{ background: #f2dede; }}
.inconclusive {{ background: #fcf8e3; }} .error {{ color: #a94442; }}
</style></head><body>
<h1>Claims</h1>
<table>
<tr><th>claim</th><th>paper</th><th>the paper's figure</th><th>mixlab (95 % interval)</th><th>verdict</th></tr>
{rows}
</table>
<p>{note}</p>
{details}
</body></html>
"""


def write_claims_report(results: Sequence[ClaimResult], report_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report_dir/claims.md`` and ``report_dir/claims.html``; return their paths.

    Example:
        >>> import tempfile
        >>> claim = Claim.model_validate(yaml.safe_load(EXAMPLE_CLAIM))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     sorted(p.name for p in write_claims_report([evaluate_claim(claim, [])], tmp).values())
        ['claims.html', 'claims.md']
    """
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "claims.md", "html": folder / "claims.html"}
    paths["markdown"].write_text(claims_markdown(results))
    paths["html"].write_text(claims_html(results))
    return paths


__all__ = [
    "CLAIM_DIRS",
    "EPOCH_METRICS",
    "FINAL_METRICS",
    "INCONCLUSIVE",
    "MIN_SEEDS",
    "NOT_REPRODUCED",
    "PER_SAMPLE_STATISTICS",
    "REPRODUCED",
    "CheckResult",
    "Claim",
    "ClaimCheck",
    "ClaimError",
    "ClaimListing",
    "ClaimResult",
    "Paper",
    "PlannedClaim",
    "check_verdict",
    "claim_path",
    "claim_verdict",
    "claims_html",
    "claims_markdown",
    "current_records",
    "describe_check",
    "evaluate_check",
    "evaluate_claim",
    "format_difference",
    "format_value",
    "list_claim_details",
    "list_claims",
    "load_claim",
    "prepare_claim",
    "prepare_claims",
    "run_claims",
    "write_claims_report",
]
