"""The models' own promises: SmallCNN's pool-before-ReLU stages compute exactly what ReLU-before-pool would."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lossbench.models import SmallCNN, conv_bn_relu


def relu_then_pool(model: SmallCNN) -> SmallCNN:
    """A copy of model whose every stage is conv-BN-ReLU, conv-BN-ReLU, max-pool (the textbook order), with its
    weights."""
    other = SmallCNN(model.head.out_features, widths=(4, 8), in_channels=3)
    for i in range(1, len(other.features), 3):
        conv = other.features[i][0]
        other.features[i] = conv_bn_relu(conv.in_channels, conv.out_channels)
        other.features[i + 1] = nn.MaxPool2d(2)
    other.load_state_dict(model.state_dict())  # same names: a checkpoint of either loads into the other
    return other


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_pooling_before_the_relu_is_bit_for_bit_relu_before_pooling(dtype):
    torch.manual_seed(0)
    model = SmallCNN(5, widths=(4, 8)).to(memory_format=torch.channels_last)
    textbook = relu_then_pool(model).to(memory_format=torch.channels_last)
    # Integers in bf16 make ties inside pooling windows common: the pool must pick the same element in both.
    x = torch.randint(-2, 3, (16, 3, 16, 16)).float().contiguous(memory_format=torch.channels_last)
    outputs = []
    for net in (model, textbook):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x)
        out.float().square().sum().backward()
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])
    for (name, a), b in zip(model.named_parameters(), textbook.parameters()):
        assert torch.equal(a.grad, b.grad), name
    for a, b in zip(model.buffers(), textbook.buffers()):
        assert torch.equal(a, b)
