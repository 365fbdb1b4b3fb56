"""Batches for dataset-level pair rules: each batch is its anchors followed by one drawn partner per anchor.

C-Mixup (Yao et al., NeurIPS 2022, arXiv 2210.05775) draws every anchor's
partner from the whole training set, so the partner is usually not in the
anchor's batch. These helpers load it there: a batch holds ``B`` anchors in the
epoch's order, then their ``B`` partners drawn by a fitted
:class:`~mixlab.sampling.CMixupPairing`, and a mixer built with that pairing
mixes row ``i`` with row ``i + B``. Partners are drawn from ``(seed, epoch,
rank)`` alone, so a resumed run sees the same pairs as an uninterrupted one.

Example:
    >>> import torch, mixlab
    >>> from mixlab.sampling import CMixupPairing
    >>> x, y = torch.randn(8, 3), torch.linspace(0, 1, 8)
    >>> pairing = CMixupPairing(sigma=0.2).fit(y)
    >>> loader = PartnerTensorLoader(x, y, pairing, batch_size=4, shuffle=True)
    >>> mixer = mixlab.Mixup(alpha=2.0, pairing=pairing)
    >>> xb, yb = next(iter(loader))
    >>> mb = mixer(xb, yb, generator=torch.Generator().manual_seed(0))
    >>> xb.shape[0], mb.perm.tolist()
    (8, [4, 5, 6, 7, 0, 1, 2, 3])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mixlab.batch import Forward, MixedBatch
from mixlab.data.loader import EpochBatches, TensorLoader
from mixlab.errors import MixlabTypeError, MixlabValueError, check_int
from mixlab.sampling import CMixupPairing, derive_seed


def _check_fitted(pairing: CMixupPairing, size: int | None = None) -> None:
    """Raise unless ``pairing`` is a dataset-scope C-Mixup pairing fitted (on ``size`` targets when given)."""
    if not isinstance(pairing, CMixupPairing):
        raise MixlabTypeError(f"pairing must be a CMixupPairing; got {type(pairing).__name__}")
    if pairing.scope != "dataset":
        raise MixlabValueError(f"partner batches need a pairing with scope='dataset'; got scope={pairing.scope!r}")
    if pairing.num_targets == 0 or (size is not None and pairing.num_targets != size):
        raise MixlabValueError(
            f"the pairing must be fitted on this dataset's {size} targets (pairing.fit(train_targets)); "
            f"it was fitted on {pairing.num_targets}"
        )


def epoch_partners(pairing: CMixupPairing, anchors: Tensor, *, seed: int, epoch: int, rank: int = 0) -> Tensor:
    """One partner per anchor for one epoch, drawn from ``(seed, epoch, rank)`` alone.

    Example:
        >>> pairing = CMixupPairing(sigma=0.1).fit(torch.tensor([0.0, 0.01, 9.0]))
        >>> epoch_partners(pairing, torch.tensor([2]), seed=0, epoch=0).tolist()
        [2]
    """
    rng = np.random.default_rng(derive_seed(seed, "c_mixup partners", epoch, rank))
    return pairing.draw_partners(anchors, rng)


class PartnerBatchSampler(EpochBatches, torch.utils.data.Sampler):
    """A ``DataLoader`` batch sampler: ``batch_size`` anchors, then one partner per anchor.

    Anchors follow :func:`~mixlab.data.loader.epoch_order` (shuffled from
    ``(seed, epoch)``, sharded over ranks); partners are drawn by the fitted
    ``pairing``. Pass it as ``DataLoader(dataset, batch_sampler=...)`` and call
    :meth:`set_epoch` before each epoch. Batches hold ``2 * batch_size`` rows
    (fewer for a last partial batch).

    Example:
        >>> pairing = CMixupPairing(sigma=0.1).fit(torch.tensor([0.0, 0.01, 9.0, 9.01]))
        >>> batches = list(PartnerBatchSampler(pairing, batch_size=2, shuffle=False))
        >>> [b[:2] for b in batches], all(abs(a - p) <= 1 for b in batches for a, p in zip(b[:2], b[2:]))
        ([[0, 1], [2, 3]], True)
    """

    def __init__(
        self,
        pairing: CMixupPairing,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        _check_fitted(pairing)
        self.pairing = pairing
        self._set_order(
            pairing.num_targets,
            batch_size,
            bool(shuffle),
            bool(drop_last),
            check_int("seed", seed),
            check_int("rank", rank),
            check_int("world_size", world_size, minimum=1),
        )

    def __iter__(self) -> Iterator[list[int]]:
        anchors = self._order()
        partners = epoch_partners(self.pairing, anchors, seed=self.seed, epoch=self.epoch, rank=self.rank)
        for step in range(len(self)):
            part = slice(step * self.batch_size, (step + 1) * self.batch_size)
            yield anchors[part].tolist() + partners[part].tolist()


class PartnerTensorLoader(TensorLoader):
    """:class:`~mixlab.data.loader.TensorLoader` whose batches are ``batch_size`` anchors, then their partners.

    Fits ``pairing`` on ``y`` when it is not fitted yet (the targets the mixer
    sees, so ``sigma`` is in their units), else checks it was fitted on as many
    targets. Each batch is one ``index_select`` of ``2 * batch_size`` rows.

    Example:
        >>> pairing = CMixupPairing(sigma=0.5)
        >>> loader = PartnerTensorLoader(torch.zeros(6, 2), torch.arange(6.0), pairing, batch_size=4, shuffle=False)
        >>> [len(y) for _, y in loader], pairing.num_targets
        ([8, 4], 6)
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        pairing: CMixupPairing,
        *,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if isinstance(pairing, CMixupPairing) and pairing.num_targets == 0:
            pairing.fit(y)
        _check_fitted(pairing, y.shape[0])
        super().__init__(
            x,
            y,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            device=device,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.pairing = pairing

    @property
    def num_samples(self) -> int:
        """Rows this rank loads per epoch: every anchor and its partner."""
        return 2 * super().num_samples

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        anchors = self._order()
        partners = epoch_partners(self.pairing, anchors, seed=self.seed, epoch=self.epoch, rank=self.rank)
        anchors, partners = anchors.to(self.x.device), partners.to(self.x.device)
        for step in range(len(self)):
            part = slice(step * self.batch_size, (step + 1) * self.batch_size)
            index = torch.cat([anchors[part], partners[part]])
            yield self.x.index_select(0, index), self.y.index_select(0, index)


def anchor_mixes(mb: MixedBatch) -> MixedBatch:
    """The mixes of a partner batch's anchors: its first half, the rows the authors' C-Mixup trains on.

    A mixer given a batch of ``B`` anchors then their ``B`` partners mixes
    every row (anchor ``i`` with partner ``i``, and each partner with its
    anchor); the authors' code (huaxiuyao/C-Mixup, ``src/algorithm.py``,
    ``train``) forms only the ``B`` anchor mixes and trains on them, which
    this keeps. Targets, ``lam``, a per-row ``mask`` and the sources'
    weights are cut to the first half; ``perm`` (and ``sources``) still
    index the loaded ``2B`` rows. When the mixing happens inside the model
    (``forward_fn``, e.g. Manifold Mixup), ``inputs`` stay the ``2B`` loaded
    rows, the hidden mix needs them all, and :meth:`MixedBatch.forward`
    returns the first ``B`` outputs.

    Example:
        >>> import mixlab
        >>> pairing = CMixupPairing(sigma=0.5).fit(torch.arange(6.0))
        >>> x, y = next(iter(PartnerTensorLoader(torch.randn(6, 2), torch.arange(6.0), pairing, batch_size=3, shuffle=False)))
        >>> mb = mixlab.Mixup(alpha=2.0, pairing=pairing)(x, y, generator=torch.Generator().manual_seed(0))
        >>> anchors = anchor_mixes(mb)
        >>> anchors.inputs.shape[0], anchors.perm.tolist()
        (3, [3, 4, 5])
    """
    rows = mb.lam.shape[0]
    if rows % 2:
        raise MixlabValueError(f"a partner batch holds its anchors then as many partners, so an even size; got {rows}")
    half = rows // 2

    def first(value: Any) -> Any:
        return value if value is None else value[:half]

    inside = mb.forward_fn is not None
    mask = mb.mask if mb.mask is None or mb.mask.shape[0] != rows else mb.mask[:half]
    return dataclasses.replace(
        mb,
        inputs=mb.inputs if inside else mb.inputs[:half],
        target_a=mb.target_a[:half],
        target_b=mb.target_b[:half],
        lam=mb.lam[:half],
        perm=mb.perm[:half],
        mask=mask,
        forward_fn=_FirstOutputs(mb.forward_fn, half) if inside else None,
        _sources=first(mb._sources),
        _weights=first(mb._weights),
        _source_targets=first(mb._source_targets),
    )


class _FirstOutputs:
    """A ``forward_fn`` that runs the whole loaded batch through the model and keeps the anchors' outputs."""

    def __init__(self, forward_fn: Forward, rows: int):
        self.forward_fn, self.rows = forward_fn, rows

    def __call__(self, model: nn.Module, inputs: Tensor) -> Any:
        return self.forward_fn(model, inputs)[: self.rows]
