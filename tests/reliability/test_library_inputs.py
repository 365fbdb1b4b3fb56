"""Bad inputs to the library are refused with a clear message; valid neighbours still work (issue 14)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mixlab
from mixlab.batch import MixedBatch
from mixlab.errors import MixlabError, MixlabValueError
from mixlab.losses import mixed_cross_entropy
from mixlab.sampling import CMixupPairing

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.2, -0.7]])


def _unmixed_loss(soft: torch.Tensor) -> torch.Tensor:
    return mixed_cross_entropy(LOGITS, MixedBatch.unmixed(torch.zeros(2, 1), soft))


# ------------------------------------------------------------ 1. soft labels


def test_soft_labels_summing_above_one_are_refused():
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.6, 0.0]])
    with pytest.raises(MixlabValueError, match=r"non-negative rows summing to 1.*got row 1 summing to 1\.5"):
        _unmixed_loss(soft)


def test_negative_soft_labels_are_refused():
    soft = torch.tensor([[1.2, -0.2, 0.0], [0.0, 1.0, 0.0]])  # rows sum to 1, one entry < 0
    with pytest.raises(MixlabValueError, match=r"non-negative rows summing to 1.*got -0\.2 in row 0"):
        _unmixed_loss(soft)


def test_nan_soft_labels_are_refused():
    soft = torch.tensor([[1.0, 0.0, 0.0], [float("nan"), 1.0, 0.0]])
    with pytest.raises(MixlabValueError, match=r"got nan in row 1"):
        _unmixed_loss(soft)


def test_label_smoothed_soft_targets_give_torch_loss():
    smoothed = F.one_hot(torch.tensor([0, 2]), 3).float() * 0.9 + 0.1 / 3
    expected = F.cross_entropy(LOGITS, smoothed)
    # by hand: -sum t * log_softmax(z), averaged over the two rows
    by_hand = -(smoothed * LOGITS.log_softmax(1)).sum(1).mean()
    assert torch.isclose(expected, by_hand)
    assert torch.isclose(_unmixed_loss(smoothed), expected)


def test_half_precision_soft_targets_within_rounding_are_accepted():
    smoothed = (F.one_hot(torch.arange(7) % 5, 5).float() * 0.9 + 0.1 / 5).to(torch.bfloat16)
    logits = torch.zeros(7, 5)
    loss = mixed_cross_entropy(logits, MixedBatch.unmixed(torch.zeros(7, 1), smoothed))
    assert math.isclose(float(loss), math.log(5), rel_tol=1e-2)


def test_mixer_refuses_bad_soft_labels_when_num_classes_is_given():
    y = torch.tensor([[0.7, 0.7], [1.0, 0.0]])
    with pytest.raises(MixlabValueError, match=r"mixup: soft labels y must be non-negative.*row 0 summing to 1\.4"):
        mixlab.create_mixer("mixup", num_classes=2)(torch.zeros(2, 3), y)


def test_mixup_soft_targets_are_scored_as_before():
    x, y = torch.randn(2, 4), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    mb = mixlab.create_mixer("mixup", lam=0.25, num_classes=3)(x, y, generator=torch.Generator().manual_seed(0))
    partner = y[mb.perm]
    target = 0.25 * y + 0.75 * partner
    assert torch.isclose(mixed_cross_entropy(LOGITS, mb), F.cross_entropy(LOGITS, target))


# ------------------------------------------------------------ 2. C-Mixup with non-finite targets


def test_c_mixup_refuses_nan_targets():
    mixer = mixlab.create_mixer("mixup", pairing="c_mixup_batch")
    y = torch.tensor([[0.1], [float("nan")], [float("inf")], [float("nan")]])
    with pytest.raises(MixlabValueError, match=r"needs finite targets; got 2 NaN and 1 inf among 4"):
        mixer(torch.zeros(4, 3), y)


def test_c_mixup_fit_refuses_nan_targets():
    with pytest.raises(MixlabValueError, match=r"needs finite targets; got 1 NaN"):
        CMixupPairing().fit(torch.tensor([0.0, float("nan"), 1.0]))


def test_c_mixup_pairs_finite_targets_by_distance():
    # two far clusters with a tiny sigma: each sample's partner is in its own cluster
    y = torch.tensor([[0.0], [0.01], [100.0], [100.01]])
    mixer = mixlab.create_mixer("mixup", pairing="c_mixup_batch", sigma=0.1)
    mb = mixer(torch.zeros(4, 3), y, generator=torch.Generator().manual_seed(0))
    assert ((mb.perm >= 2) == (torch.arange(4) >= 2)).all()


# ------------------------------------------------------------ 3. meta tensors


def test_meta_inputs_are_refused():
    x = torch.empty(4, 3, 8, 8, device="meta")
    y = torch.zeros(4, dtype=torch.long, device="meta")
    with pytest.raises(MixlabError, match=r"x is on device meta.*tensors with data \(cpu, cuda or mps\)"):
        mixlab.create_mixer("cutmix")(x, y)


def test_cpu_inputs_still_mix():
    mb = mixlab.create_mixer("cutmix")(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert mb.inputs.shape == (4, 3, 8, 8)


# ------------------------------------------------------------ 4. params drawn for another batch


def test_params_from_another_batch_size_are_refused():
    mixer = mixlab.create_mixer("mixup", seed=0)
    params = mixer.sample(torch.rand(8, 3), torch.arange(8))
    with pytest.raises(MixlabValueError, match=r"drawn for a batch of 8 samples.*this batch has 4.*mixer\.sample"):
        mixer.apply(torch.rand(4, 3), torch.arange(4), params)


def test_params_for_this_batch_apply():
    mixer = mixlab.create_mixer("mixup", lam=0.25, seed=0)
    x, y = torch.rand(4, 3), torch.arange(4)
    params = mixer.sample(x, y)
    mb = mixer.apply(x, y, params)
    assert torch.allclose(mb.inputs, 0.25 * x + 0.75 * x[params.perm])
