"""Batches for the training loop: tensors held on the device, or a ``DataLoader`` for large image folders.

Both kinds draw the epoch's order from ``(seed, epoch)`` alone, so a resumed
run sees exactly the batches an uninterrupted one would, and both shard the
order over distributed ranks the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int
from mixlab.sampling import derive_seed


def epoch_order(
    n: int, *, epoch: int, seed: int, shuffle: bool, drop_last: bool, rank: int = 0, world_size: int = 1
) -> Tensor:
    """The sample indices one rank visits in one epoch.

    Shuffled orders come from ``(seed, epoch)`` and are the same on every rank,
    which then takes every ``world_size``-th index from ``rank`` on. With
    ``drop_last`` every rank gets the same count, so DDP ranks step together.

    Example:
        >>> epoch_order(5, epoch=0, seed=0, shuffle=False, drop_last=False, rank=1, world_size=2).tolist()
        [1, 3]
    """
    if shuffle:
        gen = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.arange(n)
    if drop_last:
        order = order[: n // world_size * world_size]
    return order[rank::world_size]


class EpochBatches:
    """The epoch order and batch count that loaders and batch samplers share (see :func:`epoch_order`).

    Example:
        >>> batches = EpochBatches()
        >>> batches._set_order(10, 4, shuffle=False, drop_last=False, seed=0, rank=0, world_size=1)
        >>> len(batches), batches._order().tolist()[:3]
        (3, [0, 1, 2])
    """

    def _set_order(
        self, size: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int, rank: int, world_size: int
    ) -> None:
        self.size = size
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration follows."""
        self.epoch = check_int("epoch", epoch)

    def _order(self) -> Tensor:
        return epoch_order(
            self.size,
            epoch=self.epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            rank=self.rank,
            world_size=self.world_size,
        )

    def __len__(self) -> int:
        count = len(self._order())
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)


class TensorLoader(EpochBatches):
    """Batches ``(x, y)`` of tensors held on ``device``, in the order of :func:`epoch_order`.

    Call :meth:`set_epoch` before each epoch. Unshuffled batches are views
    (no copy); shuffled ones are one ``index_select`` each.

    Example:
        >>> loader = TensorLoader(torch.arange(10.0)[:, None], torch.arange(10), batch_size=4, shuffle=False)
        >>> [len(y) for _, y in loader]
        [4, 4, 2]
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if x.shape[0] != y.shape[0]:
            raise MixlabTypeError(f"x and y must have the same length; got {x.shape[0]} and {y.shape[0]}")
        self.x, self.y = x.to(device), y.to(device)
        self._set_order(x.shape[0], batch_size, shuffle, drop_last, seed, rank, world_size)

    @property
    def num_samples(self) -> int:
        """Samples this rank visits per epoch."""
        return len(self) * self.batch_size if self.drop_last else len(self._order())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        contiguous = not self.shuffle and self.world_size == 1
        order = order.to(self.x.device)
        for step in range(len(self)):
            start = step * self.batch_size
            if contiguous:
                yield self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
            else:
                index = order[start : start + self.batch_size]
                yield self.x.index_select(0, index), self.y.index_select(0, index)


class _OrderSampler(torch.utils.data.Sampler):
    def __init__(self, loader: FolderLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[int]:
        return iter(self.loader._order().tolist())

    def __len__(self) -> int:
        return len(self.loader._order())


class FolderLoader(TensorLoader):
    """Batches from a map-style dataset (e.g. a large image folder) read by ``DataLoader`` workers.

    Samples are decoded in ``workers`` processes and moved to ``device`` in
    batches; the order is that of :func:`epoch_order`, as for tensors.

    ``batch_sampler`` replaces that order by a sampler yielding whole batches
    of indices, e.g. :class:`mixlab.data.pairs.PartnerBatchSampler` (each batch
    its anchors, then one drawn partner per anchor). It must follow the
    loader's own order settings (batch size, shuffle, drop_last, seed, rank,
    world size), so that the loader's length counts its batches;
    :meth:`set_epoch` is passed on to it.

    Example:
        >>> ds = torch.utils.data.TensorDataset(torch.zeros(6, 1, 2, 2), torch.arange(6))
        >>> loader = FolderLoader(ds, batch_size=4, shuffle=True, workers=0)
        >>> [len(y) for _, y in loader]
        [4, 2]
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        *,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 2,
        batch_sampler: torch.utils.data.Sampler | None = None,
    ):
        self.dataset = dataset
        self._set_order(len(dataset), batch_size, shuffle, drop_last, seed, rank, world_size)
        self.device = torch.device(device)
        workers = check_int("workers", workers)
        self.batch_sampler = batch_sampler
        if batch_sampler is None:
            order = {"batch_size": self.batch_size, "sampler": _OrderSampler(self), "drop_last": drop_last}
        else:
            self._check_batch_sampler(batch_sampler)
            order = {"batch_sampler": batch_sampler}
        self._loader = torch.utils.data.DataLoader(
            dataset,
            **order,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def _check_batch_sampler(self, sampler: torch.utils.data.Sampler) -> None:
        """Refuse a batch sampler whose order settings differ from the loader's (its length would not be ours)."""
        if not callable(getattr(sampler, "set_epoch", None)):
            raise MixlabTypeError(f"batch_sampler needs a set_epoch(epoch) method; got {type(sampler).__name__}")
        ours = {
            "size": self.size,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }
        theirs = {k: getattr(sampler, k, None) for k in ours}
        differ = [f"{k} {theirs[k]!r} (loader: {v!r})" for k, v in ours.items() if theirs[k] != v]
        if differ:
            raise MixlabValueError(f"batch_sampler must follow the loader's order settings; it has {', '.join(differ)}")

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order (and the batch sampler's draws) the next iteration follows."""
        super().set_epoch(epoch)
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self._loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
