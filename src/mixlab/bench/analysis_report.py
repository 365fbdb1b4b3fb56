"""The report's analysis section: what mixing does beyond accuracy, per (dataset, model) board.

For each board with at least one finished run carrying analysis metrics (issue 13: calibration
extras, OOD detection, corruption robustness, transferability, the mixed-vs-real gap, geometry)
or analysis artifacts (``ood_roc``, ``gap_curve``), :func:`analysis_sections` gathers

- tables, one per analysis, one row per method: mean ± sample std over seeds of the numbers
  present (transfer and analysis cost per target/analysis; OOD as the bare keys, i.e. the first
  source); a missing value is an empty cell;
- ``corr_mce``, the mean corruption error relative to the board's baseline (Hendrycks &
  Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
  ICLR 2019, arXiv 1903.12261), computed here by :func:`mean_corruption_errors`;
- plots (:data:`ANALYSIS_PLOTS`): MMD² against λ per method, the corruption-accuracy heatmap,
  OOD ROC curves per source (MSP solid, energy dashed) and top-1 gain against the gap.

A suite without analyses gets no section: :func:`analysis_sections` returns ``[]``.

Example:
    >>> from mixlab.bench.aggregate import aggregate
    >>> runs = [RunRecord("s", i, f"k{i}", "d", "m", m, 0, "finished", final={"top1": t, "aece": a})
    ...         for i, (m, t, a) in enumerate([("erm", 0.8, 0.05), ("mixup", 0.9, 0.02)])]
    >>> (section,) = analysis_sections(runs, aggregate(runs), {})
    >>> print(analysis_markdown([section]).splitlines()[8])
    | mixup | 2.00 |
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import numbers
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mixlab.bench.aggregate import Leaderboard, Summary, row_key, runs_by_row
from mixlab.bench.comparisons import format_difference
from mixlab.bench.plots import BASELINE_COLOUR, grid_panels, new_figure, render_png
from mixlab.bench.records import RunRecord
from mixlab.evaluate.catalog import metric_info
from mixlab.evaluate.corruptions import mean_corruption_error, per_corruption_accuracy
from mixlab.evaluate.paired import Interval, t_interval

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: the analysis tables, in page order: title -> metric keys. Keys in ``_PER_PART`` get one column per
#: target (``probe_acc/digits``), falling back to the bare key; the others are shown as bare keys.
ANALYSIS_GROUPS: dict[str, tuple[str, ...]] = {
    "Calibration": ("aece", "cw_ece", "mce", "aurc", "eaurc"),
    "OOD detection (first source)": ("ood_auroc_msp", "ood_auroc_energy", "ood_fpr95_msp"),
    "Corruptions": ("corr_acc", "corr_mce"),
    "Transfer": ("logme", "hscore", "leep", "probe_acc"),
    "Mixed-vs-real gap": ("mmd_mixed_real", "intrusion_rate", "kid"),
    "Geometry": ("nc1", "nc2_norm", "nc2_angle", "nc3", "nc4", "hessian_trace", "sharpness_avg"),
    "Analysis cost": ("analysis_time_s",),
}
_PER_PART = {"logme", "hscore", "leep", "probe_acc", "analysis_time_s"}
#: every base key that marks a run as analysed (the per-λ ``mmd``/``mmd_p`` and per-cell ``corr_acc`` included).
ANALYSIS_KEYS = frozenset({key for keys in ANALYSIS_GROUPS.values() for key in keys} | {"mmd", "mmd_p"})
ANALYSIS_ARTIFACTS = ("ood_roc", "gap_curve", "analysis_errors")

#: the analysis plots, in page order: kind -> (file suffix, caption).
ANALYSIS_PLOTS: dict[str, tuple[str, str]] = {
    "gap_vs_lambda": (
        "gap_vs_lambda.png",
        "Mixed-vs-real gap: unbiased MMD² between penultimate features of mixed and of real inputs, per bin of λ "
        "(the label weight of the first sample; bin middles), mean over seeds.",
    ),
    "corruption_heatmap": (
        "corruption_heatmap.png",
        "Top-1 accuracy (%) under each corruption, mean over severities and seeds; blank: not measured.",
    ),
    "ood_roc": (
        "ood_roc.png",
        "OOD detection ROC per out-of-distribution source, in-distribution as positives, averaged vertically over "
        "seeds: max softmax probability solid, energy dashed; the legend gives the MSP AUROC (%).",
    ),
    "gain_vs_gap": (
        "gain_vs_gap.png",
        "Top-1 gain over the baseline (percentage points) against the mixed-vs-real MMD², mean ± std over seeds.",
    ),
}


@dataclass
class AnalysisTable:
    """One analysis table: its title, metric keys (columns) and each method's summaries (rows, board order)."""

    title: str
    columns: list[str]
    rows: dict[str, dict[str, Summary]]


@dataclass
class AnalysisSection:
    """A board's analysis: its tables, plots (kind -> (file name, caption, PNG bytes)) and each method's
    differences from the baseline (method -> key -> interval; see :func:`seed_paired_differences`)."""

    board: Leaderboard
    tables: list[AnalysisTable]
    plots: dict[str, tuple[str, str, bytes]]
    differences: dict[str, dict[str, Interval]] = dataclasses.field(default_factory=dict)
    #: analyses that failed after training: "run key: analysis: error", so that none is lost silently.
    errors: list[str] = dataclasses.field(default_factory=list)


#: the analysis numbers each method is compared with the baseline on, paired by seed.
DIFFERENCE_KEYS = (
    "corr_acc", "ood_auroc_msp", "ood_auroc_energy", "probe_acc", "logme", "aece", "eaurc", "mmd_mixed_real",
    "intrusion_rate", "hessian_trace",
)  # fmt: skip


# ------------------------------------------------------------------ numbers


def is_analysis_key(key: str) -> bool:
    """Whether ``key`` is one of an analysis's store keys (by the part before the first ``/``).

    Example:
        >>> is_analysis_key("ood_auroc_msp/digits"), is_analysis_key("top1")
        (True, False)
    """
    return key.partition("/")[0] in ANALYSIS_KEYS


def has_analysis(run: RunRecord) -> bool:
    """Whether a finished run carries any analysis metric or artifact.

    Example:
        >>> has_analysis(RunRecord("s", 1, "k", "d", "m", "erm", 0, "finished", final={"kid": 0.1}))
        True
    """
    return run.finished and (
        any(is_analysis_key(key) for key in run.final) or any(name in run.artifacts for name in ANALYSIS_ARTIFACTS)
    )


def analysis_values(run: RunRecord) -> dict[str, float]:
    """The run's finite analysis metrics (non-numbers and NaN left out).

    Example:
        >>> run = RunRecord("s", 1, "k", "d", "m", "erm", 0, "finished", final={"top1": 0.9, "kid": 0.1, "nc1": float("nan")})
        >>> analysis_values(run)
        {'kid': 0.1}
    """
    return {key: float(value) for key, value in run.final.items() if is_analysis_key(key) and _finite(value)}


def corruption_accuracies(run: RunRecord) -> dict[str, float]:
    """Accuracy per corruption, mean over severities: the run's ``corr_acc/<name>`` values.

    Example:
        >>> final = {"corr_acc": 0.7, "corr_acc/fog": 0.6, "corr_acc/fog/1": 0.8}
        >>> corruption_accuracies(RunRecord("s", 1, "k", "d", "m", "erm", 0, "finished", final=final))
        {'fog': 0.6}
    """
    return per_corruption_accuracy(analysis_values(run))


def mean_corruption_errors(runs: Sequence[RunRecord], baseline: Sequence[RunRecord]) -> list[float]:
    """Each run's mean corruption error relative to the baseline (Hendrycks & Dietterich, ICLR 2019, arXiv 1903.12261).

    ``mCE = mean over corruptions c of (1 - acc(c)) / (1 - acc_baseline(c))``, ``acc(c)`` the run's
    accuracy under ``c`` averaged over severities and ``acc_baseline(c)`` the baseline runs' mean.
    Over the corruptions both have, leaving out any the baseline gets always right (no error to
    divide by); runs with none left are left out. Linear in the run's errors, so the baseline's
    own mCEs average to exactly 1.

    Example:
        >>> def run(errors):
        ...     final = {f"corr_acc/{name}": 1 - e for name, e in zip(["fog", "jpeg"], errors)}
        ...     return RunRecord("s", 1, "k", "d", "m", "x", 0, "finished", final=final)
        >>> [round(v, 6) for v in mean_corruption_errors([run([0.1, 0.4])], [run([0.2, 0.4])])]
        [0.75]
    """
    reference: dict[str, list[float]] = {}
    for run in baseline:
        for name, accuracy in corruption_accuracies(run).items():
            reference.setdefault(name, []).append(accuracy)
    base_acc = {name: statistics.fmean(values) for name, values in reference.items()}
    values = []
    for run in runs:
        shared = {name: acc for name, acc in corruption_accuracies(run).items() if base_acc.get(name, 1.0) < 1.0}
        if shared:
            values.append(mean_corruption_error(shared, {name: base_acc[name] for name in shared}))
    return values


def _method_summaries(runs: Sequence[RunRecord], baseline: Sequence[RunRecord]) -> dict[str, Summary]:
    per_key: dict[str, list[float]] = {}
    for run in runs:
        for key, value in analysis_values(run).items():
            per_key.setdefault(key, []).append(value)
    mce = mean_corruption_errors(runs, baseline) if baseline else []
    if mce:
        per_key["corr_mce"] = mce
    return {key: Summary.of(values) for key, values in per_key.items()}


def _group_columns(keys: tuple[str, ...], present: set[str]) -> list[str]:
    """The columns of one group: bare keys, or one per target for the per-target ones (targets in sorted order)."""
    columns = []
    for key in keys:
        parts = sorted(k for k in present if k.startswith(key + "/") and k.count("/") == 1)
        columns += parts if key in _PER_PART and parts else [key] if key in present else []
    return columns


def analysis_tables(rows: dict[str, dict[str, Summary]]) -> list[AnalysisTable]:
    """The non-empty tables of :data:`ANALYSIS_GROUPS` for ``rows`` (method -> key -> summary).

    Example:
        >>> tables = analysis_tables({"erm": {"kid": Summary(0.1, None, 1)}, "mixup": {"logme/a": Summary(1.0, None, 1)}})
        >>> [(table.title, table.columns) for table in tables]
        [('Transfer', ['logme/a']), ('Mixed-vs-real gap', ['kid'])]
    """
    present = {key for summaries in rows.values() for key in summaries}
    tables = [AnalysisTable(title, _group_columns(keys, present), rows) for title, keys in ANALYSIS_GROUPS.items()]
    return [table for table in tables if table.columns]


# ------------------------------------------------------------------ sections


def analysis_sections(
    records: Sequence[RunRecord], boards: Sequence[Leaderboard], colours: dict[str, str]
) -> list[AnalysisSection]:
    """One :class:`AnalysisSection` per board that has an analysed finished run, in board order.

    ``boards`` are ``aggregate(records)``; ``colours`` the methods' plot colours
    (:func:`~mixlab.bench.plots.method_colours`). Plot files are named
    ``analysis_<dataset>_<model>_<kind>.png`` (the suite added when two boards would share a name).
    """
    runs = runs_by_row(records)
    sections, slugs = [], set()
    for board in boards:
        board_runs = {row.method: runs.get(row_key(board, row.method), []) for row in board.rows}
        if not any(has_analysis(run) for group in board_runs.values() for run in group):
            continue
        slug = _unique_slug(board, slugs)
        baseline = board_runs.get(board.baseline, [])
        rows = {method: _method_summaries(group, baseline) for method, group in board_runs.items()}
        plots = _section_plots(board, board_runs, rows, colours)
        files = {
            kind: (f"analysis_{slug}_{ANALYSIS_PLOTS[kind][0]}", ANALYSIS_PLOTS[kind][1], png)
            for kind, png in plots.items()
        }
        differences = {
            method: seed_paired_differences(group, baseline)
            for method, group in board_runs.items()
            if method != board.baseline
        }
        errors = [
            f"{run.key}: {name}: {message}"
            for group in board_runs.values()
            for run in group
            for name, message in sorted((run.artifacts.get("analysis_errors") or {}).items())
        ]
        sections.append(
            AnalysisSection(board, analysis_tables(rows), files, {m: d for m, d in differences.items() if d}, errors)
        )
    return sections


def seed_paired_differences(
    runs: Sequence[RunRecord], baseline: Sequence[RunRecord], keys: Sequence[str] = DIFFERENCE_KEYS
) -> dict[str, Interval]:
    """Each key's mean difference from the baseline over the seeds both ran, with its 95 % t-interval over
    those seeds (the training's randomness; the analyses have no per-sample resampling). Keys need two
    paired seeds; with fewer they are left out.

    Example:
        >>> def run(method, seed, value):
        ...     return RunRecord("s", 1, "k", "d", "m", method, seed, "finished", final={"corr_acc": value})
        >>> d = seed_paired_differences([run("a", 0, 0.80), run("a", 1, 0.82)], [run("erm", 0, 0.78), run("erm", 1, 0.79)])
        >>> round(d["corr_acc"].estimate, 3)
        0.025
    """
    base = {run.seed: analysis_values(run) for run in baseline}
    out = {}
    for key in keys:
        pairs = [
            values[key] - base[run.seed][key]
            for run in runs
            if run.seed in base and key in (values := analysis_values(run)) and key in base[run.seed]
        ]
        interval = t_interval(pairs)
        if interval is not None:
            out[key] = interval
    return out


def _unique_slug(board: Leaderboard, taken: set[str]) -> str:
    slug = _slug(f"{board.dataset}_{board.model}")
    if slug in taken:
        slug = _slug(f"{board.suite}_{board.dataset}_{board.model}")
    while slug in taken:
        slug += "_"
    taken.add(slug)
    return slug


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "board"


def _section_plots(
    board: Leaderboard,
    runs: dict[str, list[RunRecord]],
    rows: dict[str, dict[str, Summary]],
    colours: dict[str, str],
) -> dict[str, bytes]:
    drawers: dict[str, Callable[[], Figure | None]] = {
        "gap_vs_lambda": lambda: _gap_figure(runs, colours),
        "corruption_heatmap": lambda: _heatmap_figure(runs),
        "ood_roc": lambda: _roc_figure(runs, colours),
        "gain_vs_gap": lambda: _gain_figure(board, rows, colours),
    }
    rendered = {kind: render_png(draw) for kind, draw in drawers.items()}
    return {kind: png for kind, png in rendered.items() if png is not None}


# ------------------------------------------------------------------ gap against λ

_LAMBDA_BIN = re.compile(r"^mmd/lam_(-?[0-9.]+)_(-?[0-9.]+)$")


def gap_points(run: RunRecord) -> dict[float, float]:
    """The run's MMD² per λ-bin middle: from its ``gap_curve`` artifact, else its ``mmd/lam_<lo>_<hi>`` keys.

    Example:
        >>> run = RunRecord("s", 1, "k", "d", "m", "erm", 0, "finished", final={"mmd/lam_0.0_0.2": 0.5})
        >>> gap_points(run)
        {0.1: 0.5}
    """
    curve = run.artifacts.get("gap_curve")
    if isinstance(curve, dict) and isinstance(curve.get("lam_mid"), list) and isinstance(curve.get("mmd"), list):
        pairs = zip(curve["lam_mid"], curve["mmd"], strict=False)
        return {round(float(lam), 6): float(mmd) for lam, mmd in pairs if _finite(lam) and _finite(mmd)}
    points = {}
    for key, value in analysis_values(run).items():
        match = _LAMBDA_BIN.match(key)
        if match:
            points[round((float(match[1]) + float(match[2])) / 2, 6)] = value
    return points


def _mean_points(runs: Sequence[RunRecord]) -> tuple[list[float], list[float]]:
    pooled: dict[float, list[float]] = {}
    for run in runs:
        for lam, mmd in gap_points(run).items():
            pooled.setdefault(lam, []).append(mmd)
    lams = sorted(pooled)
    return lams, [statistics.fmean(pooled[lam]) for lam in lams]


def _gap_figure(runs: dict[str, list[RunRecord]], colours: dict[str, str]) -> Figure | None:
    curves = {method: _mean_points(group) for method, group in runs.items()}
    curves = {method: curve for method, curve in curves.items() if curve[0]}
    if not curves:
        return None
    figure = new_figure(5.0, 3.5)
    axes = figure.subplots()
    for method, (lams, mmds) in curves.items():
        axes.plot(lams, mmds, marker="o", markersize=4, color=colours.get(method), label=method)
    axes.set(xlabel="λ (bin middle)", ylabel=metric_info("mmd").title, title="mixed-vs-real gap against λ")
    axes.legend(loc="best")
    return figure


# ------------------------------------------------------------------ corruption heatmap


def _corruption_matrix(runs: dict[str, list[RunRecord]]) -> tuple[list[str], list[str], np.ndarray]:
    """Methods with any corruption accuracy, corruption names (sorted), and their mean accuracies (NaN: none)."""
    means: dict[str, dict[str, float]] = {}
    for method, group in runs.items():
        pooled: dict[str, list[float]] = {}
        for run in group:
            for name, accuracy in corruption_accuracies(run).items():
                pooled.setdefault(name, []).append(accuracy)
        if pooled:
            means[method] = {name: statistics.fmean(values) for name, values in pooled.items()}
    names = sorted({name for row in means.values() for name in row})
    matrix = np.array([[row.get(name, math.nan) for name in names] for row in means.values()], dtype=float)
    return list(means), names, matrix.reshape(len(means), len(names))


def _heatmap_figure(runs: dict[str, list[RunRecord]]) -> Figure | None:
    methods, names, matrix = _corruption_matrix(runs)
    if not names:
        return None
    figure = new_figure(max(4.5, 0.6 * len(names) + 2.6), 0.42 * len(methods) + 2.2)
    axes = figure.subplots()
    percent = np.ma.masked_invalid(matrix * 100.0)
    import matplotlib

    colour_map = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")  # blank: not measured
    image = axes.imshow(percent, cmap=colour_map, aspect="auto")
    for (i, j), value in np.ndenumerate(matrix):
        if math.isfinite(value):
            ink = "black" if image.norm(value * 100.0) > 0.6 else "white"  # readable on viridis's light end
            axes.text(j, i, f"{value * 100:.1f}", ha="center", va="center", fontsize=7, color=ink)
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(methods)), methods)
    axes.grid(False)
    axes.set_title("accuracy under corruption (%)")
    figure.colorbar(image, ax=axes, label="top-1 (%)")
    return figure


# ------------------------------------------------------------------ OOD ROC curves

_FPR_GRID = np.linspace(0.0, 1.0, 101)
_SCORES = (("msp", "-"), ("energy", "--"))


def mean_roc(curves: Sequence[Any]) -> np.ndarray | None:
    """Vertical average of ROC curves (``{"fpr": [...], "tpr": [...]}``): mean TPR on 101 FPRs from 0 to 1.

    Malformed or empty curves are left out; None when none is left.

    Example:
        >>> mean_roc([{"fpr": [0, 1], "tpr": [0, 1]}, {"fpr": [0, 0, 1], "tpr": [0, 1, 1]}])[[0, 50, 100]].tolist()
        [0.5, 0.75, 1.0]
    """
    rows = []
    for curve in curves:
        fpr, tpr = _roc_arrays(curve)
        if fpr is not None:
            order = np.lexsort((tpr, fpr))  # by FPR, a vertical step rising
            rows.append(np.interp(_FPR_GRID, fpr[order], tpr[order]))
    return np.mean(rows, axis=0) if rows else None


def _roc_arrays(curve: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not isinstance(curve, dict):
        return None, None
    try:
        fpr, tpr = np.asarray(curve.get("fpr"), dtype=float), np.asarray(curve.get("tpr"), dtype=float)
    except (TypeError, ValueError):
        return None, None
    if (
        fpr.ndim != 1
        or fpr.shape != tpr.shape
        or fpr.size == 0
        or not (np.isfinite(fpr).all() and np.isfinite(tpr).all())
    ):
        return None, None
    return fpr, tpr


def _roc_sources(runs: dict[str, list[RunRecord]]) -> list[str]:
    sources = {}
    for group in runs.values():
        for run in group:
            roc = run.artifacts.get("ood_roc")
            sources.update(dict.fromkeys(roc if isinstance(roc, dict) else ()))
    return list(sources)


def _roc_figure(runs: dict[str, list[RunRecord]], colours: dict[str, str]) -> Figure | None:
    sources = _roc_sources(runs)
    if not sources:
        return None
    columns = min(len(sources), 3)
    figure = new_figure(3.8 * columns, 3.6 * math.ceil(len(sources) / columns))
    for axes, source in zip(grid_panels(figure, len(sources), columns), sources, strict=True):
        _roc_panel(axes, source, runs, colours)
    return figure


def _roc_panel(axes: Axes, source: str, runs: dict[str, list[RunRecord]], colours: dict[str, str]) -> None:
    for method, group in runs.items():
        rocs = [run.artifacts.get("ood_roc") for run in group]
        per_source = [roc.get(source) for roc in rocs if isinstance(roc, dict) and isinstance(roc.get(source), dict)]
        for score, style in _SCORES:
            tpr = mean_roc([curves.get(score) for curves in per_source])
            if tpr is not None:
                label = _roc_label(method, group, source) if score == "msp" else None
                axes.plot(_FPR_GRID, tpr, linestyle=style, color=colours.get(method, BASELINE_COLOUR), label=label)
    axes.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=0.7)
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (OOD accepted)", ylabel="true positive rate")
    axes.set_title(f"OOD: {source}")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right")


def _roc_label(method: str, group: Sequence[RunRecord], source: str) -> str:
    aurocs = [
        run.final[f"ood_auroc_msp/{source}"] for run in group if _finite(run.final.get(f"ood_auroc_msp/{source}"))
    ]
    return method if not aurocs else f"{method} ({100 * statistics.fmean(aurocs):.1f})"


# ------------------------------------------------------------------ top-1 gain against the gap


def _gain_points(board: Leaderboard, rows: dict[str, dict[str, Summary]]) -> list[tuple[str, Summary, Summary, float]]:
    """(method, gap, top-1, gain in points) of each method with both a gap and top-1, given a baseline top-1."""
    top1 = {row.method: row.metrics["top1"] for row in board.rows if "top1" in row.metrics}
    if board.baseline not in top1:
        return []
    points = []
    for method, summaries in rows.items():
        if method in top1 and "mmd_mixed_real" in summaries:
            gain = 100.0 * (top1[method].mean - top1[board.baseline].mean)
            points.append((method, summaries["mmd_mixed_real"], top1[method], gain))
    return points


def _gain_figure(board: Leaderboard, rows: dict[str, dict[str, Summary]], colours: dict[str, str]) -> Figure | None:
    points = _gain_points(board, rows)
    if not any(method != board.baseline for method, *_ in points):
        return None
    figure = new_figure(4.8, 3.6)
    axes = figure.subplots()
    for method, gap, top1, gain in points:
        axes.errorbar(
            gap.mean, gain, xerr=gap.std, yerr=None if top1.std is None else 100.0 * top1.std,
            fmt="o", markersize=7, capsize=2, color=colours.get(method), zorder=3,
        )  # fmt: skip
        axes.annotate(method, (gap.mean, gain), xytext=(5, 4), textcoords="offset points", fontsize=8)
    axes.axhline(0.0, color=BASELINE_COLOUR, linestyle="--", linewidth=0.8, zorder=1)
    axes.margins(0.15)
    axes.set(xlabel=metric_info("mmd_mixed_real").title, ylabel=f"top-1 gain over {board.baseline} (points)")
    axes.set_title(board.title)
    return figure


# ------------------------------------------------------------------ text


def column_header(key: str) -> str:
    """A column's header: the catalog's label, the target after ``·`` for a per-target key, unit and arrow.

    Example:
        >>> column_header("probe_acc/digits"), column_header("corr_mce")
        ('probe acc. · digits (%) ↑', 'mCE (%) ↓')
    """
    info = metric_info(key)
    part = key.partition("/")[2]
    return dataclasses.replace(info, label=f"{info.label} · {part}").header if part else info.header


def cell_text(key: str, summary: Summary | None) -> str:
    """``mean ± std`` in the metric's display units; empty for a missing value.

    Example:
        >>> cell_text("aece", Summary(0.0213, 0.004, 2)), cell_text("aece", None)
        ('2.13 ± 0.40', '')
    """
    return "" if summary is None else metric_info(key).format(summary.mean, summary.std)


def section_note(section: AnalysisSection) -> str:
    """The text under a board's analysis tables: what the cells are (and mCE, when shown)."""
    note = "Mean ± sample standard deviation over seeds; an empty cell: not measured."
    if section.differences:
        note += (
            f" Differences: method − {section.board.baseline} on the same seed, mean over seeds with its 95 % "
            "t-interval over seeds (* where it excludes 0); the analyses have no per-sample resampling, so the "
            "intervals carry the training's randomness only, and need two seeds or more."
        )
    if section.errors:
        note += (
            " Analyses that failed after training: " + "; ".join(section.errors) + ". Those runs lack these "
            "numbers: their cells and differences use the other seeds, and are empty when no seed has them."
        )
    if any("corr_mce" in table.columns for table in section.tables):
        note += (
            " mCE: mean over corruptions of the error relative to the baseline's "
            f"({section.board.baseline}: 100 %), Hendrycks & Dietterich, ICLR 2019."
        )
    return note


def analysis_markdown(sections: Sequence[AnalysisSection]) -> str:
    """The analysis section in Markdown: ``## Analysis``, then per board its tables and plot images ('' without sections)."""
    if not sections:
        return ""
    parts = ["## Analysis"]
    for section in sections:
        parts += [f"### {section.board.title}", *(_table_markdown(table) for table in section.tables)]
        if section.differences:
            parts.append(_differences_markdown(section))
        parts.append(section_note(section))
        parts += [f"![{caption}]({file})" for file, caption, _ in section.plots.values()]
    return "\n\n".join(parts)


def _table_markdown(table: AnalysisTable) -> str:
    lines = [
        f"#### {table.title}",
        "",
        "| method | " + " | ".join(column_header(key) for key in table.columns) + " |",
        "|:---|" + "---:|" * len(table.columns),
    ]
    for method, summaries in table.rows.items():
        cells = [cell_text(key, summaries.get(key)) for key in table.columns]
        lines.append("| " + " | ".join([method.replace("|", "\\|"), *cells]) + " |")
    return "\n".join(lines)


def analysis_html(sections: Sequence[AnalysisSection], colours: dict[str, str] | None = None) -> str:
    """The analysis section as HTML (tables, plots embedded as ``data:`` URIs); '' without sections."""
    if not sections:
        return ""
    body = ["<h2>Analysis</h2>"]
    for section in sections:
        body += [f"<h3>{html.escape(section.board.title)}</h3>"]
        body += [_table_html(table, colours or {}) for table in section.tables]
        if section.differences:
            body.append(_differences_html(section, colours or {}))
        body.append(f'<p class="note">{html.escape(section_note(section))}</p>')
        body += [
            embedded_figure(file.removesuffix(".png"), caption, png) for file, caption, png in section.plots.values()
        ]
    return "\n".join(body)


def difference_header(key: str) -> str:
    """A difference column's header: ``Δ`` and the column's header, percentages read as points.

    Example:
        >>> difference_header("aece"), difference_header("kid")
        ('Δ adaptive ECE (points) ↓', 'Δ KID')
    """
    return "Δ " + column_header(key).replace("(%)", "(points)")


def _difference_columns(section: AnalysisSection) -> list[str]:
    present = {key for differences in section.differences.values() for key in differences}
    return [key for key in DIFFERENCE_KEYS if key in present]


def _differences_markdown(section: AnalysisSection) -> str:
    columns = _difference_columns(section)
    lines = [
        f"#### Differences from {section.board.baseline}",
        "",
        "| method | " + " | ".join(difference_header(key) for key in columns) + " |",
        "|:---|" + "---:|" * len(columns),
    ]
    for method, differences in section.differences.items():
        cells = [format_difference(key, differences[key]) if key in differences else "" for key in columns]
        lines.append("| " + " | ".join([method.replace("|", "\\|"), *cells]) + " |")
    return "\n".join(lines)


def _differences_html(section: AnalysisSection, colours: dict[str, str]) -> str:
    columns = _difference_columns(section)
    head = "".join(f"<th>{html.escape(difference_header(key))}</th>" for key in columns)
    body = []
    for method, differences in section.differences.items():
        cells = "".join(
            f"<td>{html.escape(format_difference(key, differences[key]) if key in differences else '')}</td>"
            for key in columns
        )
        body.append(f'<tr><td class="method">{method_swatch(method, colours.get(method))}</td>{cells}</tr>')
    return (
        f"<h4>Differences from {html.escape(section.board.baseline)}</h4>\n"
        f'<div class="scroll"><table class="analysis">\n<thead><tr><th>method</th>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table></div>"
    )


def _table_html(table: AnalysisTable, colours: dict[str, str]) -> str:
    head = "".join(f"<th>{html.escape(column_header(key))}</th>" for key in table.columns)
    body = []
    for method, summaries in table.rows.items():
        cells = "".join(f"<td>{html.escape(cell_text(key, summaries.get(key)))}</td>" for key in table.columns)
        body.append(f'<tr><td class="method">{method_swatch(method, colours.get(method))}</td>{cells}</tr>')
    return (
        f'<h4>{html.escape(table.title)}</h4>\n<div class="scroll"><table class="analysis">\n'
        f"<thead><tr><th>method</th>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table></div>"
    )


def method_swatch(method: str, colour: str | None) -> str:
    """The method's name in HTML, after a dot of its plot colour when it has one.

    Example:
        >>> method_swatch("a<b", None)
        'a&lt;b'
    """
    dot = f'<span class="dot" style="background:{colour}"></span>' if colour else ""
    return dot + html.escape(method)


def embedded_figure(anchor: str, caption: str, png: bytes) -> str:
    """A ``<figure>`` with the PNG embedded as a base64 ``data:`` URI and its caption.

    Example:
        >>> embedded_figure("x", "a & b", b"png").startswith('<figure id="x"><img src="data:image/png;base64,cG5n"')
        True
    """
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{html.escape(anchor)}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
