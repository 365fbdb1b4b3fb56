"""evaluate_classifier and evaluate_checkpoint: the keys reported, agreement with the engine, refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from mixlab.data import ArrayData, DataNotFoundError
from mixlab.engine.checkpoint import load_checkpoint, save_checkpoint
from mixlab.engine.config import RunConfig, config_to_dict
from mixlab.errors import MixlabTypeError, MixlabValueError
from mixlab.evaluate import EvalResult, EvalSettings, evaluate_checkpoint, evaluate_classifier

ALL_KEYS = {
    "top1", "top5", "nll", "ece", "brier", "ece_ts", "nll_ts", "temperature", "fgsm_acc", "noise_acc", "num_test",
}  # fmt: skip


@pytest.fixture(scope="module")
def run_result(trained_run) -> EvalResult:
    return evaluate_checkpoint(trained_run.output, device="cpu")


def test_a_run_reports_every_metric_with_the_engine_top1(trained_run, run_result):
    metrics, final = run_result.metrics, trained_run.result.final
    assert set(metrics) == ALL_KEYS
    assert metrics["top1"] == pytest.approx(final["test_acc"], abs=1e-6)
    assert metrics["top1"] == pytest.approx(json.loads((trained_run.output / "final.json").read_text())["test_acc"])
    assert metrics["nll"] == pytest.approx(final["test_loss"], abs=1e-5)
    assert metrics["num_test"] == 256
    assert metrics["temperature"] > 0
    assert 0.0 <= metrics["fgsm_acc"] <= metrics["top1"]
    assert sum(run_result.reliability["count"]) == 256
    assert json.loads(json.dumps(run_result.as_dict())) == run_result.as_dict()


def test_a_checkpoint_file_gives_what_its_run_directory_gives(trained_run, run_result):
    from_file = evaluate_checkpoint(trained_run.output / "checkpoint.pt", device="cpu")
    assert from_file.metrics == run_result.metrics


def test_data_root_replaces_the_runs_data_location(trained_run, run_result, tmp_path):
    moved = shutil.copytree(trained_run.data_root, tmp_path / "moved")
    assert evaluate_checkpoint(trained_run.output, data_root=moved).metrics["top1"] == run_result.metrics["top1"]
    with pytest.raises(DataNotFoundError, match="empty"):
        evaluate_checkpoint(trained_run.output, data_root=tmp_path / "empty")


def test_settings_reach_every_measure(trained_run, run_result):
    settings = EvalSettings(fgsm_eps=0.0, noise_std=0.0, n_bins=5, batch_size=100)
    result = evaluate_checkpoint(trained_run.output, settings=settings)
    top1 = run_result.metrics["top1"]
    assert result.metrics["fgsm_acc"] == top1 and result.metrics["noise_acc"] == top1
    assert len(result.reliability["count"]) == 5
    assert result.metrics["nll"] == pytest.approx(run_result.metrics["nll"], abs=1e-6)


def test_without_a_val_split_there_is_no_temperature():
    model = nn.Linear(4, 3)
    test = ArrayData(torch.randn(12, 4), torch.arange(12) % 3)
    result = evaluate_classifier(model, test, preprocess=lambda b: b)
    assert not {"temperature", "ece_ts", "nll_ts"} & set(result.metrics)
    assert "top5" not in result.metrics  # three classes
    assert result.metrics["num_test"] == 12


# ------------------------------------------------------------------ refusals


def test_a_missing_path_is_refused(tmp_path):
    with pytest.raises(MixlabValueError, match=r"no run directory or checkpoint at .*nowhere"):
        evaluate_checkpoint(tmp_path / "nowhere")


def test_a_directory_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(MixlabValueError, match=r"holds no checkpoint\.pt"):
        evaluate_checkpoint(tmp_path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MixlabValueError, match=r"notes\.txt"):
        evaluate_checkpoint(tmp_path / "notes.txt")


def test_a_checkpoint_without_a_config_is_refused(tmp_path):
    save_checkpoint(tmp_path / "bare.pt", {"model": {}, "epoch": 1})
    with pytest.raises(MixlabValueError, match=r"bare\.pt.* holds no run config"):
        evaluate_checkpoint(tmp_path / "bare.pt")


def test_a_checkpoint_with_a_broken_config_is_refused_with_the_key(trained_run, tmp_path):
    state = load_checkpoint(trained_run.output / "checkpoint.pt")
    state["config"]["train"]["epochz"] = 3
    save_checkpoint(tmp_path / "broken.pt", state)
    with pytest.raises(MixlabValueError, match=r"(?s)broken\.pt.*train\.epochz"):
        evaluate_checkpoint(tmp_path / "broken.pt")


def test_a_regression_run_is_refused(tmp_path):
    config = RunConfig.model_validate({"data": {"name": "diabetes"}, "model": {"name": "mlp"}, "mix": {"loss": "mse"}})
    save_checkpoint(tmp_path / "reg.pt", {"model": {}, "config": config_to_dict(config)})
    with pytest.raises(MixlabValueError, match="regression run on 'diabetes'; only classifiers"):
        evaluate_checkpoint(tmp_path / "reg.pt")


def test_bad_splits_and_settings_are_refused():
    model, split = nn.Linear(2, 2), ArrayData(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(MixlabTypeError, match="tuple"):
        evaluate_classifier(model, (split.x, split.y), preprocess=lambda b: b)
    with pytest.raises(MixlabValueError, match=r"val\.y .*torch\.float32"):
        evaluate_classifier(model, split, val=split.with_labels(split.y.float()), preprocess=lambda b: b)
    with pytest.raises(MixlabTypeError, match="dict"):
        evaluate_classifier(model, split, preprocess=lambda b: b, settings={"n_bins": 5})


@pytest.mark.parametrize("bad", [{"fgsm_eps": -0.1}, {"noise_std": -1.0}, {"batch_size": 0}, {"n_bins": 1}, {"epz": 1}])
def test_eval_settings_refuse_out_of_range_and_unknown_values(bad):
    with pytest.raises(ValidationError, match=next(iter(bad))):
        EvalSettings(**bad)
