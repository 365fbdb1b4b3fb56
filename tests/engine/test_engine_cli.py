"""The mixlab command: train, data list/info/fetch, errors as messages with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from engine_fixtures import tiny_config
from PIL import Image
from typer.testing import CliRunner

import mixlab
from mixlab.cli import app
from mixlab.engine import load_config, train

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and mixlab.__version__ in result.output
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "--set" in result.output and "--resume" in result.output


def test_train_with_overrides_writes_the_run(data_root, tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(tiny_config(data_root)))
    out = tmp_path / "out"
    args = ["train", "--config", str(config), "--set", "train.epochs=1", "--set", "mix.method=cutmix", "--output", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "finished 1 epochs" in result.output and "test_acc" in result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["mix"]["method"] == "cutmix" and saved["train"]["epochs"] == 1
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already holds a finished run" in again.output


def test_bad_config_is_a_message_not_a_traceback(tmp_path):
    result = runner.invoke(app, ["train", "--set", "model.name=resnet9000", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "unknown model 'resnet9000'" in result.output and "cnn_small" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_missing_data_lists_where_it_looked(tmp_path):
    result = runner.invoke(app, ["train", "--data-root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert str(tmp_path / "nowhere") in result.output and "apt-get install dataset-fashion-mnist" in result.output


def test_data_commands(data_root):
    listing = runner.invoke(app, ["data", "list", "--root", str(data_root)])
    assert listing.exit_code == 0 and "fashion_mnist" in listing.output and "mnist1d" in listing.output
    info = runner.invoke(app, ["data", "info", "fashion_mnist", "--root", str(data_root)])
    assert info.exit_code == 0 and str(data_root) in info.output
    unknown = runner.invoke(app, ["data", "info", "imagenet"])
    assert unknown.exit_code == 2 and "unknown dataset 'imagenet'" in unknown.output


def test_python_dash_m_runs_the_same_command():
    done = subprocess.run([sys.executable, "-m", "mixlab", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and mixlab.__version__ in done.stdout


def write_folder(root: Path, n_per_class: int = 12) -> Path:
    """An image folder with train/ and test/ trees of two learnable classes (dark / bright)."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, level in (("dark", 40), ("bright", 210)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n_per_class):
                pixels = np.clip(rng.normal(level, 20, (10, 10, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_lazy_image_folder_trains_through_dataloader_workers(tmp_path):
    root = write_folder(tmp_path / "folder")
    config = load_config(
        {
            "data": {"name": "imagefolder", "options": {"path": str(root), "image_size": 8, "in_memory": False}, "workers": 1},
            "model": {"name": "cnn_small"},
            "mix": {"method": "mixup"},
            "optim": {"lr": 0.05},
            "train": {"epochs": 3, "batch_size": 8, "eval_batch_size": 8, "device": "cpu", "progress": "off"},
        }
    )
    result = train(config, None, echo=False)
    assert result.final["steps"] == 9  # 24 images, batches of 8, 3 epochs
    assert result.final["test_acc"] >= 0.9
