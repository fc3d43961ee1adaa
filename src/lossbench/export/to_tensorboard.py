"""A comparison as a TensorBoard log directory: one folder per run (named by its key), holding one event file with
the per-epoch scalars (the metrics.csv columns as tags, the epoch as step) and the run's hparams.

A run's folder is written beside its place and then swapped in, so that exporting again replaces every run's
events instead of adding a second event file (TensorBoard would draw both), and a killed export leaves either
the old folder or the new one."""

from __future__ import annotations

import json
import shlex
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from lossbench.atomic import write_atomic
from lossbench.errors import require
from lossbench.export.replay import Comparison, Run

OWNER_FILE = ".lossbench-export"  # names the comparison a log directory was exported from
TEMPORARY_SUFFIX = ".export-tmp"


def write(comparison: Comparison, logdir: Path) -> None:
    claim_logdir(logdir, comparison.root)
    for stale in list(logdir.rglob(f".*{TEMPORARY_SUFFIX}")):  # left by a killed export
        shutil.rmtree(stale)
    for run in comparison.runs:
        replace_dir(logdir / run.key, lambda tmp, run=run: write_run(run, tmp))


def claim_logdir(logdir: Path, root: Path) -> None:
    """Write only into a log directory this comparison was exported to before, or a new or empty one: replacing
    run folders must never remove another comparison's (or a user's) files."""
    require(not logdir.exists() or logdir.is_dir(), f"{logdir}: exists and is not a directory")
    owner = logdir / OWNER_FILE
    if owner.is_file():
        try:
            recorded = json.loads(owner.read_text(encoding="utf-8")).get("comparison")
        except (ValueError, AttributeError):
            recorded = None
        require(
            recorded == str(root),
            f"{logdir}: holds the export of {recorded or 'another comparison'}, not of {root}; choose another --out",
        )
        return
    require(
        not logdir.exists() or not any(logdir.iterdir()),
        f"{logdir}: not empty and not an export of {root}; choose a new or empty --out",
    )
    logdir.mkdir(parents=True, exist_ok=True)
    write_atomic(owner, json.dumps({"comparison": str(root)}) + "\n")


def replace_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Make `target` hold what `fill(directory)` writes, through a temporary folder beside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}"
    tmp.mkdir()
    fill(tmp)
    if target.exists():
        old = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old{TEMPORARY_SUFFIX}"
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old)
    else:
        tmp.rename(target)


def write_run(run: Run, directory: Path) -> None:
    writer = SummaryWriter(log_dir=str(directory))
    try:
        for epoch, name, value in run.scalars():
            writer.add_scalar(name, value, global_step=epoch)
        # The session's hparams only: with no experiment summary, TensorBoard lists the union of every run's
        # hparams (a loss's own parameter included) and every scalar as a metric; one run's experiment summary
        # would hide the parameters of the other losses.
        _, session_start, session_end = hparams_summaries({**run.hparams, "status": run.status}, {})
        writer.file_writer.add_summary(session_start)
        writer.file_writer.add_summary(session_end)
    finally:
        writer.close()


def ui_command(logdir: Path) -> str:
    return f"tensorboard --logdir {shlex.quote(str(logdir))} --host 127.0.0.1"
