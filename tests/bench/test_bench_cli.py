"""The `mixlab show`, `mixlab eval` and `mixlab bench --dry-run` commands."""

from __future__ import annotations

import json
from pathlib import Path

from bench_fixtures import tiny_suite
from PIL import Image
from typer.testing import CliRunner

from mixlab.bench.runner import run_suite
from mixlab.bench.store import ResultStore
from mixlab.bench.suite import load_suite, plan_suite
from mixlab.cli import app

runner = CliRunner()


def test_show_writes_a_png_of_pairs_and_mixes(tmp_path: Path) -> None:
    root = tiny_suite(tmp_path).parent / "data"
    target = tmp_path / "cutmix.png"
    result = runner.invoke(
        app, ["show", "cutmix", "--data-root", str(root), "--output", str(target), "--option", "alpha=1.0", "--pairs", "3"]
    )
    assert result.exit_code == 0, result.output
    with Image.open(target) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_show_refuses_an_unknown_method_listing_the_known_ones(tmp_path: Path) -> None:
    result = runner.invoke(app, ["show", "cutmx", "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "cutmx" in result.output and "cutmix" in result.output
    assert not (tmp_path / "x.png").exists()


def test_eval_of_a_benchmarked_run_matches_the_store(tmp_path: Path) -> None:
    path = tiny_suite(tmp_path, methods=[{"name": "mixup", "mix": {"method": "mixup"}}], epochs=1)
    with ResultStore(tmp_path / "db") as store:
        run_suite(plan_suite(load_suite(path)), store, output=tmp_path / "runs")
        (record,) = store.records("tiny")
    result = runner.invoke(app, ["eval", str(tmp_path / "runs" / "tiny" / record.key), "--json", "--fgsm-eps", "0.03"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    for key in ("top1", "nll", "ece", "ece_ts", "brier", "fgsm_acc", "noise_acc"):
        assert abs(metrics[key] - record.final[key]) < 1e-5, key


def test_eval_of_a_missing_run_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "nothing" in result.output


def test_bench_dry_run_lists_runs_and_writes_nothing(tmp_path: Path) -> None:
    path = tiny_suite(tmp_path)
    store = tmp_path / "mixlab.db"
    result = runner.invoke(app, ["bench", "--suite", str(path), "--store", str(store), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "fashion_mnist/cnn_small/cutmix/seed0" in result.output and not store.exists()


def test_eval_refuses_a_negative_radius_naming_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", str(tmp_path), "--fgsm-eps", "-1"])
    assert result.exit_code == 2 and "fgsm_eps" in result.output and "-1" in result.output
