"""Run a suite: skip what the store already holds, train and evaluate the rest, record everything.

Runs go one after another in this process (``workers=1``) or in ``workers``
spawned processes. Either way this process alone writes to the store, each
write one transaction: a run is marked running when it starts, its epochs are
logged as they end, and its evaluation metrics land with the ``finished``
status in one commit. A killed suite therefore keeps every finished run, and
the next launch redoes the interrupted one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue as queue_module
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mixlab.bench.store import ResultStore
from mixlab.bench.suite import RunSpec, SuiteError, SuitePlan
from mixlab.engine.config import config_diff, config_to_dict
from mixlab.engine.distributed import DistInfo, resolve_device
from mixlab.engine.run import RESUMABLE_CHANGES, build_augment, run_info, target_stats, train
from mixlab.evaluate import EvalResult, EvalSettings, analyse, evaluate_classifier, evaluate_regressor

Event = tuple[str, str, Any]  # (kind, run key, payload): ("start" | "epoch" | "done" | "failed", key, ...)


@dataclass
class SuiteOutcome:
    """What :func:`run_suite` did: keys finished now, skipped (already in the store), failed."""

    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0


class NullDisplay:
    """The display interface :func:`run_suite` drives; this one shows nothing."""

    def start(self, total_runs: int, skipped: int, total_epochs: int, workers: int) -> None:
        """The suite begins: ``total_runs`` to do, ``skipped`` already done."""

    def run_started(self, spec: RunSpec) -> None:
        """A run begins."""

    def epoch_done(self, spec: RunSpec, record: dict[str, Any]) -> None:
        """A run finished an epoch."""

    def run_done(self, spec: RunSpec, metrics: dict[str, Any] | None, error: str | None) -> None:
        """A run finished (``metrics``) or failed (``error``)."""

    def stop(self) -> None:
        """The suite is over (or interrupted)."""


def run_suite(
    plan: SuitePlan,
    store: ResultStore,
    *,
    output: str | os.PathLike = "runs",
    workers: int = 1,
    display: NullDisplay | None = None,
) -> SuiteOutcome:
    """Run the runs of ``plan`` the store does not hold as finished; return what happened.

    Args:
        output: run directories (checkpoints, logs) go to ``output/<suite>/<run key>``.
        workers: runs trained at once, each in its own process (1: in this process).
        display: receives progress events (see :class:`NullDisplay`).

    Example (shell)::

        mixlab bench --suite quick --workers 2
    """
    if workers < 1:
        raise SuiteError(f"--workers must be at least 1; got {workers}")
    display = display or NullDisplay()
    with _exclusive(store):
        return _run_locked(plan, store, Path(output), workers, display)


def _run_locked(plan: SuitePlan, store: ResultStore, output: Path, workers: int, display: NullDisplay) -> SuiteOutcome:
    started = time.perf_counter()
    outcome = SuiteOutcome()
    todo = _runs_to_do(plan, store, outcome)
    store.save_suite(plan.suite.name, plan.suite.model_dump(mode="json"))
    base = output / plan.suite.name
    display.start(len(todo), len(outcome.skipped), sum(s.config.train.epochs for s in todo), workers)
    handler = _EventHandler(plan.suite.name, store, {s.key: s for s in todo}, base, display, outcome)
    try:
        if workers == 1 or len(todo) <= 1:
            for spec in todo:
                execute_run(spec, str(base / spec.key), handler.handle)
        else:
            _run_in_processes(todo, base, workers, handler)
    finally:
        display.stop()
    outcome.wall_time_s = time.perf_counter() - started
    return outcome


def _runs_to_do(plan: SuitePlan, store: ResultStore, outcome: SuiteOutcome) -> list[RunSpec]:
    """Runs not finished with the same config and evaluation settings (a ``running`` row is a killed launch's)."""
    todo = []
    for spec in plan.runs:
        row = store.run_status(plan.suite.name, spec.key)
        if row is not None and row["status"] == "finished" and same_config(json.loads(row["config"]), spec):
            outcome.skipped.append(spec.key)
        else:
            todo.append(spec)
    return todo


def stored_config(spec: RunSpec) -> dict[str, Any]:
    """What the store keeps as a run's config: the resolved run config plus its evaluation settings.

    Example:
        >>> from mixlab.bench.suite import load_suite, plan_suite
        >>> sorted(stored_config(plan_suite(load_suite("mnist1d")).runs[0]))[:3]
        ['data', 'evaluate', 'mix']
    """
    return {**config_to_dict(spec.config), "evaluate": spec.evaluate.model_dump(mode="json")}


def same_config(stored: dict[str, Any], spec: RunSpec) -> bool:
    """Whether a stored run's config is ``spec``'s, up to settings that do not change results (progress, ...).

    Example:
        >>> from mixlab.bench.suite import load_suite, plan_suite
        >>> spec = plan_suite(load_suite("mnist1d")).runs[0]
        >>> same_config(stored_config(spec), spec)
        True
    """
    # Evaluation settings added after a run was stored read as their defaults, so that a store written by an
    # earlier version keeps its finished runs (they simply lack the new analyses' metrics).
    stored = {**stored, "evaluate": {**EvalSettings().model_dump(mode="json"), **stored.get("evaluate", {})}}
    diffs = config_diff(stored, stored_config(spec))
    return not [d for d in diffs if not d.startswith(RESUMABLE_CHANGES)]


@contextmanager
def _exclusive(store: ResultStore) -> Iterator[None]:
    """One launch per store at a time (an advisory lock next to it): two launches must not run the same run."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(f"{store.path}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SuiteError(
                f"another `mixlab bench` is using the store {str(store.path)!r}; wait for it to end or pass another --store"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _EventHandler:
    """Turns run events into store transactions and display updates (in the suite's process only)."""

    def __init__(
        self,
        suite: str,
        store: ResultStore,
        specs: dict[str, RunSpec],
        base: Path,
        display: NullDisplay,
        outcome: SuiteOutcome,
    ):
        self.suite, self.store, self.specs, self.base = suite, store, specs, base
        self.display, self.outcome = display, outcome
        self.run_ids: dict[str, int] = {}
        self.open: set[str] = set()

    def handle(self, event: Event) -> None:
        kind, key, payload = event
        spec = self.specs[key]
        if kind == "start":
            self.run_ids[key] = self.store.start_run(
                self.suite, key, dataset=spec.dataset, model=spec.model, method=spec.method, seed=spec.seed,
                config=stored_config(spec), output=str(self.base / key), pid=payload,
            )  # fmt: skip
            self.open.add(key)
            self.display.run_started(spec)
        elif kind == "epoch":
            self.store.log_epoch(self.run_ids[key], payload)
            self.display.epoch_done(spec, payload)
        elif kind == "done":
            self.store.finish_run(
                self.run_ids[key],
                metrics=payload["metrics"],
                wall_time_s=payload["wall_time_s"],
                versions=payload["versions"],
                device=payload["device"],
                artifacts={
                    **payload["artifacts"],
                    **({} if payload["reliability"] is None else {"reliability": payload["reliability"]}),
                },
                predictions=payload["predictions"],
            )
            self._close(key, payload["metrics"], None)
        elif kind == "failed":
            if key not in self.run_ids:  # failed before it could start (e.g. in a worker's set-up)
                self.handle(("start", key, None))
            self.store.fail_run(self.run_ids[key], payload["error"], wall_time_s=payload.get("wall_time_s"))
            self._close(key, None, payload["error"])

    def _close(self, key: str, metrics: dict[str, Any] | None, error: str | None) -> None:
        self.open.discard(key)
        (self.outcome.finished if error is None else self.outcome.failed).append(key)
        self.display.run_done(self.specs[key], metrics, error)


# ------------------------------------------------------------------ one run


def execute_run(spec: RunSpec, output: str, emit: Callable[[Event], None]) -> None:
    """Train and evaluate one run, reporting ``start``, ``epoch``, then ``done`` or ``failed`` events.

    Errors are reported as a ``failed`` event, never raised, so that a suite goes on;
    ``KeyboardInterrupt`` still stops it.
    """
    emit(("start", spec.key, os.getpid()))
    started = time.perf_counter()
    try:
        metrics, evaluation, info = _train_and_evaluate(spec, output, emit)
    except Exception as error:  # a failed run is recorded with its error; the suite goes on
        emit(("failed", spec.key, {"error": _describe(error), "wall_time_s": time.perf_counter() - started}))
        return
    wall = time.perf_counter() - started
    metrics["wall_time_s"] = wall
    emit(("done", spec.key, {
        "metrics": metrics, "reliability": evaluation.reliability, "predictions": evaluation.predictions,
        "artifacts": evaluation.artifacts,
        "wall_time_s": wall,
        "versions": {k: info[k] for k in ("mixlab", "torch", "numpy", "python", "platform")},
        "device": f"{info['device']} ({info['device_name']})",
    }))  # fmt: skip


def _train_and_evaluate(spec: RunSpec, output: str, emit: Callable[[Event], None]) -> tuple[dict, EvalResult, dict]:
    config = spec.config
    result = train(
        config,
        output,
        overwrite=True,
        progress=False,
        echo=False,
        on_epoch_end=lambda record: emit(("epoch", spec.key, record)),
    )
    splits = result.splits
    device = resolve_device(config.train.device)
    augment = build_augment(config, splits)
    common = {"preprocess": lambda x: augment(x, train=False), "device": device}
    if splits.task == "regression":
        mean, scale = target_stats(splits)
        evaluation = evaluate_regressor(
            result.model.to(device), splits.test, target_mean=mean, target_scale=scale,
            batch_size=spec.evaluate.batch_size, **common,
        )  # fmt: skip
    else:
        evaluation = evaluate_classifier(
            result.model.to(device), splits.test, val=splits.val, settings=spec.evaluate, **common
        )
        if spec.evaluate.analyses:
            analysis = analyse(
                result.model, splits, config, spec.evaluate, mixer_state=result.mixer_state,
                test_logits=evaluation.logits, strict=False, **common,
            )  # fmt: skip
            evaluation.metrics.update(analysis.metrics)
            evaluation.artifacts.update(analysis.artifacts)
    history = result.history
    speeds = [r["images_per_s"] for r in history[1:] or history]  # the first epoch includes warm-up
    metrics = {
        **evaluation.metrics,
        "images_per_s": statistics.median(speeds),
        "train_time_s": result.final.get("total_train_time_s", 0.0),
        "epochs": result.final.get("epochs", len(history)),
    }
    return metrics, evaluation, run_info(DistInfo(0, 1, device))


def _describe(error: BaseException) -> str:
    """The error's type and message, and where it was raised (the last frames), for the store."""
    frames = traceback.extract_tb(error.__traceback__)[-3:]
    where = "; ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames)
    return f"{type(error).__name__}: {error}" + (f"\n  at {where}" if where else "")


# ------------------------------------------------------------------ several processes

_events: Any = None


def _init_worker(events: Any, counter: Any, threads: int, gpus: int, parent: int) -> None:
    """Worker set-up: the event queue, a share of the CPU threads, one GPU each when there are several, and an
    exit when the suite's process dies (a SIGKILLed suite must not leave workers training for nobody)."""
    global _events
    _events = events
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus > 1:  # before CUDA is initialised in this process: "cuda" then means this worker's GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _worker_run(spec: RunSpec, output: str) -> None:
    execute_run(spec, output, _events.put)


def _run_in_processes(todo: list[RunSpec], base: Path, workers: int, handler: _EventHandler) -> None:
    context = multiprocessing.get_context("spawn")  # forked torch processes can deadlock
    events = context.Queue()
    counter = context.Value("i", 0)
    threads = max(1, (os.cpu_count() or 1) // workers)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(events, counter, threads, gpus, os.getpid())
    )
    try:
        futures = [pool.submit(_worker_run, spec, str(base / spec.key)) for spec in todo]
        while len(handler.outcome.finished) + len(handler.outcome.failed) < len(todo):
            try:
                handler.handle(events.get(timeout=0.5))
            except queue_module.Empty:
                if all(f.done() for f in futures):  # a worker died, or its last events were lost
                    _fail_open_runs(handler, next((f.exception() for f in futures if f.exception()), None))
                    return
    finally:
        workers_alive = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers_alive:  # on Ctrl-C, do not wait for the queued runs
            process.terminate()


def _fail_open_runs(handler: _EventHandler, error: BaseException | None) -> None:
    """Runs started in a worker that died (killed, out of memory) are recorded as failed; runs never started
    are left for the next launch."""
    reason = f"the worker process running it died ({error!r})" if error else "the worker process running it died"
    for key in sorted(handler.open):
        handler.handle(("failed", key, {"error": reason}))
