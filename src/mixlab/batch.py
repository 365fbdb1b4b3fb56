"""The mixing contract: ``MixedBatch`` and the checks every mixer runs on its input.

A mixer turns a batch ``(x, y)`` into a :class:`MixedBatch`. The batch keeps
both targets and the per-sample weight ``lam`` of ``target_a`` so that any loss
can be computed from it without knowing which method produced it.

Example:
    >>> import torch, mixlab
    >>> x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    >>> mb = mixlab.create_mixer("mixup", alpha=1.0)(x, y, generator=torch.Generator().manual_seed(0))
    >>> mb.soft_targets(3).sum(dim=1)
    tensor([1., 1., 1., 1.])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int, check_probability

#: A function that runs ``model`` on ``inputs`` and returns its output; set by
#: mixers that mix inside the model (Manifold Mixup) rather than at the input.
Forward = Callable[[torch.nn.Module, torch.Tensor], Any]


@dataclass
class MixedBatch:
    """A mixed batch and everything a loss needs to score it.

    Most methods mix two sources: output ``i`` is made of ``x_i`` and its partner
    ``x_perm[i]``, labelled ``lam_i`` and ``1 - lam_i``. Some (Co-Mixup, AdAutoMix)
    mix ``K > 2``: :attr:`sources` ``(N, K)`` says which inputs each output is drawn
    from and :attr:`weights` ``(N, K)`` their label weights (rows sum to 1). For two
    sources both are derived from ``perm`` and ``lam`` (``sources[:, 0]`` is
    ``arange(N)``, ``weights[:, 0]`` is ``lam``); build a ``K``-source batch with
    :meth:`from_sources`. :meth:`soft_targets`, :meth:`mixed_target` and the mixed
    losses use every source; losses defined for two sources only call
    :meth:`require_two_sources`.

    Attributes:
        inputs: the mixed inputs, same shape, dtype and device as ``x``.
        target_a: the original targets ``y`` (with ``K > 2``: those of the first source).
        target_b: the partners' targets ``y[perm]`` (with ``K > 2``: those of the second source).
        lam: ``(N,)`` float32, the weight of ``target_a`` in the label of each
            sample (after any area correction).
        perm: ``(N,)`` long, the index of each sample's partner (with ``K > 2``: the second source).
        mask: optional per-element weight of ``x`` in ``inputs``, broadcastable
            to ``x`` (for mixup a ``(N or 1, 1, ..., 1)`` weight; ``None`` when the
            mixing happens inside the model or per-sample methods are combined).
        forward_fn: how to run a model on this batch; ``None`` means
            ``model(inputs)``. Use :meth:`forward` rather than reading it.
        aux: what a mixer keeps for its own :meth:`~mixlab.methods.base.Mixer.loss_terms`
            (a learned mask generator's output, features); empty for most methods.

    Example:
        >>> import torch
        >>> y = torch.tensor([0, 2])
        >>> mb = MixedBatch(torch.zeros(2, 1), y, y.flip(0), torch.tensor([0.75, 0.75]), torch.tensor([1, 0]))
        >>> mb.soft_targets(3)
        tensor([[0.7500, 0.0000, 0.2500],
                [0.2500, 0.0000, 0.7500]])
    """

    inputs: torch.Tensor
    target_a: torch.Tensor
    target_b: torch.Tensor
    lam: torch.Tensor
    perm: torch.Tensor
    mask: torch.Tensor | None = None
    forward_fn: Forward | None = field(default=None, repr=False)
    aux: dict[str, Any] = field(default_factory=dict, repr=False)
    # K > 2 sources only; two-source batches derive them from perm and lam when read (see the properties).
    _sources: torch.Tensor | None = field(default=None, repr=False)
    _weights: torch.Tensor | None = field(default=None, repr=False)
    _source_targets: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_sources(
        cls,
        inputs: torch.Tensor,
        y: torch.Tensor,
        sources: torch.Tensor,
        weights: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        check_weights: bool = True,
        **extra: Any,
    ) -> MixedBatch:
        """A batch whose output ``i`` is drawn from inputs ``sources[i]`` with label weights ``weights[i]``.

        Args:
            inputs: the mixed inputs ``(N, ...)``.
            y: the targets of the un-mixed batch (indexed by ``sources``).
            sources: ``(N, K)`` long, ``K >= 2``, indices into the batch.
            weights: ``(N, K)`` non-negative label weights, each row summing to 1.
            mask: optional per-element weights (method-specific for ``K > 2``).
            check_weights: check that the sources index the batch and the weights are non-negative rows
                summing to 1 (reads them: a device sync on CUDA); a mixer whose sources and weights are so
                by construction passes ``False``.
            extra: ``forward_fn`` or ``aux``.

        Example:
            >>> y = torch.tensor([0, 1, 2])
            >>> src = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
            >>> w = torch.tensor([[0.5, 0.25, 0.25]]).expand(3, 3)
            >>> mb = MixedBatch.from_sources(torch.zeros(3, 1), y, src, w)
            >>> mb.num_sources, mb.soft_targets(3)[0].tolist()
            (3, [0.5, 0.25, 0.25])
        """
        n = inputs.shape[0]
        if sources.ndim != 2 or sources.shape[0] != n or sources.shape[1] < 2 or sources.dtype != torch.long:
            raise MixlabValueError(
                f"sources must be a long tensor of shape (N={n}, K>=2); got {sources.dtype} {tuple(sources.shape)}"
            )
        if weights.shape != sources.shape or not weights.is_floating_point():
            raise MixlabValueError(
                f"weights must be floating with the shape of sources {tuple(sources.shape)}; got "
                f"{weights.dtype} {tuple(weights.shape)}"
            )
        weights = weights.to(torch.float32)
        if check_weights and bool(((sources < 0) | (sources >= n)).any()):
            raise MixlabValueError(f"sources must index the batch, in [0, {n}); got values outside it")
        if check_weights:
            check_soft_labels(weights, what="weights")
        source_targets = y.index_select(0, sources.flatten()).view(n, sources.shape[1], *y.shape[1:])
        # Two sources keep the ordinary form: the weights are read from lam, so relabelling methods stay consistent.
        return cls(
            inputs,
            source_targets[:, 0],
            source_targets[:, 1],
            weights[:, 0].contiguous(),
            sources[:, 1].contiguous(),
            mask,
            _sources=sources,
            _weights=weights if sources.shape[1] > 2 else None,
            _source_targets=source_targets,
            **extra,
        )

    @property
    def num_sources(self) -> int:
        """``K``, the number of inputs each output is drawn from (2 for most methods).

        Example:
            >>> MixedBatch.unmixed(torch.zeros(2, 1), torch.tensor([0, 1])).num_sources
            2
        """
        return 2 if self._sources is None else int(self._sources.shape[1])

    @property
    def sources(self) -> torch.Tensor:
        """``(N, K)`` long: the inputs each output is drawn from; for two sources ``[arange(N), perm]``.

        Example:
            >>> y = torch.tensor([0, 1])
            >>> MixedBatch(torch.zeros(2, 1), y, y.flip(0), torch.tensor([0.75, 0.75]), torch.tensor([1, 0])).sources
            tensor([[0, 1],
                    [1, 0]])
        """
        if self._sources is not None:
            return self._sources
        own = torch.arange(self.perm.shape[0], device=self.perm.device)
        return torch.stack((own, self.perm.long()), dim=1)

    @property
    def weights(self) -> torch.Tensor:
        """``(N, K)`` float32 label weights of :attr:`sources` (rows sum to 1); for two sources ``[lam, 1 - lam]``.

        Always read from ``lam`` for two sources, so a method that relabels the
        batch after mixing (TransMix, SUMix) is seen here too.

        Example:
            >>> y = torch.tensor([0, 1])
            >>> MixedBatch(torch.zeros(2, 1), y, y.flip(0), torch.tensor([0.75, 0.75]), torch.tensor([1, 0])).weights
            tensor([[0.7500, 0.2500],
                    [0.7500, 0.2500]])
        """
        if self._weights is not None:
            return self._weights
        lam = self.lam.to(torch.float32)
        return torch.stack((lam, 1.0 - lam), dim=1)

    @property
    def source_targets(self) -> torch.Tensor:
        """``(N, K, ...)``: the targets of each source (``target_a`` and ``target_b`` for two sources).

        Example:
            >>> MixedBatch.unmixed(torch.zeros(2, 1), torch.tensor([3, 4])).source_targets.tolist()
            [[3, 3], [4, 4]]
        """
        if self._source_targets is not None:
            return self._source_targets
        return torch.stack((self.target_a, self.target_b), dim=1)

    def require_two_sources(self, what: str) -> None:
        """Raise if the batch mixes more than two sources: ``what`` is defined for two only.

        Example:
            >>> MixedBatch.unmixed(torch.zeros(2, 1), torch.tensor([0, 1])).require_two_sources("decoupled")
        """
        if self.num_sources > 2:
            raise MixlabValueError(
                f"{what} is defined for two mixed sources (target_a, target_b, lam); this batch mixes "
                f"{self.num_sources} sources per sample (e.g. Co-Mixup, AdAutoMix). Use a loss defined for any "
                "number of sources: ce, bce or bce_softmax"
            )

    def forward(self, model: torch.nn.Module) -> Any:
        """Run ``model`` on the mixed batch, mixing inside it when the method says so.

        Example:
            >>> import torch
            >>> mb = MixedBatch.unmixed(torch.ones(2, 3), torch.tensor([0, 1]))
            >>> mb.forward(torch.nn.Identity()).shape
            torch.Size([2, 3])
        """
        if self.forward_fn is None:
            return model(self.inputs)
        return self.forward_fn(model, self.inputs)

    @property
    def batch_size(self) -> int:
        """Number of samples in the batch."""
        return int(self.inputs.shape[0])

    def soft_targets(self, num_classes: int | None = None, smoothing: float = 0.0) -> torch.Tensor:
        """Return the mixed target distribution, ``(N, num_classes)`` float32.

        Row ``i`` is ``lam_i * t(y_a) + (1 - lam_i) * t(y_b)`` where ``t`` is the
        one-hot (or given soft) label smoothed towards uniform by ``smoothing``
        (Szegedy et al., CVPR 2016, arXiv 1512.00567).

        Args:
            num_classes: required for class-index targets; for soft labels it
                must equal their width when given.
            smoothing: label-smoothing mass in [0, 1].

        Example:
            >>> import torch
            >>> mb = MixedBatch.unmixed(torch.zeros(1, 2), torch.tensor([1]))
            >>> mb.soft_targets(2, smoothing=0.2)
            tensor([[0.1000, 0.9000]])
        """
        smoothing = check_probability("smoothing", smoothing)
        ya, yb = self.target_a, self.target_b
        if not ya.is_floating_point():
            if num_classes is None:
                raise MixlabValueError("num_classes is needed to turn class-index targets into soft targets; got None")
            check_num_classes(num_classes)
            if self.num_sources > 2:
                _check_class_indices(self.source_targets, num_classes)
                return _mixed_one_hot(self.source_targets, self.weights, num_classes, smoothing)
            _check_class_indices(ya, num_classes)
            _check_class_indices(yb, num_classes)
            return _mixed_one_hot(torch.stack((ya, yb), 1), self.weights, num_classes, smoothing)
        if ya.ndim != 2:
            raise MixlabValueError(
                f"soft_targets needs class indices (N,) or soft labels (N, K); got float targets of shape "
                f"{tuple(ya.shape)} (use mixed_target() for regression targets)"
            )
        width = ya.shape[1]
        if num_classes is not None and width != num_classes:
            raise MixlabValueError(f"soft labels have {width} columns but num_classes={num_classes}")
        if self.num_sources > 2:
            mixed = torch.einsum("nk,nkc->nc", self.weights, self.source_targets.to(torch.float32))
        else:
            mixed = torch.lerp(yb.to(torch.float32), ya.to(torch.float32), self.lam.to(torch.float32).unsqueeze(1))
        if smoothing:
            mixed = mixed * (1.0 - smoothing) + smoothing / width
        return mixed

    def mixed_target(self) -> torch.Tensor:
        """Return ``lam * y_a + (1 - lam) * y_b`` for floating targets (regression, soft labels).

        Example:
            >>> import torch
            >>> y = torch.tensor([[1.0], [3.0]])
            >>> MixedBatch(torch.zeros(2, 1), y, y.flip(0), torch.tensor([0.5, 0.25]), torch.tensor([1, 0])).mixed_target()
            tensor([[2.0000],
                    [1.5000]])
        """
        ya, yb = self.target_a, self.target_b
        if not ya.is_floating_point():
            raise MixlabTypeError(
                f"mixed_target() needs floating targets; got dtype {ya.dtype} (use soft_targets(num_classes) "
                "for class indices)"
            )
        if self.num_sources > 2:
            weights = self.weights.to(ya.dtype).reshape(*self.weights.shape, *([1] * (ya.ndim - 1)))
            return (weights * self.source_targets).sum(dim=1)
        lam = self.lam.to(ya.dtype).reshape(-1, *([1] * (ya.ndim - 1)))
        return torch.lerp(yb, ya, lam)

    @classmethod
    def unmixed(cls, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        """A batch that was not mixed: ``lam = 1``, every sample its own partner.

        ``inputs`` is ``x`` itself (no copy), as in timm when mixing is skipped.

        Example:
            >>> import torch
            >>> MixedBatch.unmixed(torch.zeros(3, 2), torch.tensor([0, 1, 0])).lam
            tensor([1., 1., 1.])
        """
        n = x.shape[0]
        perm = torch.arange(n, device=x.device)
        lam = torch.ones(n, device=x.device, dtype=torch.float32)
        return cls(x, y, y, lam, perm)


def validate_batch(
    x: object,
    y: object,
    *,
    method: str,
    num_classes: int | None = None,
    spatial: bool = False,
    floating: bool = True,
) -> None:
    """Check ``(x, y)`` against the mixing contract and raise a clear error if it is broken.

    Args:
        x: inputs, a floating tensor ``(N, ...)``; with ``spatial=True`` it must be
            ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        y: class indices ``(N,)``, soft labels ``(N, K)`` or regression targets.
        method: the mixer's name, used in messages.
        num_classes: when given, class indices must be below it and soft labels
            must have this width.
        spatial: whether the method builds masks over spatial dims.
        floating: whether ``x`` must be floating (not when only hidden states
            are mixed, e.g. token ids fed to an embedding).

    Example:
        >>> import torch
        >>> validate_batch(torch.zeros(2, 3), torch.tensor([0, 1]), method="mixup", num_classes=2)
    """
    if not isinstance(x, torch.Tensor):
        raise MixlabTypeError(f"{method}: x must be a torch.Tensor; got {type(x).__name__}")
    if not isinstance(y, torch.Tensor):
        raise MixlabTypeError(f"{method}: y must be a torch.Tensor; got {type(y).__name__}")
    if y.device != x.device:
        raise MixlabValueError(f"{method}: x and y must be on the same device; got x on {x.device}, y on {y.device}")
    for name, tensor in (("x", x), ("y", y)):
        if tensor.device.type == "meta":
            raise MixlabValueError(
                f"{method}: {name} is on device {tensor.device}, which holds shapes but no data; mixers need "
                "tensors with data (cpu, cuda or mps): build the batch on a real device"
            )
    if floating and not x.is_floating_point():
        raise MixlabTypeError(
            f"{method}: x must be a floating tensor (float32, float16, bfloat16, float64); got dtype {x.dtype}. "
            "Convert images first, e.g. x.float() / 255"
        )
    if x.ndim < 2:
        raise MixlabValueError(
            f"{method}: x must have a batch dim and at least one more, (N, ...); got shape {tuple(x.shape)}"
        )
    if spatial and not 3 <= x.ndim <= 5:
        raise MixlabValueError(
            f"{method} builds masks over spatial dims and needs x of shape (N, C, L), (N, C, H, W) or "
            f"(N, C, D, H, W); got shape {tuple(x.shape)} with {max(x.ndim - 2, 0)} spatial dims"
        )
    if x.shape[0] < 1:
        raise MixlabValueError(f"{method}: the batch is empty; got x of shape {tuple(x.shape)}")
    if 0 in x.shape[1:]:
        raise MixlabValueError(f"{method}: x has a dim of size 0; got shape {tuple(x.shape)}")
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise MixlabValueError(
            f"{method}: x and y must have the same batch size; got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if y.dtype == torch.bool:
        raise MixlabTypeError(f"{method}: y must be class indices (integer) or float targets; got dtype torch.bool")
    if num_classes is not None:
        check_num_classes(num_classes)
    if y.is_floating_point():
        if num_classes is not None and y.ndim == 2 and y.shape[1] != num_classes:
            raise MixlabValueError(
                f"{method}: soft labels must have num_classes={num_classes} columns; got y of shape {tuple(y.shape)}"
            )
        if num_classes is not None and y.ndim == 2:
            check_soft_labels(y, what=f"{method}: soft labels y")
        return
    if y.is_complex():
        raise MixlabTypeError(f"{method}: y must be real; got dtype {y.dtype}")
    if y.ndim != 1:
        raise MixlabValueError(f"{method}: class indices must have shape (N,); got {tuple(y.shape)}")
    _check_class_indices(y, num_classes)


#: Tolerance on a soft-label row sum in float32/float64 (half types allow their own rounding, see check_soft_labels).
SOFT_LABEL_ATOL = 1e-4


def check_soft_labels(y: torch.Tensor, what: str = "soft labels") -> None:
    """Raise unless every row of the ``(N, K)`` floating ``y`` is a distribution: entries >= 0, summing to 1.

    The tolerance on the sum is :data:`SOFT_LABEL_ATOL`, or the dtype's epsilon when larger:
    rounding each entry to float16/bfloat16 moves the sum by at most ``eps / 2``. One vectorised
    pass and one device sync on CUDA (as for class indices); the row is located only on error.

    Example:
        >>> check_soft_labels(torch.tensor([[0.95, 0.05], [0.05, 0.95]]))
        >>> check_soft_labels(torch.tensor([[0.9, 0.3]]))
        Traceback (most recent call last):
        ...
        mixlab.errors.MixlabValueError: soft labels must be non-negative rows summing to 1 (tolerance 0.0001); got row 0 summing to 1.2
    """
    if y.numel() == 0:
        return
    atol = max(SOFT_LABEL_ATOL, torch.finfo(y.dtype).eps)
    row_error = (y.sum(dim=1, dtype=torch.float32) - 1.0).abs()
    lowest, worst_error = torch.stack((y.amin().to(torch.float32), row_error.amax())).tolist()
    expected = f"{what} must be non-negative rows summing to 1 (tolerance {atol:g})"
    if not lowest >= 0:  # also catches NaN
        row = int(y.amin(dim=1).to(torch.float32).nan_to_num(float("-inf")).argmin())
        raise MixlabValueError(f"{expected}; got {lowest:g} in row {row}")
    if not worst_error <= atol:
        row = int(row_error.nan_to_num(float("inf")).argmax())
        raise MixlabValueError(f"{expected}; got row {row} summing to {float(y[row].sum(dtype=torch.float32)):.6g}")


def check_num_classes(num_classes: object) -> int:
    """Return ``num_classes`` as an int if it is a positive integer, else raise.

    Example:
        >>> check_num_classes(10)
        10
    """
    return check_int("num_classes", num_classes, minimum=1)


def _check_class_indices(y: torch.Tensor, num_classes: int | None) -> None:
    if y.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(y))  # one pass, one device sync
    if low < 0:
        raise MixlabValueError(f"class indices must be >= 0; got {low}")
    if num_classes is not None and high >= num_classes:
        raise MixlabValueError(f"class indices must be < num_classes={num_classes}; got {high}")


def _mixed_one_hot(labels: torch.Tensor, weights: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """``sum_k weights[:, k] * smoothed_one_hot(labels[:, k])`` for ``(N, K)`` class indices and weights."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_add_(1, labels.long(), weights.to(torch.float32) * (on - off))
