"""MNIST-1D, generated locally with the ``mnist1d`` package and cached as ``.npz``.

(Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024, arXiv:2011.14439.)
The package's generator seeds Python's and NumPy's global RNGs; mixlab saves and restores both
around it, so loading MNIST-1D does not change anyone else's random stream. The package's own
download is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixlab.data.base import ArrayData, DataSplits
from mixlab.data.locate import atomic_output, first_writable, writable_bases
from mixlab.errors import MixlabValueError

SUBDIR = "mnist1d"
_KEYS = ("x", "y", "x_test", "y_test")


def mnist1d_args(num_samples: int, generation_seed: int) -> Any:
    """The package's default generation arguments with ``num_samples`` and ``seed`` replaced.

    Example:
        >>> args = mnist1d_args(200, 1)
        >>> args.num_samples, args.seed, args.final_seq_length
        (200, 1, 40)
    """
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = generation_seed
    return args


def cache_file_name(args: Any) -> str:
    """The cache file name: sample count, seed, and a digest of every generation argument.

    Example:
        >>> cache_file_name(mnist1d_args(200, 1)).startswith("mnist1d_n200_seed1_")
        True
    """
    settings = {k: v for k, v in sorted(vars(args).items()) if k != "url"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"mnist1d_n{args.num_samples}_seed{args.seed}_{digest}.npz"


def cache_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Where the cache is looked for and written, in order: ``root``, ``$MIXLAB_DATA``, the user cache (each ``/mnist1d``)."""
    return [base / SUBDIR for base in writable_bases(root)]


def generate(args: Any) -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset(args)``, restoring Python's and NumPy's global RNG state after it."""
    import mnist1d.data

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in _KEYS}


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in _KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        # Our own cache: a damaged one is regenerated rather than failing the run.
        warnings.warn(f"ignoring unreadable MNIST-1D cache {path} ({err}); regenerating", stacklevel=3)
        return None


def _write_cache(path: Path, data: dict[str, np.ndarray]) -> None:
    with atomic_output(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **data)


def load_or_generate(root: str | os.PathLike | None, num_samples: int, generation_seed: int):
    """Return ``(arrays, cache_path_or_None, generated)``: read the first cache found, else generate and cache."""
    args = mnist1d_args(num_samples, generation_seed)
    name = cache_file_name(args)
    dirs = cache_dirs(root)
    for d in dirs:
        if (d / name).is_file():
            data = _read_cache(d / name)
            if data is not None:
                return data, d / name, False
    data = generate(args)
    data = {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int64),
    }
    target = first_writable(dirs)
    if target is None:
        return data, None, True
    _write_cache(target / name, data)
    return data, target / name, True


def load_mnist1d(root: Path | None, spec, options: dict) -> DataSplits:
    """Build the MNIST-1D :class:`DataSplits`: float32 signals ``(N, 1, 40)``, 10 classes, the package's 80/20 split."""
    data, cache, generated = load_or_generate(root, options["num_samples"], options["generation_seed"])
    if len(data["y"]) == 0 or len(data["y_test"]) == 0:
        raise MixlabValueError(f"num_samples={options['num_samples']} gives an empty train or test split")
    train = ArrayData(torch.from_numpy(data["x"]).unsqueeze(1), torch.from_numpy(data["y"]))
    test = ArrayData(torch.from_numpy(data["x_test"]).unsqueeze(1), torch.from_numpy(data["y_test"]))
    info = {
        "source": "mnist1d.data.make_dataset",
        "cache": None if cache is None else str(cache),
        "generated": generated,
        "num_samples": options["num_samples"],
        "generation_seed": options["generation_seed"],
    }
    return DataSplits(
        spec.name, "classification", train, None, test, 10, tuple(train.x.shape[1:]), [str(i) for i in range(10)], info
    )
