"""The model registry: names, aliases, validation messages and parameter counts."""

from __future__ import annotations

import pytest
import torch

from mixlab.errors import MixlabError, MixlabTypeError, MixlabValueError, UnknownNameError
from mixlab.models import MODELS, WideResNet, count_parameters, create_model, list_models


def test_list_models_names_every_builder_and_the_timm_pattern() -> None:
    names = list_models()
    assert {"cnn_small", "cnn1d", "mlp", "preact_resnet18", "wrn_28_k"} <= set(names)
    assert "timm:<name>" in names
    assert set(MODELS) == set(names) - {"timm:<name>"}


def test_unknown_model_lists_the_known_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_model("resnet9000", 10)
    message = str(info.value)
    assert "resnet9000" in message
    for name in ("cnn_small", "cnn1d", "mlp", "preact_resnet18", "wrn_28_k", "timm:<name>"):
        assert name in message
    assert isinstance(info.value, ValueError)


def test_model_name_must_be_a_string() -> None:
    with pytest.raises(MixlabTypeError, match="str"):
        create_model(3, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, MixlabValueError), (-1, MixlabValueError), (2.5, MixlabTypeError), (True, MixlabTypeError)],
)
def test_bad_num_classes(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="num_classes") as info:
        create_model("cnn_small", value)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(("value", "error"), [(0, MixlabValueError), (1.0, MixlabTypeError)])
def test_bad_in_channels(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="in_channels"):
        create_model("mlp", 1, value)  # type: ignore[arg-type]


def test_input_with_the_wrong_channels_says_what_is_expected() -> None:
    net = create_model("cnn_small", 10, in_channels=1)
    with pytest.raises(MixlabValueError) as info:
        net(torch.randn(2, 3, 28, 28))
    message = str(info.value)
    assert "in_channels=1" in message and "3 channels" in message and "(2, 3, 28, 28)" in message
    net = create_model("preact_resnet18", 10, in_channels=3)
    with pytest.raises(MixlabValueError, match=r"in_channels=3 but the input has 1 channels"):
        net(torch.randn(2, 1, 16, 16))


def test_input_size_channels_must_match_in_channels() -> None:
    with pytest.raises(MixlabValueError, match=r"3 channels but in_channels=1"):
        create_model("cnn_small", 10, in_channels=1, input_size=(3, 28, 28))
    with pytest.raises(MixlabValueError, match=r"in_channels=4 does not match input_size 7"):
        create_model("mlp", 1, in_channels=4, input_size=7)


def test_input_of_another_size_asks_for_input_size() -> None:
    net = create_model("cnn_small", 10)
    with pytest.raises(MixlabValueError, match=r"\(N, 1, 28, 28\).*input_size"):
        net(torch.randn(2, 1, 32, 32))
    assert create_model("cnn_small", 10, input_size=32)(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    net = create_model("cnn1d", 10)
    with pytest.raises(MixlabValueError, match=r"\(N, 1, 40\)"):
        net(torch.randn(2, 1, 41))
    with pytest.raises(MixlabValueError, match=r"mlp expects input of shape \(N, 6\)"):
        create_model("mlp", 2, in_channels=6)(torch.randn(2, 5))


@pytest.mark.parametrize(
    ("input_size", "error", "match"),
    [
        (4, MixlabValueError, ">= 8"),
        ((28,), MixlabValueError, "2 sizes"),
        ((1, 2, 28, 28), MixlabValueError, "2 sizes"),
        ("28", MixlabTypeError, "input_size"),
        (28.0, MixlabTypeError, "input_size"),
    ],
)
def test_bad_input_size(input_size: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        create_model("cnn_small", 10, input_size=input_size)  # type: ignore[arg-type]


def test_mlp_takes_its_features_from_input_size_and_flattens_shaped_samples() -> None:
    net = create_model("mlp", 2, input_size=(3, 4), hidden=8)
    assert net.layer1[0].in_features == 12
    assert net(torch.randn(5, 3, 4)).shape == (5, 2)
    assert create_model("mlp", 2, in_channels=3, input_size=(3, 4)).in_channels == 12


def test_mlp_without_hidden_layers_is_a_linear_model() -> None:
    net = create_model("mlp", 3, in_channels=4, hidden=())
    assert net.stages == () and net.default_manifold_layers == ("input",) and net.feature_dim == 4
    x = torch.randn(2, 4)
    torch.testing.assert_close(net.features(x), x)
    with pytest.raises(MixlabValueError, match="hidden width"):
        create_model("mlp", 3, in_channels=4, hidden=(8, 0))
    with pytest.raises(MixlabTypeError, match="hidden"):
        create_model("mlp", 3, in_channels=4, hidden="8")


def test_unknown_kwarg_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(MixlabTypeError) as info:
        create_model("cnn_small", 10, widen_factor=2, drop=0.1)
    message = str(info.value)
    assert "drop, widen_factor" in message and "accepts: dropout" in message
    with pytest.raises(MixlabTypeError, match=r"accepts: none"):
        create_model("preact_resnet18", 10, dropout=0.1)
    with pytest.raises(MixlabTypeError, match=r"accepts: depth, dropout, widen_factor"):
        create_model("wrn_28_2", 10, width=3)


def test_bad_kwarg_values() -> None:
    with pytest.raises(MixlabValueError, match="dropout"):
        create_model("cnn_small", 10, dropout=1.5)
    with pytest.raises(MixlabTypeError, match="batch_norm"):
        create_model("mlp", 1, batch_norm="yes")


def test_wrn_aliases_set_depth_and_widen_factor() -> None:
    with torch.device("meta"):
        net = create_model("wrn_28_10", 10, in_channels=3)
        assert isinstance(net, WideResNet) and (net.depth, net.widen_factor) == (28, 10)
        net = create_model("wrn_28_k", 10, in_channels=3, widen_factor=4, depth=16)
        assert (net.depth, net.widen_factor, net.feature_dim) == (16, 4, 256)
        assert len(net.layer1) == 2
        assert create_model("wrn_28_2", 10, widen_factor=2).widen_factor == 2
    with pytest.raises(MixlabValueError, match="widen_factor=2"):
        create_model("wrn_28_2", 10, widen_factor=4)


@pytest.mark.parametrize("name", ["wrn_27_2", "wrn_30_2"])
def test_wrn_depth_must_be_6n_plus_4(name: str) -> None:
    with pytest.raises(MixlabValueError, match=r"\(depth - 4\) % 6 == 0"):
        create_model(name, 10)
    with pytest.raises(MixlabValueError, match=r"\(depth - 4\) % 6 == 0"):
        create_model("wrn_28_k", 10, depth=int(name.split("_")[1]))


def test_parameter_counts_match_the_papers() -> None:
    # cnn_small: conv 1*32*9, BN 2*32, conv 32*64*9, BN 2*64, fc 64*7*7*128 + 128, head 128*10 + 10
    expected = 1 * 32 * 9 + 64 + 32 * 64 * 9 + 128 + 64 * 7 * 7 * 128 + 128 + 128 * 10 + 10
    assert count_parameters(create_model("cnn_small", 10)) == expected
    with torch.device("meta"):  # no memory, no initialisation cost
        # WRN-28-10 has 36.5M parameters (Zagoruyko & Komodakis, Table 1 and the reference code), WRN-28-2 1.5M
        assert count_parameters(create_model("wrn_28_10", 10, in_channels=3)) == 36_479_194
        assert count_parameters(create_model("wrn_28_2", 10, in_channels=3)) == 1_467_610
        assert 11_100_000 < count_parameters(create_model("preact_resnet18", 10, in_channels=3)) < 11_250_000


def test_count_parameters_trainable_only() -> None:
    net = create_model("mlp", 2, in_channels=3, hidden=(4,))
    net.layer1.requires_grad_(False)
    assert count_parameters(net) == 3 * 4 + 4 + 4 * 2 + 2
    assert count_parameters(net, trainable_only=True) == 4 * 2 + 2
    with pytest.raises(MixlabTypeError, match=r"nn\.Module"):
        count_parameters("net")  # type: ignore[arg-type]


def test_dropout_is_off_in_eval_mode() -> None:
    net = create_model("cnn_small", 10, dropout=0.5)
    assert net.training
    x = torch.randn(3, 1, 28, 28)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x))


def test_errors_are_mixlab_errors() -> None:
    with pytest.raises(MixlabError):
        create_model("cnn_small", 0)
