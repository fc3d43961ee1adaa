"""The training device: which one `device=` names, cuDNN's autotuning on it, and a dataset's copy there."""

from __future__ import annotations

import torch

from lossbench.data.batching import feature_stats
from lossbench.data.dataset import Dataset
from lossbench.data.latest import Latest


def resolve_device(name: str) -> torch.device:
    """The device of `device=name`."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def configure_cudnn(device: torch.device, benchmark: bool) -> None:
    """On CUDA, whether cuDNN times its convolution algorithms once per shape (`train.cudnn_benchmark`, off by
    default). Timing costs seconds per shape, the evaluation's included, and all processes sharing a GPU pay it at
    once, for a gain too small to pay for it (measured: docs/performance.md). A CPU run leaves cuDNN's settings as
    they are."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = benchmark


_device_copy = Latest()


def on_device(data: Dataset, device: torch.device) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor]]:
    """The dataset on `device` and its training inputs' mean and std (feature_stats), made once: the runs of a
    pack share them (load_dataset's own cache hands them the same host dataset), where each run computing the
    statistics again added up to seconds of a large pack's start-up (docs/performance.md). Copy and statistics are
    dropped together, before the next dataset's are made."""

    def copy_and_stats() -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor]]:
        copy = data.to(device)
        return copy, feature_stats(copy.train_x)

    return _device_copy.get(data, str(device), copy_and_stats)
