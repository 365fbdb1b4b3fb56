"""Helpers for the engine tests: a small, learnable dataset in the real IDX format."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)


def learnable_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose class (0-9) is a bright horizontal band at a class-specific height, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for k in range(10):
        rows = slice(2 + 2 * k, 4 + 2 * k)
        images[labels == k, rows, 4:24] = 230
    return images, labels


def write_fashion_like(root: Path, n_train: int = 512, n_test: int = 256) -> Path:
    """A fashion_mnist folder (the four IDX files) under ``root``; returns ``root``."""
    folder = root / "fashion_mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = learnable_images(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_config(data_root: Path, **sections: dict) -> dict:
    """A config dict for a fast run on the fixture data; ``sections`` update the defaults."""
    config = {
        "data": {"name": "fashion_mnist", "root": str(data_root), "augment": {"crop_padding": 2}},
        "model": {"name": "cnn_small"},
        "mix": {"method": "none"},
        "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
        "train": {"epochs": 2, "batch_size": 64, "eval_batch_size": 128, "seed": 0, "device": "cpu", "progress": "off"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config
