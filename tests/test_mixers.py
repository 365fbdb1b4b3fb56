"""Contract invariants of every mixer, checked with hypothesis over shapes, dtypes and λ modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mixlab
from mixer_checks import assert_mixer_contract
from mixlab.methods.saliency import saliency_peaks

NUM_CLASSES = 5
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MASKING = ["cutmix", "resizemix", "fmix", "gridmix", "smoothmix", "saliencymix"]
BINARY_MASKING = ["cutmix", "resizemix", "fmix", "gridmix", "saliencymix"]
INTERPOLATING = ["mixup", "midpoint", "manifold_mixup"]
ALL = MASKING + INTERPOLATING + ["random_choice"]
# float32 arithmetic on values of order 1: a few ulps.
TOL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}

PROPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_mixer(name: str, lam_mode: str = "batch", p: float = 1.0, **params) -> mixlab.Mixer:
    if name == "random_choice":
        return mixlab.create_mixer(
            name, mixers=["mixup", {"name": "cutmix", "alpha": 1.0}, "fmix"], mode=lam_mode, p=p, **params
        )
    alpha = {} if name in ("midpoint", "resizemix") else {"alpha": 1.0}
    return mixlab.create_mixer(name, lam_mode=lam_mode, p=p, num_classes=NUM_CLASSES, **alpha, **params)


@st.composite
def batches(draw, name: str):
    """Random (x, y) for a mixer: spatial 1-3 D inputs for masks, any rank for interpolation."""
    n = draw(st.integers(1, 6))
    if name in MASKING or name == "random_choice":
        spatial = draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))
        shape = (n, draw(st.integers(1, 3)), *spatial)
    else:
        shape = (n, *draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    if draw(st.booleans()):
        y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    else:
        y = torch.rand(n, NUM_CLASSES, generator=g).softmax(dim=1)
    return x, y, seed


def check_common(mixer: mixlab.Mixer, x: torch.Tensor, y: torch.Tensor, seed: int) -> mixlab.MixedBatch:
    return assert_mixer_contract(mixer, x, y, seed=seed, num_classes=NUM_CLASSES)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_contract_invariants(name: str, lam_mode: str) -> None:
    @PROPS
    @given(data=batches(name), p=st.sampled_from([1.0, 0.5]))
    def run(data, p):
        x, y, seed = data
        check_common(make_mixer(name, lam_mode, p), x, y, seed)

    run()


@pytest.mark.parametrize("name", ["mixup", "midpoint"])
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_interpolation_is_exactly_linear(name: str, lam_mode: str) -> None:
    @PROPS
    @given(data=batches(name))
    def run(data):
        x, y, seed = data
        mb = check_common(make_mixer(name, lam_mode), x, y, seed)
        lam = mb.lam.view(-1, *([1] * (x.ndim - 1)))
        expected = lam * x.float() + (1 - lam) * x.float()[mb.perm]
        tol = TOL[x.dtype]
        torch.testing.assert_close(mb.inputs.float(), expected, atol=tol, rtol=tol)
        if name == "midpoint":
            assert bool((mb.lam == 0.5).all())

    run()


def constant_images(n: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Sample i is the constant i + 1, so every element tells which sample it came from."""
    values = torch.arange(1, n + 1, dtype=torch.float32).view(n, *([1] * len(shape)))
    return values.expand(n, *shape).to(dtype).contiguous()


@pytest.mark.parametrize("name", BINARY_MASKING)
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_lam_is_the_exact_fraction_taken_from_x_i(name: str, lam_mode: str) -> None:
    @PROPS
    @given(
        n=st.integers(1, 6),
        spatial=st.lists(st.integers(1, 12), min_size=1, max_size=3),
        dtype=st.sampled_from(DTYPES),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(n, spatial, dtype, seed):
        x = constant_images(n, (2, *spatial), dtype)
        y = torch.arange(n) % NUM_CLASSES
        mb = check_common(make_mixer(name, lam_mode), x, y, seed)
        from_self = (mb.inputs == x).flatten(1).double().mean(dim=1)
        # resizemix resamples the partner, so its values are the partner's up to rounding;
        # the samples' constants differ by at least 1.
        from_partner = ((mb.inputs.float() - x[mb.perm].float()).abs() < 0.25).flatten(1).double().mean(dim=1)
        real_pair = mb.perm != torch.arange(n)
        assert torch.allclose(from_self[real_pair], mb.lam.double()[real_pair], atol=1e-6, rtol=0)
        # every element comes from one of the two samples
        assert torch.allclose(
            (from_self + from_partner)[real_pair], torch.ones(int(real_pair.sum()), dtype=torch.float64)
        )
        # the reported mask is binary and its mean is lam
        mask = mb.mask.expand_as(x)[:, :1].flatten(1).double()
        assert bool(((mask == 0) | (mask == 1)).all())
        torch.testing.assert_close(mask.mean(dim=1).float(), mb.lam, atol=1e-6, rtol=0)

    run()


@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_smoothmix_is_the_blend_of_its_soft_mask(lam_mode: str) -> None:
    @PROPS
    @given(data=batches("smoothmix"))
    def run(data):
        x, y, seed = data
        mb = check_common(make_mixer("smoothmix", lam_mode), x, y, seed)
        assert bool(((mb.mask >= 0) & (mb.mask <= 1)).all())
        w = mb.mask.float()
        expected = w * x.float() + (1 - w) * x.float()[mb.perm]
        tol = TOL[x.dtype]
        torch.testing.assert_close(mb.inputs.float(), expected, atol=tol * 4, rtol=tol * 4)
        torch.testing.assert_close(
            mb.mask.expand(x.shape[0], 1, *x.shape[2:]).flatten(1).double().mean(1).float(), mb.lam, atol=1e-6, rtol=0
        )

    run()


@pytest.mark.parametrize("name", ALL)
def test_inplace_writes_into_x(name: str) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 2, 8, 8, generator=g), torch.randint(0, NUM_CLASSES, (6,), generator=g)
    reference = make_mixer(name)(x.clone(), y, generator=torch.Generator().manual_seed(1))
    mixer = make_mixer(name, inplace=True)
    target = x.clone()
    mb = mixer(target, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mb.inputs, reference.inputs)
    if mb.perm.ne(torch.arange(6)).any():
        assert torch.equal(target, reference.inputs), "inplace=True must write the mixed batch into x"


@pytest.mark.parametrize("name", ALL)
def test_sample_then_apply_equals_call_and_replays(name: str) -> None:
    x, y = torch.randn(5, 3, 10, 10), torch.arange(5)
    mixer = make_mixer(name)
    params = mixer.sample(x, y, torch.Generator().manual_seed(7))
    first, second = mixer.apply(x, y, params), mixer.apply(x, y, params)
    called = mixer(x, y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.inputs, second.inputs) and torch.equal(first.inputs, called.inputs)
    assert torch.equal(first.lam, called.lam) and torch.equal(first.perm, called.perm)


def test_no_global_random_state_is_touched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    x, y = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    for name in ALL:
        make_mixer(name)(x, y)  # no generator: the mixer's own one is used
    assert torch.equal(torch.rand(3), expected)


def test_p_zero_leaves_the_batch_unmixed_and_sample_mode_p_mixes_some() -> None:
    x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % NUM_CLASSES
    for name in ALL:
        mb = make_mixer(name, p=0.0)(x, y, generator=torch.Generator().manual_seed(0))
        assert torch.equal(mb.inputs, x) and bool((mb.lam == 1).all()), name
    mb = make_mixer("cutmix", "sample", p=0.5)(x, y, generator=torch.Generator().manual_seed(0))
    untouched = mb.lam == 1
    assert 10 < int(untouched.sum()) < 54
    assert torch.equal(mb.inputs[untouched], x[untouched])


@pytest.mark.parametrize("spatial", [(16,), (12, 10), (6, 7, 8)])
def test_cutmix_pastes_one_box_of_the_partner(spatial: tuple[int, ...]) -> None:
    x = torch.randn(4, 2, *spatial)
    mb = mixlab.CutMix(lam=0.6, lam_mode="sample")(x, torch.arange(4), generator=torch.Generator().manual_seed(2))
    for i in range(4):
        taken = (mb.mask[i, 0] == 0).nonzero()
        if taken.numel() == 0:
            continue
        lo, hi = taken.min(dim=0).values, taken.max(dim=0).values + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        assert bool((mb.mask[i, 0][box] == 0).all()), "the taken region is a box"
        assert torch.equal(mb.inputs[i][(slice(None), *box)], x[mb.perm[i]][(slice(None), *box)])


@pytest.mark.parametrize("spatial", [(32,), (16, 20), (8, 8, 8)])
def test_fmix_mask_mean_is_lam_up_to_one_element(spatial: tuple[int, ...]) -> None:
    x = torch.randn(6, 1, *spatial)
    for lam_mode in ("batch", "sample"):
        mb = mixlab.FMix(lam=0.3, lam_mode=lam_mode)(x, torch.arange(6), generator=torch.Generator().manual_seed(0))
        numel = torch.Size(spatial).numel()
        assert bool(((mb.lam - 0.3).abs() <= 1.0 / numel + 1e-6).all())


def test_gridmix_mask_is_constant_on_each_cell() -> None:
    x = torch.randn(3, 1, 12, 12)
    mb = mixlab.GridMix(n_holes=(3, 3), lam_mode="sample")(
        x, torch.arange(3), generator=torch.Generator().manual_seed(0)
    )
    cells = mb.mask[:, 0].reshape(3, 3, 4, 3, 4)
    assert torch.equal(cells.amax(dim=(2, 4)), cells.amin(dim=(2, 4)))


@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_saliencymix_box_contains_the_partner_peak(lam_mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(8, 3, 24, 24, generator=g)
    for i in range(8):  # one bright spot per image, at different places
        r, c = 3 + (5 * i) % 18, 2 + (7 * i) % 20
        x[i, :, r : r + 2, c : c + 2] = 1.0
    mb = mixlab.SaliencyMix(alpha=1.0, lam_mode=lam_mode, p=1.0, reference="paper")(
        x, torch.arange(8), generator=torch.Generator().manual_seed(1)
    )
    peaks = saliency_peaks(x)[mb.perm]
    for i in range(8):
        if mb.lam[i] < 1:
            assert mb.mask[i, 0][tuple(peaks[i].tolist())] == 0, "the partner's saliency peak lies in the pasted box"


def test_resizemix_pastes_the_resized_partner() -> None:
    x = torch.randn(4, 3, 16, 16)
    mixer = mixlab.ResizeMix(scale=(0.5, 0.5))
    mb = mixer(x, torch.arange(4), generator=torch.Generator().manual_seed(0))
    taken = (mb.mask[0, 0] == 0).nonzero()
    (r0, c0), (r1, c1) = taken.min(dim=0).values.tolist(), (taken.max(dim=0).values + 1).tolist()
    assert (r1 - r0, c1 - c0) == (8, 8)
    expected = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)[mb.perm]
    torch.testing.assert_close(mb.inputs[:, :, r0:r1, c0:c1], expected)
    # per-sample mode resamples with the same convention
    per_sample = mixlab.ResizeMix(scale=(0.5, 0.5), lam_mode="sample")(
        x, torch.arange(4), generator=torch.Generator().manual_seed(0)
    )
    for i in range(4):
        t = (per_sample.mask[i, 0] == 0).nonzero()
        (a, b), (c, d) = t.min(dim=0).values.tolist(), (t.max(dim=0).values + 1).tolist()
        ref = F.interpolate(x[per_sample.perm[i]][None], size=(8, 8), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(per_sample.inputs[i, :, a:c, b:d], ref, atol=1e-5, rtol=1e-5)


def test_random_choice_per_sample_uses_each_chosen_method() -> None:
    x, y = torch.randn(32, 2, 8, 8), torch.arange(32) % NUM_CLASSES
    mixer = mixlab.RandomChoice([mixlab.Mixup(lam=0.3), mixlab.CutMix(lam=0.5, p=1.0)], weights=[1, 1], mode="sample")
    params = mixer.sample(x, y, torch.Generator().manual_seed(0))
    mb = mixer.apply(x, y, params)
    choice = params.extra["choice"]
    assert 0 < int((choice == 0).sum()) < 32
    linear = 0.3 * x + 0.7 * x[mb.perm]
    for i in range(32):
        if choice[i] == 0:
            torch.testing.assert_close(mb.inputs[i], linear[i])
        else:
            kept = (mb.inputs[i] == x[i]).float().mean()
            assert bool(((mb.inputs[i] == x[i]) | (mb.inputs[i] == x[mb.perm[i]])).all())
            if mb.perm[i] != i:
                assert torch.isclose(kept, mb.lam[i], atol=1e-6)


def test_mixup_works_on_tokens_and_tables() -> None:
    for shape in [(4, 7, 16), (4, 10)]:
        x = torch.randn(shape)
        mb = mixlab.Mixup(alpha=0.4)(x, torch.arange(4), generator=torch.Generator().manual_seed(0))
        lam = mb.lam.view(-1, *([1] * (x.ndim - 1)))
        torch.testing.assert_close(mb.inputs, lam * x + (1 - lam) * x[mb.perm], atol=1e-6, rtol=1e-6)


def test_regression_targets_mix_linearly() -> None:
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    mb = mixlab.Mixup(lam_mode="sample")(x, y, generator=torch.Generator().manual_seed(0))
    lam = mb.lam.view(-1, 1)
    torch.testing.assert_close(mb.mixed_target(), lam * y + (1 - lam) * y[mb.perm])


def test_list_and_create_cover_every_issue_name() -> None:
    names = {
        "mixup",
        "midpoint",
        "cutmix",
        "resizemix",
        "fmix",
        "gridmix",
        "smoothmix",
        "saliencymix",
        "manifold_mixup",
        "random_choice",
    }
    assert names <= set(mixlab.list_mixers())
    for cls in (
        "Mixup",
        "Midpoint",
        "CutMix",
        "ResizeMix",
        "FMix",
        "GridMix",
        "SmoothMix",
        "SaliencyMix",
        "ManifoldMixup",
        "RandomChoice",
    ):
        assert issubclass(getattr(mixlab, cls), mixlab.Mixer)


def _mix_in_worker(batch):
    x, y = torch.utils.data.default_collate(batch)
    mb = WORKER_MIXER(x, y)
    return mb.lam[0].item(), mb.perm.tolist()


WORKER_MIXER = mixlab.create_mixer("mixup")


def test_dataloader_workers_draw_different_mixes() -> None:
    data = torch.utils.data.TensorDataset(torch.randn(16, 3), torch.arange(16) % NUM_CLASSES)
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2, collate_fn=_mix_in_worker)
    draws = list(loader)
    assert len(set(map(str, draws))) == len(draws), f"workers repeated each other's draws: {draws}"


def test_seeded_mixers_repeat_each_other() -> None:
    x, y = torch.randn(8, 3), torch.arange(8) % NUM_CLASSES
    a, b = mixlab.Mixup(seed=5), mixlab.Mixup(seed=5)
    assert torch.equal(a(x, y).inputs, b(x, y).inputs)


def test_lam_does_not_share_memory_with_the_mask() -> None:
    mb = mixlab.Mixup()(torch.randn(4, 3), torch.arange(4))
    mask_before = mb.mask.clone()
    mb.lam.clamp_(0.1, 0.9)
    assert torch.equal(mb.mask, mask_before)


def test_fmix_large_decay_power_keeps_exact_lam() -> None:
    x = torch.randn(2, 1, 64, 64)
    for lam_mode in ("batch", "sample"):
        mb = mixlab.FMix(lam=0.5, decay_power=40.0, lam_mode=lam_mode)(
            x, torch.arange(2), generator=torch.Generator().manual_seed(0)
        )
        assert torch.allclose(mb.lam, torch.full((2,), 0.5), atol=1 / 4096)


def test_gridmix_caps_cells_per_dim_on_uneven_shapes() -> None:
    x = torch.randn(1, 1, 2, 60)
    mb = mixlab.GridMix(n_holes=(6, 6), lam=0.5)(x, torch.arange(1), generator=torch.Generator().manual_seed(0))
    row = mb.mask[0, 0, 0]
    changes = int((row[1:] != row[:-1]).sum())
    assert changes >= 1, "the long dim is split into more than the short dim's 2 cells"
    assert torch.equal(mb.mask[0, 0, 0].reshape(6, 10).amax(1), mb.mask[0, 0, 0].reshape(6, 10).amin(1))


def test_random_choice_in_batch_mode_refuses_a_pairing_it_would_not_use() -> None:
    with pytest.raises(ValueError, match=r"mode='batch' each member draws its own partners.*same_class"):
        mixlab.create_mixer("random_choice", mixers=["mixup", "cutmix"], mode="batch", pairing="same_class")
