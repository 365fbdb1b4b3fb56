"""Class-balanced resampling of the training split: each epoch draws its samples with probability inverse to class frequency.

This is the classical answer to label shift (train classes imbalanced, test
classes balanced) that Teney, Wang & Abbasnejad ("Selective Mixup Helps with
Distribution Shifts, But Not (Only) because of Mixup", ICML 2024, arXiv
2305.16817) find selective mixup performs implicitly. An epoch draws as many
indices as the split has samples, with replacement, so every class is drawn
equally often in expectation. The draw comes from ``(seed, epoch)`` alone, as
:func:`mixlab.data.loader.epoch_order` does: a resumed run sees the same
batches, and every distributed rank draws the same indices and takes its own
shard of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.data.loader import FolderLoader, TensorLoader, epoch_order
from mixlab.errors import MixlabTypeError, MixlabValueError, check_int
from mixlab.sampling import derive_seed

SAMPLINGS = ("uniform", "class_balanced")


def class_balanced_weights(labels: Tensor) -> Tensor:
    """Per-sample draw probabilities (float64, summing to one) that give every present class the same total.

    Args:
        labels: integer class indices ``(N,)``, each >= 0.

    Example:
        >>> class_balanced_weights(torch.tensor([0, 0, 0, 1])).tolist()
        [0.16666666666666666, 0.16666666666666666, 0.16666666666666666, 0.5]
    """
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        described = f"a {labels.dtype} tensor of shape {tuple(labels.shape)}" if isinstance(labels, Tensor) else labels
        raise MixlabTypeError(
            f"class-balanced sampling needs integer class labels of shape (N,); got {described} "
            "(float targets are a regression task, which has no classes to balance)"
        )
    if labels.numel() == 0:
        raise MixlabValueError("class-balanced sampling needs at least one sample; got an empty split")
    labels = labels.detach().to("cpu", torch.int64)
    if int(labels.min()) < 0:
        raise MixlabValueError(f"class labels must be >= 0; got {int(labels.min())}")
    counts = torch.bincount(labels).to(torch.float64)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[labels])


def class_balanced_order(
    weights: Tensor, *, epoch: int, seed: int, drop_last: bool, rank: int = 0, world_size: int = 1
) -> Tensor:
    """The sample indices one rank visits in one class-balanced epoch.

    ``len(weights)`` indices are drawn with replacement with probabilities
    ``weights`` (see :func:`class_balanced_weights`) from ``(seed, epoch)``;
    every rank draws the same ones and takes every ``world_size``-th from
    ``rank`` on, dropping the tail as :func:`mixlab.data.loader.epoch_order`
    does so that ranks step together.

    Example:
        >>> w = class_balanced_weights(torch.tensor([0] * 9 + [1]))
        >>> order = class_balanced_order(w, epoch=0, seed=0, drop_last=False)
        >>> len(order), torch.equal(order, class_balanced_order(w, epoch=0, seed=0, drop_last=False))
        (10, True)
    """
    epoch = check_int("epoch", epoch)
    generator = torch.Generator().manual_seed(derive_seed(check_int("seed", seed), "balanced_order", epoch))
    drawn = torch.multinomial(weights, len(weights), replacement=True, generator=generator)
    # epoch_order unshuffled gives exactly the positions this rank keeps (drop_last tail, rank shard)
    positions = epoch_order(
        len(weights), epoch=epoch, seed=seed, shuffle=False, drop_last=drop_last, rank=rank, world_size=world_size
    )
    return drawn[positions]


class _ClassBalancedOrder:
    """Replaces a loader's epoch order by a class-balanced draw (the loader keeps its batching and sharding)."""

    weights: Tensor
    epoch: int
    seed: int
    drop_last: bool
    rank: int
    world_size: int

    def _order(self) -> Tensor:
        return class_balanced_order(
            self.weights,
            epoch=self.epoch,
            seed=self.seed,
            drop_last=self.drop_last,
            rank=self.rank,
            world_size=self.world_size,
        )


class ClassBalancedTensorLoader(_ClassBalancedOrder, TensorLoader):
    """A :class:`~mixlab.data.loader.TensorLoader` whose epochs are class-balanced draws with replacement.

    ``y`` must be integer class indices. Call :meth:`set_epoch` before each
    epoch; the same ``(seed, epoch)`` gives the same batches.
    Teney, Wang & Abbasnejad, ICML 2024, arXiv 2305.16817 (resampling as the
    baseline that explains selective mixup).

    Example:
        >>> y = torch.tensor([0] * 90 + [1] * 10)
        >>> loader = ClassBalancedTensorLoader(torch.zeros(100, 1), y, batch_size=100, seed=0)
        >>> _, batch_y = next(iter(loader))
        >>> 30 < int((batch_y == 1).sum()) < 70  # about half the draws come from the 10 % class
        True
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        weights = class_balanced_weights(y)
        super().__init__(
            x,
            y,
            batch_size=batch_size,
            shuffle=True,
            drop_last=drop_last,
            device=device,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.weights = weights


class ClassBalancedFolderLoader(_ClassBalancedOrder, FolderLoader):
    """A :class:`~mixlab.data.loader.FolderLoader` whose epochs are class-balanced draws with replacement.

    ``labels`` are the dataset's class indices, in its order (e.g. ``part.labels``).

    Example:
        >>> ds = torch.utils.data.TensorDataset(torch.zeros(6, 1, 2, 2), torch.tensor([0, 0, 0, 0, 0, 1]))
        >>> loader = ClassBalancedFolderLoader(ds, torch.tensor([0, 0, 0, 0, 0, 1]), batch_size=3, workers=0)
        >>> [len(y) for _, y in loader]
        [3, 3]
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        labels: Tensor,
        *,
        batch_size: int,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 2,
    ):
        if len(labels) != len(dataset):
            raise MixlabValueError(f"labels must give one class per sample: {len(labels)} for {len(dataset)} samples")
        self.weights = class_balanced_weights(labels)
        super().__init__(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=drop_last,
            device=device,
            seed=seed,
            rank=rank,
            world_size=world_size,
            workers=workers,
        )
