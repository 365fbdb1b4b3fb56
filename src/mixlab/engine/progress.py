"""A live progress bar per epoch (rich), silent when the output is not a terminal."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochProgress:
    """One bar per epoch with loss, accuracy, throughput and ETA; epoch summaries as plain lines.

    ``enabled=None`` shows the bar only when stderr is a terminal. Summary
    lines are printed when ``echo`` is true (the default), bar or not, so that
    logs of non-interactive runs still say how training went.

    Example:
        >>> bar = EpochProgress(enabled=False, echo=False)
        >>> bar.start_epoch(0, 10, total_epochs=1); bar.update(5, loss=0.5, acc=0.9, images_per_s=100.0); bar.end_epoch("done")
    """

    def __init__(self, enabled: bool | None = None, *, echo: bool = True, console: Console | None = None):
        self.console = console or Console(file=sys.stderr)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.echo = echo
        self._progress: Progress | None = None
        self._task: Any = None

    def start_epoch(self, epoch: int, steps: int, *, total_epochs: int) -> None:
        """Open the bar for ``epoch`` (0-based) of ``total_epochs``, ``steps`` long."""
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{total_epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[ips]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, loss="-", acc="-", ips="- img/s")

    def update(self, step: int, *, loss: float, acc: float | None, images_per_s: float) -> None:
        """Move the bar to ``step`` steps done, with running figures."""
        if self._progress is not None:
            shown = "-" if acc is None else f"{acc:.1%}"
            ips = f"{images_per_s:,.0f} img/s"
            self._progress.update(self._task, completed=step, loss=f"{loss:.4f}", acc=shown, ips=ips)

    def end_epoch(self, summary: str) -> None:
        """Close the bar and print the epoch's summary line."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.echo:
            self.console.print(summary, highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Stop a bar left open (e.g. after an error)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
