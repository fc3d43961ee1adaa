"""Batching on the device: training batches cut by index from a device-side permutation, with crop and flip
augmentation as batched tensor ops (no per-example Python in the hot loop); a pack's members' batches as one
packed tensor; and sequential evaluation batches. Inputs are standardised by feature_stats' mean and std."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.data.latest import Latest
from lossbench.errors import require


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
    alike = all(
        b.inputs.shape == first.inputs.shape
        and b.inputs.dtype == first.inputs.dtype
        and (b.batch_size, b.padding, b.flip) == (first.batch_size, first.padding, first.flip)
        for b in members
    )
    require(alike, "the packed runs' batches must come from the same data, batch size and augmentation")
    for indexes in zip(*(b.indexes() for b in members)):
        draws = [b.draw(len(index)) for b, index in zip(members, indexes)]
        index = torch.cat(indexes)
        together = (
            None if draws[0] is None else tuple(None if parts[0] is None else torch.cat(parts) for parts in zip(*draws))
        )
        x = first.examples(index, together)
        x = x.unflatten(0, (m, -1)).movedim(0, 1).flatten(1, 2)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, first.labels[index].view(m, -1)
        if first.on_step is not None:
            first.on_step()


_padded = Latest()  # padded_images': one padded copy of the latest image tensor


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
