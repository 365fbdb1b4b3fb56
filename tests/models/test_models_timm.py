"""The timm adapter: a clear error without timm, the Backbone contract with it."""

from __future__ import annotations

import sys

import pytest
import torch

import mixlab
from mixlab.errors import MixlabError, MixlabValueError
from mixlab.models import MissingDependencyError, TimmBackbone, create_model


def test_missing_timm_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(MissingDependencyError) as info:
        create_model("timm:resnet18", 10, in_channels=3)
    assert "pip install mixlab[timm]" in str(info.value)
    assert isinstance(info.value, MixlabError) and isinstance(info.value, ImportError)


def test_empty_timm_name_is_rejected_before_importing() -> None:
    with pytest.raises(MixlabValueError, match="timm:resnet18"):
        create_model("timm:", 10)


def test_timm_model_follows_the_backbone_contract() -> None:
    timm = pytest.importorskip("timm")
    net = create_model("timm:resnet18", 5, in_channels=3)
    assert isinstance(net, TimmBackbone)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, feats = net(x), net.features(x)
        torch.testing.assert_close(out, net.model(x))
    assert out.shape == (2, 5) and feats.shape == (2, net.feature_dim)
    torch.testing.assert_close(out, net.head(feats))
    modules = dict(net.named_modules())
    assert net.stages and all(name in modules for name in net.stages)
    assert set(net.default_manifold_layers) <= {"input", *net.stages}
    y = torch.randint(0, 5, (2,))
    mixer = mixlab.ManifoldMixup(layers=net.default_manifold_layers, model=net)
    with torch.no_grad():
        assert mixer(x, y, generator=torch.Generator().manual_seed(0)).forward(net).shape == (2, 5)
    with pytest.raises(MixlabValueError, match="unknown timm model"):
        create_model("timm:not_a_real_model_xyz", 5)
    assert timm is not None


class _FakeTimmNet(torch.nn.Module):
    """Just enough of timm's model interface (forward_features, forward_head, classifier, feature_info)."""

    def __init__(self, num_classes: int, in_chans: int, conv_head: bool = False) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(in_chans, 4, 3, padding=1)
        self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU())
        self.layer2 = torch.nn.Sequential(torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.ReLU())
        self.num_features = 8
        self.fc: torch.nn.Module = torch.nn.Conv2d(8, num_classes, 1) if conv_head else torch.nn.Linear(8, num_classes)
        self.feature_info = [
            {"num_chs": 4, "reduction": 1, "module": "conv1"},
            {"num_chs": 6, "reduction": 1, "module": "layer1"},
            {"num_chs": 8, "reduction": 2, "module": "layer2"},
            {"num_chs": 8, "reduction": 2, "module": "missing"},
        ]

    def get_classifier(self) -> torch.nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        assert num_classes == 0
        self.fc = torch.nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(self.conv1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3), keepdim=isinstance(self.fc, torch.nn.Conv2d))
        return x if pre_logits else self.fc(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class _FakeTimm:
    def __init__(self, conv_head: bool = False) -> None:
        self.conv_head = conv_head
        self.calls: list[dict] = []

    def is_model(self, name: str) -> bool:
        return name == "fakenet"

    def create_model(self, name: str, **kwargs: object) -> torch.nn.Module:
        self.calls.append({"name": name, **kwargs})
        return _FakeTimmNet(kwargs["num_classes"], kwargs["in_chans"], self.conv_head)  # type: ignore[arg-type]


@pytest.mark.parametrize("conv_head", [False, True])
def test_adapter_on_a_timm_like_model(monkeypatch: pytest.MonkeyPatch, conv_head: bool) -> None:
    fake = _FakeTimm(conv_head)
    monkeypatch.setitem(sys.modules, "timm", fake)
    net = create_model("timm:fakenet", 3, in_channels=2, drop_rate=0.1)
    assert fake.calls == [{"name": "fakenet", "pretrained": False, "num_classes": 3, "in_chans": 2, "drop_rate": 0.1}]
    assert isinstance(net.head, torch.nn.Linear) and net.feature_dim == 8
    assert (net.head is net.model.fc) is not conv_head  # a Linear classifier is kept, a conv one replaced
    assert net.stages == ("model.conv1", "model.layer1", "model.layer2")  # names not in the model are dropped
    assert net.default_manifold_layers == ("input", "model.layer1", "model.layer2")
    x = torch.randn(4, 2, 8, 8)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (4, 3)
        torch.testing.assert_close(out, net.head(net.features(x)))
        if not conv_head:
            torch.testing.assert_close(out, net.model(x))
        assert list(net.stage_features(x)) == list(net.stages)
        y = torch.randint(0, 3, (4,))
        mixer = mixlab.ManifoldMixup(layers=net.default_manifold_layers, model=net)
        assert mixer(x, y, generator=torch.Generator().manual_seed(0)).forward(net).shape == (4, 3)
    with pytest.raises(MixlabValueError, match="unknown timm model 'resnet_nope'"):
        create_model("timm:resnet_nope", 3)
