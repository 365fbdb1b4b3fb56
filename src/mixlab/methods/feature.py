"""Feature-guided mixers: AttentiveMix (paste the partner's most attended cells) and AlignMix (align, then mix).

Both read a feature map ``(N, C, *grid)`` of a spatial layer of a network:

- :class:`AttentiveMix` ranks the cells of the partner's map (pooled to the
  paper's 7x7 on images) by their channel mean and pastes the top ones into
  ``x_i`` at the same places (a mask on the input);
- :class:`AlignMix` aligns the two maps by entropic optimal transport
  (:func:`sinkhorn_plan`) inside the forward pass and interpolates the aligned maps.

When no layer is given, :func:`default_spatial_layer` picks the model's last
stage whose feature grid is still large enough: at least 7 cells per side for
AttentiveMix (the paper's 7x7; ``block2`` of ``cnn_small`` on 28x28 inputs,
``layer3`` of ``preact_resnet18`` on 32x32 inputs), at least 2 for AlignMix
(the authors align the encoder's last stage; ``layer4``, 4x4, of
``preact_resnet18`` on 32x32 inputs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mixlab.batch import MixedBatch
from mixlab.errors import (
    MixlabTypeError,
    MixlabValueError,
    check_choice,
    check_int,
    check_non_negative,
    check_positive,
    check_probability,
)
from mixlab.methods.base import Mixer, MixParams, blend, interpolation_params, label_weight
from mixlab.methods.context import FEATURES, INPUT, MODEL, MixerNeeds, find_modules, layer_outputs, unwrap
from mixlab.methods.manifold import check_layer_names

#: The smallest feature grid (cells per side) a default layer may have: AttentiveMix's 7x7.
MIN_GRID = 7
#: Spatial size assumed for probing a model that does not record its input size (CIFAR's 32).
PROBE_SIZE = 32
DIRECTIONS = ("random", "to_sample", "to_partner")


# ------------------------------------------------------------------ layers


def default_spatial_layer(model: nn.Module, *, min_grid: int = MIN_GRID, method: str = "this mixer") -> str:
    """The last of ``model.stages`` whose output grid is at least ``min_grid`` per side.

    The stages' output shapes are found by one forward of two zero samples of
    the model's ``input_size`` (32 per side for 2-D models that do not record
    it), without gradient and leaving the buffers as they were. When no stage
    is that large, the stage with the largest grid is taken.

    Args:
        model: a mixlab ``Backbone`` (anything with ``stages`` and ``in_channels``), maybe DDP-wrapped.
        min_grid: the smallest acceptable number of cells along each spatial dim.
        method: the mixer's name, for messages.

    Example:
        >>> from mixlab.models import create_model
        >>> default_spatial_layer(create_model("cnn_small", num_classes=10, input_size=28))
        'block2'
        >>> default_spatial_layer(create_model("cnn_small", num_classes=10, input_size=16))
        'block1'
        >>> default_spatial_layer(create_model("cnn_small", num_classes=10, input_size=16), min_grid=2)
        'block2'
    """
    module = unwrap(model)
    stages = tuple(getattr(module, "stages", ()))
    channels = getattr(module, "in_channels", None)
    if not stages or not isinstance(channels, int):
        raise MixlabValueError(
            f"{method} cannot pick a default layer: {type(module).__name__} has no `stages` and `in_channels` "
            "(mixlab models have them); give the layer name, e.g. layer='layer3'"
        )
    grids = _stage_grids(module, stages, channels, method)
    spatial = [name for name in stages if grids[name]]
    if not spatial:
        raise MixlabValueError(
            f"{method}: none of the stages {list(stages)} of {type(module).__name__} gives a spatial feature "
            "map (N, C, *grid); give a convolutional layer's name"
        )
    large = [name for name in spatial if min(grids[name]) >= min_grid]
    if large:
        return large[-1]
    return max(spatial, key=lambda name: math.prod(grids[name]))


def _stage_grids(module: nn.Module, stages: tuple[str, ...], channels: int, method: str) -> dict[str, tuple[int, ...]]:
    """Each stage's spatial output size (empty for non-spatial outputs), from one probe forward."""
    size = getattr(module, "input_size", None)
    size = tuple(size) if size else (PROBE_SIZE, PROBE_SIZE)
    parameter = next(module.parameters(), None)
    like = parameter if parameter is not None and parameter.is_floating_point() else torch.zeros(())
    probe = torch.zeros(2, channels, *size, device=like.device, dtype=like.dtype)
    try:
        outputs = layer_outputs(module, probe, stages)
    except Exception as err:  # the model refused the probe: its input size is unknown here
        raise MixlabValueError(
            f"{method} could not probe {type(module).__name__} with an input of shape {tuple(probe.shape)} "
            f"to pick a default layer ({err}); give the layer name"
        ) from err
    return {
        name: tuple(out.shape[2:]) if isinstance(out, Tensor) and out.ndim >= 3 else () for name, out in outputs.items()
    }


def _resolve_layers(model: nn.Module, names: Sequence[str], method: str) -> tuple[str, ...]:
    """``names`` as module names of the bare model (DDP's ``module.`` prefix dropped); unknown ones raise.

    The error (``UnknownNameError``) lists the model's modules. Bare names work
    on the DDP-wrapped model too (:func:`~mixlab.methods.context.find_modules`
    tries the prefix), so they are what the mixers keep.
    """
    if not isinstance(model, nn.Module):
        raise MixlabTypeError(f"{method} needs an nn.Module as model; got {type(model).__name__}")
    bare = unwrap(model)
    known = dict(bare.named_modules())
    resolved = []
    for name in names:
        if name != INPUT and name not in known and name.startswith("module.") and name[7:] in known:
            name = name[7:]
        resolved.append(name)
    find_modules(bare, [name for name in resolved if name != INPUT], what=f"layer for {method}")
    return tuple(resolved)


def _as_grid(grid: int | Sequence[int] | str | None) -> tuple[int, ...] | str | None:
    if grid is None:
        return None
    if isinstance(grid, str):
        return check_choice("attentivemix grid", grid, GRID_CHOICES)
    if isinstance(grid, Sequence):
        sizes = tuple(check_int("grid", g, minimum=1) for g in grid)
        if not sizes:
            raise MixlabValueError("grid must be an int or a non-empty tuple of ints; got ()")
        return sizes
    return (check_int("grid", grid, minimum=1),)


# ------------------------------------------------------------------ AttentiveMix

#: AttentiveMix's grid in the paper: the 7x7 final feature map of a ResNet-50 on 224x224 images.
PAPER_GRID = 7
GRID_CHOICES = ("paper",)


class AttentiveMix(Mixer):
    """AttentiveMix (Attentive CutMix): paste the partner's ``top_k`` most attended grid cells into ``x_i``.

    A feature map ``(N, C, *grid)`` of each image is averaged over channels into
    an attention map, pooled to ``grid`` cells; the ``top_k`` cells of the
    partner's map (ties to the earlier cell) are upsampled by nearest neighbour
    to the input's size and pasted from ``x_j`` into ``x_i`` at the same places.
    ``lam`` is the exact share of ``x_i`` kept and ``mb.mask`` the binary mask.
    Walawalkar, Shen, Liu and Savvides, ICASSP 2020, arXiv 2003.13048.

    The paper takes the 7x7 final feature map of an ImageNet-pretrained, frozen
    ResNet-50 (on 224x224 images), pastes its top 6 cells (each a 32x32 patch)
    and weights the labels by area (6/49 to the partner). The defaults follow
    it (``top_k=6``, a 7x7 grid on images) except for the network: no
    pretrained weights can be downloaded here, so unless ``feature_model`` is
    given the attention comes from the model being trained, whose maps carry
    little meaning early in training; the mixer then warns once
    (``UserWarning``). No code by the authors is public (the often cited
    xden2331/attentive_cutmix is a later third-party reproduction).

    The features come from one of, in this order:

    - ``feature_model``: a frozen network (e.g. pretrained; its parameters'
      ``requires_grad`` is switched off) that the mixer runs itself on ``x``,
      in eval mode and without gradient, as in the paper; the mixer then needs
      nothing from the training loop (its ``needs`` are empty). It must be on
      ``x``'s device (:meth:`to` moves it). For the paper's setting on CIFAR,
      let it see 224x224 images, e.g.
      ``feature_model=nn.Sequential(nn.Upsample(size=224, mode="bilinear"), resnet50)``
      with ``layer="1.layer4"`` (torchvision's ResNet-50 with ImageNet weights, in eval mode);
    - ``context["features"][layer]``: the model being trained, on the clean
      batch, computed once per step by :class:`~mixlab.methods.context.MixContext`
      (``needs.features == (layer,)``);
    - ``context["model"]`` or the constructor's ``model``: the mixer runs it up
      to the layer itself (no gradient, buffers untouched).

    Args:
        layer: the module whose output is the feature map (a name in
            ``named_modules()`` of the network that gives the features);
            default :func:`default_spatial_layer` of ``feature_model`` or ``model``
            (its last stage with a grid of at least 7 cells per side).
        model: the model being trained, to check ``layer`` and pick the default
            (the engine passes it).
        feature_model: a frozen feature extractor to use instead of the trained model.
        top_k: the number of cells pasted (default 6, the paper's); ``None``
            draws ``lam`` as usual and pastes ``round((1 - lam) * cells)`` cells.
        grid: the attention map is average-pooled to this many cells per dim
            (an int or one per spatial dim); ``"paper"`` (default): 7x7 on
            images, the feature map's own grid on 1-D and 3-D inputs; ``None``:
            the feature map's own grid. A map smaller than ``grid`` is spread
            over it by the same adaptive pooling.
        **kwargs: base :class:`~mixlab.methods.base.Mixer` options (``alpha`` for ``top_k=None``, ``p``, ...).

    Example:
        >>> import torch
        >>> extractor = torch.nn.Sequential(torch.nn.AvgPool2d(4))  # a 4x4 grid on 16x16 inputs
        >>> mixer = AttentiveMix(layer="0", feature_model=extractor, top_k=4, grid=None)
        >>> x, y = torch.rand(3, 1, 16, 16), torch.arange(3)
        >>> mb = mixer(x, y, generator=torch.Generator().manual_seed(0))
        >>> mb.lam.tolist(), mixer.needs.anything
        ([0.75, 0.75, 0.75], False)
    """

    name = "attentivemix"
    spatial = True
    default_alpha = 1.0

    def __init__(
        self,
        *,
        layer: str | None = None,
        model: nn.Module | None = None,
        feature_model: nn.Module | None = None,
        top_k: int | None = 6,
        grid: int | Sequence[int] | str | None = "paper",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.top_k = None if top_k is None else check_int("top_k", top_k, minimum=1)
        self.grid = _as_grid(grid)
        if feature_model is not None and not isinstance(feature_model, nn.Module):
            raise MixlabTypeError(f"feature_model must be an nn.Module; got {type(feature_model).__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise MixlabTypeError(f"model must be an nn.Module; got {type(model).__name__}")
        self.model = model
        self.feature_model = feature_model
        if feature_model is not None:
            feature_model.requires_grad_(False)
        if layer is not None and (not isinstance(layer, str) or layer == INPUT):
            raise MixlabValueError(f"layer must be the name of a module giving a feature map; got {layer!r}")
        self.layer = layer
        self._warned_trained_source = False
        source = feature_model if feature_model is not None else model
        if source is not None:
            self.bind_model(source)

    def bind_model(self, model: nn.Module) -> None:
        """Pick the last spatial stage of ``model`` (or of ``feature_model``) as ``layer`` if none was given,
        and check the name against it.

        Example:
            >>> from mixlab.models import create_model
            >>> mixer = AttentiveMix()
            >>> mixer.bind_model(create_model("preact_resnet18", num_classes=10))
            >>> mixer.layer
            'layer3'
        """
        source = self.feature_model if self.feature_model is not None else model
        if self.layer is None:
            self.layer = default_spatial_layer(source, method=self.name)
        (self.layer,) = _resolve_layers(source, [self.layer], self.name)

    @property
    def needs(self) -> MixerNeeds:
        """The clean-batch output of ``layer`` from the trained model; nothing when a ``feature_model`` is given.

        Example:
            >>> AttentiveMix(layer="block2").needs.features
            ('block2',)
        """
        if self.feature_model is not None:
            return MixerNeeds()
        if self.layer is None:
            raise MixlabValueError(
                "attentivemix needs to know which layer gives the feature map: pass layer='<module name>', "
                "or model=<the model> (or feature_model=<a frozen network>) to pick the last spatial stage, "
                "or build its context with MixContext(mixer, model)"
            )
        return MixerNeeds(features=(self.layer,))

    def _check_context(self, context: dict[str, Any]) -> None:
        if self.layer is None and context.get(MODEL) is not None:
            self.bind_model(unwrap(context[MODEL]))
        if self.feature_model is not None or self.layer in context.get(FEATURES, {}):
            return
        model = context.get(MODEL, self.model)
        if self.layer is None:
            self.needs  # raises: says how to give the layer or the model  # noqa: B018
        if model is None:
            raise MixlabValueError(
                f"attentivemix needs the feature map of layer {self.layer!r}: pass "
                "context=MixContext(mixer, model)(x, y) (mixlab.methods.context.MixContext), or model= or "
                "feature_model= to the constructor"
            )
        (self.layer,) = _resolve_layers(model, [self.layer], self.name)

    def _features(self, x: Tensor, context: dict[str, Any]) -> Tensor:
        """The feature map of ``layer`` for the clean batch, from the first available source."""
        if self.feature_model is not None:
            return layer_outputs(unwrap(self.feature_model), x, [self.layer])[self.layer]
        self._warn_trained_source()
        features = context.get(FEATURES, {})
        if self.layer in features:
            return features[self.layer]
        model = context.get(MODEL, self.model)
        return layer_outputs(unwrap(model), x, [self.layer])[self.layer]

    def _warn_trained_source(self) -> None:
        """Say once per mixer that the attention comes from the model being trained, not the paper's network."""
        if self._warned_trained_source:
            return
        self._warned_trained_source = True
        warnings.warn(
            f"attentivemix takes its attention from layer {self.layer!r} of the model being trained, whose "
            "maps mean little early in training; the paper uses a frozen ImageNet-pretrained ResNet-50. "
            "Pass feature_model=<a frozen, pretrained network> (and its layer=) to follow the paper",
            UserWarning,
            stacklevel=6,
        )

    def attention(self, features: Tensor, spatial_dims: int) -> Tensor:
        """The attention map ``(N, *grid)``: the channel mean of ``features``, pooled to ``grid`` if set.

        Example:
            >>> AttentiveMix(layer="f").attention(torch.ones(2, 3, 14, 14), 2).shape
            torch.Size([2, 7, 7])
        """
        if not isinstance(features, Tensor) or features.ndim != spatial_dims + 2:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise MixlabValueError(
                f"attentivemix: layer {self.layer!r} gives {shape}; it needs a feature map (N, C, *grid) with "
                f"{spatial_dims} spatial dims like the input; choose a convolutional layer"
            )
        attention = features.detach().float().mean(dim=1)
        grid = self._pooled_grid(spatial_dims)
        if grid is not None:
            pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[spatial_dims - 1]
            attention = pool(attention.unsqueeze(1), grid).squeeze(1)
        return attention

    def _pooled_grid(self, spatial_dims: int) -> tuple[int, ...] | None:
        """The grid the attention is pooled to for inputs with ``spatial_dims`` dims (``None``: its own)."""
        if self.grid is None:
            return None
        if self.grid == GRID_CHOICES[0]:
            return (PAPER_GRID, PAPER_GRID) if spatial_dims == 2 else None
        grid = self.grid * spatial_dims if len(self.grid) == 1 else self.grid
        if len(grid) != spatial_dims:
            raise MixlabValueError(f"grid must give 1 or {spatial_dims} sizes; got {self.grid!r}")
        return tuple(grid)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        n, spatial = x.shape[0], x.shape[2:]
        attention = self.attention(self._features(x, context), len(spatial)).index_select(0, perm)
        cells = math.prod(attention.shape[1:])
        counts = self._cell_counts(lam, n, cells)
        pasted = top_cells(attention, torch.from_numpy(counts).to(attention.device))
        keep = (~pasted).unsqueeze(1).to(torch.float32)
        weight = F.interpolate(keep, size=tuple(spatial), mode="nearest").to(x.dtype)
        return MixParams(perm=perm, lam=label_weight(weight, n), weight=weight, extra={"pasted_cells": pasted})

    def _cell_counts(self, lam: np.ndarray, n: int, cells: int) -> np.ndarray:
        """How many cells each sample takes from its partner: ``top_k``, or ``(1 - lam)`` of the cells."""
        lam = np.broadcast_to(lam, (n,))
        if self.top_k is None:
            counts = np.rint((1.0 - lam) * cells).astype(np.int64)
        elif self.top_k > cells:
            raise MixlabValueError(
                f"attentivemix: top_k={self.top_k} but the attention grid of layer {self.layer!r} has only "
                f"{cells} cells; choose a smaller top_k, a larger grid or an earlier (larger) layer"
            )
        else:
            counts = np.full(n, self.top_k, dtype=np.int64)
        if self.p < 1.0 and self.lam_mode == "sample":
            counts = np.where(lam >= 1.0, 0, counts)  # samples the p draw left unmixed
        return counts

    def to(self, device: torch.device | str) -> AttentiveMix:
        """Move the ``feature_model`` (if any) to ``device``; returns the mixer.

        Example:
            >>> AttentiveMix(layer="f").to("cpu").layer
            'f'
        """
        if self.feature_model is not None:
            self.feature_model.to(device)
        return self

    def __repr__(self) -> str:
        return f"AttentiveMix(layer={self.layer!r}, top_k={self.top_k}, grid={self.grid!r}, p={self.p})"


def top_cells(attention: Tensor, counts: Tensor) -> Tensor:
    """A boolean ``(N, *grid)`` map of each sample's ``counts[i]`` highest cells (ties to the earlier cell).

    Example:
        >>> top_cells(torch.tensor([[0.1, 0.9, 0.5, 0.2]]), torch.tensor([2])).tolist()
        [[False, True, True, False]]
    """
    flat = attention.flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return (ranks < counts.view(-1, 1)).view(attention.shape)


# ------------------------------------------------------------------ AlignMix

#: AlignMix's alignment costs: the authors' raw squared distances, or the same divided by their mean.
COSTS = ("squared", "normalised")
#: AlignMix's default layer has at least this many cells per side (a 1x1 map has nothing to align).
ALIGN_MIN_GRID = 2


@torch.no_grad()
def sinkhorn_plan(cost: Tensor, epsilon: float = 0.1, iterations: int = 100, stop_threshold: float = 0.1) -> Tensor:
    """Entropic optimal transport plans ``(B, n, m)`` with uniform marginals ``1/n`` (rows) and ``1/m`` (columns).

    Solves ``min <P, C> - epsilon * H(P)`` for every cost matrix of the batch
    at once by Sinkhorn-Knopp, as AlignMix's authors run it. From zero
    potentials, each iteration updates the row potentials ``f``, then the
    column potentials ``g`` (both in the cost's units)::

        f_i = epsilon * (log(1/n) - logsumexp_j((g_j - C_ij) / epsilon))
        g_j = epsilon * (log(1/m) - logsumexp_i((f_i - C_ij) / epsilon))

    and the plan is ``exp((f_i + g_j - C_ij) / epsilon)``. The iterations stop
    early once the batch mean of ``sum_i |f_i - f_i(previous)|`` is below
    ``stop_threshold`` (the authors' rule; ``0`` runs them all). The last step
    fits the columns exactly; the rows converge with the iterations.

    The same iterations run as cheap matrix-vector scalings of the current
    plan, whose factors are absorbed into the potentials every few steps
    (Schmitzer, SIAM J. Sci. Comput. 2019, arXiv 1610.06519), as long as no
    row or column sum of the plan comes near float32's underflow; otherwise
    (small ``epsilon`` against the costs) an iteration runs in the log domain,
    which cannot under- or overflow. Float32 (also under autocast), no
    gradient; one host sync per iteration on an accelerator. Cuturi, NeurIPS
    2013, arXiv 1306.0895; Peyré and Cuturi, "Computational Optimal Transport", 2019, Remark 4.23.

    Args:
        cost: ``(B, n, m)`` non-negative costs.
        epsilon: entropic regularisation (> 0), in the cost's units.
        iterations: the most Sinkhorn iterations (row and column update each), >= 1.
        stop_threshold: stop when the row potentials move less than this (>= 0, cost units).

    Example:
        >>> plan = sinkhorn_plan(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), epsilon=0.01)
        >>> plan.sum(dim=2), plan.argmax(dim=2)
        (tensor([[0.5000, 0.5000]]), tensor([[0, 1]]))
    """
    epsilon = check_positive("epsilon", epsilon)
    iterations = check_int("iterations", iterations, minimum=1)
    stop_threshold = check_non_negative("stop_threshold", stop_threshold)
    if cost.ndim != 3:
        raise MixlabValueError(f"cost must have shape (B, n, m); got {tuple(cost.shape)}")
    with torch.autocast(cost.device.type, enabled=False):
        scaled = cost.detach().float() / epsilon
        batch, n, m = scaled.shape
        # The potentials f, g above, kept in units of epsilon (divided by it), as is the stopping limit.
        state = _SinkhornState(scaled, scaled.new_zeros(batch, n, 1), scaled.new_zeros(batch, 1, m))
        limit = stop_threshold / epsilon
        while state.done < iterations and not state.stopped:
            if not state.scaling_steps(min(_ABSORB_EVERY, iterations - state.done), limit):
                state.log_step(limit)
        return _exp_normal(state.f + state.g - scaled)


#: Scaling steps between absorptions of the factors into the potentials.
_ABSORB_EVERY = 10
#: The smallest row or column sum of the kernel a scaling step accepts: the entries raised to exp(-87)
#: (float32's smallest normal numbers, see _exp_normal) then add under 1e-12 of every sum.
_SUM_FLOOR = 1e-25
#: exp(-87) is just above float32's smallest normal number (1.2e-38).
_NORMAL_EXP = 87.0


class _SinkhornState:
    """Sinkhorn's potentials ``f (B, n, 1)``, ``g (B, 1, m)`` (units of epsilon) on ``scaled = C / epsilon``."""

    def __init__(self, scaled: Tensor, f: Tensor, g: Tensor):
        self.scaled, self.f, self.g = scaled, f, g
        self.log_a, self.log_b = -math.log(scaled.shape[1]), -math.log(scaled.shape[2])
        self.done, self.stopped = 0, False

    def log_step(self, limit: float) -> None:
        """One iteration in the log domain."""
        previous = self.f
        self.f = self.log_a - _log_sum_exp(self.g - self.scaled, dim=2)
        self.g = self.log_b - _log_sum_exp(self.f - self.scaled, dim=1)
        self.done += 1
        self.stopped = limit > 0 and float((self.f - previous).abs().sum(dim=(1, 2)).mean()) < limit

    def scaling_steps(self, steps: int, limit: float) -> int:
        """Up to ``steps`` iterations as scalings of the plan ``exp(f + g - C / epsilon)``; how many were taken.

        A step whose row or column sums fall below the floor is not taken (none at all: 0).
        """
        kernel = _exp_normal(self.f + self.g - self.scaled)
        u, v = torch.ones_like(self.f), torch.ones_like(self.g)  # the factors: f + log u, g + log v
        a, b = 1.0 / self.scaled.shape[1], 1.0 / self.scaled.shape[2]
        taken = 0
        for _ in range(steps):
            # Products and sums rather than bmm: batched matrix-vector products of small matrices are slower.
            rows = (kernel * v).sum(dim=2, keepdim=True)
            new_u = a / rows
            columns = (kernel * new_u).sum(dim=1, keepdim=True)
            moved = (new_u / u).log_().abs_().sum(dim=(1, 2)).mean()
            lowest = torch.minimum(rows.amin(), columns.amin())
            moved, lowest = torch.stack([moved, lowest]).tolist()  # one host sync for both tests
            if not lowest >= _SUM_FLOOR:  # also NaN
                break
            u, v = new_u, b / columns
            taken += 1
            if limit > 0 and moved < limit:
                self.stopped = True
                break
        if taken:
            self.f = self.f + u.log()
            self.g = self.g + v.log()
            self.done += taken
        return taken


def _exp_normal(values: Tensor) -> Tensor:
    """``exp(values)`` in place, raised to exp(-87) (float32's smallest normal numbers) where it would be lower.

    Denormal results are slow on CPUs; the raised entries add under 1e-12 of any sum a scaling step accepts.
    """
    return values.clamp_min_(-_NORMAL_EXP).exp_()


#: Terms below exp(-80) of a row's largest are raised to it: float32 denormals (slow on CPUs) are never
#: formed, and the sum changes by less than n * exp(-80) of itself, far below float32's resolution.
_EXP_FLOOR = 80.0


def _log_sum_exp(values: Tensor, dim: int) -> Tensor:
    """``logsumexp`` over ``dim`` (kept), computed in place on ``values``, without denormal intermediates."""
    peak = values.amax(dim=dim, keepdim=True)
    return values.sub_(peak).clamp_min_(-_EXP_FLOOR).exp_().sum(dim=dim, keepdim=True).log_().add_(peak)


def alignment_cost(features: Tensor, partner: Tensor, cost: str = "squared") -> Tensor:
    """Squared Euclidean distances ``(B, n, m)`` between the position vectors ``(B, n, C)`` and ``(B, m, C)``.

    ``cost="squared"`` gives them raw, as the AlignMix authors do;
    ``"normalised"`` divides each matrix by its mean, so that a plan's
    ``epsilon`` is relative to the typical cost and does not drift with the
    scale of the features during training. Both maps are first centred on the
    first one's mean vector, which leaves the distances unchanged and keeps
    float32 cancellation small. Float32, no gradient.

    Example:
        >>> alignment_cost(torch.tensor([[[0.0], [2.0]]]), torch.tensor([[[0.0], [1.0]]]))
        tensor([[[0., 1.],
                 [4., 1.]]])
    """
    check_choice("alignmix cost", cost, COSTS)
    with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
        a, b = features.detach().float(), partner.detach().float()
        centre = a.mean(dim=1, keepdim=True)
        a, b = a - centre, b - centre
        squared_a = a.square().sum(dim=2, keepdim=True)
        squared_b = b.square().sum(dim=2).unsqueeze(1)
        distances = torch.baddbmm(squared_a + squared_b, a, b.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)
        if cost == "normalised":
            distances = distances / distances.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        return distances


def align_and_mix(
    features: Tensor,
    perm: Tensor,
    lam: Tensor,
    to_partner: Tensor | None = None,
    *,
    epsilon: float = 0.1,
    iterations: int = 100,
    stop_threshold: float = 0.1,
    cost: str = "squared",
    exact_marginals: bool = False,
) -> Tensor:
    """AlignMix of feature maps ``(N, C, *grid)``: align each map with its partner's, then interpolate.

    With ``A = h_i`` and ``A' = h_perm[i]`` as ``C x r`` matrices of the ``r``
    position vectors, ``P`` the entropic OT plan between their positions
    (:func:`sinkhorn_plan` on :func:`alignment_cost`, no gradient; rows are
    ``A``'s positions) and ``R = r P`` the assignment, the result is
    ``lam * A + (1 - lam) * A' R^T`` (the partner aligned to ``x_i``'s
    geometry), or where ``to_partner`` is set ``lam * A R + (1 - lam) * A'``
    (``x_i`` aligned to the partner's geometry). ``R`` is used as the finite
    iterations leave it (the authors' code): its columns sum to 1, its rows
    nearly; ``exact_marginals`` rescales the rows (resp. columns) used to sum
    to exactly 1, so every aligned vector is a convex combination. Gradients
    flow through both maps.
    Venkataramanan, Kijak, Amsaleg and Avrithis, CVPR 2022, arXiv 2103.15375, Sec. 3.

    Args:
        features: ``(N, C, *grid)`` feature maps.
        perm: ``(N,)`` partner indices.
        lam: ``(N,)`` weights of ``h_i``'s content.
        to_partner: ``(N,)`` bool, which samples align ``h_i`` to the partner; default none.
        epsilon: entropic regularisation of the plan, in the cost's units.
        iterations: the most Sinkhorn iterations.
        stop_threshold: Sinkhorn's early-stopping threshold (see :func:`sinkhorn_plan`).
        cost: ``"squared"`` or ``"normalised"`` (see :func:`alignment_cost`).
        exact_marginals: rescale ``R``'s rows (resp. columns) to sum to exactly 1.

    Example:
        >>> h = torch.randn(2, 3, 2, 2)
        >>> mixed = align_and_mix(h, torch.tensor([1, 0]), torch.tensor([0.5, 0.5]))
        >>> mixed.shape, torch.equal(align_and_mix(h, torch.tensor([1, 0]), torch.ones(2)), h)
        (torch.Size([2, 3, 2, 2]), True)
    """
    n, channels = features.shape[:2]
    grid = features.shape[2:]
    positions = math.prod(grid)
    compute = torch.promote_types(features.dtype, torch.float32)
    # (N, r, C): a view for channels_last maps, the layout the engine uses on CPU.
    own = features.movedim(1, -1).reshape(n, positions, channels).to(compute)
    partner = own.index_select(0, perm)
    plan = sinkhorn_plan(alignment_cost(own, partner, cost), epsilon, iterations, stop_threshold)
    weight = lam.to(device=features.device, dtype=compute).view(n, 1, 1)
    flags = torch.zeros(n, dtype=torch.bool) if to_partner is None else to_partner.cpu()
    with torch.autocast(features.device.type, enabled=False):
        mixed = None
        if not bool(flags.all()):  # partner aligned to the sample: lam * A + (1 - lam) * A' R^T
            rows = _assignment(plan, positions, exact_marginals, dim=2).to(compute)
            mixed = torch.lerp(torch.bmm(rows, partner), own, weight)
        if bool(flags.any()):  # sample aligned to the partner: lam * A R + (1 - lam) * A'
            columns = _assignment(plan, positions, exact_marginals, dim=1).to(compute)
            other = torch.lerp(partner, torch.bmm(columns.transpose(1, 2), own), weight)
            mask = flags.to(features.device).view(n, 1, 1)
            mixed = other if mixed is None else torch.where(mask, other, mixed)
    assert mixed is not None
    return mixed.to(features.dtype).reshape(n, *grid, channels).movedim(-1, 1)


def _assignment(plan: Tensor, positions: int, exact_marginals: bool, dim: int) -> Tensor:
    """``R = r P``, or ``P`` with its sums along ``dim`` made exactly 1."""
    if exact_marginals:
        return plan / plan.sum(dim=dim, keepdim=True).clamp_min(_FLOAT_TINY)
    return plan * positions


_FLOAT_TINY = torch.finfo(torch.float32).tiny


class AlignMix(Mixer):
    """AlignMix: align the feature maps of each pair by optimal transport, interpolate them, finish the forward.

    Each batch is mixed, with probability ``input_mix_prob``, by plain mixup
    of the inputs; otherwise, at a layer drawn from ``layers``, a forward hook
    replaces the output ``h`` by :func:`align_and_mix` of ``h`` and its
    partners' ``h[perm]``: each map's ``H x W`` position vectors are matched
    to the partner's by an entropic optimal-transport plan (batched Sinkhorn
    over the whole batch on the device, float32), the matched features are
    interpolated with ``lam``, and the model continues from there, as in
    Manifold Mixup. The label weight is ``lam``. Run the model with
    ``mb.forward(model)`` (``mb.inputs`` is ``x`` on aligned batches); works
    through DDP. Venkataramanan, Kijak, Amsaleg and Avrithis, CVPR 2022, arXiv 2103.15375.

    The defaults are the authors' CIFAR configuration (shashankvkt/AlignMixup_CVPR22,
    ``cifar10_100/models/resnet18_classifier.py`` and ``utils/OT.py``, which gave
    the published numbers): input mixup or aligned mixing with equal chance per
    batch, alignment at the encoder's last spatial stage (4x4 on CIFAR),
    raw squared Euclidean cost, ``epsilon=0.1`` in the cost's units, at most
    100 iterations stopped early at their threshold 0.1, ``R = r P`` unrescaled,
    one direction drawn per batch, ``lam ~ Beta(2, 2)``.

    Args:
        layers: candidate module names (and/or ``"input"``), one drawn per aligned
            batch; default the model's last spatial stage
            (:func:`default_spatial_layer` with at least 2 cells per side):
            ``layer4`` (4x4) of a 32x32 ``preact_resnet18``, ``layer3`` (8x8)
            of a ``wrn_28_k``, ``block2`` of ``cnn_small``.
        model: the model, to check the names and pick the default (the engine
            passes it); may instead come per call as ``context={"model": model}``.
        input_mix_prob: probability per batch of plain input mixup instead of
            aligned mixing (default 0.5, the authors'; 0 always aligns).
        epsilon: entropic regularisation, in the cost's units (default 0.1, the
            authors'; relative to the mean cost with ``cost="normalised"``).
        sinkhorn_iters: the most Sinkhorn iterations (default 100, the authors').
        stop_threshold: Sinkhorn stops once the batch mean of the row potentials'
            total change is below this, in cost units (default 0.1, the authors'; 0 runs every iteration).
        cost: ``"squared"`` (default, the authors' raw squared distances) or
            ``"normalised"`` (divided by their mean per pair, so that ``epsilon``
            does not drift with the features' scale during training).
        direction: ``"random"`` (the paper: each batch, or each sample in sample
            mode, aligns either way with equal chance), ``"to_sample"``
            (``lam * A + (1 - lam) * A' R^T``: ``x_i``'s geometry) or ``"to_partner"``
            (``lam * A R + (1 - lam) * A'``: the partner's geometry).
        exact_marginals: rescale the assignment so every aligned vector is a
            convex combination (default False: ``R = r P`` as the authors use it).
        **kwargs: base :class:`~mixlab.methods.base.Mixer` options (default ``alpha=2``, the authors').

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> mixer = AlignMix(layers=["0"], model=net, input_mix_prob=0.0)
        >>> mb = mixer(torch.randn(5, 1, 4, 4), torch.randint(0, 3, (5,)), context={"model": net})
        >>> mb.forward(net).shape, mixer.needs.model
        (torch.Size([5, 3]), True)
    """

    name = "alignmix"
    requires = frozenset({"model"})
    default_alpha = 2.0

    def __init__(
        self,
        *,
        layers: Sequence[str] | None = None,
        model: nn.Module | None = None,
        input_mix_prob: float = 0.5,
        epsilon: float = 0.1,
        sinkhorn_iters: int = 100,
        stop_threshold: float = 0.1,
        cost: str = "squared",
        direction: str = "random",
        exact_marginals: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.input_mix_prob = check_probability("input_mix_prob", input_mix_prob)
        self.epsilon = check_positive("epsilon", epsilon)
        self.sinkhorn_iters = check_int("sinkhorn_iters", sinkhorn_iters, minimum=1)
        self.stop_threshold = check_non_negative("stop_threshold", stop_threshold)
        self.cost = check_choice("alignmix cost", cost, COSTS)
        self.direction = check_choice("alignmix direction", direction, DIRECTIONS)
        if not isinstance(exact_marginals, bool):
            raise MixlabTypeError(f"exact_marginals must be True or False; got {exact_marginals!r}")
        self.exact_marginals = exact_marginals
        if model is not None and not isinstance(model, nn.Module):
            raise MixlabTypeError(f"model must be an nn.Module; got {type(model).__name__}")
        self.model = model
        self.layers: tuple[str, ...] | None = None if layers is None else check_layer_names(layers)
        if model is not None:
            self.bind_model(model)

    def bind_model(self, model: nn.Module) -> None:
        """Take the model's last spatial stage as the layer if none was given, and check the names against it.

        Example:
            >>> from mixlab.models import create_model
            >>> mixer = AlignMix()
            >>> mixer.bind_model(create_model("preact_resnet18", num_classes=10))
            >>> mixer.layers
            ('layer4',)
        """
        if self.layers is None:
            self.layers = (default_spatial_layer(model, min_grid=ALIGN_MIN_GRID, method=self.name),)
        self.layers = _resolve_layers(model, self.layers, self.name)

    @property
    def needs(self) -> MixerNeeds:
        """The model itself (to hook its forward); nothing is computed ahead.

        Example:
            >>> AlignMix(layers=["f"]).needs.model
            True
        """
        return MixerNeeds(model=True)

    def _model(self, context: dict[str, Any]) -> nn.Module | None:
        model = context.get(MODEL, self.model)
        return None if model is None else unwrap(model)

    def _check_context(self, context: dict[str, Any]) -> None:
        model = self._model(context)
        if model is None:
            if self.layers is not None and all(name == INPUT for name in self.layers):
                return
            raise MixlabValueError(
                "alignmix mixes inside the model and needs it: pass context=MixContext(mixer, model)(x, y) "
                "(mixlab.methods.context.MixContext) or context={'model': model}, or model= to the constructor"
            )
        self.bind_model(model)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        assert self.layers is not None  # set by _check_context
        params = interpolation_params(x, perm, lam)
        at_input = self.input_mix_prob > 0 and rng.random() < self.input_mix_prob
        params.extra["layer"] = INPUT if at_input else self.layers[int(rng.integers(len(self.layers)))]
        # Samples left unmixed (lam = 1, the p draw) keep their own map: no alignment to the partner.
        unmixed = np.broadcast_to(lam, (x.shape[0],)) >= 1.0
        params.extra["to_partner"] = self._draw_directions(len(lam), x.shape[0], rng) & ~unmixed
        return params

    def _draw_directions(self, draws: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """Per-sample flags: align ``h_i`` to the partner (True) or the partner to ``h_i``."""
        if self.direction == "random":
            return np.broadcast_to(rng.random(draws) < 0.5, (n,)).copy()
        return np.full(n, self.direction == "to_partner")

    def _mix(self, x: Tensor, params: MixParams, context: dict[str, Any]) -> Tensor:
        if params.extra["layer"] == INPUT:
            return blend(x, params.perm, params.weight, inplace=self.inplace)
        return x

    def apply(self, x: Tensor, y: Tensor, params: MixParams, *, context: dict[str, Any] | None = None) -> MixedBatch:
        """Mix at the input, or return a batch whose ``forward`` aligns and mixes at the drawn layer."""
        mb = super().apply(x, y, params, context=context)
        layer = params.extra.get("layer", INPUT)
        if params.mixed and layer != INPUT:
            to_partner = torch.from_numpy(params.extra["to_partner"])
            options = {
                "epsilon": self.epsilon,
                "iterations": self.sinkhorn_iters,
                "stop_threshold": self.stop_threshold,
                "cost": self.cost,
                "exact_marginals": self.exact_marginals,
            }
            mb.forward_fn = _AlignedHiddenMix(layer, params.perm, params.lam, to_partner, options)
            mb.mask = None
        return mb

    def __repr__(self) -> str:
        return (
            f"AlignMix(layers={self.layers}, input_mix_prob={self.input_mix_prob}, epsilon={self.epsilon}, "
            f"sinkhorn_iters={self.sinkhorn_iters}, stop_threshold={self.stop_threshold}, cost={self.cost!r}, "
            f"direction={self.direction!r}, lam={self.lam_sampler!r}, p={self.p})"
        )


class _AlignedHiddenMix:
    """Runs a model with one module's output replaced by :func:`align_and_mix` (first call only)."""

    def __init__(self, layer: str, perm: Tensor, lam: Tensor, to_partner: Tensor, options: dict[str, Any]):
        self.layer, self.perm, self.lam, self.to_partner = layer, perm, lam, to_partner
        self.options = options

    def __call__(self, model: nn.Module, inputs: Tensor) -> Any:
        module = find_modules(model, [self.layer], what="layer for alignmix")[self.layer]
        done = False

        def mix_output(_module: nn.Module, _args: Any, output: Any) -> Tensor:
            nonlocal done
            if done:  # a module called twice (weight sharing) is mixed once
                return output
            if not isinstance(output, Tensor) or output.ndim < 3:
                shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise MixlabValueError(
                    f"alignmix: module {self.layer!r} gives {shape}; it needs a feature map (N, C, *grid) "
                    "to align; choose a convolutional layer"
                )
            done = True
            return align_and_mix(output, self.perm, self.lam, self.to_partner, **self.options)

        handle = module.register_forward_hook(mix_output)
        try:
            return model(inputs)
        finally:
            handle.remove()


__all__ = [
    "AlignMix",
    "AttentiveMix",
    "align_and_mix",
    "alignment_cost",
    "default_spatial_layer",
    "sinkhorn_plan",
    "top_cells",
]
