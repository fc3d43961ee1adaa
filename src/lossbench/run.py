"""A run's life on disk, whichever engine trains it (train: one run; pack: several as one network): claiming and
locking its directory, the config it trains with, its start (from its checkpoint when resuming), each epoch's
records (metrics row, checkpoint, status) and its end (confusion matrix, predictions, final status, or why it
stopped).

A run directory holds `config.yaml` (resolved), `metrics.csv` (one row per evaluation, flushed each time),
`status.json` (running / finished / diverged / interrupted / failed) and `checkpoint.pt` (every epoch, atomic),
from which `resume` continues bit-for-bit on CPU.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lossbench.atomic import remove_stale_temporaries, save_atomic
from lossbench.config import absolute_paths, prepare
from lossbench.cpus import fit_torch_threads
from lossbench.data.batching import Batches
from lossbench.data.dataset import Dataset
from lossbench.data.loading import load_dataset
from lossbench.device import configure_cudnn, on_device, resolve_device
from lossbench.errors import EnvironmentFailure, LossbenchError, one_line, os_failure, require
from lossbench.inputs import pin_run_inputs, resumed_config
from lossbench.losses import build_loss_from_config
from lossbench.metrics import confusion_counts
from lossbench.precision import Precision, choice_record, recorded_precision, resolve_precision
from lossbench.predictions import save_predictions
from lossbench.progress import Progress
from lossbench.provenance import recorded_choice
from lossbench.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CONFUSION_FILE,
    METRICS_FILE,
    STATUS_FILE,
    TUNING_DIR,
    append_metrics,
    claim,
    locked,
    metric_epochs,
    read_config,
    read_status,
    record_disagreement,
    run_has_results,
    truncate_metrics,
    write_config,
    write_confusion,
    write_status,
)
from lossbench.step import build_training, evaluate
from lossbench.trust import check_config, targets

log = logging.getLogger("lossbench")

FINAL_STATUSES = ("finished", "diverged")  # resuming a diverged run would only diverge again


# ---------------------------------------------------------------- opening a run


def open_run(cfg: DictConfig, run_dir: Path, resume: bool, locks: ExitStack) -> Run | str:
    """The one way into a run directory, for both engines: claim it, lock it while `locks` stays open, remove what
    a killed writer left half-written, then either its final status (a run that must not train again: finished
    or diverged) or the Run started with the config it trains with (see run_config), from its checkpoint when
    resuming. What stops the start is recorded in its status (recorded_failures) and raised."""
    claim(run_dir, "run")
    locks.enter_context(locked(run_dir))
    remove_stale_temporaries(run_dir)  # a killed run's half-written checkpoint or records
    done = final_status(run_dir, resume)
    if done:
        return done
    with recorded_failures([run_dir]):
        return start_run(run_config(cfg, run_dir, resume), run_dir)


def final_status(run_dir: Path, resume: bool) -> str | None:
    """The status of a run that must not train again (finished, diverged), or None. A directory with results is
    refused unless resuming. The caller holds the directory's lock."""
    if not run_has_results(run_dir):
        return None
    require(
        resume,
        f"run directory {run_dir} already has results; continue it with "
        f"`lossbench resume {run_dir}` or choose another directory",
    )
    status = read_status(run_dir)
    if status["status"] == "finished" and (run_dir / CONFIG_FILE).exists():
        # A status hand-set (or copied) to finished is believed only when the rows of every epoch are there.
        epochs = OmegaConf.select(read_config(run_dir), "train.epochs", default=None)
        disagreement = record_disagreement(run_dir, epochs) if isinstance(epochs, int) else None
        if disagreement:
            log.warning(
                "warning: %s says finished, but its %s; continuing from its checkpoint",
                run_dir / STATUS_FILE,
                disagreement,
            )
            return None
    if status["status"] in FINAL_STATUSES:
        log.info("%s: already %s", run_dir, status["status"])
        return status["status"]
    if status["status"] == "unknown" and (run_dir / STATUS_FILE).exists():
        log.warning("warning: %s; continuing from the checkpoint", status["message"])
    return None


def run_config(cfg: DictConfig, run_dir: Path, resume: bool) -> DictConfig:
    """The config a run trains with: the one it recorded when resuming (start_run checks it, so a hand-edited
    value is named before anything reads it), else cfg with absolute paths, recorded."""
    if resume and (run_dir / CONFIG_FILE).exists():
        recorded = read_config(run_dir)
        # Only what cfg (checked by the command that composed it) builds may be built from the recorded copy.
        check_config(recorded, str(run_dir / CONFIG_FILE), (), f"lossbench resume {run_dir}", targets(cfg).values())
        return resumed_config(recorded, run_dir)
    cfg = pin_run_inputs(absolute_paths(cfg), run_dir)
    write_config(run_dir, cfg)
    return cfg


@contextmanager
def recorded_failures(run_dirs: list[Path]) -> Iterator[None]:
    """Whatever stops the runs of run_dirs is recorded in their status.json, then raised: Ctrl-C and SIGTERM (the
    CLI raises it as a KeyboardInterrupt) as interrupted, anything else as failed, with one line saying why."""
    try:
        yield
    except KeyboardInterrupt:
        for run_dir in run_dirs:
            record_end(run_dir, "interrupted", "interrupted by the user")
            if TUNING_DIR in run_dir.parts:  # a tune's trial: the tune never reads a resumed trial again
                log.warning(
                    "interrupted: %s is a trial of `lossbench tune`, which cannot be resumed: run the tune "
                    "again with a new --out",
                    run_dir,
                )
            else:
                log.warning("interrupted: continue with `lossbench resume %s`", run_dir)
        raise
    except LossbenchError as err:
        for run_dir in run_dirs:
            record_end(run_dir, "failed", str(err), isinstance(err, EnvironmentFailure))
        raise
    except (OSError, MemoryError, torch.OutOfMemoryError) as err:
        failure = os_failure(err) if isinstance(err, OSError) else EnvironmentFailure(f"out of memory ({err})")
        for run_dir in run_dirs:
            record_end(run_dir, "failed", str(failure), environment=True)
        raise failure from err
    except Exception as err:  # a setting that fails only once built or run: nesterov without momentum,
        # AdamW betas out of range, a network deeper than the image allows
        where = f"run {run_dirs[0]}" if len(run_dirs) == 1 else f"{len(run_dirs)} packed runs"
        message = f"{where}: {what_failed(err)}"
        for run_dir in run_dirs:
            record_end(run_dir, "failed", message)
        raise LossbenchError(message) from err


def what_failed(err: Exception) -> str:
    """An unexpected error as a failed run's status message names it: its type and its message on one line."""
    return f"{type(err).__name__}: {one_line(err)}"


def record_end(run_dir: Path, status: str, message: str, environment: bool = False) -> None:
    """Record why a run stopped (environment: see write_status); a status that cannot be written (disk full) must
    not hide the first error."""
    previous = read_status(run_dir)
    try:
        write_status(run_dir, status, previous["epoch"], previous.get("epochs", 0), message, environment)
    except OSError as err:
        log.error("%s: cannot record status %s (%s)", run_dir, status, err.strerror)


def may_be_nan(key: str, has_val: bool, num_classes: int) -> bool:
    """Metrics that are NaN in a healthy run: severity without mistakes, top-5 below 10 classes, and without a
    validation split the val_* columns and the calibrated decision (never fit on test)."""
    if key.endswith("mistake_severity") or (key.endswith("top5_acc") and num_classes < 10):
        return True
    return not has_val and (key.startswith("val_") or key.endswith("score_bayes_cal"))


def non_finite(row: dict[str, float], has_val: bool, num_classes: int) -> list[str]:
    """The metrics of an epoch's row that are NaN or infinite although a healthy run keeps them finite."""
    return [f"{k}={v}" for k, v in row.items() if not math.isfinite(v) and not may_be_nan(k, has_val, num_classes)]


# ---------------------------------------------------------------- checkpoints


def read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """checkpoint.pt's training state, its tensors on `device` whichever device wrote them."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except OSError:
        raise
    except Exception as err:  # truncated or not a checkpoint
        raise damaged_checkpoint(path, err) from None


def restore_checkpoint(
    state: dict[str, Any], path: Path, model, optimizer, scheduler, generator
) -> tuple[int, int, float]:
    """Restore the training state read from checkpoint.pt at `path`; returns (epoch, step, elapsed_s)."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_data_order(generator, state, path)
        return int(state["epoch"]), int(state["step"]), float(state["elapsed_s"])
    except Exception as err:  # from another model, or missing a part
        raise damaged_checkpoint(path, err) from None


def damaged_checkpoint(path: Path, err: Exception) -> LossbenchError:
    return LossbenchError(
        f"{path}: damaged or not this run's checkpoint ({one_line(err)}); remove it to restart this run from epoch 1"
    )


def run_precision(
    cfg: DictConfig,
    run_dir: Path,
    state: dict[str, Any] | None,
    device: torch.device,
    model: torch.nn.Module,
    batch_shape: tuple[int, ...],
) -> Precision:
    """The precision (and CPU layout) chosen when the run first started, as its checkpoint or run.json recorded
    it, else chosen now (resolve_precision measures where the setting leaves it open). A resumed run never
    measures again: on a loaded machine a near tie can flip, and another layout rounds otherwise."""
    recorded = (state or {}).get("precision_choice") or recorded_choice(run_dir)
    chosen = recorded_precision(recorded, str(cfg.precision), device, run_dir) if recorded else None
    return chosen or resolve_precision(cfg.precision, device, model, batch_shape)


def restore_data_order(generator: torch.Generator, state: dict, path: Path) -> None:
    """Continue the data order where the checkpoint left it. A checkpoint from another kind of device (a GPU
    run resumed on a CPU: a CUDA generator's state cannot drive a CPU one) continues with a data order of its
    own, seeded from the saved state (so runs of different seeds still differ), and says so: the run is then no
    longer the uninterrupted one's twin."""
    saved = state["data_rng"].cpu()
    written_on = state.get("data_rng_device", generator.device.type)  # older checkpoints: written here
    if written_on == generator.device.type:
        generator.set_state(saved)
        return
    generator.manual_seed(int.from_bytes(hashlib.sha256(saved.numpy().tobytes()).digest()[:8], "little"))
    log.warning(
        "%s: written on %s, resumed on %s; the data order from here on differs from an uninterrupted run's",
        path,
        written_on,
        generator.device.type,
    )


# ---------------------------------------------------------------- start, epochs, end


@dataclass
class Run:
    """A run while it trains: its config and directory, and everything built from them."""

    cfg: DictConfig
    run_dir: Path
    name: str
    epochs: int
    classes: list[str]
    data: Dataset  # on the training device
    scores: torch.Tensor  # S, on the training device
    mean: torch.Tensor
    std: torch.Tensor
    loss_fn: torch.nn.Module
    generator: torch.Generator  # data order and augmentation only
    batches: Batches
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision  # its dtype is autocast's, or None for fp32
    epoch: int = 0  # the last epoch done
    step: int = 0
    elapsed: float = 0.0
    confusion: torch.Tensor | None = None  # the test confusion counts of the latest evaluation


def start_run(cfg: DictConfig, run_dir: Path) -> Run:
    """Everything a run builds before its first step, continuing from its checkpoint when there is one; its
    status says running from here on."""
    scores = prepare(cfg)  # first: it validates the config (a resumed run's recorded one, perhaps hand-edited)
    epochs = int(cfg.train.epochs)
    device = resolve_device(cfg.device)
    fit_torch_threads()
    configure_cudnn(device, cfg.train.get("cudnn_benchmark", True))  # absent from older runs' configs
    host_data = load_dataset(cfg.data, scores.classes, scores.matrix)
    data, (mean, std) = on_device(host_data, device)
    loss_fn = build_loss_from_config(cfg.loss, scores.matrix).to(device)
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    augment = cfg.data.get("augment") or {}
    batches = Batches(
        data.train_x,
        data.train_y,
        int(cfg.train.batch_size),
        mean,
        std,
        generator,
        int(augment.get("crop_padding", 0)),
        bool(augment.get("flip", False)),
    )
    model, optimizer, scheduler = build_training(cfg, host_data, len(batches))
    # .to() moves the parameters in place, so the optimiser built on the host copy still holds them.
    model = model.to(device, memory_format=torch.channels_last)
    checkpoint = run_dir / CHECKPOINT_FILE
    state = read_checkpoint(checkpoint, device) if checkpoint.exists() else None
    precision = run_precision(cfg, run_dir, state, device, model, (batches.batch_size, *data.train_x.shape[1:]))
    if precision.layout is not None:  # the model left its CPU layout to the measurement
        model.cpu_layout = precision.layout
    run = Run(
        cfg,
        run_dir,
        f"{cfg.loss.name} seed {cfg.seed}",
        epochs,
        scores.classes,
        data,
        scores.matrix.to(device),
        mean,
        std,
        loss_fn,
        generator,
        batches,
        model,
        optimizer,
        scheduler,
        precision,
    )
    if state is not None:
        run.epoch, run.step, run.elapsed = restore_checkpoint(state, checkpoint, model, optimizer, scheduler, generator)
        # Fewer epochs than trained would pass for finished while metrics.csv and the model hold more.
        require(
            run.epoch <= epochs,
            f"{run_dir} has trained {run.epoch} epochs but its {CONFIG_FILE} asks for "
            f"{epochs} (train.epochs): set it to {run.epoch} or more to resume",
        )
        log.info("%s: resuming after epoch %d", run_dir, run.epoch)
    dropped = [e for e in metric_epochs(run_dir) if e > run.epoch]
    if dropped and run.epoch == 0:  # no checkpoint (removed, or train.checkpoint=false): from epoch 1 again
        log.warning(
            "warning: %s has no %s: its rows of epochs %s are dropped and the run trains from epoch 1",
            run_dir,
            CHECKPOINT_FILE,
            ", ".join(map(str, dropped[:6])),
        )
    truncate_metrics(run_dir, run.epoch)
    lost = record_disagreement(run_dir, epochs, run.epoch)
    require(
        not lost,
        f"{run_dir}: its {CHECKPOINT_FILE} is at epoch {run.epoch}, but its {lost}: rows were lost, "
        f"and a run finished from here would not record them; remove {CHECKPOINT_FILE} and "
        f"{METRICS_FILE} to run it again from epoch 1",
    )
    write_status(run_dir, "running", run.epoch, epochs)
    return run


def end_epoch(
    run: Run,
    sums: list[float],
    trained_s: float,
    progress: Progress,
    evaluated: tuple[dict[str, float], torch.Tensor] | None = None,
) -> str | None:
    """An epoch's bookkeeping after its training steps: the divergence checks, evaluation, the metrics row, the
    checkpoint and the status. `sums` are train_one_epoch's, read back; `trained_s` the epoch's wall time so far
    (its steps; a pack's also its evaluation); `evaluated` the run's metrics and confusion when already computed
    (a pack on a GPU evaluates its members at once).
    Returns "diverged" when the run stops here, else None."""
    began = time.perf_counter()
    epoch, epochs, run_dir = run.epoch + 1, run.epochs, run.run_dir
    loss_sum, correct, grad_sum = sums
    count = len(run.batches) * run.batches.batch_size
    run.step += len(run.batches)
    if not math.isfinite(loss_sum):
        write_status(run_dir, "diverged", epoch - 1, epochs, f"training loss became {loss_sum} in epoch {epoch}")
        log.warning("%s: diverged in epoch %d (loss %s)", run.name, epoch, loss_sum)
        return "diverged"
    row = {
        "epoch": epoch,
        "step": run.step,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / count,
        "train_acc": correct / count,
        "grad_norm": grad_sum / count,
    }
    metrics, run.confusion = evaluated or evaluate(
        run.model, run.data, run.scores, int(run.cfg.train.eval_batch_size), run.mean, run.std, run.precision.dtype
    )
    row.update(metrics)
    run.elapsed += trained_s + time.perf_counter() - began
    row["elapsed_s"] = run.elapsed
    bad = non_finite(row, run.data.val_y is not None, len(run.classes))
    if bad:
        write_status(run_dir, "diverged", epoch - 1, epochs, f"non-finite {', '.join(bad)} in epoch {epoch}")
        log.warning("%s: diverged in epoch %d (%s)", run.name, epoch, ", ".join(bad))
        return "diverged"
    append_metrics(run_dir, row)
    progress.epoch(row, epochs, run.name)
    run.epoch = epoch
    if run.cfg.train.checkpoint:
        state = {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "data_rng": run.generator.get_state(),
            "data_rng_device": run.generator.device.type,
            "precision_choice": choice_record(run.precision, str(run.cfg.precision)),
            "epoch": epoch,
            "step": run.step,
            "elapsed_s": run.elapsed,
        }
        save_atomic(state, run_dir / CHECKPOINT_FILE)
    write_status(run_dir, "running", epoch, epochs)
    return None


def finish_run(run: Run) -> str:
    """The final predictions, the test confusion matrix and the finished status, after the last epoch (a lone
    run's and a pack member's alike)."""
    test_logits = save_predictions(run)
    if run.confusion is None:  # resumed after the last epoch's checkpoint: the predictions' pass gives it
        run.confusion = confusion_counts(test_logits, run.data.test_y).cpu()
    write_confusion(run.run_dir / CONFUSION_FILE, run.confusion.tolist(), run.classes)
    write_status(run.run_dir, "finished", run.epochs, run.epochs)
    return "finished"
