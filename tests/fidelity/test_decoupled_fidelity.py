"""Decoupled Mixup (Liu et al., NeurIPS 2023, arXiv 2203.10761) computed by hand.

The reference is the authors' code, OpenMixup: ``soft_mix_cross_entropy``
(``openmixup/models/losses/cross_entropy_loss.py``) with the weights of
``ClsMixupHead.loss`` (``openmixup/models/heads/cls_mixup_head.py``) and the CIFAR-100
config ``configs/classification/cifar100/mixups/decouple/r18_mixups_CE_soft_decouple.py``:
the mixed CE over all classes plus, for each mixed class ``c``, ``eta * λ_c^q`` times
``-log`` of a softmax over ``c`` and the classes not in the mix (the partner removed).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from mixlab import MixedBatch
from mixlab.errors import MixlabValueError
from mixlab.losses import DECOUPLED_CLASSES, decoupled_mixup_loss

LOGITS = [[2.0, -1.0, 0.5, 1.5], [0.3, 0.8, -0.4, 0.0], [1.2, 0.1, 2.2, -0.7], [0.0, 0.5, 1.0, -1.0]]
Y_A = [0, 1, 2, 3]
Y_B = [3, 2, 2, 0]  # row 2 mixes class 2 with itself
LAM = [0.7, 0.25, 0.6, 1.0]  # row 3 is not mixed (λ = 1)


def _batch(ya=Y_A, yb=Y_B, lam=LAM) -> MixedBatch:
    n = len(ya)
    perm = torch.arange(n).roll(1)
    return MixedBatch(torch.zeros(n, 1), torch.tensor(ya), torch.tensor(yb), torch.tensor(lam), perm)


def _log_softmax_at(row: list[float], target: int, keep: list[int]) -> float:
    """log of the softmax over the classes in ``keep``, at ``target``."""
    return row[target] - math.log(sum(math.exp(row[c]) for c in keep))


def _by_hand(eta: float, q: float, classes: str, smoothing: float = 0.0) -> list[float]:
    k = len(LOGITS[0])
    losses = []
    for row, a, b, lam in zip(LOGITS, Y_A, Y_B, LAM, strict=True):
        everything = list(range(k))
        mixed_ce = -(lam * _log_softmax_at(row, a, everything) + (1 - lam) * _log_softmax_at(row, b, everything))
        if smoothing:
            uniform = -sum(_log_softmax_at(row, c, everything) for c in everything) / k
            mixed_ce = (1 - smoothing) * mixed_ce + smoothing * uniform
        term = 0.0
        if a != b and 0 < lam < 1:
            others = [c for c in everything if c not in (a, b)]
            weight_a, weight_b = lam**q, (1 - lam) ** q
            if classes == "smaller":
                weight_a, weight_b = (weight_a, 0.0) if lam < 0.5 else (0.0, weight_b)
            elif classes == "larger":
                weight_a, weight_b = (weight_a, 0.0) if lam >= 0.5 else (0.0, weight_b)
            term = -weight_a * _log_softmax_at(row, a, [a, *others]) - weight_b * _log_softmax_at(row, b, [b, *others])
        losses.append(mixed_ce + eta * term)
    return losses


def test_defaults_are_the_openmixup_cifar_config():
    defaults = {name: p.default for name, p in inspect.signature(decoupled_mixup_loss).parameters.items()}
    assert defaults["eta"] == 0.1  # eta_weight=dict(eta=0.1, mode="both", thr=0.5)
    assert defaults["lam_power"] == 1.0  # lam_scale_mode="pow", lam_thr=1, lam_idx=1
    assert defaults["classes"] == "both"


def test_default_loss_equals_the_hand_computation():
    got = decoupled_mixup_loss(torch.tensor(LOGITS), _batch(), reduction="none")
    torch.testing.assert_close(got, torch.tensor(_by_hand(0.1, 1.0, "both")), rtol=1e-6, atol=1e-6)
    mean = decoupled_mixup_loss(torch.tensor(LOGITS), _batch())
    assert abs(float(mean) - sum(_by_hand(0.1, 1.0, "both")) / 4) < 1e-6


@pytest.mark.parametrize("classes", DECOUPLED_CLASSES)
@pytest.mark.parametrize(("eta", "q"), [(0.01, 0.5), (0.5, 0.0), (1.0, 2.0)])
def test_per_mixer_configs_equal_the_hand_computation(classes, eta, q):
    # e.g. OpenMixup's CIFAR-100 mixup (α=0.2) config: eta=0.01, lam_idx=0.5, mode="more" (classes="larger")
    got = decoupled_mixup_loss(torch.tensor(LOGITS), _batch(), eta=eta, lam_power=q, classes=classes, reduction="none")
    torch.testing.assert_close(got, torch.tensor(_by_hand(eta, q, classes)), rtol=1e-6, atol=1e-6)


def test_smoothing_touches_only_the_mixed_ce():
    got = decoupled_mixup_loss(torch.tensor(LOGITS), _batch(), smoothing=0.1, reduction="none")
    torch.testing.assert_close(got, torch.tensor(_by_hand(0.1, 1.0, "both", smoothing=0.1)), rtol=1e-6, atol=1e-6)


def test_the_decoupled_term_of_a_class_ignores_its_partner_logit():
    # -log H_a has the partner b out of its normaliser: raising z_b only changes the mixed CE and -log H_b.
    z = torch.tensor(LOGITS[:1], requires_grad=True)
    mb = _batch(ya=[0], yb=[3], lam=[0.7])
    only_a = decoupled_mixup_loss(z, mb, eta=1.0, classes="larger") - decoupled_mixup_loss(z, mb, eta=0.0)
    (grad,) = torch.autograd.grad(only_a, z)
    assert grad[0, 3] == 0
    assert (grad[0, [0, 1, 2]] != 0).all()


def test_each_class_is_weighted_by_its_own_ratio_whatever_the_class_order():
    # OpenMixup gives eta*λ to the mixed class of lower index in the batch's first row (swapping
    # the weights for about half the batches); mixlab's loss is symmetric in (a, λ) <-> (b, 1-λ).
    z = torch.tensor(LOGITS)
    swapped = _batch(ya=Y_B, yb=Y_A, lam=[1 - v for v in LAM])
    torch.testing.assert_close(
        decoupled_mixup_loss(z, _batch(), reduction="none"), decoupled_mixup_loss(z, swapped, reduction="none")
    )


def test_lam_one_half_still_gets_the_decoupled_term():
    # the code skips the whole batch at λ = 0.5 exactly; mixlab weighs both classes by 0.5
    z = torch.tensor(LOGITS[:1])
    mb = _batch(ya=[0], yb=[3], lam=[0.5])
    extra = decoupled_mixup_loss(z, mb, eta=1.0) - decoupled_mixup_loss(z, mb, eta=0.0)
    row = LOGITS[0]
    expected = -0.5 * _log_softmax_at(row, 0, [0, 1, 2]) - 0.5 * _log_softmax_at(row, 3, [3, 1, 2])
    assert abs(float(extra) - expected) < 1e-6


def test_unknown_classes_mode_is_refused_naming_it_and_the_accepted_ones():
    with pytest.raises(MixlabValueError) as info:
        decoupled_mixup_loss(torch.tensor(LOGITS), _batch(), classes="less")
    message = str(info.value)
    assert "less" in message
    for accepted in DECOUPLED_CLASSES:
        assert accepted in message
