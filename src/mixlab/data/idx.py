"""A reader for the IDX files of MNIST and Fashion-MNIST (plain or gzip-compressed).

An IDX file is a 4-byte magic number ``0x0000TTDD`` (``TT`` the element type, ``DD`` the number of
dimensions), ``DD`` big-endian uint32 sizes, then the elements in C order, big-endian.
(LeCun et al., "Gradient-based learning applied to document recognition", 1998; file format at
http://yann.lecun.com/exdb/mnist/.)
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from mixlab.data.base import ArrayData, DataSplits
from mixlab.errors import MixlabValueError

# Element type code -> big-endian NumPy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike, *, ndim: int | None = None, type_code: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip or plain, told apart by content) into a native-endian NumPy array.

    Args:
        path: the file.
        ndim, type_code: when given, the file must have this many dimensions / this element type
            (``0x08`` for uint8), else a :class:`MixlabValueError` names the file and both magic numbers.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d, "labels-idx1-ubyte")
        ...     _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        ...     read_idx(p, ndim=1, type_code=0x08).tolist()
        [7, 8, 9]
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise MixlabValueError(f"{path}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic number")
    zero, code, dims = struct.unpack(">HBB", raw[:4])
    expected_magic = _magic(type_code or code, ndim if ndim is not None else dims)
    if zero != 0 or code not in IDX_DTYPES:
        raise MixlabValueError(
            f"{path}: bad IDX magic number 0x{int.from_bytes(raw[:4], 'big'):08X}; expected 0x{expected_magic:08X} "
            f"(two zero bytes, a type code among {', '.join(f'0x{c:02X}' for c in IDX_DTYPES)}, the number of dims)"
        )
    if (type_code is not None and code != type_code) or (ndim is not None and dims != ndim):
        raise MixlabValueError(
            f"{path}: IDX magic number 0x{_magic(code, dims):08X} (type 0x{code:02X}, {dims} dims); "
            f"expected 0x{expected_magic:08X} (type 0x{expected_magic >> 8 & 0xFF:02X}, {expected_magic & 0xFF} dims)"
        )
    header = 4 + 4 * dims
    if len(raw) < header:
        raise MixlabValueError(f"{path}: truncated IDX header: {len(raw)} bytes, the header needs {header}")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        raise MixlabValueError(
            f"{path}: expected {expected} bytes of data after the header (shape {tuple(shape)}, {dtype.name}), "
            f"found {found}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _magic(code: int, dims: int) -> int:
    return (code << 8) | dims


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            raw = f.read()
        if raw[:2] == _GZIP_MAGIC:
            return gzip.decompress(raw)
        return raw
    except EOFError as err:
        raise MixlabValueError(f"{path}: truncated gzip file ({err})") from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise MixlabValueError(f"{path}: corrupt gzip file ({err})") from err


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """The file ``stem`` in ``directory``, plain preferred over ``stem.gz`` (a plain copy is faster to read)."""
    for name in (stem, stem + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def has_idx_files(directory: Path) -> bool:
    """Whether all four MNIST-style IDX files (plain or .gz) are in ``directory``."""
    return all(find_idx_file(directory, stem) is not None for pair in IDX_SPLITS.values() for stem in pair)


def read_idx_split(directory: Path, split: str, num_classes: int) -> tuple[ArrayData, dict[str, str]]:
    """Read the ``"train"`` or ``"test"`` images and labels of an IDX dataset; check counts and label range."""
    paths = []
    for stem in IDX_SPLITS[split]:
        path = find_idx_file(directory, stem)
        if path is None:
            raise MixlabValueError(f"{directory}: missing {stem} (or {stem}.gz)")
        paths.append(path)
    images = read_idx(paths[0], ndim=3, type_code=0x08)
    labels = read_idx(paths[1], ndim=1, type_code=0x08)
    if len(images) != len(labels):
        raise MixlabValueError(
            f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels; they must match"
        )
    check_label_range(labels, num_classes, paths[1])
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return ArrayData(x, y), {"images": str(paths[0]), "labels": str(paths[1])}


def check_label_range(labels: np.ndarray, num_classes: int, path: str | os.PathLike) -> None:
    """Raise naming ``path`` and the first bad value when a label is outside ``[0, num_classes)``.

    Example:
        >>> check_label_range(np.array([0, 9]), 10, "labels")
    """
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise MixlabValueError(
            f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside the expected range "
            f"[0, {num_classes}) ({len(bad)} bad labels in all)"
        )


def load_idx_dataset(directory: Path, spec, options: dict) -> DataSplits:
    """Build the :class:`DataSplits` of an MNIST-style IDX dataset found in ``directory``."""
    train, train_files = read_idx_split(directory, "train", spec.num_classes)
    test, test_files = read_idx_split(directory, "test", spec.num_classes)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise MixlabValueError(
            f"{directory}: train images are {tuple(train.x.shape[2:])} but test images are {tuple(test.x.shape[2:])}"
        )
    info = {"source": str(directory), "files": {"train": train_files, "test": test_files}}
    return DataSplits(
        spec.name,
        "classification",
        train,
        None,
        test,
        spec.num_classes,
        tuple(train.x.shape[1:]),
        list(spec.class_names),
        info,
    )
