"""The benchmark report as text: Markdown and HTML leaderboards, and the written report files.

:func:`leaderboard_markdown` prints the leaderboards of :func:`~mixlab.bench.aggregate.aggregate`;
:func:`write_report` writes ``leaderboard.md``, the plots of :mod:`mixlab.bench.plots` and
``index.html``, one self-contained page (no external resource at all: inline CSS, plots embedded
as ``data:`` URIs).

Example:
    >>> from mixlab.bench.aggregate import aggregate
    >>> runs = [RunRecord("s", i, f"k{i}", "digits", "mlp", m, i, "finished", final={"top1": t})
    ...         for i, (m, t) in enumerate([("erm", 0.90), ("mixup", 0.93), ("mixup", 0.95)])]
    >>> print(leaderboard_markdown(aggregate(runs)).splitlines()[4])
    | 1 | mixup | **94.00 ± 1.41** |
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mixlab.bench.aggregate import Leaderboard, LeaderboardRow, aggregate, method_order
from mixlab.bench.analysis_report import (
    AnalysisSection,
    analysis_html,
    analysis_markdown,
    analysis_sections,
    embedded_figure,
    method_swatch,
)
from mixlab.bench.comparisons import format_difference, format_p_value
from mixlab.bench.plots import PLOTS, method_colours, render_plots
from mixlab.bench.records import BASELINE_METHOD, RunRecord
from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate.catalog import MetricInfo, metric_info

# ------------------------------------------------------------------ tables


def leaderboard_markdown(boards: Sequence[Leaderboard]) -> str:
    """Markdown tables, one per board: rank, method, ``mean ± std`` cells, the best of each column in bold.

    Example:
        >>> from mixlab.bench.aggregate import Summary
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
        "| " + " | ".join([_rank_header(board), "method", *(metric.header for metric in columns)]) + " |",
        "|---:|:---|" + "---:|" * len(columns),
    ]
    for row in board.rows:
        cells = [_rank_text(row), _escape_markdown(row.method)]
        for metric in columns:
            text = _cell_text(metric, row)
            cells.append(f"**{text}**" if row.method in best[metric.key] else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", seeds_sentence(board)]
    table = differences_table(board)
    if table:
        headers, rows = table
        lines += ["", f"Differences from {board.baseline} (method − {board.baseline}), paired on the same test samples:", ""]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|:---|" + "---:|" * (len(headers) - 1))
        lines += ["| " + " | ".join(_escape_markdown(cell) for cell in row) + " |" for row in rows]
        lines += ["", differences_sentence(board)]
    return "\n".join(lines)


def _rank_header(board: Leaderboard) -> str:
    return "band" if board.banded else "rank"


def differences_table(board: Leaderboard) -> tuple[list[str], list[list[str]]] | None:
    """Headers and rows of the board's differences from its baseline, or ``None`` without comparisons.

    Each cell is ``Δ [low, high]`` in display units (points for accuracies) with ``*`` when the
    interval excludes 0; McNemar's p is the largest over the paired seeds.
    """
    compared = [c for c in board.differences.values() if c.comparison is not None]
    if not compared:
        return None
    statistics = list(compared[0].comparison.differences)
    headers = ["method", "seeds", *(_difference_header(s) for s in statistics)]
    mcnemar = compared[0].comparison.mcnemar_p is not None
    if mcnemar:
        headers.insert(3, "McNemar p")
    rows = []
    for entry in board.differences.values():
        if entry.comparison is None:
            rows.append([entry.method, "–", *(["–"] * (len(headers) - 2)), entry.missing])
            continue
        cells = [format_difference(s, entry.comparison[s].interval) for s in statistics]
        if mcnemar:
            cells.insert(1, format_p_value(max(entry.comparison.mcnemar_p)))
        rows.append([entry.method, str(len(entry.seeds)), *cells])
    if any(len(row) > len(headers) for row in rows):
        headers.append("note")
        rows = [row + [""] * (len(headers) - len(row)) for row in rows]
    return headers, rows


def _difference_header(statistic: str) -> str:
    info = metric_info(statistic)
    return f"Δ {info.label} (points)" if info.percent else f"Δ {info.title}"


def differences_sentence(board: Leaderboard) -> str:
    """What the differences and the bands mean (the text under the table)."""
    compared = [c.comparison for c in board.differences.values() if c.comparison is not None]
    resamples = compared[0].resamples if compared else 0
    return (
        f"Intervals: 95 % paired bootstrap over the test set ({resamples:,} resamples), widened to the t-interval "
        "over seeds when a method has several; * marks an interval that excludes 0. "
        f"Bands: methods whose intervals of difference from {board.baseline} overlap the band leader's share a band "
        "(this benchmark cannot order them)."
    )


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


def _cell_text(metric: MetricInfo, row: LeaderboardRow) -> str:
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
        >>> from mixlab.bench.aggregate import Summary
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
        f'<div class="scroll"><table>\n<thead><tr><th>{_rank_header(board)}</th><th>method</th>{head}</tr></thead>\n'
        + "<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table></div>"
    )
    note = f'<p class="note">{html.escape(seeds_sentence(board))} Bold: best in its column.</p>'
    return f"<h3>{html.escape(board.title)}</h3>\n{table}\n{note}{_differences_html(board, colours)}"


def _differences_html(board: Leaderboard, colours: dict[str, str]) -> str:
    table = differences_table(board)
    if table is None:
        return ""
    headers, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [f'<td class="method">{_swatch(row[0], colours.get(row[0]))}</td>']
        cells += [f'<td{" class=clear" if cell.endswith(" *") else ""}>{html.escape(cell)}</td>' for cell in row[1:]]
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = f"Differences from {html.escape(board.baseline)} (method − {html.escape(board.baseline)})"
    return (
        f'\n<h4>{title}</h4>\n<div class="scroll"><table class="diff">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + f'\n</tbody>\n</table></div>\n<p class="note">{html.escape(differences_sentence(board))}</p>'
    )


def _swatch(method: str, colour: str | None) -> str:
    return method_swatch(method, colour)


# ------------------------------------------------------------------ the report


LEADERBOARD_FILE = "leaderboard.md"
INDEX_FILE = "index.html"
#: the page ``mixlab claims`` writes into the same report folder; the suite's page links to it when present.
CLAIMS_PAGE = "claims.html"


def write_report(
    records: Iterable[RunRecord],
    out_dir: str | os.PathLike,
    *,
    suite: str,
    gallery: Callable[[RunRecord], Any] | None = None,
    baseline: str = BASELINE_METHOD,
    boards: list[Leaderboard] | None = None,
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
        baseline: the method every other is compared with (when the records carry predictions).
        boards: the leaderboards, when already aggregated from ``records`` (saves doing it twice).

    Raises:
        MixlabValueError: no record is finished (nothing is written, ``out_dir`` is not created).
    """
    records, out_dir = _checked_inputs(records, out_dir, suite, gallery)
    boards = boards if boards is not None else aggregate(records, baseline=baseline)
    colours = method_colours(method_order(boards))
    plots = render_plots(records, boards, colours, gallery)
    analysis = analysis_sections(records, boards, colours)
    files = {name: (PLOTS[name][0], png) for name, png in plots.items()}
    files |= {file.removesuffix(".png"): (file, png) for s in analysis for file, _, png in s.plots.values()}
    markdown = _markdown_report(suite, records, boards, plots, analysis)
    files["leaderboard"] = (LEADERBOARD_FILE, markdown.encode())
    links = [(CLAIMS_PAGE, "claims tested at CPU scale")] if (out_dir / CLAIMS_PAGE).is_file() else []
    files["index"] = (INDEX_FILE, html_page(suite, records, boards, plots, colours, links, analysis).encode())
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


def _markdown_report(
    suite: str,
    records: list[RunRecord],
    boards: list[Leaderboard],
    plots: dict[str, bytes],
    analysis: Sequence[AnalysisSection] = (),
) -> str:
    parts = [f"# mixlab benchmark: {suite}", "", _run_counts(records) + ".", "", leaderboard_markdown(boards)]
    if plots:
        parts += ["", "## Plots", ""]
        parts += ["\n\n".join(f"![{PLOTS[name][1]}]({PLOTS[name][0]})" for name in plots)]
    if analysis:
        parts += ["", analysis_markdown(analysis)]
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
td.best { font-weight: 700; background: #e3f4e1; } td.clear { font-weight: 700; }
h4 { font-size: 0.95em; margin: 14px 0 4px; color: #333; }
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
    links: Sequence[tuple[str, str]] = (),
    analysis: Sequence[AnalysisSection] = (),
) -> str:
    """The report as one HTML page with nothing external: ``plots`` (name -> PNG bytes) are embedded.

    ``links`` are (relative file, text) pairs shown under the title, such as the claims page;
    ``analysis`` the boards' analysis sections (:func:`mixlab.bench.analysis_report.analysis_sections`),
    shown after the plots.

    Example:
        >>> page = html_page("quick", [], [], {})
        >>> "<title>mixlab benchmark: quick</title>" in page, "http" in page
        (True, False)
    """
    body = [
        f"<h1>mixlab benchmark: {html.escape(suite)}</h1>",
        f'<p class="meta">suite <code>{html.escape(suite)}</code> · {html.escape(_run_counts(records))}{_period(records)}</p>',
        *(f'<p class="meta">See also: <a href="{html.escape(href)}">{html.escape(text)}</a></p>' for href, text in links),
        "<h2>Leaderboard</h2>",
        f'<p class="note">{_READING_NOTE}</p>',
        *(leaderboard_html(board, colours) for board in boards),
    ]
    if plots:
        body += ["<h2>Plots</h2>", *(_figure_html(name, png) for name, png in plots.items())]
    if analysis:
        body.append(analysis_html(analysis, colours))
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
    return embedded_figure(name, PLOTS[name][1], png)


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
