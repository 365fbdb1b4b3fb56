"""The claims report: each check's outcome in its display units, the claims table and details as Markdown
and as a standalone HTML page (``mixlab claims`` writes ``claims.md`` and ``claims.html``).

Units and labels come from the metric catalog (:func:`mixlab.evaluate.catalog.metric_info`).

Example:
    >>> format_value("top1", 0.8512)
    '85.12 %'
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

from mixlab.bench.claims.spec import ClaimCheck
from mixlab.bench.claims.verdict import CheckResult, ClaimResult
from mixlab.evaluate.catalog import METRICS, MetricInfo, metric_info
from mixlab.evaluate.paired import Interval


def _metric(statistic: str) -> MetricInfo:
    """The catalog's declaration of ``statistic``; for an epoch metric of the training log, which the catalog does
    not declare (``test_acc``, ``train_loss``, ...), one labelled by its key, in percent when it is an accuracy."""
    if statistic in METRICS:
        return metric_info(statistic)
    return MetricInfo(statistic, statistic, None, percent=statistic.endswith("_acc"))


def _statistic_label(check: ClaimCheck) -> str:
    label = _metric(check.statistic).label
    return label if check.epoch is None else f"{label} at epoch {check.epoch}"


def format_value(statistic: str, value: float) -> str:
    """A statistic's value in its display units: accuracies in percent, times in seconds, others as they are.

    Example:
        >>> format_value("top1", 0.8512), format_value("train_time_s", 12.345), format_value("nll", 0.41234)
        ('85.12 %', '12.35 s', '0.4123')
    """
    info = _metric(statistic)
    if info.percent:
        return f"{info.scaled(value):.2f} %"
    unit = f" {info.unit}" if info.unit else ""
    return f"{value:.4g}{unit}"


def _difference_units(check: ClaimCheck) -> tuple[float, str]:
    """The scale and unit of a check's differences: percent of the baseline, points, or the metric's own unit."""
    if check.relative:
        return 100.0, " %"
    info = _metric(check.statistic)
    if info.percent:
        return info.scaled(1.0), " pts"  # a difference of two percentages, in the catalog's display scale: points
    return 1.0, f" {info.unit}" if info.unit else ""


def format_difference(check: ClaimCheck, interval: Interval) -> str:
    """``Δ [low, high]`` in the check's units: points for accuracies, percent for ratios, else the metric's own.

    Example:
        >>> check = ClaimCheck(label="c", method="mixup", baseline="erm", statistic="top1", expect="higher")
        >>> format_difference(check, Interval(0.0123, 0.0045, 0.0201))
        '+1.23 pts [+0.45, +2.01]'
    """
    scale, unit = _difference_units(check)
    digits = ".1f" if check.relative else ".2f" if _metric(check.statistic).percent else ".4g"

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
    if check.expect in ("not_lower", "not_higher"):
        side = "lower" if check.expect == "not_lower" else "higher"
        return f"not {side} by more than {check.margin * scale:g}{unit} (non-inferiority)"
    rule = f"{check.expect}" + (f" by more than {check.margin * scale:g}{unit}" if check.margin else "")
    if check.equivalence is not None:
        rule += f"; not reproduced within ±{check.equivalence * scale:g}{unit}"
    return rule


def claims_markdown(results: Sequence[ClaimResult]) -> str:
    """The claims table (claim, paper, the paper's figure, mixlab's figure with its 95 % interval, verdict),
    then each claim's details: setting, regime, rules, per-seed differences and anything that went wrong.

    Example:
        >>> import yaml
        >>> from mixlab.bench.claims import EXAMPLE_CLAIM, Claim, evaluate_claim
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
        >>> import yaml
        >>> from mixlab.bench.claims import EXAMPLE_CLAIM, Claim, evaluate_claim
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
        >>> import yaml
        >>> from mixlab.bench.claims import EXAMPLE_CLAIM, Claim, evaluate_claim
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
