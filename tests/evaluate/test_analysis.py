"""The analysis layer as a suite uses it: sources, early refusals, every analysis on a trained run, the store."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_fixtures import tiny_suite
from engine_fixtures import tiny_config, write_fashion_like

from mixlab.bench.runner import run_suite, same_config, stored_config
from mixlab.bench.store import ResultStore
from mixlab.bench.suite import SuiteError, load_suite, plan_suite
from mixlab.engine import load_config, train
from mixlab.engine.config import RunConfig
from mixlab.engine.run import build_augment
from mixlab.errors import MixlabValueError
from mixlab.evaluate import EvalSettings
from mixlab.evaluate.analysis import analyse, check_analyses, sources_for
from mixlab.evaluate.sources import load_source

HELD_OUT = [6, 7, 8, 9]
SMALL = {
    "ood_samples": 100, "corruption_samples": 60, "transfer_samples": 200, "gap_samples": 200, "gap_bins": 2,
    "gap_permutations": 19, "nc_samples": 200, "hessian_samples": 32, "hessian_probes": 2, "sharpness_draws": 2,
    "batch_size": 128,
}  # fmt: skip


@pytest.fixture(scope="module")
def six_class_run(tmp_path_factory: pytest.TempPathFactory):
    """One epoch of cnn_small with mixup on classes 0-5 of the fixture data (6-9 held out)."""
    base = tmp_path_factory.mktemp("analysis")
    root = write_fashion_like(base / "data", n_train=600, n_test=300)
    raw = tiny_config(root, data={"classes": [0, 1, 2, 3, 4, 5]}, train={"epochs": 1},
                      mix={"method": "mixup", "options": {"alpha": 1.0}})  # fmt: skip
    config = load_config(raw)
    result = train(config, None, progress=False, echo=False)
    augment = build_augment(config, result.splits)
    return config, result, (lambda x: augment(x, train=False))


def test_every_analysis_runs_on_a_trained_run_and_is_deterministic(six_class_run):
    config, result, preprocess = six_class_run
    settings = EvalSettings(analyses=["calibration", "ood", "corruptions", "transfer", "gap", "geometry"], **SMALL)
    first = analyse(result.model, result.splits, config, settings, preprocess=preprocess, mixer_state=result.mixer_state)
    again = analyse(result.model, result.splits, config, settings, preprocess=preprocess, mixer_state=result.mixer_state)
    metrics = first.metrics
    for key in ("aece", "cw_ece", "mce", "aurc", "eaurc", "corr_acc", "kid", "intrusion_rate", "mmd_mixed_real",
                "nc1", "nc2_norm", "nc2_angle", "nc3", "nc4", "hessian_trace", "sharpness_avg"):  # fmt: skip
        assert math.isfinite(metrics[key]), key
    for source in ("held_out_classes", "digits"):  # the defaults: the held-out classes, then another dataset
        for key in ("ood_auroc_msp", "ood_auroc_energy", "ood_fpr95_msp", "logme", "hscore", "leep", "probe_acc"):
            assert math.isfinite(metrics[f"{key}/{source}"]), (key, source)
    assert metrics["ood_auroc_msp"] == metrics["ood_auroc_msp/held_out_classes"]  # bare keys: the first source
    assert metrics["probe_acc"] == metrics["probe_acc/held_out_classes"]
    assert 0.0 <= metrics["ood_auroc_msp"] <= 1.0 and 0.0 <= metrics["corr_acc"] <= 1.0
    assert sorted(first.artifacts) == ["gap_curve", "ood_roc"]
    assert sorted(first.artifacts["ood_roc"]) == ["digits", "held_out_classes"]
    json.dumps(first.artifacts)  # stored as JSON
    timing = {k for k in metrics if k.startswith("analysis_time_s/")}
    assert len(timing) == 6
    assert {k: v for k, v in metrics.items() if k not in timing} == {
        k: v for k, v in again.metrics.items() if k not in timing
    }
    assert first.artifacts == again.artifacts


def test_held_out_classes_are_the_test_samples_of_the_classes_left_out(six_class_run):
    config, result, _ = six_class_run
    source = load_source("held_out_classes", config, (1, 28, 28))
    full = load_source("held_out_classes", config.model_copy(update={"data": config.data.model_copy(update={"classes": [0, 1]})}), (1, 28, 28))  # fmt: skip
    assert source.num_classes == len(HELD_OUT) and full.num_classes == 8
    assert source.num_samples + len(result.splits.test) == 300  # every test sample is in exactly one of them
    assert source.x.dtype == torch.uint8 and source.y.unique().tolist() == [0, 1, 2, 3]


def test_digits_are_resized_to_the_model_input():
    config = RunConfig.model_validate({"data": {"name": "fashion_mnist", "classes": [0, 1]}})
    digits = load_source("digits", config, (3, 32, 32))
    assert digits.x.shape == (1797, 3, 32, 32) and digits.x.dtype == torch.uint8 and digits.num_classes == 10
    assert int(digits.x.max()) == 255 and int(digits.x.min()) == 0  # 0..16 scaled to the full byte range
    assert torch.equal(digits.x[:, 0], digits.x[:, 2])  # grey repeated on every channel
    subset = load_source("digits", config, (1, 28, 28), max_samples=50, seed=3)
    assert subset.num_samples == 50 and torch.equal(subset.y, load_source("digits", config, (1, 28, 28), max_samples=50, seed=3).y)  # fmt: skip


def test_mnist1d_is_the_other_dataset_of_signal_models():
    config = RunConfig.model_validate({"data": {"name": "rare_features"}, "model": {"name": "cnn1d"}})
    signals = load_source("mnist1d", config, (2, 60), max_samples=30)
    assert signals.x.shape == (30, 2, 60) and signals.x.dtype == torch.float32 and signals.num_classes == 10
    assert torch.equal(signals.x[:, 0], signals.x[:, 1])


@pytest.mark.parametrize(
    ("data", "evaluate", "shape", "expected"),
    [
        ({"name": "diabetes"}, {"analyses": ["calibration"]}, (10,), "regression task"),
        ({"name": "fashion_mnist"}, {"analyses": ["ood"], "ood": ["held_out_classes"]}, (1, 28, 28), "needs data.classes"),
        ({"name": "fashion_mnist"}, {"analyses": ["transfer"], "transfer": ["mnist1d"]}, (1, 28, 28), "holds signals"),
        ({"name": "mnist1d"}, {"analyses": ["ood"]}, (1, 40), "none is available by default"),
        ({"name": "digits"}, {"analyses": ["corruptions"]}, (64,), "needs images (C, H, W) or signals"),
        ({"name": "fashion_mnist"}, {"analyses": ["corruptions"], "corruptions": ["no_such"]}, (1, 28, 28), "no_such"),
        ({"name": "digits", "classes": [0, 1]}, {"analyses": ["ood"], "ood": ["digits"]}, (64,), "run's own dataset"),
        ({"name": "cifar10"}, {"analyses": ["ood"], "ood": ["fashion_mnist"]}, (3, 32, 32), "'fashion_mnist' was not found"),
        ({"name": "mnist1d", "classes": list(range(10))}, {"analyses": ["ood"], "ood": ["held_out_classes"]}, (1, 40),
         "at least 1 class(es) left out of the 10 of 'mnist1d'"),
        ({"name": "mnist1d", "classes": list(range(9))}, {"analyses": ["transfer"], "transfer": ["held_out_classes"]},
         (1, 40), "at least 2 class(es) left out"),
    ],
)
def test_analyses_that_cannot_run_are_refused_naming_why(data, evaluate, shape, expected):
    config = RunConfig.model_validate({"data": data, "model": {"name": "mlp" if len(shape) == 1 else "cnn_small"}})
    with pytest.raises(MixlabValueError, match=re.escape(expected)):
        check_analyses(config, EvalSettings(**evaluate))  # as a suite is planned: the shape from the dataset
    if "task" not in expected:  # with the data read, the same sources and corruptions are refused
        with pytest.raises(MixlabValueError, match=re.escape(expected)):
            check_analyses(config, EvalSettings(**evaluate), shape)


def test_a_suite_with_an_impossible_analysis_is_refused_before_any_run(tmp_path):
    path = tiny_suite(tmp_path, evaluate={"analyses": ["ood"], "ood": ["held_out_classes"]})
    with pytest.raises(SuiteError, match=re.escape("'held_out_classes' needs data.classes")):
        plan_suite(load_suite(path))
    assert not (tmp_path / "runs").exists()


def test_sources_default_to_held_out_classes_then_another_dataset():
    config = RunConfig.model_validate({"data": {"name": "fashion_mnist", "classes": [0, 1, 2]}})
    assert sources_for("transfer", config, EvalSettings(), (1, 28, 28)) == ["held_out_classes", "digits"]
    assert sources_for("ood", config, EvalSettings(ood=["digits"]), (1, 28, 28)) == ["digits"]


def test_a_suite_stores_the_analyses_and_their_artifacts(tmp_path):
    evaluate = {"fgsm_eps": 0.03, "batch_size": 256, "analyses": ["calibration", "ood", "gap"], "ood": ["digits"], **SMALL}  # fmt: skip
    path = tiny_suite(tmp_path, methods=[{"name": "erm"}], epochs=1, evaluate=evaluate)
    store = ResultStore(tmp_path / "results.db")
    outcome = run_suite(plan_suite(load_suite(path)), store, output=tmp_path / "runs")
    assert outcome.failed == [] and len(outcome.finished) == 1
    record = store.records("tiny")[0]
    assert {"aece", "ood_auroc_msp/digits", "mmd_mixed_real", "analysis_time_s/gap"} <= set(record.final)
    assert {"ood_roc", "gap_curve", "reliability"} <= set(record.artifacts)
    assert record.artifacts["gap_curve"]["lam_mid"]


def test_runs_stored_before_the_analysis_settings_existed_are_kept(tmp_path):
    spec = plan_suite(load_suite(tiny_suite(tmp_path))).runs[0]
    stored = stored_config(spec)
    old = {**stored, "evaluate": {k: stored["evaluate"][k] for k in ("fgsm_eps", "noise_std", "batch_size", "n_bins", "seed")}}  # fmt: skip
    assert same_config(old, spec)
    assert not same_config({**old, "evaluate": {**old["evaluate"], "noise_std": 0.5}}, spec)


def test_the_analysis_suite_and_the_quick_suite_validate():
    for name in ("analysis", "quick"):
        plan = plan_suite(load_suite(name), overrides=["train.epochs=1"])
        assert plan.runs and all(run.evaluate.analyses for run in plan.runs)
    assert set(load_suite("analysis").evaluate["analyses"]) == {
        "calibration", "ood", "corruptions", "transfer", "gap", "geometry"
    }  # fmt: skip


def test_mixlab_eval_runs_analyses_on_a_saved_run(trained_run):
    from typer.testing import CliRunner

    from mixlab.cli import app

    args = ["eval", str(trained_run.output), "--json", "--analysis", "calibration", "--analysis", "ood", "--ood", "digits"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert 0.0 <= metrics["ood_auroc_msp/digits"] <= 1.0 and "aece" in metrics and "top1" in metrics
    refused = CliRunner().invoke(app, ["eval", str(trained_run.output), "--analysis", "ood", "--ood", "held_out_classes"])
    assert refused.exit_code != 0 and "needs data.classes" in refused.output


@pytest.mark.parametrize(
    ("data", "evaluate", "expected"),
    [
        ({"name": "csv", "options": {"path": "t.csv", "target": "y"}}, {"analyses": ["calibration"]},
         "Set data.options.task: classification"),
        ({"name": "csv", "options": {"path": "t.csv", "target": "y", "task": "classification"}, "classes": [0, 1]},
         {"analyses": ["ood"], "ood": ["digits"]}, "the run's inputs are tables"),
        ({"name": "csv", "options": {"path": "t.csv", "target": "y", "task": "classification"}},
         {"analyses": ["corruptions"]}, "are tables"),
        ({"name": "csv", "options": {"path": "t.csv", "target": "y", "task": "classification", "delim": ";"}},
         {"analyses": ["calibration"]}, "data.options: "),
        ({"name": "imagefolder", "options": {"path": "imgs"}}, {"analyses": ["calibration"]}, "set it to true"),
        ({"name": "imagefolder", "options": {"path": "imgs", "in_memory": True, "image_size": 16}},
         {"analyses": ["transfer"], "transfer": ["mnist1d"]}, "have shape (3, 16, 16)"),
    ],
)  # fmt: skip
def test_datasets_of_unknown_shape_are_checked_from_their_options(data, evaluate, expected):
    config = RunConfig.model_validate({"data": data, "model": {"name": "mlp"}})
    with pytest.raises(MixlabValueError, match=re.escape(expected)):
        check_analyses(config, EvalSettings(**evaluate))


def test_gap_bins_beyond_what_the_keys_can_name_are_refused_when_validated():
    with pytest.raises(ValueError, match="less than or equal to 10"):
        EvalSettings(gap_bins=15)


def test_a_failing_analysis_is_recorded_and_the_others_still_run(six_class_run, monkeypatch):
    import mixlab.evaluate.analysis as analysis

    config, result, preprocess = six_class_run

    def broken(run):
        raise RuntimeError("out of memory")

    monkeypatch.setitem(analysis._ANALYSES, "gap", broken)
    settings = EvalSettings(analyses=["calibration", "gap"], **SMALL)
    kept = analyse(result.model, result.splits, config, settings, preprocess=preprocess, strict=False)
    assert kept.errors == {"gap": "RuntimeError: out of memory"} and "aece" in kept.metrics
    assert kept.artifacts["analysis_errors"] == kept.errors and "mmd_mixed_real" not in kept.metrics
    with pytest.raises(RuntimeError, match="out of memory"):
        analyse(result.model, result.splits, config, settings, preprocess=preprocess)
    wrong_kind = EvalSettings(analyses=["calibration", "ood"], ood=["mnist1d"], **SMALL)
    refused = analyse(result.model, result.splits, config, wrong_kind, preprocess=preprocess, strict=False)
    assert list(refused.errors) == ["analyses"] and "holds signals" in refused.errors["analyses"]
    assert refused.metrics == {} and refused.artifacts["analysis_errors"] == refused.errors


def test_analyses_leave_the_model_as_they_found_it(six_class_run):
    config, result, preprocess = six_class_run
    model = result.model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]  # the last step's
    settings = EvalSettings(analyses=["gap", "geometry"], **SMALL)
    analyse(model, result.splits, config, settings, preprocess=preprocess, mixer_state=result.mixer_state)
    assert model.training and flags == [p.requires_grad for p in model.parameters()]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(
        (g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True)
    )


def test_a_saved_run_is_analysed_from_its_loaded_data_and_all_runs_what_can_run(trained_run):
    from typer.testing import CliRunner

    from mixlab.cli import app
    from mixlab.evaluate import refused_analyses

    # the fixture run trains on every class: OOD and transfer fall back to digits, which a 28x28 model reads
    result = CliRunner().invoke(app, ["eval", str(trained_run.output), "--json", "--analysis", "all"])
    assert result.exit_code == 0, result.output
    assert {"aece", "corr_acc", "logme", "mmd_mixed_real", "nc1", "ood_auroc_msp"} <= set(json.loads(result.stdout))
    tables = RunConfig.model_validate({"data": {"name": "digits"}, "model": {"name": "mlp"}})
    refused = refused_analyses(tables, EvalSettings(analyses=["calibration", "corruptions", "ood"]), (64,))
    assert sorted(refused) == ["corruptions", "ood"] and "none is available by default" in refused["ood"]

