"""A reader for the python-pickle batches of CIFAR-10 and CIFAR-100.

(Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report, 2009;
https://www.cs.toronto.edu/~kriz/cifar.html.) The archives unpack to ``cifar-10-batches-py/``
(``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``) and ``cifar-100-python/``
(``train``, ``test``, ``meta``). Each batch is a pickled dict with ``b"data"``, a ``(N, 3072)`` uint8
array (R, G then B planes of 32x32), and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` /
``b"coarse_labels"`` (CIFAR-100).

The pickles are read by an unpickler that only builds NumPy arrays, lists, dicts and strings,
so a tampered file cannot run code.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixlab.data.base import ArrayData, DataSplits
from mixlab.data.idx import check_label_range
from mixlab.errors import MixlabValueError

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The only globals a CIFAR pickle needs: NumPy's array reconstruction (under its NumPy 1 and 2
# module names) and the codec Python uses for bytes in protocol-2 pickles.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy", "ndarray"): ("numpy",),
    ("numpy", "dtype"): ("numpy",),
    ("_codecs", "encode"): ("_codecs",),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global but the few NumPy arrays need."""

    def find_class(self, module: str, name: str) -> Any:
        modules = _ALLOWED.get((module, name))
        if modules is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR batch holds only arrays)")
        for candidate in modules:  # prefer numpy._core: numpy.core is deprecated in NumPy 2
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot find {module}.{name}")


def read_pickle(path: Path) -> dict:
    """Read one CIFAR pickle (a dict with bytes keys); corrupt or truncated files raise naming ``path``."""
    try:
        raw = path.read_bytes()
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise MixlabValueError(
            f"{path}: not a readable CIFAR pickle, corrupt or truncated? ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(obj, dict):
        raise MixlabValueError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def read_batch(path: Path, label_key: bytes, num_classes: int) -> ArrayData:
    """Read one batch into uint8 images ``(N, 3, 32, 32)`` and int64 labels, checking shapes and label range."""
    batch = read_pickle(path)
    for key in (b"data", label_key):
        if key not in batch:
            found = ", ".join(repr(k) for k in batch)
            raise MixlabValueError(f"{path}: no {key!r} entry in the batch (found {found})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise MixlabValueError(f"{path}: expected data as uint8 (N, 3072); found {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise MixlabValueError(
            f"{path}: expected {len(data)} integer labels for {len(data)} images; found {labels.dtype} {labels.shape}"
        )
    check_label_range(labels, num_classes, path)
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return ArrayData(x, torch.from_numpy(labels.astype(np.int64)))


def _concat(parts: list[ArrayData]) -> ArrayData:
    return ArrayData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def _names(path: Path, key: bytes, count: int) -> list[str]:
    meta = read_pickle(path)
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != count:
        raise MixlabValueError(f"{path}: expected {count} class names under {key!r}; found {names!r:.200}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def cifar_dir(directory: Path, inner: str) -> Path:
    """``directory/inner`` when the batches are there, else ``directory`` itself."""
    return directory / inner if (directory / inner).is_dir() else directory


def load_cifar10(directory: Path, spec, options: dict) -> DataSplits:
    """Build the CIFAR-10 :class:`DataSplits` from a ``cifar-10-batches-py`` directory."""
    directory = cifar_dir(directory, CIFAR10_DIR)
    train = _concat([read_batch(directory / name, b"labels", 10) for name in CIFAR10_TRAIN])
    test = read_batch(directory / "test_batch", b"labels", 10)
    meta = directory / "batches.meta"
    # The meta file only carries the names, which are fixed; an archive without it still loads.
    names = _names(meta, b"label_names", 10) if meta.is_file() else list(CIFAR10_CLASSES)
    info = {"source": str(directory), "files": [*CIFAR10_TRAIN, "test_batch"]}
    return DataSplits(spec.name, "classification", train, None, test, 10, (3, 32, 32), names, info)


def load_cifar100(directory: Path, spec, options: dict) -> DataSplits:
    """Build the CIFAR-100 :class:`DataSplits` (option ``labels``: ``"fine"``, 100 classes, or ``"coarse"``, 20)."""
    directory = cifar_dir(directory, CIFAR100_DIR)
    kind = options["labels"]
    count = 100 if kind == "fine" else 20
    key = f"{kind}_labels".encode()
    train = read_batch(directory / "train", key, count)
    test = read_batch(directory / "test", key, count)
    names = _names(directory / "meta", f"{kind}_label_names".encode(), count)
    info = {"source": str(directory), "labels": kind, "files": ["train", "test", "meta"]}
    return DataSplits(spec.name, "classification", train, None, test, count, (3, 32, 32), names, info)


def has_cifar10_files(directory: Path) -> bool:
    """Whether the CIFAR-10 batches are in ``directory`` or its ``cifar-10-batches-py`` folder."""
    d = cifar_dir(directory, CIFAR10_DIR)
    return all((d / name).is_file() for name in (*CIFAR10_TRAIN, "test_batch"))


def has_cifar100_files(directory: Path) -> bool:
    """Whether the CIFAR-100 files are in ``directory`` or its ``cifar-100-python`` folder."""
    d = cifar_dir(directory, CIFAR100_DIR)
    return all((d / name).is_file() for name in ("train", "test", "meta"))
