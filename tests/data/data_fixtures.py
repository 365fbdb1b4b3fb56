"""Writers of small files in the real on-disk formats, for the data tests.

They are independent of mixlab's readers (plain ``struct``, ``pickle``, Pillow), so a round trip checks
the reader against the format, not against itself.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: magic 0x0000TTDD, big-endian uint32 dims, big-endian data."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    header = struct.pack(">HBB", 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def _write(path: Path, data: bytes, compress: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_idx_dataset(
    folder: Path, n_train: int = 30, n_test: int = 10, compress: bool = True, size: int = 28, seed: int = 0
) -> dict:
    """The four MNIST files in ``folder``; returns ``{"train": (images, labels), "t10k": (...)}``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        _write(folder / f"{prefix}-images-idx3-ubyte", idx_bytes(images), compress)
        _write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels), compress)
        arrays[prefix] = (images, labels)
    return arrays


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(folder: Path, hundred: bool = False, n: int = 6, seed: int = 0) -> dict:
    """The official CIFAR batch files (pickles with bytes keys) in ``folder``; returns what was written."""
    rng = np.random.default_rng(seed)
    out = {}
    if hundred:
        for name in ("train", "test"):
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            fine, coarse = rng.integers(0, 100, n).tolist(), rng.integers(0, 20, n).tolist()
            _dump(
                folder / name,
                {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse, b"filenames": [b"x.png"] * n},
            )
            out[name] = (data, fine, coarse)
        _dump(
            folder / "meta",
            {
                b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
            },
        )
    else:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, n).tolist()
            _dump(folder / name, {b"data": data, b"labels": labels, b"batch_label": name.encode()})
            out[name] = (data, labels)
        _dump(
            folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": n}
        )
    return out


def write_images(folder: Path, classes: dict[str, int], size: tuple[int, int] = (9, 7), seed: int = 0) -> list[Path]:
    """PNG files written by Pillow: ``folder/<class>/img<i>.png``, random RGB pixels of ``size`` (w, h)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for name, count in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            path = folder / name / f"img{i}.png"
            Image.fromarray(pixels, "RGB").save(path)
            paths.append(path)
    return paths
