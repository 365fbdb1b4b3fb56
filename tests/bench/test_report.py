"""The benchmark report: aggregation over seeds, step-time ratios, tables and the written files."""

from __future__ import annotations

import base64
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

from mixlab.bench.records import RunRecord
from mixlab.bench.report import (
    METRICS,
    aggregate,
    leaderboard_html,
    leaderboard_markdown,
    write_report,
)
from mixlab.errors import MixlabTypeError, MixlabValueError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(
    method: str,
    seed: int,
    *,
    status: str = "finished",
    dataset: str = "fashion_mnist",
    model: str = "cnn_small",
    suite: str = "quick",
    error: str | None = None,
    **final: float,
) -> RunRecord:
    """A stored run as a report sees it: the given final metrics, two epochs and one reliability diagram."""
    epochs = [
        {"epoch": 1, "train_loss": 1.0, "train_acc": 0.6, "lr": 0.1, "images_per_s": 100.0, "epoch_time_s": 1.0},
        {"epoch": 2, "train_loss": 0.5, "train_acc": 0.8, "lr": 0.0, "images_per_s": 100.0, "epoch_time_s": 1.0}
        | {"test_acc": final.get("top1", 0.5), "test_loss": 0.4},
    ]
    reliability = {
        "lower": [0.0, 0.5],
        "upper": [0.5, 1.0],
        "confidence": [0.4, 0.8],
        "accuracy": [0.3, 0.75],
        "count": [10, 90],
    }
    mix = {"method": "none" if method == "erm" else method, "options": {}}
    return RunRecord(
        suite=suite,
        run_id=hash((suite, dataset, model, method, seed)) % 10**6,
        key=f"{dataset}/{model}/{method}/seed{seed}",
        dataset=dataset,
        model=model,
        method=method,
        seed=seed,
        status=status,
        config={"mix": mix, "data": {"name": dataset}},
        final=dict(final) if status == "finished" else {},
        epochs=epochs if status == "finished" else [],
        reliability=reliability if status == "finished" else None,
        started="2025-01-01T10:00:00",
        ended="2025-01-01T10:05:00",
        error=error,
    )


def full_suite() -> list[RunRecord]:
    """Two seeds of erm, mixup and cutmix with every metric, plus one failed cutmix run."""
    runs = []
    for method, top1, ece, speed in (
        ("erm", 0.80, 0.05, 1000.0),
        ("mixup", 0.84, 0.02, 900.0),
        ("cutmix", 0.86, 0.04, 800.0),
    ):
        for seed in (0, 1):
            jitter = 0.01 * seed
            metrics = dict(top1=top1 + jitter, top5=0.99, nll=0.5 - jitter, ece=ece, ece_ts=0.01, brier=0.2)
            metrics |= dict(fgsm_acc=0.3, noise_acc=0.6, wall_time_s=60.0 + seed, images_per_s=speed)
            runs.append(make_run(method, seed, **metrics))
    runs.append(
        make_run("cutmix", 2, status="failed", error="RuntimeError: out of memory\n  at runner.py:209 in execute_run")
    )
    return runs


def table_rows(markdown: str) -> dict[str, list[str]]:
    """Method -> cells of each row of the (first) Markdown table."""
    rows = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows[cells[1]] = cells
    return rows


def header_cells(markdown: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(("| rank", "| band")))
    return [cell.strip() for cell in line.strip("|").split("|")]


# ------------------------------------------------------------------ aggregation


def test_aggregate_means_and_sample_stds_over_seeds_ranked_by_top1() -> None:
    runs = [make_run("erm", s, top1=v) for s, v in enumerate([0.80, 0.82])]
    runs += [make_run("mixup", s, top1=v, nll=n) for s, (v, n) in enumerate([(0.85, 0.4), (0.87, 0.5), (0.89, 0.6)])]
    runs += [
        make_run("fmix", 0, top1=0.83),
        make_run("cutmix", 0, status="failed"),
        make_run("cutmix", 1, status="running"),
    ]

    (board,) = aggregate(runs)

    assert [row.method for row in board.rows] == ["mixup", "fmix", "erm"]
    assert [row.rank for row in board.rows] == [1, 2, 3]
    mixup, fmix, erm = board.rows
    assert mixup.seeds == 3 and erm.seeds == 2 and fmix.seeds == 1
    assert mixup.metrics["top1"].mean == pytest.approx(0.87)
    assert mixup.metrics["top1"].std == pytest.approx(statistics.stdev([0.85, 0.87, 0.89]))
    assert mixup.metrics["nll"].mean == pytest.approx(0.5)
    assert fmix.metrics["top1"].std is None  # one seed: no spread
    assert "nll" not in erm.metrics  # missing metrics stay absent


def test_aggregate_makes_one_board_per_dataset_and_model() -> None:
    runs = [
        make_run("erm", 0, dataset="mnist", top1=0.9),
        make_run("erm", 0, dataset="fashion_mnist", top1=0.8),
        make_run("erm", 0, dataset="fashion_mnist", model="mlp", top1=0.7),
        make_run("mixup", 0, dataset="fashion_mnist", top1=0.85),
    ]
    boards = aggregate(runs)
    assert [(b.dataset, b.model) for b in boards] == [
        ("fashion_mnist", "cnn_small"),
        ("fashion_mnist", "mlp"),
        ("mnist", "cnn_small"),
    ]
    assert [len(b.rows) for b in boards] == [2, 1, 1]
    assert all(board.suite == "quick" for board in boards)


def test_step_ratio_is_the_baseline_median_speed_over_the_run_speed() -> None:
    runs = [make_run("erm", s, top1=0.8, images_per_s=v) for s, v in enumerate([100.0, 120.0, 200.0])]
    runs += [make_run("mixup", 0, top1=0.8, images_per_s=80.0), make_run("mixup", 1, top1=0.8, images_per_s=96.0)]
    runs += [make_run("mixup", 0, model="mlp", top1=0.8, images_per_s=50.0)]  # no baseline for this model

    cnn, mlp = aggregate(runs)

    ratios = {row.method: row.metrics["step_ratio"] for row in cnn.rows}
    assert ratios["mixup"].mean == pytest.approx((120 / 80 + 120 / 96) / 2)
    assert ratios["erm"].mean == pytest.approx((1.2 + 1.0 + 0.6) / 3)
    assert "step_ratio" not in mlp.rows[0].metrics


def test_non_finite_metrics_are_treated_as_absent() -> None:
    (board,) = aggregate([make_run("erm", 0, top1=0.8, nll=float("nan")), make_run("erm", 1, top1=0.9, nll=0.3)])
    assert board.rows[0].metrics["nll"].mean == pytest.approx(0.3)
    assert board.rows[0].metrics["nll"].count == 1


# ------------------------------------------------------------------ tables


def test_best_is_marked_per_direction_of_each_column() -> None:
    runs = [
        make_run("erm", 0, top1=0.80, nll=0.30),  # best (lowest) NLL
        make_run("mixup", 0, top1=0.90, nll=0.50),  # best (highest) top-1
        make_run("cutmix", 0, top1=0.85, nll=0.40),
    ]
    boards = aggregate(runs)
    markdown = leaderboard_markdown(boards)
    rows, header = table_rows(markdown), header_cells(markdown)
    top1, nll = header.index("top-1 (%) ↑"), header.index("NLL ↓")

    bold = {method: [i for i, cell in enumerate(cells) if cell.startswith("**")] for method, cells in rows.items()}
    assert bold == {"mixup": [top1], "erm": [nll], "cutmix": []}
    assert rows["mixup"][top1] == "**90.00**"
    html = leaderboard_html(boards[0])
    assert '<td class="best">90.00</td>' in html and '<td class="best">0.300</td>' in html


def test_markdown_has_a_row_per_method_and_leaves_out_empty_columns() -> None:
    markdown = leaderboard_markdown(aggregate(full_suite()))

    assert markdown.startswith("### fashion_mnist · cnn_small")
    rows = table_rows(markdown)
    assert list(rows) == ["cutmix", "mixup", "erm"]
    assert rows["cutmix"][2] == "**86.50 ± 0.71**"  # percent, mean ± sample std, best in bold
    assert "2 seeds per method" in markdown
    header = header_cells(markdown)
    classification = [m for m in METRICS if m.key not in ("rmse", "mae")]
    assert len(header) == 2 + len(classification)  # every classification metric present, step_ratio derived

    sparse = leaderboard_markdown(aggregate([make_run("erm", 0, top1=0.8), make_run("mixup", 0, top1=0.9)]))
    assert header_cells(sparse) == ["rank", "method", "top-1 (%) ↑"]


def test_all_equal_values_mark_nothing() -> None:
    (board,) = aggregate([make_run("erm", 0, top1=0.8, top5=1.0), make_run("mixup", 0, top1=0.9, top5=1.0)])
    assert board.best("top5") == set()
    assert board.best("top1") == {"mixup"}


# ------------------------------------------------------------------ the written report


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_write_report_writes_every_file_and_a_self_contained_page(tmp_path: Path) -> None:
    out = tmp_path / "report"
    gallery_calls = []

    def gallery(record: RunRecord) -> np.ndarray | None:
        gallery_calls.append(record.method)
        return None if record.method == "erm" else np.full((20, 60, 3), 200, dtype=np.uint8)

    written = write_report(full_suite(), out, suite="quick", gallery=gallery)

    expected = ["top1_vs_ece", "top1_vs_cost", "reliability", "learning_curves", "gallery", "leaderboard", "index"]
    assert list(written) == expected
    assert all(path.parent == out and path.stat().st_size > 0 for path in written.values())
    assert sorted(gallery_calls) == ["cutmix", "erm", "mixup"]  # first finished run of each method
    for name in expected[:5]:
        assert written[name].read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written.values())  # no temp files left

    page = written["index"].read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    pngs = embedded_pngs(page)
    assert len(pngs) == 5 and all(png.startswith(PNG_SIGNATURE) for png in pngs)
    assert "quick" in page and "7 runs: 6 finished, 1 failed" in page
    assert "fashion_mnist/cnn_small/cutmix/seed2" in page and "RuntimeError: out of memory" in page
    assert page.count('class="best"') >= 1 and "fashion_mnist · cnn_small" in page
    markdown = written["leaderboard"].read_text()
    assert "| 1 | cutmix |" in markdown and "(top1_vs_ece.png)" in markdown


def test_report_without_baseline_or_curves_skips_what_has_no_data(tmp_path: Path) -> None:
    run = make_run("mixup", 0, top1=0.9, wall_time_s=30.0)
    run.epochs, run.reliability = [], None

    written = write_report([run], tmp_path, suite="solo")

    assert set(written) == {"top1_vs_cost", "leaderboard", "index"}  # cost falls back to wall time
    assert len(embedded_pngs(written["index"].read_text())) == 1


def test_gallery_may_return_a_figure(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    written = write_report(full_suite(), tmp_path, suite="quick", gallery=lambda record: Figure(figsize=(3, 1)))
    assert written["gallery"].read_bytes().startswith(PNG_SIGNATURE)


def test_no_finished_run_raises_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    runs = [make_run("erm", 0, status="failed", error="boom"), make_run("mixup", 0, status="running")]
    with pytest.raises(MixlabValueError, match=r"suite 'quick' has no finished runs \(1 failed, 1 unfinished\)"):
        write_report(runs, out, suite="quick")
    with pytest.raises(MixlabValueError, match="no finished runs"):
        write_report([], out, suite="quick")
    assert not out.exists()


def test_bad_gallery_output_raises_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(MixlabTypeError, match="returned str"):
        write_report(full_suite(), out, suite="quick", gallery=lambda record: "picture")
    with pytest.raises(MixlabValueError, match=r"shape \(4, 4\)"):
        write_report(full_suite(), out, suite="quick", gallery=lambda record: np.zeros((4, 4)))
    assert not out.exists()


# ------------------------------------------------------------------ differences from the baseline, and bands


def _with_predictions(method: str, seed: int, accuracy: float, n: int = 3000):
    import torch

    from mixlab.evaluate.predictions import classification_predictions

    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0))
    correct = torch.rand(n, generator=torch.Generator().manual_seed(1 + seed + 7 * len(method))) < accuracy
    predicted = torch.where(correct, y, (y + 1) % 10)
    record = make_run(method, seed, top1=float(correct.float().mean()))
    record.predictions = classification_predictions(4.0 * torch.nn.functional.one_hot(predicted, 10).float(), y)
    return record


def test_boards_with_predictions_rank_in_bands_and_show_differences() -> None:
    runs = [_with_predictions(m, s, a) for m, a in (("erm", 0.70), ("mixup", 0.80), ("cutmix", 0.705)) for s in (0, 1, 2)]
    (board,) = aggregate(runs, resamples=300)
    assert board.banded and [(row.method, row.rank) for row in board.rows] == [("mixup", 1), ("cutmix", 2), ("erm", 2)]
    markdown = leaderboard_markdown([board])
    assert header_cells(markdown)[0] == "band"
    assert "Differences from erm (method − erm)" in markdown and "McNemar p" in markdown
    mixup_line = next(line for line in markdown.splitlines() if line.startswith("| mixup | 3 |"))
    assert mixup_line.split("|")[3].strip().endswith("*")  # about +10 points: clear
    cutmix_line = next(line for line in markdown.splitlines() if line.startswith("| cutmix | 3 |"))
    assert not cutmix_line.split("|")[3].strip().endswith("*")  # half a point on 3,000 samples: not clear
    html = leaderboard_html(board)
    assert "<th>band</th>" in html and "Differences from erm" in html and "class=clear" in html


def test_a_board_without_predictions_keeps_its_strict_ranking() -> None:
    (board,) = aggregate([make_run("erm", 0, top1=0.8), make_run("mixup", 0, top1=0.9)])
    assert not board.banded and [row.rank for row in board.rows] == [1, 2]
    assert "Differences from" not in leaderboard_markdown([board])


def test_the_page_links_the_claims_page_when_the_folder_has_one(tmp_path: Path) -> None:
    write_report(full_suite(), tmp_path, suite="quick")
    assert "claims.html" not in (tmp_path / "index.html").read_text()
    (tmp_path / "claims.html").write_text("<html></html>")
    write_report(full_suite(), tmp_path, suite="quick")
    assert '<a href="claims.html">' in (tmp_path / "index.html").read_text()
