"""mixlab: a mixup laboratory for PyTorch.

Example:
    >>> import torch, mixlab
    >>> mixer = mixlab.create_mixer("cutmix", alpha=1.0)
    >>> x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    >>> mb = mixer(x, y, generator=torch.Generator().manual_seed(0))
    >>> logits = torch.randn(8, 10)
    >>> loss = mixlab.losses.mixed_cross_entropy(logits, mb)
"""

from mixlab import errors, losses, masks, sampling, schedules
from mixlab.batch import MixedBatch
from mixlab.errors import MixlabError
from mixlab.methods import (
    AdAutoMix,
    AlignMix,
    AttentiveMix,
    AutoMix,
    CoMixup,
    CutMix,
    FMix,
    GridMix,
    ManifoldMixup,
    Midpoint,
    Mixer,
    MixParams,
    Mixup,
    PuzzleMix,
    RandomChoice,
    ResizeMix,
    SaliencyMix,
    SmoothMix,
    SUMix,
    TransMix,
    create_mixer,
    list_mixers,
)
from mixlab.methods.context import MixContext, MixerNeeds

__version__ = "0.1.0"

__all__ = [
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
    "MixedBatch",
    "Mixer",
    "MixerNeeds",
    "MixlabError",
    "Mixup",
    "PuzzleMix",
    "RandomChoice",
    "ResizeMix",
    "SUMix",
    "SaliencyMix",
    "SmoothMix",
    "TransMix",
    "__version__",
    "create_mixer",
    "errors",
    "list_mixers",
    "losses",
    "masks",
    "sampling",
    "schedules",
]
