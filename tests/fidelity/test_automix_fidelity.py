"""AutoMix against the authors' code, by hand on small fixed tensors.

Reference: Westlake-AI/openmixup ``openmixup/models/classifiers/automix.py`` (``AutoMixup``: two λ/permutation
draws, ``pixel_mixup`` with ``lam_margin``, ``forward_k`` on the momentum encoder in train mode, losses
``mix_q + one_q + mix_k + mask``), ``openmixup/models/heads/pmix_block.py`` (``PixelMixBlock.forward`` and
``mask_loss`` "L1": ``max(|1 - mean(m_partner) - λ| - margin, 0)`` over the whole batch),
``openmixup/core/hooks/momentum_hook.py`` (``CosineScheduleHook``) and the CIFAR config
``configs/classification/cifar100/automix/basic/r18_l2_a2_near_L1_01_mlr5e_2.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from mixlab.batch import MixedBatch
from mixlab.methods.context import forward_until
from mixlab.methods.learned import AUX_KEY, AutoMix, MixBlock, cosine_momentum, mask_mean_loss
from mixlab.models import create_model

BASE, END = 0.999, 0.999999


def tiny_cnn(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cnn_small", num_classes=classes, input_size=16)


def batch(n: int = 8, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, classes, (n,), generator=g)


# ------------------------------------------------------------------ the momentum schedule


@pytest.mark.parametrize(
    ("step", "want"),
    [
        (0, BASE),  # held at the base for the first int(0.1 K) steps ("constant" warming up)
        (99, BASE),
        # from step 100: END - (END - BASE)(cos(pi k / K) + 1) / 2 with k / K, not the progress after the delay
        (100, 0.999999 - 0.000999 * (0.9510565162951535 + 1.0) / 2.0),
        (500, 0.999999 - 0.000999 * 0.5),
        (750, 0.999999 - 0.000999 * (1.0 - 0.7071067811865476) / 2.0),
        (1000, END),
        (1500, END),  # past the end the hook leaves the last value
    ],
)
def test_momentum_follows_the_cosine_schedule_hook(step: int, want: float) -> None:
    assert cosine_momentum(step, 1000, BASE, END, 0.1) == pytest.approx(want, abs=1e-12)
    assert cosine_momentum(step, None, BASE, END, 0.1) == BASE  # never told the run's length: constant


def test_encoder_update_uses_the_momentum_of_its_step() -> None:
    """After step k the encoder's weights become m(k) * encoder + (1 - m(k)) * model (the hook's order)."""
    model = tiny_cnn()
    mixer = AutoMix(model=model)
    mixer.start_training(10)
    with torch.no_grad():
        for p in mixer.encoder.parameters():
            p.zero_()
        for p in model.parameters():
            p.fill_(1.0)
    mixer.steps = 5  # cos(pi/2) = 0: m = END - (END - BASE) / 2
    mixer.after_step()
    m5 = 0.999999 - 0.000999 / 2
    for p in mixer.encoder.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1.0 - m5), rtol=1e-5, atol=1e-9)
    assert mixer.steps == 6


# ------------------------------------------------------------------ the mask loss


def test_mask_loss_compares_the_batch_mean_with_lambda_beyond_the_margin() -> None:
    # mask of x (own weight) for two samples of four pixels; the reference takes 1 - mean(partner weight)
    mask = torch.tensor([[[0.9, 0.8], [0.7, 1.0]], [[0.1, 0.2], [0.0, 0.3]]])
    mean = (0.9 + 0.8 + 0.7 + 1.0 + 0.1 + 0.2 + 0.0 + 0.3) / 8  # 0.5
    lam = torch.tensor([0.75, 0.75])
    torch.testing.assert_close(mask_mean_loss(mask, lam, 0.1), torch.tensor(max(abs(mean - 0.75) - 0.1, 0.0)))
    # the batch mean equals λ: no loss, though each sample is far from it (the per-sample mode sees that)
    even = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    half = torch.tensor([0.5, 0.5])
    assert float(mask_mean_loss(even, half, 0.1)) == 0.0
    torch.testing.assert_close(mask_mean_loss(even, half, 0.1, "sample"), torch.tensor(0.4))


def test_mask_term_of_the_mixer() -> None:
    """``"mask"`` = 0.1 * max(|mean over the batch of the Mix Block's own-sample weight - λ_mb| - 0.1, 0)."""
    model = tiny_cnn()
    mixer = AutoMix(model=model, lam=0.9)
    x, y = batch()
    mb = mixer(x, y, torch.Generator().manual_seed(0))
    generated = mb.aux[AUX_KEY]
    own = generated.mask[:, 0].detach()
    want = 0.1 * max(abs(float(own.mean()) - 0.9) - 0.1, 0.0)
    assert want > 0
    terms = mixer.loss_terms(mb, mb.forward(model))
    assert float(terms["mask"].detach()) == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ the Mix Block


def pixel_mix_block_by_hand(
    features: torch.Tensor, perm: list[int], weight: list[list[float]], bias: list[float], lam: float | None
) -> list[list[float]]:
    """``PixelMixBlock.forward`` with width 1 (query = key projection row 0, value row 1), one spatial row.

    Returns, per sample and position, the weight of the sample itself: ``1 - sigmoid(P v)``.
    """
    n, c, _, length = features.shape

    def project(row: int, sample: int, pos: int, ratio: float | None) -> float:
        value = sum(weight[row][ch] * float(features[sample, ch, 0, pos]) for ch in range(c)) + bias[row]
        return value if ratio is None else value + weight[row][c] * ratio

    out = []
    for i in range(n):
        j = perm[i]
        own_ratio, partner_ratio = (None, None) if lam is None else (lam, 1.0 - lam)
        row = []
        for p in range(length):
            q = project(0, i, p, own_ratio)
            scores = [q * project(0, j, t, partner_ratio) for t in range(length)]  # d = 1: no scaling
            top = max(scores)
            expo = [math.exp(s - top) for s in scores]
            z = sum(e / sum(expo) * project(1, j, t, partner_ratio) for t, e in enumerate(expo))
            row.append(1.0 - 1.0 / (1.0 + math.exp(-z)))
        out.append(row)
    return out


@pytest.mark.parametrize("lam_concat", [False, True])
def test_mix_block_by_hand(lam_concat: bool) -> None:
    features = torch.tensor(
        [[[[0.5, -1.0, 2.0]], [[1.5, 0.3, -0.7]]], [[[-0.2, 0.8, 1.1]], [[0.4, -1.3, 0.9]]]]
    )  # (2, 2, 1, 3)
    weight = [[1.0, 0.5, 0.7], [0.3, -0.2, 1.2]] if lam_concat else [[1.0, 0.5], [0.3, -0.2]]
    bias = [0.1, 0.05]
    block = MixBlock(2, reduction=2, lam_concat=lam_concat)  # width 1
    with torch.no_grad():
        block.projection.weight.copy_(torch.tensor(weight))
        block.projection.bias.copy_(torch.tensor(bias))
    sources, weights = torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0.25, 0.75]]).expand(2, 2)
    mask = block(features, sources, weights, (2, 6))  # nearest x2 in both dims
    want = torch.tensor(pixel_mix_block_by_hand(features, [1, 0], weight, bias, 0.25 if lam_concat else None))
    want = want.repeat_interleave(2, dim=1).unsqueeze(1).expand(2, 2, 6)
    torch.testing.assert_close(mask[:, 0], want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mask[:, 1], 1.0 - want, atol=1e-6, rtol=1e-6)


def test_mix_block_starts_at_one_half() -> None:
    """N(0, 0.01²) weights and zero biases (the reference's init): the first masks are about 0.5 everywhere."""
    torch.manual_seed(0)
    mask = MixBlock(64)(
        torch.randn(4, 64, 4, 4), torch.tensor([[0, 1], [1, 0], [2, 3], [3, 2]]), torch.rand(4, 2), (16, 16)
    )
    assert float((mask.detach() - 0.5).abs().max()) < 0.05


# ------------------------------------------------------------------ the step


def test_two_draws_the_margin_and_the_teacher_on_the_whole_batch() -> None:
    model = tiny_cnn()
    mixer = AutoMix(model=model)
    x, y = batch()
    mb = mixer(x, y, torch.Generator().manual_seed(1))
    generated = mb.aux[AUX_KEY]
    # two λ and two permutations: one for the classifier (mb), one for the Mix Block (aux)
    assert not torch.equal(generated.sources, mb.sources) and not torch.equal(generated.weights, mb.weights)
    # the teacher: the momentum encoder in train mode (batch statistics) on the Mix Block's whole sample
    terms = mixer.loss_terms(mb, mb.forward(model))
    with torch.no_grad():
        logits = forward_until(mixer.encoder, generated.mixed, ["output"], train=True)["output"]
    log_p = logits.log_softmax(1)
    lam = generated.weights[:, 0]
    by_hand = -(lam * log_p[torch.arange(8), y] + (1 - lam) * log_p[torch.arange(8), y[generated.sources[:, 1]]])
    torch.testing.assert_close(terms["mix_block"], by_hand.mean(), atol=1e-5, rtol=1e-5)
    # the clean cross-entropy of the classifier, from the joint forward of the mixed and the clean batch
    with torch.no_grad():
        clean_logits = model(torch.cat([mb.inputs, x]))[8:]
    torch.testing.assert_close(terms["clean"], torch.nn.functional.cross_entropy(clean_logits, y))


@pytest.mark.parametrize(("lam", "linear"), [(0.05, True), (0.95, True), (0.08, True), (0.2, False)])
def test_lam_margin_gives_the_classifier_plain_mixup(lam: float, linear: bool) -> None:
    """λ <= 0.08 or λ >= 0.92: the classifier's mask is λ everywhere; the Mix Block's sample stays masked."""
    model = tiny_cnn()
    mixer = AutoMix(model=model, lam=lam)
    x, y = batch()
    mb = mixer(x, y, torch.Generator().manual_seed(2))
    plain = lam * x + (1 - lam) * x[mb.perm]
    assert torch.allclose(mb.inputs, plain, atol=1e-6) == linear
    generated = mb.aux[AUX_KEY]
    assert float(generated.mask[:, 0].detach().std()) > 0  # a learned mask, not a constant


def test_one_ratio_per_sample_and_the_label_rule() -> None:
    """The classifier's label weight is its drawn λ, not its mask's mean (the reference's ``(y, y[idx], lam)``)."""
    model = tiny_cnn()
    mixer = AutoMix(model=model, lam_mode="sample", lam_margin=0.0)
    x, y = batch()
    mb = mixer(x, y, torch.Generator().manual_seed(3))
    assert mb.lam.unique().numel() == 8
    assert not torch.allclose(mb.lam, mb.mask.flatten(1).mean(1), atol=1e-3)
    soft = mb.soft_targets(3)
    by_hand = torch.zeros(8, 3)
    by_hand[torch.arange(8), y] += mb.lam
    by_hand[torch.arange(8), y[mb.perm]] += 1 - mb.lam
    torch.testing.assert_close(soft, by_hand)
    assert isinstance(mb, MixedBatch) and mb.num_sources == 2
