"""Models, each a `_target_` of the `model` config group built with num_classes (and in_channels or
input_shape where the class takes them): a small CNN sized for 32x32 (or, with a stride-2 stem, 64x64) images,
torchvision's ResNet-18 in its CIFAR form, an MLP for feature vectors and a 1-D CNN for windows of a sequence
([N, channels, positions], e.g. one-hot residues around the one to classify). Any importable nn.Module class taking
num_classes works too (`model=custom model._target_=mypkg.MyNet`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from lossbench.components import build
from lossbench.errors import require
from lossbench.layout import CPU_LAYOUTS


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(*conv_bn(in_channels, out_channels, stride), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Stages of two conv-BN-ReLU blocks and a 2x2 max-pool, then global average pooling and a linear head.
    Widths (32, 64, 128) give about 290k parameters. stem_stride=2 makes the first conv halve the input, so a
    64x64 image costs about what a 32x32 one does.

    Each stage's second ReLU comes after its pool: a maximum commutes with ReLU, so the output, the gradients and
    the pool's choice among ties are bit for bit those of ReLU-then-pool, while the ReLU touches a quarter of the
    elements (a small share of a training step: docs/performance.md). The modules keep the indices and names
    of the ReLU-then-pool layout, so checkpoints of either load into the other.

    cpu_layout: on a CPU the convolutional stages compute in oneDNN's own blocked layout ("onednn", where
    convolution, batch norm, ReLU and pooling are all oneDNN kernels) or in the input's dense layout ("dense":
    channels_last in a run, where only the convolutions are oneDNN's); "auto" (a run's default) is the faster of
    the two on this machine, measured with the precision when a run starts and cached (lossbench.layout,
    lossbench.precision), and "onednn" until then.
    The blocked tensors carry autocast's dtype themselves (a blocked input takes the dense fp32 weights), so
    autocast is off inside the stages; the result returns dense before the head. CUDA, torch.compile, a torch
    without oneDNN and eval mode with gradients on use the dense layout whatever the setting."""

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        in_channels: int = 3,
        stem_stride: int = 1,
        cpu_layout: str = "onednn",
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        require(widths and all(w > 0 for w in widths), f"model.widths must be positive, not {widths}")
        require(stem_stride in (1, 2), f"model.stem_stride must be 1 or 2, not {stem_stride}")
        require(
            cpu_layout in CPU_LAYOUTS, f"model.cpu_layout must be one of {', '.join(CPU_LAYOUTS)}, not {cpu_layout}"
        )
        self.cpu_layout = cpu_layout
        stages, channels = [], in_channels
        for i, width in enumerate(widths):
            first = conv_bn_relu(channels, width, stem_stride if i == 0 else 1)
            stages += [first, conv_bn(width, width), nn.Sequential(nn.MaxPool2d(2), nn.ReLU())]
            channels = width
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)
        self.min_size = stem_stride * 2 ** len(widths)  # each stage halves; below this a feature map is empty

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(x).mean(dim=(2, 3)))

    def stages(self, x: Tensor) -> Tensor:
        """The convolutional stages' output, dense, computed in the layout cpu_layout gives."""
        if not self.in_onednn_layout(x):
            return self.features(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
        with torch.autocast("cpu", enabled=False):
            return self.features(x.to_mkldnn(dtype)).to_dense()

    def in_onednn_layout(self, x: Tensor) -> bool:
        """Whether this forward computes its stages in oneDNN's blocked layout (see cpu_layout). Not in eval mode
        with gradients on (frozen statistics while training something): oneDNN's batch norm has no backward there."""
        usable = self.training or not torch.is_grad_enabled()
        return (
            usable
            and self.cpu_layout != "dense"
            and x.device.type == "cpu"
            and torch.backends.mkldnn.is_available()
            and not torch.compiler.is_compiling()
        )


def resnet18_cifar(num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: a 3x3 stride-1 first conv and no max-pool."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class MLP(nn.Module):
    """Flatten, then Linear-BatchNorm-ReLU-Dropout blocks and a linear head: for feature vectors."""

    def __init__(
        self, num_classes: int, input_shape: Sequence[int], hidden: Sequence[int] = (256, 256), dropout: float = 0.1
    ):
        super().__init__()
        hidden = [int(h) for h in hidden]
        require(all(h > 0 for h in hidden), f"model.hidden must be positive, not {hidden}")
        require(0 <= dropout < 1, f"model.dropout must be in [0, 1), not {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        features = math.prod(input_shape)
        for width in hidden:
            layers += [nn.Linear(features, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            features = width
        layers.append(nn.Linear(features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


READOUTS = ("centre", "pool")


class CNN1d(nn.Module):
    """Conv1d-BatchNorm-ReLU layers, then a readout and a linear head: for windows of a sequence shaped
    [N, channels, positions], one-hot residues or atoms. Dropout before the head. Two readouts:
    - `centre` (the label belongs to the middle of the window): the centre's output depends only on the
      `reach` = layers x (kernel_size // 2) positions to either side, so the window is cut to those (or
      zero-padded to them when shorter) and the convolutions run unpadded, each layer shortening it by
      kernel_size - 1 down to the centre alone. The same network with 'same' padding computes every position
      only to read one: 3.3x the arithmetic at 3 layers of kernel 5 on a window of 15.
    - `pool` (a label of the whole window): 'same' padding, then the mean over the positions."""

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        widths: Sequence[int] = (32, 32, 32),
        kernel_size: int = 5,
        readout: str = "centre",
        dropout: float = 0.1,
    ):
        super().__init__()
        require(
            len(input_shape) == 2,
            f"model=cnn1d needs inputs shaped [N, channels, positions], not "
            f"[N, {', '.join(str(d) for d in input_shape)}]",
        )
        widths = [int(w) for w in widths]
        require(widths and all(w > 0 for w in widths), f"model.widths must be positive, not {widths}")
        require(
            kernel_size > 0 and kernel_size % 2 == 1,
            f"model.kernel_size must be odd and positive (a window centred on each position), not {kernel_size}",
        )
        require(readout in READOUTS, f"model.readout must be one of {', '.join(READOUTS)}, not {readout}")
        require(0 <= dropout < 1, f"model.dropout must be in [0, 1), not {dropout}")
        layers: list[nn.Module] = []
        channels, padding = int(input_shape[0]), 0 if readout == "centre" else kernel_size // 2
        for width in widths:
            layers += [
                nn.Conv1d(channels, width, kernel_size, padding=padding, bias=False),
                nn.BatchNorm1d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.readout = readout
        self.reach = len(widths) * (kernel_size // 2)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        if self.readout == "pool":
            return self.head(self.features(x).mean(dim=2))
        return self.head(self.features(self.around_centre(x)).flatten(1))

    def around_centre(self, x: Tensor) -> Tensor:
        """The centre position of x and `reach` positions to either side, zero-padded where x is shorter."""
        centre, reach = x.shape[2] // 2, self.reach
        left, right = max(0, reach - centre), max(0, centre + reach + 1 - x.shape[2])
        if left or right:
            x, centre = nn.functional.pad(x, (left, right)), centre + left
        return x[:, :, centre - reach : centre + reach + 1]


def build_model(cfg: DictConfig, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """The model of the config's `_target_`, with the run-time sizes it accepts."""
    shape = tuple(int(d) for d in input_shape)
    runtime = {"num_classes": num_classes, "input_shape": shape}
    if len(shape) == 3:
        runtime["in_channels"] = shape[0]
    model = build(cfg, "model", **runtime)
    require(
        isinstance(model, nn.Module), f"model._target_={cfg._target_} built a {type(model).__name__}, not an nn.Module"
    )
    size = getattr(model, "min_size", 1)
    if len(shape) == 3:
        require(
            min(shape[1:]) >= size,
            f"model: needs images of at least {size}x{size} pixels (fewer stages or "
            f"stem_stride=1), not {shape[1]}x{shape[2]}",
        )
    return model
