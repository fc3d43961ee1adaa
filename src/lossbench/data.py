"""Datasets as in-memory uint8 tensors, and device-side batching with batched crop/flip augmentation.

Every source (synthetic, CIFAR-10/100, an image folder) becomes a `Dataset` of uint8 [N, 3, H, W] tensors once;
training then cuts batches by index from a device-side permutation, with no per-image Python in the hot loop.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lossbench.atomic import atomic_path
from lossbench.errors import LossbenchError, one_line, require
from lossbench.scores import CIFAR10_CLASSES, CIFAR100_CLASSES, normalise_rows

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
SYNTHETIC_NAMES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}


@dataclass
class Dataset:
    train_x: Tensor  # uint8 [N, 3, H, W]
    train_y: Tensor  # int64 [N]
    test_x: Tensor
    test_y: Tensor
    classes: list[str]

    def to(self, device: torch.device) -> "Dataset":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Dataset(move(self.train_x), move(self.train_y), move(self.test_x), move(self.test_y), self.classes)


# ---------------------------------------------------------------- class names


def source_classes(cfg: DictConfig) -> list[str]:
    """All class names the configured source offers, in its own order (cheap: reads no images)."""
    if cfg.name == "synthetic":
        if cfg.names in SYNTHETIC_NAMES:
            return list(SYNTHETIC_NAMES[cfg.names])
        require(cfg.num_classes >= 2, f"data.num_classes must be >= 2, not {cfg.num_classes}")
        return [f"class_{i:03d}" for i in range(cfg.num_classes)]
    if cfg.name == "cifar10":
        return list(CIFAR10_CLASSES)
    if cfg.name == "cifar100":
        return list(CIFAR100_CLASSES)
    if cfg.name == "imagefolder":
        missing = OmegaConf.is_missing(cfg, "root")
        require(not missing, "data=imagefolder needs data.root=PATH (train/<class>/*, test/<class>/*)")
        return _folder_classes(Path(cfg.root))
    raise LossbenchError(f"unknown dataset '{cfg.name}'; known: synthetic, cifar10, cifar100, imagefolder")


def dataset_classes(cfg: DictConfig) -> list[str]:
    """The classes a run uses: `data.classes` (in that order) or all of the source's."""
    available = source_classes(cfg)
    if cfg.get("classes") is None:
        return available
    require(len(cfg.classes) > 0, "data.classes is empty; list the classes to keep, or null for all")
    wanted = [str(c) for c in cfg.classes]
    absent = [c for c in wanted if c not in available]
    require(not absent, f"data.classes: {absent} not in the {cfg.name} dataset (it has {available})")
    require(len(set(wanted)) == len(wanted), f"data.classes lists a class twice: {wanted}")
    require(len(wanted) >= 2, "data.classes needs at least 2 classes")
    return wanted


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


# ---------------------------------------------------------------- loading


_last_loaded: tuple[str, Dataset] | None = None  # jobs of a sweep in one process share the data they agree on


def load_dataset(cfg: DictConfig, classes: Sequence[str], scores: Tensor) -> Dataset:
    """Load the configured source restricted to `classes` (relabelled 0..C-1) and subsampled.
    The last dataset loaded is kept, so a preflight check and the jobs of a sweep load it once."""
    global _last_loaded
    key = repr((OmegaConf.to_yaml(cfg), list(classes), scores.tolist()))
    if _last_loaded is None or _last_loaded[0] != key:
        _last_loaded = (key, _load_dataset(cfg, classes, scores))
    return _last_loaded[1]


def _load_dataset(cfg: DictConfig, classes: Sequence[str], scores: Tensor) -> Dataset:
    if cfg.name == "synthetic":
        data = synthetic(cfg, list(classes), scores)
    elif cfg.name in ("cifar10", "cifar100"):
        data = restrict(_torchvision_cifar(cfg), classes)
    else:
        data = restrict(_image_folder(cfg, classes), classes)
    generator = torch.Generator().manual_seed(int(cfg.subset_seed))
    train = stratified_subset(data.train_y, cfg.train_size, len(classes), generator, "data.train_size")
    test = stratified_subset(data.test_y, cfg.test_size, len(classes), generator, "data.test_size")
    return Dataset(data.train_x[train], data.train_y[train], data.test_x[test], data.test_y[test], data.classes)


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

    return Dataset(*pick(data.train_x, data.train_y), *pick(data.test_x, data.test_y), list(classes))


def stratified_subset(labels: Tensor, size: int | None, num_classes: int, generator: torch.Generator,
                      key: str = "subset size") -> Tensor:  # fmt: skip
    """Indices of a seeded subset of about `size` examples with the classes in equal shares (all if None).
    Asking for more than there is (overall or in a class) warns with the size actually used."""
    if size is None or size >= len(labels):
        if size is not None and size > len(labels):
            warnings.warn(f"{key}={size} but the data has {len(labels)} examples; using all {len(labels)}")
        return torch.arange(len(labels))
    require(size >= num_classes, f"subset size {size} is smaller than the number of classes ({num_classes})")
    per_class, extra = divmod(size, num_classes)
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        take = per_class + (1 if c < extra else 0)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    chosen = torch.cat(chosen).sort().values
    if len(chosen) < size:
        warnings.warn(f"{key}={size} but some classes have too few examples for equal shares; using {len(chosen)}")
    return chosen


def _torchvision_cifar(cfg: DictConfig) -> Dataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
    root = Path(cfg.root)
    try:
        train = cls(str(root), train=True, download=bool(cfg.download))
        test = cls(str(root), train=False, download=bool(cfg.download))
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise LossbenchError(
            f"data.root {root}: {cfg.name} not found ({err}); set data.download=true or point data.root at it"
        ) from None

    def tensors(ds) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    return Dataset(*tensors(train), *tensors(test), list(train.classes))


def _image_folder(cfg: DictConfig, classes: Sequence[str]) -> Dataset:
    """Decode root/{train,test}/<class>/* once, resized to data.image_size; cached as tensors on disk."""
    root = Path(cfg.root)
    size = int(cfg.image_size)
    files = {split: _list_images(root / split, classes) for split in ("train", "test")}
    cache = _cache_path(cfg, files, size)
    if cache is not None and cache.is_file():
        tensors = _load_cache(cache, {split: len(files[split]) for split in ("train", "test")}, size)
        if tensors is not None:
            return Dataset(*tensors, list(classes))
    tensors = []
    for split in ("train", "test"):
        paths = [p for p, _ in files[split]]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            images = list(pool.map(lambda p: _decode(p, size), paths))
        tensors += [torch.stack(images), torch.tensor([label for _, label in files[split]])]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            torch.save(tensors, tmp)
    return Dataset(*tensors, list(classes))


def _load_cache(path: Path, counts: dict[str, int], size: int) -> list[Tensor] | None:
    """The cached [train_x, train_y, test_x, test_y], or None (with one warning) when the file is damaged:
    the images are then decoded again and the cache rewritten."""
    try:
        tensors = torch.load(path, weights_only=True)
        shapes = [(counts["train"], 3, size, size), (counts["train"],), (counts["test"], 3, size, size), (counts["test"],)]
        require(isinstance(tensors, list) and [tuple(t.shape) for t in tensors] == shapes, "unexpected contents")
        return tensors
    except Exception as err:  # truncated, not a tensor file, or another layout
        warnings.warn(f"image cache {path} is damaged ({one_line(err)}); rebuilding it")
        return None


def _list_images(split_dir: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        images = sorted(p for p in class_dir.iterdir()
                        if p.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(p) and p.is_file())  # fmt: skip
        require(images, f"{class_dir}: no image files (class directory is empty)")
        files += [(p, label) for p in images]
    return files


def to_rgb(img):
    """8-bit RGB from any PIL mode, by what its values mean rather than by clipping them:
    - 16-bit grey (I;16, I;16B, ...): 0..65535 -> 0..255 (divided by 257);
    - I (32-bit integer, how many tools store 16-bit data): read as 16-bit too, clamped to 0..65535 first;
    - F (32-bit float): read as 0..1, clamped (NaN -> 0);
    - transparency (RGBA, LA, PA, a palette or colour key): composited over black, so a transparent pixel is 0
      whatever colour it happens to hide;
    - everything else (1, L, P, CMYK, YCbCr, LAB, HSV ...): PIL's own conversion."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        scale = 255.0 if img.mode == "F" else 1 / 257
        values = np.nan_to_num(np.asarray(img, dtype=np.float64) * scale, nan=0.0)
        return Image.fromarray(values.clip(0, 255).round().astype(np.uint8), "L").convert("RGB")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _decode(path: Path, size: int) -> Tensor:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = to_rgb(ImageOps.exif_transpose(img))
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise LossbenchError(f"{path}: cannot read image ({one_line(err)})") from None
    return pixels.view(size, size, 3).permute(2, 0, 1).contiguous()


def _cache_path(cfg: DictConfig, files: dict[str, list[tuple[Path, int]]], size: int) -> Path | None:
    if not cfg.get("cache", True):
        return None
    digest = hashlib.sha1(str(size).encode())
    for split in ("train", "test"):
        for path, label in files[split]:
            stat = path.stat()
            digest.update(f"{path.resolve()}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    base = Path(cfg.get("cache_dir") or os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lossbench"
    return base / f"imagefolder-{digest.hexdigest()[:16]}.pt"


# ---------------------------------------------------------------- synthetic data


def _smooth_noise(n: int, size: int, grid: int, generator: torch.Generator) -> Tensor:
    """n random 3 x size x size images that vary smoothly (random grid x grid values, bilinear upsampling)."""
    coarse = torch.randn(n, 3, grid, grid, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def synthetic(cfg: DictConfig, classes: list[str], scores: Tensor) -> Dataset:
    """Deterministic CIFAR-style images: each class is a smooth prototype image, and prototypes of classes with a
    higher mutual score are correlated (they look alike), so confusions follow S. Samples add smooth and pixel
    noise, contrast jitter and a random shift to the prototype."""
    generator = torch.Generator().manual_seed(int(cfg.seed))
    size, n_classes = int(cfg.image_size), len(classes)
    # Correlation between prototypes: symmetrised normalised S, blended with the identity, made PSD.
    similarity = normalise_rows(scores)
    similarity = (similarity + similarity.T) / 2
    correlation = (1 - cfg.similarity) * torch.eye(n_classes) + cfg.similarity * similarity
    correlation.fill_diagonal_(1.0)
    eigenvalues, eigenvectors = torch.linalg.eigh(correlation)
    mixing = eigenvectors * eigenvalues.clamp_min(0).sqrt()
    patterns = _smooth_noise(n_classes, size, 6, generator).flatten(1)
    prototypes = (mixing @ patterns).view(n_classes, 3, size, size)
    prototypes = prototypes / prototypes.flatten(1).std(dim=1).view(-1, 1, 1, 1)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.arange(n) % n_classes
        labels = labels[torch.randperm(n, generator=generator)]
        contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)
        images = contrast * prototypes[labels]
        images = images + cfg.noise * _smooth_noise(n, size, 4, generator)
        images = images + 0.3 * torch.randn(n, 3, size, size, generator=generator)
        # A random circular shift per image, as one gather.
        grid = torch.arange(size)
        rows = (grid + torch.randint(-3, 4, (n, 1), generator=generator)) % size
        cols = (grid + torch.randint(-3, 4, (n, 1), generator=generator)) % size
        images = images[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        pixels = (128 + 40 * images).round().clamp(0, 255).to(torch.uint8)
        return pixels, labels

    n_train = int(cfg.train_size) if cfg.train_size else 50_000
    n_test = int(cfg.test_size) if cfg.test_size else 10_000
    return Dataset(*sample(n_train), *sample(n_test), classes)


# ---------------------------------------------------------------- batching


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of uint8 images, in pixel units, as [1, 3, 1, 1] float tensors."""
    total = torch.zeros(3, dtype=torch.float64, device=images.device)
    squares = torch.zeros(3, dtype=torch.float64, device=images.device)
    for chunk in images.split(8192):
        x = chunk.to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean**2).clamp_min(1e-6).sqrt()
    return mean.float().view(1, 3, 1, 1), std.float().view(1, 3, 1, 1)


class Batches:
    """Training batches cut by index from a device-side permutation, augmented as batched tensor ops.

    Random crop with zero padding and horizontal flip are one gather: each example gets a row and column index
    grid, shifted by its crop offset and mirrored by its flip. The result is channels_last float, normalised.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        mean: Tensor,
        std: Tensor,
        generator: torch.Generator,
        crop_padding: int = 4,
        flip: bool = True,
    ):
        self.images, self.labels = images, labels
        self.batch_size = min(batch_size, len(labels))
        self.mean, self.std = mean, std
        self.generator = generator
        self.padding, self.flip = crop_padding, flip
        self.padded = F.pad(images, (crop_padding,) * 4) if crop_padding > 0 else images
        self.on_step: Callable[[], None] | None = None  # e.g. a progress bar; must not sync with the device

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size  # drop the ragged last batch: every step has the same shape

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        device = self.images.device
        order = torch.randperm(len(self.labels), generator=self.generator, device=device)
        for step in range(len(self)):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield self.augment(index), self.labels[index]
            if self.on_step is not None:
                self.on_step()

    def augment(self, index: Tensor) -> Tensor:
        n, (h, w) = len(index), self.images.shape[2:]
        device, p = index.device, self.padding
        dy = torch.randint(0, 2 * p + 1, (n, 1), generator=self.generator, device=device)
        dx = torch.randint(0, 2 * p + 1, (n, 1), generator=self.generator, device=device)
        cols = torch.arange(w, device=device).expand(n, w)
        if self.flip:
            mirror = torch.rand(n, 1, generator=self.generator, device=device) < 0.5
            cols = torch.where(mirror, w - 1 - cols, cols)
        rows = dy + torch.arange(h, device=device)
        cols = dx + cols
        # [n, h, w, C] gathered, then viewed as NCHW: this is exactly the channels_last layout.
        crops = self.padded[index[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return normalise(crops.permute(0, 3, 1, 2), self.mean, self.std)


def normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (images.float() - mean) / std


def eval_batches(images: Tensor, labels: Tensor, batch_size: int, mean: Tensor, std: Tensor):
    """Sequential, unaugmented channels_last batches for evaluation."""
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].contiguous(memory_format=torch.channels_last)
        yield normalise(x, mean, std), labels[start : start + batch_size]
