"""The progress of training: a bar on an interactive terminal and one log line per epoch."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("lossbench")


class Progress:
    """A progress bar on an interactive terminal (steps, ETA, last epoch's loss/accuracy) and one log line per
    epoch everywhere."""

    def __init__(self, name: str, total_steps: int, done_steps: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(name, total=total_steps, completed=done_steps)
        self.name = name

    def step(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def at(self, done_steps: int) -> None:
        """Set the steps done: back to an epoch's start when it is trained again."""
        if self.bar is not None:
            self.bar.update(self.task, completed=done_steps)

    def epoch(self, row: dict[str, float], epochs: int, name: str | None = None) -> None:
        """Log an epoch's line, for this bar's run or, in a pack, for the member `name`."""
        name = name or self.name
        text = (
            f"{name} epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4f} "
            f"train_acc {row['train_acc']:.3f} test_acc {row['test_acc']:.3f} "
            f"test_score {row['test_score']:.3f} grad_norm {row['grad_norm']:.3g} "
            f"({row['elapsed_s']:.1f}s)"
        )
        if self.bar is None:
            log.info(text)
            return
        self.bar.update(
            self.task,
            description=f"{name} ep {row['epoch']}/{epochs} loss {row['train_loss']:.3f} acc {row['test_acc']:.3f}",
        )
        # The bar is transient: take it down while the log line prints, so the two never overwrite each other.
        self.bar.stop()
        log.info(text)
        self.bar.start()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
