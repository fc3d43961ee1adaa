"""The optimiser (the `optim` group: a `_partial_` torch.optim class, given the model's parameter groups) and the
per-step learning-rate schedule (the `schedule` group: linear warmup, then cosine, linear or no decay)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from lossbench.components import build
from lossbench.errors import LossbenchError, one_line, require


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay applies to conv and linear weights only, not to BatchNorm parameters and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of the config's `_target_` (a partial) over the model's parameter groups."""
    weight_decay = cfg.get("weight_decay", 0.0)
    require(
        isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0,
        f"optim.weight_decay must be a finite number >= 0, not {weight_decay}",
    )
    make = build(cfg, "optim")
    require(callable(make), f"optim: {cfg._target_} must be a partial (optim._partial_=true)")
    try:
        optimizer = make(parameter_groups(model, weight_decay))
    except (ValueError, TypeError, RuntimeError) as err:  # e.g. nesterov without momentum, betas out of range
        raise LossbenchError(f"optim ({cfg._target_}): {one_line(err)}") from None
    require(isinstance(optimizer, torch.optim.Optimizer), f"optim._target_={cfg._target_} is not a torch optimiser")
    return optimizer


@dataclass
class WarmupDecay:
    """Linear warmup from 0 over warmup_epochs, then `decay` (cosine | linear | constant) to 0 at the last step."""

    decay: str = "cosine"
    warmup_epochs: float = 1.0

    def __post_init__(self) -> None:
        require(
            self.decay in ("cosine", "linear", "constant"),
            f"schedule.decay must be cosine, linear or constant, not '{self.decay}'",
        )
        require(self.warmup_epochs >= 0, f"schedule.warmup_epochs must be >= 0, not {self.warmup_epochs}")

    def factor(self, step: int, total_steps: int, warmup_steps: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if self.decay == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if self.decay == "linear":
            return 1 - progress
        return 1.0


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = build(cfg, "schedule")
    require(
        isinstance(schedule, WarmupDecay), f"schedule._target_ must be lossbench.optim.WarmupDecay, not {cfg._target_}"
    )
    total = steps_per_epoch * epochs
    warmup = round(schedule.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step, total, warmup))
