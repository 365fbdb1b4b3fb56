"""A run killed with SIGKILL resumes to the weights of an uninterrupted run; 2-process DDP on gloo."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from engine_fixtures import tiny_config, write_fashion_like

from mixlab.data import load_dataset
from mixlab.engine import load_config
from mixlab.engine.checkpoint import load_checkpoint, read_jsonl
from mixlab.engine.run import build_model
from mixlab.sampling import derive_seed


def child_env() -> dict[str, str]:
    # the same thread count in every process, so that float sums are the same
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def mixlab_train(config: Path, output: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "mixlab", "train", "--config", str(config), "--output", str(output), *extra]
    return subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = proc.communicate(timeout=timeout)
    text = output.decode()
    assert proc.returncode == 0, text
    return text


def test_sigkill_after_epoch_one_then_resume_gives_identical_weights(tmp_path):
    root = write_fashion_like(tmp_path / "data", n_train=2048, n_test=128)
    config = tiny_config(root, mix={"method": "cutmix"}, train={"epochs": 3, "batch_size": 32})
    config["data"]["augment"]["hflip"] = True
    path = write_config(tmp_path / "cutmix.yaml", config)

    finish(mixlab_train(path, tmp_path / "full"))

    killed = tmp_path / "killed"
    proc = mixlab_train(path, killed)
    deadline = time.monotonic() + 240
    while len(read_jsonl(killed / "metrics.jsonl")) < 1:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch was logged"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (killed / "final.json").exists(), "the run finished before it could be killed"
    epochs_done = load_checkpoint(killed / "checkpoint.pt")["epoch"]
    assert 1 <= epochs_done < 3

    text = finish(mixlab_train(path, killed, "--resume"))
    assert "finished 3 epochs" in text
    full, resumed = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(killed / "checkpoint.pt")
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [r["epoch"] for r in read_jsonl(killed / "metrics.jsonl")] == [1, 2, 3]
    info = yaml.safe_load((killed / "run.json").read_text())
    assert [r["after_epoch"] for r in info["resumes"]] == [epochs_done] and "--resume" not in info["argv"]
    assert [r["train_loss"] for r in read_jsonl(killed / "metrics.jsonl")] == [r["train_loss"] for r in full["history"]]


WORKER = """
import os, sys, torch
from mixlab import Mixup
from mixlab.engine import load_config, train
from mixlab.methods import MIXERS

class LearnedMixup(Mixup):
    # one trainable scalar whose gradient depends on each rank's own batch
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.weight = torch.nn.Parameter(torch.zeros(()))
    def trainable_parameters(self):
        return [self.weight]
    def loss_terms(self, mb, outputs):
        return {"probe": 0.01 * self.weight * outputs.float().mean()}
    def state_dict(self):
        return {"weight": self.weight.detach().clone()}

MIXERS["learned_mixup"] = LearnedMixup
result = train(load_config(sys.argv[1]), sys.argv[2], echo=False)
torch.save(result.model.state_dict(), os.path.join(sys.argv[3], f"rank{os.environ['RANK']}.pt"))
torch.save(result.mixer_state, os.path.join(sys.argv[3], f"mixer{os.environ['RANK']}.pt"))
"""


def train_on_two_ranks(tmp_path, config_path) -> None:
    """Train ``config_path`` with torchrun on two gloo ranks; weights and mixer states land in ``tmp_path``."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(worker), str(config_path), str(tmp_path / "out"), str(tmp_path)]
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def initial_test_loss(config: dict) -> float:
    cfg = load_config(config)
    splits = load_dataset("fashion_mnist", root=config["data"]["root"])
    torch.manual_seed(derive_seed(cfg.train.seed, "init"))
    model = build_model(cfg, splits).eval()
    from mixlab.data.augment import BatchAugment, channel_stats

    augment = BatchAugment(*channel_stats(splits.train.x))
    with torch.no_grad():
        logits = model(augment(splits.test.x, train=False))
    return float(torch.nn.functional.cross_entropy(logits, splits.test.y))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_two_gloo_ranks_end_with_identical_weights_and_lower_loss(tmp_path):
    root = write_fashion_like(tmp_path / "data", n_train=1024, n_test=256)
    config = tiny_config(root, mix={"method": "mixup"}, train={"epochs": 1, "batch_size": 32})
    path = write_config(tmp_path / "ddp.yaml", {**config, "mix": {"method": "learned_mixup"}})
    train_on_two_ranks(tmp_path, path)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    mixer0, mixer1 = torch.load(tmp_path / "mixer0.pt"), torch.load(tmp_path / "mixer1.pt")
    assert float(mixer0["weight"]) != 0.0 and torch.equal(mixer0["weight"], mixer1["weight"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt") == ["mixer0.pt", "mixer1.pt", "rank0.pt", "rank1.pt"]
    info = yaml.safe_load((tmp_path / "out" / "run.json").read_text())
    assert info["world_size"] == 2
    final = yaml.safe_load((tmp_path / "out" / "final.json").read_text())
    # every rank saw half the data: 1024 // 2 // 32 = 16 steps each
    assert final["steps"] == 16
    start = initial_test_loss(config)
    assert final["test_loss"] < 0.7 * start and math.isfinite(final["test_loss"])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
@pytest.mark.parametrize(
    "mix",
    [
        # RankMixup runs the clean and the mixed batch through the DDP wrapper in two forward passes
        {"method": "mixup", "options": {"alpha": 2.0}, "loss": "rankmixup"},
        # the clean-loss stand-in carries gradients computed on the bare module, beside the wrapper's
        {"method": "puzzlemix", "options": {"clean_weight": 1.0, "blocks": [2, 4]}, "loss": "bce_softmax"},
    ],
    ids=["rankmixup_two_passes", "puzzlemix_clean_loss"],
)
def test_two_gloo_ranks_stay_identical_with_extra_passes(tmp_path, mix):
    root = write_fashion_like(tmp_path / "data", n_train=512, n_test=128)
    config = tiny_config(root, mix=mix, train={"epochs": 1, "batch_size": 32})
    path = write_config(tmp_path / "ddp.yaml", config)
    train_on_two_ranks(tmp_path, path)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    final = yaml.safe_load((tmp_path / "out" / "final.json").read_text())
    assert final["steps"] == 8 and math.isfinite(final["test_loss"])
