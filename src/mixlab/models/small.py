"""Small, fast backbones for CPU work: a 2-D CNN for 28×28 images, a 1-D CNN for MNIST-1D, and an MLP."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, check_int, check_probability
from mixlab.models.base import INPUT, Backbone, flat_size, init_weights, parse_input_size


def _dropout_layers(dropout: float) -> list[nn.Module]:
    return [nn.Dropout(dropout)] if dropout > 0 else []


class CNNSmall(Backbone):
    """A small LeNet-style CNN for 28×28 grey images, chosen for speed on CPU.

    ``block1``: Conv3x3(in→32, no bias)+BN+ReLU+MaxPool2; ``block2``: Conv3x3(32→64)+BN+ReLU+MaxPool2;
    flatten; ``fc``: Linear(64·⌊H/4⌋·⌊W/4⌋ → 128)+ReLU(+Dropout) gives the features; ``head``:
    Linear(128 → num_classes). The flatten runs in (H, W, C) order, a free view for
    ``channels_last`` inputs (the fast layout on CPU); the output does not depend on the layout.
    After LeCun et al., Proc. IEEE 1998 (LeNet), with batch normalisation (Ioffe & Szegedy,
    ICML 2015, arXiv 1502.03167).

    Args:
        num_classes: output width.
        in_channels: input channels (1 for grey images).
        input_size: ``H``, ``(H, W)`` or ``(C, H, W)``, each >= 8; default 28×28. Inputs must have this size.
        dropout: dropout probability after ``fc`` (default 0).

    Example:
        >>> import torch
        >>> net = CNNSmall(num_classes=10)
        >>> net(torch.randn(2, 1, 28, 28)).shape, net.stages
        (torch.Size([2, 10]), ('block1', 'block2', 'fc'))
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes, in_channels)
        size = parse_input_size("cnn_small", input_size, self.in_channels, spatial_dims=2, default=(28, 28))
        assert size is not None
        self.input_size: tuple[int, ...] = size
        dropout = check_probability("dropout", dropout)
        self.block1 = nn.Sequential(
            nn.Conv2d(self.in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        height, width = size[0] // 4, size[1] // 4
        self.fc = nn.Sequential(nn.Linear(64 * height * width, 128), nn.ReLU(inplace=True), *_dropout_layers(dropout))
        self.feature_dim = 128
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        self.stages = ("block1", "block2", "fc")
        self.default_manifold_layers = (INPUT, "block1", "block2")
        self.apply(init_weights)

    def features(self, x: Tensor) -> Tensor:
        """The 128-wide output of ``fc``."""
        self._check_input(x, self.input_size)
        x = self.block2(self.block1(x))
        # (N, C, H, W) -> (N, H*W*C): a view when x is channels_last, one copy otherwise.
        return self.fc(x.permute(0, 2, 3, 1).flatten(1))


class CNN1d(Backbone):
    """A small 1-D CNN for signals such as MNIST-1D (inputs ``(N, 1, 40)``).

    ``block1``..``block3``: Conv1d(kernel 5, stride 2, padding 2)+ReLU with ``channels`` channels
    each (in→32→32→32 by default); flatten; ``fc``: Linear(→ ``hidden``)+ReLU(+Dropout) gives the
    features; ``head``: Linear(hidden → num_classes). In the spirit of the MNIST-1D baseline CNN
    (Greydanus & Kobak, ICML 2024, arXiv 2011.14439).

    Args:
        num_classes: output width.
        in_channels: input channels.
        input_size: the length ``L``, or ``(C, L)``, >= 8; default 40. Inputs must have this length.
        channels: width of each conv layer (default 32).
        hidden: width of ``fc``, the feature dimension (default 128).
        dropout: dropout probability after ``fc`` (default 0).

    Example:
        >>> import torch
        >>> net = CNN1d(num_classes=10)
        >>> net(torch.randn(3, 1, 40)).shape, net.feature_dim
        (torch.Size([3, 10]), 128)
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | Sequence[int] | None = None,
        channels: int = 32,
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes, in_channels)
        size = parse_input_size("cnn1d", input_size, self.in_channels, spatial_dims=1, default=(40,))
        assert size is not None
        self.input_size: tuple[int, ...] = size
        channels = check_int("channels", channels, minimum=1)
        hidden = check_int("hidden", hidden, minimum=1)
        dropout = check_probability("dropout", dropout)
        length, width = size[0], self.in_channels
        for index in (1, 2, 3):
            block = nn.Sequential(nn.Conv1d(width, channels, 5, stride=2, padding=2), nn.ReLU(inplace=True))
            self.add_module(f"block{index}", block)
            length, width = (length + 2 * 2 - 5) // 2 + 1, channels
        self.fc = nn.Sequential(nn.Linear(width * length, hidden), nn.ReLU(inplace=True), *_dropout_layers(dropout))
        self.feature_dim = hidden
        self.head = nn.Linear(hidden, self.num_classes)
        self.stages = ("block1", "block2", "block3", "fc")
        self.default_manifold_layers = (INPUT, "block1", "block2")
        self.apply(init_weights)

    def features(self, x: Tensor) -> Tensor:
        """The ``hidden``-wide output of ``fc``."""
        self._check_input(x, self.input_size)
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(x.flatten(1))


class MLP(Backbone):
    """A multi-layer perceptron for tables, embeddings and regression.

    ``layer1``..``layerK``: Linear(+BatchNorm1d)+ReLU(+Dropout), one per width in ``hidden``; the last
    one's output is the features (the input itself when ``hidden`` is empty); ``head``: Linear(→
    num_classes), the output dimension for regression. Inputs ``(N, F)``, or ``(N, *input_size)``
    flattened. After Rumelhart, Hinton & Williams, Nature 1986, with optional batch normalisation
    (Ioffe & Szegedy, ICML 2015, arXiv 1502.03167) and dropout (Srivastava et al., JMLR 2014).

    Args:
        num_classes: output width.
        in_features: number of input features ``F``.
        hidden: widths of the hidden layers (default ``(256, 256)``); an int means one layer.
        dropout: dropout probability after each hidden layer (default 0).
        batch_norm: add BatchNorm1d after each hidden Linear (default False).
        input_shape: shape of one sample when it is not ``(F,)``; its product must be ``F``.

    Example:
        >>> import torch
        >>> net = MLP(num_classes=1, in_features=8, hidden=(16,))
        >>> net(torch.randn(4, 8)).shape, net.stages
        (torch.Size([4, 1]), ('layer1',))
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_features: int = 1,
        hidden: int | Sequence[int] = (256, 256),
        dropout: float = 0.0,
        batch_norm: bool = False,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_classes, in_features)
        widths = _as_widths(hidden)
        dropout = check_probability("dropout", dropout)
        if not isinstance(batch_norm, bool):
            raise MixlabTypeError(f"batch_norm must be True or False; got {batch_norm!r}")
        self.input_shape = tuple(input_shape) if input_shape is not None else (self.in_channels,)
        if flat_size(self.input_shape) != self.in_channels:
            raise MixlabValueError(
                f"mlp: input_shape {self.input_shape!r} has {flat_size(self.input_shape)} features "
                f"but in_features={self.in_channels}"
            )
        width = self.in_channels
        names = []
        for index, out in enumerate(widths, start=1):
            layers: list[nn.Module] = [nn.Linear(width, out, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers += [nn.ReLU(inplace=True), *_dropout_layers(dropout)]
            self.add_module(f"layer{index}", nn.Sequential(*layers))
            names.append(f"layer{index}")
            width = out
        self.feature_dim = width
        self.head = nn.Linear(width, self.num_classes)
        self.stages = tuple(names)
        self.default_manifold_layers = (INPUT, *self.stages[: max(1, len(self.stages) - 1)])
        self.apply(init_weights)

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer's output ``(N, hidden[-1])``."""
        if not isinstance(x, Tensor) or x.dim() < 2 or tuple(x.shape[1:]) != self.input_shape:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise MixlabValueError(
                f"mlp expects input of shape (N, {', '.join(map(str, self.input_shape))}); got {shape}"
                f" (build it with in_channels= or input_size= the number of input features)"
            )
        if x.dim() > 2:
            x = x.flatten(1)
        for name in self.stages:
            x = getattr(self, name)(x)
        return x


def _as_widths(hidden: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if isinstance(hidden, str) or not isinstance(hidden, Sequence):
        raise MixlabTypeError(f"hidden must be a tuple of layer widths (ints); got {hidden!r}")
    return tuple(check_int("hidden width", width, minimum=1) for width in hidden)


def cnn_small(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | Sequence[int] | None = None,
    *,
    dropout: float = 0.0,
) -> CNNSmall:
    """Build :class:`CNNSmall` (registry name ``"cnn_small"``).

    Example:
        >>> cnn_small(10, input_size=32).fc[0].in_features
        4096
    """
    return CNNSmall(num_classes, in_channels, input_size, dropout=dropout)


def cnn1d(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | Sequence[int] | None = None,
    *,
    channels: int = 32,
    hidden: int = 128,
    dropout: float = 0.0,
) -> CNN1d:
    """Build :class:`CNN1d` (registry name ``"cnn1d"``).

    Example:
        >>> cnn1d(10, input_size=40).fc[0].in_features
        160
    """
    return CNN1d(num_classes, in_channels, input_size, channels=channels, hidden=hidden, dropout=dropout)


def mlp(
    num_classes: int = 1,
    in_channels: int = 1,
    input_size: int | Sequence[int] | None = None,
    *,
    hidden: int | Sequence[int] = (256, 256),
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> MLP:
    """Build :class:`MLP` (registry name ``"mlp"``): ``in_channels`` is the number of input features.

    ``input_size`` may give the features instead: an int ``F`` or the shape of one
    sample (flattened); ``in_channels`` must then be left at 1 or agree with it
    (equal to ``F``, or to the first dim of the shape).

    Example:
        >>> mlp(1, in_channels=13).layer1[0].in_features
        13
    """
    check_int("in_channels", in_channels, minimum=1)
    shape: tuple[int, ...] | None = None
    if input_size is not None:
        if isinstance(input_size, bool):
            raise MixlabTypeError(f"mlp: input_size must be an int or a tuple of ints; got {input_size!r}")
        if isinstance(input_size, numbers.Integral):
            shape = (check_int("input_size", input_size, minimum=1),)
        elif isinstance(input_size, Sequence) and not isinstance(input_size, str) and len(input_size) > 0:
            shape = tuple(check_int("input_size", s, minimum=1) for s in input_size)
        else:
            raise MixlabTypeError(f"mlp: input_size must be an int or a tuple of ints; got {input_size!r}")
        features = flat_size(shape)
        if in_channels not in (1, features, shape[0]):
            raise MixlabValueError(
                f"mlp: in_channels={in_channels} does not match input_size {input_size!r} "
                f"({features} features); give matching values or only one of them"
            )
        in_channels = features
    return MLP(num_classes, in_channels, hidden=hidden, dropout=dropout, batch_norm=batch_norm, input_shape=shape)


__all__ = ["MLP", "CNN1d", "CNNSmall", "cnn1d", "cnn_small", "mlp"]
