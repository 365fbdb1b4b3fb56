"""Claims (mixlab.bench.claims and `mixlab claims`): the claim-file validation, the verdict rules, the pairing of
runs by seed, inconclusive outcomes, and one claim run end to end on a tiny suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from bench_fixtures import tiny_suite
from typer.testing import CliRunner

import mixlab.bench.claims.run as claims_run
import mixlab.bench.claims.spec as claims_spec
from mixlab.bench.claims import (
    EXAMPLE_CLAIM,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    VERDICTS,
    Claim,
    ClaimCheck,
    ClaimError,
    check_verdict,
    claim_verdict,
    claims_markdown,
    evaluate_check,
    evaluate_claim,
    load_claim,
    prepare_claim,
    run_claims,
    write_claims_report,
)
from mixlab.bench.records import RunRecord
from mixlab.bench.store import ResultStore
from mixlab.cli import app
from mixlab.evaluate.paired import compare_predictions, t_interval
from mixlab.evaluate.predictions import classification_predictions

runner = CliRunner()
METHODS = [{"name": "erm"}, {"name": "mixup", "mix": {"method": "mixup", "options": {"alpha": 1.0}}}]


# ------------------------------------------------------------------ helpers


def claim_dict(suite: str = "claim_x", **check: object) -> dict:
    """A valid claim (as the YAML would read) with one check; ``check`` overrides that check's keys."""
    raw = yaml.safe_load(EXAMPLE_CLAIM)
    raw["name"], raw["suite"] = "claim_x", suite
    raw["checks"][0].update(check)
    raw["checks"][0] = {k: v for k, v in raw["checks"][0].items() if v is not None}
    return raw


def write_claim(folder: Path, raw: dict) -> Path:
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def load_error(tmp_path: Path, raw: dict) -> str:
    with pytest.raises(ClaimError) as caught:
        load_claim(write_claim(tmp_path, raw))
    return str(caught.value)


def fast_suite(tmp_path: Path, **extra: object) -> Path:
    """The bench tests' tiny Fashion-MNIST-like suite with ERM and mixup, three seeds, one short epoch."""
    settings = {"methods": METHODS, "epochs": 1, "n_train": 192, "seeds": [0, 1, 2], **extra}
    return tiny_suite(tmp_path, **settings)


def record(
    method: str, seed: int, *, status: str = "finished", dataset: str = "d", model: str = "m", **fields
) -> RunRecord:
    key = f"{dataset}/{model}/{method}/seed{seed}"
    return RunRecord("s", seed, key, dataset, model, method, seed, status, **fields)


def check(**keys: object) -> ClaimCheck:
    base = {"label": "c", "method": "mixup", "baseline": "erm", "statistic": "top1", "expect": "higher"}
    return ClaimCheck(**{**base, **keys})


# ------------------------------------------------------------------ the claim file alone


def test_the_example_claim_loads() -> None:
    claim = Claim.model_validate(yaml.safe_load(EXAMPLE_CLAIM))
    assert claim.checks[0].kind == "per-sample" and claim.paper.arxiv == "1710.09412"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r.update(colour="red"), ["colour", "unknown key", "checks", "paper", "regime"]),
        (lambda r: r["checks"][0].update(statstic="top1"), ["checks.0.statstic", "unknown key", "statistic"]),
        (lambda r: r["paper"].pop("figure"), ["paper.figure", "Field required"]),
        (lambda r: r["paper"].pop("setting"), ["paper.setting", "Field required"]),
        (lambda r: r["paper"].update(figure="  "), ["paper.figure", "must not be empty"]),
        (lambda r: r["paper"].update(arxiv=1710.09412), ["paper.arxiv", "quotes"]),
        (
            lambda r: r["checks"][0].update(statistic="accuracy"),
            ["checks.0.statistic", "unknown statistic", "'accuracy'", "fgsm_acc", "test_acc"],
        ),
        (lambda r: r["checks"][0].update(statistic="step_ratio"), ["checks.0.statistic", "relative: true"]),
        (lambda r: r["checks"][0].update(expect="same"), ["checks.0", "equivalence", "expect: same"]),
        (lambda r: r["checks"][0].update(expect="same", equivalence=0.01, margin=0.01), ["checks.0", "margin", "same"]),
        (lambda r: r["checks"][0].update(margin=-0.01), ["checks.0.margin", ">= 0", "-0.01"]),
        (lambda r: r["checks"][0].update(equivalence=0.0), ["checks.0.equivalence", "> 0"]),
        (lambda r: r["checks"][0].update(expect="bigger"), ["checks.0.expect", "'bigger'"]),
        (lambda r: r["checks"][0].update(epoch=3), ["checks.0", "epoch", "per-sample", "top1"]),
        (lambda r: r["checks"][0].update(statistic="test_acc"), ["checks.0", "epoch", "test_acc", "epoch: N"]),
        (lambda r: r["checks"][0].update(statistic="fgsm_acc", epoch=2), ["checks.0", "epoch", "final metric"]),
        (lambda r: r["checks"][0].update(epoch=0, statistic="test_acc"), ["checks.0.epoch", "from 1"]),
        (lambda r: r["checks"][0].update(relative=True), ["checks.0", "relative", "difference"]),
        (lambda r: r["checks"][0].update(baseline="mixup"), ["checks.0", "baseline", "two different methods"]),
        (lambda r: r.update(budget_minutes=30), ["budget_minutes", "<= 15", "30"]),
        (lambda r: r.update(checks=[]), ["checks", "at least 1"]),
        (lambda r: r.update(checks=r["checks"] * 2), ["checks", "unique", "repeated"]),
    ],
)
def test_an_invalid_claim_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, change, expected: list[str]
) -> None:
    raw = claim_dict()
    change(raw)
    message = load_error(tmp_path, raw)
    assert "claim_x.yaml" in message
    for part in expected:
        assert part in message, (part, message)


def test_a_claim_named_otherwise_than_its_file_is_refused(tmp_path: Path) -> None:
    raw = claim_dict()
    path = write_claim(tmp_path, raw).rename(tmp_path / "other.yaml")
    with pytest.raises(ClaimError, match=r"other\.yaml: name: must equal the file's stem 'other'; got 'claim_x'"):
        load_claim(path)


def test_not_yaml_or_not_a_mapping_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: [unclosed")
    (tmp_path / "b.yaml").write_text("- a list")
    with pytest.raises(ClaimError, match=r"a\.yaml: not valid YAML"):
        load_claim(tmp_path / "a.yaml")
    with pytest.raises(ClaimError, match=r"b\.yaml: expected a mapping"):
        load_claim(tmp_path / "b.yaml")


# ------------------------------------------------------------------ the claim against its suite


def prepare_error(tmp_path: Path, raw: dict) -> str:
    with pytest.raises(ClaimError) as caught:
        prepare_claim(write_claim(tmp_path, raw))
    return str(caught.value)


def test_a_valid_claim_is_planned_with_its_dataset_and_model_named(tmp_path: Path) -> None:
    suite = fast_suite(tmp_path)
    planned = prepare_claim(write_claim(tmp_path, claim_dict(str(suite))))
    assert planned.suite == "tiny" and len(planned.plan.runs) == 6
    assert (planned.claim.checks[0].dataset, planned.claim.checks[0].model) == ("fashion_mnist", "cnn_small")


@pytest.mark.parametrize(
    ("suite_extra", "check_keys", "expected"),
    [
        ({"seeds": [0, 1]}, {}, ["suite", "2 seed(s)", "at least 3"]),
        ({}, {"method": "cutmix"}, ["checks.0", "method", "'cutmix'", "erm, mixup"]),
        ({}, {"baseline": "ERM"}, ["checks.0", "baseline", "'ERM'"]),
        ({"models": ["cnn_small", "mlp"]}, {}, ["checks.0", "model", "several", "cnn_small, mlp"]),
        ({}, {"model": "mlp"}, ["checks.0", "model", "'mlp'", "not run"]),
        ({}, {"dataset": "mnist1d"}, ["checks.0", "dataset", "'mnist1d'"]),
        ({}, {"statistic": "rmse"}, ["checks.0", "statistic", "classification", "top1"]),
        ({}, {"statistic": "test_acc", "epoch": 2}, ["checks.0", "epoch", "past the runs' last epoch (1)"]),
    ],
)
def test_a_claim_its_suite_cannot_answer_is_refused_before_training(
    tmp_path: Path, suite_extra: dict, check_keys: dict, expected: list[str]
) -> None:
    suite = fast_suite(tmp_path, **suite_extra)
    message = prepare_error(tmp_path, claim_dict(str(suite), **check_keys))
    assert "claim_x.yaml" in message
    for part in expected:
        assert part in message, (part, message)


def test_a_check_must_name_the_dataset_when_the_suite_has_several(tmp_path: Path) -> None:
    suite = fast_suite(tmp_path)
    raw = yaml.safe_load(suite.read_text())
    raw["datasets"].append({"name": "mnist1d", "models": ["cnn1d"], "data": {}})
    suite.write_text(yaml.safe_dump(raw))
    message = prepare_error(tmp_path, claim_dict(str(suite)))
    assert "checks.0" in message and "dataset: the suite runs several (fashion_mnist, mnist1d)" in message
    assert (
        prepare_claim(write_claim(tmp_path, claim_dict(str(suite), dataset="mnist1d"))).claim.checks[0].model == "cnn1d"
    )


def test_an_unknown_suite_is_refused_naming_the_key(tmp_path: Path) -> None:
    message = prepare_error(tmp_path, claim_dict("claim_no_such_suite"))
    assert "claim_x.yaml" in message and "suite:" in message and "claim_no_such_suite" in message


def test_an_epoch_metric_needs_an_evaluated_epoch(tmp_path: Path) -> None:
    suite = fast_suite(tmp_path, epochs=4)
    raw = yaml.safe_load(suite.read_text())
    raw["base"]["train"]["eval_every"] = 2
    suite.write_text(yaml.safe_dump(raw))
    message = prepare_error(tmp_path, claim_dict(str(suite), statistic="test_acc", epoch=3))
    assert "epoch 3 is not one" in message
    assert prepare_claim(write_claim(tmp_path, claim_dict(str(suite), statistic="train_loss", epoch=3, expect="lower")))


def test_every_claim_is_validated_before_any_training(tmp_path: Path) -> None:
    suite = fast_suite(tmp_path)
    good = write_claim(tmp_path, claim_dict(str(suite)))
    bad = {**claim_dict(str(suite), method="cutmix"), "name": "claim_bad"}
    with ResultStore(tmp_path / "store.db") as store:
        with pytest.raises(ClaimError, match=r"(?s)1 claim\(s\) cannot be run:\n.*claim_bad\.yaml.*cutmix"):
            run_claims([str(good), str(write_claim(tmp_path, bad))], store, output=tmp_path / "runs")
        assert store.records() == []


# ------------------------------------------------------------------ verdicts


@pytest.mark.parametrize(
    ("expect", "low", "high", "margin", "equivalence", "verdict"),
    [
        ("higher", 0.01, 0.03, 0.0, None, REPRODUCED),
        ("higher", 0.0, 0.03, 0.0, None, INCONCLUSIVE),  # low must exceed the margin strictly
        ("higher", 0.01, 0.03, 0.02, None, INCONCLUSIVE),  # clear of zero, not of the margin
        ("higher", 0.03, 0.05, 0.02, None, REPRODUCED),
        ("higher", -0.03, -0.01, 0.0, None, NOT_REPRODUCED),
        ("higher", -0.01, 0.02, 0.0, None, INCONCLUSIVE),
        ("higher", -0.004, 0.006, 0.0, 0.01, NOT_REPRODUCED),  # within ±equivalence: no material effect
        ("higher", -0.004, 0.012, 0.0, 0.01, INCONCLUSIVE),
        ("higher", 0.002, 0.006, 0.0, 0.01, REPRODUCED),  # clearing the margin comes first
        ("lower", -0.03, -0.01, 0.0, None, REPRODUCED),
        ("lower", -0.03, -0.01, 0.02, None, INCONCLUSIVE),
        ("lower", -0.05, -0.03, 0.02, None, REPRODUCED),
        ("lower", 0.01, 0.03, 0.0, None, NOT_REPRODUCED),
        ("lower", -0.02, 0.01, 0.0, None, INCONCLUSIVE),
        ("lower", -0.006, 0.004, 0.0, 0.01, NOT_REPRODUCED),
        ("same", -0.004, 0.006, 0.0, 0.01, REPRODUCED),
        ("same", -0.01, 0.01, 0.0, 0.01, REPRODUCED),  # the bounds are inside
        ("same", 0.011, 0.03, 0.0, 0.01, NOT_REPRODUCED),
        ("same", -0.03, -0.011, 0.0, 0.01, NOT_REPRODUCED),
        ("same", 0.005, 0.03, 0.0, 0.01, INCONCLUSIVE),
        ("same", -0.03, 0.03, 0.0, 0.01, INCONCLUSIVE),
    ],
)
def test_check_verdicts_follow_the_schema(expect, low, high, margin, equivalence, verdict) -> None:
    assert check_verdict(expect, low, high, margin=margin, equivalence=equivalence) == verdict


def test_check_verdict_refuses_a_broken_interval() -> None:
    with pytest.raises(ValueError, match=r"\[0.2, 0.1\]"):
        check_verdict("higher", 0.2, 0.1)
    with pytest.raises(ValueError, match="nan"):
        check_verdict("higher", float("nan"), 0.1)


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([REPRODUCED, REPRODUCED], REPRODUCED),
        ([REPRODUCED, INCONCLUSIVE], INCONCLUSIVE),
        ([INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED], NOT_REPRODUCED),
        ([], INCONCLUSIVE),
    ],
)
def test_the_claim_verdict_combines_its_checks(verdicts: list[str], expected: str) -> None:
    assert claim_verdict(verdicts) == expected


# ------------------------------------------------------------------ evaluating stored runs


def test_runs_are_paired_by_seed_whatever_their_order() -> None:
    times = {
        ("erm", 0): 10.0,
        ("erm", 1): 20.0,
        ("erm", 2): 40.0,
        ("mixup", 0): 11.0,
        ("mixup", 1): 21.5,
        ("mixup", 2): 41.2,
    }
    records = [record(m, s, final={"train_time_s": t}) for (m, s), t in reversed(list(times.items()))]
    records.append(record("cutmix", 0, final={"train_time_s": 99.0}))  # another method: ignored
    result = evaluate_check(check(statistic="train_time_s"), records)
    assert result.seeds == (0, 1, 2) and result.per_seed == pytest.approx((1.0, 1.5, 1.2))
    assert result.interval == t_interval(list(result.per_seed)) and result.interval.low > 0
    assert result.verdict == REPRODUCED and (result.dataset, result.model) == ("d", "m")
    assert (result.method_value, result.baseline_value) == pytest.approx((73.7 / 3, 70 / 3))
    relative = evaluate_check(check(statistic="train_time_s", relative=True, expect="same", equivalence=0.2), records)
    assert relative.per_seed == pytest.approx((0.1, 0.075, 0.03)) and relative.verdict == REPRODUCED


def test_an_epoch_metric_is_read_at_its_epoch() -> None:
    def epochs(last: float) -> list[dict]:
        return [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": last}]

    records = [record("erm", s, epochs=epochs(0.70 + s / 100)) for s in range(3)]
    records += [record("mixup", s, epochs=epochs(0.75 + s / 50)) for s in range(3)]
    at_two = evaluate_check(check(statistic="test_acc", epoch=2), records)
    assert at_two.per_seed == pytest.approx((0.05, 0.06, 0.07)) and at_two.verdict == REPRODUCED
    at_one = evaluate_check(check(statistic="test_acc", epoch=1), records)
    assert at_one.per_seed == (0.0, 0.0, 0.0) and at_one.verdict == INCONCLUSIVE
    at_three = evaluate_check(check(statistic="test_acc", epoch=3), records)
    assert at_three.interval is None and "test_acc at epoch 3 is not stored" in at_three.reason


def predictions(correct: int, seed: int):
    """Classification predictions on 200 samples, ``correct`` of them right, the rest's order seeded."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(200) % 4
    order = torch.randperm(200, generator=g)
    predicted = targets.clone()
    predicted[order[correct:]] = (targets[order[correct:]] + 1) % 4
    return classification_predictions(torch.nn.functional.one_hot(predicted, 4).float() * 3.0, targets)


def test_a_per_sample_statistic_uses_the_paired_comparison() -> None:
    method = [predictions(150 + s, s) for s in range(3)]
    baseline = [predictions(120 - s, 10 + s) for s in range(3)]
    records = [record("mixup", s, predictions=p) for s, p in enumerate(method)]
    records += [record("erm", s, predictions=p) for s, p in enumerate(baseline)]
    result = evaluate_check(check(), records, resamples=200, seed=3)
    expected = compare_predictions(method, baseline, ["top1"], resamples=200, seed=3)["top1"]
    assert result.interval == expected.interval and result.per_seed == expected.per_seed
    assert result.method_value == pytest.approx(151 / 200) and result.verdict == REPRODUCED


def test_missing_failed_and_unpredicted_runs_make_a_check_inconclusive() -> None:
    finals = {"train_time_s": 1.0}
    complete = [record(m, s, final=finals) for m in ("erm", "mixup") for s in range(3)]
    missing = evaluate_check(check(statistic="train_time_s"), complete[1:])
    assert missing.verdict == INCONCLUSIVE and missing.reason == "runs missing or not finished: erm seed 0 not run"
    failed = [*complete[:5], record("mixup", 2, status="failed", error="RuntimeError: out of memory\n  at x.py:1")]
    result = evaluate_check(check(statistic="train_time_s"), failed)
    assert result.interval is None and "mixup seed 2 failed: RuntimeError: out of memory" in result.reason
    expected_seed = evaluate_check(check(statistic="train_time_s"), complete, seeds=[0, 1, 2, 3])
    assert "mixup seed 3 not run; erm seed 3 not run" in expected_seed.reason
    two_seeds = evaluate_check(check(statistic="train_time_s"), [r for r in complete if r.seed < 2])
    assert "2 seed(s) paired; a claim needs at least 3" in two_seeds.reason
    old_store = evaluate_check(check(), complete)  # finished, but stored without predictions
    assert old_store.verdict == INCONCLUSIVE and "no stored test predictions" in old_store.reason
    nothing = evaluate_claim(Claim.model_validate(yaml.safe_load(EXAMPLE_CLAIM)), [])
    assert nothing.verdict == INCONCLUSIVE and nothing.checks[0].reason == "no runs of mixup and erm in the store"


def test_runs_on_several_datasets_need_the_check_to_name_one() -> None:
    records = [
        record(m, s, dataset=d, final={"train_time_s": 1.0}) for d in "ab" for m in ("erm", "mixup") for s in range(3)
    ]
    result = evaluate_check(check(statistic="train_time_s"), records)
    assert result.verdict == INCONCLUSIVE and "several datasets (a, b)" in result.reason
    assert evaluate_check(check(statistic="train_time_s", dataset="b"), records).dataset == "b"


def test_one_claims_failure_does_not_stop_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = fast_suite(tmp_path)
    first = write_claim(tmp_path, claim_dict(str(suite)))
    second = write_claim(tmp_path, {**claim_dict(str(suite)), "name": "claim_y"})
    calls = []

    def broken_run_suite(plan, store, **options):
        calls.append(plan.suite.name)
        if len(calls) == 1:
            raise RuntimeError("disk full")

    monkeypatch.setattr(claims_run, "run_suite", broken_run_suite)
    with ResultStore(tmp_path / "store.db") as store:
        results = run_claims([str(first), str(second)], store, output=tmp_path / "runs")
    assert calls == ["tiny", "tiny"]
    assert results[0].error == "suite 'tiny' did not run: RuntimeError: disk full" and results[1].error is None
    assert [r.verdict for r in results] == [INCONCLUSIVE, INCONCLUSIVE]
    assert results[1].checks[0].reason == "no runs of mixup and erm in the store"


# ------------------------------------------------------------------ the report


def test_the_markdown_table_shows_the_difference_in_points_with_its_interval() -> None:
    claim = Claim.model_validate(yaml.safe_load(EXAMPLE_CLAIM))
    method = [predictions(150 + s, s) for s in range(3)]
    baseline = [predictions(120 - s, 10 + s) for s in range(3)]
    records = [record("mixup", s, predictions=p) for s, p in enumerate(method)]
    records += [record("erm", s, predictions=p) for s, p in enumerate(baseline)]
    result = evaluate_claim(claim, records, resamples=200)
    text = claims_markdown([result])
    row = next(line for line in text.splitlines() if line.startswith("| **mixup_label_noise**"))
    interval = result.checks[0].interval
    assert "Zhang, Cisse, Dauphin & Lopez-Paz, ICLR 2018, arXiv:1710.09412 (Table 2)" in row
    assert "ERM 23.6 %" in row and "**reproduced**" in row
    assert f"top-1 {interval.estimate * 100:+.2f} pts [{interval.low * 100:+.2f}, {interval.high * 100:+.2f}]" in row
    assert "(mixup 75.50 %, erm 59.50 %)" in row
    assert "per seed: seed 0: +15" in text and "budget 6 min" in text


def test_the_report_writes_markdown_and_standalone_html(tmp_path: Path) -> None:
    raw = yaml.safe_load(EXAMPLE_CLAIM)
    raw["statement"] = "mixup <beats> ERM | sometimes"
    result = evaluate_claim(Claim.model_validate(raw), [])
    paths = write_claims_report([result], tmp_path / "report")
    page = paths["html"].read_text()
    assert "mixup &lt;beats&gt; ERM | sometimes" in page and "<script" not in page and "inconclusive" in page
    assert "mixup &lt;beats&gt; ERM \\| sometimes" not in page
    assert "mixup <beats> ERM \\| sometimes" in paths["markdown"].read_text()


# ------------------------------------------------------------------ end to end, and the command


def test_a_claim_runs_end_to_end_then_resumes_and_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(claims_spec, "CLAIM_DIRS", (Path("configs") / "claims",))
    suite = fast_suite(tmp_path)
    (tmp_path / "configs" / "claims").mkdir(parents=True)
    write_claim(tmp_path / "configs" / "claims", claim_dict(str(suite)))
    store = tmp_path / "store.db"
    common = ["--store", str(store), "--output", str(tmp_path / "runs"), "--report", str(tmp_path / "report")]
    result = runner.invoke(app, ["claims", "claim_x", *common])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "claims.md").is_file() and (tmp_path / "report" / "claims.html").is_file()
    with ResultStore(store) as results:
        records = results.records("tiny", with_predictions=True)
    assert len(records) == 6 and all(r.finished and r.predictions is not None for r in records)
    verdict = next(v for v in VERDICTS if v in result.output)
    again = runner.invoke(app, ["claims", *common, "--report-only"])  # every claim found: the one in configs/claims
    assert again.exit_code == 0, again.output
    assert verdict in again.output
    with ResultStore(store) as results:
        assert [r.started for r in results.records("tiny")] == [r.started for r in records]  # nothing retrained
    listing = runner.invoke(app, ["claims", "--list", "--store", str(store)])
    assert listing.exit_code == 0, listing.output
    assert "claim_x" in listing.output and "6 runs, budget 6 min, measured" in listing.output


def test_list_shows_an_invalid_claim_with_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(claims_spec, "CLAIM_DIRS", (Path("configs") / "claims",))
    folder = tmp_path / "configs" / "claims"
    folder.mkdir(parents=True)
    suite = fast_suite(tmp_path)
    write_claim(folder, claim_dict(str(suite)))
    write_claim(folder, {**claim_dict(str(suite), statistic="acc"), "name": "claim_bad"})
    result = runner.invoke(app, ["claims", "--list", "--store", str(tmp_path / "none.db")])
    assert result.exit_code == 1
    assert "claim_x: mixup reduces the memorisation of corrupted labels" in result.output
    assert "6 runs, budget 6 min" in result.output and "measured" not in result.output
    assert "claim_bad: invalid" in result.output and "checks.0.statistic: unknown statistic" in result.output
    assert not (tmp_path / "none.db").exists()
    run = runner.invoke(app, ["claims", "--store", str(tmp_path / "s.db"), "--output", str(tmp_path / "runs")])
    assert run.exit_code == 2 and "claim_bad" in run.output and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("expect", "low", "high", "verdict"),
    [
        ("not_lower", -0.01, 0.05, "reproduced"),  # at most 1 point worse: within the 2-point tolerance
        ("not_lower", -0.05, -0.03, "not reproduced"),  # surely more than 2 points worse
        ("not_lower", -0.04, 0.01, "inconclusive"),
        ("not_higher", -0.05, 0.01, "reproduced"),
        ("not_higher", 0.03, 0.05, "not reproduced"),
        ("not_higher", -0.01, 0.04, "inconclusive"),
    ],
)
def test_non_inferiority_verdicts(expect: str, low: float, high: float, verdict: str) -> None:
    from mixlab.bench.claims import check_verdict

    assert check_verdict(expect, low, high, margin=0.02) == verdict


def test_non_inferiority_refuses_an_equivalence_bound() -> None:
    from pydantic import ValidationError

    from mixlab.bench.claims.spec import ClaimCheck

    with pytest.raises(ValidationError, match="has no meaning with expect: not_lower"):
        ClaimCheck(label="x", method="a", baseline="b", statistic="top1", expect="not_lower", equivalence=0.01)
