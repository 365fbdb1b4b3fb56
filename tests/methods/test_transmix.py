"""TransMix: CutMix inputs, labels from the mixed forward's class attention on a ViT."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixer_checks import assert_mixer_contract, assert_trains, digits, own_loop, small_cnn
from mixlab.errors import MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.losses import mixed_cross_entropy
from mixlab.methods.attention import (
    TRANSMIX_BASES,
    TransMix,
    attention_lambda,
    patch_mask,
    transmix_lambda,
)
from mixlab.methods.context import MixContext
from mixlab.models import ViTTiny, create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def small_vit(seed: int = 0, **options: object) -> ViTTiny:
    torch.manual_seed(seed)
    return create_model("vit_tiny", 10, 1, 16, **{"dim": 32, "depth": 2, "heads": 2, **options})  # type: ignore[return-value]


def forward_with_attention(mb: object, model: ViTTiny) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``mb.forward(model)`` and return the outputs and the last block's attention seen on the way."""
    seen: list[torch.Tensor] = []
    handle = model.blocks[-1].attn.map.register_forward_hook(lambda _m, _a, out: seen.append(out.detach()))
    try:
        outputs = mb.forward(model)
    finally:
        handle.remove()
    return outputs, seen[0]


def test_contract_on_a_small_vit() -> None:
    x, y = digits(24)
    model = small_vit()
    mb = assert_mixer_contract(TransMix(model=model), x, y, model, lam_is_mask_mean=True)
    assert mb.forward_fn is not None and mb.mask is not None


def test_lam_after_forward_is_the_mean_of_area_and_class_attention_share() -> None:
    x, y = digits(16)
    model = small_vit()
    mixer = TransMix(model=model, lam_mode="sample")
    mb = mixer(x, y, generator=torch.Generator().manual_seed(5), context={"model": model})
    area = mb.lam.clone()
    torch.testing.assert_close(area, mb.mask.flatten(1).mean(1))  # before the forward: the area ratio
    _, attention = forward_with_attention(mb, model)
    cls = attention[:, :, 0, 1:].mean(dim=1)  # (N, 16): the class token's attention over the 4x4 patches
    # the mask read at each 4x4-pixel patch's top-left pixel (nearest-neighbour down-sampling)
    keep = mb.mask.expand(16, 1, 16, 16)[:, 0, ::4, ::4].flatten(1)
    assert bool(((keep == 0) | (keep == 1)).all())
    expected = (area + (cls * keep).sum(1) / cls.sum(1)) / 2
    torch.testing.assert_close(mb.lam, expected)
    assert mb.lam.dtype == torch.float32 and not mb.lam.requires_grad
    assert bool(((mb.lam >= 0) & (mb.lam <= 1)).all())
    assert not torch.allclose(mb.lam, area), "the attention did not change the label weight"
    mb.forward(model)  # a second forward recomputes from the area ratio, it does not compound
    torch.testing.assert_close(mb.lam, expected)


def test_attention_rule_uses_the_attention_share_alone() -> None:
    x, y = digits(16)
    model = small_vit()
    mixer = TransMix(model=model, lam_mode="sample", lam_rule="attention")
    mb = mixer(x, y, generator=torch.Generator().manual_seed(5), context={"model": model})
    area = mb.lam.clone()
    _, attention = forward_with_attention(mb, model)
    torch.testing.assert_close(mb.lam, attention_lambda(attention, mb.mask))
    torch.testing.assert_close(mb.lam, 2 * transmix_lambda(attention, mb.mask, area) - area)
    assert "lam_rule='attention'" in repr(mixer)


def test_lam_is_detached_and_the_task_loss_backpropagates() -> None:
    x, y = digits(8)
    model = small_vit().train()
    mb = TransMix(model=model)(x, y, generator=torch.Generator().manual_seed(0), context={"model": model})
    loss = mixed_cross_entropy(mb.forward(model), mb)
    assert not mb.lam.requires_grad
    loss.backward()
    assert model.patch_embed.weight.grad is not None and model.patch_embed.weight.grad.abs().sum() > 0


def test_unmixed_samples_keep_lam_one() -> None:
    x, y = digits(32)
    model = small_vit()
    mixer = TransMix(model=model, lam_mode="sample", p=0.5)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(1), context={"model": model})
    whole = mb.mask.flatten(1).amin(1) == 1.0
    assert whole.any() and (~whole).any()
    mb.forward(model)
    assert torch.equal(mb.lam[whole], torch.ones(int(whole.sum())))
    unmixed = TransMix(model=model, p=0.0)(x, y, context={"model": model})
    assert unmixed.forward_fn is None and torch.equal(unmixed.lam, torch.ones(32))


def test_works_through_a_ddp_style_wrapper() -> None:
    class Wrapper(nn.Module):
        def __init__(self, module: nn.Module):
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    x, y = digits(8)
    model = small_vit()
    wrapped = Wrapper(model)
    mixer = TransMix(model=wrapped)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(2), context=MixContext(mixer, wrapped)(x, y))
    area = mb.lam.clone()
    outputs, attention = forward_with_attention(mb, model)
    assert outputs.shape == (8, 10)
    torch.testing.assert_close(mb.lam, transmix_lambda(attention, mb.mask, area))


def test_chosen_layer_and_unknown_layer() -> None:
    x, y = digits(8)
    model = small_vit()
    mixer = TransMix(model=model, layer="blocks.0.attn.map", lam=0.5)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(0), context={"model": model})
    area = mb.lam.clone()
    seen: list[torch.Tensor] = []
    handle = model.blocks[0].attn.map.register_forward_hook(lambda _m, _a, out: seen.append(out))
    mb.forward(model)
    handle.remove()
    torch.testing.assert_close(mb.lam, transmix_lambda(seen[0], mb.mask, area))
    with pytest.raises(
        UnknownNameError, match=r"unknown attention layer 'blocks.9.attn.map'; known: .*blocks.0.attn.map"
    ):
        TransMix(model=model, layer="blocks.9.attn.map")


@pytest.mark.parametrize("base", TRANSMIX_BASES)
def test_each_cutting_base(base: str) -> None:
    x, y = digits(8)
    model = small_vit()
    mixer = TransMix(model=model, base=base, alpha=1.0)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(4), context={"model": model})
    assert mb.inputs.shape == x.shape
    area = mb.lam.clone()
    outputs, attention = forward_with_attention(mb, model)
    assert torch.isfinite(outputs).all()
    assert bool(((mb.lam >= 0) & (mb.lam <= 1)).all())
    torch.testing.assert_close(mb.lam, transmix_lambda(attention, mb.mask, area))


def test_base_options_and_unknown_bases() -> None:
    model = small_vit()
    assert TransMix(model=model, base="fmix", base_options={"decay_power": 2.0}).base.decay_power == 2.0
    with pytest.raises(UnknownNameError, match=r"unknown base mixer for transmix 'mixup'; known: cutmix, fmix"):
        TransMix(model=model, base="mixup")
    with pytest.raises(MixlabValueError, match=r"give alpha to transmix itself, not in base_options"):
        TransMix(model=model, base_options={"alpha": 0.5})
    with pytest.raises(MixlabTypeError, match=r"cutmix does not take decay_power"):
        TransMix(model=model, base_options={"decay_power": 2.0})
    with pytest.raises(MixlabTypeError, match=r"base_options must be a dict"):
        TransMix(model=model, base_options=[1])  # type: ignore[arg-type]
    with pytest.raises(MixlabValueError, match=r"alpha must be a finite number > 0"):
        TransMix(model=model, alpha=-1.0)
    with pytest.raises(UnknownNameError, match=r"unknown transmix lam_rule 'area'; known: attention, mean"):
        TransMix(model=model, lam_rule="area")


def test_defaults_follow_the_paper() -> None:
    mixer = TransMix()
    assert mixer.name == "transmix" and mixer.spatial and mixer.base.name == "cutmix"
    assert mixer.lam_rule == "mean"  # the authors' code: (area + attention) / 2
    assert mixer.needs.model and mixer.needs.attention
    assert mixer.base.lam_sampler.alpha == 1.0  # CutMix's alpha in the DeiT recipe the paper trains with
    assert TransMix(alpha=0.3).base.lam_sampler.alpha == 0.3
    assert mixer.p == 1.0 and mixer.base.p == 1.0  # the DeiT recipe mixes every batch, whatever the base's default
    assert TransMix(p=0.5).base.p == 0.5
    assert TransMix(base="saliencymix").base.p == 1.0


def test_refuses_a_model_without_attention() -> None:
    x, y = digits(4)
    cnn = small_cnn()
    with pytest.raises(
        MixlabValueError, match=r"transmix needs a model that exposes attention maps.*vit_tiny.*CNNSmall"
    ):
        TransMix(model=cnn)
    mixer = TransMix()
    with pytest.raises(MixlabValueError, match=r"transmix needs a model that exposes attention maps"):
        mixer(x, y, context={"model": cnn})
    with pytest.raises(MixlabValueError, match=r"needs a model that exposes attention maps"):
        MixContext(mixer, cnn)
    with pytest.raises(MixlabValueError, match=r"transmix needs the model .*model=.*MixContext"):
        mixer(x, y)


def test_patch_mask_and_attention_lambda_by_hand() -> None:
    weight = torch.ones(2, 1, 4, 6)
    weight[0, :, :2, :3] = 0.0  # the top-left patch of a 2x2 grid (2x3 pixels each) from the partner
    weight[1, :, :, 0] = 0.0  # the first column: the top-left pixels of patches 0 and 2
    weight[1, :, 1, 3:] = 0.0  # row 1 of patch 1: not its top-left pixel, so patch 1 stays x_i's
    torch.testing.assert_close(patch_mask(weight, 4), torch.tensor([[0.0, 1, 1, 1], [0.0, 1, 0, 1]]))
    attention = torch.zeros(2, 2, 5, 5)
    attention[:, 0, 0] = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])
    attention[:, 1, 0] = torch.tensor([0.0, 0.4, 0.2, 0.2, 0.2])
    # mean over heads over the patches: [0.3, 0.2, 0.2, 0.2], total 0.9
    expected = torch.tensor([0.6 / 0.9, 0.4 / 0.9])
    torch.testing.assert_close(attention_lambda(attention, weight), expected)
    with pytest.raises(MixlabValueError, match=r"5 patch tokens do not form a grid"):
        patch_mask(weight, 5)
    with pytest.raises(MixlabValueError, match=r"transmix reads 2-D masks"):
        patch_mask(torch.ones(2, 1, 8), 4)


def test_trains_a_small_vit_in_a_users_loop() -> None:
    x, y = digits()
    model = small_vit(dim=48)
    result = own_loop(TransMix(model=model), model, x, y, steps=200, lr=0.03)
    assert_trains(result)
