"""Datasets as in-memory tensors, and device-side batching with batched crop/flip augmentation.

Every source is a `_target_` node of the `data` config group (synthetic, CIFAR-10/100, an image folder, arrays
from an .npz file). A source lists its classes cheaply and reads its examples; `load_dataset` then applies what
all sources share: class restriction, seeded stratified subsets and the validation split carved from the training
set. Images are uint8 [N, C, H, W], feature vectors float32 [N, ...]; training cuts batches by index from a
device-side permutation, with no per-example Python in the hot loop. The class-name lists of the built-in
datasets live here too.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import multiprocessing
import os
import signal
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lossbench.atomic import save_atomic
from lossbench.components import build
from lossbench.cpus import usable_cpus
from lossbench.errors import LossbenchError, one_line, os_failure, require, require_int

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-100's 20 coarse classes (superclasses) and their 5 fine classes each.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR100_CLASSES = sorted(c for fine in CIFAR100_SUPERCLASSES.values() for c in fine)
# dogs20 (Imagenette + Imagewoof at 64x64): 11 dog breeds and 9 other objects.
DOGS20_BREEDS = [
    "australian_terrier", "beagle", "border_terrier", "dingo", "english_foxhound", "english_springer",
    "golden_retriever", "old_english_sheepdog", "rhodesian_ridgeback", "samoyed", "shih_tzu",
]  # fmt: skip
DOGS20_OBJECTS = ["cassette_player", "chain_saw", "church", "french_horn", "garbage_truck", "gas_pump",
                  "golf_ball", "parachute", "tench"]  # fmt: skip
DOGS20_CLASSES = sorted(DOGS20_BREEDS + DOGS20_OBJECTS)
SYNTHETIC_NAMES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}

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

    @property
    def is_image(self) -> bool:
        return self.train_x.dtype == torch.uint8 and self.train_x.ndim == 4

    def to(self, device: torch.device) -> "Dataset":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Dataset(move(self.train_x), move(self.train_y), move(self.test_x), move(self.test_y), self.classes,
                       move(self.val_x), move(self.val_y))  # fmt: skip


# ---------------------------------------------------------------- sources


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
        """Every source's settings typed as integers are integers (2.5 pixels is refused, not truncated to 2), and
        those typed as floats are numbers: one line naming the key, not a failure deep in the reading."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.type == "int" or (spec.type == "int | None" and value is not None):
                require_int(value, f"data.{spec.name}")
            elif spec.type == "float":
                require(isinstance(value, (int, float)) and not isinstance(value, bool),
                        f"data.{spec.name} must be a number, not {value!r}")  # fmt: skip

    def available_classes(self) -> list[str]:
        raise NotImplementedError

    def read(self, classes: list[str], scores: Tensor, select: Select) -> Dataset:
        """The examples of `classes` (labels 0..C-1 in that order), keeping select(split, labels) of each split."""
        raise NotImplementedError


@dataclass(kw_only=True)
class Synthetic(Source):
    """Deterministic CIFAR-style images generated in code: classes with a higher mutual score look more alike."""

    names: str = "cifar10"  # cifar10 | cifar100 | generic (class_000 ... with num_classes)
    num_classes: int = 10
    seed: int = 0
    similarity: float = 0.9
    noise: float = 3.0
    image_size: int = 32

    def available_classes(self) -> list[str]:
        if self.names in SYNTHETIC_NAMES:
            return list(SYNTHETIC_NAMES[self.names])
        require(self.names == "generic", f"data.names must be cifar10, cifar100 or generic, not '{self.names}'")
        require(self.num_classes >= 2, f"data.num_classes must be >= 2, not {self.num_classes}")
        return [f"class_{i:03d}" for i in range(self.num_classes)]

    def read(self, classes: list[str], scores: Tensor, select: Select) -> Dataset:
        return _select(synthetic(self, classes, scores), select)


@dataclass(kw_only=True)
class TorchvisionCIFAR(Source):
    """torchvision's CIFAR-10 or CIFAR-100 (downloaded into root when download is true)."""

    variant: str = "cifar10"
    root: str = "data"
    download: bool = True

    def available_classes(self) -> list[str]:
        return list(CIFAR10_CLASSES if self.variant == "cifar10" else CIFAR100_CLASSES)

    def read(self, classes: list[str], scores: Tensor, select: Select) -> Dataset:
        return _select(restrict(_torchvision_cifar(self), classes), select)


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


@dataclass(kw_only=True)
class Arrays(Source):
    """Feature vectors from an .npz file: x_train, y_train, x_test, y_test (float features of any shape [N, ...],
    integer labels 0..C-1) and optionally `classes` (C names; default class_0 ... class_{C-1})."""

    path: str

    def available_classes(self) -> list[str]:
        return read_arrays(Path(self.path)).classes

    def read(self, classes: list[str], scores: Tensor, select: Select) -> Dataset:
        return _select(restrict(read_arrays(Path(self.path)), classes), select)


def build_source(cfg: DictConfig) -> Source:
    """The data config node as a Source object (its `_target_` class)."""
    source = build(cfg, "data")
    require(isinstance(source, Source), f"data._target_ must build a lossbench.data.Source, not {type(source)}")
    return source


# ---------------------------------------------------------------- class names


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


def _select(data: Dataset, select: Select) -> Dataset:
    train, test = select("train", data.train_y), select("test", data.test_y)
    return Dataset(data.train_x[train], data.train_y[train], data.test_x[test], data.test_y[test], data.classes)


def validation_split(data: Dataset, size: float | int | None, generator: torch.Generator) -> Dataset:
    """Carve a stratified, seeded validation set out of the training set: `size` is a fraction (< 1) or a count."""
    if not size:
        return data
    n = len(data.train_y)
    count = round(size * n) if isinstance(size, float) and size < 1 else size
    require(isinstance(count, int) and 0 < count < n,
            f"data.val_size must be a fraction in (0, 1) or a count below the training set's {n}, "
            f"not {size}")  # fmt: skip
    require(count >= len(data.classes), f"data.val_size {size} gives {count} examples, fewer than the "
                                        f"{len(data.classes)} classes (a larger data.val_size, "
                                        "or null for none)")  # fmt: skip
    val = stratified_subset(data.train_y, count, len(data.classes), generator, "data.val_size")
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return Dataset(data.train_x[keep], data.train_y[keep], data.test_x, data.test_y, data.classes,
                   data.train_x[val], data.train_y[val])  # fmt: skip


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
    """Indices of a seeded subset of `size` examples with the classes in equal shares as far as each class
    allows (all if None). Asking for more than there is warns with the size actually used."""
    if size is None or size >= len(labels):
        if size is not None and size > len(labels):
            warnings.warn(f"{key}={size} but the data has {len(labels)} examples; using all {len(labels)}")
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


def _torchvision_cifar(source: TorchvisionCIFAR) -> Dataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if source.variant == "cifar10" else datasets.CIFAR100
    root = Path(source.root)
    try:
        train = cls(str(root), train=True, download=bool(source.download))
        test = cls(str(root), train=False, download=bool(source.download))
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise LossbenchError(
            f"data.root {root}: {source.variant} not found ({err}); set data.download=true or point data.root at it"
        ) from None

    def tensors(ds) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    return Dataset(*tensors(train), *tensors(test), list(train.classes))


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
    except (OSError, ValueError) as err:
        raise LossbenchError(f"data.path {path}: not a readable .npz file ({one_line(err)})") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    require(not missing, f"data.path {path}: missing array(s) {missing} (has {sorted(arrays)})")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        require(x.ndim >= 2 and len(x) > 0,
                f"data.path {path}: x_{split} must be [N, ...] with N > 0, not shape {x.shape}")  # fmt: skip
        require(np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x),
                f"data.path {path}: x_{split} must be numeric, not {x.dtype}")  # fmt: skip
        require(np.isfinite(x.astype(np.float64)).all(), f"data.path {path}: x_{split} has NaN or infinite values")
        require(np.abs(x.astype(np.float64)).max() < 3.4e38, f"data.path {path}: x_{split} has values beyond float32")
        require(y.ndim == 1 and len(y) == len(x),
                f"data.path {path}: y_{split} must be [N] with N = len(x_{split}) = {len(x)}, "
                f"not shape {y.shape}")  # fmt: skip
        require(np.issubdtype(y.dtype, np.integer),
                f"data.path {path}: y_{split} must hold integer labels, not {y.dtype}")  # fmt: skip
    require(arrays["x_train"].shape[1:] == arrays["x_test"].shape[1:],
            f"data.path {path}: x_train's feature shape {arrays['x_train'].shape[1:]} differs from x_test's "
            f"{arrays['x_test'].shape[1:]}")  # fmt: skip
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
    if "classes" in arrays:
        names = [str(c) for c in arrays["classes"].tolist()]
        require(arrays["classes"].ndim == 1 and len(set(names)) == len(names) and all(names),
                f"data.path {path}: classes must be distinct, non-empty names, not {names}")  # fmt: skip
    else:
        names = [f"class_{i}" for i in range(int(labels.max()) + 1 if labels.min() >= 0 else 0)]
    bad = labels[(labels < 0) | (labels >= len(names))]
    require(len(bad) == 0, f"data.path {path}: label {int(bad[0]) if len(bad) else ''} is outside "
                           f"0..{len(names) - 1} ({len(names)} classes)")  # fmt: skip
    require(len(names) >= 2, f"data.path {path}: needs at least 2 classes, has {len(names)}")
    return Dataset(torch.from_numpy(arrays["x_train"].astype(np.float32)),
                   torch.from_numpy(arrays["y_train"].astype(np.int64)),
                   torch.from_numpy(arrays["x_test"].astype(np.float32)),
                   torch.from_numpy(arrays["y_test"].astype(np.int64)), names)  # fmt: skip


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


def _write_cache(path: Path, tensors: list[Tensor]) -> None:
    """Keep the decoded images for the next run. The cache only saves time: a disk it does not fit on (full,
    read-only) is one warning, and the run goes on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(tensors, path)
    except OSError as err:
        warnings.warn(f"image cache not written ({os_failure(err)}); the next run decodes the images again")


def _load_cache(path: Path, counts: dict[str, int], size: int) -> list[Tensor] | None:
    """The cached [train_x, train_y, test_x, test_y], or None (with one warning) when the file is damaged:
    the images are then decoded again and the cache rewritten."""
    try:
        tensors = torch.load(path, weights_only=True)
        shapes = [(counts["train"], 3, size, size), (counts["train"],),
                  (counts["test"], 3, size, size), (counts["test"],)]  # fmt: skip
        require(isinstance(tensors, list) and [tuple(t.shape) for t in tensors] == shapes, "unexpected contents")
        return tensors
    except Exception as err:  # truncated, not a tensor file, or another layout
        warnings.warn(f"image cache {path} is damaged ({one_line(err)}); rebuilding it")
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
    return name.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(name) and entry.is_file()


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


PROCESS_DECODE_MIN = 2000  # images; fewer decode faster in threads than worker processes start
DECODE_CHUNK = 500  # images a worker decodes at a time (CIFAR-10's: about 0.1 s)


def decode_images(paths: Sequence[Path], size: int) -> Tensor:
    """The images at `paths`, in order, as one uint8 tensor [N, 3, size, size]. Decoding a small image is mostly
    Python, so threads take turns on the GIL: with a thread per core, loading CIFAR-10's 60,000 JPEGs took 32 s on
    a 16-core machine and 15 s on 2 cores. Large sets are therefore split between forked worker processes on Linux
    (a fork starts in milliseconds and imports nothing; the workers run only PIL), one per core this process may
    use (lossbench.cpus: its affinity and cgroup quota); elsewhere threads decode."""
    linux = sys.platform == "linux"
    workers = min(usable_cpus(), max(1, len(paths)))
    if workers > 1 and len(paths) >= PROCESS_DECODE_MIN and linux:
        # Chunks of at most DECODE_CHUNK images: no worker waits long on another's last chunk, nor Ctrl-C on them.
        step = min(DECODE_CHUNK, math.ceil(len(paths) / workers))
        chunks = [paths[i : i + step] for i in range(0, len(paths), step)]
        with _forking_from_threads(), ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                          initializer=_follow_parent,
                                                          initargs=(os.getpid(),)) as pool:  # fmt: skip
            try:
                arrays = list(pool.map(partial(_decode_all, size=size), chunks))
            except BaseException:
                # Ctrl-C: the chunks not started are dropped, and only those being decoded are waited for. map
                # cancels them itself only once it has submitted every chunk; a Ctrl-C while it submits (the first
                # chunks already decoding) would otherwise wait for all of them.
                pool.shutdown(cancel_futures=True)
                raise
    else:
        arrays = [_decode_all(paths, size, threads=workers)]
    return torch.from_numpy(np.concatenate(arrays))


@contextmanager
def _forking_from_threads() -> Iterator[None]:
    """Python 3.12+ warns at each fork of a process with threads (torch's OpenMP pool, once it has run) that the
    child may deadlock on a lock another thread held at the fork. The decoding workers run only PIL and numpy on
    their own chunk: never torch or OpenMP, whose state a fork breaks; glibc's malloc is fork-safe, and Python
    reinitialises its interpreter's and logging's locks in a forked child. Spawn or forkserver would cost each
    worker an import of lossbench, torch included: 1.5 to 2.5 s on the 2-core AMD EPYC."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*use of fork\(\) may lead to deadlocks", DeprecationWarning)
        yield


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _follow_parent(parent: int) -> None:
    """A decoding worker's set-up. It ignores Ctrl-C and SIGTERM (which reach the whole process group): the parent
    stops the pool and reports the interruption once, instead of each worker printing a traceback. And it dies
    with its parent: after a kill -9 of the parent, forked workers would wait forever for work on a queue whose
    other end their siblings still hold open."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _decode_all(paths: Sequence[Path], size: int, threads: int = 1) -> np.ndarray:
    """[len(paths), 3, size, size] uint8, decoded by `threads` threads."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        images = list(pool.map(partial(_decode, size=size), paths))
    return np.stack(images) if images else np.empty((0, 3, size, size), dtype=np.uint8)


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = to_rgb(ImageOps.exif_transpose(img))
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise LossbenchError(f"{path}: cannot read image ({one_line(err)})") from None
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


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


# ---------------------------------------------------------------- synthetic data


def _smooth_noise(n: int, size: int, grid: int, generator: torch.Generator) -> Tensor:
    """n random 3 x size x size images that vary smoothly (random grid x grid values, bilinear upsampling)."""
    coarse = torch.randn(n, 3, grid, grid, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def synthetic(cfg: Synthetic, classes: list[str], scores: Tensor) -> Dataset:
    """Deterministic CIFAR-style images: each class is a smooth prototype image, and prototypes of classes with a
    higher mutual score are correlated (they look alike), so confusions follow S. Samples add smooth and pixel
    noise, contrast jitter and a random shift to the prototype."""
    generator = torch.Generator().manual_seed(int(cfg.seed))
    size, n_classes = int(cfg.image_size), len(classes)
    # Correlation between prototypes: symmetrised normalised S, blended with the identity, made PSD.
    low, high = scores.min(dim=1, keepdim=True).values, scores.max(dim=1, keepdim=True).values
    similarity = (scores - low) / (high - low).clamp_min(1e-12)  # each row in [0, 1]: how alike, not how much
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


def feature_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std for standardising inputs: per channel for images ([1, C, 1, 1], in pixel units), per feature
    for vectors ([1, ...]). Accumulated in float64 chunks, so large uint8 datasets never exist as floats at once."""
    dims = (0, 2, 3) if x.dtype == torch.uint8 and x.ndim == 4 else (0,)
    total = squares = 0
    for chunk in x.split(8192):
        chunk = chunk.to(torch.float64)
        total = total + chunk.sum(dim=dims, keepdim=True)
        squares = squares + (chunk * chunk).sum(dim=dims, keepdim=True)
    count = x.numel() // total.numel()
    mean = total / count
    std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
    # A constant feature (std 0) is only centred: dividing by ~0 would blow its noise up.
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.float(), std.float()


class Batches:
    """Training batches cut by index from a device-side permutation.

    Images are augmented as batched tensor ops: random crop with zero padding and horizontal flip are one gather
    (each example gets a row and column index grid, shifted by its crop offset and mirrored by its flip), giving
    channels_last float, standardised. Feature vectors are standardised only.
    """

    def __init__(
        self,
        inputs: Tensor,
        labels: Tensor,
        batch_size: int,
        mean: Tensor,
        std: Tensor,
        generator: torch.Generator,
        crop_padding: int = 4,
        flip: bool = True,
    ):
        self.inputs, self.labels = inputs, labels
        self.batch_size = min(batch_size, len(labels))
        self.mean, self.std = mean, std
        self.generator = generator
        self.images = inputs.dtype == torch.uint8 and inputs.ndim == 4
        self.padding, self.flip = (crop_padding, flip) if self.images else (0, False)
        self.padded = padded_images(inputs, self.padding) if self.padding > 0 else inputs
        self.on_step: Callable[[], None] | None = None  # e.g. a progress bar; must not sync with the device

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size  # drop the ragged last batch: every step has the same shape

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index in self.indexes():
            yield self.examples(index, self.draw(len(index))), self.labels[index]
            if self.on_step is not None:
                self.on_step()

    def indexes(self) -> Iterator[Tensor]:
        """The example indexes of this epoch's batches, cut from one fresh permutation."""
        order = torch.randperm(len(self.labels), generator=self.generator, device=self.inputs.device)
        for step in range(len(self)):
            yield order[step * self.batch_size : (step + 1) * self.batch_size]

    def draw(self, n: int) -> tuple[Tensor, Tensor, Tensor | None] | None:
        """A step's random augmentation for n images, from the generator in a fixed order: crop offsets dy, dx
        ([n, 1] each) and uniform draws for the flips (or None); None for feature vectors."""
        if not self.images:
            return None
        device, p = self.inputs.device, self.padding
        dy = torch.randint(0, 2 * p + 1, (n, 1), generator=self.generator, device=device)
        dx = torch.randint(0, 2 * p + 1, (n, 1), generator=self.generator, device=device)
        flips = torch.rand(n, 1, generator=self.generator, device=device) if self.flip else None
        return dy, dx, flips

    def examples(self, index: Tensor, draws: tuple[Tensor, Tensor, Tensor | None] | None) -> Tensor:
        """The examples at `index`, augmented by `draws` (random crop with zero padding and horizontal flip as
        one gather: each example gets a row and column index grid, shifted by its crop offset and mirrored by its
        flip), standardised; images come channels_last."""
        if draws is None:
            return normalise(self.inputs[index], self.mean, self.std)
        dy, dx, flips = draws
        n, (h, w), device = len(index), self.inputs.shape[2:], index.device
        cols = torch.arange(w, device=device).expand(n, w)
        if flips is not None:
            cols = torch.where(flips < 0.5, w - 1 - cols, cols)
        rows = dy + torch.arange(h, device=device)
        cols = dx + cols
        # [n, h, w, C] gathered, then viewed as NCHW: this is exactly the channels_last layout.
        crops = self.padded[index[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return normalise(crops.permute(0, 3, 1, 2), self.mean, self.std)


def packed_batches(members: Sequence[Batches]) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of several runs' batches over the same data, as a packed network takes them: inputs [B, M*C, ...]
    (member m's examples in channels m*C..(m+1)*C-1) and labels [M, B]. Each member's order, crops and flips come
    from its own generator exactly as its own iteration draws them, so its examples are bit for bit the ones it
    would see alone; the gather and the standardisation run once for all members, from the first member's tensors.
    The members' data must be equal (a pack's runs share their data config); their shapes and settings are checked."""
    first, m = members[0], len(members)
    alike = all(b.inputs.shape == first.inputs.shape and b.inputs.dtype == first.inputs.dtype
                and (b.batch_size, b.padding, b.flip) == (first.batch_size, first.padding, first.flip)
                for b in members)  # fmt: skip
    require(alike, "the packed runs' batches must come from the same data, batch size and augmentation")
    for indexes in zip(*(b.indexes() for b in members)):
        draws = [b.draw(len(index)) for b, index in zip(members, indexes)]
        index = torch.cat(indexes)
        together = None if draws[0] is None else tuple(
            None if parts[0] is None else torch.cat(parts) for parts in zip(*draws))  # fmt: skip
        x = first.examples(index, together)
        x = x.unflatten(0, (m, -1)).movedim(0, 1).flatten(1, 2)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, first.labels[index].view(m, -1)
        if first.on_step is not None:
            first.on_step()


class Latest:
    """One derived value, kept for the latest source (the same object, with the same detail; None as the source
    when the detail says it all): the runs of a pack, and a process's successive runs over the same data, share it
    instead of holding one copy each. The old value is dropped before the new one is made, so two never coexist."""

    def __init__(self) -> None:
        self.entry: tuple[object, object, Any] | None = None

    def get(self, source: object, detail: object, make: Callable[[], Any]) -> Any:
        if self.entry is None or self.entry[0] is not source or self.entry[1] != detail:
            self.entry = None  # free the old value before making the new one
            self.entry = (source, detail, make())
        return self.entry[2]


_padded = Latest()
_last_loaded = Latest()  # load_dataset's: jobs of a sweep in one process share the data they agree on


def padded_images(images: Tensor, padding: int) -> Tensor:
    """images zero-padded by `padding` pixels on every side, made once per image tensor."""
    return _padded.get(images, padding, lambda: F.pad(images, (padding,) * 4))


def normalise(inputs: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (inputs.float() - mean) / std


def eval_batches(inputs: Tensor, labels: Tensor, batch_size: int, mean: Tensor, std: Tensor):
    """Sequential, unaugmented batches for evaluation (channels_last for images)."""
    images = inputs.dtype == torch.uint8 and inputs.ndim == 4
    for start in range(0, len(labels), batch_size):
        x = inputs[start : start + batch_size]
        if images:
            x = x.contiguous(memory_format=torch.channels_last)
        yield normalise(x, mean, std), labels[start : start + batch_size]
