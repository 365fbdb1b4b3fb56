"""The cost of every mixer: median training-step time divided by plain training's (ERM), same model, data, batch.

A step is what the engine does: augmentation and normalisation, the mixer's
context (saliency, features, EMA), mixing, forward, loss and the mixer's loss
terms, backward, optimiser step and the mixer's updates. It is timed through
:class:`mixlab.engine.Trainer` on batches already in memory, so data loading
is left out. Methods are interleaved round by round (ERM in every round) so
that drift in the machine's speed hits all alike; the first round warms up.

Settings (``--settings``):

- ``fashion``: Fashion-MNIST, ``cnn_small``, batch 128;
- ``r18``: 32x32x3 random images in 10 classes, ``preact_resnet18``, batch 64
  (content does not change a step's cost; no CIFAR files are needed);
- ``vit``: Fashion-MNIST, ``vit_tiny``, batch 128 (TransMix needs attention, so
  it is measured here, against ERM on the same ViT).

Usage::

    python benchmarks/step_cost.py                       # every mixer, fashion and r18, CPU (and CUDA if present)
    python benchmarks/step_cost.py --settings fashion --methods puzzlemix comixup --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from mixlab.data import ArrayData, DataSplits, load_dataset
from mixlab.engine import load_config
from mixlab.engine.distributed import DistInfo
from mixlab.engine.run import _build_trainer
from mixlab.methods import list_mixers

#: methods timed by default: every registered mixer, except the composition (it costs what its members cost).
SKIP = {"random_choice"}
#: mixers that need a model exposing attention maps.
ATTENTION_ONLY = {"transmix"}
#: the goal for each method (step time / ERM's); static mixers 1.05.
GOALS = {
    "attentivemix": 1.3,
    "sumix": 1.3,
    "transmix": 1.3,
    "automix": 1.8,
    "adautomix": 1.8,
    "alignmix": 1.8,
    "puzzlemix": 2.0,
    "comixup": 3.0,
}
STATIC_GOAL = 1.05


@dataclass
class Setting:
    """One model, dataset and batch size."""

    name: str
    model: str
    batch_size: int
    steps: int


SETTINGS = {
    "fashion": Setting("Fashion-MNIST, cnn_small, batch 128", "cnn_small", 128, 20),
    "r18": Setting("32x32 random images, preact_resnet18, batch 64", "preact_resnet18", 64, 3),
    "vit": Setting("Fashion-MNIST, vit_tiny, batch 128", "vit_tiny", 128, 6),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="*", default=["fashion", "r18", "vit"], choices=sorted(SETTINGS))
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered mixer")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (plus one warm-up)")
    parser.add_argument("--steps", type=int, default=None, help="steps per method per round (default per setting)")
    parser.add_argument("--device", nargs="*", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


def random_splits(n: int = 512, size: int = 32, channels: int = 3, classes: int = 10) -> DataSplits:
    """uint8 noise images with random labels (a step's cost does not depend on the pixels)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)
    part = ArrayData(x, torch.randint(0, classes, (n,), generator=gen))
    return DataSplits("random32", "classification", part, None, part, classes, (channels, size, size), None, {})


def build_trainer(setting: Setting, method: str, splits: DataSplits, device: torch.device):
    """An engine trainer for ``method`` (``"none"`` for ERM) in ``setting``."""
    config = load_config(
        {
            "data": {"name": "fashion_mnist" if splits.name != "random32" else "cifar10"},
            "model": {"name": setting.model},
            "mix": {"method": method},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "constant"},
            "train": {"epochs": 1, "batch_size": setting.batch_size, "device": str(device), "progress": "off"},
        }
    )
    return _build_trainer(config, splits, DistInfo(0, 1, device), progress=False, echo=False)


def batches(trainer, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` training batches, kept in memory."""
    trainer.train_loader.set_epoch(0)
    out = []
    for x, y in trainer.train_loader:
        out.append((x, y))
        if len(out) == count:
            break
    return out


def time_steps(trainer, data: list, device: torch.device) -> float:
    """Seconds per training step over ``data``."""
    augment_gen, mix_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    trainer.model.train()
    sync(device)
    start = time.perf_counter()
    for x, y in data:
        trainer._train_step(x, y, augment_gen, mix_gen, 0)
    sync(device)
    return (time.perf_counter() - start) / len(data)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_setting(key: str, methods: list[str], args: argparse.Namespace, device: torch.device) -> None:
    setting = SETTINGS[key]
    steps = args.steps or setting.steps
    splits = random_splits() if key == "r18" else load_dataset("fashion_mnist", subset_per_class=400)
    on_vit = key == "vit"
    wanted = [m for m in methods if (m in ATTENTION_ONLY) == on_vit or (on_vit and m == "cutmix")]
    trainers = {m: build_trainer(setting, m, splits, device) for m in ["none", *wanted]}
    data = batches(trainers["none"], steps)
    times: dict[str, list[float]] = {m: [] for m in trainers}
    for round_ in range(args.rounds + 1):
        for method, trainer in trainers.items():
            elapsed = time_steps(trainer, data, device)
            if round_:  # round 0 warms up
                times[method].append(elapsed)
    erm = statistics.median(times["none"])
    print(f"\n{setting.name}, {device}, {torch.get_num_threads()} threads, {args.rounds} rounds of {steps} steps")
    print(f"ERM: {1000 * erm:.1f} ms/step (median)\n")
    print("| method | ms/step (median) | × ERM | goal | met |")
    print("|:---|---:|---:|---:|:---:|")
    for method in wanted:
        median = statistics.median(times[method])
        goal = GOALS.get(method, STATIC_GOAL)
        ratio = median / erm
        print(f"| {method} | {1000 * median:.1f} | {ratio:.2f} | ≤ {goal:.2f} | {'yes' if ratio <= goal else 'no'} |")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods or [m for m in list_mixers() if m not in SKIP]
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for device in devices:
        for key in args.settings:
            run_setting(key, methods, args, torch.device(device))


if __name__ == "__main__":
    main()
