"""Optimisers (SGD with momentum/nesterov, AdamW) and the per-step warmup + decay learning-rate schedule."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from lossbench.errors import LossbenchError, require


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay applies to conv and linear weights only, not to BatchNorm parameters and biases."""
    require(cfg.lr > 0, f"optim.lr must be > 0, not {cfg.lr}")
    require(cfg.weight_decay >= 0, f"optim.weight_decay must be >= 0, not {cfg.weight_decay}")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    raise LossbenchError(f"unknown optimiser '{cfg.name}'; known: sgd, adamw")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warmup from 0, then cosine or linear decay to 0 at total_steps (constant: no decay)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1 - progress
    return 1.0


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = cfg.schedule
    require(schedule in ("cosine", "linear", "constant"), f"optim.schedule must be cosine, linear or constant, not '{schedule}'")
    require(cfg.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, not {cfg.warmup_epochs}")
    total = steps_per_epoch * epochs
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, schedule))
