"""The benchmark report's plots: matplotlib figures drawn off-screen and rendered to PNG bytes.

:func:`render_plots` draws the figures of :data:`PLOTS` that have data for a suite's leaderboards
(top-1 against ECE and against cost, pooled reliability diagrams, learning curves and, given a
``gallery`` callable, what each method does to a few inputs), each method in its
:func:`method_colours` colour. Figures use matplotlib's object API on an Agg canvas: no pyplot,
no global state, no display needed.

Example:
    >>> from mixlab.bench.aggregate import aggregate
    >>> runs = [RunRecord("s", i, f"k{i}", "d", "m", m, i, "finished", final={"top1": t, "ece": 0.05})
    ...         for i, (m, t) in enumerate([("erm", 0.90), ("mixup", 0.93)])]
    >>> boards = aggregate(runs)
    >>> plots = render_plots(runs, boards, method_colours(method_order(boards)), None)
    >>> sorted(plots), plots["top1_vs_ece"][:4]
    (['top1_vs_ece'], b'\\x89PNG')
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mixlab.bench.aggregate import (
    Leaderboard,
    LeaderboardRow,
    epoch_curve,
    method_order,
    pool_reliability,
    row_key,
    runs_by_row,
)
from mixlab.bench.records import BASELINE_METHOD, RunRecord
from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate.catalog import metric_info

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


def render_plots(
    records: Sequence[RunRecord],
    boards: Sequence[Leaderboard],
    colours: dict[str, str],
    gallery: Callable[[RunRecord], Any] | None,
) -> dict[str, bytes]:
    """The plots of :data:`PLOTS` that have data, as PNG bytes by name, in page order.

    ``boards`` are ``aggregate(records)``; ``colours`` maps each method to its colour
    (:func:`method_colours`); ``gallery`` is :func:`mixlab.bench.render.write_report`'s (None: no gallery).
    """
    runs = runs_by_row(records)
    drawers: dict[str, Callable[[], Figure | None]] = {
        "top1_vs_ece": lambda: _scatter_figure(boards, lambda board: "ece", colours),
        "top1_vs_cost": lambda: _scatter_figure(boards, _cost_key, colours),
        "reliability": lambda: _reliability_figure(boards, runs, colours),
        "learning_curves": lambda: _curves_figure(boards, runs, colours),
    }
    if gallery is not None:
        images = _gallery_images(records, gallery, method_order(boards))
        drawers["gallery"] = lambda: _gallery_figure(images, colours)
    rendered = {name: render_png(draw) for name, draw in drawers.items()}
    return {name: png for name, png in rendered.items() if png is not None}


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


def grid_panels(figure: Figure, count: int, columns: int) -> list[Axes]:
    """``count`` axes on a grid of ``columns`` columns (the unused cells hidden), in reading order.

    Example:
        >>> len(grid_panels(new_figure(4, 4), 3, 2))
        3
    """
    rows = math.ceil(count / columns)
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for unused in axes[count:]:
        unused.set_visible(False)
    return axes[:count]


def render_png(draw: Callable[[], Figure | None]) -> bytes | None:
    """Run ``draw`` under the report's plot style and return the figure as PNG bytes (None: nothing to draw).

    Example:
        >>> render_png(lambda: new_figure(1, 1))[:4]
        b'\\x89PNG'
    """
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
    for axes, (board, key) in zip(grid_panels(figure, len(panels), columns), panels, strict=True):
        _scatter_panel(axes, board, key, colours)
    return figure


def _scatter_rows(board: Leaderboard, x_key: str) -> list[LeaderboardRow]:
    return [row for row in board.rows if "top1" in row.metrics and x_key in row.metrics]


def _scatter_panel(axes: Axes, board: Leaderboard, x_key: str, colours: dict[str, str]) -> None:
    x_metric, y_metric = metric_info(x_key), metric_info("top1")
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


def _reliability_figure(
    boards: Sequence[Leaderboard], runs: dict[tuple[str, str, str, str], list[RunRecord]], colours: dict[str, str]
) -> Figure | None:
    panels = []
    for board in boards:
        for row in board.rows:
            pooled = pool_reliability(run.reliability for run in runs[row_key(board, row.method)])
            if pooled is not None:
                title = row.method if len(boards) == 1 else f"{row.method}\n{board.title}"
                panels.append((title, pooled, row))
    if not panels:
        return None
    columns = min(len(panels), 5)
    figure = new_figure(2.5 * columns, 2.7 * math.ceil(len(panels) / columns))
    for index, (axes, (title, pooled, row)) in enumerate(
        zip(grid_panels(figure, len(panels), columns), panels, strict=True)
    ):
        _reliability_panel(axes, pooled, colours.get(row.method, BASELINE_COLOUR))
        ece = row.metrics.get("ece")
        axes.set_title(title if ece is None else f"{title}  (ECE {metric_info('ece').format(ece.mean)} %)")
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


# ------------------------------------------------------------------ learning curves


_CURVES = (("test_acc", "test accuracy (%)", 100.0), ("train_loss", "training loss", 1.0))


def _curves_figure(
    boards: Sequence[Leaderboard], runs: dict[tuple[str, str, str, str], list[RunRecord]], colours: dict[str, str]
) -> Figure | None:
    boards = [
        board for board in boards if any(run.epochs for row in board.rows for run in runs[row_key(board, row.method)])
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
        epochs, means = epoch_curve(runs[row_key(board, row.method)], key)
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
