"""A run's config before any work: its numbers and choices checked, its user paths made absolute."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lossbench.checks import check_settings
from lossbench.data.sources import dataset_classes
from lossbench.errors import require, require_int
from lossbench.losses import build_loss_from_config
from lossbench.scores import ScoreMatrix, build_scores

PATH_KEYS = ("scores.path", "data.root", "data.path", "data.cache_dir")  # resolved once, recorded absolute
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


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


def compile_mode(value: Any) -> str | None:
    """The torch.compile mode that `train.compile` asks for: None (false, eager), "default" (true) or a mode by
    name; "reduce-overhead" captures the steps in CUDA graphs, the cure for a GPU starved by kernel launches."""
    if value is False or value is True:
        return "default" if value else None
    require(
        value in COMPILE_MODES, f"train.compile must be true, false or one of {', '.join(COMPILE_MODES)}, not {value!r}"
    )
    return value


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
