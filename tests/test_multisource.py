"""Batches that mix more than two sources: MixedBatch.sources/weights, every loss, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from mixlab import MixedBatch
from mixlab.engine.builders import check_loss_options
from mixlab.losses import (
    bce_softmax,
    decoupled_mixup_loss,
    mixed_bce,
    mixed_cross_entropy,
    rankmixup_loss,
    regmixup_loss,
)

Y = torch.tensor([0, 1, 2, 3])
SOURCES = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 0], [3, 0, 1]])
WEIGHTS = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]])


def three_source_batch() -> MixedBatch:
    return MixedBatch.from_sources(torch.zeros(4, 2), Y, SOURCES, WEIGHTS)


def test_two_source_batch_exposes_sources_and_weights_from_perm_and_lam():
    perm, lam = torch.tensor([2, 0, 1]), torch.tensor([0.25, 0.5, 1.0])
    y = torch.tensor([4, 5, 6])
    mb = MixedBatch(torch.zeros(3, 1), y, y[perm], lam, perm)
    assert mb.num_sources == 2
    assert mb.sources.tolist() == [[0, 2], [1, 0], [2, 1]]
    torch.testing.assert_close(mb.weights, torch.stack([lam, 1 - lam], 1))
    assert mb.source_targets.tolist() == [[4, 6], [5, 4], [6, 5]]
    mb.lam = torch.tensor([0.75, 0.75, 0.75])  # a relabelling method (TransMix, SUMix) writes lam after mixing
    torch.testing.assert_close(mb.weights[:, 0], mb.lam)


def test_from_sources_with_two_sources_agrees_with_perm_and_lam():
    y = torch.tensor([0, 1, 2])
    sources = torch.tensor([[0, 1], [1, 2], [2, 0]])
    weights = torch.tensor([[0.7, 0.3], [0.4, 0.6], [1.0, 0.0]])
    mb = MixedBatch.from_sources(torch.zeros(3, 1), y, sources, weights)
    assert mb.perm.tolist() == [1, 2, 0]
    torch.testing.assert_close(mb.lam, weights[:, 0])
    torch.testing.assert_close(mb.weights, weights)
    ref = MixedBatch(torch.zeros(3, 1), y, y[mb.perm], mb.lam, mb.perm)
    torch.testing.assert_close(mb.soft_targets(3), ref.soft_targets(3))


def test_three_source_soft_targets_are_the_weighted_one_hots():
    mb = three_source_batch()
    expected = torch.zeros(4, 4)
    for i in range(4):
        for k in range(3):
            expected[i, SOURCES[i, k]] += WEIGHTS[i, k]
    torch.testing.assert_close(mb.soft_targets(4), expected)
    smoothed = mb.soft_targets(4, smoothing=0.2)
    torch.testing.assert_close(smoothed, 0.8 * expected + 0.2 / 4)
    assert mb.num_sources == 3


def test_three_source_mixed_target_for_regression():
    y = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    mb = MixedBatch.from_sources(torch.zeros(4, 1), y, SOURCES, WEIGHTS)
    expected = torch.tensor([[0.5 * 1 + 0.3 * 2 + 0.2 * 4], [0.6 * 2 + 0.2 * 4 + 0.2 * 8], [0.1 * 4 + 0.1 * 8 + 0.8 * 1], [8.0]])
    torch.testing.assert_close(mb.mixed_target(), expected)


def test_three_source_cross_entropy_by_hand():
    mb = three_source_batch()
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3], [-1.0, 0.0, 1.0, 2.0]])
    expected = []
    for i, row in enumerate(logits.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected.append(sum(float(WEIGHTS[i, k]) * (log_z - row[int(SOURCES[i, k])]) for k in range(3)))
    torch.testing.assert_close(mixed_cross_entropy(logits, mb, reduction="none"), torch.tensor(expected))
    # class indices and the equivalent soft labels give the same loss
    soft = MixedBatch.from_sources(torch.zeros(4, 2), torch.eye(4)[Y], SOURCES, WEIGHTS)
    torch.testing.assert_close(mixed_cross_entropy(logits, soft), mixed_cross_entropy(logits, mb))
    torch.testing.assert_close(
        mixed_cross_entropy(logits, soft, smoothing=0.1), mixed_cross_entropy(logits, mb, smoothing=0.1)
    )


def test_any_source_losses_accept_three_sources():
    mb, logits = three_source_batch(), torch.randn(4, 4)
    for loss in (mixed_bce(logits, mb), bce_softmax(logits, mb), regmixup_loss(logits, logits, Y, mb)):
        assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("decoupled_mixup_loss", lambda mb, z: decoupled_mixup_loss(z, mb)),
        ("rankmixup_loss", lambda mb, z: rankmixup_loss(z, z, Y, mb)),
    ],
)
def test_two_source_losses_refuse_three_sources_naming_the_loss(name, call):
    with pytest.raises(ValueError, match=rf"{name} is defined for two mixed sources.*3 sources"):
        call(three_source_batch(), torch.randn(4, 4))


def test_engine_refuses_a_two_source_loss_with_a_multi_source_mixer():
    class ThreeWay:
        name, num_sources = "three_way", 3

    with pytest.raises(ValueError, match=r"'decoupled' is defined for two mixed sources; three_way mixes 3"):
        check_loss_options("decoupled", {}, ThreeWay())
    check_loss_options("ce", {}, ThreeWay())


@pytest.mark.parametrize(
    ("sources", "weights", "match"),
    [
        (torch.tensor([[0], [1], [2], [3]]), torch.ones(4, 1), r"sources must be a long tensor of shape \(N=4, K>=2\)"),
        (SOURCES, WEIGHTS[:, :2], "weights must be floating with the shape of sources"),
        (SOURCES, WEIGHTS * 2, "weights must be non-negative rows summing to 1 .*got row 0 summing to 2"),
        (SOURCES, torch.tensor([[1.5, -0.5, 0.0]]).expand(4, 3), "non-negative"),
        (SOURCES + 1, WEIGHTS, r"sources must index the batch, in \[0, 4\)"),
    ],
)
def test_from_sources_refuses_bad_shapes_and_weights(sources, weights, match):
    with pytest.raises(ValueError, match=match):
        MixedBatch.from_sources(torch.zeros(4, 2), Y, sources, weights)



def test_random_choice_reports_its_members_sources_and_refuses_merging_many_sources():
    import mixlab

    mixer = mixlab.create_mixer("random_choice", mixers=["mixup", {"name": "comixup", "partition": 4}])
    assert mixer.num_sources == 4
    with pytest.raises(ValueError, match=r"'decoupled' is defined for two mixed sources; random_choice mixes 4"):
        check_loss_options("decoupled", {}, mixer)
    with pytest.raises(ValueError, match=r"mode='sample'.*'comixup' mixes 4 inputs per sample"):
        mixlab.create_mixer("random_choice", mixers=["mixup", {"name": "comixup", "partition": 4}], mode="sample")
