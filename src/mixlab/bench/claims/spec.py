"""The claim-file format: its models and validation, finding and loading claim files, and checking a claim
against the suite that is its experiment.

A claim file (``configs/claims/<name>.yaml``) names the paper and its figure, the
suite that is the experiment and one or more checks (see :mod:`mixlab.bench.claims`
and ``configs/claims/``). :func:`load_claim` validates the file on its own;
:func:`prepare_claim` plans its suite and checks that every check can be
evaluated on the suite's runs, before any training starts.

Example:
    >>> import yaml
    >>> claim = Claim.model_validate(yaml.safe_load(EXAMPLE_CLAIM))
    >>> claim.suite, claim.checks[0].kind
    ('claim_mixup_label_noise', 'per-sample')
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mixlab.bench.suite import RunSpec, SuitePlan, load_suite, named_yaml, plan_suite, read_yaml_mapping, yaml_names
from mixlab.data.registry import get_spec
from mixlab.errors import MixlabError, MixlabValueError
from mixlab.evaluate.catalog import METRICS
from mixlab.evaluate.predictions import STATISTICS

#: where claims named without a path are looked up, in order (a source checkout's configs/claims last).
CLAIM_DIRS = (Path("configs") / "claims", Path(__file__).resolve().parents[4] / "configs" / "claims")
#: the fewest seeds a claim's suite may have: a t-interval over two seeds is too wide to decide much.
MIN_SEEDS = 3
#: the longest a claim's suite may take (minutes on an idle 2-core CPU), as ``budget_minutes`` declares it.
MAX_BUDGET_MINUTES = 15.0

#: statistics computed from each run's stored per-sample test predictions (compared sample by sample).
PER_SAMPLE_STATISTICS: tuple[str, ...] = tuple(dict.fromkeys(s for task in STATISTICS.values() for s in task))
#: catalog metrics the report derives but the store does not hold (and what to use instead).
_DERIVED = {
    "step_ratio": "compare images_per_s or train_time_s with relative: true",
    "corr_mce": "compare corr_acc (or corr_acc/<corruption>) instead",
    "mmd": "it is stored per λ bin: name mmd/lam_<lo>_<hi>, or mmd_mixed_real",
    "mmd_p": "it is stored per λ bin: name mmd_p/lam_<lo>_<hi>",
}
#: final run metrics the store holds (the metric catalog's keys), compared by a t-interval over seeds.
FINAL_METRICS: tuple[str, ...] = tuple(k for k in METRICS if k not in _DERIVED and k not in PER_SAMPLE_STATISTICS)
#: metrics the training loop logs per epoch; a check names the epoch with ``epoch: N``. The keys are those of
#: the record ``mixlab.engine.loop.Trainer.train_epoch`` returns (``train_acc`` for classification only), then
#: those of ``Trainer.evaluate`` (``loss``, ``acc``; or ``mse``, ``rmse``, ``mae`` for regression) prefixed by
#: the split name in ``Trainer.fit`` (``mixlab.engine.run`` evaluates ``val`` and ``test``). The loop declares
#: them nowhere as data, so they are listed here: keep the two in step.
EPOCH_METRICS: tuple[str, ...] = (
    "train_loss",
    "train_acc",
    "lr",
    "images_per_s",
    "epoch_time_s",
    *(f"{split}_{name}" for split in ("val", "test") for name in ("loss", "acc", "mse", "rmse", "mae")),
)


# ------------------------------------------------------------------ the claim-file format


class ClaimError(MixlabValueError):
    """A claim file is missing or invalid, or its suite cannot be planned; raised before any training.

    Example:
        >>> isinstance(ClaimError("bad claim"), ValueError)
        True
    """


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
        """Authors, venue and arXiv id, as the claims table shows them (example: the class's)."""
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
    expect: Literal["higher", "lower", "same", "not_lower", "not_higher"]
    margin: float = 0.0
    equivalence: float | None = None

    @field_validator("statistic")
    @classmethod
    def _known_statistic(cls, value: str) -> str:
        if value in _DERIVED:
            raise ValueError(f"{value} is derived by the report, not stored: {_DERIVED[value]}")
        if value not in (*PER_SAMPLE_STATISTICS, *FINAL_METRICS, *EPOCH_METRICS) and not _is_part_key(value):
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
        elif self.epoch is None and self.statistic not in (*PER_SAMPLE_STATISTICS, *FINAL_METRICS) and not _is_part_key(
            self.statistic
        ):
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
        if self.expect in ("not_lower", "not_higher") and self.equivalence is not None:
            problems.append(f"equivalence: has no meaning with expect: {self.expect}; its tolerance is margin "
                            "(how far the wrong way the difference may go and still count)")  # fmt: skip
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
        """How the check's interval is computed: ``per-sample``, ``final`` or ``epoch``.

        Example:
            >>> ClaimCheck(label="c", method="mixup", baseline="erm", statistic="test_acc", epoch=3,
            ...            expect="higher").kind
            'epoch'
        """
        if self.statistic in PER_SAMPLE_STATISTICS:
            return "per-sample"
        return "final" if self.epoch is None else "epoch"


class Claim(_Strict):
    """A claim file (see the module docstring and ``configs/claims/``).

    Example:
        >>> import yaml
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
        mixlab.bench.claims.spec.ClaimError: unknown claim 'no_such_claim'; known: ...
    """
    return named_yaml(name_or_path, CLAIM_DIRS, "claim", ClaimError)


def list_claims() -> list[str]:
    """Names of the claims found in :data:`CLAIM_DIRS` (the working directory's first).

    Example:
        >>> isinstance(list_claims(), list)
        True
    """
    return yaml_names(CLAIM_DIRS)


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
    raw = read_yaml_mapping(path, ClaimError, "name, statement, paper, ...")
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
        """The name of the claim's suite: the results store's key for its runs
        (:meth:`mixlab.bench.store.ResultStore.records`)."""
        return self.plan.suite.name


def prepare_claim(name_or_path: str | os.PathLike, *, data_root: str | os.PathLike | None = None) -> PlannedClaim:
    """Load a claim, plan its suite and check that every check can be evaluated on the suite's runs.

    Refused (each problem naming the file and the key): a suite with fewer than
    :data:`MIN_SEEDS` seeds; a method or baseline the suite does not run; a
    dataset or model left unnamed when the suite has several; an epoch the runs
    do not train or evaluate; a per-sample statistic of the other task; a
    dataset replaced by its fallback (a claim is tested on its own data only).

    Example:
        >>> prepare_claim("no_such_claim")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mixlab.bench.claims.spec.ClaimError: unknown claim 'no_such_claim'; known: ...

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
        mixlab.bench.claims.spec.ClaimError: 1 claim(s) cannot be run:
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


def _is_part_key(statistic: str) -> bool:
    """A per-source, per-corruption or per-bin analysis key (``ood_auroc_msp/digits``, ``mmd/lam_0.0_0.2``)."""
    base, _, part = statistic.partition("/")
    return bool(part) and base in _PART_KEYED


#: the analysis metrics stored per source, target, corruption or λ bin as ``<base>/<part>``.
_PART_KEYED = (
    "ood_auroc_msp", "ood_auroc_energy", "ood_fpr95_msp", "corr_acc", "logme", "hscore", "leep", "probe_acc",
    "mmd", "mmd_p", "analysis_time_s",
)  # fmt: skip
