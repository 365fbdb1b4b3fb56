"""Time every mixer against a plain ``x.clone()`` of the same batch.

Prints, per device and batch shape, the median time per batch and its ratio to
the clone's median, measured interleaved in one run (so machine noise hits
both alike). Usage:

    python benchmarks/mixing_speed.py [--repeats 30] [--lam-mode batch|sample] [--system-malloc] [--json out.json]

A 64x3x224x224 float32 batch is 154 MB. glibc serves such a block with a
fresh mmap, so each new tensor pays page faults whose cost swings several-fold
with the kernel's huge-page luck; a plain clone then takes 3 to 13 ms here
from one call to the next, which makes ratios meaningless. By default the
script re-runs itself with glibc told to keep freed memory
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_), so the ratios compare the
work done; ``--system-malloc`` measures with the allocator as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

import mixlab
from mixlab.methods import STATIC_MIXERS

SHAPES = [(64, 3, 224, 224), (128, 3, 32, 32)]
GOALS_224 = {"mixup": 2.0, "midpoint": 2.0, "manifold_mixup": 2.0, "saliencymix": 3.0}
MASK_GOAL_224 = 1.6
GOAL_32 = 5.0


def mixers(lam_mode: str) -> dict[str, mixlab.Mixer]:
    """Every mixer that needs nothing but the batch, mixing every batch (random_choice: the mixup/CutMix switch).

    ``p=1``: CutMix and SaliencyMix default to their authors' p = 0.5, and a skipped batch costs nothing.
    Model-aware mixers are timed in a training step by ``benchmarks/step_cost.py``.
    """
    out = {"random_choice": mixlab.create_mixer("random_choice", mixers=["mixup", "cutmix"], mode=lam_mode, seed=0)}
    for cls in STATIC_MIXERS:
        out[cls.name] = mixlab.create_mixer(cls.name, lam_mode=lam_mode, p=1.0, seed=0)
    return out


class _NaiveMixup:
    """Reference: the textbook expression ``lam * x + (1 - lam) * x[perm]`` (three temporaries)."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        return 0.7 * x + 0.3 * x[perm]


class _NaiveCutMix:
    """Reference: clone, then paste the box from a fully gathered partner batch."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        out = x.clone()
        out[..., :h, :w] = x[perm][..., :h, :w]
        return out


REFERENCES = {"ref:naive_mixup": _NaiveMixup(), "ref:naive_cutmix": _NaiveCutMix()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def measure(x: torch.Tensor, y: torch.Tensor, mixer: Callable, repeats: int) -> tuple[float, float]:
    """Median seconds of the mixer and of ``x.clone()``, interleaved."""
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # warm-up: allocator, kernels, caches
        mixer(x, y, generator=g)
        x.clone()
    mix_times, clone_times = [], []
    for _ in range(repeats):
        clone_times.append(_time(lambda: x.clone(), x.device))
        mix_times.append(_time(lambda: mixer(x, y, generator=g), x.device))
    return statistics.median(mix_times), statistics.median(clone_times)


def goal(name: str, shape: tuple[int, ...]) -> float:
    """The speed goal of issue 2 for this mixer and shape."""
    if shape[-1] != 224:
        return GOAL_32
    return GOALS_224.get(name, MASK_GOAL_224)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--lam-mode", choices=["batch", "sample"], default="batch")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--system-malloc", action="store_true", help="keep glibc's default large-block handling")
    args = parser.parse_args()
    if not args.system_malloc and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**32), MALLOC_TRIM_THRESHOLD_=str(2**33))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    malloc = "system" if args.system_malloc else "freed memory kept"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, lam_mode={args.lam_mode}, malloc: {malloc}"
    )
    print(f"{'device':6} {'shape':>18} {'mixer':17} {'median ms':>10} {'clone ms':>9} {'ratio':>6} {'goal':>5}")
    for device in devices:
        for shape in SHAPES:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=g).to(device)
            y = torch.randint(0, 10, (shape[0],), generator=g).to(device)
            for name, mixer in {**mixers(args.lam_mode), **REFERENCES}.items():
                t_mix, t_clone = measure(x, y, mixer, args.repeats)
                ratio, target = t_mix / t_clone, goal(name, shape)
                flag = "" if name in REFERENCES else ("ok" if ratio <= target else "MISS")
                rows.append(
                    {
                        "device": device.type,
                        "shape": list(shape),
                        "mixer": name,
                        "median_s": t_mix,
                        "clone_s": t_clone,
                        "ratio": ratio,
                        "goal": target,
                    }
                )
                print(
                    f"{device.type:6} {'x'.join(map(str, shape)):>18} {name:17} {t_mix * 1e3:10.3f} "
                    f"{t_clone * 1e3:9.3f} {ratio:6.2f} {target:5.1f} {flag}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
