"""Fixtures of every test: each runs with its own HOME, no $MIXLAB_DATA and no system data folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import mixlab.data.locate as locate


@pytest.fixture(autouse=True)
def isolated_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test sees the real $MIXLAB_DATA, ~/.cache or /usr/share/datasets unless it asks for them."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(locate.ENV_VAR, raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS", [tmp_path / "system"])
    return home


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device the mixers and losses are tested on: the CPU, and CUDA when this machine has it."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return torch.device(request.param)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (small tensors: thread start-up would dominate), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
