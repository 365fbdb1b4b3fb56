"""Comparisons between stored runs: pairing by seed, bands, and `mixlab compare`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mixlab.bench.comparisons import board_bands, compare_with_baseline, rank_bands
from mixlab.bench.store import ResultStore
from mixlab.cli import app
from mixlab.evaluate.paired import Interval
from mixlab.evaluate.predictions import classification_predictions

Y = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(0))


def _predictions(accuracy: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    correct = torch.rand(len(Y), generator=g) < accuracy
    predicted = torch.where(correct, Y, (Y + 1) % 10)
    return classification_predictions(4.0 * torch.nn.functional.one_hot(predicted, 10).float(), Y)


def _store(path: Path, runs: list[tuple[str, int, float | None]]) -> ResultStore:
    """A store holding finished runs (method, seed, accuracy; None: stored without predictions)."""
    store = ResultStore(path)
    store.save_suite("s", {"name": "s"})
    for method, seed, accuracy in runs:
        key = f"d/m/{method}/seed{seed}"
        run_id = store.start_run("s", key, dataset="d", model="m", method=method, seed=seed, config={})
        predictions = None if accuracy is None else _predictions(accuracy, seed=100 * seed + len(method))
        metrics = {} if predictions is None else {"top1": predictions.metric("top1")}
        store.finish_run(run_id, metrics=metrics, wall_time_s=1.0, predictions=predictions)
    return store


def test_methods_pair_with_the_baseline_by_seed(tmp_path: Path) -> None:
    runs = [*(("erm", s, 0.6) for s in range(3)), *(("good", s, 0.9) for s in range(4)), ("same", 0, 0.6)]
    with _store(tmp_path / "db", runs) as store:
        comparisons = compare_with_baseline(store.records("s", with_predictions=True), resamples=200)
    good = comparisons[("d", "m", "good")]
    assert good.seeds == (0, 1, 2) and good.comparison.num_seeds == 3  # seed 3 has no baseline run
    assert good.comparison["top1"].interval.low > 0.2 and good.comparison["top1"].interval.method == "hull"
    same = comparisons[("d", "m", "same")]
    assert same.comparison["top1"].interval.excludes_zero is False
    assert board_bands(comparisons.values(), "erm") == {"good": 1, "erm": 2, "same": 2}


def test_runs_without_predictions_say_why(tmp_path: Path) -> None:
    with _store(tmp_path / "db", [("erm", 0, None), ("mixup", 0, 0.8), ("cutmix", 1, 0.8)]) as store:
        comparisons = compare_with_baseline(store.records("s", with_predictions=True))
    assert "without per-sample predictions" in comparisons[("d", "m", "mixup")].missing
    assert "no finished erm run with the same seed" in comparisons[("d", "m", "cutmix")].missing


def test_bands_follow_the_leader_and_the_direction() -> None:
    rows = [
        ("a", Interval(0.05, 0.04, 0.06)),
        ("b", Interval(0.03, 0.01, 0.045)),  # overlaps a: band 1
        ("c", Interval(0.02, 0.0, 0.035)),  # does not overlap a: starts band 2
        ("erm", Interval(0.0, 0.0, 0.0)),  # overlaps c, the leader of band 2
    ]
    assert rank_bands(rows, higher_is_better=True) == {"a": 1, "b": 1, "c": 2, "erm": 2}
    assert rank_bands(rows, higher_is_better=False) == {"erm": 1, "c": 1, "b": 2, "a": 2}


def test_compare_cli_prints_intervals_and_mcnemar(tmp_path: Path) -> None:
    _store(tmp_path / "db", [("erm", 0, 0.6), ("mixup", 0, 0.9)]).close()
    result = CliRunner().invoke(
        app, ["compare", "s:d/m/mixup/seed0", "1", "--store", str(tmp_path / "db"), "--resamples", "200"]
    )
    assert result.exit_code == 0, result.output
    assert "McNemar" in result.output and "p = <1e-4" in result.output
    assert "top-1" in result.output and "*" in result.output and "200 paired bootstrap resamples" in result.output


@pytest.mark.parametrize(
    ("run", "message"),
    [("nope", "no run in the store match 'nope'"), ("d/m/erm/seed0", "has no stored predictions")],
)
def test_compare_cli_refuses_unknown_runs_and_runs_without_predictions(tmp_path: Path, run: str, message: str) -> None:
    _store(tmp_path / "db", [("erm", 0, None), ("mixup", 0, 0.9)]).close()
    result = CliRunner().invoke(app, ["compare", "d/m/mixup/seed0", run, "--store", str(tmp_path / "db")])
    assert result.exit_code == 2 and message in " ".join(result.output.split())
