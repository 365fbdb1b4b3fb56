"""What ``mixlab bench`` shows while it works: a live panel on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from mixlab.bench.runner import NullDisplay
from mixlab.bench.suite import RunSpec


class BenchDisplay(NullDisplay):
    """Runs done and remaining, each running run's epoch, and the ETA; one line per finished run.

    The ETA counts epochs: the suite's remaining epochs at the pace of the epochs
    done so far (with ``workers`` runs at once), so it settles after the first run.
    When stderr is not a terminal only the per-run lines are printed.

    Example:
        >>> display = BenchDisplay(console=Console(file=__import__("io").StringIO()), live=False)
        >>> display.start(total_runs=2, skipped=1, total_epochs=4, workers=1)
        >>> display.stop()
    """

    def __init__(self, console: Console | None = None, *, live: bool | None = None):
        self.console = console or Console(file=sys.stderr)
        self.live = self.console.is_terminal if live is None else live
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._runs: dict[str, TaskID] = {}
        self._run_epochs: dict[str, int] = {}
        self._done = 0
        self._total = 0
        self._epochs_done = 0
        self._epochs_total = 0
        self._started = 0.0

    def start(self, total_runs: int, skipped: int, total_epochs: int, workers: int) -> None:
        """Announce the suite and open the live panel."""
        self._total, self._epochs_total, self._started = total_runs, total_epochs, time.perf_counter()
        already = f" ({skipped} already in the store, skipped)" if skipped else ""
        self.console.print(f"{total_runs} run(s) to do{already}, {workers} at a time", highlight=False)
        if not self.live or total_runs == 0:
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._progress.start()
        self._overall = self._progress.add_task(self._summary(), total=total_runs, note=self._eta())

    def run_started(self, spec: RunSpec) -> None:
        """Add a bar for the run's epochs."""
        if self._progress is not None:
            self._runs[spec.key] = self._progress.add_task(
                f"  {spec.method} (seed {spec.seed})", total=spec.config.train.epochs, note="epoch 0"
            )

    def epoch_done(self, spec: RunSpec, record: dict[str, Any]) -> None:
        """Advance the run's bar and refresh the ETA."""
        self._epochs_done += 1
        self._run_epochs[spec.key] = int(record["epoch"])
        if self._progress is not None and spec.key in self._runs:
            shown = f"epoch {record['epoch']}, loss {record.get('train_loss', float('nan')):.3f}"
            if "test_acc" in record:
                shown += f", test {record['test_acc']:.1%}"
            self._progress.update(self._runs[spec.key], completed=record["epoch"], note=shown)
            self._progress.update(self._overall, note=self._eta())

    def run_done(self, spec: RunSpec, metrics: dict[str, Any] | None, error: str | None) -> None:
        """Print the run's result line and close its bar."""
        self._done += 1
        if error is not None:  # the epochs it will not do leave the ETA
            self._epochs_total -= spec.config.train.epochs - self._run_epochs.get(spec.key, 0)
        if metrics is not None and "rmse" in metrics:
            line = (
                f"[{self._done}/{self._total}] {spec.key}: RMSE {metrics['rmse']:.4g}, "
                f"MAE {metrics.get('mae', float('nan')):.4g}, {metrics.get('wall_time_s', 0.0):.0f} s"
            )
        elif metrics is not None:
            line = (
                f"[{self._done}/{self._total}] {spec.key}: top-1 {metrics.get('top1', float('nan')):.2%}, "
                f"ECE {metrics.get('ece', float('nan')):.2%}, {metrics.get('wall_time_s', 0.0):.0f} s"
            )
        else:
            line = f"[{self._done}/{self._total}] {spec.key}: [bold red]failed[/] {error.splitlines()[0] if error else ''}"
        self.console.print(line, highlight=False)
        if self._progress is not None:
            task = self._runs.pop(spec.key, None)
            if task is not None:
                self._progress.remove_task(task)
            self._progress.update(self._overall, completed=self._done, description=self._summary(), note=self._eta())

    def stop(self) -> None:
        """Close the live panel."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _summary(self) -> str:
        return f"runs {self._done}/{self._total} done, {self._total - self._done} left"

    def _eta(self) -> str:
        if self._epochs_done == 0:
            return "ETA -"
        elapsed = time.perf_counter() - self._started
        remaining = max(self._epochs_total - self._epochs_done, 0) * elapsed / self._epochs_done
        minutes, seconds = divmod(int(remaining), 60)
        return f"ETA {minutes}:{seconds:02d}"
