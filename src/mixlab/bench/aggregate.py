"""Benchmark leaderboards: the finished runs of a suite summarised over seeds, per (dataset, model).

:func:`aggregate` turns the runs into one :class:`Leaderboard` per (suite, dataset, model): one
row per method, mean and sample standard deviation over seeds of each metric in
:data:`LEADERBOARD_METRICS` (declared in :mod:`mixlab.evaluate.catalog`), ranked by top-1.
:func:`pool_reliability` and :func:`epoch_curve` pool what the plots draw over a row's runs.

Example:
    >>> runs = [RunRecord("s", i, f"k{i}", "digits", "mlp", m, i, "finished", final={"top1": t})
    ...         for i, (m, t) in enumerate([("erm", 0.90), ("mixup", 0.93), ("mixup", 0.95)])]
    >>> [(row.method, round(row.metrics["top1"].mean, 2)) for row in aggregate(runs)[0].rows]
    [('mixup', 0.94), ('erm', 0.9)]
"""

from __future__ import annotations

import math
import numbers
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mixlab.bench.comparisons import MethodComparison, board_bands, compare_with_baseline
from mixlab.bench.records import BASELINE_METHOD, RunRecord
from mixlab.evaluate.catalog import MetricInfo, metric_info
from mixlab.evaluate.paired import RESAMPLES

#: the leaderboard's columns, in table order; ``step_ratio`` is derived per run by :func:`run_metrics`.
LEADERBOARD_METRICS: tuple[MetricInfo, ...] = tuple(
    metric_info(key)
    for key in (
        "top1", "top5", "rmse", "mae", "nll", "ece", "ece_ts", "brier", "fgsm_acc", "noise_acc",
        "step_ratio", "images_per_s", "wall_time_s",
    )
)  # fmt: skip


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (None with one value) of a metric over seeds."""

    mean: float
    std: float | None
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarise ``values`` (at least one).

        Example:
            >>> Summary.of([1.0, 3.0])
            Summary(mean=2.0, std=1.4142135623730951, count=2)
        """
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class LeaderboardRow:
    """One method on a leaderboard: its rank (its band when the board is banded), seeds and metric summaries."""

    method: str
    seeds: int
    metrics: dict[str, Summary]
    rank: int | None = None


@dataclass
class Leaderboard:
    """The methods compared on one (dataset, model) of a suite, best first (top-1, or RMSE for regression).

    With stored predictions, ``differences`` holds each method's paired comparison with the
    ``baseline`` (:mod:`mixlab.bench.comparisons`), and ``banded`` says the rows' ranks are bands:
    methods whose intervals overlap share one.
    """

    dataset: str
    model: str
    rows: list[LeaderboardRow]
    suite: str
    baseline: str = BASELINE_METHOD
    differences: dict[str, MethodComparison] = field(default_factory=dict)
    banded: bool = False

    @property
    def title(self) -> str:
        """``dataset · model``."""
        return f"{self.dataset} · {self.model}"

    def columns(self) -> list[MetricInfo]:
        """The metrics of :data:`LEADERBOARD_METRICS` that at least one row has, in table order."""
        return [metric for metric in LEADERBOARD_METRICS if any(metric.key in row.metrics for row in self.rows)]

    def best(self, key: str) -> set[str]:
        """The method(s) with the best mean of metric ``key``; empty when none stands out (one value, all equal, no direction).

        Example:
            >>> rows = [LeaderboardRow("a", 1, {"nll": Summary(0.5, None, 1)}),
            ...         LeaderboardRow("b", 1, {"nll": Summary(0.4, None, 1)})]
            >>> Leaderboard("d", "m", rows, "s").best("nll")
            {'b'}
        """
        metric = metric_info(key)
        means = {row.method: row.metrics[key].mean for row in self.rows if key in row.metrics}
        if len(set(means.values())) < 2 or metric.higher_is_better is None:  # a lone value or a tie of all
            return set()
        target = max(means.values()) if metric.higher_is_better else min(means.values())
        return {method for method, mean in means.items() if mean == target}


# ------------------------------------------------------------------ aggregation


def baseline_images_per_s(records: Iterable[RunRecord]) -> dict[tuple[str, str, str], float]:
    """Median training images/s of the finished baseline runs, per (suite, dataset, model).

    Example:
        >>> runs = [RunRecord("s", i, "k", "d", "m", "erm", i, "finished", final={"images_per_s": v})
        ...         for i, v in enumerate([100.0, 300.0, 120.0])]
        >>> baseline_images_per_s(runs)
        {('s', 'd', 'm'): 120.0}
    """
    speeds: dict[tuple[str, str, str], list[float]] = {}
    for record in records:
        speed = _finite(record.final.get("images_per_s"))
        if record.finished and record.method == BASELINE_METHOD and speed is not None and speed > 0:
            speeds.setdefault(_board_key(record), []).append(speed)
    return {key: statistics.median(values) for key, values in speeds.items()}


def run_metrics(record: RunRecord, baselines: dict[tuple[str, str, str], float]) -> dict[str, float]:
    """The reported metrics of one run: its finite ``final`` values plus the derived ``step_ratio``.

    ``step_ratio`` is the baseline's images/s over the run's (1.3 = 30 % slower than the
    baseline); absent without a baseline for the run's (suite, dataset, model).

    Example:
        >>> run = RunRecord("s", 1, "k", "d", "m", "mixup", 0, "finished", final={"images_per_s": 80.0, "nll": 0.3})
        >>> run_metrics(run, {("s", "d", "m"): 100.0})
        {'nll': 0.3, 'images_per_s': 80.0, 'step_ratio': 1.25}
    """
    values = {metric.key: _finite(record.final.get(metric.key)) for metric in LEADERBOARD_METRICS}
    metrics = {key: value for key, value in values.items() if value is not None}
    baseline, speed = baselines.get(_board_key(record)), metrics.get("images_per_s")
    if baseline is not None and speed is not None and speed > 0:
        metrics["step_ratio"] = baseline / speed
    return metrics


def aggregate(
    records: Iterable[RunRecord],
    *,
    baseline: str = BASELINE_METHOD,
    resamples: int = RESAMPLES,
) -> list[Leaderboard]:
    """One :class:`Leaderboard` per (suite, dataset, model) of the finished ``records``.

    Each row is one method: mean and sample std over its seeds of every metric it has
    (``step_ratio`` is taken per run, then averaged). When the runs carry their test
    predictions, every method is compared with ``baseline`` (paired by seed:
    :func:`~mixlab.bench.comparisons.compare_with_baseline`) and ranked in bands by
    its difference in top-1 (RMSE for regression); otherwise ranked by mean top-1
    (RMSE), best first. Rows without the ranking metric come last, unranked. Boards
    are sorted by suite, dataset and model.
    """
    finished = [record for record in records if record.finished]
    baselines = baseline_images_per_s(finished)
    boards = []
    for (suite, dataset, model), runs in sorted(_group(finished, _board_key).items()):
        rows = [_row(method, group, baselines) for method, group in _group(runs, _method_key).items()]
        differences = _differences(runs, baseline, resamples)
        bands = board_bands(differences.values(), baseline)
        board = Leaderboard(dataset, model, _ranked(rows, bands), suite, baseline, differences, bool(bands))
        boards.append(board)
    return boards


def _differences(runs: list[RunRecord], baseline: str, resamples: int) -> dict[str, MethodComparison]:
    if not any(run.predictions is not None for run in runs):
        return {}
    comparisons = compare_with_baseline(runs, baseline, resamples=resamples)
    return {method: comparison for (_, _, method), comparison in sorted(comparisons.items())}


def _row(method: str, runs: list[RunRecord], baselines: dict[tuple[str, str, str], float]) -> LeaderboardRow:
    per_metric: dict[str, list[float]] = {}
    for run in runs:
        for key, value in run_metrics(run, baselines).items():
            per_metric.setdefault(key, []).append(value)
    summaries = {key: Summary.of(values) for key, values in per_metric.items()}
    return LeaderboardRow(method, len({run.seed for run in runs}), summaries)


def _ranked(rows: list[LeaderboardRow], bands: dict[str, int]) -> list[LeaderboardRow]:
    """Rows best first: by band when there are bands (then by the ranking metric), else by the metric alone."""
    key = "top1" if any("top1" in row.metrics for row in rows) else "rmse"
    sign = -1.0 if metric_info(key).higher_is_better else 1.0

    def order(row: LeaderboardRow) -> tuple[float, float, str]:
        summary = row.metrics.get(key)
        value = sign * summary.mean if summary else math.inf
        return (bands.get(row.method, math.inf) if bands else 0, value, row.method)

    rows = sorted(rows, key=order)
    for position, row in enumerate(rows, start=1):
        row.rank = (bands.get(row.method) if bands else position) if key in row.metrics else None
    return rows


def _board_key(record: RunRecord) -> tuple[str, str, str]:
    return (record.suite, record.dataset, record.model)


def _method_key(record: RunRecord) -> str:
    return record.method


def _group(records: Iterable[RunRecord], key: Callable[[RunRecord], Any]) -> dict[Any, list[RunRecord]]:
    groups: dict[Any, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return groups


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # NumPy scalars too
        return None
    return float(value) if math.isfinite(value) else None


# ------------------------------------------------------------------ what the plots pool over a row's runs


def pool_reliability(diagrams: Iterable[dict[str, list[float]] | None]) -> dict[str, list[float]] | None:
    """Pool reliability bins over runs: per bin, counts add up, confidence and accuracy are count-weighted.

    Bins are matched by their edges; empty bins and malformed diagrams are left out. None when no bin is left.

    Example:
        >>> a = {"lower": [0.5], "upper": [1.0], "confidence": [0.8], "accuracy": [0.6], "count": [1]}
        >>> b = {"lower": [0.5], "upper": [1.0], "confidence": [0.6], "accuracy": [1.0], "count": [3]}
        >>> pool_reliability([a, b, None])
        {'lower': [0.5], 'upper': [1.0], 'confidence': [0.65], 'accuracy': [0.9], 'count': [4.0]}
    """
    sums: dict[tuple[float, float], list[float]] = {}  # edges -> [count, count * confidence, count * accuracy]
    for diagram in diagrams:
        for lower, upper, confidence, accuracy, count in _bins(diagram):
            total = sums.setdefault((lower, upper), [0.0, 0.0, 0.0])
            total[0] += count
            total[1] += count * confidence
            total[2] += count * accuracy
    edges = sorted(edge for edge, total in sums.items() if total[0] > 0)
    if not edges:
        return None
    return {
        "lower": [lower for lower, _ in edges],
        "upper": [upper for _, upper in edges],
        "confidence": [round(sums[edge][1] / sums[edge][0], 12) for edge in edges],
        "accuracy": [round(sums[edge][2] / sums[edge][0], 12) for edge in edges],
        "count": [sums[edge][0] for edge in edges],
    }


_BIN_FIELDS = ("lower", "upper", "confidence", "accuracy", "count")


def _bins(diagram: dict[str, list[float]] | None) -> list[tuple[float, ...]]:
    if not isinstance(diagram, dict) or not all(isinstance(diagram.get(name), list) for name in _BIN_FIELDS):
        return []
    columns = [diagram[name] for name in _BIN_FIELDS]
    if len({len(column) for column in columns}) != 1:
        return []
    rows = [tuple(_finite(value) for value in row) for row in zip(*columns, strict=True)]
    return [row for row in rows if None not in row]


def row_key(board: Leaderboard, method: str) -> tuple[str, str, str, str]:
    """The key of ``method``'s row of ``board`` in :func:`runs_by_row`.

    Example:
        >>> row_key(Leaderboard("d", "m", [], "s"), "mixup")
        ('s', 'd', 'm', 'mixup')
    """
    return (board.suite, board.dataset, board.model, method)


def runs_by_row(records: Iterable[RunRecord]) -> dict[tuple[str, str, str, str], list[RunRecord]]:
    """The finished runs of each leaderboard row, by (suite, dataset, model, method): what its plots pool.

    Example:
        >>> runs = [RunRecord("s", i, "k", "d", "m", "erm", i, status) for i, status in enumerate(["finished", "failed"])]
        >>> {key: len(group) for key, group in runs_by_row(runs).items()}
        {('s', 'd', 'm', 'erm'): 1}
    """
    return _group((r for r in records if r.finished), lambda r: (r.suite, r.dataset, r.model, r.method))


def epoch_curve(runs: Iterable[RunRecord], key: str) -> tuple[list[float], list[float]]:
    """Epochs and the mean over runs of per-epoch value ``key`` (epochs where no run has it are left out).

    Example:
        >>> runs = [RunRecord("s", i, "k", "d", "m", "erm", i, epochs=[{"epoch": 1, "train_loss": v}]) for i, v in enumerate([1.0, 2.0])]
        >>> epoch_curve(runs, "train_loss")
        ([1.0], [1.5])
    """
    values: dict[float, list[float]] = {}
    for run in runs:
        for position, record in enumerate(run.epochs, start=1):
            value, epoch = _finite(record.get(key)), _finite(record.get("epoch", position))
            if value is not None and epoch is not None:
                values.setdefault(epoch, []).append(value)
    epochs = sorted(values)
    return epochs, [statistics.fmean(values[epoch]) for epoch in epochs]


def method_order(boards: Sequence[Leaderboard]) -> list[str]:
    """Every method of ``boards``: the baseline first, then as they first appear in the (ranked) boards.

    Example:
        >>> rows = [LeaderboardRow("mixup", 1, {}), LeaderboardRow("erm", 1, {}), LeaderboardRow("cutmix", 1, {})]
        >>> method_order([Leaderboard("d", "m", rows, "s")])
        ['erm', 'mixup', 'cutmix']
    """
    seen = dict.fromkeys(row.method for board in boards for row in board.rows)
    return sorted(seen, key=lambda method: method != BASELINE_METHOD)
