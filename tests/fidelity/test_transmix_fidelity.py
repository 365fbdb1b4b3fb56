"""TransMix against the authors' label rule, computed by hand.

Chen et al., CVPR 2022, arXiv 2111.09833; the authors' code (Beckschen/TransMix,
``transmix.py``, ``Mixup_transmix.transmix_label``) works from the partner's side:
``lam0`` is the box's share of the pixels, the box mask is down-sampled to the patch
grid by nearest neighbour, ``lam1 = w2 / (w1 + w2)`` is the share of the class
token's (head-averaged) attention on the partner's patches, and the partner's label
weight is ``(lam0 + lam1) / 2`` (Sec. 4.1: "the mean of both methods"; issue #7).
mixlab reports the weight of ``x_i``, so it must equal ``1 - (lam0 + lam1) / 2``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixlab.errors import UnknownNameError
from mixlab.methods.attention import TransMix, attention_lambda, patch_mask, transmix_lambda


def box_mask(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """x_i's weight with the partner's box ``rows x cols`` pasted in: ``(1, 1, H, W)``."""
    weight = torch.ones(1, 1, height, width)
    weight[..., rows[0] : rows[1], cols[0] : cols[1]] = 0.0
    return weight


def test_label_weight_of_a_box_by_hand() -> None:
    # 8x8 image, 2x2 grid of 4x4 patches; the partner's box covers rows 1-4 and columns 3-7 (20 pixels).
    weight = box_mask(8, 8, (1, 5), (3, 8))
    # Heads' class-token rows over [cls, p0, p1, p2, p3]; averaged over the two heads the patches get
    # [0.2, 0.2, 0.1, 0.3] (total 0.8).
    attention = torch.zeros(1, 2, 5, 5)
    attention[0, 0, 0] = torch.tensor([0.1, 0.3, 0.2, 0.1, 0.3])
    attention[0, 1, 0] = torch.tensor([0.3, 0.1, 0.2, 0.1, 0.3])
    # Nearest-neighbour down-sampling reads pixels (0,0), (0,4), (4,0), (4,4): only (4,4) lies in the box.
    assert patch_mask(weight, 4).tolist() == [[1.0, 1.0, 1.0, 0.0]]
    lam0 = 20 / 64  # the partner's area
    lam1 = 0.3 / 0.8  # the attention on the partner's patch (p3) over all patch attention
    partner = (lam0 + lam1) / 2  # 0.34375
    area_lam = torch.tensor([1 - lam0])
    torch.testing.assert_close(transmix_lambda(attention, weight, area_lam), torch.tensor([1 - partner]))
    torch.testing.assert_close(transmix_lambda(attention, weight, area_lam), torch.tensor([0.65625]))
    # the formula of Sec. 3 alone
    torch.testing.assert_close(
        transmix_lambda(attention, weight, area_lam, lam_rule="attention"), torch.tensor([1 - lam1])
    )
    torch.testing.assert_close(attention_lambda(attention, weight), torch.tensor([0.625]))
    # averaging the mask over each patch (mixlab before) gives another weight: the patches keep
    # 13/16, 4/16, 15/16 and 12/16 of x_i's pixels
    per_patch_mean = (0.2 * 13 / 16 + 0.2 * 4 / 16 + 0.1 * 15 / 16 + 0.3 * 12 / 16) / 0.8
    assert per_patch_mean == pytest.approx(0.6640625)
    assert attention_lambda(attention, weight).item() != pytest.approx(per_patch_mean, abs=1e-3)


class FixedAttentionViT(nn.Module):
    """A stand-in ViT whose last-block attention is a fixed tensor, so the label can be computed by hand."""

    attention_layers = ("attn",)
    num_prefix_tokens = 1

    def __init__(self, attention: torch.Tensor):
        super().__init__()
        self.attn = nn.Identity()
        self.register_buffer("fixed", attention)
        self.head = nn.Linear(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.attn(self.fixed[: x.shape[0]])
        return self.head(x.mean(dim=(1, 2, 3)).unsqueeze(1))


@pytest.mark.parametrize("lam_rule", ["mean", "attention"])
def test_mixer_label_equals_the_code_rule_on_its_own_boxes(lam_rule: str) -> None:
    n, size, grid = 6, 12, 3  # 12x12 images, 3x3 patches of 4x4 pixels
    g = torch.Generator().manual_seed(0)
    attention = torch.rand(n, 2, 1 + grid * grid, 1 + grid * grid, generator=g).softmax(dim=-1)
    model = FixedAttentionViT(attention)
    x, y = torch.randn(n, 1, size, size, generator=g), torch.arange(n) % 3
    mixer = TransMix(model=model, alpha=1.0, lam_mode="sample", lam_rule=lam_rule)
    params = mixer.sample(x, y, torch.Generator().manual_seed(3), context={"model": model})
    mb = mixer.apply(x, y, params, context={"model": model})
    mb.forward(model)
    lo, hi = params.extra["lo"], params.extra["hi"]
    heads_mean = attention[:, :, 0, 1:].mean(dim=1)
    expected = []
    for i in range(n):
        (r0, c0), (r1, c1) = lo[i].tolist(), hi[i].tolist()
        lam0 = (r1 - r0) * (c1 - c0) / size**2
        in_box = [r0 <= 4 * (p // grid) < r1 and c0 <= 4 * (p % grid) < c1 for p in range(grid * grid)]
        w2 = sum(float(heads_mean[i, p]) for p in range(grid * grid) if in_box[p])
        lam1 = w2 / float(heads_mean[i].sum())
        partner = (lam0 + lam1) / 2 if lam_rule == "mean" else lam1
        expected.append(1 - partner)
    torch.testing.assert_close(mb.lam, torch.tensor(expected), atol=1e-6, rtol=1e-6)
    assert len({round(v, 6) for v in expected}) > 1


def test_unknown_rule_is_refused_at_construction() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown transmix lam_rule 'paper'; known: attention, mean"):
        TransMix(lam_rule="paper")
    with pytest.raises(UnknownNameError, match=r"lam_rule 1"):
        TransMix(lam_rule=1)  # type: ignore[arg-type]
