"""What a model-aware mixer needs, and the provider that computes exactly that once per step.

A mixer declares its needs as a :class:`MixerNeeds` (its ``needs`` property).
:class:`MixContext` reads them once, checks them against the model (unknown
layer names list the available ones, attention-only methods refuse models
without attention) and then, for each batch, computes only what was asked:

- ``"model"``: the model being trained (always present);
- ``"saliency"``: ``(N, *spatial)`` magnitude of the input gradient of the clean
  cross-entropy, as PuzzleMix and Co-Mixup use (Kim et al., ICML 2020, 2009.06962);
- ``"features"``: ``{layer: output}`` of the named modules on the clean batch,
  without gradient, from the model or from its EMA copy;
- ``"ema_model"``: an exponential moving average of the model, updated by
  :meth:`MixContext.after_step` (AutoMix's momentum pipeline, Liu et al., ECCV 2022, 2103.13027);
- ``"clean_loss"``: with ``MixerNeeds(saliency=True, clean_loss=True)``, the clean
  cross-entropy of the saliency pass, run in train mode and kept with its graph,
  so that a mixer can add it to the training loss without a second forward pass
  (PuzzleMix's and Co-Mixup's ``clean_lam``).

The training engine uses this class; so can any loop::

    context = MixContext(mixer, model)
    for x, y in loader:
        mb = mixer(x, y, context=context(x, y))
        loss = mixlab.losses.mixed_cross_entropy(mb.forward(model), mb)
        loss = loss + sum(mixer.loss_terms(mb, outputs).values())
        ...; optimizer.step(); mixer.after_step(); context.after_step()
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError

MODEL = "model"
SALIENCY = "saliency"
FEATURES = "features"
EMA_MODEL = "ema_model"
CLEAN_LOSS = "clean_loss"
INPUT = "input"
#: In :func:`forward_until`, what the model itself returns (the forward then runs to its end).
OUTPUT = "output"


@dataclass(frozen=True)
class MixerNeeds:
    """What a mixer needs from the model at each step; the default is nothing.

    Attributes:
        model: the model itself (to hook its forward, as Manifold Mixup and AlignMix do).
        saliency: the input gradient of the clean loss, reduced over channels.
        features: module names whose outputs on the clean batch are needed.
        features_from: ``"model"`` or ``"ema"``: which network the features come from.
        ema: an EMA copy of the model, kept by the provider.
        ema_momentum: the EMA's momentum in [0, 1).
        attention: the model must expose attention maps (``attention_layers``), as ViTs do.
        clean_loss: with ``saliency``, run the saliency pass in train mode (BatchNorm
            statistics updated, as a training step would) and keep its loss with its graph.

    Example:
        >>> MixerNeeds(saliency=True).anything
        True
        >>> MixerNeeds().anything
        False
    """

    model: bool = False
    saliency: bool = False
    features: tuple[str, ...] = ()
    features_from: str = "model"
    ema: bool = False
    ema_momentum: float = 0.999
    attention: bool = False
    clean_loss: bool = False

    def __post_init__(self) -> None:
        if self.features_from not in ("model", "ema"):
            raise MixlabValueError(f"features_from must be 'model' or 'ema'; got {self.features_from!r}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise MixlabValueError(f"ema_momentum must be in [0, 1); got {self.ema_momentum!r}")
        if self.clean_loss and not self.saliency:
            raise MixlabValueError("clean_loss=True keeps the loss of the saliency pass and needs saliency=True")

    @property
    def anything(self) -> bool:
        """Whether the mixer needs anything beyond ``(x, y)``."""
        return self.model or self.saliency or bool(self.features) or self.ema or self.attention

    def union(self, other: MixerNeeds) -> MixerNeeds:
        """Needs of two mixers used together (features must come from one network).

        Example:
            >>> MixerNeeds(saliency=True).union(MixerNeeds(model=True)).model
            True
        """
        if self.features and other.features and self.features_from != other.features_from:
            raise MixlabValueError("mixers used together must take their features from the same network")
        return MixerNeeds(
            model=self.model or other.model,
            saliency=self.saliency or other.saliency,
            features=tuple(dict.fromkeys(self.features + other.features)),
            features_from=self.features_from if self.features else other.features_from,
            ema=self.ema or other.ema or (self.features_from == "ema" and bool(self.features)),
            ema_momentum=max(self.ema_momentum, other.ema_momentum),
            attention=self.attention or other.attention,
            clean_loss=self.clean_loss or other.clean_loss,
        )


class MixContext:
    """Computes, once per step, the context a mixer's :attr:`~mixlab.methods.base.Mixer.needs` ask for.

    Owns the EMA copy of the model when one is needed; :meth:`state_dict`
    saves it with the checkpoint.

    Args:
        mixer: any mixer (or its :class:`MixerNeeds`).
        model: the model being trained; may be wrapped in DDP (the bare
            module computes saliency and features, so DDP's gradient hooks are not involved).

    Example:
        >>> from mixlab.models import create_model
        >>> net = create_model("cnn_small", num_classes=3)
        >>> context = MixContext(MixerNeeds(saliency=True), net)
        >>> context(torch.randn(2, 1, 28, 28), torch.tensor([0, 2]))["saliency"].shape
        torch.Size([2, 28, 28])
    """

    def __init__(self, mixer: Any, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise MixlabTypeError(f"MixContext needs the model (an nn.Module); got {type(model).__name__}")
        self.model = model
        self.module = unwrap(model)
        if not isinstance(mixer, MixerNeeds):
            mixer.bind_model(self.module)
        self.needs: MixerNeeds = mixer if isinstance(mixer, MixerNeeds) else mixer.needs
        self.ema_model: nn.Module | None = None
        if self.needs.ema or (self.needs.features_from == "ema" and self.needs.features):
            self.ema_model = make_ema(self.module)
        self.check()

    def check(self) -> None:
        """Raise if the model lacks a needed layer (listing those it has) or attention."""
        find_modules(self.module, self.needs.features, what="feature layer")
        if self.needs.attention:
            check_attention(self.module)

    def __call__(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """The context for batch ``(x, y)``: only what the needs ask for, plus the model."""
        context: dict[str, Any] = {MODEL: self.model}
        if self.needs.clean_loss:
            context[SALIENCY], context[CLEAN_LOSS] = saliency_and_clean_loss(self.module, x, y)
        elif self.needs.saliency:
            context[SALIENCY] = input_saliency(self.module, x, y)
        if self.needs.features:
            source = self.ema_model if self.needs.features_from == "ema" else self.module
            context[FEATURES] = layer_outputs(source, x, self.needs.features)
        if self.ema_model is not None:
            context[EMA_MODEL] = self.ema_model
        return context

    @torch.no_grad()
    def after_step(self) -> None:
        """Move the EMA copy towards the model (after each optimiser step)."""
        if self.ema_model is not None:
            update_ema(self.ema_model, self.module, self.needs.ema_momentum)

    def to(self, device: torch.device | str) -> MixContext:
        """Move the EMA copy to ``device``."""
        if self.ema_model is not None:
            self.ema_model.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The EMA copy's weights (empty without one)."""
        return {} if self.ema_model is None else {"ema_model": self.ema_model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; a checkpoint without an EMA restarts it from the model."""
        if self.ema_model is not None:
            if "ema_model" in state:
                self.ema_model.load_state_dict(state["ema_model"])
            else:
                self.ema_model.load_state_dict(self.module.state_dict())


# ------------------------------------------------------------------ the computations


def input_saliency(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``(N, *spatial)`` saliency: the channel-wise RMS of the input gradient of the clean cross-entropy.

    The model runs in eval mode (BatchNorm's running statistics, no dropout), as
    the PuzzleMix and Co-Mixup code computes the saliency when no clean loss is
    trained (``clean_lam = 0``), and is put back in its mode afterwards. Only the
    input's gradient is computed (no parameter gradients) and the buffers are left
    as they were. Kim et al., ICML 2020, arXiv 2009.06962, Sec. 3.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 16, 3))
        >>> input_saliency(net, torch.randn(2, 1, 4, 4), torch.tensor([0, 1])).shape
        torch.Size([2, 4, 4])
        >>> net.training
        True
    """
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad(), frozen_buffers(model):
            inputs = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_clean_loss(model, inputs, y), inputs)
    finally:
        model.train(was_training)
    return _reduce_channels(grad)


def saliency_and_clean_loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The saliency of :func:`input_saliency` and the clean loss it came from, kept with its graph.

    The pass runs as the model is (train mode: BatchNorm statistics are updated as
    in a training step). One backward gives both the input gradient and the
    parameters' gradient of the clean loss; the returned loss has the clean loss's
    value and, through the parameters, that gradient, so adding ``weight * loss`` to
    the training loss trains on the clean batch without a second forward or backward:
    PuzzleMix's and Co-Mixup's ``clean_lam`` (Kim et al., ICML 2020, arXiv 2009.06962;
    Kim et al., ICLR 2021, arXiv 2102.03065).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> saliency, loss = saliency_and_clean_loss(net, torch.randn(2, 1, 2, 2), torch.tensor([0, 1]))
        >>> saliency.shape, loss.requires_grad
        (torch.Size([2, 2, 2]), True)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    scale = _FP16_GRAD_SCALE if _fp16_autocast(x.device) else 1.0
    with torch.enable_grad():
        inputs = x.detach().requires_grad_(True)
        loss = _clean_loss(model, inputs, y)
        # One backward gives the input gradient (the saliency) and the parameters' (the clean term), as the
        # reference's single backward does; fp16 activations get a fixed scale against underflow.
        grad, *param_grads = torch.autograd.grad(loss * scale, [inputs, *params], allow_unused=True)
    # A stand-in for the clean loss: its value, and through the parameters its gradient (already computed),
    # so adding it to the training loss costs no second backward through the model.
    clean = loss.detach()
    for param, param_grad in zip(params, param_grads, strict=True):
        if param_grad is not None:
            clean = clean + ((param - param.detach()) * (param_grad / scale)).sum()
    return _reduce_channels(grad / scale), clean


_FP16_GRAD_SCALE = 1024.0


def _fp16_autocast(device: torch.device) -> bool:
    return torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.float16


def keep_clean_loss(aux: dict[str, Any], context: dict[str, Any] | None, weight: float) -> None:
    """Keep the saliency pass's clean loss (``context["clean_loss"]``) in a batch's ``aux`` when ``weight > 0``.

    Example:
        >>> aux = {}
        >>> keep_clean_loss(aux, {"clean_loss": torch.tensor(1.5)}, 1.0)
        >>> float(aux["clean_loss"])
        1.5
    """
    clean = (context or {}).get(CLEAN_LOSS)
    if weight > 0 and clean is not None:
        aux[CLEAN_LOSS] = clean


def clean_loss_terms(aux: dict[str, Any], outputs: Tensor, weight: float) -> dict[str, Tensor]:
    """``{"clean": 2 · weight / K · CE(clean)}`` from a kept clean loss, or nothing without one.

    PuzzleMix's and Co-Mixup's ``main.py`` back-propagate ``2 * clean_lam * CE / num_classes``
    beside their mixed ``BCELoss(softmax(logits), target)``, a mean over the ``K`` classes,
    so the clean cross-entropy is scaled by ``2 / K`` to keep that balance (Kim et al.,
    ICML 2020, arXiv 2009.06962; Kim et al., ICLR 2021, arXiv 2102.03065).

    Example:
        >>> clean_loss_terms({"clean_loss": torch.tensor(2.5)}, torch.zeros(2, 10), 1.0)
        {'clean': tensor(0.5000)}
    """
    clean = aux.get(CLEAN_LOSS)
    if clean is None or weight == 0:
        return {}
    return {"clean": clean * (2.0 * weight / outputs.shape[-1])}


def _clean_loss(model: nn.Module, inputs: Tensor, y: Tensor) -> Tensor:
    logits = model(inputs).float()
    if y.is_floating_point() and y.ndim == 2:  # soft labels
        return -(y * logits.log_softmax(1)).sum(1).mean()
    return nn.functional.cross_entropy(logits, y)


def _reduce_channels(grad: Tensor) -> Tensor:
    return grad.square().mean(1).sqrt() if grad.ndim > 2 else grad.abs()


class _StopForwardError(Exception):
    """Raised by a hook once every needed layer has run, to skip the rest of the forward."""


@torch.no_grad()
def layer_outputs(model: nn.Module, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """Outputs of the named modules on ``x``, without gradient; the forward stops after the last one.

    ``"input"`` stands for ``x`` itself. The model runs in eval mode (BatchNorm
    with its running statistics, no dropout), so its buffers are left as they
    were at no extra cost; its mode is restored afterwards (see :func:`forward_until`).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> {k: v.shape for k, v in layer_outputs(net, torch.randn(5, 3), ["1"]).items()}
        {'1': torch.Size([5, 4])}
    """
    return forward_until(model, x, layers)


def forward_until(model: nn.Module, x: Tensor, layers: Sequence[str], *, train: bool = False) -> dict[str, Any]:
    """Outputs of the named modules on ``x``; the forward stops once the last of them has run.

    mixlab's one truncated forward. ``"input"`` stands for ``x`` itself and
    ``"output"`` for what the model returns (the forward then runs to its end).
    The model runs in eval mode (BatchNorm with its running statistics, no
    dropout, buffers untouched) or, with ``train=True``, in train mode (batch
    statistics, running statistics updated: a momentum encoder in a training
    step); its mode is restored afterwards. Gradient flows as the caller's grad mode allows.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> outputs = forward_until(net, torch.randn(5, 3), ["0", "output"])
        >>> outputs["0"].shape, outputs["output"].shape
        (torch.Size([5, 4]), torch.Size([5, 2]))
    """
    modules = find_modules(model, [name for name in layers if name != OUTPUT], what="feature layer")
    outputs: dict[str, Any] = {INPUT: x} if INPUT in layers else {}
    to_end = OUTPUT in layers
    wanted = {name for name in layers if name not in (INPUT, OUTPUT)}

    def make_hook(name: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if name not in outputs:
                outputs[name] = output
            if not to_end and wanted <= outputs.keys():
                raise _StopForwardError

        return hook

    if wanted or to_end:
        handles = [modules[name].register_forward_hook(make_hook(name)) for name in wanted]
        training = model.training
        model.train(train)
        try:
            result = model(x)
            if to_end:
                outputs[OUTPUT] = result
        except _StopForwardError:
            pass
        finally:
            model.train(training)
            for handle in handles:
                handle.remove()
    return {name: outputs[name] for name in layers}


def find_modules(model: nn.Module, names: Sequence[str], *, what: str = "layer") -> dict[str, nn.Module]:
    """The modules called ``names`` (``"input"`` allowed); unknown names raise, listing the available ones.

    Names may omit DDP's ``module.`` prefix.

    Example:
        >>> sorted(find_modules(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), ["1"]))
        ['1']
    """
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for name in names:
        if name == INPUT:
            continue
        for candidate in (name, f"module.{name}"):
            if candidate and candidate in modules:
                found[name] = modules[candidate]
                break
        else:
            known = [INPUT, *(n for n in modules if n)]
            raise UnknownNameError(what, name, known)
    return found


def check_attention(model: nn.Module, method: str = "this mixer") -> tuple[str, ...]:
    """The names of ``model``'s attention-map modules; raise if it has none (e.g. a CNN).

    Example:
        >>> try:
        ...     check_attention(nn.Linear(2, 2), "transmix")
        ... except ValueError as err:
        ...     print(str(err)[:50])
        transmix needs a model that exposes attention maps
    """
    module = unwrap(model)
    layers = tuple(getattr(module, "attention_layers", ()))
    if not layers:
        raise MixlabValueError(
            f"{method} needs a model that exposes attention maps (a ViT with attention_layers, such as "
            f"mixlab's 'vit_tiny'); {type(module).__name__} has none"
        )
    find_modules(module, layers, what="attention layer")
    return layers


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside a DDP (or DataParallel) wrapper, or ``model`` itself.

    Hooks and attributes (layers, ``attention_layers``) live on the bare module;
    the forward pass still runs through the wrapper.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> unwrap(net) is net
        True
    """
    return getattr(model, "module", model)


@contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Run a forward without changing the model's buffers (BatchNorm running statistics).

    Example:
        >>> bn = nn.BatchNorm1d(2)
        >>> with frozen_buffers(bn):
        ...     _ = bn(torch.randn(4, 2) + 5)
        >>> bn.running_mean.tolist()
        [0.0, 0.0]
    """
    buffers = [b for b in model.buffers() if b is not None]
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` for an exponential moving average (no gradients to its weights).

    Example:
        >>> ema = make_ema(nn.Linear(2, 2))
        >>> any(p.requires_grad for p in ema.parameters())
        False
    """
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, momentum: float) -> None:
    """``ema = momentum * ema + (1 - momentum) * model`` for weights; buffers are copied.

    Example:
        >>> a, b = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = a.weight.fill_(0.0), b.weight.fill_(1.0)
        >>> update_ema(a, b, 0.75)
        >>> a.weight.item()
        0.25
    """
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    if ema_params:
        torch._foreach_lerp_(ema_params, params, 1.0 - momentum)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


__all__ = [
    "CLEAN_LOSS",
    "EMA_MODEL",
    "FEATURES",
    "MODEL",
    "SALIENCY",
    "MixContext",
    "MixerNeeds",
    "check_attention",
    "clean_loss_terms",
    "find_modules",
    "forward_until",
    "frozen_buffers",
    "input_saliency",
    "keep_clean_loss",
    "layer_outputs",
    "make_ema",
    "saliency_and_clean_loss",
    "unwrap",
    "update_ema",
]
