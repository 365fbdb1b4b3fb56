"""What each analysis of ``mixlab.evaluate.analysis`` costs on a suite's model and data.

Trains one run of the suite (its first dataset and model; ``--method``, ``--epochs``), then runs every
analysis ``--repeats`` times with the suite's evaluation settings and prints the median seconds of each,
and its share of the run's training time. With ``--json PATH`` the figures are also written there.

Example (shell)::

    python benchmarks/analysis_cost.py --suite quick --method mixup --epochs 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from mixlab.bench.suite import load_suite, plan_suite
from mixlab.engine.run import build_augment, train
from mixlab.evaluate.analysis import analyse
from mixlab.evaluate.robustness import predict_logits
from mixlab.evaluate.settings import ANALYSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--method", default="mixup")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the suite's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    overrides = [] if args.epochs is None else [f"train.epochs={args.epochs}"]
    plan = plan_suite(load_suite(args.suite), overrides=overrides, methods=[args.method])
    spec = plan.runs[0]
    for notice in plan.notices:
        print(notice)
    started = time.perf_counter()
    result = train(spec.config, None, progress=False, echo=False)
    train_s = time.perf_counter() - started
    augment = build_augment(spec.config, result.splits)
    preprocess = lambda x: augment(x, train=False)  # noqa: E731
    # as the runner does: the test logits come from the evaluation, so calibration and OOD reuse them
    logits = predict_logits(result.model, result.splits.test.x, preprocess=preprocess, batch_size=spec.evaluate.batch_size)
    settings = spec.evaluate.model_copy(update={"analyses": list(ANALYSES)})
    times: dict[str, list[float]] = {name: [] for name in ANALYSES}
    for _ in range(args.repeats):
        outcome = analyse(
            result.model, result.splits, spec.config, settings,
            preprocess=preprocess, mixer_state=result.mixer_state, test_logits=logits,
        )  # fmt: skip
        for name in ANALYSES:
            times[name].append(outcome.metrics[f"analysis_time_s/{name}"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{spec.key}: training {train_s:.1f} s ({spec.config.train.epochs} epochs); analyses, median of {args.repeats}:")
    for name, seconds in medians.items():
        print(f"  {name:12s} {seconds:7.2f} s  ({100 * seconds / train_s:5.1f} % of training)")
    print(f"  {'all':12s} {sum(medians.values()):7.2f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"run": spec.key, "train_s": train_s, "median_s": medians, "all": times}, indent=2))


if __name__ == "__main__":
    main()
