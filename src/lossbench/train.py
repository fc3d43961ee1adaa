"""One training run: one loss, one seed, one directory.

A run directory holds `config.yaml` (resolved), `metrics.csv` (one row per evaluation, flushed each time),
`status.json` (running / finished / diverged / interrupted / failed) and `checkpoint.pt` (every epoch, atomic),
from which `resume` continues bit-for-bit on CPU.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lossbench.atomic import atomic_path, write_atomic
from lossbench.data import Batches, Dataset, channel_stats, dataset_classes, eval_batches, load_dataset
from lossbench.errors import LossbenchError, require
from lossbench.losses import build_loss
from lossbench.metrics import METRIC_COLUMNS, score_sums, test_metrics
from lossbench.models import build_model
from lossbench.optim import build_optimizer, build_scheduler
from lossbench.precision import resolve_precision
from lossbench.scores import ScoreMatrix, load_scores

log = logging.getLogger("lossbench")

CONFIG_FILE, METRICS_FILE, STATUS_FILE, CHECKPOINT_FILE = "config.yaml", "metrics.csv", "status.json", "checkpoint.pt"


# ---------------------------------------------------------------- config, device


def validate(cfg: DictConfig) -> None:
    """Reject nonsense numbers and choices before any work is done."""
    t = cfg.train
    require(int(t.epochs) > 0, f"train.epochs must be > 0, not {t.epochs}")
    require(int(t.batch_size) > 0, f"train.batch_size must be > 0, not {t.batch_size}")
    require(int(t.eval_batch_size) > 0, f"train.eval_batch_size must be > 0, not {t.eval_batch_size}")
    require(cfg.optim.lr > 0, f"optim.lr must be > 0, not {cfg.optim.lr}")
    for key in ("train_size", "test_size"):
        value = cfg.data.get(key)
        require(value is None or int(value) > 0, f"data.{key} must be > 0 (or null for all), not {value}")
    require(cfg.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not '{cfg.device}'")
    require(cfg.precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or bf16, not '{cfg.precision}'")
    if cfg.device == "cuda":
        require(torch.cuda.is_available(), "device=cuda but no CUDA GPU is available (use device=auto or cpu)")


def prepare(cfg: DictConfig, warn: bool = True) -> ScoreMatrix:
    """Validate the config, build S for the dataset's classes and check the loss accepts its parameters:
    the cheap checks, run before any training."""
    validate(cfg)
    classes = dataset_classes(cfg.data)
    s = cfg.scores
    scores = load_scores(s.name, classes, s.get("path"), s.exact, s.near, s.far, warn=warn)
    build_loss(cfg.loss.name, scores.matrix, **loss_params(cfg))
    return scores


def loss_params(cfg: DictConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.loss.items() if k != "name"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------- run-directory files


def write_status(run_dir: Path, status: str, epoch: int, epochs: int, message: str = "") -> None:
    info = {"status": status, "epoch": epoch, "epochs": epochs, "message": message,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    write_atomic(run_dir / STATUS_FILE, json.dumps(info, indent=2) + "\n")


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {"status": "unknown", "epoch": 0, "message": "no readable status.json"}


def append_metrics(run_dir: Path, row: dict[str, float]) -> None:
    path = run_dir / METRICS_FILE
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop rows after the checkpoint's epoch (written after the last checkpoint by a killed process)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= last_epoch]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def absolute_paths(cfg: DictConfig) -> DictConfig:
    """A resolved, standalone copy of cfg with user paths made absolute, so a resume works from any directory."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if cfg.data.get("root"):
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.scores.get("path"):
        cfg.scores.path = str(Path(cfg.scores.path).expanduser().resolve())
    return cfg


# ---------------------------------------------------------------- the loop


def train_one_epoch(model, loss_fn, batches: Batches, optimizer, scheduler, dtype) -> torch.Tensor:
    """One pass over the training batches. Returns device-side sums [loss, correct, grad norm] over its
    len(batches) * batches.batch_size examples: nothing is read back to the host inside the loop."""
    model.train()
    device = batches.labels.device
    sums = torch.zeros(3, device=device)
    for x, y in batches:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        z = logits.float()
        z.retain_grad()
        loss = loss_fn(z, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = len(y)
        # d loss_i / d z_i = n * d mean-loss / d z_i.
        correct = (z.detach().argmax(1) == y).sum().float()
        sums += torch.stack([loss.detach() * n, correct, z.grad.norm(dim=1).sum() * n])
    return sums


@torch.inference_mode()
def evaluate(model, data: Dataset, scores: torch.Tensor, batch_size: int, mean, std, dtype) -> dict[str, float]:
    model.eval()
    device = data.test_y.device
    sums = torch.zeros(5, device=device)
    for x, y in eval_batches(data.test_x, data.test_y, batch_size, mean, std):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        sums += score_sums(logits, y, scores)
    return test_metrics(sums, len(data.test_y))


class Progress:
    """A progress bar on an interactive terminal (steps, ETA, last epoch's loss/accuracy) and one log line per
    epoch everywhere."""

    def __init__(self, name: str, total_steps: int, done_steps: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                           TimeRemainingColumn(), transient=True)  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(name, total=total_steps, completed=done_steps)
        self.name = name

    def step(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def epoch(self, row: dict[str, float], epochs: int) -> None:
        text = (f"{self.name} epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4f} "
                f"train_acc {row['train_acc']:.3f} test_acc {row['test_acc']:.3f} "
                f"test_score {row['test_score']:.3f} grad_norm {row['grad_norm']:.3g} ({row['elapsed_s']:.1f}s)")  # fmt: skip
        if self.bar is None:
            log.info(text)
            return
        self.bar.update(self.task, description=f"{self.name} ep {row['epoch']}/{epochs} "
                        f"loss {row['train_loss']:.3f} acc {row['test_acc']:.3f}")  # fmt: skip
        # The bar is transient: take it down while the log line prints, so the two never overwrite each other.
        self.bar.stop()
        log.info(text)
        self.bar.start()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_has_results(run_dir: Path) -> bool:
    """Whether a run was started here: its status (written before the first epoch), metrics or checkpoint."""
    return any((run_dir / name).exists() for name in (STATUS_FILE, METRICS_FILE, CHECKPOINT_FILE))


def train_run(cfg: DictConfig, run_dir: Path, resume: bool = False) -> str:
    """Train one run into run_dir and return its final status. With resume, continue from the checkpoint
    (a finished or diverged run is left as it is); without, refuse a directory that already holds results."""
    run_dir = Path(run_dir)
    if run_has_results(run_dir):
        require(resume, f"run directory {run_dir} already has results; continue it with "
                        f"`lossbench resume {run_dir}` or choose another directory")  # fmt: skip
        status = read_status(run_dir)["status"]
        if status in ("finished", "diverged"):  # final: resuming a diverged run would only diverge again
            log.info("%s: already %s", run_dir, status)
            return status
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / CONFIG_FILE
    if resume and config_path.exists():
        cfg = OmegaConf.load(config_path)
    else:
        cfg = absolute_paths(cfg)
        write_atomic(config_path, OmegaConf.to_yaml(cfg))
    epochs = int(cfg.train.epochs)
    try:
        return _train(cfg, run_dir, epochs)
    except KeyboardInterrupt:
        write_status(run_dir, "interrupted", read_status(run_dir).get("epoch", 0), epochs, "interrupted by the user")
        log.warning("interrupted: continue with `lossbench resume %s`", run_dir)
        raise
    except LossbenchError as err:
        write_status(run_dir, "failed", read_status(run_dir).get("epoch", 0), epochs, str(err))
        raise


def _train(cfg: DictConfig, run_dir: Path, epochs: int) -> str:
    scores = prepare(cfg)
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.data, scores.classes, scores.matrix).to(device)
    mean, std = channel_stats(data.train_x)
    s = scores.matrix.to(device)

    torch.manual_seed(int(cfg.seed))  # same initial weights for every loss with this seed
    model = build_model(cfg.model, len(scores.classes)).to(device, memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss.name, scores.matrix, **loss_params(cfg)).to(device)
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))  # data order and augmentation only
    batches = Batches(data.train_x, data.train_y, int(cfg.train.batch_size), mean, std, generator,
                      int(cfg.data.augment.crop_padding), bool(cfg.data.augment.flip))  # fmt: skip
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.optim, optimizer, len(batches), epochs)
    precision = resolve_precision(cfg.precision, device, model, (batches.batch_size, *data.train_x.shape[1:]))
    dtype = precision.dtype
    step_model = torch.compile(model) if cfg.train.compile else model

    start_epoch, step, elapsed = 0, 0, 0.0
    checkpoint = run_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["data_rng"].cpu())
        start_epoch, step, elapsed = state["epoch"], state["step"], state["elapsed_s"]
        log.info("%s: resuming after epoch %d", run_dir, start_epoch)
    truncate_metrics(run_dir, start_epoch)

    name = f"{cfg.loss.name} seed {cfg.seed}"
    progress = Progress(name, epochs * len(batches), start_epoch * len(batches), bool(cfg.train.progress))
    batches.on_step = progress.step
    write_status(run_dir, "running", start_epoch, epochs)
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            began = time.perf_counter()
            sums = train_one_epoch(step_model, loss_fn, batches, optimizer, scheduler, dtype)
            loss_sum, correct, grad_sum = sums.tolist()  # the one host sync of the epoch
            count = len(batches) * batches.batch_size
            step += len(batches)
            if not math.isfinite(loss_sum):
                write_status(run_dir, "diverged", epoch - 1, epochs, f"training loss became {loss_sum} in epoch {epoch}")
                log.warning("%s: diverged in epoch %d (loss %s)", name, epoch, loss_sum)
                return "diverged"
            row = {"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": loss_sum / count, "train_acc": correct / count, "grad_norm": grad_sum / count}  # fmt: skip
            row.update(evaluate(model, data, s, int(cfg.train.eval_batch_size), mean, std, dtype))
            elapsed += time.perf_counter() - began
            row["elapsed_s"] = elapsed
            append_metrics(run_dir, row)
            progress.epoch(row, epochs)
            if cfg.train.checkpoint:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "data_rng": generator.get_state(),
                         "epoch": epoch, "step": step, "elapsed_s": elapsed}  # fmt: skip
                with atomic_path(checkpoint) as tmp:
                    torch.save(state, tmp)
            write_status(run_dir, "running", epoch, epochs)
    finally:
        progress.close()
    write_status(run_dir, "finished", epochs, epochs)
    return "finished"
