"""What storing per-sample test predictions adds to a benchmark run, as a fraction of the run's wall time.

The work a run does because predictions are kept, and would not do otherwise, is:
the five per-sample columns computed from the test logits it already has
(:func:`mixlab.evaluate.predictions.classification_predictions`), their
compression (:meth:`SamplePredictions.to_bytes`), and the insert in the store's
``predictions`` table (one transaction, the same one that marks the run finished).
This script times those steps on the logits of a test set the size of the run's
(median of ``--repeats``), and divides by the median wall time of the finished
runs of a suite in a results store, measured on the same machine.

Usage::

    mixlab bench --suite quick --store runs/mixlab.db       # first, the runs to compare with
    python benchmarks/prediction_store_cost.py --store runs/mixlab.db --suite quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mixlab.bench.store import ResultStore
from mixlab.evaluate.predictions import classification_predictions


def storing_time(num_samples: int, num_classes: int, repeats: int) -> tuple[float, int]:
    """Median seconds to build, compress and store one run's predictions, and the stored size in bytes."""
    generator = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(num_samples, num_classes, generator=generator)
    targets = torch.randint(0, num_classes, (num_samples,), generator=generator)
    times, size = [], 0
    with tempfile.TemporaryDirectory() as folder, ResultStore(Path(folder) / "cost.db") as store:
        store.save_suite("cost", {"name": "cost"})
        for repeat in range(repeats):
            run_id = store.start_run(
                "cost", f"run{repeat}", dataset="d", model="m", method="erm", seed=repeat, config={}
            )
            started = time.perf_counter()
            predictions = classification_predictions(logits, targets)
            store.finish_run(run_id, metrics={}, wall_time_s=0.0, predictions=predictions)
            times.append(time.perf_counter() - started)
            size = len(predictions.to_bytes())
    return statistics.median(times), size


def suite_wall_times(store_path: Path, suite: str) -> tuple[list[float], int, int]:
    """Wall times of the suite's finished runs, their test-set size and number of classes."""
    with ResultStore(store_path) as store:
        records = [r for r in store.records(suite, with_predictions=True) if r.finished]
    if not records:
        raise SystemExit(f"the store {store_path} holds no finished run of suite {suite!r}")
    sized = next((r for r in records if r.predictions is not None), None)
    if sized is None:
        raise SystemExit(f"suite {suite!r}'s runs in {store_path} have no stored predictions (an older mixlab)")
    num_classes = int(sized.predictions.columns["target"].max()) + 1
    return [r.final["wall_time_s"] for r in records], len(sized.predictions), num_classes


def main() -> None:
    """Print the median cost of storing predictions and its share of the suite's median run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("runs/mixlab.db"))
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    walls, num_samples, num_classes = suite_wall_times(args.store, args.suite)
    seconds, size = storing_time(num_samples, num_classes, args.repeats)
    run = statistics.median(walls)
    print(f"test samples: {num_samples}, classes: {num_classes}, stored size: {size / 1024:.0f} KiB per run")
    print(f"storing predictions: median {seconds * 1000:.1f} ms over {args.repeats} repeats")
    print(f"suite {args.suite!r}: median run wall time {run:.1f} s over {len(walls)} runs")
    print(f"overhead: {100 * seconds / run:.3f} % of a run's wall time")


if __name__ == "__main__":
    main()
