"""`mixlab bench` and `mixlab report` refuse what would fail after writing, and leave every file as it was."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from bench_fixtures import tiny_suite

from mixlab.cli import app


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def bench(tmp_path: Path, *extra: str):
    suite = tiny_suite(tmp_path)
    before = snapshot(tmp_path)
    args = ["bench", "--suite", str(suite), "--store", str(tmp_path / "store.db"), *extra]
    result = CliRunner().invoke(app, args)
    return result, before


def test_zero_workers_are_refused_before_the_store_is_created(tmp_path):
    result, before = bench(tmp_path, "--workers", "0", "--output", str(tmp_path / "runs"))
    assert result.exit_code == 2 and "--workers must be at least 1" in result.output and "got 0" in result.output
    assert snapshot(tmp_path) == before and not (tmp_path / "store.db").exists()


@pytest.mark.parametrize("option", ["--output", "--report"])
def test_an_output_or_report_path_that_is_a_file_is_refused_before_any_run(tmp_path, option):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    others = ["--output", str(tmp_path / "runs"), "--report", str(tmp_path / "report")]
    others[others.index(option) + 1] = str(blocker)
    result, before = bench(tmp_path, *others)
    assert result.exit_code == 2 and f"{option} '{blocker}' is a file" in result.output
    assert snapshot(tmp_path) == before and not (tmp_path / "store.db").exists()


def test_a_report_from_an_empty_file_leaves_it_empty(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    result = CliRunner().invoke(app, ["report", "--store", str(empty), "--output", str(tmp_path / "report")])
    assert result.exit_code == 2 and "is an empty file, not a results store" in result.output
    assert empty.read_bytes() == b"" and not (tmp_path / "report").exists()
