"""Loading a run's data: the configured source restricted to the run's classes, its seeded stratified subsets,
and the validation split carved from the training set (keeping groups whole). The last dataset loaded is kept in
memory, so that a preflight check and the jobs of a sweep in one process load it once."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lossbench.data.dataset import Dataset
from lossbench.data.latest import Latest
from lossbench.data.sources import Source, build_source
from lossbench.errors import require


def load_dataset(cfg: DictConfig, classes: Sequence[str], scores: Tensor) -> Dataset:
    """Load the configured source restricted to `classes` (relabelled 0..C-1), subsampled and split.
    The last dataset loaded is kept, so a preflight check and the jobs of a sweep load it once."""
    key = repr((OmegaConf.to_yaml(cfg, resolve=True), list(classes), scores.tolist()))  # resolved: ${seed}
    return _last_loaded.get(None, key, lambda: _load_dataset(build_source(cfg), list(classes), scores))


def _load_dataset(source: Source, classes: list[str], scores: Tensor) -> Dataset:
    """The test subset is drawn from subset_seed; the training subset and the validation split from
    train_subset_seed (by default the run's seed), or, when it is None, from the same generator as the test subset
    (the one draw of older versions, which their recorded configs repeat)."""
    generator = torch.Generator().manual_seed(int(source.subset_seed))
    per_seed = source.train_subset_seed is not None
    train_generator = torch.Generator().manual_seed(int(source.train_subset_seed)) if per_seed else generator
    sizes = {"train": source.train_size, "test": source.test_size}

    def select(split: str, labels: Tensor) -> Tensor:
        chosen = train_generator if split == "train" else generator
        return stratified_subset(labels, sizes[split], len(classes), chosen, f"data.{split}_size")

    data = source.read(classes, scores, select)
    # every run is scored on the test split; an empty one leaves nothing to compare
    require(len(data.test_y) > 0, f"data {source.name}: the test split has no examples of the classes {classes}")
    return validation_split(data, source.val_size, train_generator)


_last_loaded = Latest()  # load_dataset's: jobs of a sweep in one process share the data they agree on


def validation_split(data: Dataset, size: float | int | None, generator: torch.Generator) -> Dataset:
    """Carve a seeded validation set out of the training set: `size` is a fraction (< 1) or a count. Without
    groups it is stratified by class; with groups (data.train_groups) each group goes whole to one side, chosen
    to bring the validation set's class counts as close as the groups allow to a stratified set of that size."""
    if not size:
        return data
    n = len(data.train_y)
    count = round(size * n) if isinstance(size, float) and size < 1 else size
    require(
        isinstance(count, int) and 0 < count < n,
        f"data.val_size must be a fraction in (0, 1) or a count below the training set's {n}, not {size}",
    )
    require(
        count >= len(data.classes),
        f"data.val_size {size} gives {count} examples, fewer than the "
        f"{len(data.classes)} classes (a larger data.val_size, "
        "or null for none)",
    )
    if data.train_groups is None:
        val = stratified_subset(data.train_y, count, len(data.classes), generator, "data.val_size")
    else:
        val = grouped_subset(data.train_y, data.train_groups, count, len(data.classes), generator)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    groups = None if data.train_groups is None else data.train_groups[keep]
    return Dataset(
        data.train_x[keep],
        data.train_y[keep],
        data.test_x,
        data.test_y,
        data.classes,
        data.train_x[val],
        data.train_y[val],
        groups,
    )


def grouped_subset(labels: Tensor, groups: Tensor, size: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """Indices of whole groups holding about `size` examples, with class counts as near as the groups allow to
    the training set's class shares at that size (the stratified target). Groups are visited in a seeded random
    order; each joins when it brings the counts closer to the target (squared distance), so a group that would
    overshoot a class is passed over and a smaller one later can take its place. At least one group stays in
    training. Why: examples of one group are near copies (the overlapping windows of one protein chain), and a
    split that cuts a group puts copies of training examples into validation."""
    codes, inverse = torch.unique(groups, return_inverse=True)
    require(
        len(codes) >= 2,
        f"data.val_size: the training set has {len(codes)} group; a split that keeps "
        "groups whole needs at least 2 (more groups, or null for no validation split)",
    )
    counts = torch.zeros(len(codes), num_classes, dtype=torch.float64)
    counts.index_put_((inverse, labels), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    target = counts.sum(dim=0) * (size / len(labels))
    taken = torch.zeros(num_classes, dtype=torch.float64)
    chosen = torch.zeros(len(codes), dtype=torch.bool)
    for g in torch.randperm(len(codes), generator=generator).tolist():
        if chosen.sum() == len(codes) - 1:
            break
        if ((taken + counts[g] - target) ** 2).sum() < ((taken - target) ** 2).sum():
            taken += counts[g]
            chosen[g] = True
    require(
        bool(chosen.any()),
        f"data.val_size {size}: every group is larger than the validation set asked "
        "for; a larger data.val_size, or null for none",
    )
    return chosen[inverse].nonzero().flatten()


def stratified_subset(
    labels: Tensor, size: int | None, num_classes: int, generator: torch.Generator, key: str = "subset size"
) -> Tensor:
    """Indices of a seeded subset of `size` examples with the classes in equal shares as far as each class
    allows (all if None). Asking for more than there is warns with the size actually used."""
    if size is None or size >= len(labels):
        if size is not None and size > len(labels):
            warnings.warn(
                f"{key}={size} but the data has {len(labels)} examples; using all {len(labels)}", stacklevel=2
            )
        return torch.arange(len(labels))
    require(size >= num_classes, f"{key} {size} is smaller than the number of classes ({num_classes})")
    members = [(labels == c).nonzero().flatten() for c in range(num_classes)]
    members = [m[torch.randperm(len(m), generator=generator)] for m in members]
    # Equal shares; classes with too few examples give all they have and the rest is shared out again.
    take, left = [0] * num_classes, size
    while left > 0:
        open_ = [c for c in range(num_classes) if take[c] < len(members[c])]
        share, extra = divmod(left, len(open_))
        for i, c in enumerate(open_):
            add = min(share + (1 if i < extra else 0), len(members[c]) - take[c])
            take[c] += add
            left -= add
    return torch.cat([m[:t] for m, t in zip(members, take)]).sort().values
