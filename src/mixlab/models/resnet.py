"""CIFAR-style pre-activation residual networks: PreAct-ResNet-18 and Wide-ResNets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mixlab.errors import MixlabValueError, check_int, check_probability
from mixlab.models.base import INPUT, Backbone, init_weights, parse_input_size


class PreActBlock(nn.Module):
    """A pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU(-Dropout)-conv3x3 plus a shortcut.

    The shortcut is the identity, or a strided 1×1 convolution of the pre-activated
    input when the width or resolution changes. He et al., ECCV 2016, arXiv
    1603.05027; the dropout between the convolutions is that of Wide-ResNets
    (Zagoruyko & Komodakis, BMVC 2016, arXiv 1605.07146).

    Example:
        >>> import torch
        >>> PreActBlock(16, 32, stride=2)(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Residual branch plus shortcut."""
        out = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + shortcut


class PreActResNet(Backbone):
    """A CIFAR-style pre-activation ResNet: 3×3 stem conv (no max-pool), stages of PreAct blocks,
    final BN+ReLU, global average pooling and a linear head.

    Works on any input size (adaptive pooling). He et al., "Identity Mappings in
    Deep Residual Networks", ECCV 2016, arXiv 1603.05027.

    Args:
        num_classes: output width.
        in_channels: input channels.
        input_size: optional ``H``, ``(H, W)`` or ``(C, H, W)``, each >= 8; only checked.
        stem_channels: width of the stem convolution.
        widths: width of each stage.
        depths: number of blocks of each stage.
        strides: stride of the first block of each stage.
        dropout: dropout probability inside each block (Wide-ResNet style).

    Attributes:
        stages: ``("stem", "layer1", ..., "layerK")``.
        default_manifold_layers: ``("input", "layer1", "layer2")`` as in Verma et al., ICML 2019, arXiv 1806.05236.

    Example:
        >>> import torch
        >>> net = PreActResNet(3, in_channels=1, widths=(8, 16), depths=(1, 1), strides=(1, 2), stem_channels=8)
        >>> net(torch.randn(2, 1, 8, 8)).shape, net.stages
        (torch.Size([2, 3]), ('stem', 'layer1', 'layer2'))
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int | Sequence[int] | None = None,
        *,
        stem_channels: int = 64,
        widths: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        strides: Sequence[int] = (1, 2, 2, 2),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes, in_channels)
        name = type(self).__name__
        self.input_size = parse_input_size(name, input_size, self.in_channels, spatial_dims=2, default=None)
        if not len(widths) == len(depths) == len(strides) >= 1:
            raise MixlabValueError(
                f"{name}: widths, depths and strides must have the same length >= 1; "
                f"got {tuple(widths)!r}, {tuple(depths)!r}, {tuple(strides)!r}"
            )
        dropout = check_probability("dropout", dropout)
        width = check_int("stem_channels", stem_channels, minimum=1)
        self.stem = nn.Conv2d(self.in_channels, width, 3, padding=1, bias=False)
        names = ["stem"]
        for index, (planes, depth, stride) in enumerate(zip(widths, depths, strides, strict=True), start=1):
            planes = check_int("width", planes, minimum=1)
            blocks = []
            for block in range(check_int("depth", depth, minimum=1)):
                blocks.append(PreActBlock(width, planes, check_int("stride", stride, 1) if block == 0 else 1, dropout))
                width = planes
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            names.append(f"layer{index}")
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = width
        self.head = nn.Linear(width, self.num_classes)
        self.stages = tuple(names)
        self.default_manifold_layers = (INPUT, *self.stages[1:3])
        self.apply(init_weights)

    def features(self, x: Tensor) -> Tensor:
        """Globally pooled ``(N, feature_dim)`` output of the final BN+ReLU."""
        self._check_input(x, ndim=4)
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.pool(torch.relu(self.bn(x))).flatten(1)


class WideResNet(PreActResNet):
    """Wide-ResNet WRN-``depth``-``widen_factor``: a 16-wide stem and 3 stages of ``(depth - 4) / 6``
    pre-activation blocks of widths 16k, 32k, 64k (strides 1, 2, 2), with dropout between the convolutions.

    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, arXiv 1605.07146.

    Args:
        num_classes: output width.
        in_channels: input channels.
        input_size: optional ``H``, ``(H, W)`` or ``(C, H, W)``, each >= 8; only checked.
        depth: total depth, with ``(depth - 4) % 6 == 0`` (default 28).
        widen_factor: the width multiplier k (default 10).
        dropout: dropout probability inside each block (default 0).

    Example:
        >>> import torch
        >>> net = WideResNet(10, depth=10, widen_factor=1)
        >>> net(torch.randn(2, 3, 8, 8)).shape, net.feature_dim
        (torch.Size([2, 10]), 64)
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int | Sequence[int] | None = None,
        *,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ) -> None:
        depth = check_int("depth", depth, minimum=10)
        if (depth - 4) % 6 != 0:
            raise MixlabValueError(
                f"wide-resnet depth must satisfy (depth - 4) % 6 == 0 (10, 16, 22, 28, 40, ...); got {depth}"
            )
        k = check_int("widen_factor", widen_factor, minimum=1)
        n = (depth - 4) // 6
        super().__init__(
            num_classes,
            in_channels,
            input_size,
            stem_channels=16,
            widths=(16 * k, 32 * k, 64 * k),
            depths=(n, n, n),
            strides=(1, 2, 2),
            dropout=dropout,
        )
        self.depth, self.widen_factor = depth, k


def preact_resnet18(
    num_classes: int = 10, in_channels: int = 3, input_size: int | Sequence[int] | None = None
) -> PreActResNet:
    """PreAct-ResNet-18 for CIFAR-sized inputs (registry name ``"preact_resnet18"``).

    He et al., ECCV 2016, arXiv 1603.05027: stem conv 64, stages of 2 blocks of
    widths 64, 128, 256, 512 (strides 1, 2, 2, 2), feature_dim 512.

    Example:
        >>> preact_resnet18(10).feature_dim
        512
    """
    return PreActResNet(num_classes, in_channels, input_size)


def wrn_28_k(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int | Sequence[int] | None = None,
    *,
    widen_factor: int = 10,
    dropout: float = 0.0,
    depth: int = 28,
) -> WideResNet:
    """Wide-ResNet-28-k (registry name ``"wrn_28_k"``; ``"wrn_28_10"``, ``"wrn_16_8"``... set depth and k).

    Zagoruyko & Komodakis, BMVC 2016, arXiv 1605.07146.

    Example:
        >>> wrn_28_k(10, widen_factor=2).feature_dim
        128
    """
    return WideResNet(num_classes, in_channels, input_size, depth=depth, widen_factor=widen_factor, dropout=dropout)


__all__ = ["PreActBlock", "PreActResNet", "WideResNet", "preact_resnet18", "wrn_28_k"]
