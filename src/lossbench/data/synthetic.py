"""Deterministic CIFAR-style images generated in code, for demos and tests that need no download: classes with a
higher mutual score look more alike, so a model's confusions follow the score table."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.data.classes import CIFAR10_CLASSES, CIFAR100_CLASSES
from lossbench.data.dataset import Dataset, Select, subsets
from lossbench.data.sources import Source
from lossbench.errors import require

SYNTHETIC_NAMES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}


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
        return subsets(synthetic(self, classes, scores), select)


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
