"""When and how strongly to mix: composable schedules.

Every schedule answers ``active(step, epoch)`` (mix this step?) and
``strength(step, epoch)`` (a multiplier on the mixer's Beta α; 1 means as
configured). Schedules compose with ``&`` (all must be active; strengths
multiply). :class:`ScheduledMixer` applies one to a mixer.

Example:
    >>> s = WarmUp(1) & StopAfter(3)
    >>> [s.active(step=0, epoch=e) for e in range(5)]
    [False, True, True, False, False]
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from mixlab.batch import MixedBatch
from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice, check_non_negative, check_probability

UNITS = ("step", "epoch")


def _count(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise MixlabValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _seed(seed: int | None) -> int:
    if seed is None:
        return int(np.random.SeedSequence().entropy % 2**63)  # OS entropy, not the global RNG
    return _count("seed", seed)


def _uniform(seed: int, step: int) -> float:
    """A uniform draw that depends only on ``(seed, step)``."""
    return float(np.random.default_rng([seed, _count("step", step)]).random())


def _when(step: int, epoch: int, unit: str) -> int:
    return step if unit == "step" else epoch


class Schedule(ABC):
    """Base of all schedules."""

    @abstractmethod
    def active(self, step: int, epoch: int) -> bool:
        """Whether to mix at this global ``step`` (optimiser steps so far) and ``epoch``."""

    def strength(self, step: int, epoch: int) -> float:
        """Multiplier on the mixer's Beta α at this point (1.0 unless the schedule ramps α)."""
        return 1.0

    def __and__(self, other: Schedule) -> All:
        if not isinstance(other, Schedule):
            return NotImplemented
        return All(self, other)


class Always(Schedule):
    """Mix at every step (the default).

    Example:
        >>> Always().active(step=5, epoch=2)
        True
    """

    def active(self, step: int, epoch: int) -> bool:
        """Always ``True``."""
        return True


class Probability(Schedule):
    """Mix each step with probability ``p``, drawn reproducibly from ``(seed, step)``.

    The draw depends only on the seed and the step, so a resumed run makes the
    same choices; no global random state is used. Without a seed one is drawn
    from OS entropy, so two schedules combined with ``&`` are independent; give
    a seed to make a run repeatable.

    Example:
        >>> s = Probability(0.5, seed=1)
        >>> s.active(step=10, epoch=0) == s.active(step=10, epoch=0)
        True
    """

    def __init__(self, p: float, seed: int | None = None):
        self.p = check_probability("p", p)
        self.seed = _seed(seed)

    def active(self, step: int, epoch: int) -> bool:
        """``True`` with probability ``p``."""
        return _uniform(self.seed, step) < self.p


class WarmUp(Schedule):
    """Start mixing after ``epochs`` clean epochs (epochs are counted from 0).

    Example:
        >>> [WarmUp(2).active(0, e) for e in range(4)]
        [False, False, True, True]
    """

    def __init__(self, epochs: int):
        self.epochs = _count("epochs", epochs)

    def active(self, step: int, epoch: int) -> bool:
        """``True`` from epoch ``epochs`` on."""
        return epoch >= self.epochs


class StopAfter(Schedule):
    """Early-stopped mixup: mix for the first ``epochs`` epochs, then train on clean data.

    Zou et al., "The Benefits of Mixup for Feature Learning", ICML 2023, arXiv 2303.08433.

    Example:
        >>> [StopAfter(2).active(0, e) for e in range(4)]
        [True, True, False, False]
    """

    def __init__(self, epochs: int):
        self.epochs = _count("epochs", epochs)

    def active(self, step: int, epoch: int) -> bool:
        """``True`` before epoch ``epochs``."""
        return epoch < self.epochs


class Alternate(Schedule):
    """Alternate ``every`` mixed and ``every`` clean steps (or epochs), mixed first unless ``start_mixed=False``.

    Example:
        >>> [Alternate(2, unit="step").active(s, 0) for s in range(6)]
        [True, True, False, False, True, True]
    """

    def __init__(self, every: int = 1, unit: str = "step", start_mixed: bool = True):
        self.every = _count("every", every, minimum=1)
        self.unit = check_choice("unit", unit, UNITS)
        self.start_mixed = bool(start_mixed)

    def active(self, step: int, epoch: int) -> bool:
        """``True`` in the mixed periods."""
        mixed_period = (_when(step, epoch, self.unit) // self.every) % 2 == 0
        return mixed_period == self.start_mixed


class Ramp(Schedule):
    """Ramp α's multiplier (``target="alpha"``) or the mixing probability (``target="p"``) linearly.

    The α multiplier scales Beta(α, α) samplers only: mixers built with a fixed
    ``lam`` or a ``lam_range`` (and ResizeMix, whose patch size comes from its
    ``scale``) are unaffected by it.

    The value goes from ``start_value`` at ``begin`` to ``end_value`` at ``end``
    (in steps or epochs) and stays there. A probability ramp mixes with that
    probability, drawn reproducibly from ``(seed, step)``; an α ramp is
    inactive while the multiplier is 0.

    Example:
        >>> r = Ramp(0.0, 1.0, begin=0, end=4, unit="epoch")
        >>> [r.strength(0, e) for e in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """

    def __init__(
        self,
        start_value: float,
        end_value: float,
        begin: int = 0,
        end: int = 1,
        unit: str = "epoch",
        target: str = "alpha",
        seed: int | None = None,
    ):
        self.target = check_choice("ramp target", target, ("alpha", "p"))
        check = check_probability if self.target == "p" else check_non_negative
        self.start_value, self.end_value = check("start_value", start_value), check("end_value", end_value)
        self.begin = _count("begin", begin)
        self.end = _count("end", end)
        if self.end <= self.begin:
            raise MixlabValueError(f"the ramp must end after it begins; got begin={begin}, end={end}")
        self.unit = check_choice("unit", unit, UNITS)
        self.seed = _seed(seed)

    def value(self, step: int, epoch: int) -> float:
        """The ramped value at this point."""
        t = _when(step, epoch, self.unit)
        frac = min(max((t - self.begin) / (self.end - self.begin), 0.0), 1.0)
        return self.start_value + frac * (self.end_value - self.start_value)

    def active(self, step: int, epoch: int) -> bool:
        """For a ``p`` ramp, a reproducible draw; for an α ramp, whether the multiplier is > 0."""
        if self.target == "p":
            return _uniform(self.seed, step) < self.value(step, epoch)
        return self.value(step, epoch) > 0.0

    def strength(self, step: int, epoch: int) -> float:
        """The α multiplier (1.0 for a probability ramp)."""
        return self.value(step, epoch) if self.target == "alpha" else 1.0


class All(Schedule):
    """Active when every part is; strengths multiply (also written ``a & b``).

    Example:
        >>> All(WarmUp(1), Alternate(1, unit="epoch")).active(0, 2)
        True
    """

    def __init__(self, *parts: Schedule):
        if not parts or not all(isinstance(p, Schedule) for p in parts):
            raise MixlabTypeError(f"All() needs one or more schedules; got {parts!r}")
        self.parts = parts

    def active(self, step: int, epoch: int) -> bool:
        """``True`` when all parts are active."""
        return all(p.active(step, epoch) for p in self.parts)

    def strength(self, step: int, epoch: int) -> float:
        """Product of the parts' strengths."""
        return float(np.prod([p.strength(step, epoch) for p in self.parts]))


class ScheduledMixer:
    """A mixer that consults a schedule: unmixed batches when inactive, α scaled by the strength.

    Example:
        >>> import mixlab
        >>> sm = ScheduledMixer(mixlab.Mixup(), StopAfter(1))
        >>> x, y = torch.randn(4, 2), torch.arange(4)
        >>> sm(x, y, step=0, epoch=1).lam.tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    def __init__(self, mixer: Any, schedule: Schedule):
        if not isinstance(schedule, Schedule):
            raise MixlabTypeError(f"schedule must be a mixlab Schedule; got {type(schedule).__name__}")
        self.mixer, self.schedule = mixer, schedule

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        step: int,
        epoch: int,
        context: dict[str, Any] | None = None,
    ) -> MixedBatch:
        """Mix ``(x, y)`` if the schedule is active at ``(step, epoch)``."""
        if not self.schedule.active(step, epoch):
            self.mixer.check(x, y)  # bad input fails on clean steps too
            return MixedBatch.unmixed(x, y)
        return self.mixer(x, y, generator, alpha_scale=self.schedule.strength(step, epoch), context=context)

    # The engine hooks of the wrapped mixer (see :class:`~mixlab.methods.base.Mixer`), so that a
    # loop holds one object and never reaches through it.

    def active(self, step: int, epoch: int) -> bool:
        """Whether this step mixes (the loop computes the mixer's context only then)."""
        return self.schedule.active(step, epoch)

    @property
    def num_sources(self) -> int:
        """The wrapped mixer's number of sources per output."""
        return self.mixer.num_sources

    @property
    def needs(self) -> Any:
        """The wrapped mixer's :class:`~mixlab.methods.context.MixerNeeds`."""
        return self.mixer.needs

    def bind_model(self, model: torch.nn.Module) -> None:
        """Let the wrapped mixer take its model-dependent defaults (see :class:`~mixlab.methods.context.MixContext`)."""
        self.mixer.bind_model(model)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The wrapped mixer's parameters (none for static mixers)."""
        return self.mixer.trainable_parameters()

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The wrapped mixer's optimiser groups."""
        return self.mixer.optimizer_groups()

    def loss_terms(self, mb: MixedBatch, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The wrapped mixer's extra loss terms for ``mb`` (none on clean steps: nothing was mixed)."""
        return self.mixer.loss_terms(mb, outputs)

    def start_training(self, total_steps: int) -> None:
        """Tell the wrapped mixer how many optimiser steps training takes."""
        self.mixer.start_training(total_steps)

    def after_step(self) -> None:
        """The wrapped mixer's update after each optimiser step."""
        self.mixer.after_step()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped mixer's state (the schedule is stateless: it is a function of step and epoch)."""
        return self.mixer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the wrapped mixer's state."""
        self.mixer.load_state_dict(state)
