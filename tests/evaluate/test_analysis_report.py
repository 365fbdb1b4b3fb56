"""The report's analysis section: tables of the issue-13 analyses, mCE against the baseline, plots, the store's artifacts."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mixlab.bench.aggregate import aggregate
from mixlab.bench.analysis_report import _roc_label, analysis_sections, mean_corruption_errors, mean_roc
from mixlab.bench.records import RunRecord
from mixlab.bench.render import write_report
from mixlab.bench.store import ResultStore
from mixlab.evaluate.catalog import metric_info

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_KINDS = ("gap_vs_lambda", "corruption_heatmap", "ood_roc", "gain_vs_gap")


def roc(tpr: list[float]) -> dict[str, list[float]]:
    return {"fpr": [0.0, 0.5, 1.0], "tpr": tpr}


def analysed_run(method: str, seed: int, top1: float, **final: float) -> RunRecord:
    """A finished run of suite 'a' on digits/mlp with the given metrics; OOD ROC and gap curve artifacts."""
    artifacts = {
        "ood_roc": {"noise": {"msp": roc([0.0, 0.8, 1.0]), "energy": roc([0.0, 0.7, 1.0])}},
        "gap_curve": {"lam_mid": [0.1, 0.5, 0.9], "mmd": [0.3, 0.1, 0.3], "p": [0.0, 0.1, 0.0], "count": [50, 50, 50]},
    }
    return RunRecord(
        "a", hash((method, seed)) % 1000, f"digits/mlp/{method}/seed{seed}", "digits", "mlp", method, seed,
        "finished", final={"top1": top1, **final}, artifacts=artifacts,
    )  # fmt: skip


def three_methods() -> list[RunRecord]:
    """erm (baseline), mixup and cutmix, two seeds each; cutmix lacks calibration and the gap."""
    runs = []
    for seed in (0, 1):
        jitter = 0.01 * seed
        # baseline corruption errors 0.2 (fog) and 0.4 (jpeg)
        runs.append(analysed_run("erm", seed, 0.80, **{"corr_acc/fog": 0.8, "corr_acc/jpeg": 0.6, "corr_acc": 0.7},
                                 aece=0.05 + jitter, mmd_mixed_real=0.2, **{"probe_acc/held_out": 0.6}))  # fmt: skip
        # mixup errors 0.1 and 0.4: mCE = (0.1/0.2 + 0.4/0.4) / 2 = 0.75
        runs.append(analysed_run("mixup", seed, 0.85 + jitter, **{"corr_acc/fog": 0.9, "corr_acc/jpeg": 0.6},
                                 aece=0.02, mmd_mixed_real=0.1, nc1=1.5, **{"ood_auroc_msp": 0.9}))  # fmt: skip
        # cutmix errors 0.3 and 0.2: mCE = (0.3/0.2 + 0.2/0.4) / 2 = 1.0
        runs.append(analysed_run("cutmix", seed, 0.83, **{"corr_acc/fog": 0.7, "corr_acc/jpeg": 0.8}))
    return runs


def table(markdown: str, title: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header cells and method -> cells of the Markdown table under ``#### title``."""
    lines = markdown.split(f"#### {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    return cells[0], {row[0]: row for row in cells[2:]}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], str, str]:
    out = tmp_path_factory.mktemp("report")
    written = write_report(three_methods(), out, suite="a")
    return written, written["leaderboard"].read_text(), written["index"].read_text()


def test_the_tables_hold_the_means_over_seeds_formatted_and_leave_missing_cells_empty(report) -> None:
    _, markdown, _ = report
    header, rows = table(markdown, "Calibration")
    assert header == ["method", "adaptive ECE (%) ↓"]
    assert rows["erm"][1] == "5.50 ± 0.71"  # 0.05, 0.06 -> 5.50 % ± 0.71
    assert rows["mixup"][1] == "2.00 ± 0.00"
    assert rows["cutmix"][1] == ""  # not measured: an empty cell, not a dash or a zero
    header, rows = table(markdown, "Mixed-vs-real gap")
    assert rows["mixup"][header.index("mixed-real MMD²")] == "0.1000 ± 0.0000"
    header, rows = table(markdown, "Transfer")
    assert header == ["method", "probe acc. · held_out (%) ↑"]
    assert rows["erm"][1] == "60.00 ± 0.00" and rows["mixup"][1] == ""
    header, rows = table(markdown, "Geometry")
    assert rows["mixup"][header.index("NC1")] == "1.500 ± 0.000" and rows["erm"][header.index("NC1")] == ""


def test_corr_mce_is_each_methods_error_relative_to_the_baselines_averaged_over_corruptions(report) -> None:
    _, markdown, _ = report
    header, rows = table(markdown, "Corruptions")
    column = header.index("mCE (%) ↓")
    assert rows["mixup"][column] == "75.00 ± 0.00"  # (0.1/0.2 + 0.4/0.4) / 2
    assert rows["cutmix"][column] == "100.00 ± 0.00"  # (0.3/0.2 + 0.2/0.4) / 2
    assert rows["erm"][column] == "100.00 ± 0.00"
    assert rows["erm"][header.index("corruption acc. (%) ↑")] == "70.00 ± 0.00"
    assert rows["mixup"][header.index("corruption acc. (%) ↑")] == ""


def test_mce_by_hand_leaves_out_corruptions_the_baseline_never_gets_wrong_and_needs_a_baseline() -> None:
    def run(accuracies: dict[str, float]) -> RunRecord:
        return RunRecord(
            "a", 0, "k", "d", "m", "x", 0, "finished", final={f"corr_acc/{k}": v for k, v in accuracies.items()}
        )

    baseline = [run({"fog": 0.8, "jpeg": 0.6, "blur": 1.0}), run({"fog": 0.8, "jpeg": 0.6, "blur": 1.0})]
    method = run({"fog": 0.9, "jpeg": 0.6, "blur": 0.5, "snow": 0.1})  # blur: baseline error 0; snow: no baseline
    assert mean_corruption_errors([method], baseline) == [pytest.approx(0.75)]
    assert mean_corruption_errors([method], []) == []
    board_runs = [run({"fog": 0.9})]
    (section,) = analysis_sections(board_runs, aggregate(board_runs), {})  # no erm run: no mCE column
    assert all("corr_mce" not in t.columns for t in section.tables)


def test_the_plots_are_written_as_png_files_and_embedded_in_the_page(report) -> None:
    written, markdown, page = report
    for kind in PLOT_KINDS:
        name = f"analysis_digits_mlp_{kind}"
        data = written[name].read_bytes()
        assert written[name].name == f"{name}.png" and data.startswith(PNG_SIGNATURE) and len(data) > 1000
        assert f"]({name}.png)" in markdown
        assert f'<figure id="{name}"><img src="data:image/png;base64,{base64.b64encode(data).decode()}"' in page
    assert "<h2>Analysis</h2>" in page and "## Analysis" in markdown
    assert page.index("<h2>Analysis</h2>") < page.index("<h2>Failed runs</h2>")
    assert "http" not in page


def test_mean_roc_averages_tpr_vertically_at_fixed_false_positive_rates() -> None:
    curves = [{"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}, {"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 1.0, 1.0]}]
    tpr = mean_roc([*curves, {"fpr": [0.0], "tpr": [0.0, 1.0]}, None])  # malformed curves are left out
    assert tpr[[0, 25, 50, 100]].tolist() == pytest.approx([0.5, 0.625, 0.75, 1.0])
    assert mean_roc([None]) is None


def test_a_board_without_gap_or_corruptions_draws_only_what_it_has() -> None:
    runs = [
        RunRecord("a", i, f"k{i}", "d", "m", m, 0, "finished", final={"top1": 0.8, "kid": 0.01})
        for i, m in enumerate(["erm", "mixup"])
    ]
    (section,) = analysis_sections(runs, aggregate(runs), {})
    assert section.plots == {}
    assert [t.title for t in section.tables] == ["Mixed-vs-real gap"]


def test_a_report_without_analysis_metrics_has_no_analysis_section(tmp_path: Path) -> None:
    runs = [RunRecord("a", i, f"k{i}", "d", "m", m, 0, "finished", final={"top1": t, "ece": 0.05})
            for i, (m, t) in enumerate([("erm", 0.8), ("mixup", 0.9)])]  # fmt: skip
    runs[0].artifacts = {
        "reliability": {"lower": [0.0], "upper": [1.0], "confidence": [0.5], "accuracy": [0.5], "count": [1]}
    }
    assert analysis_sections(runs, aggregate(runs), {}) == []
    written = write_report(runs, tmp_path, suite="a")
    assert not any(name.startswith("analysis_") for name in written)
    assert "Analysis" not in written["leaderboard"].read_text() and "Analysis" not in written["index"].read_text()
    assert not list(tmp_path.glob("analysis_*"))


def test_only_the_boards_with_analysed_runs_get_a_section() -> None:
    runs = [*three_methods(), RunRecord("a", 99, "k", "fashion", "cnn", "erm", 0, "finished", final={"top1": 0.7})]
    boards = aggregate(runs)
    assert [b.dataset for b in boards] == ["digits", "fashion"]
    assert [s.board.dataset for s in analysis_sections(runs, boards, {})] == ["digits"]


@pytest.mark.parametrize(
    ("key", "base"),
    [("ood_auroc_msp/digits", "ood_auroc_msp"), ("probe_acc/held_out_classes", "probe_acc"),
     ("corr_acc/fog", "corr_acc"), ("corr_acc/fog/3", "corr_acc"), ("mmd/lam_0.0_0.2", "mmd"),
     ("analysis_time_s/gap", "analysis_time_s")],
)  # fmt: skip
def test_per_part_keys_resolve_to_their_base_declaration(key: str, base: str) -> None:
    assert metric_info(key) is metric_info(base)


@pytest.mark.parametrize(
    ("key", "higher_is_better"),
    [("aece", False), ("eaurc", False), ("ood_auroc_energy", True), ("ood_fpr95_msp", False), ("corr_mce", False),
     ("probe_acc", True), ("logme", True), ("intrusion_rate", False), ("mmd_mixed_real", None), ("nc1", None)],
)  # fmt: skip
def test_analysis_metrics_have_their_direction(key: str, higher_is_better: bool | None) -> None:
    assert metric_info(key).higher_is_better is higher_is_better


def test_artifacts_round_trip_through_the_store_and_an_older_run_reads_as_empty(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "mixlab.db")
    store.save_suite("a", {})
    roc_artifact = {"digits": {"msp": roc([0.0, 0.9, 1.0]), "energy": roc([0.0, 0.8, 1.0])}}
    reliability = {"lower": [0.0], "upper": [1.0], "confidence": [0.7], "accuracy": [0.6], "count": [10]}
    ids = [
        store.start_run("a", key, dataset="d", model="m", method="erm", seed=seed, config={})
        for seed, key in enumerate(["new", "old"])
    ]
    store.finish_run(ids[0], metrics={"top1": 0.9, "ood_auroc_msp/digits": 0.8}, wall_time_s=1.0,
                     artifacts={"ood_roc": roc_artifact, "reliability": reliability})  # fmt: skip
    store.finish_run(ids[1], metrics={"top1": 0.8}, wall_time_s=1.0)  # stored as before the analyses: no artifacts
    new, old = store.records("a")
    store.close()
    assert new.artifacts == {"ood_roc": roc_artifact, "reliability": reliability}
    assert new.reliability == reliability and new.final["ood_auroc_msp/digits"] == 0.8
    assert old.artifacts == {} and old.reliability is None


def test_the_ood_legend_quotes_the_per_source_auroc() -> None:
    runs = three_methods()
    for run in runs:
        run.final["ood_auroc_msp/noise"] = 0.876
    assert _roc_label("erm", runs[:1], "noise") == "erm (87.6)"
    assert _roc_label("erm", runs[:1], "digits") == "erm"  # no AUROC stored for that source


def test_differences_from_the_baseline_are_paired_by_seed_with_a_t_interval(report) -> None:
    _, markdown, page = report
    header, rows = table(markdown, "Differences from erm")
    assert header[0] == "method" and "Δ adaptive ECE (points) ↓" in header and "Δ corruption acc. (points) ↑" not in header
    # aece: mixup 0.02 both seeds, erm 0.05 and 0.06 -> differences -0.03, -0.04: mean -3.50 points,
    # t-interval -3.5 ± t(0.975, 1) * 0.707 / sqrt(2) = -3.5 ± 12.706 * 0.5 = [-9.85, +2.85]
    assert rows["mixup"][header.index("Δ adaptive ECE (points) ↓")] == "-3.50 [-9.85, +2.85]"
    assert rows["mixup"][header.index("Δ mixed-real MMD²")] == "-0.1000 [-0.1000, -0.1000] *"  # no spread
    assert "cutmix" not in rows  # none of the compared keys (its corr_acc/<name> only): no row
    assert "erm" not in rows and "Differences from erm" in page


def test_a_difference_needs_two_seeds_the_baseline_also_ran() -> None:
    from mixlab.bench.analysis_report import seed_paired_differences

    method = [analysed_run("mixup", s, 0.8, corr_acc=0.8 + 0.01 * s) for s in (0, 1, 2)]
    baseline = [analysed_run("erm", s, 0.8, corr_acc=0.7) for s in (0, 1)]
    differences = seed_paired_differences(method, baseline)
    assert differences["corr_acc"].estimate == pytest.approx(0.105)  # seeds 0 and 1 only: 0.10 and 0.11
    assert seed_paired_differences(method, baseline[:1]) == {}


def test_an_analysis_that_failed_after_training_is_named_in_the_report(tmp_path) -> None:
    runs = three_methods()
    runs[1].artifacts["analysis_errors"] = {"gap": "RuntimeError: out of memory"}
    markdown = write_report(runs, tmp_path, suite="a")["leaderboard"].read_text()
    assert "digits/mlp/mixup/seed0: gap: RuntimeError: out of memory" in markdown
