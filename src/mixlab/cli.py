"""The ``mixlab`` command: ``train`` and ``data list|info|fetch``.

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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mixlab`` command (exits with the command's status).

    Example (shell)::

        mixlab train --config configs/recipes/fashion_mnist_cutmix.yaml --set train.epochs=3
    """
    app(args=argv, prog_name="mixlab")
