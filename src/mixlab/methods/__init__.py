"""The mixer registry: ``create_mixer(name, **params)`` and ``list_mixers()``."""

from __future__ import annotations

import inspect
from typing import Any

from mixlab.errors import MixlabTypeError, UnknownNameError
from mixlab.methods.attention import TransMix
from mixlab.methods.base import Mixer, MixParams, blend
from mixlab.methods.comixup import CoMixup
from mixlab.methods.compose import RandomChoice
from mixlab.methods.context import MixContext, MixerNeeds
from mixlab.methods.feature import AlignMix, AttentiveMix
from mixlab.methods.interpolation import Midpoint, Mixup
from mixlab.methods.learned import AdAutoMix, AutoMix
from mixlab.methods.manifold import ManifoldMixup
from mixlab.methods.masking import CutMix, FMix, GridMix, ResizeMix, SmoothMix
from mixlab.methods.puzzle import PuzzleMix
from mixlab.methods.saliency import SaliencyMix
from mixlab.methods.sumix import SUMix

#: mixers that need nothing but the batch.
STATIC_MIXERS: tuple[type[Mixer], ...] = (Mixup, Midpoint, CutMix, ResizeMix, FMix, GridMix, SmoothMix, SaliencyMix)
#: mixers that read the model (its gradients, features, attention) or learn with it.
MODEL_AWARE_MIXERS: tuple[type[Mixer], ...] = (
    ManifoldMixup,
    PuzzleMix,
    CoMixup,
    AttentiveMix,
    AlignMix,
    AutoMix,
    AdAutoMix,
    SUMix,
    TransMix,
)
MIXERS: dict[str, type[Mixer]] = {cls.name: cls for cls in (*STATIC_MIXERS, *MODEL_AWARE_MIXERS, RandomChoice)}


def list_mixers() -> list[str]:
    """Names accepted by :func:`create_mixer`, sorted.

    Example:
        >>> "cutmix" in list_mixers()
        True
    """
    return sorted(MIXERS)


def create_mixer(name: str, **params: Any) -> Mixer:
    """Build a mixer by name, e.g. ``create_mixer("cutmix", alpha=1.0, p=0.5)``.

    Unknown names and parameters raise errors that list the accepted ones.

    Example:
        >>> type(create_mixer("mixup", alpha=0.2)).__name__
        'Mixup'
    """
    if name not in MIXERS:
        raise UnknownNameError("mixer", name, MIXERS)
    cls = MIXERS[name]
    accepted = _accepted_params(cls)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise MixlabTypeError(f"{name} does not take {', '.join(unknown)}; it accepts: {', '.join(sorted(accepted))}")
    return cls(**params)


def accepted_params(name: str) -> set[str]:
    """The keyword arguments mixer ``name`` accepts (including the base mixer's).

    Example:
        >>> "alpha" in accepted_params("mixup")
        True
    """
    if name not in MIXERS:
        raise UnknownNameError("mixer", name, MIXERS)
    return _accepted_params(MIXERS[name])


def _accepted_params(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        sig = inspect.signature(init)
        names |= {p.name for p in sig.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    names.discard("self")
    return names


__all__ = [
    "MIXERS",
    "MODEL_AWARE_MIXERS",
    "STATIC_MIXERS",
    "AdAutoMix",
    "AlignMix",
    "AttentiveMix",
    "AutoMix",
    "CoMixup",
    "CutMix",
    "FMix",
    "GridMix",
    "ManifoldMixup",
    "Midpoint",
    "MixContext",
    "MixParams",
    "Mixer",
    "MixerNeeds",
    "Mixup",
    "PuzzleMix",
    "RandomChoice",
    "ResizeMix",
    "SUMix",
    "SaliencyMix",
    "SmoothMix",
    "TransMix",
    "accepted_params",
    "blend",
    "create_mixer",
    "list_mixers",
]
