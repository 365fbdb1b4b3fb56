"""The mixer base class: parameter sampling apart from application.

A mixer is called as ``mixer(x, y, generator=g)`` and returns a
:class:`~mixlab.batch.MixedBatch`. The call is two steps that can be run apart
(as in Kornia): ``params = mixer.sample(x, y, g)`` draws every random choice,
``mixer.apply(x, y, params)`` is deterministic given ``params``.

Subclasses implement :meth:`Mixer._sample_params` (method-specific draws, given
the partners and the drawn ratios) and :meth:`Mixer._mix` (the blend).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.utils.data

from mixlab.batch import MixedBatch, check_num_classes, validate_batch
from mixlab.errors import MixlabValueError, check_choice, check_int, check_probability
from mixlab.methods.context import MixerNeeds
from mixlab.sampling import (
    PairSampler,
    as_cpu_generator,
    make_lambda_sampler,
    make_pair_sampler,
    new_generator,
    numpy_rng,
)

LAM_MODES = ("batch", "sample")


@dataclass
class MixParams:
    """Everything a mixer drew for one batch; ``apply`` is deterministic given it.

    Attributes:
        perm: ``(N,)`` long partner indices on the data's device.
        lam: ``(N,)`` float32 on the data's device, the weight of ``target_a``.
        weight: weight of ``x`` per element, broadcastable to ``x`` and in
            ``x``'s dtype; ``None`` when the method does not blend by weight.
        mixed: ``False`` when the whole batch is left unmixed (probability ``p``).
        extra: method-specific parameters (boxes, a layer name, ...).
    """

    perm: torch.Tensor
    lam: torch.Tensor
    weight: torch.Tensor | None = None
    mixed: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Mixer(ABC):
    """Base of every mixer: validation, λ and partner draws, probability ``p``, ``inplace``.

    Args:
        alpha: λ ~ Beta(alpha, alpha). Give at most one of ``alpha``, ``lam``, ``lam_range``.
        lam: a fixed λ in [0, 1].
        lam_range: λ ~ U(low, high).
        lam_mode: ``"batch"`` (one λ for the batch) or ``"sample"`` (one per sample),
            as timm's batch and elem modes.
        p: probability of mixing, per batch in batch mode and per sample in sample mode.
        pairing: ``"random"``, ``"c_mixup"``, ``"same_class"``, ``"different_class"``
            or a :class:`~mixlab.sampling.PairSampler`.
        sigma: C-Mixup kernel bandwidth (only with ``pairing="c_mixup"``).
        num_classes: when given, class indices and soft-label widths are checked against it.
        inplace: write the mixed batch into ``x`` instead of a new tensor.
        seed: seed of the mixer's own generator, used when no generator is passed.
        validate: check the inputs (reads the labels, a device sync on CUDA).
    """

    name: ClassVar[str] = ""
    #: whether the method builds masks over spatial dims.
    spatial: ClassVar[bool] = False
    #: what the method needs besides (x, y): e.g. {"model"}.
    requires: ClassVar[frozenset[str]] = frozenset()
    default_alpha: ClassVar[float] = 1.0
    #: how many inputs each output is drawn from (``MixedBatch.num_sources``); methods mixing more set it per instance.
    num_sources: int = 2

    def __init__(
        self,
        *,
        alpha: float | None = None,
        lam: float | None = None,
        lam_range: tuple[float, float] | None = None,
        lam_mode: str = "batch",
        p: float = 1.0,
        pairing: str | PairSampler = "random",
        sigma: float | None = None,
        num_classes: int | None = None,
        inplace: bool = False,
        seed: int | None = None,
        validate: bool = True,
    ):
        if alpha is None and lam is None and lam_range is None:
            alpha = self.default_alpha
        self.lam_sampler = make_lambda_sampler(alpha=alpha, lam=lam, lam_range=lam_range)
        self.lam_mode = check_choice("lam_mode", lam_mode, LAM_MODES)
        self.p = check_probability("p", p)
        self.pairing = make_pair_sampler(pairing, **({} if sigma is None else {"sigma": sigma}))
        self.num_classes = None if num_classes is None else check_num_classes(num_classes)
        self.inplace = bool(inplace)
        self.validate = bool(validate)
        self.seed = None if seed is None else check_int("seed", seed)
        self._generator = new_generator(self.seed)
        self._generator_owner = (os.getpid(), None)

    @property
    def generator(self) -> torch.Generator:
        """The mixer's own generator, used when none is passed.

        Each process (e.g. each DataLoader worker) gets its own stream: with a
        ``seed`` it is derived from the seed and the worker id, otherwise it is
        drawn from OS entropy, so forked workers never repeat each other's mixes.
        """
        worker = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if worker is None else worker.id)
        if owner != self._generator_owner:
            seed = None if self.seed is None else self.seed + 1_000_003 * (0 if worker is None else worker.id + 1)
            self._generator, self._generator_owner = new_generator(seed), owner
        return self._generator

    # ------------------------------------------------------------ public steps

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        alpha_scale: float = 1.0,
        context: dict[str, Any] | None = None,
    ) -> MixedBatch:
        """Mix a batch: ``apply(x, y, sample(x, y, generator))``.

        Args:
            x: floating inputs ``(N, ...)``.
            y: class indices ``(N,)``, soft labels ``(N, K)`` or float targets.
            generator: a ``torch.Generator``; the same state gives the same output.
            alpha_scale: multiplies the Beta α for this call (used by ramp schedules).
            context: what a model-aware mixer needs (e.g. ``{"model": model}``).
        """
        return self.apply(x, y, self.sample(x, y, generator, alpha_scale=alpha_scale, context=context), context=context)

    def sample(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        alpha_scale: float = 1.0,
        context: dict[str, Any] | None = None,
    ) -> MixParams:
        """Draw every random parameter for this batch (no change to ``x``)."""
        self.check(x, y)
        self._check_context(context or {})
        return self._draw(x, y, numpy_rng(as_cpu_generator(generator, self.generator)), alpha_scale, context)

    def _draw(
        self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, alpha_scale: float, context: dict | None
    ) -> MixParams:
        """All the draws of :meth:`sample`, from a NumPy generator (inputs already checked)."""
        n = x.shape[0]
        if self.lam_mode == "batch" and self.p < 1.0 and rng.random() >= self.p:
            return unmixed_params(x)
        perm = self.pairing.sample(y, rng).to(x.device, non_blocking=True)
        lam = self.lam_sampler.sample(1 if self.lam_mode == "batch" else n, rng, alpha_scale=alpha_scale)
        if self.lam_mode == "sample" and self.p < 1.0:
            lam = np.where(rng.random(n) < self.p, lam, 1.0)
        return self._sample_params(x, y, perm, lam, rng, context or {})

    def apply(
        self, x: torch.Tensor, y: torch.Tensor, params: MixParams, *, context: dict[str, Any] | None = None
    ) -> MixedBatch:
        """Blend ``x`` with its partners as ``params`` say; deterministic."""
        check_params_fit_batch(params, x)
        if not params.mixed:
            return MixedBatch.unmixed(x, y)
        inputs = self._mix(x, params, context or {})
        return MixedBatch(inputs, y, y.index_select(0, params.perm), params.lam, params.perm, params.weight)

    def check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Raise a :class:`~mixlab.errors.MixlabError` if ``(x, y)`` break the contract."""
        if not self.validate:
            return
        validate_batch(x, y, method=self.name, num_classes=self.num_classes, spatial=self.spatial)
        self.pairing.check(y)

    def _check_context(self, context: dict[str, Any]) -> None:
        """Raise before any draw if ``context`` lacks what the method needs (none by default)."""
        return

    # ------------------------------------------------------------ for subclasses

    @abstractmethod
    def _sample_params(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        perm: torch.Tensor,
        lam: np.ndarray,
        rng: np.random.Generator,
        context: dict[str, Any],
    ) -> MixParams:
        """Method-specific draws given partners ``perm`` and ratios ``lam`` (``(1,)`` or ``(N,)`` float64).

        Returns params with ``perm`` and, as ``lam``, the exact ``(N,)`` label weight.
        """

    def _mix(self, x: torch.Tensor, params: MixParams, context: dict[str, Any]) -> torch.Tensor:
        """Blend by ``params.weight``: ``w * x + (1 - w) * x[perm]``, exact where ``w`` is 0 or 1."""
        return blend(x, params.perm, params.weight, inplace=self.inplace)

    # ------------------------------------------------------------ engine hooks
    # A training loop asks every mixer the same questions, so that mixers with
    # parameters or auxiliary losses fit without special cases in the loop.

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the training loop should optimise along with the model (none here).

        Example:
            >>> from mixlab import Mixup
            >>> Mixup().trainable_parameters()
            []
        """
        return []

    def loss_terms(self, mb: MixedBatch, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra loss terms, by name, that the loop adds to the task loss (none here).

        Example:
            >>> from mixlab import Mixup
            >>> Mixup().loss_terms(None, None)
            {}
        """
        return {}

    @property
    def needs(self) -> MixerNeeds:
        """What the mixer needs from the model each step (see :class:`~mixlab.methods.context.MixContext`).

        Example:
            >>> from mixlab import Mixup
            >>> Mixup().needs.anything
            False
        """
        return MixerNeeds(model="model" in self.requires)

    def bind_model(self, model: torch.nn.Module) -> None:
        """Take defaults that depend on the model (a layer name) when none were given; nothing here.

        :class:`~mixlab.methods.context.MixContext` calls it with the bare model
        before reading :attr:`needs`, so a mixer built without ``model=`` (as a
        config is validated) still finds its layers.

        Example:
            >>> from mixlab import Mixup
            >>> Mixup().bind_model(torch.nn.Linear(2, 2))
        """
        return

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the loop's optimiser: ``{"params": [...], "lr_scale": s, "weight_decay": w}``.

        ``lr_scale`` multiplies the run's learning rate (default 1) and
        ``weight_decay`` overrides the run's (default: the run's). One group
        holding :meth:`trainable_parameters` unless a mixer says otherwise.

        Example:
            >>> from mixlab import Mixup
            >>> Mixup().optimizer_groups()
            []
        """
        params = self.trainable_parameters()
        return [{"params": params}] if params else []

    def start_training(self, total_steps: int) -> None:
        """Told by the loop, before the first step, how many optimiser steps training takes; nothing here.

        Mixers with a schedule of their own over training (AutoMix's cosine
        momentum) read it; a resumed run is told again with the same number.

        Example:
            >>> from mixlab import Mixup
            >>> Mixup().start_training(1000)
        """
        return

    def after_step(self) -> None:
        """Called by the loop after each optimiser step (momentum updates, step counters); nothing here.

        Example:
            >>> from mixlab import Mixup
            >>> Mixup().after_step()
        """
        return

    def to(self, device: torch.device | str) -> Mixer:
        """Move the mixer's own parameters and buffers to ``device`` (none here); returns the mixer.

        Example:
            >>> from mixlab import Mixup
            >>> Mixup().to("cpu").name
            'mixup'
        """
        return self

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint beyond the constructor's arguments (none for static mixers).

        Example:
            >>> from mixlab import Mixup
            >>> Mixup().state_dict()
            {}
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Example:
            >>> from mixlab import Mixup
            >>> Mixup().load_state_dict({})
        """
        if state:
            raise MixlabValueError(f"{self.name} keeps no state; got keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam_sampler!r}, lam_mode={self.lam_mode!r}, p={self.p})"


class RelabellingMixer(Mixer):
    """A mixer that draws and mixes exactly as a wrapped mixer ``self.base`` and changes only the label.

    Subclasses (TransMix, SUMix) set ``self.base`` in their constructor and
    override :meth:`apply` to attach their relabelling to the batch.
    """

    base: Mixer

    def _draw(
        self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, alpha_scale: float, context: dict | None
    ) -> MixParams:
        return self.base._draw(x, y, rng, alpha_scale, context)

    def _sample_params(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        perm: torch.Tensor,
        lam: np.ndarray,
        rng: np.random.Generator,
        context: dict[str, Any],
    ) -> MixParams:
        return self.base._sample_params(x, y, perm, lam, rng, context)

    def _mix(self, x: torch.Tensor, params: MixParams, context: dict[str, Any]) -> torch.Tensor:
        return self.base._mix(x, params, context)


def blend(x: torch.Tensor, perm: torch.Tensor, weight: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Return ``weight * x + (1 - weight) * x[perm]`` in one gather and one fused lerp.

    ``torch.lerp`` returns ``end`` exactly for a weight of 1 and ``start`` for 0,
    so binary masks copy elements bit for bit.

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> blend(x, torch.tensor([1, 0]), torch.tensor([[0.25], [1.0]]))
        tensor([[2.5000],
                [3.0000]])
    """
    out = x.index_select(0, perm)
    out.lerp_(x, weight)
    # In place still needs the partner copy (x is overwritten); copying back keeps
    # the result bit-identical to the out-of-place one.
    return x.copy_(out) if inplace else out


def check_params_fit_batch(params: MixParams, x: torch.Tensor) -> None:
    """Raise unless ``params.perm`` and ``params.lam`` hold one entry per sample of ``x`` (shape checks only, no sync).

    Params drawn for another batch would index out of range or, worse, pair the wrong samples.

    Example:
        >>> check_params_fit_batch(unmixed_params(torch.zeros(8, 3)), torch.zeros(4, 3))
        Traceback (most recent call last):
        ...
        mixlab.errors.MixlabValueError: params were drawn for a batch of 8 samples (perm (8,), lam (8,)) but this batch has 4; draw params for this batch with mixer.sample(x, y)
    """
    n = x.shape[0]
    perm_shape, lam_shape = tuple(params.perm.shape), tuple(params.lam.shape)
    if perm_shape != (n,) or lam_shape != (n,):
        drawn = perm_shape[0] if perm_shape else "?"
        raise MixlabValueError(
            f"params were drawn for a batch of {drawn} samples (perm {perm_shape}, lam {lam_shape}) but this batch "
            f"has {n}; draw params for this batch with mixer.sample(x, y)"
        )


def unmixed_params(x: torch.Tensor) -> MixParams:
    """Params that leave the batch as it is (the ``p`` draw said no).

    Example:
        >>> unmixed_params(torch.zeros(2, 3)).mixed
        False
    """
    n = x.shape[0]
    return MixParams(torch.arange(n, device=x.device), torch.ones(n, device=x.device), mixed=False)


def ratios_to_device(lam: np.ndarray, n: int, device: torch.device) -> torch.Tensor:
    """``(1,)`` or ``(N,)`` float64 ratios as an ``(N,)`` float32 tensor on ``device``.

    Example:
        >>> ratios_to_device(np.array([0.25]), 3, torch.device("cpu"))
        tensor([0.2500, 0.2500, 0.2500])
    """
    if len(lam) == 1:  # one ratio for the batch: a single fill, no host-to-device copy
        return torch.full((n,), float(lam[0]), dtype=torch.float32, device=device)
    return torch.from_numpy(np.asarray(lam, dtype=np.float32)).to(device)


def interpolation_params(x: torch.Tensor, perm: torch.Tensor, lam: np.ndarray) -> MixParams:
    """Params for ``lam * x + (1 - lam) * x[perm]``; ``lam`` is reported as rounded to ``x``'s dtype.

    Non-floating ``x`` (token ids mixed later, as hidden states) gets a float32 weight.

    Example:
        >>> interpolation_params(torch.zeros(2, 3, dtype=torch.float16), torch.tensor([1, 0]), np.array([0.1])).lam
        tensor([0.1000, 0.1000])
    """
    like = x if x.is_floating_point() else x.float()
    weight = broadcast_weight(lam, like)
    # A copy, not a view of the weight: the label weight must not share memory with the mask.
    exact = per_sample(weight.flatten().to(torch.float32), x.shape[0]).clone()
    return MixParams(perm=perm, lam=exact, weight=weight)


def per_sample(values: torch.Tensor, n: int) -> torch.Tensor:
    """Expand a ``(1,)`` or ``(N,)`` tensor to ``(N,)``.

    Example:
        >>> per_sample(torch.tensor([0.5]), 3)
        tensor([0.5000, 0.5000, 0.5000])
    """
    return values.expand(n) if values.shape[0] == 1 else values


def broadcast_weight(lam: torch.Tensor | np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """Shape ``(M,)`` ratios as ``(M, 1, ..., 1)`` in ``x``'s dtype and device.

    Example:
        >>> broadcast_weight(torch.tensor([0.5, 1.0]), torch.zeros(2, 3, 4)).shape
        torch.Size([2, 1, 1])
    """
    if isinstance(lam, np.ndarray):
        if len(lam) == 1:
            return torch.full((1,) * x.ndim, float(lam[0]), dtype=x.dtype, device=x.device)
        lam = torch.from_numpy(lam)
    return lam.to(x.dtype).view(-1, *([1] * (x.ndim - 1))).to(x.device)


def label_weight(weight: torch.Tensor, n: int) -> torch.Tensor:
    """The exact share of ``x_i`` in each sample: the mean of its weight, ``(N,)`` float32.

    Example:
        >>> label_weight(torch.tensor([[[1.0, 0.0, 0.0, 1.0]]]), 2)
        tensor([0.5000, 0.5000])
    """
    exact = torch.float32 if weight.device.type == "mps" else torch.float64  # MPS has no float64
    if weight.shape[0] == 1:  # one mask for the batch
        return torch.full((n,), float(weight.to(exact).mean()), dtype=torch.float32, device=weight.device)
    return weight.to(exact).flatten(1).mean(dim=1).to(torch.float32)
