"""The containers every dataset reader returns: :class:`ArrayData` and :class:`DataSplits`.

A split is either an :class:`ArrayData` (everything decoded into two tensors) or an
:class:`~mixlab.data.imagefolder.ImageFolderData` (image files read lazily). Both expose
``labels`` (an int64 or float32 tensor) and ``subset(indices)`` / ``with_labels(labels)``, which
is all the split, subset and noise code needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mixlab.errors import MixlabTypeError, MixlabValueError

if TYPE_CHECKING:
    from mixlab.data.imagefolder import ImageFolderData

TASKS = ("classification", "regression")


@dataclass
class ArrayData:
    """One split held as two tensors.

    Args:
        x: images uint8 ``(N, C, H, W)`` (the engine scales them by 1/255), signals float32
            ``(N, C, L)`` or tables float32 ``(N, F)``.
        y: class indices int64 ``(N,)``, or regression targets float32 ``(N,)`` / ``(N, T)``.

    Example:
        >>> d = ArrayData(torch.zeros(3, 2), torch.tensor([0, 1, 1]))
        >>> len(d), d.subset([2]).y.tolist()
        (3, [1])
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("x", "y"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise MixlabTypeError(f"ArrayData.{name} must be a torch.Tensor; got {type(value).__name__}")
        if self.x.ndim == 0 or self.y.ndim == 0 or self.x.shape[0] != self.y.shape[0]:
            raise MixlabValueError(
                f"ArrayData needs x and y with the same first dimension; got x {tuple(self.x.shape)}, "
                f"y {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        """The targets ``y`` (the name :class:`ImageFolderData` also answers to)."""
        return self.y

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ArrayData:
        """A new ArrayData with the samples at ``indices``, in that order."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ArrayData(self.x[index], self.y[index])

    def with_labels(self, labels: torch.Tensor) -> ArrayData:
        """A new ArrayData sharing ``x`` with targets replaced by ``labels``."""
        return ArrayData(self.x, labels)


@dataclass
class DataSplits:
    """A dataset ready for training: train, optional validation and test splits plus what describes them.

    Args:
        name: the registry name, e.g. ``"fashion_mnist"``.
        task: ``"classification"`` or ``"regression"``.
        train, val, test: the splits (``val`` is None unless held out or given by the files).
        num_classes: the number of classes (None for regression).
        input_shape: the shape of one sample, e.g. ``(1, 28, 28)``, ``(1, 40)`` or ``(10,)``.
        class_names: the name of each class index, or None.
        info: JSON-serialisable facts: source paths, sizes and the val/subset/noise records.
        clean_train_y: the train labels before label noise was added (None when no noise).

    Example:
        >>> tr = ArrayData(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
        >>> s = DataSplits("toy", "classification", tr, None, tr, 2, (2,), ["a", "b"], {})
        >>> s.sizes()
        {'train': 4, 'val': 0, 'test': 4}
    """

    name: str
    task: str
    train: ArrayData | ImageFolderData
    val: ArrayData | ImageFolderData | None
    test: ArrayData | ImageFolderData
    num_classes: int | None
    input_shape: tuple[int, ...]
    class_names: list[str] | None
    info: dict[str, Any] = field(default_factory=dict)
    clean_train_y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise MixlabValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")

    @property
    def train_clean_y(self) -> torch.Tensor | None:
        """Alias of :attr:`clean_train_y`."""
        return self.clean_train_y

    def sizes(self) -> dict[str, int]:
        """The number of samples in each split (0 for a missing val split)."""
        return {
            "train": len(self.train),
            "val": 0 if self.val is None else len(self.val),
            "test": len(self.test),
        }
