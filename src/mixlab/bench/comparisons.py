"""Paired comparisons between stored runs: every method against its suite's baseline, or any two runs.

A method's runs are paired with the baseline's runs of the same dataset, model
and seed, and compared on their stored per-sample test predictions with
:func:`mixlab.evaluate.paired.compare_predictions` (a paired bootstrap over the
test set, a t-interval over seeds, McNemar's test). Methods are then ranked in
**bands**: sorted by their difference from the baseline, each band starts
with the best method not yet placed and takes every following method whose
interval overlaps the band leader's; the baseline's own interval is the single
point 0. Methods in one band are not told apart by this benchmark.

Example:
    >>> rows = [("a", Interval(0.05, 0.03, 0.07)), ("b", Interval(0.04, 0.01, 0.06)), ("erm", Interval(0.0, 0.0, 0.0))]
    >>> rank_bands(rows, higher_is_better=True)
    {'a': 1, 'b': 1, 'erm': 2}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mixlab.bench.records import BASELINE_METHOD, RunRecord
from mixlab.errors import MixlabValueError
from mixlab.evaluate.catalog import metric_info
from mixlab.evaluate.paired import RESAMPLES, Interval, PairedComparison, compare_predictions

#: which statistic orders a board's bands, per task.
RANKING_STATISTIC = {"classification": "top1", "regression": "rmse"}


@dataclass(frozen=True)
class MethodComparison:
    """One method against the baseline on one (dataset, model): the seeds paired and what they showed."""

    dataset: str
    model: str
    method: str
    baseline: str
    seeds: tuple[int, ...]
    comparison: PairedComparison | None
    missing: str = ""  # why there is no comparison (no baseline run, no stored predictions, ...)

    @property
    def task(self) -> str | None:
        """The predictions' task, or ``None`` without a comparison."""
        if self.comparison is None:
            return None
        return "regression" if "rmse" in self.comparison.differences else "classification"


def compare_with_baseline(
    records: Iterable[RunRecord],
    baseline: str = BASELINE_METHOD,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[tuple[str, str, str], MethodComparison]:
    """Every method of ``records`` against ``baseline``, per (dataset, model), paired by seed.

    Only finished runs count; a seed missing on either side is left out of the
    pair. Records must carry predictions (``ResultStore.records(with_predictions=True)``).

    Returns:
        ``{(dataset, model, method): MethodComparison}`` for each method other than the baseline.
    """
    finished = [r for r in records if r.finished]
    groups: dict[tuple[str, str, str], dict[int, RunRecord]] = {}
    for record in finished:
        groups.setdefault((record.dataset, record.model, record.method), {})[record.seed] = record
    out = {}
    for (dataset, model, method), runs in groups.items():
        if method == baseline:
            continue
        base = groups.get((dataset, model, baseline), {})
        out[(dataset, model, method)] = _paired(dataset, model, method, baseline, runs, base, resamples, seed)
    return out


def _paired(
    dataset: str,
    model: str,
    method: str,
    baseline: str,
    runs: dict[int, RunRecord],
    base: dict[int, RunRecord],
    resamples: int,
    seed: int,
) -> MethodComparison:
    seeds = tuple(sorted(set(runs) & set(base)))
    identity = {"dataset": dataset, "model": model, "method": method, "baseline": baseline, "seeds": seeds}
    if not seeds:
        return MethodComparison(**identity, comparison=None, missing=f"no finished {baseline} run with the same seed")
    pairs = [(runs[s].predictions, base[s].predictions) for s in seeds]
    if any(a is None or b is None for a, b in pairs):
        return MethodComparison(
            **identity, comparison=None, missing="runs stored without per-sample predictions (an older mixlab)"
        )
    try:
        comparison = compare_predictions([a for a, _ in pairs], [b for _, b in pairs], resamples=resamples, seed=seed)
    except MixlabValueError as error:  # e.g. a different test set: say so rather than compare
        return MethodComparison(**identity, comparison=None, missing=str(error))
    return MethodComparison(**identity, comparison=comparison)


def compare_runs(a: RunRecord, b: RunRecord, *, resamples: int = RESAMPLES, seed: int = 0) -> PairedComparison:
    """``a − b`` on their stored test predictions (a paired bootstrap and, for classifiers, McNemar's test).

    Raises a ``MixlabValueError`` saying why when either run has no predictions or they were not
    evaluated on the same test set.
    """
    for record in (a, b):
        if record.predictions is None:
            why = "it is not finished" if not record.finished else "it was stored by an older mixlab; run it again"
            raise MixlabValueError(f"run {record.run_id} ({record.suite}:{record.key}) has no stored predictions: {why}")
    return compare_predictions([a.predictions], [b.predictions], resamples=resamples, seed=seed)


def rank_bands(rows: Sequence[tuple[str, Interval]], *, higher_is_better: bool) -> dict[str, int]:
    """Band numbers (1 = best) for methods given their interval of difference from a common baseline.

    Sorted best first by the estimate, a band begins with the best method not
    yet placed and takes each following method whose interval overlaps the
    band leader's.

    Example:
        >>> rank_bands([("x", Interval(-0.1, -0.2, -0.05)), ("erm", Interval(0.0, 0.0, 0.0))], higher_is_better=True)
        {'erm': 1, 'x': 2}
    """
    ordered = sorted(rows, key=lambda row: (-row[1].estimate if higher_is_better else row[1].estimate, row[0]))
    bands: dict[str, int] = {}
    leader: Interval | None = None
    band = 0
    for name, interval in ordered:
        if leader is None or interval.high < leader.low or interval.low > leader.high:
            band, leader = band + 1, interval
        bands[name] = band
    return bands


def board_bands(
    comparisons: Iterable[MethodComparison], baseline: str, statistic: str | None = None
) -> dict[str, int]:
    """The bands of one board's methods (one dataset and model) by ``statistic`` (default: top-1, or RMSE).

    Methods without a comparison are left out; the baseline is placed at 0 with a zero-width interval.
    """
    usable = [c for c in comparisons if c.comparison is not None]
    if not usable:
        return {}
    statistic = statistic or RANKING_STATISTIC[usable[0].task or "classification"]
    rows = [(c.method, c.comparison[statistic].interval) for c in usable]
    rows.append((baseline, Interval(0.0, 0.0, 0.0)))
    return rank_bands(rows, higher_is_better=bool(metric_info(statistic).higher_is_better))


def format_difference(statistic: str, interval: Interval) -> str:
    """``+1.23 [+0.40, +2.05]`` in the statistic's display units (points for accuracies), ``*`` when clear.

    Example:
        >>> format_difference("top1", Interval(0.0123, 0.004, 0.0205))
        '+1.23 [+0.40, +2.05] *'
    """
    info = metric_info(statistic)
    decimals = info.decimals if not info.percent else 2
    number = lambda value: f"{info.scaled(value):+.{decimals}f}"  # noqa: E731
    text = f"{number(interval.estimate)} [{number(interval.low)}, {number(interval.high)}]"
    return text + " *" if interval.excludes_zero else text


def format_p_value(p: float) -> str:
    """A p-value to two significant digits, ``<1e-4`` below that.

    Example:
        >>> format_p_value(0.04321), format_p_value(3e-9)
        ('0.043', '<1e-4')
    """
    return "<1e-4" if p < 1e-4 else f"{p:.2g}"


def describe_run(record: RunRecord) -> str:
    """``id 7: quick:fashion_mnist/cnn_small/mixup/seed0`` (how ``mixlab compare`` names a run)."""
    return f"id {record.run_id}: {record.suite}:{record.key}"


def comparison_rows(a: RunRecord, b: RunRecord, comparison: PairedComparison) -> list[tuple[str, str, str, str]]:
    """Rows ``(statistic, a's value, b's value, a − b [95 % interval])`` in display units, for ``mixlab compare``."""
    rows = []
    for statistic, difference in comparison.differences.items():
        info = metric_info(statistic)
        values = [info.format(r.predictions.metric(statistic)) for r in (a, b)]
        rows.append((info.header, *values, format_difference(statistic, difference.interval)))
    return rows
