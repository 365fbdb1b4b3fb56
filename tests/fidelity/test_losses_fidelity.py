"""The losses the references train with, computed by hand from their formulas."""

from __future__ import annotations

import math

import torch

from mixlab import MixedBatch
from mixlab.losses import bce_softmax


def test_bce_softmax_is_bce_of_softmax_probabilities_against_the_mixed_target():
    # PuzzleMix / Co-Mixup: BCELoss(softmax(z), t), the mean over classes and samples.
    y = torch.tensor([0, 2])
    mb = MixedBatch(torch.zeros(2, 1), y, y.flip(0), torch.tensor([0.75, 0.75]), torch.tensor([1, 0]))
    logits = [[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    targets = [[0.75, 0.0, 0.25], [0.25, 0.0, 0.75]]
    total = 0.0
    for row, t in zip(logits, targets, strict=True):
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        total += sum(-(ti * math.log(pi) + (1 - ti) * math.log(1 - pi)) for ti, pi in zip(t, p, strict=True)) / 3
    got = bce_softmax(torch.tensor(logits), mb)
    assert abs(float(got) - total / 2) < 1e-6


def test_bce_softmax_stays_finite_when_a_probability_saturates():
    y = torch.tensor([0])
    mb = MixedBatch(torch.zeros(1, 1), y, torch.tensor([1]), torch.tensor([0.5]), torch.tensor([0]))
    logits = torch.tensor([[200.0, -200.0]], requires_grad=True)
    loss = bce_softmax(logits, mb)
    loss.backward()
    # log clamped at -100 as torch.nn.BCELoss does: both classes contribute 0.5 * 100
    assert abs(loss.item() - 50.0) < 1e-3
    assert torch.isfinite(logits.grad).all()
