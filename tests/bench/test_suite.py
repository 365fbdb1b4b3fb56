"""Suites: the shipped files validate, expansion, fallback, and bad suites refused before any run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bench_fixtures import tiny_suite

from mixlab.bench.suite import SuiteError, list_suites, load_suite, plan_suite

SHIPPED = ["quick", "standard", "mnist1d", "cifar100-r18", "model_aware"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_suites_load_and_their_runs_validate(name: str, tmp_path: Path) -> None:
    suite = load_suite(name)
    assert suite.name == name and name in list_suites()
    # the data is absent in the isolated test environment: expand with a fixture root where files are needed
    root = tiny_suite(tmp_path).parent / "data"
    if name == "cifar100-r18":
        pytest.importorskip("pickle")
        with pytest.raises(SuiteError, match="cifar100"):
            plan_suite(suite, data_root=root)
        return
    plan = plan_suite(suite, data_root=root)
    per_seed = sum(len(m.models) if m.models is not None else len(suite.models) for m in suite.methods)
    assert len(plan.runs) == per_seed * len(suite.seeds)
    assert len({run.key for run in plan.runs}) == len(plan.runs)


def test_model_aware_suite_runs_transmix_on_the_vit_only_with_its_optimiser(tmp_path: Path) -> None:
    root = tiny_suite(tmp_path).parent / "data"
    plan = plan_suite(load_suite("model_aware"), data_root=root)
    models = {(run.method, run.model) for run in plan.runs}
    assert ("transmix", "vit_tiny") in models and ("transmix", "cnn_small") not in models
    assert {("erm", "cnn_small"), ("erm", "vit_tiny"), ("puzzlemix", "cnn_small")} <= models
    assert ("puzzlemix", "vit_tiny") not in models
    vit = next(run for run in plan.runs if run.model == "vit_tiny")
    cnn = next(run for run in plan.runs if run.model == "cnn_small")
    assert vit.config.optim.name == "adamw" and cnn.config.optim.name == "sgd"


def test_a_method_limited_to_a_model_the_suite_lacks_is_refused(tmp_path: Path) -> None:
    path = tiny_suite(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["methods"][-1]["models"] = ["cnn_smal"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match=r"models \['cnn_smal'\] are not among the suite's models"):
        plan_suite(load_suite(str(path)), data_root=path.parent / "data")


def test_quick_suite_matches_the_issue() -> None:
    suite = load_suite("quick")
    labels = [m.name for m in suite.methods]
    assert labels == [
        "erm", "mixup", "cutmix", "fmix", "resizemix", "gridmix", "smoothmix", "saliencymix",
        "manifold_mixup", "mixup_dm", "regmixup",
    ]  # fmt: skip
    assert suite.datasets[0].name == "fashion_mnist" and suite.datasets[0].data["subset_per_class"] == 1000
    assert suite.seeds == [0]


def test_quick_suite_falls_back_to_mnist1d_when_fashion_mnist_is_missing(tmp_path: Path) -> None:
    plan = plan_suite(load_suite("quick"), data_root=tmp_path / "empty")
    assert {run.dataset for run in plan.runs} == {"mnist1d"}
    assert {run.model for run in plan.runs} == {"cnn1d"}
    assert len(plan.notices) == 1 and "fashion_mnist" in plan.notices[0] and "mnist1d" in plan.notices[0]
    assert all(run.config.optim.name == "adamw" for run in plan.runs)


def test_overrides_and_method_filter(tmp_path: Path) -> None:
    plan = plan_suite(load_suite(tiny_suite(tmp_path)), overrides=["train.epochs=1"], methods=["cutmix"])
    (run,) = plan.runs
    assert run.key == "fashion_mnist/cnn_small/cutmix/seed0"
    assert run.config.train.epochs == 1 and run.config.mix.method == "cutmix"
    assert run.config.data.val_fraction == 0.2  # dataset settings merged over the base
    with pytest.raises(SuiteError, match=r"no method.*nope.*erm, mixup, cutmix"):
        plan_suite(load_suite(tiny_suite(tmp_path)), methods=["nope"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": [{"name": "x", "mix": {"method": "mixupp"}}]}, "unknown mixer 'mixupp'; known: .*cutmix"),
        ({"models": ["resnet_huge"]}, "unknown model 'resnet_huge'; known: .*cnn_small"),
        ({"datasets": [{"name": "imagenet_22k"}]}, "unknown dataset 'imagenet_22k'.*fashion_mnist"),
        ({"methods": [{"name": "x", "mix": {"method": "mixup", "options": {"alpah": 1}}}]}, "alpah"),
        ({"methods": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
        ({"seeds": [0, 0]}, "distinct"),
        ({"evaluate": {"fgsm_eps": -1}}, "fgsm_eps"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_suites_fail_before_any_run(tmp_path: Path, change: dict, message: str) -> None:
    path = tiny_suite(tmp_path)
    raw = {**yaml.safe_load(path.read_text()), **change}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match=message):
        plan_suite(load_suite(path))


def test_missing_data_without_fallback_says_where_it_looked(tmp_path: Path) -> None:
    path = tiny_suite(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["base"]["data"]["root"] = str(tmp_path / "nowhere")
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match=r"not found(.|\n)*nowhere"):
        plan_suite(load_suite(path))


def test_unknown_suite_lists_the_known_ones() -> None:
    with pytest.raises(SuiteError, match=r"unknown suite 'quik'; known: .*quick"):
        load_suite("quik")


def test_a_suite_file_that_is_not_utf8_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SuiteError, match=r"latin\.yaml: not UTF-8 text"):
        load_suite(path)
