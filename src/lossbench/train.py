"""One training run: one loss, one seed, one directory. The single-run engine; a run's life on disk (start,
epoch records, checkpoints, end) is lossbench.run's, its steps and evaluation lossbench.step's."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from omegaconf import DictConfig

from lossbench.progress import Progress
from lossbench.provenance import write_provenance
from lossbench.run import Run, end_epoch, finish_run, open_run, recorded_failures
from lossbench.step import compiled, train_one_epoch


def train_run(
    cfg: DictConfig, run_dir: Path, resume: bool = False, after_epoch: Callable[[], None] | None = None
) -> str:
    """Train one run into run_dir and return its final status. With resume, continue from the checkpoint
    (a finished or diverged run is left as it is); without, refuse a directory that already holds results.
    The directory must be lossbench's (or new), and is locked while the run works in it. `after_epoch` is called
    once each epoch's records are on disk (a tuning trial reports to its study there, and may stop the run by
    raising a BaseException, which passes the run's failure records)."""
    run_dir = Path(run_dir)
    with ExitStack() as locks:
        run = open_run(cfg, run_dir, resume, locks)
        if isinstance(run, str):
            return run
        with recorded_failures([run_dir]):
            return _train(run, after_epoch)


def _train(run: Run, after_epoch: Callable[[], None] | None) -> str:
    cfg = run.cfg
    write_provenance(run.run_dir, run.scores.device, run.precision, str(cfg.precision))  # a packed run's: its pack
    step_model = compiled(run.model, cfg)
    epochs, steps = run.epochs, len(run.batches)
    progress = Progress(run.name, epochs * steps, run.epoch * steps, bool(cfg.train.progress))
    run.batches.on_step = progress.step
    try:
        while run.epoch < epochs:
            began = time.perf_counter()
            sums = train_one_epoch(
                step_model, run.loss_fn, run.batches, run.optimizer, run.scheduler, run.precision.dtype
            )
            if end_epoch(run, sums.tolist(), time.perf_counter() - began, progress):  # tolist: the epoch's one sync
                return "diverged"
            if after_epoch is not None:
                after_epoch()
    finally:
        progress.close()
    return finish_run(run)
