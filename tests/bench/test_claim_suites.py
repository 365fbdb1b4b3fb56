"""Claim suites and claim files: every ``configs/suites/claim_*.yaml`` plans with three seeds or more and
quiet training, and every check of a ``configs/claims/*.yaml`` names methods, a dataset and a model its suite has.

The claim files are read with PyYAML directly (the format is in the claims notes), so these tests pin the
files' consistency independently of the code that will run them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bench_fixtures import tiny_suite

from mixlab.bench.suite import load_suite, plan_suite

REPO = Path(__file__).resolve().parents[2]
CLAIM_SUITES = sorted((REPO / "configs" / "suites").glob("claim_*.yaml"))
CLAIMS = sorted((REPO / "configs" / "claims").glob("*.yaml"))
MIN_SEEDS = 3


def _fixture_root(tmp_path: Path) -> Path:
    """Fashion-MNIST-like files to plan against: the real data is absent in the isolated test environment."""
    return tiny_suite(tmp_path).parent / "data"


@pytest.mark.parametrize("path", CLAIM_SUITES, ids=lambda p: p.stem)
def test_claim_suite_plans_with_at_least_three_seeds_and_quiet_training(path: Path, tmp_path: Path) -> None:
    suite = load_suite(str(path))
    assert suite.name == path.stem, f"{path.name}: name {suite.name!r} differs from the file stem"
    assert len(suite.seeds) >= MIN_SEEDS, f"{path.name}: seeds {suite.seeds}, a claim needs >= {MIN_SEEDS}"
    plan = plan_suite(suite, data_root=_fixture_root(tmp_path))
    assert plan.runs, f"{path.name} plans no run"
    assert not plan.notices, f"{path.name} fell back to another dataset: {plan.notices}"
    assert {run.config.train.progress for run in plan.runs} == {"off"}
    for method in {run.method for run in plan.runs}:
        seeds = sorted(run.seed for run in plan.runs if run.method == method)
        assert seeds == sorted(suite.seeds), f"{path.name}: method {method!r} runs seeds {seeds}"


@pytest.mark.parametrize("path", CLAIMS, ids=lambda p: p.stem)
def test_claim_checks_name_what_their_suite_runs(path: Path, tmp_path: Path) -> None:
    claim = yaml.safe_load(path.read_text())
    assert claim["name"] == path.stem
    suite_file = REPO / "configs" / "suites" / f"{claim['suite']}.yaml"
    assert suite_file.is_file(), f"{path.name} names suite {claim['suite']!r}, which has no file {suite_file}"
    plan = plan_suite(load_suite(str(suite_file)), data_root=_fixture_root(tmp_path))
    methods, datasets, models = ({getattr(run, key) for run in plan.runs} for key in ("method", "dataset", "model"))
    assert claim["checks"], f"{path.name} has no check"
    for check in claim["checks"]:
        for role in ("method", "baseline"):
            assert check[role] in methods, f"{path.name}: {role} {check[role]!r} is not a method of {sorted(methods)}"
        assert check.get("dataset", next(iter(datasets))) in datasets
        assert check.get("model", next(iter(models))) in models
        assert check["expect"] in ("higher", "lower", "same", "not_lower", "not_higher")


@pytest.mark.parametrize("path", CLAIMS, ids=lambda p: p.stem)
def test_claim_states_the_paper_and_its_regime(path: Path) -> None:
    claim = yaml.safe_load(path.read_text())
    for key in ("authors", "title", "venue", "arxiv", "where", "figure", "setting"):
        assert str(claim["paper"].get(key, "")).strip(), f"{path.name}: paper.{key} is empty"
    assert len(claim["regime"].split()) >= 30, f"{path.name}: the regime must say why its settings carry the mechanism"
    assert claim["budget_minutes"] <= 15
