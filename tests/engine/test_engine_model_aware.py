"""The engine and model-aware mixers: the context is built only when needed, every such mixer trains by name,
learned mixers' state (and the EMA copy) survives a crash and resume exactly."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch
from engine_fixtures import tiny_config

from mixlab.engine import load_config, train
from mixlab.engine.checkpoint import load_checkpoint
from mixlab.methods import MIXERS, Mixup
from mixlab.methods.context import MixerNeeds

MODEL_AWARE = ["puzzlemix", "comixup", "attentivemix", "alignmix", "automix", "adautomix", "sumix", "transmix"]
LEARNED = ["automix", "adautomix", "sumix"]


def run(config: dict, output: Path | None, **kwargs):
    return train(load_config(config), output, echo=False, **kwargs)


def model_for(method: str) -> dict:
    return {"name": "vit_tiny"} if method == "transmix" else {"name": "cnn_small"}


class _SaliencyProbe(Mixup):
    """Mixup that records, at each call, whether the context held a saliency map."""

    seen: typing.ClassVar[list[bool]] = []

    @property
    def needs(self) -> MixerNeeds:
        return MixerNeeds(saliency=True)

    def _check_context(self, context):
        type(self).seen.append("saliency" in context)


def test_context_is_computed_only_on_steps_that_mix(data_root, monkeypatch):
    monkeypatch.setitem(MIXERS, "saliency_probe", _SaliencyProbe)
    _SaliencyProbe.seen = []
    calls = []
    from mixlab.methods import context as context_module

    original = context_module.input_saliency
    monkeypatch.setattr(context_module, "input_saliency", lambda *a: calls.append(1) or original(*a))
    config = tiny_config(
        data_root,
        mix={"method": "saliency_probe", "schedule": [{"kind": "stop_after", "options": {"epochs": 1}}]},
        train={"epochs": 2, "max_steps_per_epoch": 3},
    )
    run(config, None)
    assert _SaliencyProbe.seen == [True] * 3  # epoch 2 does not mix: the mixer is not called
    assert len(calls) == 3  # and no saliency is computed for it


@pytest.mark.parametrize("method", MODEL_AWARE)
def test_every_model_aware_mixer_trains_by_name_in_the_engine(method, data_root):
    config = tiny_config(
        data_root,
        model=model_for(method),
        mix={"method": method},
        train={"epochs": 1, "max_steps_per_epoch": 6, "batch_size": 32},
    )
    result = run(config, None)
    record = result.history[-1]
    assert torch.isfinite(torch.tensor(record["train_loss"]))
    assert 0.0 <= record["test_acc"] <= 1.0


class _CrashError(Exception):
    pass


@pytest.mark.parametrize("method", LEARNED)
def test_learned_mixer_state_and_ema_resume_exactly(method, data_root, tmp_path):
    config = tiny_config(
        data_root,
        mix={"method": method},
        optim={"lr_schedule": "constant"},
        train={"epochs": 2, "max_steps_per_epoch": 4, "batch_size": 32},
    )
    run(config, tmp_path / "full")

    def crash_after_first(record: dict) -> None:
        if record["epoch"] == 1:
            raise _CrashError

    with pytest.raises(_CrashError):
        run(config, tmp_path / "cut", on_epoch_end=crash_after_first)
    first = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert first["epoch"] == 1 and first["mixer"], "the learned mixer's state is not in the checkpoint"
    run(config, tmp_path / "cut", resume=True)

    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for section in ("model", "mixer", "mix_context"):
        flat_full, flat_resumed = _flatten(full[section]), _flatten(resumed[section])
        assert flat_full.keys() == flat_resumed.keys(), section
        for key, value in flat_full.items():
            assert torch.equal(value, flat_resumed[key]), f"{section}.{key}"
    moved = [not torch.equal(v, _flatten(first["mixer"])[k]) for k, v in _flatten(full["mixer"]).items()]
    assert any(moved), "the learned mixer did not change in the second epoch"


def _flatten(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a nested state dict by dotted key (numbers become tensors)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, (int, float)):
            out[name] = torch.tensor(value)
    return out
