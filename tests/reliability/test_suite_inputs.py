"""Suite names, method labels and picture sizes that would fail only after work started are refused first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from bench_fixtures import tiny_suite

from mixlab.bench.show import MAX_PAIRS, mix_grid
from mixlab.bench.suite import MAX_LABEL_LENGTH, SuiteError, load_suite
from mixlab.errors import MixlabValueError


def rewrite(path: Path, **changes) -> Path:
    suite = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        suite[key] = value
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.parametrize("name", ["..", "."])
def test_a_suite_named_like_a_parent_directory_is_refused(tmp_path, name):
    path = rewrite(tiny_suite(tmp_path), name=name)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SuiteError, match=rf"'{name}' would name a directory outside"):
        load_suite(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_a_method_label_too_long_for_a_file_name_is_refused_before_any_run(tmp_path):
    path = rewrite(tiny_suite(tmp_path), methods=[{"name": "m" * 300}])
    with pytest.raises(SuiteError, match=f"at most {MAX_LABEL_LENGTH} characters"):
        load_suite(path)
    assert not (tmp_path / "runs").exists()


def test_a_label_at_the_limit_is_accepted(tmp_path):
    path = rewrite(tiny_suite(tmp_path), methods=[{"name": "m" * MAX_LABEL_LENGTH}])
    assert load_suite(path).methods[0].name == "m" * MAX_LABEL_LENGTH


def test_a_picture_of_more_pairs_than_can_be_read_is_refused_before_drawing():
    with pytest.raises(MixlabValueError, match=f"pairs must be at most {MAX_PAIRS} .*got 300"):
        mix_grid("mixup", torch.rand(8, 1, 8, 8), torch.arange(8), pairs=300)
    assert mix_grid("mixup", torch.rand(8, 1, 8, 8), torch.arange(8), pairs=2).ndim == 3
