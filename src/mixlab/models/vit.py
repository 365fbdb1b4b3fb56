"""A small Vision Transformer for CPU work, whose attention maps can be read by forward hooks.

Each block computes its attention weights explicitly (no fused kernel) and passes
them through an identity module ``blocks.<i>.attn.map``; a forward hook on it
sees the ``(N, heads, T, T)`` weights (row ``t`` holds token ``t``'s attention over
all ``T`` tokens, the class token first). The names are listed in
``attention_layers``, which attention-guided mixers such as TransMix read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mixlab.errors import MixlabValueError, check_int, check_positive, check_probability
from mixlab.models.base import INPUT, Backbone, parse_input_size

#: Patch sizes tried, in order, when none is given: the first that divides the input
#: and leaves at most this many patches per side is used (4 for 16x16, 28x28 and 32x32).
PATCH_CANDIDATES = (4, 8, 16, 32)
MAX_GRID_SIDE = 16


class Attention(nn.Module):
    """Multi-head self-attention with the attention weights exposed as the output of ``map``.

    The weights ``softmax(q k^T / sqrt(d_head))`` of shape ``(N, heads, T, T)`` pass
    through ``self.map`` (an ``nn.Identity``), so a forward hook on it can read them.
    Vaswani et al., NeurIPS 2017, arXiv 1706.03762.

    Args:
        dim: token width.
        heads: number of heads; must divide ``dim``.
        dropout: dropout on the output projection.

    Example:
        >>> attn = Attention(8, heads=2)
        >>> seen = []
        >>> _ = attn.map.register_forward_hook(lambda _m, _a, out: seen.append(out))
        >>> attn(torch.randn(3, 5, 8)).shape, seen[0].shape
        (torch.Size([3, 5, 8]), torch.Size([3, 2, 5, 5]))
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise MixlabValueError(f"vit: heads={heads} must divide dim={dim}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.map = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``(N, T, dim) -> (N, T, dim)``."""
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        weights = self.map(torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(n, t, d)
        return self.drop(self.proj(out))


class Block(nn.Module):
    """A pre-norm Transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Example:
        >>> Block(8, heads=2)(torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = max(1, round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Attention then MLP, each with a residual connection."""
        x = x + self.attn(self.norm1(x))
        return x + self.drop(self.mlp(self.norm2(x)))


class ClassToken(nn.Module):
    """Select the class token: ``(N, T, dim) -> (N, dim)``.

    Example:
        >>> ClassToken()(torch.arange(6.0).view(1, 3, 2))
        tensor([[0., 1.]])
    """

    def forward(self, x: Tensor) -> Tensor:
        """The first token of every sequence."""
        return x[:, 0]


class ViTTiny(Backbone):
    """A small Vision Transformer (ViT) for 28×28 and 32×32 images on CPU.

    ``patch_embed``: a ``patch_size``-strided convolution to ``dim`` channels, giving
    ``(H/p)·(W/p)`` patch tokens; a learned class token is prepended and a learned
    position embedding added; ``blocks.0``..``blocks.{depth-1}``: pre-norm Transformer
    blocks; a final LayerNorm; ``pool``: the class token, the ``dim``-wide features;
    ``head``: Linear(dim → num_classes). Defaults (dim 96, depth 4, 3 heads of width
    32, MLP ratio 2, patch 4: 50 tokens at 28×28) keep a training step within a few
    times that of ``cnn_small`` (about 3× on one CPU thread). Attention weights are
    computed explicitly and pass through ``blocks.<i>.attn.map``, listed in
    :attr:`attention_layers`, so hooks can read them. The init is chosen so that plain
    SGD trains it from few samples: positions start as 2-D sine-cosine codes, the class
    token at unit scale (like the patch tokens), Xavier-uniform linear layers and a
    small (std 0.02) head. Dosovitskiy et al., ICLR 2021, arXiv 2010.11929 (class token,
    learned positions, pre-norm blocks); sine-cosine start as in MAE (He et al., CVPR
    2022, arXiv 2111.06377).

    Args:
        num_classes: output width.
        in_channels: input channels (any).
        input_size: ``H``, ``(H, W)`` or ``(C, H, W)``, each >= 4; default 28×28. Inputs must have this size.
        patch_size: side of the square patches; must divide H and W. Default: the first of
            4, 8, 16, 32 that divides both and leaves at most 16 patches per side.
        dim: token width (default 96).
        depth: number of blocks (default 4).
        heads: attention heads per block; must divide ``dim`` (default 3).
        mlp_ratio: MLP hidden width over ``dim`` (default 2).
        dropout: dropout after each attention projection and MLP (default 0).

    Attributes:
        attention_layers: ``("blocks.0.attn.map", ...)``, one per block in forward order;
            each outputs the ``(N, heads, T, T)`` attention weights, the class token first.
        grid_size: ``(H/p, W/p)``, the patch grid.
        num_prefix_tokens: tokens before the patches (1, the class token).

    Example:
        >>> net = ViTTiny(num_classes=10, input_size=28)
        >>> net(torch.randn(2, 1, 28, 28)).shape, net.grid_size, net.attention_layers[-1]
        (torch.Size([2, 10]), (7, 7), 'blocks.3.attn.map')
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | Sequence[int] | None = None,
        *,
        patch_size: int | None = None,
        dim: int = 96,
        depth: int = 4,
        heads: int = 3,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes, in_channels)
        size = parse_input_size("vit_tiny", input_size, self.in_channels, spatial_dims=2, default=(28, 28), minimum=4)
        assert size is not None
        self.input_size: tuple[int, ...] = size
        self.patch_size = _patch_size(size, patch_size)
        dim = check_int("dim", dim, minimum=1)
        depth = check_int("depth", depth, minimum=1)
        heads = check_int("heads", heads, minimum=1)
        mlp_ratio = check_positive("mlp_ratio", mlp_ratio)
        dropout = check_probability("dropout", dropout)
        self.grid_size = (size[0] // self.patch_size, size[1] // self.patch_size)
        tokens = self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens
        self.patch_embed = nn.Conv2d(self.in_channels, dim, self.patch_size, stride=self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.pool = ClassToken()
        self.feature_dim = dim
        self.head = nn.Linear(dim, self.num_classes)
        block_names = tuple(f"blocks.{i}" for i in range(depth))
        self.stages = ("patch_embed", *block_names, "pool")
        self.default_manifold_layers = (INPUT, "patch_embed", *block_names[: max(1, depth // 2)])
        self.attention_layers = tuple(f"{name}.attn.map" for name in block_names)
        self._init_weights()

    def _init_weights(self) -> None:
        with torch.no_grad():  # positions start informative, so a small model learns quickly from few samples
            self.pos_embed[:, self.num_prefix_tokens :] = sincos_positions(self.grid_size, self.pos_embed.shape[-1])
        # Unit-scale like the patch tokens: LayerNorm of a tiny class token would amplify its gradient
        # (by 1 / its spread) and make SGD unstable.
        nn.init.normal_(self.cls_token, std=1.0)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The patch projection is a linear map of each flattened patch (LeCun-normal, as in ViT).
        fan_in = self.patch_embed.in_channels * self.patch_size**2
        nn.init.trunc_normal_(self.patch_embed.weight, std=1.0 / math.sqrt(fan_in))
        nn.init.zeros_(self.patch_embed.bias)
        # A small head starts near the uniform prediction, which keeps SGD stable.
        nn.init.trunc_normal_(self.head.weight, std=0.02)

    def features(self, x: Tensor) -> Tensor:
        """The class token after the last block and the final norm, ``(N, dim)``."""
        self._check_input(x, self.input_size)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.pool(self.norm(self.blocks(tokens)))


def sincos_positions(grid: tuple[int, int], dim: int) -> Tensor:
    """2-D sine-cosine position codes ``(rows * cols, dim)``: half the channels encode the row, half the column.

    Each half uses ``dim // 4`` frequencies ``1 / 10000^(k / (dim // 4))`` (sine and cosine);
    leftover channels are zero. Vaswani et al., NeurIPS 2017, arXiv 1706.03762, in 2-D as in
    MAE (He et al., CVPR 2022, arXiv 2111.06377).

    Example:
        >>> sincos_positions((2, 3), 8).shape
        torch.Size([6, 8])
    """
    rows, cols = grid
    quarter = dim // 4
    codes = torch.zeros(rows * cols, dim)
    if quarter == 0:
        return codes
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    for index, coord in enumerate((row.flatten(), col.flatten())):
        angles = coord[:, None].double() * freqs[None]
        start = 2 * quarter * index
        codes[:, start : start + quarter] = angles.sin().float()
        codes[:, start + quarter : start + 2 * quarter] = angles.cos().float()
    return codes


def _patch_size(size: tuple[int, ...], patch_size: int | None) -> int:
    """The given patch size checked against the input size, or the default for it."""
    if patch_size is not None:
        patch = check_int("patch_size", patch_size, minimum=1)
        if any(s % patch for s in size):
            raise MixlabValueError(
                f"vit_tiny: patch_size={patch} must divide the input size {size}; choose a divisor of both sides"
            )
        return patch
    for patch in PATCH_CANDIDATES:
        if all(s % patch == 0 and s // patch <= MAX_GRID_SIDE for s in size):
            return patch
    raise MixlabValueError(
        f"vit_tiny: no default patch size fits input size {size} (tried {PATCH_CANDIDATES}, at most "
        f"{MAX_GRID_SIDE} patches per side); give patch_size= a divisor of both sides"
    )


def vit_tiny(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | Sequence[int] | None = None,
    *,
    patch_size: int | None = None,
    dim: int = 96,
    depth: int = 4,
    heads: int = 3,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
) -> ViTTiny:
    """Build :class:`ViTTiny` (registry name ``"vit_tiny"``).

    Example:
        >>> vit_tiny(10, in_channels=3, input_size=32).grid_size
        (8, 8)
    """
    return ViTTiny(
        num_classes,
        in_channels,
        input_size,
        patch_size=patch_size,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=mlp_ratio,
        dropout=dropout,
    )


__all__ = ["Attention", "Block", "ClassToken", "ViTTiny", "vit_tiny"]
