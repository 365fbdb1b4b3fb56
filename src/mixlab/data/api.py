"""The entry points: :func:`load_dataset`, :func:`find_data`, :func:`dataset_info` and friends."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mixlab.data import mnist1d
from mixlab.data.base import DataSplits
from mixlab.data.fetch import fetch_destination
from mixlab.data.locate import DataNotFoundError, candidate_dirs
from mixlab.data.registry import DATASETS, REQUIRED, DatasetSpec, get_spec
from mixlab.data.splits import apply_train_options, check_classes, check_train_options, select_classes
from mixlab.errors import MixlabError, MixlabValueError


def list_datasets() -> list[str]:
    """The registered dataset names, sorted.

    Example:
        >>> "fashion_mnist" in list_datasets()
        True
    """
    return sorted(DATASETS)


def data_search_paths(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for dataset ``name``, in order (see :mod:`mixlab.data.locate`).

    Bundled and user-path datasets have none; MNIST-1D lists where its cache is looked for.

    Example:
        >>> [str(p) for p in data_search_paths("fashion_mnist", "/d")[:3]]
        ['/d/fashion_mnist', '/d/fashion-mnist', '/d/fashionmnist']
    """
    spec = get_spec(name)
    if spec.kind == "files":
        return candidate_dirs([spec.name, *spec.aliases], root)
    if spec.kind == "generated" and spec.cached:
        return mnist1d.cache_dirs(root)
    return []


def find_data(name: str, root: str | os.PathLike | None = None) -> Path:
    """The first folder of :func:`data_search_paths` that holds every file dataset ``name`` needs.

    Raises :class:`DataNotFoundError` listing every place looked and how to get the data, or a
    :class:`MixlabValueError` for datasets that have no files to find (bundled, generated, user path).

    Example:
        >>> try:
        ...     find_data("digits")
        ... except MixlabValueError as err:
        ...     print("scikit-learn" in str(err))
        True
    """
    spec = get_spec(name)
    if spec.kind != "files":
        raise MixlabValueError(f"dataset {name!r} has no files to find: {_no_files_reason(spec)}")
    searched = data_search_paths(name, root)
    for candidate in searched:
        if candidate.is_dir() and spec.has_files(candidate):
            return candidate
    raise DataNotFoundError(name, searched, how_to_get(name, root), spec.needs)


def _no_files_reason(spec: DatasetSpec) -> str:
    if spec.kind == "generated":
        return "it is generated locally on first load and cached" if spec.cached else "it is generated in memory"
    return {"bundled": "it is bundled with scikit-learn", "path": "give its location with option path=..."}[spec.kind]


def how_to_get(name: str, root: str | os.PathLike | None = None) -> list[str]:
    """Hints for getting dataset ``name``: its Debian package, ``mixlab data fetch``, or copying files.

    Example:
        >>> how_to_get("fashion_mnist")[0]
        'sudo apt-get install dataset-fashion-mnist  (installs /usr/share/datasets/fashion-mnist)'
    """
    spec = get_spec(name)
    hints = []
    if spec.apt_package:
        hints.append(f"sudo apt-get install {spec.apt_package}  (installs /usr/share/datasets/{spec.aliases[0]})")
    if spec.downloads:
        source = spec.downloads[0].urls[0].rsplit("/", 1)[0] + "/"
        hints.append(f"mixlab data fetch {name}  (downloads from {source} into {fetch_destination(name, root)})")
    if spec.kind == "files":
        hints.append("or copy the files into one of the folders above (or point --data-root / $MIXLAB_DATA at them)")
    return hints


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.0,
    subset_per_class: int | None = None,
    label_noise: float = 0.0,
    noise_kind: str = "symmetric",
    seed: int = 0,
    imbalance_ratio: float | None = None,
    classes: Sequence[int] | None = None,
    **options: Any,
) -> DataSplits:
    """Load dataset ``name`` into :class:`DataSplits`, then hold out val, subset, unbalance and add label noise to train.

    Args:
        name: a registry name (see :func:`list_datasets`).
        root: the data root searched first (``--data-root``); also where MNIST-1D caches.
        val_fraction: fraction of train held out as ``val``, in [0, 1) (stratified for classification).
        subset_per_class: keep at most this many train samples per class (classification only).
        label_noise: fraction in [0, 1] of train labels changed, exactly ``round(rate * N)`` of them.
        noise_kind: ``"symmetric"`` (a uniformly drawn different class) or ``"flip"`` (class c -> c + 1 mod K).
        seed: seeds the steps above and below (each its own NumPy generator; no global RNG is touched).
        imbalance_ratio: make train long-tailed (after the subset): class ``c`` keeps
            ``n_max * ratio ** (-c / (K - 1))`` samples, ``n_max`` the largest class count (Cao et al.,
            NeurIPS 2019, arXiv 1906.07413); a label shift against the untouched test split. ``None``: off.
        classes: keep only these classes in every split (train, val, test), relabelled ``0..k-1`` in this
            order, before the steps above (e.g. ``[0, 6]``: a binary task). ``None``: all classes.
        **options: the dataset's own options (e.g. ``path``, ``image_size``, ``test_fraction``).

    Every option is checked before any file is read. ``info`` records what each step did.

    Example:
        >>> s = load_dataset("digits", val_fraction=0.1, label_noise=0.2, noise_kind="flip", seed=1)
        >>> s.sizes(), s.input_shape, s.info["label_noise"]["num_flipped"]
        ({'train': 1294, 'val': 144, 'test': 359}, (64,), 259)
    """
    spec = get_spec(name)
    val_fraction, subset_per_class, label_noise, noise_kind, seed, imbalance_ratio = check_train_options(
        val_fraction, subset_per_class, label_noise, noise_kind, seed, imbalance_ratio=imbalance_ratio
    )
    resolved = spec.resolve_options(options)
    task = resolved.get("task", spec.task) if spec.task == "auto" else spec.task
    classes = check_classes(classes)
    class_options = {"classes": classes, "subset_per_class": subset_per_class, "imbalance_ratio": imbalance_ratio}
    class_options["label_noise"] = label_noise or None
    given = [option for option, value in class_options.items() if value is not None]
    if task == "regression" and given:
        raise MixlabValueError(f"{given[0]} needs classes; dataset {name!r} is a regression task")
    if root is not None:
        root = Path(os.fspath(root)).expanduser()
    location = find_data(name, root) if spec.kind == "files" else root
    splits = spec.loader(location, spec, resolved)
    splits.info.update(dataset=name, options=_jsonable(resolved), seed=seed)
    if classes is not None:
        select_classes(splits, classes)
    return apply_train_options(
        splits, val_fraction, subset_per_class, label_noise, noise_kind, seed, imbalance_ratio=imbalance_ratio
    )


def dataset_info(name: str, root: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """What ``mixlab data info NAME`` prints: where the data is (or every place looked), sizes, classes, shape, task.

    The result is JSON-serialisable. When the data is there it is loaded to count the splits (``options``
    are passed to :func:`load_dataset`); a load error is reported under ``"error"`` instead of raised.

    Example:
        >>> info = dataset_info("diabetes")
        >>> info["task"], info["found"], info["splits"]
        ('regression', True, {'train': 354, 'val': 0, 'test': 88})
    """
    spec = get_spec(name)
    info: dict[str, Any] = {
        "name": name,
        "description": spec.description,
        "kind": spec.kind,
        "task": spec.task,
        "num_classes": spec.num_classes,
        "input_shape": list(spec.input_shape) if spec.input_shape else None,
        "class_names": list(spec.class_names) if spec.class_names else None,
        "options": {o.name: ("(required)" if o.default is REQUIRED else o.default) for o in spec.options},
        "searched": [str(p) for p in data_search_paths(name, root)],
        "how_to_get": how_to_get(name, root),
        "homepage": spec.homepage,
        "citation": spec.citation,
    }
    if not _available(spec, root, options, info):
        return info
    try:
        splits = load_dataset(name, root=root, **options)
    except MixlabError as err:
        info["error"] = str(err)
        return info
    info.update(
        task=splits.task,
        num_classes=splits.num_classes,
        input_shape=list(splits.input_shape),
        class_names=splits.class_names,
        splits=splits.sizes(),
        details=_summary(splits.info),
    )
    return info


def _available(spec: DatasetSpec, root, options: dict, info: dict) -> bool:
    """Fill ``found``/``path`` in ``info``; say whether loading would find the data without generating it."""
    if spec.kind == "files":
        try:
            info["path"] = str(find_data(spec.name, root))
        except DataNotFoundError as err:
            info.update(found=False, path=None, message=str(err))
            return False
    elif spec.kind == "generated" and spec.cached:
        return _cached_mnist1d(spec, root, options, info)
    elif spec.kind == "generated":
        info["path"] = None  # generated in memory on every load
    elif spec.kind == "path":
        info["path"] = options.get("path")
        if options.get("path") is None:
            info.update(found=False, message=f"dataset {spec.name!r} reads your files: give option path=...")
            return False
    else:
        info["path"] = None  # bundled with scikit-learn
    info["found"] = True
    return True


def _cached_mnist1d(spec: DatasetSpec, root, options: dict, info: dict) -> bool:
    try:
        opts = spec.resolve_options({k: v for k, v in options.items() if k in ("num_samples", "generation_seed")})
    except MixlabError as err:
        info.update(found=False, error=str(err))
        return False
    file_name = mnist1d.cache_file_name(mnist1d.mnist1d_args(opts["num_samples"], opts["generation_seed"]))
    cached = [d / file_name for d in mnist1d.cache_dirs(root) if (d / file_name).is_file()]
    info.update(found=bool(cached), path=str(cached[0]) if cached else None)
    if not cached:
        info["message"] = (
            f"not generated yet: the first load generates it locally and caches {file_name} "
            f"in the first writable of {', '.join(info['searched'])}"
        )
    return bool(cached)


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` without the per-sample index list of the noise record (its count stays)."""
    out = dict(info)
    if "label_noise" in out:
        out["label_noise"] = {k: v for k, v in out["label_noise"].items() if k != "flipped"}
    return out


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in options.items()}
