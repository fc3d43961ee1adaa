"""Feature vectors from an .npz file as a source: read once per version of the file, and validated, so that a
bad array is one line naming the file and the array."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lossbench.atomic import NPZ_READ_ERRORS
from lossbench.data.dataset import Dataset, Select, restrict, subsets
from lossbench.data.sources import Source
from lossbench.errors import LossbenchError, one_line, require


@dataclass(kw_only=True)
class Arrays(Source):
    """Feature vectors from an .npz file: x_train, y_train, x_test, y_test (float features of any shape [N, ...],
    integer labels 0..C-1) and optionally `classes` (C names; default class_0 ... class_{C-1}) and `groups_train`
    (one group per training example, integers or names: the validation split keeps each group whole)."""

    path: str

    def available_classes(self) -> list[str]:
        return read_arrays(Path(self.path)).classes

    def read(self, classes: list[str], scores: Tensor, select: Select) -> Dataset:
        return subsets(restrict(read_arrays(Path(self.path)), classes), select)


def read_arrays(path: Path) -> Dataset:
    """x_train, y_train, x_test, y_test (and optional classes) from an .npz file, validated. Listing the classes
    and loading the data both call this: the file is read and checked once per version of it on disk."""
    require(path.is_file(), f"data.path {path}: file not found")
    stat = path.stat()
    return _read_arrays(path.resolve(), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _read_arrays(path: Path, mtime_ns: int, size: int) -> Dataset:
    """The read and checks behind read_arrays; the file's modification time and size are part of the cache key."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except NPZ_READ_ERRORS as err:
        raise LossbenchError(f"data.path {path}: not a readable .npz file ({one_line(err)})") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    require(not missing, f"data.path {path}: missing array(s) {missing} (has {sorted(arrays)})")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        require(
            x.ndim >= 2 and len(x) > 0, f"data.path {path}: x_{split} must be [N, ...] with N > 0, not shape {x.shape}"
        )
        require(
            np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x),
            f"data.path {path}: x_{split} must be numeric, not {x.dtype}",
        )
        require(np.isfinite(x.astype(np.float64)).all(), f"data.path {path}: x_{split} has NaN or infinite values")
        require(np.abs(x.astype(np.float64)).max() < 3.4e38, f"data.path {path}: x_{split} has values beyond float32")
        require(
            y.ndim == 1 and len(y) == len(x),
            f"data.path {path}: y_{split} must be [N] with N = len(x_{split}) = {len(x)}, not shape {y.shape}",
        )
        require(
            np.issubdtype(y.dtype, np.integer), f"data.path {path}: y_{split} must hold integer labels, not {y.dtype}"
        )
    require(
        arrays["x_train"].shape[1:] == arrays["x_test"].shape[1:],
        f"data.path {path}: x_train's feature shape {arrays['x_train'].shape[1:]} differs from x_test's "
        f"{arrays['x_test'].shape[1:]}",
    )
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
    if "classes" in arrays:
        try:  # names stored as bytes (numpy's S dtype) are UTF-8 text, not "b'name'"
            names = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in arrays["classes"].tolist()]
        except UnicodeDecodeError as err:
            raise LossbenchError(f"data.path {path}: classes are not UTF-8 text ({one_line(err)})") from None
        require(
            arrays["classes"].ndim == 1 and len(set(names)) == len(names) and all(names),
            f"data.path {path}: classes must be distinct, non-empty names, not {names}",
        )
    else:
        names = [f"class_{i}" for i in range(int(labels.max()) + 1 if labels.min() >= 0 else 0)]
    bad = labels[(labels < 0) | (labels >= len(names))]
    require(
        len(bad) == 0,
        f"data.path {path}: label {int(bad[0]) if len(bad) else ''} is outside "
        f"0..{len(names) - 1} ({len(names)} classes)",
    )
    require(len(names) >= 2, f"data.path {path}: needs at least 2 classes, has {len(names)}")
    return Dataset(
        torch.from_numpy(arrays["x_train"].astype(np.float32)),
        torch.from_numpy(arrays["y_train"].astype(np.int64)),
        torch.from_numpy(arrays["x_test"].astype(np.float32)),
        torch.from_numpy(arrays["y_test"].astype(np.int64)),
        names,
        train_groups=_read_groups(arrays, path),
    )


def _read_groups(arrays: dict[str, np.ndarray], path: Path) -> Tensor | None:
    """The optional groups_train array as group numbers 0..G-1: any integers or names, one per training example."""
    if "groups_train" not in arrays:
        return None
    groups = arrays["groups_train"]
    require(
        groups.ndim == 1 and len(groups) == len(arrays["y_train"]),
        f"data.path {path}: groups_train must be [N] with N = len(x_train) = {len(arrays['y_train'])}, "
        f"not shape {groups.shape}",
    )
    require(
        np.issubdtype(groups.dtype, np.integer) or groups.dtype.kind == "U",
        f"data.path {path}: groups_train must hold integers or names, not {groups.dtype}",
    )
    return torch.from_numpy(np.unique(groups, return_inverse=True)[1].reshape(-1).astype(np.int64))
