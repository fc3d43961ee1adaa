"""What a data source is: a `_target_` node of the `data` config group that lists its classes cheaply and reads
the examples of some of them. Built-in sources: synthetic.Synthetic, cifar.TorchvisionCIFAR, folder.ImageFolder,
arrays.Arrays; a user's own subclass of Source works the same way (`data._target_=mypkg.MySource`)."""

from __future__ import annotations

import importlib
import types
import typing
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

from omegaconf import DictConfig
from torch import Tensor

from lossbench import data as data_package
from lossbench.components import build
from lossbench.data.dataset import Dataset, Select
from lossbench.errors import require, require_int


@dataclass(kw_only=True)
class Source:
    """What every source shares: the subset, validation split and augmentation settings. A subclass lists its
    classes (`available_classes`, cheap: reads no examples) and reads the examples of some of them (`read`)."""

    name: str
    train_size: int | None = None  # the training pool before the validation split; None = all
    val_size: float | int | None = None  # a fraction (< 1) or a count of the training pool; None/0 = no split
    test_size: int | None = None
    subset_seed: int = 0
    # the training subset and the validation split: None (the default) draws them with the test subset from
    # subset_seed, once for every run seed; a number (data.train_subset_seed='${seed}': the run's seed) draws them
    # from it instead, the test subset still from subset_seed
    train_subset_seed: int | None = None
    classes: list[str] | None = None  # restrict to these classes, in this order
    augment: dict[str, Any] = field(default_factory=dict)  # images: crop_padding, flip

    def __post_init__(self) -> None:
        """Every setting declared an integer holds an integer (2.5 pixels is refused, not truncated to 2), and
        every one declared a float holds a number: one line naming the key, not a failure deep in the reading.
        Hydra passes a config's values through as written, so this is the first place that sees them."""
        for name, (kind, optional) in number_fields(type(self)).items():
            value = getattr(self, name)
            if value is None and optional:
                continue
            if kind is int:
                require_int(value, f"data.{name}")
            else:
                require(
                    isinstance(value, (int, float)) and not isinstance(value, bool),
                    f"data.{name} must be a number, not {value!r}",
                )

    def available_classes(self) -> list[str]:
        raise NotImplementedError

    def read(self, classes: list[str], scores: Tensor, select: Select) -> Dataset:
        """The examples of `classes` (labels 0..C-1 in that order), keeping select(split, labels) of each split."""
        raise NotImplementedError


@cache
def number_fields(cls: type) -> dict[str, tuple[type, bool]]:
    """The fields of a Source class declared `int` or `float`, each with whether it may be None (`int | None`), by
    their resolved types: a subclass's annotations read alike whether or not its module postpones them (strings
    under `from __future__ import annotations`, classes otherwise). Anything else (`float | int`, lists) is
    left to the source that reads it."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for spec in fields(cls):
        hint, optional = hints[spec.name], False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            hint, optional = (members[0] if len(members) == 1 else None), True
        if hint in (int, float):
            kinds[spec.name] = (hint, optional)
    return kinds


def build_source(cfg: DictConfig) -> Source:
    """The data config node as a Source object (its `_target_` class)."""
    source = build(cfg, "data")
    require(isinstance(source, Source), f"data._target_ must build a lossbench.data.Source, not {type(source)}")
    return source


def dataset_classes(cfg: DictConfig) -> list[str]:
    """The classes a run uses: `data.classes` (in that order) or all of the source's."""
    source = build_source(cfg)
    available = source.available_classes()
    if source.classes is None:
        return available
    require(len(source.classes) > 0, "data.classes is empty; list the classes to keep, or null for all")
    wanted = [str(c) for c in source.classes]
    require(len(wanted) >= 2, f"data.classes needs at least 2 classes, not {wanted}")
    absent = [c for c in wanted if c not in available]
    require(not absent, f"data.classes: {absent} not in the {source.name} dataset (it has {available})")
    require(len(set(wanted)) == len(wanted), f"data.classes lists a class twice: {wanted}")
    return wanted


def builtin_name(target: object) -> str | None:
    """The name configs give a built-in source (`lossbench.data.Synthetic`) when `target` names it, by that name or
    by its defining module's (`lossbench.data.synthetic.Synthetic`); None for anything else. Only lossbench's own
    modules are imported to tell."""
    if not isinstance(target, str) or not target.startswith("lossbench.data."):
        return None
    module, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return next((f"lossbench.data.{n}" for n in data_package.__all__ if getattr(data_package, n) is found), None)
