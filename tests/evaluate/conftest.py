"""Fixtures of the evaluation tests: one tiny classifier trained by the engine, shared by the whole session."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# the engine tests' data writer and config (tests/engine has no package marker, so it is put on the path)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from engine_fixtures import tiny_config, write_fashion_like

from mixlab.engine import RunResult, load_config, train


@dataclass
class TrainedRun:
    """A finished two-epoch run on the fixture data, with a 20% val split."""

    data_root: Path
    output: Path
    result: RunResult


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    base = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(base))  # as the autouse isolation does for each test
        data_root = write_fashion_like(base / "data")
        config = tiny_config(data_root, data={"val_fraction": 0.2}, train={"epochs": 2})
        result = train(load_config(config), base / "run", progress=False, echo=False)
    return TrainedRun(data_root, base / "run", result)
