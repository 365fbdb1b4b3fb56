"""Datasets for mixlab: readers, where data is found, fetching, and seeded splits and label noise.

``load_dataset(name, ...)`` returns :class:`DataSplits` whose splits are :class:`ArrayData` (tensors)
or :class:`ImageFolderData` (image files read lazily). Nothing is downloaded unless
:func:`fetch_dataset` is called; missing data raises :class:`DataNotFoundError` listing every place
looked and how to get it.

Example:
    >>> from mixlab.data import load_dataset
    >>> splits = load_dataset("digits", subset_per_class=20, seed=0)
    >>> splits.sizes()["train"], splits.num_classes, splits.input_shape
    (200, 10, (64,))
"""

from __future__ import annotations

from mixlab.data.api import data_search_paths, dataset_info, find_data, how_to_get, list_datasets, load_dataset
from mixlab.data.base import ArrayData, DataSplits
from mixlab.data.fetch import fetch_dataset, fetch_destination
from mixlab.data.imagefolder import ImageFolderData
from mixlab.data.locate import SYSTEM_DATA_DIRS, DataNotFoundError
from mixlab.data.registry import DATASETS, DatasetSpec, Download, Option, get_spec

__all__ = [
    "DATASETS",
    "SYSTEM_DATA_DIRS",
    "ArrayData",
    "DataNotFoundError",
    "DataSplits",
    "DatasetSpec",
    "Download",
    "ImageFolderData",
    "Option",
    "data_search_paths",
    "dataset_info",
    "fetch_dataset",
    "fetch_destination",
    "find_data",
    "get_spec",
    "how_to_get",
    "list_datasets",
    "load_dataset",
]
