"""The ``mixlab`` command: ``bench``, ``report``, ``compare``, ``show``, ``eval``, ``train`` and ``data list|info|fetch``.

Errors that mixlab raises on purpose are shown as one clear message (exit
status 2), without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import mixlab
from mixlab.bench.records import BASELINE_METHOD
from mixlab.errors import MixlabError

app = typer.Typer(
    help="mixlab: a mixup laboratory for PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: list them, show where they are, download them.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)


@contextmanager
def _reported() -> Iterator[None]:
    """Turn mixlab's own errors into a message and exit status 2."""
    try:
        yield
    except MixlabError as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"mixlab {mixlab.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """mixlab: a mixup laboratory for PyTorch."""


@app.command()
def train(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML recipe, e.g. configs/recipes/fashion_mnist_cutmix.yaml")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key, e.g. --set train.epochs=3 (repeatable).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Run directory (default: runs/<config name>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --output from its last checkpoint.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --output.")] = False,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Look for data here first.")] = None,
) -> None:
    """Train a model with a mixing method, as a recipe says. Works under torchrun for DDP."""
    from mixlab.engine import load_config
    from mixlab.engine import train as run_training
    from mixlab.engine.distributed import teardown_distributed

    with _reported():
        cfg = load_config(config, list(overrides or []))
        if data_root is not None:
            cfg.data.root = str(data_root)  # a path, never parsed as YAML
        target = output if output is not None else Path("runs") / (cfg.name or "run")
        try:
            result = run_training(cfg, target, resume=resume, overwrite=overwrite)
        finally:
            teardown_distributed()
    _print_final(result.final, target)


def _print_final(final: dict, target: Path) -> None:
    if not _is_main_process():
        return
    shown = {k: v for k, v in final.items() if k.startswith("test_") or k.startswith("val_")}
    figures = "  ".join(f"{k} {v:.2%}" if k.endswith("_acc") else f"{k} {v:.4f}" for k, v in shown.items())
    out.print(f"finished {final.get('epochs', 0)} epochs: {figures}", highlight=False)
    out.print(f"outputs in {target}", highlight=False)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


@app.command()
def bench(
    suite: Annotated[str, typer.Option("--suite", "-s", help="A suite name (quick, standard, ...) or a YAML file.")] = "quick",
    store: Annotated[Path, typer.Option("--store", help="The results store (SQLite).")] = Path("runs/mixlab.db"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directories go under OUTPUT/<suite>.")] = Path("runs"),
    report_dir: Annotated[Path, typer.Option("--report", help="Where the report is written.")] = Path("report"),
    workers: Annotated[int, typer.Option("--workers", "-w", help="Runs trained at once, one process each.")] = 1,
    methods: Annotated[
        list[str] | None, typer.Option("--method", "-m", help="Only this method label (repeatable).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a run-config key for every run, e.g. train.epochs=2.")
    ] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Look for data here first.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs and stop.")] = False,
) -> None:
    """Run a benchmark suite (resuming where the store left off), then write and print the report."""
    from mixlab.bench.display import BenchDisplay
    from mixlab.bench.runner import run_suite
    from mixlab.bench.store import ResultStore
    from mixlab.bench.suite import load_suite, plan_suite

    with _reported():
        _check_bench_options(workers, output, report_dir, store)
        plan = plan_suite(
            load_suite(suite), overrides=list(overrides or []), data_root=data_root, methods=methods or None
        )
        for notice in plan.notices:
            err.print(f"[bold yellow]note:[/] {notice}", highlight=False, soft_wrap=True)
        if dry_run:
            for spec in plan.runs:
                out.print(f"{spec.key}  ({spec.config.train.epochs} epochs)", highlight=False)
            return
        with ResultStore(store) as results:
            outcome = run_suite(plan, results, output=output, workers=workers, display=BenchDisplay(err))
            records = results.records(plan.suite.name, with_predictions=True)
    minutes, seconds = divmod(round(outcome.wall_time_s), 60)
    out.print(
        f"suite {plan.suite.name!r}: {len(outcome.finished)} run(s) finished, {len(outcome.skipped)} skipped "
        f"(already in {store}), {len(outcome.failed)} failed; wall time {minutes}:{seconds:02d}",
        highlight=False,
    )
    current = {spec.key for spec in plan.runs}  # runs this suite no longer has stay in the store, not in the report
    records = [r for r in records if r.key in current]
    if any(r.finished for r in records):
        with _reported():
            _write_and_print_report(records, plan.suite.name, report_dir, data_root, plan.suite.baseline)
    else:
        err.print("no run finished: no report written", highlight=False)
    if outcome.failed:
        raise typer.Exit(1)


def _check_bench_options(workers: int, output: Path, report_dir: Path, store: Path) -> None:
    """What would fail only after the store was created or the runs had started (refused first)."""
    from mixlab.errors import MixlabValueError

    if workers < 1:
        raise MixlabValueError(f"--workers must be at least 1 (runs trained at once); got {workers}")
    for option, path in (("--output", output), ("--report", report_dir)):
        if path.exists() and not path.is_dir():
            raise MixlabValueError(f"{option} {str(path)!r} is a file; it must be a directory (or a path to create)")
    if store.is_dir():
        raise MixlabValueError(f"--store {str(store)!r} is a directory; it must be the store's file (e.g. runs/mixlab.db)")


@app.command()
def report(
    suite: Annotated[str | None, typer.Option("--suite", "-s", help="Suite name (default: the latest run).")] = None,
    store: Annotated[Path, typer.Option("--store", help="The results store (SQLite).")] = Path("runs/mixlab.db"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the report is written.")] = Path("report"),
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Data for the gallery.")] = None,
) -> None:
    """Write report/leaderboard.md, report/index.html and the plots from the results store."""
    from mixlab.bench.store import ResultStore, StoreError

    with _reported():
        if not store.is_file():
            raise StoreError(f"no results store at {str(store)!r}; run `mixlab bench` first or pass --store")
        if store.stat().st_size == 0:  # opening it would make it a store: a report must not write its input
            raise StoreError(f"{str(store)!r} is an empty file, not a results store; pass the store `mixlab bench` wrote")
        with ResultStore(store) as results:
            names = results.suite_names()
            name = suite or (names[0] if names else None)
            if name is None or name not in names:
                raise StoreError(
                    f"the store {str(store)!r} holds no suite {name!r}; it holds: {', '.join(names) or '(none)'}"
                )
            records = results.records(name, with_predictions=True)
            baseline = results.suite_definition(name).get("baseline", BASELINE_METHOD)
        _write_and_print_report(records, name, output, data_root, baseline)


def _write_and_print_report(
    records: list, suite: str, report_dir: Path, data_root: Path | None, baseline: str = BASELINE_METHOD
) -> None:
    from mixlab.bench.report import aggregate, leaderboard_markdown, write_report
    from mixlab.bench.show import dataset_gallery

    boards = aggregate(records, baseline=baseline)
    gallery = dataset_gallery(data_root=data_root)
    paths = write_report(records, report_dir, suite=suite, gallery=gallery, baseline=baseline, boards=boards)
    typer.echo(leaderboard_markdown(boards))  # plain text: rich would wrap the table's lines
    out.print(f"report: {paths['index']} (leaderboard.md and the plots next to it)", highlight=False)


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="A run: its id, SUITE:KEY, or its key (e.g. quick:fashion_mnist/cnn_small/mixup/seed0).")],
    run_b: Annotated[str, typer.Argument(help="The run it is compared with (the difference is A − B).")],
    store: Annotated[Path, typer.Option("--store", help="The results store (SQLite).")] = Path("runs/mixlab.db"),
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples of the test set.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
) -> None:
    """Compare two stored runs sample by sample: paired bootstrap 95 % intervals and McNemar's test."""
    from mixlab.bench.comparisons import compare_runs, comparison_rows, describe_run, format_p_value
    from mixlab.bench.store import ResultStore, StoreError

    with _reported():
        if not store.is_file():
            raise StoreError(f"no results store at {str(store)!r}; run `mixlab bench` first or pass --store")
        if store.stat().st_size == 0:  # opening it would make it a store: a report must not write its input
            raise StoreError(f"{str(store)!r} is an empty file, not a results store; pass the store `mixlab bench` wrote")
        with ResultStore(store) as results:
            a, b = (_one_run(results, text) for text in (run_a, run_b))
        comparison = compare_runs(a, b, resamples=resamples, seed=seed)
    table = Table(title=f"A = {describe_run(a)}\nB = {describe_run(b)}", title_justify="left")
    for header in ("statistic", "A", "B", "A − B [95 % interval]"):
        table.add_column(header, justify="left" if header == "statistic" else "right")
    for row in comparison_rows(a, b, comparison):
        table.add_row(*row)
    out.print(table)
    notes = [f"{comparison.num_samples} test samples, {comparison.resamples} paired bootstrap resamples (seed {seed})"]
    if comparison.mcnemar_p is not None:
        notes.append(f"McNemar's exact test of equal top-1: p = {format_p_value(comparison.mcnemar_p[0])}")
    out.print("; ".join(notes) + ". * marks an interval that excludes 0.", highlight=False)


def _one_run(results, text: str):
    """The single run ``text`` names in the store, with its predictions; a clear error otherwise."""
    from mixlab.bench.store import StoreError

    found = results.find_runs(text)
    if len(found) != 1:
        what = "no run" if not found else f"{len(found)} runs ({', '.join(f'id {r.run_id}: {r.suite}' for r in found)})"
        raise StoreError(
            f"{what} in the store match {text!r}; name a run by its id, SUITE:KEY or a key unique in the store "
            "(sqlite3 STORE 'SELECT id, suite, key FROM runs' lists them)"
        )
    return results.run_record(found[0].run_id, with_predictions=True)


@app.command()
def show(
    method: Annotated[str, typer.Argument(help="A mixer name, e.g. cutmix.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Whose test images to mix.")] = "fashion_mnist",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG file (default: show_METHOD.png).")] = None,
    options: Annotated[
        list[str] | None, typer.Option("--option", help="A mixer option, e.g. --option alpha=1.0 (repeatable).")
    ] = None,
    pairs: Annotated[int, typer.Option("--pairs", help="How many pairs to show.")] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the mixer's draws.")] = 0,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Look for data here first.")] = None,
) -> None:
    """Write a PNG grid of pairs and their mixed result, to see what a method does."""
    from mixlab.bench.show import show_method
    from mixlab.engine.config import apply_overrides

    with _reported():
        target = output if output is not None else Path(f"show_{method}.png")
        parsed = apply_overrides({}, list(options or []))
        path = show_method(
            method, dataset=dataset, output=target, data_root=data_root, pairs=pairs, seed=seed, options=parsed
        )
    out.print(f"wrote {path}", highlight=False)


_ANALYSIS_HELP = "Also run this analysis (calibration, ood, corruptions, transfer, gap, geometry); repeatable, or 'all'."


@app.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A run directory or its checkpoint.pt.")],
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Look for data here first.")] = None,
    fgsm_eps: Annotated[float | None, typer.Option("--fgsm-eps", help="FGSM radius in [0, 1] pixel units.")] = None,
    noise_std: Annotated[float | None, typer.Option("--noise-std", help="Gaussian noise std, pixel units.")] = None,
    analyses: Annotated[list[str] | None, typer.Option("--analysis", help=_ANALYSIS_HELP)] = None,
    ood: Annotated[list[str] | None, typer.Option("--ood", help="OOD source (repeatable); default: automatic.")] = None,
    transfer: Annotated[
        list[str] | None, typer.Option("--transfer", help="Transfer target (repeatable); default: automatic.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Compute the benchmark's metrics (accuracy, calibration, robustness) for a saved model, and analyses."""
    import json

    from pydantic import ValidationError

    from mixlab.engine.config import ConfigError, format_validation_error
    from mixlab.evaluate import ANALYSES, EvalSettings, evaluate_checkpoint

    with _reported():
        every = bool(analyses) and "all" in analyses
        if every:
            analyses = list(ANALYSES)
        chosen = {"fgsm_eps": fgsm_eps, "noise_std": noise_std, "analyses": analyses, "ood": ood, "transfer": transfer}
        try:
            settings = EvalSettings(**{k: v for k, v in chosen.items() if v is not None})
        except ValidationError as error:
            raise ConfigError(format_validation_error(error, "eval options")) from None
        result = evaluate_checkpoint(checkpoint, data_root=data_root, settings=settings, skip_refused=every)
    for name, reason in result.artifacts.get("analysis_skipped", {}).items():
        err.print(f"note: analysis {name!r} skipped: {reason}", highlight=False, soft_wrap=True)
    if as_json:
        out.print_json(json.dumps(result.metrics))
        return
    table = Table("metric", "value")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)


@data_app.command("list")
def data_list(root: Annotated[Path | None, typer.Option("--root", help="Look here first.")] = None) -> None:
    """List the datasets mixlab reads and where each one was found."""
    from mixlab.data import DATASETS, DataNotFoundError, find_data

    table = Table("dataset", "task", "found at", "description")
    for name in sorted(DATASETS):
        spec = DATASETS[name]
        try:
            where = str(find_data(name, root))
        except DataNotFoundError:
            where = "[dim]not found[/]"
        except MixlabError as error:  # generated or user-given sets have no fixed location
            where = f"[dim]{error}[/]"
        table.add_row(name, getattr(spec, "task", ""), where, getattr(spec, "description", ""))
    out.print(table)


@data_app.command("info")
def data_info(
    name: str,
    root: Annotated[Path | None, typer.Option("--root", help="Look here first.")] = None,
) -> None:
    """Show where a dataset is, its splits, classes and input shape."""
    from mixlab.data import dataset_info

    with _reported():
        info = dataset_info(name, root)
    for key, value in info.items():
        out.print(f"{key}: {value}", highlight=False, soft_wrap=True)


@data_app.command("fetch")
def data_fetch(
    name: str,
    root: Annotated[Path | None, typer.Option("--root", help="Download into this folder.")] = None,
) -> None:
    """Download a dataset from its official source (only ever when asked)."""
    from mixlab.data import fetch_dataset

    with _reported():
        path = fetch_dataset(name, root)
    out.print(f"{name} is in {path}", highlight=False)


@app.command()
def claims(
    names: Annotated[list[str] | None, typer.Argument(help="Claim names or files (default: every claim).")] = None,
    store: Annotated[Path, typer.Option("--store", help="The results store (SQLite).")] = Path("runs/mixlab.db"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directories go under OUTPUT/<suite>.")] = Path("runs"),
    report_dir: Annotated[Path, typer.Option("--report", help="Where claims.md and claims.html go.")] = Path("report"),
    workers: Annotated[int, typer.Option("--workers", "-w", help="Runs trained at once, one process each.")] = 1,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Look for data here first.")] = None,
    list_only: Annotated[
        bool, typer.Option("--list", help="List the claims (statement, paper, runs, budget) and stop.")
    ] = False,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Decide the claims from what the store holds; train nothing.")
    ] = False,
) -> None:
    """Test published findings about mixup: run each claim's suite (resuming), decide it, write the claims report."""
    from mixlab.bench.claims import list_claim_details, run_claims, write_claims_report
    from mixlab.bench.display import BenchDisplay
    from mixlab.bench.store import ResultStore, StoreError

    if list_only:
        with _reported():
            listings = list_claim_details(names, store=store, data_root=data_root)
        _print_claim_listings(listings)
        if not all(listing.valid for listing in listings):
            raise typer.Exit(1)
        return
    with _reported():
        if report_only and not store.is_file():
            raise StoreError(f"no results store at {str(store)!r}; run `mixlab claims` first or pass --store")
        with ResultStore(store) as results:
            outcomes = run_claims(
                names, results, output=output, workers=workers, data_root=data_root, train=not report_only,
                display=lambda item: _announce_claim(item, BenchDisplay(err)),
            )  # fmt: skip
        paths = write_claims_report(outcomes, report_dir)
    _print_claim_results(outcomes)
    out.print(f"claims report: {paths['markdown']} and {paths['html']}", highlight=False)
    if any(outcome.error for outcome in outcomes):
        raise typer.Exit(1)


def _announce_claim(item, display):
    """Say which claim's suite runs next; return the suite's progress display."""
    err.print(f"[bold]claim {item.claim.name}[/]: suite {item.suite!r}, {len(item.plan.runs)} runs", highlight=False)
    return display


def _print_claim_listings(listings: list) -> None:
    for listing in listings:
        if not listing.valid:
            out.print(f"[bold red]{listing.name}[/]: invalid: {listing.error}", highlight=False, soft_wrap=True)
            continue
        claim = listing.claim
        measured = ""
        if listing.measured_s is not None:
            measured = f", measured {listing.measured_s / 60:.1f} min ({listing.finished_runs} finished runs in the store)"
        out.print(
            f"[bold]{claim.name}[/]: {claim.statement}\n"
            f"    {claim.paper.citation} ({claim.paper.where})\n"
            f"    suite {listing.suite}: {listing.runs} runs, budget {claim.budget_minutes:g} min{measured}",
            highlight=False,
            soft_wrap=True,
        )


def _print_claim_results(outcomes: list) -> None:
    from mixlab.bench.claims import describe_check

    colours = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow"}
    table = Table("claim", "mixlab (95 % interval)", "verdict", title="claims", title_justify="left")
    for outcome in outcomes:
        lines = [describe_check(check) for check in outcome.checks]
        if outcome.error:
            lines.append(f"error: {outcome.error}")
        colour = colours.get(outcome.verdict, "white")
        table.add_row(outcome.claim.name, "\n".join(lines), f"[{colour}]{outcome.verdict}[/]")
    out.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mixlab`` command (exits with the command's status).

    Example (shell)::

        mixlab train --config configs/recipes/fashion_mnist_cutmix.yaml --set train.epochs=3
    """
    app(args=argv, prog_name="mixlab")
