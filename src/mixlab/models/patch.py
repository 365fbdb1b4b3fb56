"""The patch-wise two-layer network of the feature-learning theory of mixup, for the synthetic patch datasets.

``logit_j(x) = sum over the m filters r of class j, sum over the patches p of act(<w_{j,r}, x_p>)``: one
layer of ``num_classes * m`` filters shared across patches (a convolution whose kernel and stride are a
patch), a fixed second layer that adds each class's filters, no bias. It is the network of Zou, Cao,
Li & Gu (ICML 2023, arXiv 2303.08433, after Cao et al., NeurIPS 2022, arXiv 2202.06526: polynomial ReLU
``max(0, z)^q``) and of Chidambaram, Wang, Wu & Ge (ICML 2023, arXiv 2210.13512, after Allen-Zhu & Li,
arXiv 2012.09816: the smoothed ReLU, ``z^q / (q t^(q-1))`` on ``[0, t]``, linear above, 0 below).
The high power at small correlations is what makes feature learning a race that the feature (or noise)
with the head start wins, the mechanism both papers analyse; a plain ReLU network lacks it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, check_choice, check_int, check_positive
from mixlab.models.base import INPUT, Backbone

ACTIVATIONS = ("smoothed_relu", "relu_power")


def smoothed_relu(z: Tensor, power: float, threshold: float) -> Tensor:
    """Allen-Zhu & Li's smoothed ReLU: 0 below 0, ``z^q / (q t^(q-1))`` on ``[0, t]``, ``z - (1 - 1/q) t`` above.

    Continuous with a continuous derivative at ``t`` (both pieces have slope 1 there).

    Example:
        >>> smoothed_relu(torch.tensor([-1.0, 0.5, 1.0, 3.0]), power=2.0, threshold=1.0).tolist()
        [0.0, 0.125, 0.5, 2.5]
    """
    positive = z.clamp(min=0.0)
    below = positive.clamp(max=threshold).pow(power) / (power * threshold ** (power - 1))
    return torch.where(positive <= threshold, below, positive - (1.0 - 1.0 / power) * threshold)


def relu_power(z: Tensor, power: float) -> Tensor:
    """``max(0, z)^q`` (Cao et al., NeurIPS 2022, arXiv 2202.06526; q = 1 is the ReLU).

    Example:
        >>> relu_power(torch.tensor([-1.0, 2.0]), power=3.0).tolist()
        [0.0, 8.0]
    """
    return z.clamp(min=0.0).pow(power)


class PatchFilters(nn.Module):
    """``num_filters`` filters shared across patches: ``(N, P, d) -> (N, num_filters)``, each activation summed over patches."""

    def __init__(self, num_filters: int, dim: int, activation: str, power: float, threshold: float, init_std: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_filters, dim) * init_std)
        self.activation, self.power, self.threshold = activation, power, threshold

    def forward(self, x: Tensor) -> Tensor:
        """Pre-activations ``<w_r, x_p>`` for every filter and patch, activated, then summed over the patches."""
        z = torch.einsum("npd,rd->npr", x, self.weight)
        if self.activation == "smoothed_relu":
            z = smoothed_relu(z, self.power, self.threshold)
        else:
            z = relu_power(z, self.power)
        return z.sum(dim=1)


class PatchCNN(Backbone):
    """A two-layer patch-wise network with a fixed second layer, as in the feature-learning theory of mixup.

    Inputs ``(N, P, d)``: ``P`` patches of dimension ``d`` (``in_channels = P``, ``input_size = d``).
    ``features(x)`` is ``(N, num_classes * m)``, each filter's activation summed over the patches, filters
    grouped by class; ``head`` is a frozen ``Linear`` whose weight adds (or, ``average_filters``, averages)
    each class's ``m`` filters, so only the filters train. Filters start ``N(0, init_std^2)``.
    Zou, Cao, Li & Gu, ICML 2023, arXiv 2303.08433; Chidambaram, Wang, Wu & Ge, ICML 2023, arXiv 2210.13512.

    Args:
        num_classes: classes (each gets ``filters_per_class`` filters).
        in_channels: patches per sample ``P``.
        input_size: patch dimension ``d`` (required: an int, ``(d,)`` or ``(P, d)``).
        filters_per_class: ``m``.
        activation: ``"smoothed_relu"`` (with ``threshold``; default ``1 / num_classes``, the authors' code)
            or ``"relu_power"`` (``max(0, z)^power``).
        power: the polynomial power ``q`` (>= 1).
        threshold: where the smoothed ReLU turns linear (ignored by ``relu_power``).
        init_std: the filters' initial standard deviation.
        average_filters: a class's logit is the mean (True) rather than the sum (False) of its filters.

    Example:
        >>> net = PatchCNN(num_classes=3, in_channels=4, input_size=9, filters_per_class=2)
        >>> net(torch.randn(5, 4, 9)).shape, net.feature_dim, net.head.weight.requires_grad
        (torch.Size([5, 3]), 6, False)
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 3,
        input_size: int | Sequence[int] | None = None,
        filters_per_class: int = 5,
        activation: str = "smoothed_relu",
        power: float = 4.0,
        threshold: float | None = None,
        init_std: float = 0.1,
        average_filters: bool = False,
    ) -> None:
        super().__init__(num_classes, in_channels)
        self.patch_dim = _patch_dim(input_size, self.in_channels)
        m = check_int("filters_per_class", filters_per_class, minimum=1)
        activation = check_choice("activation", activation, ACTIVATIONS)
        power = check_positive("power", power)
        if power < 1.0:
            raise MixlabValueError(f"power must be >= 1 (a ReLU or steeper); got {power!r}")
        threshold = 1.0 / self.num_classes if threshold is None else check_positive("threshold", threshold)
        init_std = check_positive("init_std", init_std)
        if not isinstance(average_filters, bool):
            raise MixlabTypeError(f"average_filters must be True or False; got {average_filters!r}")
        self.filters_per_class = m
        self.filters = PatchFilters(self.num_classes * m, self.patch_dim, activation, power, threshold, init_std)
        self.feature_dim = self.num_classes * m
        self.head = nn.Linear(self.feature_dim, self.num_classes, bias=False)
        with torch.no_grad():  # block ones: class j adds its own m filters
            grouping = torch.eye(self.num_classes).repeat_interleave(m, dim=1)
            self.head.weight.copy_(grouping / m if average_filters else grouping)
        self.head.weight.requires_grad_(False)
        self.stages = ("filters",)
        self.default_manifold_layers = (INPUT,)

    def features(self, x: Tensor) -> Tensor:
        """Each filter's activation summed over the patches, ``(N, num_classes * filters_per_class)``."""
        self._check_input(x, (self.patch_dim,))
        return self.filters(x)


def _patch_dim(input_size: int | Sequence[int] | None, patches: int) -> int:
    if input_size is None:
        raise MixlabTypeError("patch_cnn needs input_size: the patch dimension d (inputs are (N, P, d))")
    if isinstance(input_size, Sequence) and not isinstance(input_size, str):
        sizes = list(input_size)
        if len(sizes) == 2:
            if check_int("input_size[0]", sizes[0], minimum=1) != patches:
                raise MixlabValueError(
                    f"patch_cnn: input_size {tuple(sizes)} has {sizes[0]} patches; in_channels={patches}"
                )
            sizes = sizes[1:]
        if len(sizes) != 1:
            raise MixlabValueError(f"patch_cnn: input_size must be d, (d,) or (P, d); got {tuple(input_size)!r}")
        input_size = sizes[0]
    return check_int("input_size", input_size, minimum=1)


def patch_cnn(
    num_classes: int = 2,
    in_channels: int = 3,
    input_size: int | Sequence[int] | None = None,
    *,
    filters_per_class: int = 5,
    activation: str = "smoothed_relu",
    power: float = 4.0,
    threshold: float | None = None,
    init_std: float = 0.1,
    average_filters: bool = False,
) -> PatchCNN:
    """Build :class:`PatchCNN` (registry name ``"patch_cnn"``).

    Example:
        >>> patch_cnn(2, 3, 16, activation="relu_power", power=3.0).filters.weight.shape
        torch.Size([10, 16])
    """
    return PatchCNN(
        num_classes,
        in_channels,
        input_size,
        filters_per_class=filters_per_class,
        activation=activation,
        power=power,
        threshold=threshold,
        init_std=init_std,
        average_filters=average_filters,
    )
