"""The mixing contract, driven by the registry: every name of ``list_mixers()`` passes ``assert_mixer_contract``.

A registered mixer without an entry in ``FACTORIES`` fails
``test_every_registered_mixer_has_a_factory``, so a new method is tested by being
registered. Each factory builds the mixer as a user would, on the test's device,
with the model it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import mixlab
from mixer_checks import assert_mixer_contract, digits, small_cnn
from mixlab.losses import bce_softmax, mixed_bce, mixed_cross_entropy
from mixlab.models import create_model

NUM_CLASSES = 10
# AttentiveMix warns once that the model being trained is its attention source (tested in its fidelity file).
pytestmark = pytest.mark.filterwarnings("ignore:attentivemix takes its attention:UserWarning")


@dataclass
class Case:
    """A mixer, the model it reads (or ``None``) and whether ``lam`` is its mask's mean."""

    mixer: mixlab.Mixer
    model: nn.Module | None = None
    lam_is_mask_mean: bool = False


def _cnn(device: torch.device) -> nn.Module:
    return small_cnn(NUM_CLASSES).to(device)


def _vit(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit_tiny", NUM_CLASSES, 1, 16, dim=32, depth=2, heads=2).to(device)


def _static(name: str, mask_mean: bool = False, **options) -> Callable[[torch.device], Case]:
    return lambda device: Case(mixlab.create_mixer(name, num_classes=NUM_CLASSES, **options), None, mask_mean)


def _aware(
    name: str, model: Callable[[torch.device], nn.Module] = _cnn, mask_mean: bool = False, **options
) -> Callable[[torch.device], Case]:
    def build(device: torch.device) -> Case:
        net = model(device)
        given = {"model": net} if "model" in mixlab.methods.accepted_params(name) else {}
        return Case(mixlab.create_mixer(name, **given, **options).to(device), net, mask_mean)

    return build


FACTORIES: dict[str, Callable[[torch.device], Case]] = {
    "mixup": _static("mixup", alpha=1.0),
    "midpoint": _static("midpoint"),
    "cutmix": _static("cutmix", True, alpha=1.0),
    "resizemix": _static("resizemix"),
    "fmix": _static("fmix", True, alpha=1.0),
    "gridmix": _static("gridmix", True, alpha=1.0),
    "smoothmix": _static("smoothmix", True, alpha=1.0),
    "saliencymix": _static("saliencymix", True, alpha=1.0, p=1.0),
    "random_choice": lambda device: Case(mixlab.create_mixer("random_choice", mixers=["mixup", "cutmix", "fmix"])),
    "manifold_mixup": _aware("manifold_mixup", layers=["input", "block1"]),
    "puzzlemix": _aware("puzzlemix", mask_mean=True),
    "comixup": _aware("comixup"),
    "attentivemix": _aware("attentivemix", mask_mean=True),
    "alignmix": _aware("alignmix"),
    "automix": _aware("automix"),
    "adautomix": _aware("adautomix"),
    "sumix": _aware("sumix", mask_mean=True),
    "transmix": _aware("transmix", model=_vit, mask_mean=True),
}


def test_every_registered_mixer_has_a_factory():
    missing = sorted(set(mixlab.list_mixers()) - set(FACTORIES))
    assert not missing, f"registered mixers without a contract factory: {missing}"
    assert not set(FACTORIES) - set(mixlab.list_mixers()), "factories for names no longer registered"


@pytest.mark.parametrize("name", mixlab.list_mixers())
@pytest.mark.parametrize("labels", ["indices", "soft"])
def test_mixer_contract(name: str, labels: str, device: torch.device):
    case = FACTORIES[name](device)
    x, y = digits(8)
    x, y = x.to(device), y.to(device)
    if labels == "soft":
        y = torch.nn.functional.one_hot(y, NUM_CLASSES).float() * 0.9 + 0.01
    mb = assert_mixer_contract(
        case.mixer, x, y, case.model, num_classes=NUM_CLASSES, lam_is_mask_mean=case.lam_is_mask_mean
    )
    logits = mb.forward(case.model) if case.model is not None else torch.randn(8, NUM_CLASSES, device=device)
    for loss in (mixed_cross_entropy, mixed_bce, bce_softmax):
        value = loss(logits.float(), mb)
        assert value.device.type == device.type and torch.isfinite(value), (name, loss.__name__)
    if case.model is not None:
        terms = case.mixer.loss_terms(mb, logits)
        assert all(torch.isfinite(t) for t in terms.values()), terms
