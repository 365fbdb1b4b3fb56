"""Manifold Mixup: mix hidden states at a layer drawn per batch, then finish the forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from mixlab.batch import MixedBatch, validate_batch
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.methods.base import Mixer, MixParams, blend, broadcast_weight, interpolation_params
from mixlab.methods.context import unwrap

INPUT = "input"


class ManifoldMixup(Mixer):
    """Manifold Mixup on any ``nn.Module``: mixup of the output of a module chosen per batch.

    The layer is drawn uniformly from ``layers`` (module names as in
    ``model.named_modules()``, plus ``"input"`` for the input itself). A forward
    hook replaces that module's output ``h`` by ``lam * h + (1 - lam) * h[perm]``
    during :meth:`MixedBatch.forward`, so run the model with
    ``mb.forward(model)``, not ``model(mb.inputs)``. Default ``alpha=2``.
    Verma et al., ICML 2019, arXiv 1806.05236.

    The defaults follow the authors' CIFAR code (vikasverma1077/manifold_mixup,
    ``supervised/models/preresnet.py`` and ``wide_resnet.py``, ``supervised/README.md``):
    on PreAct-ResNet and WRN the layer is drawn among the input and the outputs of the
    first two residual stages (``("input", "layer1", "layer2")``, the
    ``default_manifold_layers`` of mixlab's ``preact_resnet18`` and ``wrn_28_k``);
    α = 2; one λ and one permutation for the whole batch, in one forward pass. Their
    code trains with ``BCELoss(softmax(z), mixed target)``
    (:func:`mixlab.losses.bce_softmax`, ``mix.loss: bce_softmax``), not the mixed CE.

    Without ``"input"`` among the layers, ``x`` may be token ids for an
    embedding layer (integer dtype). A batch mixed at a hidden layer keeps
    ``x`` as its ``inputs``: calling ``model(mb.inputs)`` instead of
    ``mb.forward(model)`` would pair mixed labels with unmixed inputs.

    Args:
        layers: candidate module names (and/or ``"input"``). By default the model's
            ``default_manifold_layers`` (every mixlab backbone has them), taken from
            ``model`` or from the first model seen (:meth:`bind_model`, or the call's
            ``context``); ``("input",)`` for a model without them.
        model: the model, to check the names at once; may instead be given per
            call as ``context={"model": model}``.

    Example:
        >>> import torch, mixlab
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> mixer = mixlab.ManifoldMixup(layers=["input", "0", "1"], model=net)
        >>> mb = mixer(torch.randn(5, 4), torch.randint(0, 3, (5,)))
        >>> mb.forward(net).shape
        torch.Size([5, 3])
        >>> from mixlab.models import create_model
        >>> mixlab.ManifoldMixup(model=create_model("preact_resnet18", num_classes=10)).layers
        ('input', 'layer1', 'layer2')
    """

    name = "manifold_mixup"
    requires = frozenset({"model"})
    default_alpha = 2.0

    def __init__(self, *, layers: Sequence[str] | None = None, model: nn.Module | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.layers: tuple[str, ...] | None = None if layers is None else check_layer_names(layers)
        self.model = model
        if model is not None:
            self.bind_model(model)
            self.check_model(model)

    def bind_model(self, model: nn.Module) -> None:
        """Take the model's ``default_manifold_layers`` (``("input",)`` if it has none) when no layers were given.

        Example:
            >>> import mixlab
            >>> from mixlab.models import create_model
            >>> mixer = mixlab.ManifoldMixup()
            >>> mixer.bind_model(create_model("preact_resnet18", num_classes=10))
            >>> mixer.layers
            ('input', 'layer1', 'layer2')
        """
        if self.layers is None:
            self.layers = check_layer_names(getattr(unwrap(model), "default_manifold_layers", (INPUT,)))

    def check_model(self, model: nn.Module) -> None:
        """Raise ``UnknownNameError`` listing the model's modules if a layer name is not among them."""
        if not isinstance(model, nn.Module):
            raise MixlabTypeError(f"manifold_mixup needs an nn.Module; got {type(model).__name__}")
        for name in self.layers or ():
            if name != INPUT:
                _find_module(model, name)

    def _sample_params(
        self, x: Tensor, y: Tensor, perm: Tensor, lam: np.ndarray, rng: np.random.Generator, context: dict
    ) -> MixParams:
        params = interpolation_params(x, perm, lam)
        layers = self.layers or (INPUT,)  # no model seen yet: nothing but the input to mix at
        params.extra["layer"] = layers[int(rng.integers(len(layers)))]
        return params

    def _check_context(self, context: dict[str, Any]) -> None:
        model = context.get("model", self.model)
        if model is not None:
            self.bind_model(model)
            self.check_model(model)

    def check(self, x: Tensor, y: Tensor) -> None:
        """As for every mixer, except that ``x`` may be non-floating (token ids) when ``"input"`` is not a layer."""
        if self.validate:
            floating = self.layers is None or INPUT in self.layers
            validate_batch(x, y, method=self.name, num_classes=self.num_classes, floating=floating)
            self.pairing.check(y)

    def _mix(self, x: Tensor, params: MixParams, context: dict[str, Any]) -> Tensor:
        if params.extra["layer"] == INPUT:
            return blend(x, params.perm, params.weight, inplace=self.inplace)
        return x

    def apply(self, x: Tensor, y: Tensor, params: MixParams, *, context: dict[str, Any] | None = None) -> MixedBatch:
        """Mix at the input, or return a batch whose ``forward`` mixes at the drawn layer."""
        mb = super().apply(x, y, params, context=context)
        layer = params.extra.get("layer", INPUT)
        if params.mixed and layer != INPUT:
            mb.forward_fn = _HiddenMix(layer, params.perm, params.lam)
        mb.mask = None
        return mb


class _HiddenMix:
    """Runs a model with one module's output mixed with its partners' (first call only)."""

    def __init__(self, layer: str, perm: Tensor, lam: Tensor):
        self.layer, self.perm, self.lam = layer, perm, lam

    def __call__(self, model: nn.Module, inputs: Tensor) -> Any:
        module = _find_module(model, self.layer)
        done = False

        def mix_output(_module: nn.Module, _args: Any, output: Any) -> Tensor:
            nonlocal done
            if done:  # a module called twice (weight sharing) is mixed once
                return output
            if not isinstance(output, Tensor):
                raise MixlabTypeError(
                    f"manifold_mixup: module {self.layer!r} returned {type(output).__name__}; "
                    "choose a module whose output is a tensor"
                )
            done = True
            return blend(output, self.perm, broadcast_weight(self.lam, output))

        handle = module.register_forward_hook(mix_output)
        try:
            return model(inputs)
        finally:
            handle.remove()


def check_layer_names(layers: Any) -> tuple[str, ...]:
    """``layers`` as a tuple of module names; a string, an empty list or a non-name is refused.

    Example:
        >>> check_layer_names(["input", "block1"])
        ('input', 'block1')
    """
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise MixlabValueError(f"layers must be a non-empty list of module names; got {layers!r}")
    if not all(isinstance(name, str) for name in layers):
        raise MixlabTypeError(f"layers must be module names (str); got {list(layers)!r}")
    return tuple(layers)


def _find_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    for candidate in (name, f"module.{name}"):  # DDP and DataParallel wrap the model as "module"
        if candidate in modules and candidate:
            return modules[candidate]
    known = [n for n in modules if n] + [INPUT]
    raise UnknownNameError("module for manifold_mixup", name, known)
