"""A dataset in memory, and the two ways every source narrows one: to some classes and to a subset of examples.

Images are uint8 [N, C, H, W], feature vectors float32 [N, ...]; labels int64 [N], 0..C-1 in the order of
`classes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Select = Callable[[str, Tensor], Tensor]  # (split, labels) -> indices of the examples to keep


@dataclass
class Dataset:
    train_x: Tensor  # uint8 [N, C, H, W] images or float32 [N, ...] features
    train_y: Tensor  # int64 [N]
    test_x: Tensor
    test_y: Tensor
    classes: list[str]
    val_x: Tensor | None = None  # carved from the training set; None without a validation split
    val_y: Tensor | None = None
    # int64 [N]: which group each training example belongs to (a protein chain, a scaffold); a validation split
    # keeps each group whole on one side. None: every example is its own group.
    train_groups: Tensor | None = None

    @property
    def is_image(self) -> bool:
        return self.train_x.dtype == torch.uint8 and self.train_x.ndim == 4

    def to(self, device: torch.device) -> Dataset:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Dataset(
            move(self.train_x),
            move(self.train_y),
            move(self.test_x),
            move(self.test_y),
            self.classes,
            move(self.val_x),
            move(self.val_y),
            self.train_groups,
        )


def subsets(data: Dataset, select: Select) -> Dataset:
    """The examples select(split, labels) keeps of each split (a source's read hands its select over here)."""
    train, test = select("train", data.train_y), select("test", data.test_y)
    groups = None if data.train_groups is None else data.train_groups[train]
    return Dataset(
        data.train_x[train],
        data.train_y[train],
        data.test_x[test],
        data.test_y[test],
        data.classes,
        train_groups=groups,
    )


def restrict(data: Dataset, classes: Sequence[str]) -> Dataset:
    """Keep only `classes`, relabelled to their position in `classes`."""
    if list(classes) == data.classes:
        return data
    lookup = torch.full((len(data.classes),), -1, dtype=torch.long)
    for new, name in enumerate(classes):
        lookup[data.classes.index(name)] = new

    def pick(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        mapped = lookup[y]
        keep = mapped >= 0
        return x[keep], mapped[keep]

    groups = None if data.train_groups is None else data.train_groups[lookup[data.train_y] >= 0]
    return Dataset(
        *pick(data.train_x, data.train_y), *pick(data.test_x, data.test_y), list(classes), train_groups=groups
    )
