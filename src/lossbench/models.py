"""Models: a small conv-BN-ReLU network sized for CIFAR-style 32x32 images."""

from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig
from torch import Tensor, nn

from lossbench.errors import LossbenchError, require


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Stages of two conv-BN-ReLU blocks and a 2x2 max-pool, then global average pooling and a linear head.
    Widths (32, 64, 128) give about 290k parameters."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128), in_channels: int = 3):
        super().__init__()
        stages, channels = [], in_channels
        for width in widths:
            stages += [conv_bn_relu(channels, width), conv_bn_relu(width, width), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    if cfg.name == "small_cnn":
        widths = [int(w) for w in cfg.widths]
        require(widths and all(w > 0 for w in widths), f"model.widths must be positive, not {widths}")
        return SmallCNN(num_classes, widths)
    raise LossbenchError(f"unknown model '{cfg.name}'; known: small_cnn")
