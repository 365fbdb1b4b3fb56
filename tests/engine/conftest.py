"""Fixtures of the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_fixtures import write_fashion_like


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data root holding a small learnable fashion_mnist in IDX format."""
    return write_fashion_like(tmp_path / "data")
