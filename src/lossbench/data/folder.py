"""An image folder as a source: root/{train,test}/<class>/* in any format PIL reads. Only the chosen subset is
decoded (lossbench.data.images), and the decoded tensors are cached on disk, keyed on exactly those files."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lossbench.atomic import save_atomic
from lossbench.data.dataset import Dataset, Select
from lossbench.data.images import decode_images, image_extensions
from lossbench.data.sources import Source
from lossbench.errors import one_line, os_failure, require


@dataclass(kw_only=True)
class ImageFolder(Source):
    """root/{train,test}/<class>/* in any PIL format, resized to image_size. Only the chosen subset is decoded,
    and the decoded tensors are cached (in cache_dir, default ~/.cache/lossbench) keyed on exactly those files."""

    root: str
    image_size: int = 32
    cache: bool = True
    cache_dir: str | None = None

    def available_classes(self) -> list[str]:
        return _folder_classes(Path(self.root))

    def read(self, classes: list[str], scores: Tensor, select: Select) -> Dataset:
        return _image_folder(self, classes, select)


def is_hidden(path: Path) -> bool:
    """.DS_Store, .ipynb_checkpoints, macOS's ._x.jpg: never a class or an image."""
    return path.name.startswith(".")


def _folder_classes(root: Path) -> list[str]:
    require(root.is_dir(), f"data.root {root}: directory not found")
    splits = {}
    for split in ("train", "test"):
        split_dir = root / split
        require(split_dir.is_dir(), f"data.root {root}: no '{split}/' directory (expected {split}/<class>/*)")
        classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not is_hidden(d))
        require(classes, f"{split_dir}: no class directories")
        splits[split] = classes
    require(
        splits["train"] == splits["test"],
        f"data.root {root}: train and test have different classes "
        f"(only in train: {sorted(set(splits['train']) - set(splits['test']))}, "
        f"only in test: {sorted(set(splits['test']) - set(splits['train']))})",
    )
    return splits["train"]


def _image_folder(source: ImageFolder, classes: Sequence[str], select: Select) -> Dataset:
    """Decode the chosen files of root/{train,test}/<class>/* once, resized to image_size; cached on disk."""
    root = Path(source.root).resolve()  # once, so that the listed paths are canonical without a resolve each
    size = int(source.image_size)
    require(size > 0, f"data.image_size must be > 0, not {size}")
    files = {}
    for split in ("train", "test"):
        listed = _list_images(root / split, classes)
        chosen = select(split, torch.tensor([label for _, label in listed]))
        files[split] = [listed[i] for i in chosen.tolist()]
    cache = _cache_path(source, files, size)
    if cache is not None and cache.is_file():
        tensors = _load_cache(cache, {split: len(files[split]) for split in ("train", "test")}, size)
        if tensors is not None:
            return Dataset(*tensors, list(classes))
    tensors = []
    for split in ("train", "test"):
        paths = [p for p, _ in files[split]]
        tensors += [decode_images(paths, size), torch.tensor([label for _, label in files[split]])]
    if cache is not None:
        _write_cache(cache, tensors)
    return Dataset(*tensors, list(classes))


def _cache_path(source: ImageFolder, files: dict[str, list[tuple[Path, int]]], size: int) -> Path | None:
    if not source.cache:
        return None
    digest = hashlib.sha1(str(size).encode())
    for split in ("train", "test"):
        for path, label in files[split]:
            stat = path.stat()
            digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    base = Path(source.cache_dir or os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lossbench"
    return base / f"imagefolder-{digest.hexdigest()[:16]}.pt"


def _write_cache(path: Path, tensors: list[Tensor]) -> None:
    """Keep the decoded images for the next run. The cache only saves time: a disk it does not fit on (full,
    read-only) is one warning, and the run goes on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(tensors, path)
    except OSError as err:
        warnings.warn(
            f"image cache not written ({os_failure(err)}); the next run decodes the images again", stacklevel=2
        )


def _load_cache(path: Path, counts: dict[str, int], size: int) -> list[Tensor] | None:
    """The cached [train_x, train_y, test_x, test_y], or None (with one warning) when the file is damaged:
    the images are then decoded again and the cache rewritten."""
    try:
        tensors = torch.load(path, weights_only=True)
        shapes = [
            (counts["train"], 3, size, size),
            (counts["train"],),
            (counts["test"], 3, size, size),
            (counts["test"],),
        ]
        require(isinstance(tensors, list) and [tuple(t.shape) for t in tensors] == shapes, "unexpected contents")
        return tensors
    except Exception as err:  # truncated, not a tensor file, or another layout
        warnings.warn(f"image cache {path} is damaged ({one_line(err)}); rebuilding it", stacklevel=2)
        return None


def _list_images(split_dir: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        # scandir knows each entry's type from the directory listing: no stat per file (60,000 for CIFAR-10).
        with os.scandir(class_dir) as entries:
            images = [class_dir / name for name in sorted(entry.name for entry in entries if _is_image(entry))]
        require(images, f"{class_dir}: no image files (class directory is empty)")
        files += [(p, label) for p in images]
    return files


def _is_image(entry: os.DirEntry) -> bool:
    """A file (or a link to one) with an image's extension, not hidden."""
    name = Path(entry.name)
    return name.suffix.lower() in image_extensions() and not is_hidden(name) and entry.is_file()
