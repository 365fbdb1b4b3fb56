"""Verdicts: deciding each check of a claim from its 95 % interval of ``method − baseline``, and the claim
from its checks, on the runs the results store holds (paired by seed).

Example:
    >>> check_verdict("higher", 0.004, 0.021), claim_verdict(["reproduced", "reproduced"])
    ('reproduced', 'reproduced')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mixlab.bench.claims.spec import MIN_SEEDS, Claim, ClaimCheck
from mixlab.bench.records import RunRecord
from mixlab.errors import MixlabError, MixlabValueError
from mixlab.evaluate.paired import RESAMPLES, Interval, compare_predictions, t_interval

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
#: the verdicts, from best to worst news for the claim.
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


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
    - ``not_lower`` (non-inferiority: "does as well as"): reproduced if ``low > -margin``;
      not reproduced if ``high < -margin``; else inconclusive. ``not_higher`` is the mirror image.

    Example:
        >>> check_verdict("lower", -0.03, -0.01, margin=0.005), check_verdict("lower", -0.03, 0.01)
        ('reproduced', 'inconclusive')
        >>> check_verdict("higher", -0.004, 0.006, equivalence=0.01)
        'not reproduced'
        >>> check_verdict("not_lower", -0.01, 0.03, margin=0.02), check_verdict("not_lower", -0.05, -0.03, margin=0.02)
        ('reproduced', 'not reproduced')
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
    elif expect == "not_lower":
        if low > -margin:
            return REPRODUCED
        if high < -margin:
            return NOT_REPRODUCED
    elif expect == "not_higher":
        if high < margin:
            return REPRODUCED
        if low > margin:
            return NOT_REPRODUCED
    else:
        raise MixlabValueError(f"expect must be one of higher, lower, same, not_lower, not_higher; got {expect!r}")
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
        >>> import yaml
        >>> from mixlab.bench.claims import EXAMPLE_CLAIM
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
        >>> import yaml
        >>> from mixlab.bench.claims import EXAMPLE_CLAIM
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
