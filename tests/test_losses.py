"""Losses for mixed batches, checked against direct hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixlab.batch import MixedBatch
from mixlab.errors import MixlabError, MixlabTypeError, MixlabValueError
from mixlab.losses import (
    cross_entropy,
    decoupled_mixup_loss,
    mixed_bce,
    mixed_cross_entropy,
    rankmixup_loss,
    regmixup_loss,
)

# A small hand-made example: 3 samples, 4 classes.
LOGITS = [
    [2.0, -1.0, 0.5, 0.0],
    [0.3, 1.2, -0.7, 2.2],
    [-1.5, 0.4, 1.1, 0.2],
]
Y_A = [0, 2, 3]
Y_B = [1, 2, 0]  # sample 1 is mixed with a sample of its own class
LAM = [1.0, 0.0, 0.3]
K = 4


def _batch(ya=Y_A, yb=Y_B, lam=LAM, soft: bool = False) -> MixedBatch:
    ya_t, yb_t = torch.tensor(ya), torch.tensor(yb)
    if soft:
        ya_t, yb_t = F.one_hot(ya_t, K).float(), F.one_hot(yb_t, K).float()
    n = len(ya)
    return MixedBatch(torch.zeros(n, 2), ya_t, yb_t, torch.tensor(lam, dtype=torch.float32), torch.arange(n))


def _logits() -> torch.Tensor:
    return torch.tensor(LOGITS)


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    log_z = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - log_z for v in row]


def _ce(row: list[float], cls: int, smoothing: float = 0.0) -> float:
    """Cross-entropy of one row against a (smoothed) one-hot target, by hand."""
    lp = _log_softmax(row)
    return -(1.0 - smoothing) * lp[cls] - smoothing / len(row) * sum(lp)


def _hand_mixed_ce(smoothing: float = 0.0, lam=LAM, ya=Y_A, yb=Y_B) -> list[float]:
    return [
        lam_i * _ce(row, a, smoothing) + (1.0 - lam_i) * _ce(row, b, smoothing)
        for row, a, b, lam_i in zip(LOGITS, ya, yb, lam, strict=True)
    ]


# ---------------------------------------------------------------- mixed_cross_entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_mixed_ce_matches_hand_computation(smoothing):
    got = mixed_cross_entropy(_logits(), _batch(), smoothing=smoothing, reduction="none")
    expected = torch.tensor(_hand_mixed_ce(smoothing))
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_mixed_ce_with_lam_0_or_1_is_plain_ce(smoothing):
    logits = _logits()
    ya, yb = torch.tensor(Y_A), torch.tensor(Y_B)
    ones = _batch(lam=[1.0, 1.0, 1.0])
    zeros = _batch(lam=[0.0, 0.0, 0.0])
    torch.testing.assert_close(
        mixed_cross_entropy(logits, ones, smoothing=smoothing),
        F.cross_entropy(logits, ya, label_smoothing=smoothing),
    )
    torch.testing.assert_close(
        mixed_cross_entropy(logits, zeros, smoothing=smoothing),
        F.cross_entropy(logits, yb, label_smoothing=smoothing),
    )
    # Per sample too, with a mix of 0 and 1 in one batch.
    mixed01 = _batch(lam=[1.0, 0.0, 0.0])
    expected = torch.stack(
        [
            F.cross_entropy(logits[0:1], ya[0:1], label_smoothing=smoothing),
            F.cross_entropy(logits[1:2], yb[1:2], label_smoothing=smoothing),
            F.cross_entropy(logits[2:3], yb[2:3], label_smoothing=smoothing),
        ]
    )
    torch.testing.assert_close(mixed_cross_entropy(logits, mixed01, smoothing=smoothing, reduction="none"), expected)


def test_clean_cross_entropy_equals_torch():
    logits = _logits()
    y = torch.tensor(Y_A)
    torch.testing.assert_close(cross_entropy(logits, y), F.cross_entropy(logits, y))
    torch.testing.assert_close(
        cross_entropy(logits, y, smoothing=0.2, reduction="none"),
        F.cross_entropy(logits, y, label_smoothing=0.2, reduction="none"),
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_soft_label_targets_equal_index_targets(smoothing):
    logits = _logits()
    index = mixed_cross_entropy(logits, _batch(), smoothing=smoothing, reduction="none")
    soft = mixed_cross_entropy(logits, _batch(soft=True), smoothing=smoothing, reduction="none")
    torch.testing.assert_close(soft, index, rtol=1e-6, atol=1e-6)


def test_soft_labels_that_are_not_one_hot_are_scored_by_their_distribution():
    logits = _logits()
    t_a = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    t_b = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    lam = torch.tensor([0.6, 0.5, 0.2])
    mb = MixedBatch(torch.zeros(3, 1), t_a, t_b, lam, torch.arange(3))
    got = mixed_cross_entropy(logits, mb, reduction="none")
    expected = []
    for i, row in enumerate(LOGITS):
        lp = _log_softmax(row)
        target = [
            lam[i].item() * a + (1 - lam[i].item()) * b for a, b in zip(t_a[i].tolist(), t_b[i].tolist(), strict=True)
        ]
        expected.append(-sum(t * v for t, v in zip(target, lp, strict=True)))
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_reductions():
    logits = _logits()
    per_sample = torch.tensor(_hand_mixed_ce())
    mb = _batch()
    torch.testing.assert_close(mixed_cross_entropy(logits, mb, reduction="none"), per_sample)
    torch.testing.assert_close(mixed_cross_entropy(logits, mb, reduction="sum"), per_sample.sum())
    torch.testing.assert_close(mixed_cross_entropy(logits, mb, reduction="mean"), per_sample.mean())
    torch.testing.assert_close(mixed_cross_entropy(logits, mb), per_sample.mean())


def test_mixed_ce_from_a_mixer_soft_and_index_agree():
    import mixlab

    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    mixer = mixlab.create_mixer("mixup", alpha=1.0, lam_mode="sample")
    mb_i = mixer(x, y, generator=torch.Generator().manual_seed(5))
    mb_s = mixer(x, F.one_hot(y, K).float(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(mb_i.perm, mb_s.perm) and torch.equal(mb_i.lam, mb_s.lam)
    logits = torch.randn(6, K, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        mixed_cross_entropy(logits, mb_i, smoothing=0.1), mixed_cross_entropy(logits, mb_s, smoothing=0.1)
    )


def test_mixed_ce_gradient_matches_soft_target_formula():
    # d/dz of -sum(t log softmax(z)) is softmax(z) - t for a distribution t.
    logits = _logits().requires_grad_(True)
    mixed_cross_entropy(logits, _batch(), smoothing=0.1, reduction="sum").backward()
    target = _batch().soft_targets(K, smoothing=0.1)
    torch.testing.assert_close(logits.grad, torch.softmax(_logits(), 1) - target, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- mixed_bce


def _hand_targets(lam=LAM, ya=Y_A, yb=Y_B, smoothing: float = 0.0) -> torch.Tensor:
    rows = []
    for lam_i, a, b in zip(lam, ya, yb, strict=True):
        row = [0.0] * K
        row[a] += lam_i
        row[b] += 1.0 - lam_i
        rows.append([v * (1.0 - smoothing) + smoothing / K for v in row])
    return torch.tensor(rows)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_mixed_bce_matches_torch_on_hand_targets(smoothing):
    logits = _logits()
    targets = _hand_targets(smoothing=smoothing)
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)
    torch.testing.assert_close(mixed_bce(logits, _batch(), smoothing=smoothing, reduction="none"), expected)
    torch.testing.assert_close(mixed_bce(logits, _batch(), smoothing=smoothing), expected.mean())
    torch.testing.assert_close(mixed_bce(logits, _batch(), smoothing=smoothing, reduction="sum"), expected.sum())


def test_mixed_bce_target_threshold_binarises():
    logits = _logits()
    lam = [0.55, 0.0, 0.3]
    mb = _batch(lam=lam)
    soft = _hand_targets(lam=lam)
    for threshold in (0.2, 0.5):
        binary = (soft > threshold).float()
        assert not torch.equal(binary, soft)
        expected = F.binary_cross_entropy_with_logits(logits, binary, reduction="none").mean(dim=1)
        got = mixed_bce(logits, mb, target_threshold=threshold, reduction="none")
        torch.testing.assert_close(got, expected)
        assert not torch.allclose(got, mixed_bce(logits, mb, reduction="none"))
    # threshold 0.2: both classes of sample 0 (0.55 / 0.45) and of sample 2 (0.3 / 0.7) are on.
    low = _hand_targets(lam=lam) > 0.2
    assert low.sum(dim=1).tolist() == [2, 1, 2]


def test_mixed_bce_threshold_is_strict():
    # a target equal to the threshold is off (target > threshold, as in timm / DeiT III)
    logits = _logits()
    mb = _batch(lam=[0.25, 0.0, 0.75])
    binary = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    expected = F.binary_cross_entropy_with_logits(logits, binary, reduction="none").mean(dim=1)
    torch.testing.assert_close(mixed_bce(logits, mb, target_threshold=0.25, reduction="none"), expected)


# ---------------------------------------------------------------- decoupled mixup


def _nll_without(row: list[float], target: int, removed: int) -> float:
    """-log of the softmax of ``target`` with column ``removed`` deleted from the row."""
    kept = [v for c, v in enumerate(row) if c != removed]
    new_index = target - (1 if target > removed else 0)
    return -_log_softmax(kept)[new_index]


@pytest.mark.parametrize("lam_power", [1.0, 2.0, 0.0])
@pytest.mark.parametrize("eta", [0.1, 1.5])
def test_decoupled_matches_hand_computation(eta, lam_power):
    lam = [0.8, 0.4, 0.3]
    got = decoupled_mixup_loss(_logits(), _batch(lam=lam), eta=eta, lam_power=lam_power, reduction="none")
    base = _hand_mixed_ce(lam=lam)
    expected = []
    for i, (row, a, b) in enumerate(zip(LOGITS, Y_A, Y_B, strict=True)):
        extra = 0.0
        if a != b:
            extra = lam[i] ** lam_power * _nll_without(row, a, b) + (1 - lam[i]) ** lam_power * _nll_without(row, b, a)
        expected.append(base[i] + eta * extra)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    # the extra term is positive for the label-mismatched samples 0 and 2
    assert (got - torch.tensor(base))[[0, 2]].gt(0).all()


def test_decoupled_eta_zero_is_mixed_ce():
    logits, mb = _logits(), _batch(lam=[0.8, 0.4, 0.3])
    for reduction in ("none", "sum", "mean"):
        torch.testing.assert_close(
            decoupled_mixup_loss(logits, mb, eta=0.0, reduction=reduction),
            mixed_cross_entropy(logits, mb, reduction=reduction),
        )


def test_decoupled_same_class_samples_get_no_extra_term():
    logits = _logits()
    mb = _batch(ya=[0, 2, 3], yb=[0, 2, 3], lam=[0.5, 0.3, 0.9])
    torch.testing.assert_close(
        decoupled_mixup_loss(logits, mb, eta=5.0, reduction="none"), mixed_cross_entropy(logits, mb, reduction="none")
    )
    # sample 1 (a == b) of the standard batch gets none either
    mb = _batch(lam=[0.8, 0.4, 0.3])
    got = decoupled_mixup_loss(logits, mb, eta=5.0, reduction="none")
    torch.testing.assert_close(got[1], mixed_cross_entropy(logits, mb, reduction="none")[1])


def test_decoupled_lam_power_zero_weighs_both_classes_equally():
    logits = _logits()
    # with lam_power=0 the extra term does not depend on lam at all
    a = decoupled_mixup_loss(logits, _batch(lam=[0.9, 0.4, 0.1]), eta=1.0, lam_power=0.0, reduction="none")
    b = decoupled_mixup_loss(logits, _batch(lam=[0.2, 0.4, 0.6]), eta=1.0, lam_power=0.0, reduction="none")
    base_a = mixed_cross_entropy(logits, _batch(lam=[0.9, 0.4, 0.1]), reduction="none")
    base_b = mixed_cross_entropy(logits, _batch(lam=[0.2, 0.4, 0.6]), reduction="none")
    torch.testing.assert_close(a - base_a, b - base_b, rtol=1e-5, atol=1e-6)
    row, a0, b0 = LOGITS[0], Y_A[0], Y_B[0]
    expected0 = _nll_without(row, a0, b0) + _nll_without(row, b0, a0)
    assert (a - base_a)[0].item() == pytest.approx(expected0, rel=1e-5)


def test_decoupled_rejects_soft_labels():
    with pytest.raises(MixlabTypeError) as info:
        decoupled_mixup_loss(_logits(), _batch(soft=True))
    assert isinstance(info.value, TypeError)
    assert "float32" in str(info.value)


# ---------------------------------------------------------------- RegMixup


@pytest.mark.parametrize(("scaling", "scale"), [("paper", 1.0), ("code", 0.5)])
@pytest.mark.parametrize("eta", [0.0, 1.0, 2.5])
def test_regmixup_is_clean_ce_plus_eta_mixed_ce(eta, scaling, scale):
    # paper: CE_clean + eta * CE_mix; code: the mean over the concatenated batch, i.e. half of it
    g = torch.Generator().manual_seed(3)
    logits_clean = torch.randn(3, K, generator=g)
    logits_mixed = _logits()
    y = torch.tensor(Y_A)
    mb = _batch()
    clean = [_ce(row, c) for row, c in zip(logits_clean.tolist(), Y_A, strict=True)]
    expected = scale * (torch.tensor(clean) + eta * torch.tensor(_hand_mixed_ce()))
    got = regmixup_loss(logits_clean, logits_mixed, y, mb, eta=eta, scaling=scaling, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        regmixup_loss(logits_clean, logits_mixed, y, mb, eta=eta, scaling=scaling), expected.mean()
    )
    torch.testing.assert_close(
        regmixup_loss(logits_clean, logits_mixed, y, mb, eta=eta, scaling=scaling, smoothing=0.1),
        scale
        * (
            F.cross_entropy(logits_clean, y, label_smoothing=0.1)
            + eta * mixed_cross_entropy(logits_mixed, mb, smoothing=0.1)
        ),
    )


def test_regmixup_default_is_the_authors_code_scaling():
    y = torch.tensor(Y_A)
    z = _logits()
    torch.testing.assert_close(regmixup_loss(z, z, y, _batch()), regmixup_loss(z, z, y, _batch(), scaling="code"))


def test_regmixup_unknown_scaling_is_refused():
    with pytest.raises(ValueError, match=r"scaling.*'half'.*code.*paper"):
        regmixup_loss(_logits(), _logits(), torch.tensor(Y_A), _batch(), scaling="half")


# ---------------------------------------------------------------- RankMixup: MRL

CLEAN = [[3.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.5, 0.1], [0.2, -0.3, 1.0, 0.0]]
MIXED = [[1.5, 1.0, -0.5, 0.0], [0.5, 1.8, 0.0, 0.2], [4.0, -2.0, 0.0, 0.3]]
RANK_Y = [0, 1, 2]


def _softmax(row: list[float]) -> list[float]:
    return [math.exp(v) for v in _log_softmax(row)]


@pytest.mark.parametrize(
    ("score", "margin"),
    [("logit", 2.0), ("logit", 0.5), ("confidence", 0.1), ("confidence", 0.0)],
)
def test_mrl_matches_hand_computation(score, margin):
    y = torch.tensor(RANK_Y)
    mb = _batch(ya=RANK_Y, yb=[1, 1, 0], lam=[0.6, 0.5, 0.7])  # sample 1 pairs with its own class
    eta = 0.7
    got = rankmixup_loss(
        torch.tensor(CLEAN),
        torch.tensor(MIXED),
        y,
        mb,
        mode="mrl",
        eta=eta,
        margin=margin,
        score=score,
        reduction="none",
    )
    top = max if score == "logit" else (lambda r: max(_softmax(r)))
    expected = []
    for i in range(3):
        ce = _ce(CLEAN[i], RANK_Y[i])
        hinge = max(0.0, top(MIXED[i]) - top(CLEAN[i]) + margin) if i != 1 else 0.0
        expected.append(ce + eta * hinge)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    if score == "logit" and margin == 0.5:
        # sample 0 has mixed top logit 1.5 below clean 3.0 by more than the margin: the hinge is off
        assert got[0].item() == pytest.approx(_ce(CLEAN[0], 0), rel=1e-6)


def test_mrl_same_class_pairs_contribute_nothing():
    y = torch.tensor(RANK_Y)
    mb = _batch(ya=RANK_Y, yb=RANK_Y, lam=[0.6, 0.5, 0.7])
    for score in ("logit", "confidence"):
        got = rankmixup_loss(torch.tensor(CLEAN), torch.tensor(MIXED), y, mb, eta=10.0, score=score, reduction="none")
        torch.testing.assert_close(got, cross_entropy(torch.tensor(CLEAN), y, reduction="none"))


@pytest.mark.parametrize("score", ["logit", "confidence"])
def test_mrl_gradient_step_lowers_mixed_confidence_relative_to_raw(score):
    y = torch.tensor([0, 1])
    mb = _batch(ya=[0, 1], yb=[1, 0], lam=[0.6, 0.7])
    # mixed samples are MORE confident than the raw ones
    logits_clean = torch.tensor([[1.0, 0.5, 0.0], [0.2, 1.0, 0.1]], requires_grad=True)
    logits_mixed = torch.tensor([[3.0, 0.0, -0.5], [-0.5, 3.5, 0.0]], requires_grad=True)

    def gap() -> torch.Tensor:
        with torch.no_grad():
            return logits_mixed.softmax(1).max(1).values - logits_clean.softmax(1).max(1).values

    before = gap()
    assert (before > 0).all()
    total = rankmixup_loss(logits_clean, logits_mixed, y, mb, eta=1.0, margin=0.5, score=score, reduction="sum")
    ranking = total - cross_entropy(logits_clean, y, reduction="sum")
    ranking.backward()
    assert logits_mixed.grad.abs().sum() > 0
    with torch.no_grad():
        for t in (logits_clean, logits_mixed):
            t -= 0.5 * t.grad
    after = gap()
    assert (after < before).all(), (before, after)


# ---------------------------------------------------------------- RankMixup: M-NDCG


def _hand_ndcg_loss(clean, mixed_list, lam_list) -> list[float]:
    """1 - NDCG by hand: raw first (relevance 1), mixed sorted by decreasing max(lam, 1-lam)."""
    out = []
    for i in range(len(clean)):
        items = [(1.0, max(_softmax(clean[i])))]
        mixed_items = [
            (max(lams[i], 1 - lams[i]), max(_softmax(m[i]))) for m, lams in zip(mixed_list, lam_list, strict=True)
        ]
        items += sorted(mixed_items, key=lambda t: -t[0])
        dcg = sum(s / math.log2(r + 1) for r, (_, s) in enumerate(items, start=1))
        idcg = sum(rel / math.log2(r + 1) for r, (rel, _) in enumerate(items, start=1))
        ndcg = dcg / idcg if idcg > dcg else idcg / dcg
        out.append(1.0 - ndcg)
    return out


def _ndcg_case(num_mixed: int):
    clean = [[2.0, 0.0, -0.5], [0.1, 1.5, 0.0]]
    mixed_all = [
        [[0.5, 0.2, 0.0], [0.0, 0.9, 0.3]],
        [[1.2, 0.1, -0.3], [0.4, 0.6, 0.0]],
        [[0.0, 0.3, 0.1], [0.2, 0.0, 0.5]],
    ]
    # relevances: sample 0 -> 0.7, 0.9, 0.6 ; sample 1 -> 0.8, 0.6, 0.95 (no ties)
    lam_all = [[0.7, 0.2], [0.1, 0.6], [0.4, 0.95]]
    return clean, mixed_all[:num_mixed], lam_all[:num_mixed]


@pytest.mark.parametrize("num_mixed", [2, 3])
def test_ndcg_matches_hand_computation(num_mixed):
    clean, mixed, lams = _ndcg_case(num_mixed)
    y = torch.tensor([0, 1])
    batches = [_batch(ya=[0, 1], yb=[1, 0], lam=lam) for lam in lams]
    eta = 0.8
    got = rankmixup_loss(
        torch.tensor(clean), [torch.tensor(m) for m in mixed], y, batches, mode="ndcg", eta=eta, reduction="none"
    )
    ce = [_ce(row, c) for row, c in zip(clean, [0, 1], strict=True)]
    expected = [c + eta * r for c, r in zip(ce, _hand_ndcg_loss(clean, mixed, lams), strict=True)]
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert all(r > 1e-3 for r in _hand_ndcg_loss(clean, mixed, lams))


def test_ndcg_inverts_the_ratio_when_dcg_exceeds_the_ideal():
    # raw confidence ~1, mixed ones above their relevance: DCG > IDCG
    clean = [[30.0, 0.0]]
    mixed = [[[math.log(0.95), math.log(0.05)]], [[math.log(0.9), math.log(0.1)]]]
    lams = [[0.6], [0.7]]
    batches = [_batch(ya=[0], yb=[1], lam=lam) for lam in lams]
    got = rankmixup_loss(
        torch.tensor(clean),
        [torch.tensor(m) for m in mixed],
        torch.tensor([0]),
        batches,
        mode="ndcg",
        eta=1.0,
        reduction="none",
    )
    ranking = got - cross_entropy(torch.tensor(clean), torch.tensor([0]), reduction="none")
    expected = _hand_ndcg_loss(clean, mixed, lams)
    assert 0.0 < expected[0] < 1.0
    assert ranking.item() == pytest.approx(expected[0], abs=1e-5)


def test_ndcg_is_zero_when_scores_equal_relevances():
    # two classes: max softmax of [log r, log(1-r)] is r; a raw logit gap of 100 gives confidence 1.0
    rel = [[0.9, 0.7], [0.75, 0.6]]  # [mixed batch][sample]
    clean = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    mixed = [torch.tensor([[math.log(r), math.log(1 - r)] for r in rows]) for rows in rel]
    batches = [_batch(ya=[0, 1], yb=[1, 0], lam=rows) for rows in rel]
    y = torch.tensor([0, 1])
    got = rankmixup_loss(clean, mixed, y, batches, mode="ndcg", eta=3.0, reduction="none")
    torch.testing.assert_close(got, cross_entropy(clean, y, reduction="none"), rtol=0, atol=1e-5)
    # and a mismatch gives a positive ranking term
    worse = [m.flip(1) for m in mixed]  # now the mixed confidence is on the wrong class but max still r
    off = [torch.tensor([[0.0, 0.0], [0.0, 0.0]]), mixed[1]]
    assert torch.allclose(
        rankmixup_loss(clean, worse, y, batches, mode="ndcg", eta=3.0), cross_entropy(clean, y), atol=1e-5
    )
    assert rankmixup_loss(clean, off, y, batches, mode="ndcg", eta=3.0) > cross_entropy(clean, y) + 1e-3


# ---------------------------------------------------------------- bad input


def _rank_args(**overrides):
    args = {
        "logits_clean": torch.tensor(CLEAN),
        "logits_mixed": torch.tensor(MIXED),
        "y": torch.tensor(RANK_Y),
        "mb": _batch(ya=RANK_Y, yb=[1, 1, 0], lam=[0.6, 0.5, 0.7]),
    }
    args.update(overrides)
    return args


BAD_INPUTS = {
    "logits_1d": (lambda: mixed_cross_entropy(torch.zeros(3), _batch()), "(3,)"),
    "logits_3d": (lambda: mixed_cross_entropy(torch.zeros(3, 4, 2), _batch()), "(3, 4, 2)"),
    "logits_rows": (lambda: mixed_cross_entropy(torch.zeros(5, 4), _batch()), "5"),
    "logits_int": (lambda: mixed_cross_entropy(torch.zeros(3, 4, dtype=torch.long), _batch()), "(3, 4)"),
    "class_too_big": (lambda: mixed_cross_entropy(_logits(), _batch(ya=[0, 4, 1])), "4"),
    "class_negative": (lambda: mixed_cross_entropy(_logits(), _batch(ya=[0, -2, 1])), "-2"),
    "class_b_too_big": (lambda: mixed_cross_entropy(_logits(), _batch(yb=[1, 5, 0])), "5"),
    "class_b_negative": (lambda: mixed_cross_entropy(_logits(), _batch(yb=[1, -3, 0])), "-3"),
    "soft_width": (
        lambda: mixed_cross_entropy(torch.zeros(3, 5), _batch(soft=True)),
        "5",
    ),
    "smoothing_high": (lambda: mixed_cross_entropy(_logits(), _batch(), smoothing=1.5), "1.5"),
    "smoothing_low": (lambda: mixed_cross_entropy(_logits(), _batch(), smoothing=-0.25), "-0.25"),
    "reduction": (lambda: mixed_cross_entropy(_logits(), _batch(), reduction="avg"), "avg"),
    "bce_rows": (lambda: mixed_bce(torch.zeros(2, 4), _batch()), "2"),
    "bce_class": (lambda: mixed_bce(_logits(), _batch(ya=[7, 0, 1])), "7"),
    "bce_smoothing": (lambda: mixed_bce(_logits(), _batch(), smoothing=2.5), "2.5"),
    "bce_threshold": (lambda: mixed_bce(_logits(), _batch(), target_threshold=1.25), "1.25"),
    "bce_reduction": (lambda: mixed_bce(_logits(), _batch(), reduction="max"), "max"),
    "dm_eta": (lambda: decoupled_mixup_loss(_logits(), _batch(), eta=-0.5), "-0.5"),
    "dm_lam_power": (lambda: decoupled_mixup_loss(_logits(), _batch(), lam_power=-2.0), "-2.0"),
    "dm_rows": (lambda: decoupled_mixup_loss(torch.zeros(4, 4), _batch()), "4"),
    "dm_class": (lambda: decoupled_mixup_loss(_logits(), _batch(ya=[0, 9, 1])), "9"),
    "dm_class_b": (lambda: decoupled_mixup_loss(_logits(), _batch(yb=[0, 6, 1])), "6"),
    "dm_reduction": (lambda: decoupled_mixup_loss(_logits(), _batch(), reduction="avg"), "avg"),
    "reg_eta": (
        lambda: regmixup_loss(_logits(), _logits(), torch.tensor(Y_A), _batch(), eta=-0.5),
        "-0.5",
    ),
    "reg_mixed_rows": (
        lambda: regmixup_loss(_logits(), torch.zeros(6, 4), torch.tensor(Y_A), _batch()),
        "6",
    ),
    "reg_smoothing": (
        lambda: regmixup_loss(_logits(), _logits(), torch.tensor(Y_A), _batch(), smoothing=1.5),
        "1.5",
    ),
    "reg_clean_class": (
        lambda: regmixup_loss(_logits(), _logits(), torch.tensor([0, 4, 1]), _batch()),
        "4",
    ),
    "rank_eta": (lambda: rankmixup_loss(**_rank_args(), eta=-0.5), "-0.5"),
    "rank_margin": (lambda: rankmixup_loss(**_rank_args(), margin=-1.5), "-1.5"),
    "rank_mode": (lambda: rankmixup_loss(**_rank_args(), mode="listwise"), "listwise"),
    "rank_score": (lambda: rankmixup_loss(**_rank_args(), score="entropy"), "entropy"),
    "rank_reduction": (lambda: rankmixup_loss(**_rank_args(), reduction="avg"), "avg"),
    "rank_mixed_rows": (lambda: rankmixup_loss(**_rank_args(logits_mixed=torch.zeros(7, 4))), "7"),
    "rank_mixed_1d": (lambda: rankmixup_loss(**_rank_args(logits_mixed=torch.zeros(3))), "(3,)"),
    "rank_mb_size": (
        lambda: rankmixup_loss(**_rank_args(mb=_batch(ya=[0, 1], yb=[1, 0], lam=[0.5, 0.5]))),
        "2",
    ),
    "rank_count_mismatch": (
        lambda: rankmixup_loss(**_rank_args(logits_mixed=[torch.zeros(3, 4)] * 2, mb=[_batch()]), mode="ndcg"),
        "2",
    ),
    "rank_mrl_two_batches": (
        lambda: rankmixup_loss(**_rank_args(logits_mixed=[torch.zeros(3, 4)] * 2, mb=[_batch()] * 2), mode="mrl"),
        "2",
    ),
    "rank_clean_class": (lambda: rankmixup_loss(**_rank_args(y=torch.tensor([0, 1, 8]))), "8"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_mixlab_error_naming_the_value(case):
    call, shown = BAD_INPUTS[case]
    with pytest.raises(MixlabError) as info:
        call()
    err = info.value
    assert isinstance(err, (ValueError, TypeError))
    assert shown in str(err), str(err)


@pytest.mark.parametrize(
    "call",
    [
        lambda: mixed_cross_entropy(torch.zeros(3, 5), _batch(soft=True)),
        lambda: mixed_cross_entropy(_logits(), _batch(), smoothing=1.5),
        lambda: mixed_cross_entropy(_logits(), _batch(ya=[0, 4, 1])),
        lambda: decoupled_mixup_loss(_logits(), _batch(), eta=-1.0),
    ],
)
def test_value_errors_are_value_errors(call):
    with pytest.raises(MixlabValueError) as info:
        call()
    assert isinstance(info.value, ValueError)


# Regression: cross_entropy builds its batch as MixedBatch.unmixed(logits, y), so the row check
# once compared the logits with themselves and a target shorter than the logits was broadcast:
# cross_entropy(zeros(3, 4), tensor([2])) returned a number. regmixup_loss and rankmixup_loss
# inherited it through their clean term.
@pytest.mark.parametrize(
    "call",
    [
        lambda: cross_entropy(torch.zeros(3, 4), torch.tensor([2])),
        lambda: regmixup_loss(_logits(), _logits(), torch.tensor([2]), _batch()),
        lambda: rankmixup_loss(**_rank_args(y=torch.tensor([2]))),
    ],
    ids=["cross_entropy", "regmixup", "rankmixup"],
)
def test_clean_targets_of_the_wrong_length_are_rejected(call):
    with pytest.raises(MixlabValueError) as info:
        call()
    assert "(1,)" in str(info.value), str(info.value)


# Both targets are range-checked: a bad target_b must not reach scatter_add_ as a bare RuntimeError.
@pytest.mark.parametrize("yb", [[0, 0, -4], [0, 0, 4]], ids=["negative", "too_big"])
@pytest.mark.parametrize(
    "call",
    [lambda mb: mixed_bce(_logits(), mb), lambda mb: mb.soft_targets(K)],
    ids=["mixed_bce", "soft_targets"],
)
def test_bad_target_b_raises_mixlab_error(call, yb):
    mb = _batch(yb=yb)
    with pytest.raises(MixlabValueError):
        mixed_cross_entropy(_logits(), mb)  # the CE path already checks target_b
    with pytest.raises(MixlabValueError) as info:
        call(mb)
    assert str(yb[2]) in str(info.value)


def test_unmixed_samples_get_no_ranking_or_decoupled_term():
    # lam in {0, 1} with a different-class partner: the sample is not mixed at all.
    y = torch.tensor([0, 1])
    mb = MixedBatch(torch.zeros(2, 1), y, y.flip(0), torch.tensor([1.0, 0.0]), torch.tensor([1, 0]))
    z = torch.tensor([[2.0, 0.5], [0.3, 1.0]])
    clean = mixed_cross_entropy(z, mb)
    torch.testing.assert_close(rankmixup_loss(z, z, y, mb, eta=1.0), cross_entropy(z, y))
    torch.testing.assert_close(decoupled_mixup_loss(z, mb, eta=1.0), clean)
