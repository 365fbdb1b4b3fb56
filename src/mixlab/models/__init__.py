"""The model registry: ``create_model(name, num_classes, in_channels, input_size, **kwargs)`` and ``list_models()``.

Every model is a :class:`~mixlab.models.base.Backbone`: ``forward(x) ==
head(features(x))``, with the ``stages`` Manifold Mixup may mix at and
``default_manifold_layers`` to mix at by default.

Example:
    >>> import torch, mixlab
    >>> from mixlab.models import create_model
    >>> net = create_model("cnn_small", num_classes=10)
    >>> x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    >>> mixer = mixlab.ManifoldMixup(layers=net.default_manifold_layers, model=net)
    >>> mixer(x, y, generator=torch.Generator().manual_seed(0)).forward(net).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import inspect
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError, check_int
from mixlab.models.base import Backbone, count_parameters
from mixlab.models.patch import PatchCNN, patch_cnn
from mixlab.models.resnet import PreActBlock, PreActResNet, WideResNet, preact_resnet18, wrn_28_k
from mixlab.models.small import MLP, CNN1d, CNNSmall, cnn1d, cnn_small, mlp
from mixlab.models.timm_adapter import MissingDependencyError, TimmBackbone, timm_model
from mixlab.models.vit import ViTTiny, vit_tiny

#: A model builder: ``builder(num_classes, in_channels, input_size, **kwargs) -> Backbone``.
ModelBuilder = Callable[..., Backbone]

MODELS: dict[str, ModelBuilder] = {
    "cnn_small": cnn_small,
    "cnn1d": cnn1d,
    "mlp": mlp,
    "patch_cnn": patch_cnn,
    "preact_resnet18": preact_resnet18,
    "wrn_28_k": wrn_28_k,
    "vit_tiny": vit_tiny,
}

TIMM_PREFIX = "timm:"
_WRN_ALIAS = re.compile(r"wrn_(\d+)_(\d+)")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted, plus the pattern ``"timm:<name>"`` for timm models.

    ``"wrn_28_k"`` also stands for ``"wrn_<depth>_<k>"`` names such as ``"wrn_28_10"``.

    Example:
        >>> list_models()
        ['cnn1d', 'cnn_small', 'mlp', 'patch_cnn', 'preact_resnet18', 'vit_tiny', 'wrn_28_k', 'timm:<name>']
    """
    return [*sorted(MODELS), f"{TIMM_PREFIX}<name>"]


def is_known_model(name: str) -> bool:
    """Whether :func:`create_model` accepts ``name`` (registry names, ``wrn_<depth>_<k>``, ``timm:<name>``).

    Example:
        >>> is_known_model("wrn_28_10"), is_known_model("resnet9000")
        (True, False)
    """
    return name in MODELS or bool(_WRN_ALIAS.fullmatch(name)) or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 1,
    input_size: int | tuple[int, ...] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name, e.g. ``create_model("preact_resnet18", 10, in_channels=3)``.

    Args:
        name: one of :func:`list_models`; ``"wrn_<depth>_<k>"`` (e.g. ``"wrn_28_10"``) means
            ``"wrn_28_k"`` with that depth and widen factor; ``"timm:<name>"`` wraps a timm model.
        num_classes: output width (the output dimension for regression, e.g. 1).
        in_channels: input channels (input features for ``"mlp"``).
        input_size: one sample's spatial size (an int, the sizes, or ``(C, *sizes)``); the models
            that flatten a feature map (``cnn_small``, ``cnn1d``) are built for it, the others check it.
        **kwargs: model options (e.g. ``dropout``); unknown ones raise an error listing those accepted.

    Example:
        >>> net = create_model("wrn_16_2", num_classes=10, in_channels=3)
        >>> net.depth, net.widen_factor, net.feature_dim
        (16, 2, 128)
    """
    if not isinstance(name, str):
        raise MixlabTypeError(f"model name must be a str; got {name!r} of type {type(name).__name__}")
    num_classes = check_int("num_classes", num_classes, minimum=1)
    in_channels = check_int("in_channels", in_channels, minimum=1)
    if input_size is not None and (
        isinstance(input_size, (str, bool)) or not isinstance(input_size, (numbers.Integral, Sequence))
    ):
        raise MixlabTypeError(
            f"input_size must be an int, a tuple of ints or None; got {input_size!r} of type {type(input_size).__name__}"
        )
    if name.startswith(TIMM_PREFIX):
        return timm_model(name[len(TIMM_PREFIX) :], num_classes, in_channels, input_size, **kwargs)
    builder_name = name
    alias = _WRN_ALIAS.fullmatch(name)
    if name not in MODELS and alias is not None:
        builder_name = "wrn_28_k"
        for key, value in (("depth", int(alias.group(1))), ("widen_factor", int(alias.group(2)))):
            if key in kwargs and kwargs[key] != value:
                raise MixlabValueError(f"{name} means {key}={value}, but {key}={kwargs[key]!r} was also given")
            kwargs[key] = value
    if builder_name not in MODELS:
        raise UnknownNameError("model", name, list_models())
    builder = MODELS[builder_name]
    accepted = _accepted_kwargs(builder)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise MixlabTypeError(
            f"model {name!r} does not take {', '.join(unknown)}; it accepts: {', '.join(sorted(accepted)) or 'none'}"
        )
    return builder(num_classes, in_channels, input_size, **kwargs)


def _accepted_kwargs(builder: ModelBuilder) -> set[str]:
    params = inspect.signature(builder).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY}


__all__ = [
    "MLP",
    "MODELS",
    "Backbone",
    "CNN1d",
    "CNNSmall",
    "MissingDependencyError",
    "ModelBuilder",
    "PatchCNN",
    "PreActBlock",
    "PreActResNet",
    "TimmBackbone",
    "ViTTiny",
    "WideResNet",
    "cnn1d",
    "cnn_small",
    "count_parameters",
    "create_model",
    "is_known_model",
    "list_models",
    "mlp",
    "patch_cnn",
    "preact_resnet18",
    "timm_model",
    "vit_tiny",
    "wrn_28_k",
]
