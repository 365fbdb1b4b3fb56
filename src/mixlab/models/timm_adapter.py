"""An adapter that gives a timm model the :class:`~mixlab.models.base.Backbone` interface.

timm is optional (``pip install mixlab[timm]``) and imported only when a
``"timm:<name>"`` model is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from mixlab.errors import MissingDependencyError, MixlabTypeError, MixlabValueError
from mixlab.models.base import INPUT, Backbone, parse_input_size


def import_timm() -> Any:
    """Import and return timm, or raise :class:`MissingDependencyError` saying how to install it.

    Example:
        >>> try:
        ...     timm = import_timm()
        ... except MissingDependencyError as err:
        ...     print("pip install" in str(err))
        ... else:
        ...     print(True)
        True
    """
    try:
        return importlib.import_module("timm")
    except Exception as err:  # ImportError, or a broken install (e.g. a torchvision mismatch)
        raise MissingDependencyError(
            f"timm models need timm, which could not be imported ({type(err).__name__}: {err}); "
            "install it with `pip install mixlab[timm]` (or `pip install timm`)"
        ) from err


class TimmBackbone(Backbone):
    """A timm model seen as a :class:`Backbone`.

    ``features`` is ``forward_head(forward_features(x), pre_logits=True)``;
    ``head`` is the model's classifier (built for ``num_classes`` by timm) when it
    is an ``nn.Linear``, else a new ``nn.Linear`` after ``reset_classifier(0)``.
    ``stages`` are the modules named in the model's ``feature_info`` (prefixed with
    ``"model."``), and ``default_manifold_layers`` are the input and the first two
    stages after the stem, as in Verma et al., ICML 2019, arXiv 1806.05236.
    Wightman, "PyTorch Image Models", 2019, https://github.com/huggingface/pytorch-image-models.

    Args:
        model: a timm model (anything with ``forward_features`` and ``forward_head``).
        num_classes: the model's number of classes.
        in_channels: the model's input channels.
        input_size: optional input size, only recorded.

    Example:
        >>> try:
        ...     import timm
        ... except ImportError:
        ...     timm = None
        >>> if timm is not None:
        ...     net = TimmBackbone(timm.create_model("resnet18", num_classes=3), num_classes=3, in_channels=3)
        ...     assert net.feature_dim == 512
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        in_channels: int = 3,
        input_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels)
        if not (isinstance(model, nn.Module) and hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise MixlabTypeError(
                f"TimmBackbone needs a timm model with forward_features and forward_head; got {type(model).__name__}"
            )
        self.input_size = parse_input_size(
            "timm", input_size, self.in_channels, spatial_dims=2, default=None, minimum=1
        )
        self.model = model
        classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
        if isinstance(classifier, nn.Linear) and classifier.out_features == self.num_classes:
            head = classifier  # shared with the timm model: pretrained heads are kept
        else:
            feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
            model.reset_classifier(0)
            head = nn.Linear(feature_dim, self.num_classes)
        self.feature_dim = head.in_features
        self.head = head
        modules = dict(self.named_modules())
        names: list[str] = []
        for entry in getattr(model, "feature_info", None) or ():
            module = entry.get("module") if isinstance(entry, dict) else None
            if isinstance(module, str) and f"model.{module}" in modules:
                names.append(f"model.{module}")
        self.stages = tuple(names)
        early = self.stages[1:3] if len(self.stages) >= 3 else self.stages[:1]
        self.default_manifold_layers = (INPUT, *early)

    def features(self, x: Tensor) -> Tensor:
        """``forward_head(forward_features(x), pre_logits=True)``, flattened to ``(N, feature_dim)``."""
        out = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return out.flatten(1) if out.dim() > 2 else out


def timm_model(
    model_name: str,
    num_classes: int,
    in_channels: int = 3,
    input_size: int | Sequence[int] | None = None,
    *,
    pretrained: bool = False,
    **kwargs: Any,
) -> TimmBackbone:
    """Build ``timm.create_model(model_name, ...)`` for ``num_classes`` and ``in_channels`` as a :class:`TimmBackbone`.

    Registry name ``"timm:<model_name>"``. Extra keyword arguments go to
    ``timm.create_model`` (e.g. ``drop_rate``, ``img_size`` for ViTs).
    ``pretrained=True`` downloads weights through timm, so it is off by default.

    Example:
        >>> try:
        ...     net = timm_model("resnet18", num_classes=10)
        ... except MissingDependencyError:
        ...     net = None
        >>> net is None or net.feature_dim == 512
        True
    """
    if not isinstance(model_name, str) or not model_name:
        raise MixlabValueError(f"timm model name must be a non-empty string, as in 'timm:resnet18'; got {model_name!r}")
    if not isinstance(pretrained, bool):
        raise MixlabTypeError(f"pretrained must be True or False; got {pretrained!r}")
    timm = import_timm()
    is_model = getattr(timm, "is_model", None)
    if callable(is_model) and not is_model(model_name):
        raise MixlabValueError(f"unknown timm model {model_name!r}; timm.list_models() lists the known ones")
    model = timm.create_model(
        model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs
    )
    return TimmBackbone(model, num_classes=num_classes, in_channels=in_channels, input_size=input_size)


__all__ = ["MissingDependencyError", "TimmBackbone", "import_timm", "timm_model"]
