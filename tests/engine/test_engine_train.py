"""Training runs end to end on small real-format data: outputs, metrics, refusals, the mixer interface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_fixtures import tiny_config

import mixlab
from mixlab.data import DataNotFoundError, load_dataset
from mixlab.engine import RunRefusedError, load_config, train
from mixlab.engine.checkpoint import load_checkpoint, read_jsonl
from mixlab.methods import MIXERS, Mixup


def run(config: dict, output: Path | None, **kwargs):
    return train(load_config(config), output, echo=False, **kwargs)


def test_cutmix_run_learns_and_writes_its_outputs(data_root, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(data_root, mix={"method": "cutmix", "options": {"alpha": 1.0}}, train={"epochs": 3})
    result = run(config, out)
    history = result.history
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.final["test_acc"] > 0.5  # 10 classes: chance is 0.1
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    final = json.loads((out / "final.json").read_text())
    assert final["test_acc"] == pytest.approx(result.final["test_acc"])
    info = json.loads((out / "run.json").read_text())
    assert info["torch"] == torch.__version__ and info["mixlab"] == mixlab.__version__ and info["device"] == "cpu"
    assert "fashion_mnist" in (out / "config.yaml").read_text()
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 3 and state["config"]["mix"]["method"] == "cutmix"
    assert all(torch.equal(state["model"][k], v) for k, v in result.model.state_dict().items())


def test_same_seed_same_weights_and_different_seed_differs(data_root):
    config = tiny_config(data_root, mix={"method": "mixup"}, train={"epochs": 1, "max_steps_per_epoch": 3})
    a = run(config, None).model.state_dict()
    b = run(config, None).model.state_dict()
    config["train"]["seed"] = 1
    c = run(config, None).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "mix",
    [
        {"method": "manifold_mixup", "loss": "decoupled"},
        {"method": "mixup", "options": {"alpha": 10.0}, "loss": "regmixup"},
        {"method": "mixup", "loss": "rankmixup"},
        {"method": "fmix", "loss": "bce", "smoothing": 0.1},
        {"method": "cutmix", "schedule": [{"kind": "stop_after", "options": {"epochs": 1}}]},
    ],
)
def test_losses_and_schedules_train_without_nan(data_root, mix):
    config = tiny_config(data_root, mix=mix, train={"epochs": 1, "max_steps_per_epoch": 4, "grad_clip": 1.0})
    result = run(config, None)
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_bf16_autocast_on_cpu(data_root):
    config = tiny_config(
        data_root, mix={"method": "mixup"}, train={"epochs": 1, "max_steps_per_epoch": 2, "amp": "bf16"}
    )
    assert torch.isfinite(torch.tensor(run(config, None).history[0]["train_loss"]))
    with pytest.raises(mixlab.MixlabError, match="fp16 needs a CUDA device"):
        run(tiny_config(data_root, train={"amp": "fp16"}), None)


def test_regression_with_c_mixup_beats_the_mean_predictor():
    config = load_config(
        Path(__file__).parents[2] / "configs" / "recipes" / "diabetes_c_mixup.yaml",
        ["train.epochs=40", "train.progress=off"],
    )
    result = train(config, None, echo=False)
    test_y = load_dataset("diabetes").test.y
    baseline_rmse = float((test_y - test_y.mean()).square().mean().sqrt())
    assert result.final["test_rmse"] < 0.9 * baseline_rmse


class _LearnedWeight(Mixup):
    """A test mixer with one trainable parameter and an extra loss term pulling it to 3."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def trainable_parameters(self):
        return [self.weight]

    def loss_terms(self, mb, outputs):
        return {"pull": (self.weight - 3.0).square()}

    def state_dict(self):
        return {"weight": self.weight.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.weight.copy_(state["weight"])


def test_mixer_parameters_and_loss_terms_are_trained_and_checkpointed(data_root, tmp_path, monkeypatch):
    monkeypatch.setitem(MIXERS, "learned_test", _LearnedWeight)
    out = tmp_path / "run"
    config = tiny_config(data_root, mix={"method": "learned_test"}, train={"epochs": 1, "max_steps_per_epoch": 5})
    run(config, out)
    weight = load_checkpoint(out / "checkpoint.pt")["mixer"]["weight"]
    assert 0.0 < float(weight) < 3.0  # moved towards 3 by the engine's optimiser


def test_refusals_leave_existing_outputs_untouched(data_root, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(data_root, train={"epochs": 1, "max_steps_per_epoch": 2})
    run(config, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunRefusedError, match="already holds a finished run"):
        run(config, out)
    changed = tiny_config(data_root, train={"epochs": 2, "max_steps_per_epoch": 2, "seed": 5})
    with pytest.raises(RunRefusedError, match=r"(?s)different config.*train\.seed: 0 -> 5"):
        run(changed, out, resume=True)
    with pytest.raises(RunRefusedError, match="nothing to resume"):
        run(config, tmp_path / "empty", resume=True)
    missing = tiny_config(tmp_path / "nowhere", train={"epochs": 1})
    with pytest.raises(DataNotFoundError):
        run(missing, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    run(config, out, overwrite=True)  # replacing is allowed when asked
    assert len(read_jsonl(out / "metrics.jsonl")) == 1


def test_missing_tensorboard_refuses_before_touching_a_finished_run(data_root, tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed here")
    out = tmp_path / "run"
    config = tiny_config(data_root, train={"epochs": 1, "max_steps_per_epoch": 2})
    run(config, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(mixlab.errors.MissingDependencyError, match=r"mixlab\[tensorboard\]"):
        run(tiny_config(data_root, train={"epochs": 1, "tensorboard": True}), out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_batch_larger_than_the_data_is_refused(data_root, tmp_path):
    with pytest.raises(mixlab.MixlabError, match=r"train\.batch_size is 1024 but .* 512 training samples"):
        run(tiny_config(data_root, train={"batch_size": 1024}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unfinished_run_needs_resume(data_root, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(data_root, train={"epochs": 1, "max_steps_per_epoch": 2}), out)
    (out / "final.json").unlink()  # as if killed after the last checkpoint
    with pytest.raises(RunRefusedError, match=r"unfinished run \(continue it with --resume\)"):
        run(tiny_config(data_root, train={"epochs": 1, "max_steps_per_epoch": 2}), out)
