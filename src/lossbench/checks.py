"""Numbers and choices that would pass and then do nothing, or blow up inside a job: refused before any job starts,
each in one line naming the key and the range it accepts.

The network and the optimiser compute in float32: a learning rate of 1e-300 is 0 there (the run would "finish"
having learnt nothing) and 1e300 is infinite. Seeds must fit torch's generators; a momentum of 1 or more makes
SGD's velocity grow without end; augmentation settings are a count of pixels and a yes/no.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from lossbench.data.sources import builtin_name
from lossbench.errors import require, require_int

FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)  # the smallest normal float32, about 1.2e-38
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
SEED_MAX = 2**63 - 1  # torch.manual_seed takes any 64-bit value; one range for every seed
SEED_KEYS = ("seed", "data.seed", "data.subset_seed")
# Yes/no settings: a string such as "maybe" would pass for true where Python tests it.
BOOLEAN_KEYS = (
    "train.checkpoint",
    "train.progress",
    "optim.nesterov",
    "data.download",
    "data.cache",
    "data.augment.flip",
)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number (not a bool) that is neither infinite nor NaN: what a config or record value must be."""
    return is_number(value) and math.isfinite(value)


def check_float32(value: Any, key: str, note: str = "") -> None:
    """A positive setting that float32 must hold as a normal, non-zero number."""
    require(
        is_number(value) and math.isfinite(value) and FLOAT32_TINY <= value <= FLOAT32_MAX,
        f"{key}={value!r}: must be a number in [{FLOAT32_TINY:.3g}, {FLOAT32_MAX:.3g}] (float32, which the "
        f"network computes in, holds it as neither 0 nor infinity){note}",
    )


def check_seed(value: Any, key: str) -> None:
    require_int(value, key)
    require(0 <= value <= SEED_MAX, f"{key}={value}: must be an integer in [0, 2^63-1]")


def check_settings(cfg: DictConfig) -> None:
    """The settings a job would misread or fail on, checked on the whole config."""
    lr = OmegaConf.select(cfg, "optim.lr", default=None)
    if lr is not None:
        check_float32(lr, "optim.lr")
    momentum = OmegaConf.select(cfg, "optim.momentum", default=None)
    if momentum is not None:
        require(is_number(momentum) and 0 <= momentum < 1, f"optim.momentum={momentum!r}: must be a number in [0, 1)")
    for key in SEED_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check_seed(value, key)
    classes = OmegaConf.select(cfg, "data.classes", default=None)
    require(
        classes is None or isinstance(classes, ListConfig),
        f"data.classes={classes!r}: must be a list of class names, e.g. data.classes=[cat,dog] (or null for all)",
    )
    augment = OmegaConf.select(cfg, "data.augment", default=None)
    if isinstance(augment, DictConfig):
        padding = augment.get("crop_padding", 0)
        require_int(padding, "data.augment.crop_padding", note=" (pixels of padding for the random crop)")
        require(padding >= 0, f"data.augment.crop_padding={padding}: must be an integer >= 0 (0: no crop)")
    for key in BOOLEAN_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        require(value is None or isinstance(value, bool), f"{key}={value!r}: must be true or false")
    warmup = OmegaConf.select(cfg, "schedule.warmup_epochs", default=None)
    require(
        warmup is None or (is_number(warmup) and math.isfinite(warmup) and warmup >= 0),
        f"schedule.warmup_epochs={warmup!r}: must be a finite number >= 0",
    )
    if builtin_name(OmegaConf.select(cfg, "data._target_", default=None)) == "lossbench.data.Synthetic":
        for key, low, high in (("data.similarity", 0, 1), ("data.noise", 0, 1e6)):
            value = OmegaConf.select(cfg, key, default=None)
            require(
                value is None or (is_number(value) and low <= value <= high),
                f"{key}={value!r}: must be a number in [{low}, {high:g}]",
            )
