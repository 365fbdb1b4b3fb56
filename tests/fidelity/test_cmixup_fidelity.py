"""C-Mixup (Yao et al., NeurIPS 2022, arXiv 2210.05775) against its reference.

The authors' code (huaxiuyao/C-Mixup, ``src/algorithm.py``: ``get_mixup_sample_rate``
and ``train`` with ``batch_type=0``) builds one rate matrix over the whole training
set, row ``i`` the Gaussian kernel ``exp(-||y_i - y_j||^2 / 2 sigma^2)`` normalised
over ``j`` (the sample itself included), and draws every anchor's partner from its
row. The rates here are computed by hand from that kernel.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

import mixlab
from mixlab import sampling
from mixlab.data.pairs import PartnerBatchSampler, PartnerTensorLoader, epoch_partners
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.sampling import CMixupPairing, make_pair_sampler

Y5 = [0.0, 0.5, 2.0, 2.2, 5.0]


def hand_rates(y: list[list[float]], sigma: float, exclude_self: bool = False) -> list[list[float]]:
    """Row-normalised Gaussian kernel on the targets, one exp() at a time."""
    rows = []
    for i, yi in enumerate(y):
        weights = []
        for j, yj in enumerate(y):
            d2 = sum((a - b) ** 2 for a, b in zip(yi, yj, strict=True))
            weights.append(0.0 if exclude_self and i == j else math.exp(-d2 / (2.0 * sigma**2)))
        rows.append([w / sum(weights) for w in weights])
    return rows


def as_tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- the dataset-level rates


def test_dataset_rates_are_the_row_normalised_label_kernel():
    pairing = CMixupPairing(sigma=1.0).fit(torch.tensor(Y5, dtype=torch.float64))
    got = pairing.partner_rates()
    torch.testing.assert_close(got, as_tensor(hand_rates([[v] for v in Y5], 1.0)), atol=2e-7, rtol=0)
    # row 0 spelled out: distances 0, 0.5, 2, 2.2, 5 to y_0 = 0
    w = [1.0, math.exp(-0.125), math.exp(-2.0), math.exp(-2.42), math.exp(-12.5)]
    assert got[0].tolist() == pytest.approx([v / sum(w) for v in w], abs=2e-7)
    assert got[0, 0] > 0  # the sample itself is a candidate, as in the authors' code
    assert pairing.truncated_mass == pytest.approx(0.0, abs=1e-12)


def test_dataset_rates_exclude_self_and_use_the_euclidean_distance_over_columns():
    y2 = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 2.0], [3.0, 3.0]]
    pairing = CMixupPairing(sigma=0.7, exclude_self=True).fit(torch.tensor(y2))
    got = pairing.partner_rates()
    torch.testing.assert_close(got, as_tensor(hand_rates(y2, 0.7, exclude_self=True)), atol=2e-7, rtol=0)
    assert torch.equal(got.diagonal(), torch.zeros(5, dtype=torch.float64))
    assert got[0, 3] / got[0, 1] == pytest.approx(math.exp(-(5.0 - 1.0) / (2 * 0.7**2)), rel=1e-5)


def test_top_k_keeps_the_largest_rates_renormalised_and_reports_the_dropped_mass():
    full = hand_rates([[v] for v in Y5], 1.0)
    pairing = CMixupPairing(sigma=1.0, top_k=2).fit(torch.tensor(Y5, dtype=torch.float64))
    expected, dropped = [], []
    for row in full:
        keep = sorted(range(5), key=lambda j: -row[j])[:2]
        kept = sum(row[j] for j in keep)
        expected.append([row[j] / kept if j in keep else 0.0 for j in range(5)])
        dropped.append(1.0 - kept)
    torch.testing.assert_close(pairing.partner_rates(), as_tensor(expected), atol=2e-7, rtol=0)
    assert pairing.truncated_mass == pytest.approx(max(dropped), abs=1e-9)
    draws = pairing.draw_partners(torch.arange(5).repeat(200), torch.Generator().manual_seed(0))
    assert (as_tensor(expected)[torch.arange(5).repeat(200), draws] > 0).all()


def test_the_blockwise_fit_and_the_memory_bound(monkeypatch):
    y = torch.linspace(-2.0, 3.0, 23) ** 2
    whole = CMixupPairing(sigma=0.8).probabilities(y)
    monkeypatch.setattr(sampling, "_CMIXUP_BLOCK_ENTRIES", 50)  # two rows per block
    torch.testing.assert_close(CMixupPairing(sigma=0.8).fit(y).partner_rates(), whole, atol=2e-7, rtol=0)
    monkeypatch.setattr(sampling, "CMIXUP_RATE_ENTRIES", 23 * 5)  # automatic top_k = 5
    auto = CMixupPairing(sigma=0.8).fit(y)
    assert auto._cdf.shape == (23, 5) and auto._index.shape == (23, 5)
    torch.testing.assert_close(auto.partner_rates(), CMixupPairing(sigma=0.8, top_k=5).fit(y).partner_rates())


def test_a_tiny_bandwidth_does_not_underflow():
    y = torch.tensor([0.0, 1.0, 3.0])
    assert torch.equal(CMixupPairing(sigma=0.01).fit(y).partner_rates(), torch.eye(3, dtype=torch.float64))
    rates = CMixupPairing(sigma=0.01, exclude_self=True).fit(y).partner_rates()
    assert rates.isfinite().all() and rates.argmax(dim=1).tolist() == [1, 0, 1]


# ---------------------------------------------------------------- drawing partners


def test_partner_frequencies_match_the_rates():
    pairing = CMixupPairing(sigma=1.0).fit(torch.tensor(Y5, dtype=torch.float64))
    rates = as_tensor(hand_rates([[v] for v in Y5], 1.0))
    draws = pairing.draw_partners(torch.tensor([0] * 4000 + [3] * 4000), torch.Generator().manual_seed(1))
    for block, anchor in ((draws[:4000], 0), (draws[4000:], 3)):
        counts = torch.bincount(block, minlength=5).double()
        expected = rates[anchor] * 4000
        keep = expected >= 5
        assert counts[~keep].sum() <= 10
        expected = expected[keep] * counts[keep].sum() / expected[keep].sum()  # the rare tail pooled out
        assert chisquare(counts[keep].numpy(), expected.numpy()).pvalue > 1e-3


def test_partners_come_from_the_whole_training_set_not_the_batch():
    y = torch.arange(40.0) / 4.0  # neighbours 0.25 apart
    pairing = CMixupPairing(sigma=0.5).fit(y)
    sampler = PartnerBatchSampler(pairing, batch_size=4, shuffle=True, seed=3)
    itself, in_batch, outside = 0, 0, 0
    for epoch in range(10):
        sampler.set_epoch(epoch)
        for batch in sampler:
            anchors, partners = batch[:4], batch[4:]
            for a, p in zip(anchors, partners, strict=True):
                assert abs(y[a] - y[p]) < 2.5  # near in label
                itself += a == p
                in_batch += a != p and p in anchors
                outside += p not in anchors
    assert itself + in_batch + outside == 400
    # self-pairs at the kernel's own rate (about 0.21 here), and most others from outside the batch
    assert abs(itself / 400 - float(pairing.partner_rates().diagonal().mean())) < 0.06
    assert in_batch < 0.15 * (in_batch + outside)


def test_batch_sampler_visits_every_anchor_once_and_replays_an_epoch():
    pairing = CMixupPairing(sigma=1.0).fit(torch.randn(10, generator=torch.Generator().manual_seed(0)))
    sampler = PartnerBatchSampler(pairing, batch_size=3, shuffle=True, seed=7)
    sampler.set_epoch(2)
    first = list(sampler)
    assert len(first) == len(sampler) == 4 and [len(b) for b in first] == [6, 6, 6, 2]
    assert sorted(a for b in first for a in b[: len(b) // 2]) == list(range(10))
    assert list(sampler) == first
    sampler.set_epoch(3)
    assert list(sampler) != first
    shard = PartnerBatchSampler(pairing, batch_size=3, shuffle=True, seed=7, rank=1, world_size=2, drop_last=True)
    shard.set_epoch(2)
    assert all(len(b) == 6 for b in shard) and len(shard) == 1


def test_batch_sampler_feeds_a_dataloader_and_the_mixer_pairs_each_anchor_with_its_partner():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, generator=g), torch.randn(12, 1, generator=g)
    pairing = CMixupPairing(sigma=0.7).fit(y)
    sampler = PartnerBatchSampler(pairing, batch_size=4, shuffle=True, seed=1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_sampler=sampler)
    mixer = mixlab.Mixup(alpha=2.0, pairing=pairing)
    partners = epoch_partners(pairing, sampler._order(), seed=1, epoch=0)
    for step, (xb, yb) in enumerate(loader):
        mb = mixer(xb, yb, generator=torch.Generator().manual_seed(step))
        b = xb.shape[0] // 2
        assert mb.perm.tolist() == list(range(b, 2 * b)) + list(range(b))
        lam = float(mb.lam[0])
        assert bool((mb.lam == lam).all())  # one lambda per batch, as the authors' train()
        anchors = sampler._order()[4 * step : 4 * step + b]
        mates = partners[4 * step : 4 * step + b]
        torch.testing.assert_close(mb.inputs[:b], lam * x[anchors] + (1 - lam) * x[mates])
        torch.testing.assert_close(mb.mixed_target()[:b], lam * y[anchors] + (1 - lam) * y[mates])
        torch.testing.assert_close(mb.inputs[b:], lam * x[mates] + (1 - lam) * x[anchors])  # the mirror pair


def test_tensor_loader_fits_on_its_targets_and_yields_anchor_partner_batches():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10.0) * 0.1
    pairing = CMixupPairing(sigma=0.05)
    loader = PartnerTensorLoader(x, y, pairing, batch_size=4, shuffle=True, drop_last=True, seed=2)
    assert pairing.num_targets == 10 and len(loader) == 2 and loader.num_samples == 16
    batches = list(loader)
    for xb, yb in batches:
        assert xb.shape == (8, 1)
        torch.testing.assert_close(xb[:, 0] * 0.1, yb)
        assert ((yb[:4] - yb[4:]).abs() <= 0.1 + 1e-6).all()  # sigma = half a step: self or a neighbour
    again = [b for b in PartnerTensorLoader(x, y, pairing, batch_size=4, shuffle=True, drop_last=True, seed=2)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


# ---------------------------------------------------------------- options and bad input


def test_scope_names_and_the_within_batch_option():
    assert CMixupPairing().scope == "dataset"
    assert make_pair_sampler("c_mixup", sigma=0.3).scope == "dataset"
    within = make_pair_sampler("c_mixup_batch", sigma=0.3)
    assert within.scope == "batch" and within.sigma == 0.3
    y = torch.tensor([0.0, 0.1, 5.0, 5.1, 5.2])  # odd, unfitted: fine within the batch
    assert within.sample(y, torch.Generator().manual_seed(0)).shape == (5,)
    assert mixlab.create_mixer("mixup", pairing="c_mixup_batch", sigma=0.3).pairing.scope == "batch"


def test_bad_settings_are_refused_at_construction():
    with pytest.raises(UnknownNameError, match="'global'") as info:
        CMixupPairing(scope="global")
    assert "batch" in str(info.value) and "dataset" in str(info.value)
    with pytest.raises(MixlabValueError, match="top_k"):
        CMixupPairing(top_k=0)
    with pytest.raises(MixlabTypeError, match="top_k"):
        CMixupPairing(top_k=2.5)
    with pytest.raises(MixlabValueError, match="sigma"):
        CMixupPairing(sigma=0.0)


def test_unfitted_or_misused_dataset_scope_is_refused():
    x, y = torch.randn(4, 2), torch.randn(4)
    mixer = mixlab.create_mixer("mixup", pairing="c_mixup")
    with pytest.raises(MixlabValueError, match="fit"):
        mixer(x, y, generator=torch.Generator().manual_seed(0))
    mixer.pairing.fit(torch.randn(9))
    with pytest.raises(MixlabValueError, match="even size; got 3"):
        mixer(x[:3], y[:3], generator=torch.Generator().manual_seed(0))
    with pytest.raises(MixlabTypeError, match="float targets"):
        CMixupPairing().fit(torch.arange(4))
    with pytest.raises(MixlabValueError, match="finite"):
        CMixupPairing().fit(torch.tensor([0.0, float("nan")]))
    with pytest.raises(MixlabValueError, match="index the 9"):
        mixer.pairing.draw_partners(torch.tensor([9]), torch.Generator().manual_seed(0))
    with pytest.raises(MixlabValueError, match="fitted on 9"):
        PartnerTensorLoader(x, y, mixer.pairing, batch_size=2, shuffle=False)
    with pytest.raises(MixlabValueError, match="scope='batch'"):
        PartnerBatchSampler(CMixupPairing(scope="batch"), batch_size=2)
    with pytest.raises(MixlabValueError, match="fitted on 0"):
        PartnerBatchSampler(CMixupPairing(), batch_size=2)
    with pytest.raises(MixlabTypeError, match="CMixupPairing"):
        PartnerBatchSampler(mixlab.sampling.RandomPairing(), batch_size=2)
