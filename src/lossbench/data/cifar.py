"""torchvision's CIFAR-10 and CIFAR-100 as a source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lossbench.data.classes import CIFAR10_CLASSES, CIFAR100_CLASSES
from lossbench.data.dataset import Dataset, Select, restrict, subsets
from lossbench.data.sources import Source
from lossbench.errors import LossbenchError


@dataclass(kw_only=True)
class TorchvisionCIFAR(Source):
    """torchvision's CIFAR-10 or CIFAR-100 (downloaded into root when download is true)."""

    variant: str = "cifar10"
    root: str = "data"
    download: bool = True

    def available_classes(self) -> list[str]:
        return list(CIFAR10_CLASSES if self.variant == "cifar10" else CIFAR100_CLASSES)

    def read(self, classes: list[str], scores: Tensor, select: Select) -> Dataset:
        return subsets(restrict(_torchvision_cifar(self), classes), select)


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
