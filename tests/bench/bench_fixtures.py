"""Helpers for the bench tests: a tiny suite on a Fashion-MNIST-like IDX fixture."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))  # the engine tests' IDX writer
from engine_fixtures import write_fashion_like


def tiny_suite(tmp_path: Path, *, methods: list[dict] | None = None, epochs: int = 2, n_train: int = 512, **extra) -> Path:
    """Write fixture data and a small suite file under ``tmp_path``; return the suite's path."""
    root = write_fashion_like(tmp_path / "data", n_train=n_train, n_test=200)
    suite = {
        "name": "tiny",
        "base": {
            "data": {"root": str(root)},
            "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 0.0},
            "train": {"epochs": epochs, "batch_size": 64, "eval_batch_size": 256, "progress": "off", "threads": 1},
        },
        "datasets": [{"name": "fashion_mnist", "data": {"val_fraction": 0.2}}],
        "models": ["cnn_small"],
        "methods": methods
        or [
            {"name": "erm"},
            {"name": "mixup", "mix": {"method": "mixup", "options": {"alpha": 1.0}}},
            {"name": "cutmix", "mix": {"method": "cutmix", "options": {"alpha": 1.0}}},
        ],
        "seeds": [0],
        "evaluate": {"fgsm_eps": 0.03, "noise_std": 0.1, "batch_size": 256},
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path
