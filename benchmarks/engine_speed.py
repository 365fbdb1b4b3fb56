"""Training throughput of the engine against a minimal hand-written loop on the same model and data.

For Fashion-MNIST (or any dataset mixlab reads) with ``cnn_small`` at batch 128,
each round times one block of ``--steps`` training steps of the hand-written
loop and then the same count through :class:`mixlab.engine.Trainer`, with no
mixer and with each ``--mixers`` entry. Rounds alternate so that drift in the
machine's speed hits both alike; the first round is a warm-up. Reported:
median images/s of each, and the engine's overhead ``1 - engine / hand``.

The hand-written loop does what any user loop does and nothing more: index a
batch of the uint8 tensor, scale and normalise, channels_last, mix, forward,
loss, backward, SGD step. The engine adds its augmentation only when asked
(``--augment``), so by default both do the same work.

Usage::

    python benchmarks/engine_speed.py                # Fashion-MNIST, no mixer / mixup / cutmix
    python benchmarks/engine_speed.py --rounds 9 --steps 60 --mixers mixup fmix
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import mixlab
from mixlab.data import load_dataset
from mixlab.engine import load_config
from mixlab.engine.distributed import DistInfo
from mixlab.engine.run import _build_trainer, build_model
from mixlab.losses import mixed_cross_entropy


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="training steps per timed block")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (plus one warm-up)")
    parser.add_argument("--mixers", nargs="*", default=["mixup", "cutmix"])
    parser.add_argument("--augment", action="store_true", help="let the engine crop and flip too (hand loop does not)")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


def engine_trainer(args: argparse.Namespace, method: str, splits) -> tuple[mixlab.engine.RunConfig, mixlab.engine.Trainer]:
    augment = {"crop_padding": 2, "hflip": True} if args.augment else {}
    config = load_config(
        {
            "data": {"name": args.dataset, "augment": augment},
            "model": {"name": args.model},
            "mix": {"method": method},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "constant"},
            "train": {"epochs": 10_000, "batch_size": args.batch_size, "max_steps_per_epoch": args.steps, "device": "cpu"},
        }
    )
    return config, _build_trainer(config, splits, DistInfo(0, 1, torch.device("cpu")), progress=False, echo=False)


class HandLoop:
    """The minimal loop a user would write, on the engine's model architecture and data."""

    def __init__(self, config: mixlab.engine.RunConfig, trainer: mixlab.engine.Trainer, splits, batch_size: int):
        torch.manual_seed(0)
        self.model = build_model(config, splits).to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.x, self.y = splits.train.x, splits.train.y
        mean, std = trainer.augment.mean, trainer.augment.std
        self.scale = (1.0 / 255.0 / std).reshape(1, -1, 1, 1)
        self.shift = (-mean / std).reshape(1, -1, 1, 1)
        method = config.mix.method
        self.mixer = None if method == "none" else mixlab.create_mixer(method)
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(0)

    def block(self, steps: int) -> float:
        """Images per second over ``steps`` training steps."""
        self.model.train()
        perm = torch.randperm(len(self.y), generator=self.gen)
        start = time.perf_counter()
        for i in range(steps):
            idx = perm[i * self.batch_size : (i + 1) * self.batch_size]
            x = torch.addcmul(self.shift, self.x[idx].float(), self.scale).contiguous(memory_format=torch.channels_last)
            y = self.y[idx]
            if self.mixer is None:
                loss = nn.functional.cross_entropy(self.model(x), y)
            else:
                mb = self.mixer(x, y, self.gen)
                loss = mixed_cross_entropy(self.model(mb.inputs), mb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return steps * self.batch_size / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_dataset(args.dataset)
    methods = ["none", *args.mixers]
    rows = []
    for method in methods:
        config, trainer = engine_trainer(args, method, splits)
        hand = HandLoop(config, trainer, splits, args.batch_size)
        hand_ips, engine_ips = [], []
        for round_ in range(args.rounds + 1):
            h = hand.block(args.steps)
            e = trainer.train_epoch(round_)["images_per_s"]
            if round_:  # round 0 warms up both
                hand_ips.append(h)
                engine_ips.append(e)
        rows.append((method, statistics.median(hand_ips), statistics.median(engine_ips)))
    print(f"{args.dataset}, {args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds of {args.steps} steps, engine augmentation {'on' if args.augment else 'off'}")
    print("| mixer | hand-written loop (img/s) | engine (img/s) | engine overhead |")
    print("|---|---|---|---|")
    for method, h, e in rows:
        print(f"| {method} | {h:,.0f} | {e:,.0f} | {100 * (1 - e / h):+.1f}% |")


if __name__ == "__main__":
    main()
