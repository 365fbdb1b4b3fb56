"""Benchmark reports: leaderboards over seeds, plots, and one self-contained HTML page.

The report lives in three modules, one job each; this module gathers their public names:

- :mod:`mixlab.bench.aggregate`: the leaderboards (:func:`aggregate`, :class:`Leaderboard`, the
  per-run and pooled values the plots draw);
- :mod:`mixlab.bench.render`: Markdown and HTML (:func:`leaderboard_markdown`,
  :func:`html_page`) and :func:`write_report`, which writes ``leaderboard.md``, the plots and
  ``index.html``;
- :mod:`mixlab.bench.plots`: the matplotlib figures, rendered to PNG;
- :mod:`mixlab.bench.analysis_report`: the analysis section of each board (:func:`analysis_sections`):
  the issue-13 analyses' tables, mCE against the baseline and their plots.

The columns' keys, labels, directions and formats are declared in :mod:`mixlab.evaluate.catalog`.

Example:
    >>> from mixlab.bench.records import RunRecord
    >>> runs = [RunRecord("s", i, f"k{i}", "digits", "mlp", m, i, "finished", final={"top1": t})
    ...         for i, (m, t) in enumerate([("erm", 0.90), ("mixup", 0.93), ("mixup", 0.95)])]
    >>> [(row.method, round(row.metrics["top1"].mean, 2)) for row in aggregate(runs)[0].rows]
    [('mixup', 0.94), ('erm', 0.9)]
"""

from __future__ import annotations

from mixlab.bench.aggregate import (
    LEADERBOARD_METRICS,
    Leaderboard,
    LeaderboardRow,
    Summary,
    aggregate,
    baseline_images_per_s,
    epoch_curve,
    method_order,
    pool_reliability,
    run_metrics,
)
from mixlab.bench.analysis_report import (
    ANALYSIS_PLOTS,
    AnalysisSection,
    AnalysisTable,
    analysis_html,
    analysis_markdown,
    analysis_sections,
    mean_corruption_errors,
)
from mixlab.bench.plots import (
    BASELINE_COLOUR,
    DPI,
    PALETTE,
    PLOTS,
    figure_to_array,
    method_colours,
    new_figure,
    render_plots,
)
from mixlab.bench.render import (
    INDEX_FILE,
    LEADERBOARD_FILE,
    html_page,
    leaderboard_html,
    leaderboard_markdown,
    seeds_sentence,
    write_report,
)

#: the leaderboard's columns, in table order (:data:`mixlab.bench.aggregate.LEADERBOARD_METRICS`).
METRICS = LEADERBOARD_METRICS

__all__ = [
    "ANALYSIS_PLOTS",
    "BASELINE_COLOUR",
    "DPI",
    "INDEX_FILE",
    "LEADERBOARD_FILE",
    "LEADERBOARD_METRICS",
    "METRICS",
    "PALETTE",
    "PLOTS",
    "AnalysisSection",
    "AnalysisTable",
    "Leaderboard",
    "LeaderboardRow",
    "Summary",
    "aggregate",
    "analysis_html",
    "analysis_markdown",
    "analysis_sections",
    "baseline_images_per_s",
    "epoch_curve",
    "figure_to_array",
    "html_page",
    "leaderboard_html",
    "leaderboard_markdown",
    "mean_corruption_errors",
    "method_colours",
    "method_order",
    "new_figure",
    "pool_reliability",
    "render_plots",
    "run_metrics",
    "seeds_sentence",
    "write_report",
]
