"""Checkpoints written atomically, and the files of a run directory.

A checkpoint is written to a temporary file in the same directory, flushed to
disk, then renamed over the old one: a run killed at any moment leaves either
the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from mixlab.data.locate import atomic_output
from mixlab.errors import MixlabValueError

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
FINAL = "final.json"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write_bytes(p, b"hi"); p.read_bytes()
        b'hi'
    """
    with atomic_output(Path(path)) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename makes it visible


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` to ``path`` atomically.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.pt"
        >>> save_checkpoint(p, {"model": {}, "epoch": 1}); load_checkpoint(p)["epoch"]
        1
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MixlabValueError(f"no checkpoint at {str(path)!r}")
    try:
        # weights_only=False: checkpoints also hold plain Python state (config, metrics), and only
        # the user's own run directories are read.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise MixlabValueError(f"{path} is not a readable checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise MixlabValueError(f"{path} is not a mixlab checkpoint (no 'model' entry)")
    return state


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a killed run keeps every finished epoch's line)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (a torn last line is ignored)."""
    records = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
