"""The bad-input contract of the mixers, through ``mixlab.create_mixer``.

Every error is a ``MixlabError`` that is also a ``ValueError`` or ``TypeError``,
names the bad value, and leaves the caller's ``x`` untouched.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import mixlab
from mixlab.errors import MixlabError, MixlabTypeError, MixlabValueError, UnknownNameError

IMAGE_MIXERS = ["mixup", "midpoint", "cutmix", "resizemix", "fmix", "gridmix", "smoothmix", "saliencymix"]
SPATIAL_MIXERS = ["cutmix", "fmix", "gridmix", "smoothmix", "resizemix", "saliencymix"]


def _images(n: int = 4, dtype=torch.float32) -> torch.Tensor:
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return (x * 255).to(dtype) if not dtype.is_floating_point else x.to(dtype)


def _call_and_check(mixer, x, y, kind, shown, base, context=None):
    """Call ``mixer(x, y)``, expect ``kind`` whose message holds every string in ``shown``; x must be unchanged."""
    before = x.clone()
    with pytest.raises(kind) as info:
        mixer(x, y, generator=torch.Generator().manual_seed(0), context=context)
    err = info.value
    assert isinstance(err, MixlabError)
    assert isinstance(err, base)
    for s in shown:
        assert s in str(err), (s, str(err))
    assert x.dtype == before.dtype
    assert torch.equal(x, before)
    return err


# ---------------------------------------------------------------- a positive control


def test_inplace_mixing_does_change_x():
    """The 'x unchanged' checks below are meaningful: a successful in-place call writes into x."""
    x, y = _images(), torch.tensor([0, 1, 2, 0])
    before = x.clone()
    # different-class pairing: every sample gets another partner, so every row changes
    mixer = mixlab.create_mixer("mixup", lam=0.5, pairing="different_class", inplace=True)
    mb = mixer(x, y, generator=torch.Generator().manual_seed(0))
    assert mb.inputs.data_ptr() == x.data_ptr()
    assert not torch.equal(x, before)
    assert (x != before).flatten(1).any(dim=1).all()


# ---------------------------------------------------------------- dtype of x


@pytest.mark.parametrize("name", IMAGE_MIXERS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.int64])
def test_non_floating_images_raise_type_error_naming_the_dtype(name, dtype):
    x = _images(dtype=dtype) if dtype is not torch.bool else _images() > 0.5
    mixer = mixlab.create_mixer(name, inplace=True)
    err = _call_and_check(mixer, x, torch.tensor([0, 1, 2, 0]), MixlabTypeError, [str(dtype)], TypeError)
    assert name in str(err)


# ---------------------------------------------------------------- shapes and labels


@pytest.mark.parametrize("name", ["mixup", "cutmix", "fmix"])
@pytest.mark.parametrize("y_len", [3, 5])
def test_batch_size_mismatch_names_both_shapes(name, y_len):
    x, y = _images(4), torch.zeros(y_len, dtype=torch.long)
    mixer = mixlab.create_mixer(name, inplace=True)
    _call_and_check(mixer, x, y, MixlabValueError, [str((4, 3, 8, 8)), str((y_len,))], ValueError)


@pytest.mark.parametrize("name", ["mixup", "cutmix", "gridmix"])
def test_class_index_too_large(name):
    mixer = mixlab.create_mixer(name, num_classes=3, inplace=True)
    _call_and_check(
        mixer, _images(), torch.tensor([0, 1, 3, 2]), MixlabValueError, ["num_classes=3", "got 3"], ValueError
    )


@pytest.mark.parametrize("num_classes", [None, 3])
def test_negative_class_index(num_classes):
    mixer = mixlab.create_mixer("mixup", num_classes=num_classes, inplace=True)
    _call_and_check(mixer, _images(), torch.tensor([0, -1, 2, 1]), MixlabValueError, [">= 0", "-1"], ValueError)


def test_soft_labels_of_the_wrong_width():
    mixer = mixlab.create_mixer("cutmix", num_classes=3, inplace=True)
    y = torch.full((4, 5), 0.2)
    _call_and_check(mixer, _images(), y, MixlabValueError, ["num_classes=3", str((4, 5))], ValueError)


def test_soft_targets_of_class_indices_need_num_classes():
    x, y = _images(), torch.tensor([0, 1, 2, 0])
    mb = mixlab.create_mixer("mixup")(x, y, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MixlabValueError) as info:
        mb.soft_targets()
    assert isinstance(info.value, ValueError)
    assert "num_classes" in str(info.value) and "None" in str(info.value)
    assert mb.soft_targets(3).shape == (4, 3)  # and with it, it works


@pytest.mark.parametrize("name", SPATIAL_MIXERS)
def test_spatial_mixers_reject_tables(name):
    x, y = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0])
    mixer = mixlab.create_mixer(name, inplace=True)
    err = _call_and_check(mixer, x, y, MixlabValueError, ["spatial dims", str((4, 6))], ValueError)
    assert name in str(err)


def test_mixup_accepts_tables():
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    assert mixlab.create_mixer("mixup")(x, y, generator=torch.Generator().manual_seed(0)).inputs.shape == (4, 6)


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"alpha": 0.0}, "0.0"),
        ({"alpha": -1.0}, "-1.0"),
        ({"alpha": float("nan")}, "nan"),
        ({"alpha": float("inf")}, "inf"),
        ({"p": -0.1}, "-0.1"),
        ({"p": 1.5}, "1.5"),
        ({"lam": 1.25}, "1.25"),
        ({"lam_range": (0.8, 0.2)}, "0.8"),
    ],
)
@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_bad_parameters(name, kwargs, shown):
    with pytest.raises(MixlabValueError) as info:
        mixlab.create_mixer(name, **kwargs)
    assert isinstance(info.value, ValueError)
    assert shown in str(info.value), str(info.value)
    param = next(iter(kwargs))
    assert param in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"num_classes": 0}, "got 0"),
        ({"sigma": 0.5}, "'random'"),
        ({"pairing": "c_mixup", "sigma": -1.0}, "-1.0"),
        ({"pairing": "nearest"}, "nearest"),
        ({"lam_mode": "pixel"}, "pixel"),
    ],
)
def test_bad_construction_arguments(kwargs, shown):
    with pytest.raises(MixlabValueError) as info:
        mixlab.create_mixer("mixup", **kwargs)
    assert isinstance(info.value, ValueError)
    assert shown in str(info.value), str(info.value)


@pytest.mark.parametrize(("kwargs", "shown"), [({"num_classes": 2.5}, "2.5"), ({"seed": "a"}, "'a'")])
def test_non_integer_counts_are_type_errors(kwargs, shown):
    with pytest.raises(MixlabTypeError) as info:
        mixlab.create_mixer("mixup", **kwargs)
    assert isinstance(info.value, TypeError) and shown in str(info.value)


def test_numpy_scalars_are_accepted():
    import numpy as np

    mixer = mixlab.create_mixer("mixup", alpha=np.float32(0.2), num_classes=np.int64(3), seed=np.int64(1))
    assert mixer.num_classes == 3 and mixer.seed == 1


def test_non_numeric_alpha_is_a_type_error():
    with pytest.raises(MixlabTypeError, match="str") as info:
        mixlab.create_mixer("mixup", alpha="1.0")
    assert isinstance(info.value, TypeError)


def test_unknown_mixer_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        mixlab.create_mixer("cutmixx")
    err = info.value
    assert isinstance(err, ValueError)
    assert "cutmixx" in str(err)
    for known in ("cutmix", "mixup", "fmix", "manifold_mixup"):
        assert known in str(err)
    assert sorted(err.known) == mixlab.list_mixers()


@pytest.mark.parametrize(
    ("name", "bad", "accepted"),
    [
        ("mixup", "alhpa", ["alpha", "lam_mode", "pairing", "inplace"]),
        ("cutmix", "box", ["alpha", "p", "num_classes"]),
        ("midpoint", "decay_power", ["lam", "seed"]),
        ("fmix", "scale", ["decay_power", "alpha"]),
        ("resizemix", "n_holes", ["scale", "lam"]),
        ("manifold_mixup", "layer", ["layers", "model", "alpha"]),
    ],
)
def test_unknown_kwargs_list_the_accepted_ones(name, bad, accepted):
    with pytest.raises(MixlabTypeError) as info:
        mixlab.create_mixer(name, **{bad: 1})
    msg = str(info.value)
    assert isinstance(info.value, TypeError)
    assert bad in msg
    for a in accepted:
        assert a in msg, (a, msg)


# ---------------------------------------------------------------- manifold mixup layers


def _net() -> nn.Module:
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(4, 8), act=nn.ReLU(), fc2=nn.Linear(8, 3)),
    )


def test_manifold_layer_not_in_model_at_construction():
    with pytest.raises(UnknownNameError) as info:
        mixlab.create_mixer("manifold_mixup", layers=["fc1", "fc9"], model=_net())
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "fc9" in msg
    for name in ("fc1", "act", "fc2", "input"):
        assert name in msg


def test_manifold_layer_not_in_model_given_at_call_time():
    mixer = mixlab.create_mixer("manifold_mixup", layers=["input", "block.3"], inplace=True)
    x, y = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1])
    err = _call_and_check(
        mixer, x, y, UnknownNameError, ["block.3", "fc1", "act", "fc2"], ValueError, {"model": _net()}
    )
    assert "input" in err.known


def test_y_on_another_device_is_refused_before_any_draw():
    x = torch.randn(2, 3, 4, 4)
    y = torch.zeros(2, dtype=torch.long, device="meta")
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(MixlabValueError, match="same device") as info:
        mixlab.create_mixer("cutmix")(x, y, generator=g)
    assert "meta" in str(info.value)
    assert torch.equal(g.get_state(), state), "the generator was not used"


def test_zero_size_spatial_dims_are_refused():
    with pytest.raises(MixlabValueError, match="size 0"):
        mixlab.create_mixer("cutmix")(torch.randn(2, 3, 0, 4), torch.arange(2))


def test_c_mixup_on_class_indices_fails_before_any_draw():
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(MixlabTypeError, match="float targets"):
        mixlab.create_mixer("mixup", pairing="c_mixup", sigma=1.0)(torch.randn(3, 2), torch.arange(3), generator=g)
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize(
    "members",
    [
        [{"name": "mixup", "inplace": True}, "cutmix"],
    ],
)
def test_random_choice_refuses_member_settings_it_would_ignore(members):
    with pytest.raises(MixlabValueError, match="inplace"):
        mixlab.create_mixer("random_choice", mixers=members)
    with pytest.raises(MixlabValueError, match="pairing"):
        mixlab.create_mixer("random_choice", mixers=["mixup", {"name": "mixup", "p": 0.0}], mode="sample")


def test_random_choice_cannot_nest():
    with pytest.raises(MixlabValueError, match="another random_choice"):
        mixlab.create_mixer("random_choice", mixers=[{"name": "random_choice", "mixers": ["mixup"]}, "cutmix"])


def test_random_choice_checks_labels_against_its_members_num_classes():
    mixer = mixlab.create_mixer("random_choice", mixers=[{"name": "mixup", "num_classes": 3}, "cutmix"])
    with pytest.raises(MixlabValueError, match="num_classes=3"):
        mixer(torch.randn(2, 1, 4, 4), torch.tensor([0, 3]))
    with pytest.raises(MixlabValueError, match="different num_classes"):
        mixlab.create_mixer("random_choice", mixers=[{"name": "mixup", "num_classes": 3}], num_classes=4)
