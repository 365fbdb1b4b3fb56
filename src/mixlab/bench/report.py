"""Benchmark reports: leaderboards over seeds, plots, and one self-contained HTML page.

:func:`aggregate` turns the finished runs of a suite into one :class:`Leaderboard` per
(dataset, model): one row per method, mean and sample standard deviation over seeds of each
metric in :data:`METRICS`. :func:`leaderboard_markdown` prints them; :func:`write_report`
writes ``leaderboard.md``, the plots and ``index.html`` (no external resource at all: inline
CSS, plots embedded as ``data:`` URIs).

Example:
    >>> runs = [RunRecord("s", i, f"k{i}", "digits", "mlp", m, i, "finished", final={"top1": t})
    ...         for i, (m, t) in enumerate([("erm", 0.90), ("mixup", 0.93), ("mixup", 0.95)])]
    >>> [(row.method, round(row.metrics["top1"].mean, 2)) for row in aggregate(runs)[0].rows]
    [('mixup', 0.94), ('erm', 0.9)]
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixlab.bench.records import BASELINE_METHOD, RunRecord
from mixlab.errors import MixlabTypeError, MixlabValueError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
#: the baseline is drawn in grey so that every other method stands out against it.
BASELINE_COLOUR = "#555555"
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79",
)  # fmt: skip
_PLOT_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


@dataclass(frozen=True)
class Metric:
    """One reported column: its key in ``RunRecord.final``, display name, direction and format.

    ``kind`` is ``"percent"`` (a fraction shown x100), ``"decimal"`` (3 decimals),
    ``"seconds"``, ``"rate"`` (images/s) or ``"ratio"`` (a multiple of the baseline's time).

    Example:
        >>> METRIC_BY_KEY["top1"].format(0.87523, 0.0031)
        '87.52 ± 0.31'
    """

    key: str
    name: str
    higher_is_better: bool
    kind: str

    @property
    def header(self) -> str:
        """Column header: the name and an arrow saying which way is better."""
        return f"{self.name} {'↑' if self.higher_is_better else '↓'}"

    def scaled(self, value: float) -> float:
        """The value in display units (percent metrics x100)."""
        return value * 100.0 if self.kind == "percent" else value

    def format(self, mean: float, std: float | None = None) -> str:
        """``mean ± std`` in display units (just ``mean`` when ``std`` is None)."""
        text = self._number(self.scaled(mean))
        return text if std is None else f"{text} ± {self._number(self.scaled(std))}"

    def _number(self, value: float) -> str:
        decimals = {"percent": 2, "decimal": 3, "seconds": 1, "rate": 0, "ratio": 2}[self.kind]
        return f"{value:,.{decimals}f}"


METRICS: tuple[Metric, ...] = (
    Metric("top1", "top-1 (%)", True, "percent"),
    Metric("top5", "top-5 (%)", True, "percent"),
    Metric("nll", "NLL", False, "decimal"),
    Metric("ece", "ECE (%)", False, "percent"),
    Metric("ece_ts", "ECE after TS (%)", False, "percent"),
    Metric("brier", "Brier", False, "decimal"),
    Metric("fgsm_acc", "FGSM acc. (%)", True, "percent"),
    Metric("noise_acc", "noise acc. (%)", True, "percent"),
    Metric("step_ratio", "step time (×ERM)", False, "ratio"),
    Metric("images_per_s", "train img/s", True, "rate"),
    Metric("wall_time_s", "wall time (s)", False, "seconds"),
)
METRIC_BY_KEY: dict[str, Metric] = {metric.key: metric for metric in METRICS}


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
    """One method on a leaderboard: its rank by top-1 (None without top-1), seeds and metric summaries."""

    method: str
    seeds: int
    metrics: dict[str, Summary]
    rank: int | None = None


@dataclass
class Leaderboard:
    """The methods compared on one (dataset, model) of a suite, best top-1 first."""

    dataset: str
    model: str
    rows: list[LeaderboardRow]
    suite: str

    @property
    def title(self) -> str:
        """``dataset · model``."""
        return f"{self.dataset} · {self.model}"

    def columns(self) -> list[Metric]:
        """The metrics of :data:`METRICS` that at least one row has, in table order."""
        return [metric for metric in METRICS if any(metric.key in row.metrics for row in self.rows)]

    def best(self, key: str) -> set[str]:
        """The method(s) with the best mean of metric ``key``; empty when no row stands out (one value, or all equal).

        Example:
            >>> rows = [LeaderboardRow("a", 1, {"nll": Summary(0.5, None, 1)}),
            ...         LeaderboardRow("b", 1, {"nll": Summary(0.4, None, 1)})]
            >>> Leaderboard("d", "m", rows, "s").best("nll")
            {'b'}
        """
        metric = METRIC_BY_KEY[key]
        means = {row.method: row.metrics[key].mean for row in self.rows if key in row.metrics}
        if len(set(means.values())) < 2:  # a lone value, or a tie of all, singles nothing out
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
    values = {metric.key: _finite(record.final.get(metric.key)) for metric in METRICS}
    metrics = {key: value for key, value in values.items() if value is not None}
    baseline, speed = baselines.get(_board_key(record)), metrics.get("images_per_s")
    if baseline is not None and speed is not None and speed > 0:
        metrics["step_ratio"] = baseline / speed
    return metrics


def aggregate(records: Iterable[RunRecord]) -> list[Leaderboard]:
    """One :class:`Leaderboard` per (suite, dataset, model) of the finished ``records``.

    Each row is one method: mean and sample std over its seeds of every metric it has
    (``step_ratio`` is taken per run, then averaged), ranked by mean top-1, best first; rows
    without top-1 come last, unranked. Boards are sorted by suite, dataset and model.
    """
    finished = [record for record in records if record.finished]
    baselines = baseline_images_per_s(finished)
    boards = []
    for (suite, dataset, model), runs in sorted(_group(finished, _board_key).items()):
        rows = [_row(method, group, baselines) for method, group in _group(runs, _method_key).items()]
        boards.append(Leaderboard(dataset, model, _ranked(rows), suite))
    return boards


def _row(method: str, runs: list[RunRecord], baselines: dict[tuple[str, str, str], float]) -> LeaderboardRow:
    per_metric: dict[str, list[float]] = {}
    for run in runs:
        for key, value in run_metrics(run, baselines).items():
            per_metric.setdefault(key, []).append(value)
    summaries = {key: Summary.of(values) for key, values in per_metric.items()}
    return LeaderboardRow(method, len({run.seed for run in runs}), summaries)


def _ranked(rows: list[LeaderboardRow]) -> list[LeaderboardRow]:
    def order(row: LeaderboardRow) -> tuple[float, str]:
        top1 = row.metrics.get("top1")
        return (-top1.mean if top1 else math.inf, row.method)

    rows = sorted(rows, key=order)
    for position, row in enumerate(rows, start=1):
        row.rank = position if "top1" in row.metrics else None
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


# ------------------------------------------------------------------ tables


def leaderboard_markdown(boards: Sequence[Leaderboard]) -> str:
    """Markdown tables, one per board: rank, method, ``mean ± std`` cells, the best of each column in bold.

    Example:
        >>> rows = [LeaderboardRow("mixup", 2, {"top1": Summary(0.8752, 0.0031, 2)}, 1)]
        >>> print(leaderboard_markdown([Leaderboard("digits", "mlp", rows, "s")]))
        ### digits · mlp
        <BLANKLINE>
        | rank | method | top-1 (%) ↑ |
        |---:|:---|---:|
        | 1 | mixup | 87.52 ± 0.31 |
        <BLANKLINE>
        2 seeds per method; cells are mean ± sample standard deviation over seeds.
    """
    return "\n\n".join(_board_markdown(board) for board in boards)


def _board_markdown(board: Leaderboard) -> str:
    columns = board.columns()
    best = {metric.key: board.best(metric.key) for metric in columns}
    lines = [
        f"### {board.title}",
        "",
        "| " + " | ".join(["rank", "method", *(metric.header for metric in columns)]) + " |",
        "|---:|:---|" + "---:|" * len(columns),
    ]
    for row in board.rows:
        cells = [_rank_text(row), _escape_markdown(row.method)]
        for metric in columns:
            text = _cell_text(metric, row)
            cells.append(f"**{text}**" if row.method in best[metric.key] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", seeds_sentence(board)])


def seeds_sentence(board: Leaderboard) -> str:
    """The line under a table: how many seeds each method has, and what the cells are.

    Example:
        >>> rows = [LeaderboardRow("erm", 3, {}), LeaderboardRow("mixup", 2, {})]
        >>> seeds_sentence(Leaderboard("d", "m", rows, "s"))
        'Seeds per method: erm 3, mixup 2; cells are mean ± sample standard deviation over seeds.'
    """
    counts = {row.method: row.seeds for row in board.rows}
    if len(set(counts.values())) == 1:
        count = next(iter(counts.values()))
        head = f"{count} seed{'s' if count != 1 else ''} per method"
    else:
        head = "Seeds per method: " + ", ".join(f"{method} {count}" for method, count in counts.items())
    return f"{head}; cells are mean ± sample standard deviation over seeds."


def _cell_text(metric: Metric, row: LeaderboardRow) -> str:
    summary = row.metrics.get(metric.key)
    return "–" if summary is None else metric.format(summary.mean, summary.std)


def _rank_text(row: LeaderboardRow) -> str:
    return "–" if row.rank is None else str(row.rank)


def _escape_markdown(text: str) -> str:
    return text.replace("|", "\\|")


def leaderboard_html(board: Leaderboard, colours: dict[str, str] | None = None) -> str:
    """One board as an HTML ``<table>``; the best cell of each column has class ``best``.

    ``colours`` (method -> CSS colour) adds a dot of the method's plot colour before its name.

    Example:
        >>> rows = [LeaderboardRow("a", 1, {"nll": Summary(0.5, None, 1)}), LeaderboardRow("b", 1, {"nll": Summary(0.4, None, 1)})]
        >>> '<td class="best">0.400</td>' in leaderboard_html(Leaderboard("d", "m", rows, "s"))
        True
    """
    colours = colours or {}
    columns = board.columns()
    best = {metric.key: board.best(metric.key) for metric in columns}
    head = "".join(f"<th>{html.escape(metric.header)}</th>" for metric in columns)
    body = []
    for row in board.rows:
        cells = [
            f"<td>{_rank_text(row)}</td>",
            f'<td class="method">{_swatch(row.method, colours.get(row.method))}</td>',
        ]
        for metric in columns:
            marked = ' class="best"' if row.method in best[metric.key] else ""
            cells.append(f"<td{marked}>{html.escape(_cell_text(metric, row))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    table = (
        f'<div class="scroll"><table>\n<thead><tr><th>rank</th><th>method</th>{head}</tr></thead>\n'
        + "<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table></div>"
    )
    note = f'<p class="note">{html.escape(seeds_sentence(board))} Bold: best in its column.</p>'
    return f"<h3>{html.escape(board.title)}</h3>\n{table}\n{note}"


def _swatch(method: str, colour: str | None) -> str:
    dot = f'<span class="dot" style="background:{colour}"></span>' if colour else ""
    return dot + html.escape(method)


# ------------------------------------------------------------------ colours and figures


def method_colours(methods: Iterable[str]) -> dict[str, str]:
    """One colour per method, the same in every plot: the baseline grey, the others in palette order.

    Example:
        >>> method_colours(["mixup", "erm", "cutmix"])
        {'mixup': '#1f77b4', 'erm': '#555555', 'cutmix': '#ff7f0e'}
    """
    colours, others = {}, 0
    for method in dict.fromkeys(methods):
        if method == BASELINE_METHOD:
            colours[method] = BASELINE_COLOUR
        else:
            colours[method] = PALETTE[others % len(PALETTE)]
            others += 1
    return colours


def _method_order(boards: Sequence[Leaderboard]) -> list[str]:
    """Baseline first, then methods as they first appear in the (ranked) boards."""
    seen = dict.fromkeys(row.method for board in boards for row in board.rows)
    return sorted(seen, key=lambda method: method != BASELINE_METHOD)


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on an Agg canvas (no pyplot state), at the report's resolution, laid out automatically.

    Example:
        >>> new_figure(4, 3).get_size_inches().tolist()
        [4.0, 3.0]
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # the object API: no pyplot, no global figure registry
    return figure


def _panels(figure: Figure, count: int, columns: int) -> list[Axes]:
    rows = math.ceil(count / columns)
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for unused in axes[count:]:
        unused.set_visible(False)
    return axes[:count]


def _render_png(draw: Callable[[], Figure | None]) -> bytes | None:
    """Run ``draw`` under the report's plot style and return the figure as PNG bytes (None: nothing to draw)."""
    import matplotlib

    with matplotlib.rc_context(_PLOT_STYLE):
        figure = draw()
        if figure is None:
            return None
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def figure_to_array(figure: Figure) -> np.ndarray:
    """Render a matplotlib figure to a uint8 RGB array ``(H, W, 3)``.

    Example:
        >>> from matplotlib.figure import Figure
        >>> figure_to_array(Figure(figsize=(2, 1), dpi=50)).shape
        (50, 100, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ------------------------------------------------------------------ scatter plots


def _cost_key(board: Leaderboard) -> str:
    """Step time against the baseline when the board has one, else wall time."""
    return "step_ratio" if any("step_ratio" in row.metrics for row in board.rows) else "wall_time_s"


def _scatter_figure(
    boards: Sequence[Leaderboard], x_key: Callable[[Leaderboard], str], colours: dict[str, str]
) -> Figure | None:
    panels = [(board, x_key(board)) for board in boards]
    panels = [(board, key) for board, key in panels if _scatter_rows(board, key)]
    if not panels:
        return None
    columns = min(len(panels), 3)
    figure = new_figure(4.4 * columns, 3.5 * math.ceil(len(panels) / columns))
    for axes, (board, key) in zip(_panels(figure, len(panels), columns), panels, strict=True):
        _scatter_panel(axes, board, key, colours)
    return figure


def _scatter_rows(board: Leaderboard, x_key: str) -> list[LeaderboardRow]:
    return [row for row in board.rows if "top1" in row.metrics and x_key in row.metrics]


def _scatter_panel(axes: Axes, board: Leaderboard, x_key: str, colours: dict[str, str]) -> None:
    x_metric, y_metric = METRIC_BY_KEY[x_key], METRIC_BY_KEY["top1"]
    for row in _scatter_rows(board, x_key):
        x, y = row.metrics[x_key], row.metrics["top1"]
        xy = (x_metric.scaled(x.mean), y_metric.scaled(y.mean))
        axes.errorbar(
            *xy,
            xerr=None if x.std is None else x_metric.scaled(x.std),
            yerr=None if y.std is None else y_metric.scaled(y.std),
            fmt="o", markersize=7, capsize=2, color=colours.get(row.method), zorder=3,
        )  # fmt: skip
        axes.annotate(row.method, xy, xytext=(5, 4), textcoords="offset points", fontsize=8)
    if x_key == "step_ratio":
        axes.axvline(1.0, color=BASELINE_COLOUR, linestyle="--", linewidth=0.8, zorder=1)
    axes.margins(0.15)
    axes.set(xlabel=x_metric.header, ylabel=y_metric.header, title=board.title)


# ------------------------------------------------------------------ reliability diagrams


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


def _reliability_figure(
    boards: Sequence[Leaderboard], runs: dict[tuple[str, str, str, str], list[RunRecord]], colours: dict[str, str]
) -> Figure | None:
    panels = []
    for board in boards:
        for row in board.rows:
            pooled = pool_reliability(run.reliability for run in runs[_row_key(board, row.method)])
            if pooled is not None:
                title = row.method if len(boards) == 1 else f"{row.method}\n{board.title}"
                panels.append((title, pooled, row))
    if not panels:
        return None
    columns = min(len(panels), 5)
    figure = new_figure(2.5 * columns, 2.7 * math.ceil(len(panels) / columns))
    for index, (axes, (title, pooled, row)) in enumerate(
        zip(_panels(figure, len(panels), columns), panels, strict=True)
    ):
        _reliability_panel(axes, pooled, colours.get(row.method, BASELINE_COLOUR))
        ece = row.metrics.get("ece")
        axes.set_title(title if ece is None else f"{title}  (ECE {METRIC_BY_KEY['ece'].format(ece.mean)} %)")
        axes.set_xlabel("confidence" if index >= len(panels) - columns else "")
        axes.set_ylabel("accuracy" if index % columns == 0 else "")
    return figure


def _reliability_panel(axes: Axes, pooled: dict[str, list[float]], colour: str) -> None:
    lower, upper = np.array(pooled["lower"]), np.array(pooled["upper"])
    accuracy, confidence = np.array(pooled["accuracy"]), np.array(pooled["confidence"])
    width = upper - lower
    axes.bar(lower, accuracy, width=width, align="edge", color=colour, alpha=0.85, edgecolor="white", linewidth=0.5)
    axes.bar(
        lower, confidence - accuracy, bottom=accuracy, width=width, align="edge",
        color="#d62728", alpha=0.25, edgecolor="#d62728", linewidth=0.5,
    )  # fmt: skip
    axes.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8)
    axes.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")


def _row_key(board: Leaderboard, method: str) -> tuple[str, str, str, str]:
    return (board.suite, board.dataset, board.model, method)


def _runs_by_row(records: Iterable[RunRecord]) -> dict[tuple[str, str, str, str], list[RunRecord]]:
    return _group((r for r in records if r.finished), lambda r: (r.suite, r.dataset, r.model, r.method))


# ------------------------------------------------------------------ learning curves


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


_CURVES = (("test_acc", "test accuracy (%)", 100.0), ("train_loss", "training loss", 1.0))


def _curves_figure(
    boards: Sequence[Leaderboard], runs: dict[tuple[str, str, str, str], list[RunRecord]], colours: dict[str, str]
) -> Figure | None:
    boards = [
        board for board in boards if any(run.epochs for row in board.rows for run in runs[_row_key(board, row.method)])
    ]
    if not boards:
        return None
    figure = new_figure(9.0, 3.3 * len(boards))
    axes_grid = figure.subplots(len(boards), len(_CURVES), squeeze=False)
    for board, axes_row in zip(boards, axes_grid, strict=True):
        for axes, (key, label, scale) in zip(axes_row, _CURVES, strict=True):
            _curve_panel(axes, board, runs, colours, key, scale)
            axes.set(xlabel="epoch", ylabel=label, title=f"{board.title}: {label}")
        if axes_row[-1].get_legend_handles_labels()[0]:
            axes_row[-1].legend(loc="best")
    return figure


def _curve_panel(
    axes: Axes,
    board: Leaderboard,
    runs: dict[tuple[str, str, str, str], list[RunRecord]],
    colours: dict[str, str],
    key: str,
    scale: float,
) -> None:
    drawn = False
    for row in board.rows:
        epochs, means = epoch_curve(runs[_row_key(board, row.method)], key)
        if epochs:
            marker = "o" if len(epochs) < 15 else None  # few evaluated epochs: show where they are
            axes.plot(
                epochs,
                np.array(means) * scale,
                marker=marker,
                markersize=3,
                color=colours.get(row.method),
                label=row.method,
            )
            drawn = True
    if not drawn:
        axes.text(0.5, 0.5, f"no {key} recorded", ha="center", va="center", transform=axes.transAxes, color="grey")


# ------------------------------------------------------------------ gallery


def _gallery_images(
    records: Sequence[RunRecord], gallery: Callable[[RunRecord], Any], order: Sequence[str]
) -> list[tuple[str, np.ndarray]]:
    """The gallery callable's image for the first finished run of each method, in ``order``."""
    first: dict[str, RunRecord] = {}
    for record in records:
        if record.finished:
            first.setdefault(record.method, record)
    images = []
    for method in order:
        image = _as_rgb(gallery(first[method]), method)
        if image is not None:
            images.append((method, image))
    return images


def _as_rgb(image: Any, method: str) -> np.ndarray | None:
    from matplotlib.figure import Figure

    if image is None:
        return None
    if isinstance(image, Figure):
        return figure_to_array(image)
    if not isinstance(image, np.ndarray):
        raise MixlabTypeError(
            f"gallery for method {method!r} returned {type(image).__name__}; "
            "expected an RGB array (H, W, 3), a matplotlib Figure or None"
        )
    if image.ndim != 3 or image.shape[2] not in (3, 4) or 0 in image.shape:
        raise MixlabValueError(
            f"gallery for method {method!r} returned an array of shape {image.shape}; expected (H, W, 3) or (H, W, 4)"
        )
    return image[..., :3]


def _gallery_figure(images: Sequence[tuple[str, np.ndarray]], colours: dict[str, str]) -> Figure | None:
    if not images:
        return None
    width = 10.0
    heights = [width * image.shape[0] / image.shape[1] for _, image in images]
    figure = new_figure(width, sum(heights) + 0.35 * len(images))
    axes_column = figure.subplots(len(images), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for axes, (method, image) in zip(axes_column, images, strict=True):
        axes.imshow(image)
        axes.set_axis_off()
        axes.set_title(method, loc="left", fontweight="bold", color=colours.get(method, BASELINE_COLOUR))
    return figure


# ------------------------------------------------------------------ the report

LEADERBOARD_FILE = "leaderboard.md"
INDEX_FILE = "index.html"
#: the plots, in page order: name -> (file, caption).
PLOTS: dict[str, tuple[str, str]] = {
    "top1_vs_ece": (
        "top1_vs_ece.png",
        "Top-1 accuracy against expected calibration error, mean ± std over seeds: up and to the left is better.",
    ),
    "top1_vs_cost": (
        "top1_vs_cost.png",
        "Top-1 accuracy against training cost: step time relative to ERM (the dashed line), "
        "or wall time where the board has no ERM run. Up and to the left is better.",
    ),
    "reliability": (
        "reliability.png",
        "Reliability diagrams pooled over seeds: bars are the accuracy in each confidence bin, red the gap "
        "to the mean confidence; the diagonal is perfect calibration.",
    ),
    "learning_curves": (
        "learning_curves.png",
        "Test accuracy on evaluated epochs and training loss per epoch, mean over seeds.",
    ),
    "gallery": (
        "gallery.png",
        "What each method does to a few inputs: sample A, partner B and the mixed input (λ is the weight of A).",
    ),
}


def write_report(
    records: Iterable[RunRecord],
    out_dir: str | os.PathLike,
    *,
    suite: str,
    gallery: Callable[[RunRecord], Any] | None = None,
) -> dict[str, Path]:
    """Write the report of ``suite`` into ``out_dir``; return the written files by name.

    Files: ``leaderboard.md``, the plots of :data:`PLOTS` that have data (``top1_vs_ece.png``,
    ``top1_vs_cost.png``, ``reliability.png``, ``learning_curves.png``, and ``gallery.png`` when
    ``gallery`` is given), and ``index.html``, one self-contained page (inline CSS, plots embedded
    as base64 ``data:`` URIs, no script, no external URL). Every file is written atomically,
    after everything has been rendered in memory.

    Args:
        records: the suite's runs (any status; failed ones are listed on the page).
        out_dir: the folder to write into (created if missing).
        suite: the suite's name, shown as the report's title.
        gallery: called with the first finished run of each method; returns an RGB image array
            ``(H, W, 3)`` (or RGBA; uint8 or float in [0, 1]), a matplotlib ``Figure``, or ``None``
            to leave the method out. :func:`mixlab.bench.show.mix_gallery` makes one.

    Raises:
        MixlabValueError: no record is finished (nothing is written, ``out_dir`` is not created).
    """
    records, out_dir = _checked_inputs(records, out_dir, suite, gallery)
    boards = aggregate(records)
    colours = method_colours(_method_order(boards))
    plots = _render_plots(records, boards, colours, gallery)
    files = {name: (PLOTS[name][0], png) for name, png in plots.items()}
    files["leaderboard"] = (LEADERBOARD_FILE, _markdown_report(suite, records, boards, plots).encode())
    files["index"] = (INDEX_FILE, html_page(suite, records, boards, plots, colours).encode())
    return _write_files(out_dir, files)


def _checked_inputs(
    records: Iterable[RunRecord], out_dir: str | os.PathLike, suite: str, gallery: object
) -> tuple[list[RunRecord], Path]:
    records = list(records)
    for record in records:
        if not isinstance(record, RunRecord):
            raise MixlabTypeError(f"write_report needs RunRecord objects; got {type(record).__name__}")
    if not isinstance(suite, str) or not suite:
        raise MixlabValueError(f"suite must be a non-empty name; got {suite!r}")
    if gallery is not None and not callable(gallery):
        raise MixlabTypeError(f"gallery must be a callable (RunRecord -> image) or None; got {type(gallery).__name__}")
    out_dir = Path(os.fspath(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise MixlabValueError(f"report folder {str(out_dir)!r} exists and is not a folder")
    if not any(record.finished for record in records):
        failed = sum(record.status == "failed" for record in records)
        unfinished = len(records) - failed
        raise MixlabValueError(
            f"suite {suite!r} has no finished runs ({failed} failed, {unfinished} unfinished); "
            "there is nothing to report"
        )
    return records, out_dir


def _render_plots(
    records: list[RunRecord],
    boards: list[Leaderboard],
    colours: dict[str, str],
    gallery: Callable[[RunRecord], Any] | None,
) -> dict[str, bytes]:
    runs = _runs_by_row(records)
    drawers: dict[str, Callable[[], Figure | None]] = {
        "top1_vs_ece": lambda: _scatter_figure(boards, lambda board: "ece", colours),
        "top1_vs_cost": lambda: _scatter_figure(boards, _cost_key, colours),
        "reliability": lambda: _reliability_figure(boards, runs, colours),
        "learning_curves": lambda: _curves_figure(boards, runs, colours),
    }
    if gallery is not None:
        images = _gallery_images(records, gallery, _method_order(boards))
        drawers["gallery"] = lambda: _gallery_figure(images, colours)
    rendered = {name: _render_png(draw) for name, draw in drawers.items()}
    return {name: png for name, png in rendered.items() if png is not None}


def _write_files(out_dir: Path, files: dict[str, tuple[str, bytes]]) -> dict[str, Path]:
    from mixlab.engine.checkpoint import atomic_write_bytes

    written = {}
    for name, (filename, data) in files.items():  # index.html last: what it shows exists first
        path = out_dir / filename
        atomic_write_bytes(path, data)
        written[name] = path
    return written


def _run_counts(records: Sequence[RunRecord]) -> str:
    finished = sum(record.finished for record in records)
    failed = sum(record.status == "failed" for record in records)
    unfinished = len(records) - finished - failed
    text = f"{len(records)} run{'s' if len(records) != 1 else ''}: {finished} finished, {failed} failed"
    return text + (f", {unfinished} unfinished" if unfinished else "")


def _failed(records: Sequence[RunRecord]) -> list[RunRecord]:
    return [record for record in records if record.status == "failed"]


def _markdown_report(suite: str, records: list[RunRecord], boards: list[Leaderboard], plots: dict[str, bytes]) -> str:
    parts = [f"# mixlab benchmark: {suite}", "", _run_counts(records) + ".", "", leaderboard_markdown(boards)]
    if plots:
        parts += ["", "## Plots", ""]
        parts += ["\n\n".join(f"![{PLOTS[name][1]}]({PLOTS[name][0]})" for name in plots)]
    failed = _failed(records)
    if failed:
        parts += ["", "## Failed runs", ""]
        parts += [f"- `{run.key}` ({run.method}, seed {run.seed}): {_first_line(run.error)}" for run in failed]
    return "\n".join(parts) + "\n"


def _first_line(error: str | None) -> str:
    lines = (error or "").strip().splitlines()
    return lines[0] if lines else "no error recorded"  # the runner stores "Type: message" first, then where


_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d1d1f; background: #fafafa; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 48px; background: #fff; }
h1 { font-size: 1.7em; margin: 0 0 4px; } h2 { font-size: 1.25em; margin: 36px 0 8px; border-bottom: 1px solid #e5e5e5; }
h3 { font-size: 1.05em; margin: 22px 0 6px; }
.meta { color: #555; margin: 0; } code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.92em; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; margin: 4px 0; }
th, td { padding: 4px 10px; text-align: right; white-space: nowrap; }
th { font-weight: 600; border-bottom: 2px solid #333; } td.method, th:nth-child(2) { text-align: left; }
tbody tr:nth-child(even) { background: #f4f6f8; } tbody tr:hover { background: #eaf1fb; }
td.best { font-weight: 700; background: #e3f4e1; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 6px; }
.note { color: #666; font-size: 13px; margin: 2px 0 0; }
.scroll { overflow-x: auto; }
figure { margin: 18px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
details { margin: 6px 0; } summary { cursor: pointer; }
pre { background: #f6f6f6; padding: 8px 10px; overflow-x: auto; font-size: 12px; }
"""


_READING_NOTE = (
    "↑ higher is better, ↓ lower is better. ECE after TS: after temperature scaling on the validation split. "
    f"Step time: the baseline's ({BASELINE_METHOD}) training images/s over the method's, so 1.30 is 30 % slower."
)


def html_page(
    suite: str,
    records: Sequence[RunRecord],
    boards: Sequence[Leaderboard],
    plots: dict[str, bytes],
    colours: dict[str, str] | None = None,
) -> str:
    """The report as one HTML page with nothing external: ``plots`` (name -> PNG bytes) are embedded.

    Example:
        >>> page = html_page("quick", [], [], {})
        >>> "<title>mixlab benchmark: quick</title>" in page, "http" in page
        (True, False)
    """
    body = [
        f"<h1>mixlab benchmark: {html.escape(suite)}</h1>",
        f'<p class="meta">suite <code>{html.escape(suite)}</code> · {html.escape(_run_counts(records))}{_period(records)}</p>',
        "<h2>Leaderboard</h2>",
        f'<p class="note">{_READING_NOTE}</p>',
        *(leaderboard_html(board, colours) for board in boards),
    ]
    if plots:
        body += ["<h2>Plots</h2>", *(_figure_html(name, png) for name, png in plots.items())]
    body += ["<h2>Failed runs</h2>", _failed_html(_failed(records))]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>mixlab benchmark: {html.escape(suite)}</title>\n<style>{_CSS}</style>\n</head>\n"
        "<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def _period(records: Sequence[RunRecord]) -> str:
    starts = [record.started for record in records if record.started]
    ends = [record.ended for record in records if record.ended]
    if not starts or not ends:
        return ""
    return f" · {html.escape(min(starts))} to {html.escape(max(ends))}"


def _figure_html(name: str, png: bytes) -> str:
    caption = PLOTS[name][1]
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{name}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _failed_html(failed: Sequence[RunRecord]) -> str:
    if not failed:
        return '<p class="note">None.</p>'
    items = []
    for run in failed:
        summary = f"<code>{html.escape(run.key)}</code> ({html.escape(run.method)}, seed {run.seed}): {html.escape(_first_line(run.error))}"
        items.append(
            f"<li><details><summary>{summary}</summary><pre>{html.escape(run.error or '')}</pre></details></li>"
        )
    return "<ul>\n" + "\n".join(items) + "\n</ul>"
