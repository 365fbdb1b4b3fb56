"""Tables: scikit-learn's bundled ``digits`` and ``diabetes`` sets, and CSV files.

The test split of a table without one is a seeded hold-out (stratified for classification) under
``split_seed`` (default 0), so it stays the same when the training seed changes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from mixlab.data.base import ArrayData, DataSplits
from mixlab.data.splits import random_split, rng_for, stratified_split
from mixlab.errors import MixlabValueError

# "auto" calls an integer target with at most this many distinct values a class label.
AUTO_MAX_CLASSES = 50
DEFAULT_TEST_FRACTION = 0.2


def _split(x: np.ndarray, y: np.ndarray, classification: bool, fraction: float, seed: int):
    rng = rng_for(seed, "test")
    kept, held = stratified_split(y, fraction, rng) if classification else random_split(len(y), fraction, rng)
    if len(kept) == 0 or len(held) == 0:
        raise MixlabValueError(
            f"test_fraction={fraction} of {len(y)} rows leaves {len(kept)} for train and {len(held)} for test; "
            "both need at least one"
        )
    return _arrays(x[kept], y[kept]), _arrays(x[held], y[held])


def _arrays(x: np.ndarray, y: np.ndarray) -> ArrayData:
    y_t = (
        torch.from_numpy(y.astype(np.int64))
        if np.issubdtype(y.dtype, np.integer)
        else torch.from_numpy(y.astype(np.float32))
    )
    return ArrayData(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), y_t)


def load_digits_dataset(root: Path | None, spec, options: dict) -> DataSplits:
    """scikit-learn's 8x8 digits as 64 float32 features (values 0..16), 10 classes."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    train, test = _split(x, y.astype(np.int64), True, options["test_fraction"], options["split_seed"])
    info = {
        "source": "sklearn.datasets.load_digits",
        "test_fraction": options["test_fraction"],
        "split_seed": options["split_seed"],
    }
    return DataSplits(spec.name, "classification", train, None, test, 10, (64,), [str(i) for i in range(10)], info)


def load_diabetes_dataset(root: Path | None, spec, options: dict) -> DataSplits:
    """scikit-learn's diabetes regression set: 10 float32 features, a float32 target."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    train, test = _split(x, y.astype(np.float32), False, options["test_fraction"], options["split_seed"])
    info = {
        "source": "sklearn.datasets.load_diabetes",
        "test_fraction": options["test_fraction"],
        "split_seed": options["split_seed"],
    }
    return DataSplits(spec.name, "regression", train, None, test, None, (10,), None, info)


def read_csv_columns(path: Path, delimiter: str = ",") -> dict[str, list[str]]:
    """Read a CSV file with a header row into ``{column: [cell, ...]}`` (cells as stripped strings).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Path(d, "t.csv").write_text("a,b\\n1,x\\n2,y\\n")
        ...     read_csv_columns(Path(d, "t.csv"))
        {'a': ['1', '2'], 'b': ['x', 'y']}
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MixlabValueError(f"{path}: cannot read CSV ({type(err).__name__}: {err})") from err
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise MixlabValueError(f"{path}: expected a header row and at least one data row; found {len(rows)} rows")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise MixlabValueError(f"{path}: duplicate column names in the header {header}")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise MixlabValueError(f"{path}: row {line} has {len(row)} cells; the header has {len(header)}")
    return {name: [row[i].strip() for row in rows[1:]] for i, name in enumerate(header)}


def _numeric(path: Path, column: str, cells: list[str]) -> np.ndarray:
    values = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        try:
            values[i] = float(cell)
        except ValueError:
            raise MixlabValueError(f"{path}: column {column!r} must be numeric; row {i + 2} holds {cell!r}") from None
        if math.isnan(values[i]):
            raise MixlabValueError(f"{path}: column {column!r} holds a missing value (NaN) at row {i + 2}")
    return values


def _is_integer_column(cells: list[str]) -> bool:
    try:
        values = [float(c) for c in cells]
    except ValueError:
        return False
    return all(math.isfinite(v) and v == int(v) for v in values)


def infer_task(cells: list[str]) -> str:
    """``"classification"`` for text or integer targets with at most 50 distinct values, else ``"regression"``.

    Example:
        >>> infer_task(["cat", "dog"]), infer_task(["1", "2", "1"]), infer_task(["0.5", "1.5"])
        ('classification', 'classification', 'regression')
    """
    try:
        [float(c) for c in cells]
    except ValueError:
        return "classification"
    if _is_integer_column(cells) and len(set(float(c) for c in cells)) <= AUTO_MAX_CLASSES:
        return "classification"
    return "regression"


def class_order(cells: list[str]) -> list[str]:
    """The sorted class names of a label column: numerically when every label is a number, else as text.

    Example:
        >>> class_order(["10", "2", "2"]), class_order(["b", "a"])
        (['2', '10'], ['a', 'b'])
    """
    unique = set(cells)
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


def _canonical(cells: list[str]) -> list[str]:
    # "1" and "1.0" are the same class when every label is a number.
    if _is_integer_column(cells):
        return [str(int(float(c))) for c in cells]
    return cells


def _check_columns(path: Path, columns: dict[str, list[str]], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise MixlabValueError(f"{path}: no column {missing[0]!r}; the columns are: {', '.join(columns)}")


def _table(path: Path, options: dict, features: list[str] | None, targets: list[str]):
    columns = read_csv_columns(path, options["delimiter"])
    _check_columns(path, columns, targets + (features or []))
    features = features if features is not None else [c for c in columns if c not in targets]
    if not features:
        raise MixlabValueError(f"{path}: no feature columns left besides the target {targets}")
    x = np.stack([_numeric(path, c, columns[c]) for c in features], axis=1)
    return x, [columns[t] for t in targets], features


def load_csv_dataset(root: Path | None, spec, options: dict) -> DataSplits:
    """A CSV table with a header row: numeric feature columns and a ``target`` column (or list, for regression)."""
    path = Path(options["path"]).expanduser()
    fraction, test_path = options["test_fraction"], options["test_path"]
    if test_path is not None and fraction is not None:
        raise MixlabValueError(f"give either test_path ({test_path!r}) or test_fraction ({fraction!r}), not both")
    fraction = DEFAULT_TEST_FRACTION if fraction is None else fraction
    targets = [options["target"]] if isinstance(options["target"], str) else list(options["target"])
    x, target_cells, features = _table(path, options, options["features"], targets)
    task = options["task"]
    if task == "auto":
        task = (
            "classification" if len(targets) == 1 and infer_task(target_cells[0]) == "classification" else "regression"
        )
    if task == "classification" and len(targets) != 1:
        raise MixlabValueError(f"classification takes one target column; got {targets}")
    if test_path is not None:
        test_path = Path(test_path).expanduser()
        x_test, test_cells, _ = _table(test_path, options, features, targets)
    info = {"source": str(path), "target": options["target"], "features": features}
    if task == "classification":
        y, classes = _encode_classes(path, target_cells[0])
        num_classes, class_names = len(classes), classes
        if test_path is not None:
            y_test = _encode_known(test_path, test_cells[0], classes, targets[0])
    else:
        y = _regression_target(path, targets, target_cells)
        num_classes, class_names = None, None
        if test_path is not None:
            y_test = _regression_target(test_path, targets, test_cells)
    if test_path is None:
        train, test = _split(x, y, task == "classification", fraction, options["split_seed"])
        info.update(test_fraction=fraction, split_seed=options["split_seed"])
    else:
        train, test = _arrays(x, y), _arrays(x_test, y_test)
        info["test_source"] = str(test_path)
    return DataSplits(spec.name, task, train, None, test, num_classes, (x.shape[1],), class_names, info)


def _encode_classes(path: Path, cells: list[str]) -> tuple[np.ndarray, list[str]]:
    if any(c == "" for c in cells):
        raise MixlabValueError(f"{path}: the target column has an empty cell at row {cells.index('') + 2}")
    cells = _canonical(cells)
    classes = class_order(cells)
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[c] for c in cells], dtype=np.int64), classes


def _encode_known(path: Path, cells: list[str], classes: list[str], target: str) -> np.ndarray:
    cells = _canonical(cells)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(cells) - set(index))
    if unknown:
        raise MixlabValueError(
            f"{path}: column {target!r} holds labels {unknown[:5]} not seen in the training file; known: {classes}"
        )
    return np.array([index[c] for c in cells], dtype=np.int64)


def _regression_target(path: Path, targets: list[str], cells: list[list[str]]) -> np.ndarray:
    columns = [_numeric(path, name, c) for name, c in zip(targets, cells, strict=True)]
    y = np.stack(columns, axis=1) if len(columns) > 1 else columns[0]
    return y.astype(np.float32)
