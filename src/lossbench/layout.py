"""The memory layout a model's convolutional stages compute in on a CPU (models.SmallCNN's `cpu_layout`):
oneDNN's own blocked layout ("onednn") or the input's dense one ("dense", channels_last in a run); "auto" leaves
the choice to lossbench. Which is faster depends on the CPU's kernels and no flag predicts it, so for "auto" each
layout is timed in each precision a run may take (lossbench.precision measures, caches and records the pair);
this module says which layouts there are, which one a set of timings favours at a precision, and which can run
on this torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch

LAYOUTS = ("onednn", "dense")  # what a model's cpu_layout=auto chooses between
CPU_LAYOUTS = ("auto", *LAYOUTS)  # what model.cpu_layout accepts
NO_ONEDNN = "this torch has no oneDNN"

Key = TypeVar("Key")


def onednn_missing(layout: str | None, device: torch.device) -> bool:
    """Whether `layout` asks for oneDNN's layout on a CPU whose torch has no oneDNN (the model then computes dense
    by itself: the user who asked for oneDNN's layout should hear why it is not used)."""
    return layout == "onednn" and device.type == "cpu" and not torch.backends.mkldnn.is_available()


def layout_variants(keys: list[Key]) -> list[tuple[Key, str]]:
    """Every (key, layout) to time: each of `keys` (the precisions a setting allows) in each layout."""
    return [(key, layout) for key in keys for layout in LAYOUTS]


def fastest_layouts(seconds: Mapping[tuple[Key, str], float]) -> dict[Key, tuple[float, str]]:
    """For each key (a precision), its fastest step seconds and the layout that gave them."""
    best: dict[Key, tuple[float, str]] = {}
    for (key, layout), s in seconds.items():
        if key not in best or s < best[key][0]:
            best[key] = (s, layout)
    return best


def layout_speed(entry: Mapping[str, Any], precision: str) -> str:
    """Why the layout: oneDNN's speed against the dense layout's at `precision`, from a cached entry's
    `{precision}_{layout}_s` step seconds."""
    speed = entry[f"{precision}_dense_s"] / entry[f"{precision}_onednn_s"]
    return f"oneDNN's layout {speed:.2f}x the dense one's speed at {precision}"
