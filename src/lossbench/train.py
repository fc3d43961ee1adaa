"""One training run: one loss, one seed, one directory.

A run directory holds `config.yaml` (resolved), `metrics.csv` (one row per evaluation, flushed each time),
`status.json` (running / finished / diverged / interrupted / failed) and `checkpoint.pt` (every epoch, atomic),
from which `resume` continues bit-for-bit on CPU.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lossbench.atomic import remove_stale_temporaries, save_atomic, write_atomic
from lossbench.checks import check_settings
from lossbench.cpus import fit_torch_threads
from lossbench.data.batching import Batches, eval_batches, feature_stats
from lossbench.data.dataset import Dataset
from lossbench.data.latest import Latest
from lossbench.data.loading import load_dataset
from lossbench.data.sources import dataset_classes
from lossbench.errors import EnvironmentFailure, LossbenchError, one_line, os_failure, require, require_int
from lossbench.losses import build_loss_from_config
from lossbench.metrics import (
    SUM_SIZE, confusion_counts, fit_temperature, split_metrics, split_sums, write_confusion,
)  # fmt: skip
from lossbench.models import build_model
from lossbench.optim import build_optimizer, build_scheduler
from lossbench.precision import Precision, choice_record, recorded_precision, resolve_precision
from lossbench.predictions import save_predictions
from lossbench.provenance import recorded_choice, write_provenance
from lossbench.rundir import (
    CHECKPOINT_FILE, CONFIG_FILE, CONFUSION_FILE, METRICS_FILE, STATUS_FILE, TUNING_DIR, append_metrics, claim, locked,
    metric_epochs, read_config, read_status, record_disagreement, run_has_results, truncate_metrics, write_status,
)  # fmt: skip
from lossbench.scores import ScoreMatrix, build_scores
from lossbench.inputs import pin_run_inputs, resumed_config
from lossbench.trust import check_config, targets

log = logging.getLogger("lossbench")

PATH_KEYS = ("scores.path", "data.root", "data.path", "data.cache_dir")  # resolved once, recorded absolute
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
FINAL_STATUSES = ("finished", "diverged")  # resuming a diverged run would only diverge again


# ---------------------------------------------------------------- config, device


def validate(cfg: DictConfig) -> None:
    """Reject nonsense numbers and choices before any work is done."""
    for key in ("train.epochs", "train.batch_size", "train.eval_batch_size"):
        require_int(OmegaConf.select(cfg, key), key, positive=True)
    require_int(cfg.seed, "seed")
    lr = cfg.optim.get("lr")
    require(isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0, f"optim.lr must be > 0 and finite, not {lr}")
    for key in ("train_size", "test_size"):
        value = cfg.data.get(key)
        if value is not None:
            require_int(value, f"data.{key}", positive=True, note=" (or null for all)")
    require(cfg.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not '{cfg.device}'")
    require(cfg.precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or bf16, not '{cfg.precision}'")
    compile_mode(cfg.train.compile)
    autotune = cfg.train.get("cudnn_benchmark", True)
    require(isinstance(autotune, bool), f"train.cudnn_benchmark must be true or false, not {autotune!r}")
    check_settings(cfg)
    if cfg.device == "cuda":
        require(torch.cuda.is_available(), "device=cuda but no CUDA GPU is available (use device=auto or cpu)")


def prepare(cfg: DictConfig, warn: bool = True) -> ScoreMatrix:
    """Validate the config, build S for the dataset's classes and check the loss accepts its parameters:
    the cheap checks, run before any training."""
    validate(cfg)
    classes = dataset_classes(cfg.data)
    scores = build_scores(cfg.scores, classes, warn=warn)
    build_loss_from_config(cfg.loss, scores.matrix)
    return scores


def build_training(cfg: DictConfig, data: Dataset, steps_per_epoch: int):
    """The model, optimiser and schedule of a run, built from their config nodes. Weights are seeded, so every
    loss starts from the same network for a given seed. A forward pass on two examples catches a network that
    does not fit the data (too deep for the image size, wrong input shape) before any training."""
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, len(data.classes), tuple(data.train_x.shape[1:]))
    probe = data.train_x[:2].float()
    try:
        with torch.no_grad():
            model.eval()(probe)
    except RuntimeError as err:
        raise LossbenchError(f"model ({cfg.model._target_}) cannot take inputs of shape {list(probe.shape[1:])}: "
                             f"{one_line(err)[:300]}") from None  # fmt: skip
    check_logits(model, probe, len(data.classes), str(cfg.model._target_))
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.schedule, optimizer, steps_per_epoch, int(cfg.train.epochs))
    return model.train(), optimizer, scheduler


def check_logits(model: torch.nn.Module, probe: torch.Tensor, classes: int, target: str) -> None:
    """What the model returns must be what training takes: a floating tensor of logits [batch, classes] that
    depends on trainable parameters (a tuple, a [B, C+1] output or a detached one passes a forward pass but trains
    wrongly or not at all). Checked in eval mode, so that no batch-norm statistic moves."""
    with torch.enable_grad():
        out = model.eval()(probe)
    what = f"model ({target}) returns"
    require(isinstance(out, torch.Tensor), f"{what} a {type(out).__name__}, not a tensor of logits [batch, {classes}]")
    require(tuple(out.shape) == (len(probe), classes), f"{what} shape {list(out.shape)} for a batch of {len(probe)}, "
                                                       f"not [{len(probe)}, {classes}] (batch, classes)")  # fmt: skip
    require(out.is_floating_point(), f"{what} {out.dtype} values, not floating-point logits")
    require(out.requires_grad, f"{what} logits that depend on no trainable parameter (no gradient): nothing would "
                               "be learnt")  # fmt: skip


def compile_mode(value: Any) -> str | None:
    """The torch.compile mode that `train.compile` asks for: None (false, eager), "default" (true) or a mode by
    name; "reduce-overhead" captures the steps in CUDA graphs, the cure for a GPU starved by kernel launches."""
    if value is False or value is True:
        return "default" if value else None
    require(value in COMPILE_MODES, f"train.compile must be true, false or one of {', '.join(COMPILE_MODES)}, "
                                    f"not {value!r}")  # fmt: skip
    return value


def resolve_device(name: str) -> torch.device:
    """The device of `device=name`."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def configure_cudnn(device: torch.device, benchmark: bool) -> None:
    """On CUDA, whether cuDNN times its convolution algorithms once per shape (`train.cudnn_benchmark`, off by
    default). Timing costs seconds per shape, the evaluation's included, and all processes sharing a GPU pay it at
    once; it bought nothing measurable for one run on an H200 and 2.5% per packed step on an H100, where the full
    packed CIFAR-10 comparison took 78 s with it and 67 s without. A CPU run leaves cuDNN's settings as they are."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = benchmark


# ---------------------------------------------------------------- paths


def absolute_path(value: str, base: Path | None = None) -> str:
    """`value` (~ expanded) resolved against `base` (default: the current directory)."""
    return str(Path(base or Path.cwd(), Path(value).expanduser()).resolve())


def absolute_paths(cfg: DictConfig, base: Path | None = None) -> DictConfig:
    """A resolved, standalone copy of cfg with user paths made absolute (against `base`, default the current
    directory), so a resume works from any directory."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and value:
            OmegaConf.update(cfg, key, absolute_path(value, base))
    return cfg


# ---------------------------------------------------------------- the loop


def train_one_epoch(model, loss_fn, batches: Batches, optimizer, scheduler, dtype) -> torch.Tensor:
    """One pass over the training batches. Returns device-side sums [loss, correct, grad norm] over its
    len(batches) * batches.batch_size examples: nothing is read back to the host inside the loop."""
    model.train()
    sums = torch.zeros(3, device=batches.labels.device)
    for x, y in batches:
        z, loss = train_step(model, x, lambda z: loss_fn(z, y), optimizer, scheduler, dtype)
        n = len(y)
        # d loss_i / d z_i = n * d mean-loss / d z_i.
        correct = (z.detach().argmax(1) == y).sum().float()
        sums += torch.stack([loss * n, correct, z.grad.norm(dim=1).sum() * n])
    return sums


def train_step(model, x: torch.Tensor, score, optimizer, scheduler, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: the forward pass under autocast, `score` of the float32 logits (a loss, or one per
    packed run, summed for the backward pass), backward, the optimiser's and the schedule's steps. Returns the
    logits, whose .grad holds d loss / d logits, and the detached loss."""
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = model(x)
    z = logits.float()
    z.retain_grad()
    loss = score(z)
    optimizer.zero_grad(set_to_none=True)
    (loss if loss.ndim == 0 else loss.sum()).backward()  # packed runs: each run's weights see only its loss
    optimizer.step()
    scheduler.step()
    return z, loss.detach()


def evaluate(
    model, data: Dataset, scores: torch.Tensor, batch_size: int, mean, std, dtype
) -> tuple[dict[str, float], torch.Tensor]:
    """The val_* and test_* metrics of the model, and the test confusion counts (rows true, on the host)."""
    return evaluate_models(model, data, scores, batch_size, mean, std, dtype)[0]


@torch.inference_mode()
def evaluate_models(
    model, data: Dataset, scores: torch.Tensor, batch_size: int, mean, std, dtype
) -> list[tuple[dict[str, float], torch.Tensor]]:
    """Per model, the val_* and test_* metrics and the test confusion counts (rows true, on the host). `model`
    maps a batch to logits [B, C], or to [M, B, C] for M models on the same batch (a pack's members, evaluated
    in one set of kernels).

    The validation logits (N_val x C per model) are kept to fit the temperature for *_score_bayes_cal; the test
    set is streamed batch by batch with that temperature, so its logits are never held. Without a validation split
    the val_* columns and test_score_bayes_cal are NaN (never fit on test). One host sync, at the end."""
    model.eval()

    def logits_of(x: torch.Tensor, y: torch.Tensor):
        for xb, yb in eval_batches(x, y, batch_size, mean, std):
            with torch.autocast(xb.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                z = model(xb).float()
            yield z.view(-1, *z.shape[-2:]), yb  # [M, B, C]

    temperature, val = None, None
    if data.val_y is not None:
        val_logits = torch.cat([z for z, _ in logits_of(data.val_x, data.val_y)], dim=1)
        temperature = fit_temperature(val_logits, data.val_y)
        val = split_sums(val_logits, data.val_y, scores, temperature)
    test, confusion = 0, 0
    for z, y in logits_of(data.test_x, data.test_y):
        test = test + split_sums(z, y, scores, temperature)
        confusion = confusion + confusion_counts(z, y)
    if val is None:
        val = torch.zeros_like(test)  # a zero count: split_metrics gives NaN
    # the one host sync (counts < 2^24: exact in float32)
    values = torch.cat([val, test, confusion.flatten(1).float()], dim=1).cpu()
    results = []
    for own, counts in zip(values, confusion):
        row = split_metrics(own[:SUM_SIZE].tolist(), "val")
        row.update(split_metrics(own[SUM_SIZE : 2 * SUM_SIZE].tolist(), "test"))
        results.append((row, own[2 * SUM_SIZE :].round().long().view_as(counts)))
    return results


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

    def at(self, done_steps: int) -> None:
        """Set the steps done: back to an epoch's start when it is trained again."""
        if self.bar is not None:
            self.bar.update(self.task, completed=done_steps)

    def epoch(self, row: dict[str, float], epochs: int, name: str | None = None) -> None:
        """Log an epoch's line, for this bar's run or, in a pack, for the member `name`."""
        name = name or self.name
        text = (f"{name} epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4f} "
                f"train_acc {row['train_acc']:.3f} test_acc {row['test_acc']:.3f} "
                f"test_score {row['test_score']:.3f} grad_norm {row['grad_norm']:.3g} "
                f"({row['elapsed_s']:.1f}s)")  # fmt: skip
        if self.bar is None:
            log.info(text)
            return
        self.bar.update(self.task, description=f"{name} ep {row['epoch']}/{epochs} "
                        f"loss {row['train_loss']:.3f} acc {row['test_acc']:.3f}")  # fmt: skip
        # The bar is transient: take it down while the log line prints, so the two never overwrite each other.
        self.bar.stop()
        log.info(text)
        self.bar.start()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train_run(cfg: DictConfig, run_dir: Path, resume: bool = False) -> str:
    """Train one run into run_dir and return its final status. With resume, continue from the checkpoint
    (a finished or diverged run is left as it is); without, refuse a directory that already holds results.
    The directory must be lossbench's (or new), and is locked while the run works in it."""
    run_dir = Path(run_dir)
    claim(run_dir, "run")
    with locked(run_dir):
        remove_stale_temporaries(run_dir)  # a killed run's half-written checkpoint or records
        done = final_status(run_dir, resume)
        if done:
            return done
        with recorded_failures([run_dir]):
            cfg = run_config(cfg, run_dir, resume)
            return _train(cfg, run_dir)


def final_status(run_dir: Path, resume: bool) -> str | None:
    """The status of a run that must not train again (finished, diverged), or None. A directory with results is
    refused unless resuming. The caller holds the directory's lock."""
    if not run_has_results(run_dir):
        return None
    require(resume, f"run directory {run_dir} already has results; continue it with "
                    f"`lossbench resume {run_dir}` or choose another directory")  # fmt: skip
    status = read_status(run_dir)
    if status["status"] == "finished" and (run_dir / CONFIG_FILE).exists():
        # A status hand-set (or copied) to finished is believed only when the rows of every epoch are there.
        epochs = OmegaConf.select(read_config(run_dir), "train.epochs", default=None)
        disagreement = record_disagreement(run_dir, epochs) if isinstance(epochs, int) else None
        if disagreement:
            log.warning("warning: %s says finished, but its %s; continuing from its checkpoint", run_dir / STATUS_FILE,
                        disagreement)  # fmt: skip
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
    write_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg))
    return cfg


@contextmanager
def recorded_failures(run_dirs: list[Path]):
    """Whatever stops the runs of run_dirs is recorded in their status.json, then raised: Ctrl-C and SIGTERM (the
    CLI raises it as a KeyboardInterrupt) as interrupted, anything else as failed, with one line saying why."""
    try:
        yield
    except KeyboardInterrupt:
        for run_dir in run_dirs:
            record_end(run_dir, "interrupted", "interrupted by the user")
            if TUNING_DIR in run_dir.parts:  # a tune's trial: the tune never reads a resumed trial again
                log.warning("interrupted: %s is a trial of `lossbench tune`, which cannot be resumed: run the tune "
                            "again with a new --out", run_dir)  # fmt: skip
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


def read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """checkpoint.pt's training state, its tensors on `device` whichever device wrote them."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except OSError:
        raise
    except Exception as err:  # truncated or not a checkpoint
        raise damaged_checkpoint(path, err) from None


def restore_checkpoint(state: dict[str, Any], path: Path, model, optimizer, scheduler,
                       generator) -> tuple[int, int, float]:  # fmt: skip
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
    return LossbenchError(f"{path}: damaged or not this run's checkpoint ({one_line(err)}); remove it to restart "
                          "this run from epoch 1")  # fmt: skip


def run_precision(cfg: DictConfig, run_dir: Path, state: dict[str, Any] | None, device: torch.device,
                  model: torch.nn.Module, batch_shape: tuple[int, ...]) -> Precision:  # fmt: skip
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
    log.warning("%s: written on %s, resumed on %s; the data order from here on differs from an uninterrupted "
                "run's", path, written_on, generator.device.type)  # fmt: skip


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
    batches = Batches(data.train_x, data.train_y, int(cfg.train.batch_size), mean, std, generator,
                      int(augment.get("crop_padding", 0)), bool(augment.get("flip", False)))  # fmt: skip
    model, optimizer, scheduler = build_training(cfg, host_data, len(batches))
    # .to() moves the parameters in place, so the optimiser built on the host copy still holds them.
    model = model.to(device, memory_format=torch.channels_last)
    checkpoint = run_dir / CHECKPOINT_FILE
    state = read_checkpoint(checkpoint, device) if checkpoint.exists() else None
    precision = run_precision(cfg, run_dir, state, device, model, (batches.batch_size, *data.train_x.shape[1:]))
    if precision.layout is not None:  # the model left its CPU layout to the measurement
        model.cpu_layout = precision.layout
    run = Run(cfg, run_dir, f"{cfg.loss.name} seed {cfg.seed}", epochs, scores.classes, data,
              scores.matrix.to(device), mean, std, loss_fn, generator, batches, model, optimizer, scheduler,
              precision)  # fmt: skip
    if state is not None:
        run.epoch, run.step, run.elapsed = restore_checkpoint(state, checkpoint, model, optimizer, scheduler,
                                                              generator)  # fmt: skip
        # Fewer epochs than trained would pass for finished while metrics.csv and the model hold more.
        require(run.epoch <= epochs, f"{run_dir} has trained {run.epoch} epochs but its {CONFIG_FILE} asks for "
                                     f"{epochs} (train.epochs): set it to {run.epoch} or more to resume")  # fmt: skip
        log.info("%s: resuming after epoch %d", run_dir, run.epoch)
    dropped = [e for e in metric_epochs(run_dir) if e > run.epoch]
    if dropped and run.epoch == 0:  # no checkpoint (removed, or train.checkpoint=false): from epoch 1 again
        log.warning("warning: %s has no %s: its rows of epochs %s are dropped and the run trains from epoch 1",
                    run_dir, CHECKPOINT_FILE, ", ".join(map(str, dropped[:6])))  # fmt: skip
    truncate_metrics(run_dir, run.epoch)
    lost = record_disagreement(run_dir, epochs, run.epoch)
    require(not lost, f"{run_dir}: its {CHECKPOINT_FILE} is at epoch {run.epoch}, but its {lost}: rows were lost, "
                      f"and a run finished from here would not record them; remove {CHECKPOINT_FILE} and "
                      f"{METRICS_FILE} to run it again from epoch 1")  # fmt: skip
    write_status(run_dir, "running", run.epoch, epochs)
    return run


_device_copy = Latest()


def on_device(data: Dataset, device: torch.device) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor]]:
    """The dataset on `device` and its training inputs' mean and std (feature_stats), made once: the runs of a
    pack share them (load_dataset's own cache hands them the same host dataset), where each run computing the
    statistics again cost 0.6 s on the 2-core AMD EPYC for CIFAR-10 (13 s of a 21-run pack's start-up). Copy and
    statistics are dropped together, before the next dataset's are made."""

    def copy_and_stats() -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor]]:
        copy = data.to(device)
        return copy, feature_stats(copy.train_x)

    return _device_copy.get(data, str(device), copy_and_stats)


def end_epoch(run: Run, sums: list[float], trained_s: float, progress: Progress,
              evaluated: tuple[dict[str, float], torch.Tensor] | None = None) -> str | None:  # fmt: skip
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
    row = {"epoch": epoch, "step": run.step, "lr": run.optimizer.param_groups[0]["lr"],
           "train_loss": loss_sum / count, "train_acc": correct / count, "grad_norm": grad_sum / count}  # fmt: skip
    metrics, run.confusion = evaluated or evaluate(run.model, run.data, run.scores, int(run.cfg.train.eval_batch_size),
                                                   run.mean, run.std, run.precision.dtype)  # fmt: skip
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
        state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                 "scheduler": run.scheduler.state_dict(), "data_rng": run.generator.get_state(),
                 "data_rng_device": run.generator.device.type,
                 "precision_choice": choice_record(run.precision, str(run.cfg.precision)),
                 "epoch": epoch, "step": run.step, "elapsed_s": run.elapsed}  # fmt: skip
        save_atomic(state, run_dir / CHECKPOINT_FILE)
    write_status(run_dir, "running", epoch, epochs)
    return None


def finish_run(run: Run) -> str:
    """The test confusion matrix, the final predictions and the finished status, after the last epoch (a lone
    run's and a pack member's alike)."""
    if run.confusion is None:  # resumed after the last epoch's checkpoint: evaluate the final model once more
        run.confusion = evaluate(run.model, run.data, run.scores, int(run.cfg.train.eval_batch_size), run.mean,
                                 run.std, run.precision.dtype)[1]  # fmt: skip
    write_confusion(run.run_dir / CONFUSION_FILE, run.confusion, run.classes)
    save_predictions(run)
    write_status(run.run_dir, "finished", run.epochs, run.epochs)
    return "finished"


def compiled(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """The model as its training steps call it: torch.compile'd in train.compile's mode, or itself."""
    mode = compile_mode(cfg.train.compile)
    return torch.compile(model, mode=mode) if mode else model


def _train(cfg: DictConfig, run_dir: Path) -> str:
    run = start_run(cfg, run_dir)
    write_provenance(run_dir, run.scores.device, run.precision, str(cfg.precision))  # a packed run's: its pack
    step_model = compiled(run.model, cfg)
    epochs, steps = run.epochs, len(run.batches)
    progress = Progress(run.name, epochs * steps, run.epoch * steps, bool(cfg.train.progress))
    run.batches.on_step = progress.step
    try:
        while run.epoch < epochs:
            began = time.perf_counter()
            sums = train_one_epoch(step_model, run.loss_fn, run.batches, run.optimizer, run.scheduler,
                                   run.precision.dtype)  # fmt: skip
            if end_epoch(run, sums.tolist(), time.perf_counter() - began, progress):  # tolist: the epoch's one sync
                return "diverged"
    finally:
        progress.close()
    return finish_run(run)
