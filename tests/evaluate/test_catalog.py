"""The metric catalog: every recorded or reported metric declared once, the report's columns built from it."""

from __future__ import annotations

import pytest
import torch

from mixlab.bench.aggregate import LEADERBOARD_METRICS, Leaderboard, LeaderboardRow, Summary
from mixlab.data import ArrayData
from mixlab.errors import MixlabValueError
from mixlab.evaluate import METRICS, MetricInfo, evaluate_classifier, evaluate_regressor, metric_info
from mixlab.evaluate.predictions import STATISTICS


def test_every_metric_the_evaluation_records_is_declared() -> None:
    g = torch.Generator().manual_seed(0)
    part = ArrayData(torch.randn(40, 4, generator=g), torch.randint(0, 6, (40,), generator=g))
    model = torch.nn.Linear(4, 6)
    classifier = evaluate_classifier(model, part, val=part, preprocess=lambda batch: batch).metrics
    regression = ArrayData(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g))
    regressor = evaluate_regressor(torch.nn.Linear(4, 1), regression, preprocess=lambda batch: batch).metrics
    cost = {"images_per_s", "train_time_s", "wall_time_s", "epochs", "step_ratio"}  # the bench runner's and report's
    recorded = set(classifier) | set(regressor) | cost | {key for keys in STATISTICS.values() for key in keys}
    assert recorded <= set(METRICS), recorded - set(METRICS)
    assert {"top5", "temperature", "ece_ts", "nll_ts", "fgsm_acc", "noise_acc"} <= set(classifier)


def test_the_registry_is_keyed_by_each_declarations_key() -> None:
    assert all(key == info.key and isinstance(info, MetricInfo) for key, info in METRICS.items())
    assert all(info.label and info.description and info.decimals >= 0 for info in METRICS.values())


@pytest.mark.parametrize("key", ["rmse", "mae", "mse", "nll", "ece", "brier", "wall_time_s", "step_ratio"])
def test_errors_and_costs_are_lower_is_better(key: str) -> None:
    assert metric_info(key).higher_is_better is False


def test_an_unknown_key_names_itself_and_the_known_ones() -> None:
    with pytest.raises(MixlabValueError, match=r"unknown metric 'accuracy'; known: aece, analysis_time_s, aurc, brier"):
        metric_info("accuracy")


def test_the_leaderboard_columns_are_the_catalogs_declarations() -> None:
    assert all(column is METRICS[column.key] for column in LEADERBOARD_METRICS)
    assert [column.header for column in LEADERBOARD_METRICS] == [
        "top-1 (%) ↑", "top-5 (%) ↑", "RMSE ↓", "MAE ↓", "NLL ↓", "ECE (%) ↓", "ECE after TS (%) ↓", "Brier ↓",
        "FGSM acc. (%) ↑", "noise acc. (%) ↑", "step time (×ERM) ↓", "train img/s ↑", "wall time (s) ↓",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "mean", "std", "text"),
    [
        ("top1", 0.87523, 0.0031, "87.52 ± 0.31"),
        ("nll", 0.4, None, "0.400"),
        ("step_ratio", 1.3, 0.05, "1.30 ± 0.05"),
        ("images_per_s", 12345.6, 100.0, "12,346 ± 100"),
        ("wall_time_s", 61.24, None, "61.2"),
    ],
)
def test_values_print_in_display_units(key: str, mean: float, std: float | None, text: str) -> None:
    assert metric_info(key).format(mean, std) == text


def test_a_metric_without_direction_has_no_arrow_and_no_best() -> None:
    assert metric_info("temperature").header == "temperature"
    rows = [LeaderboardRow(method, 1, {"temperature": Summary(t, None, 1)}) for method, t in [("a", 1.2), ("b", 1.5)]]
    assert Leaderboard("d", "m", rows, "s").best("temperature") == set()
