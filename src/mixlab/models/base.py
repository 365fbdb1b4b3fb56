"""The backbone contract shared by every mixlab model, and input-size helpers.

A :class:`Backbone` is an ``nn.Module`` split into ``features`` (the
penultimate representation) and a linear ``head``, and it names the
submodules whose outputs Manifold Mixup and feature-based mixers may use.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int

INPUT = "input"


class Backbone(nn.Module):
    """Base class of mixlab models: ``forward(x) == head(features(x))``.

    Subclasses build their layers, set :attr:`feature_dim`, :attr:`head`,
    :attr:`stages` and :attr:`default_manifold_layers`, and implement
    :meth:`features`.

    Attributes:
        num_classes: output width of the head (the output dimension for regression).
        in_channels: input channels (input features for tables).
        feature_dim: width of :meth:`features`' output and input width of :attr:`head`.
        head: ``nn.Linear(feature_dim, num_classes)``.
        stages: names (as in ``named_modules()``) of the submodules whose outputs
            are fed onward and may be mixed by Manifold Mixup, in forward order.
        default_manifold_layers: a subset of ``("input", *stages)`` to mix at by
            default: the input and early stages, as in Verma et al., ICML 2019,
            arXiv 1806.05236.

    Example:
        >>> import torch
        >>> class Linear(Backbone):
        ...     def __init__(self):
        ...         super().__init__(num_classes=2, in_channels=3)
        ...         self.body = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        ...         self.feature_dim, self.head = 4, torch.nn.Linear(4, 2)
        ...         self.stages, self.default_manifold_layers = ("body",), ("input", "body")
        ...     def features(self, x):
        ...         return self.body(x)
        >>> net = Linear()
        >>> net(torch.randn(5, 3)).shape, list(net.stage_features(torch.randn(5, 3)))
        (torch.Size([5, 2]), ['body'])
    """

    feature_dim: int
    head: nn.Linear
    stages: tuple[str, ...] = ()
    default_manifold_layers: tuple[str, ...] = (INPUT,)

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.in_channels = check_int("in_channels", in_channels, minimum=1)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate representation ``(N, feature_dim)``, the input of :attr:`head`."""
        raise NotImplementedError(f"{type(self).__name__} must implement features()")

    def forward(self, x: Tensor) -> Tensor:
        """Logits (or regression outputs) ``(N, num_classes)``: ``head(features(x))``."""
        return self.head(self.features(x))

    def stage_features(self, x: Tensor) -> dict[str, Tensor]:
        """Run :meth:`features` on ``x`` and return each stage's output, keyed by name, in forward order.

        The outputs are taken by forward hooks, so they are exactly what the
        next layer received (and what Manifold Mixup would mix). Gradients
        flow through them as usual.
        """
        modules = dict(self.named_modules())
        outputs: dict[str, Tensor] = {}
        handles = []

        def make_hook(name: str) -> Any:
            def hook(_module: nn.Module, _args: Any, output: Any) -> None:
                if name not in outputs:  # a module called twice is recorded once
                    outputs[name] = output

            return hook

        try:
            for name in self.stages:
                handles.append(modules[name].register_forward_hook(make_hook(name)))
            self.features(x)
        finally:
            for handle in handles:
                handle.remove()
        return {name: outputs[name] for name in self.stages if name in outputs}

    def _check_input(self, x: Tensor, spatial: tuple[int, ...] | None = None, ndim: int | None = None) -> None:
        """Raise a ``MixlabValueError`` saying what is expected if ``x`` has the wrong rank, channels or size."""
        if not isinstance(x, Tensor):
            raise MixlabTypeError(f"{type(self).__name__} expects a tensor; got {type(x).__name__}")
        ndim = ndim if ndim is not None else (2 + len(spatial) if spatial is not None else None)
        wrong = (
            (ndim is not None and x.dim() != ndim)
            or x.dim() < 2
            or x.shape[1] != self.in_channels
            or (spatial is not None and tuple(x.shape[2:]) != spatial)
        )
        if wrong:
            if spatial is not None:
                dims = ", ".join(str(d) for d in spatial)
            else:
                dims = {3: "L", 4: "H, W", 5: "D, H, W"}.get(ndim or 0, "...")
            hint = ""
            if x.dim() >= 2 and x.shape[1] != self.in_channels:
                hint = f" (in_channels={self.in_channels} but the input has {x.shape[1]} channels)"
            elif spatial is not None:
                hint = " (build the model with input_size= the input's size)"
            raise MixlabValueError(
                f"{type(self).__name__} expects input of shape (N, {self.in_channels}, {dims}); "
                f"got {tuple(x.shape)}{hint}"
            )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared parameters counted once).

    Args:
        model: any ``nn.Module``.
        trainable_only: count only parameters with ``requires_grad``.

    Example:
        >>> import torch
        >>> count_parameters(torch.nn.Linear(3, 2))
        8
    """
    if not isinstance(model, nn.Module):
        raise MixlabTypeError(f"count_parameters needs an nn.Module; got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parse_input_size(
    model: str,
    input_size: int | Sequence[int] | None,
    in_channels: int,
    spatial_dims: int,
    default: tuple[int, ...] | None,
    minimum: int = 8,
) -> tuple[int, ...] | None:
    """Normalise ``input_size`` to a tuple of ``spatial_dims`` sizes (or ``None`` if none given and no default).

    Accepts an int (the same size on every spatial dim), ``spatial_dims``
    sizes, or ``(channels, *sizes)`` whose channels must equal ``in_channels``.

    Example:
        >>> parse_input_size("cnn_small", (1, 32, 30), in_channels=1, spatial_dims=2, default=(28, 28))
        (32, 30)
    """
    if input_size is None:
        return default
    if isinstance(input_size, bool):
        raise MixlabTypeError(f"{model}: input_size must be an int or a tuple of ints; got {input_size!r}")
    if isinstance(input_size, numbers.Integral):
        sizes: tuple[int, ...] = (check_int("input_size", input_size, minimum=1),) * spatial_dims
    elif isinstance(input_size, Sequence) and not isinstance(input_size, str):
        sizes = tuple(check_int("input_size", s, minimum=1) for s in input_size)
        if len(sizes) == spatial_dims + 1:
            if sizes[0] != in_channels:
                raise MixlabValueError(
                    f"{model}: input_size {tuple(input_size)!r} has {sizes[0]} channels "
                    f"but in_channels={in_channels}; give matching values"
                )
            sizes = sizes[1:]
        elif len(sizes) != spatial_dims:
            raise MixlabValueError(
                f"{model}: input_size must be an int, {spatial_dims} sizes or (channels, {spatial_dims} sizes); "
                f"got {tuple(input_size)!r}"
            )
    else:
        raise MixlabTypeError(
            f"{model}: input_size must be an int or a tuple of ints; got {input_size!r} of type "
            f"{type(input_size).__name__}"
        )
    if any(s < minimum for s in sizes):
        raise MixlabValueError(f"{model}: every spatial size in input_size must be >= {minimum}; got {sizes!r}")
    return sizes


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions, unit/zero norms, zero linear biases (He et al., ICCV 2015, arXiv 1502.01852).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
        >>> net.apply(init_weights)[1].weight.tolist()
        [1.0, 1.0]
    """
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def flat_size(sizes: Sequence[int]) -> int:
    """Product of ``sizes`` (1 for none).

    Example:
        >>> flat_size((64, 7, 7))
        3136
    """
    return math.prod(sizes)


__all__ = ["INPUT", "Backbone", "count_parameters", "flat_size", "init_weights", "parse_input_size"]
