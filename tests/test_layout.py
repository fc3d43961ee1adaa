"""The CPU layouts a model's stages compute in: which there are, which a set of timings favours, which can run."""

from __future__ import annotations

import pytest
import torch

from lossbench.errors import LossbenchError
from lossbench.layout import CPU_LAYOUTS, LAYOUTS, fastest_layouts, layout_speed, layout_variants, onednn_missing
from lossbench.models import SmallCNN


def test_every_precision_is_timed_in_every_layout():
    assert layout_variants(["fp32", "bf16"]) == [
        ("fp32", "onednn"),
        ("fp32", "dense"),
        ("bf16", "onednn"),
        ("bf16", "dense"),
    ]
    assert CPU_LAYOUTS == ("auto", *LAYOUTS)


def test_each_precision_gets_its_own_faster_layout():
    seconds = {("fp32", "onednn"): 0.30, ("fp32", "dense"): 0.20, ("bf16", "onednn"): 0.10, ("bf16", "dense"): 0.15}
    assert fastest_layouts(seconds) == {"fp32": (0.20, "dense"), "bf16": (0.10, "onednn")}


def test_the_layouts_speed_is_said_at_the_chosen_precision():
    entry = {"fp32_onednn_s": 0.2, "fp32_dense_s": 0.3, "bf16_onednn_s": 0.1, "bf16_dense_s": 0.1}
    assert layout_speed(entry, "fp32") == "oneDNN's layout 1.50x the dense one's speed at fp32"
    assert layout_speed(entry, "bf16") == "oneDNN's layout 1.00x the dense one's speed at bf16"


@pytest.mark.parametrize("available", [True, False])
def test_only_oneDNNs_layout_on_a_cpu_needs_oneDNN(monkeypatch, available):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: available)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert onednn_missing("onednn", cpu) is not available
    assert not onednn_missing("dense", cpu) and not onednn_missing("auto", cpu) and not onednn_missing(None, cpu)
    assert not onednn_missing("onednn", cuda)


def test_a_model_takes_exactly_the_layouts_named_here():
    for layout in CPU_LAYOUTS:
        assert SmallCNN(3, cpu_layout=layout).cpu_layout == layout
    with pytest.raises(LossbenchError, match="model.cpu_layout must be one of auto, onednn, dense, not blocked"):
        SmallCNN(3, cpu_layout="blocked")
