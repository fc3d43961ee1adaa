"""The models' own promises: SmallCNN's pool-before-ReLU stages compute exactly what ReLU-before-pool would, and
its CPU layouts (oneDNN's blocked one, the dense one) train the same network."""

from __future__ import annotations

import pytest
import torch
from conftest import needs_bf16_kernels
from torch import nn

from lossbench.errors import LossbenchError
from lossbench.models import CNN1d, SmallCNN, conv_bn_relu


def relu_then_pool(model: SmallCNN) -> SmallCNN:
    """A copy of model whose every stage is conv-BN-ReLU, conv-BN-ReLU, max-pool (the textbook order), with its
    weights."""
    other = SmallCNN(model.head.out_features, widths=(4, 8), in_channels=3, cpu_layout=model.cpu_layout)
    for i in range(1, len(other.features), 3):
        conv = other.features[i][0]
        other.features[i] = conv_bn_relu(conv.in_channels, conv.out_channels)
        other.features[i + 1] = nn.MaxPool2d(2)
    other.load_state_dict(model.state_dict())  # same names: a checkpoint of either loads into the other
    return other


@pytest.mark.parametrize(
    "dtype, layout",
    [
        (None, "onednn"),
        (None, "dense"),
        pytest.param(torch.bfloat16, "onednn", marks=needs_bf16_kernels),
        (torch.bfloat16, "dense"),
    ],
)
def test_pooling_before_the_relu_is_bit_for_bit_relu_before_pooling(dtype, layout):
    torch.manual_seed(0)
    model = SmallCNN(5, widths=(4, 8), cpu_layout=layout).to(memory_format=torch.channels_last)
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


def twins(**kwargs) -> tuple[SmallCNN, SmallCNN]:
    """The same SmallCNN (weights included) in oneDNN's blocked layout and in the dense one, channels_last."""
    torch.manual_seed(0)
    onednn = SmallCNN(5, widths=(8, 16), cpu_layout="onednn", **kwargs)
    dense = SmallCNN(5, widths=(8, 16), cpu_layout="dense", **kwargs)
    dense.load_state_dict(onednn.state_dict())
    return onednn.to(memory_format=torch.channels_last), dense.to(memory_format=torch.channels_last)


def images(n: int = 32, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
@pytest.mark.parametrize("stem_stride", [1, 2])
def test_the_onednn_layout_trains_what_the_dense_layout_trains(stem_stride):
    onednn, dense = twins(stem_stride=stem_stride)
    x = images(size=16 * stem_stride)
    assert onednn.in_onednn_layout(x) and not dense.in_onednn_layout(x)
    outputs = []
    for net in (onednn, dense):
        out = net(x)
        out.logsumexp(dim=1).mean().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(onednn.named_parameters(), dense.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)
    for (name, a), b in zip(onednn.named_buffers(), dense.buffers()):  # batch norm's running statistics
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    with torch.inference_mode():  # evaluation: batch norm from its running statistics
        torch.testing.assert_close(onednn.eval()(x), dense.eval()(x), rtol=1e-4, atol=1e-5)


@needs_bf16_kernels
def test_under_bf16_autocast_the_onednn_layout_computes_in_bf16_as_the_dense_one_does():
    onednn, dense = twins()
    x = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = onednn(x), dense(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in onednn.parameters())  # the optimiser's fp32 weights


def test_an_unknown_cpu_layout_is_one_clear_error():
    with pytest.raises(LossbenchError, match="model.cpu_layout must be one of auto, onednn, dense, not blocked"):
        SmallCNN(5, cpu_layout="blocked")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_gradients_through_frozen_batch_norm_fall_back_to_the_dense_layout():
    onednn, dense = twins()
    x = images()
    assert not onednn.eval().in_onednn_layout(x)  # oneDNN's batch norm has no backward in eval mode
    with torch.no_grad():
        assert onednn.in_onednn_layout(x)  # evaluation itself keeps the fast layout
    onednn(x).sum().backward()
    dense.eval()(x).sum().backward()
    for a, b in zip(onednn.parameters(), dense.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_an_unmeasured_auto_layout_is_onednn():
    x = images()
    assert SmallCNN(5, widths=(8, 16), cpu_layout="auto").in_onednn_layout(x)


@pytest.mark.parametrize("readout", ["centre", "pool"])
def test_cnn1d_takes_windows_of_a_sequence_and_gives_one_logit_row_each(readout):
    model = CNN1d(num_classes=8, input_shape=(22, 15), widths=(8, 8), kernel_size=5, readout=readout)
    assert model(torch.randn(4, 22, 15)).shape == (4, 8)
    assert model(torch.randn(4, 22, 1)).shape == (4, 8)  # a window of one position still works


def test_cnn1d_centre_readout_sees_exactly_its_receptive_field():
    # two layers of kernel 3: the centre's output depends on positions centre-2 .. centre+2 and nothing further
    model = CNN1d(num_classes=2, input_shape=(3, 9), widths=(4, 4), kernel_size=3).eval()
    x = torch.randn(1, 3, 9)
    far, near = x.clone(), x.clone()
    far[:, :, [0, 1, 7, 8]] += 5.0
    near[:, :, 6] += 5.0
    assert torch.allclose(model(far), model(x)) and not torch.allclose(model(near), model(x))


def test_cnn1d_learns_a_label_carried_by_the_centre_of_the_window():
    """A tiny learnable problem: the class is which of 3 one-hot channels is set at the centre position; the rest
    of the window is noise. A few hundred steps of Adam reach near-perfect accuracy (chance: 1/3)."""
    generator = torch.Generator().manual_seed(0)
    n, channels, length = 512, 5, 9
    x = torch.eye(channels)[torch.randint(0, channels, (n, length), generator=generator)].transpose(1, 2)
    y = torch.randint(0, 3, (n,), generator=generator)
    x[:, :, length // 2] = torch.eye(channels)[y]
    torch.manual_seed(0)
    model = CNN1d(num_classes=3, input_shape=(channels, length), widths=(16, 16), kernel_size=3)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.95


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (22,)}, r"model=cnn1d needs inputs shaped \[N, channels, positions\], not \[N, 22\]"),
        ({"kernel_size": 4}, "model.kernel_size must be odd and positive"),
        ({"readout": "last"}, "model.readout must be one of centre, pool, not last"),
        ({"widths": []}, "model.widths must be positive"),
    ],
)
def test_cnn1d_bad_settings_are_one_clear_error(kwargs, message):
    with pytest.raises(LossbenchError, match=message):
        CNN1d(**{"num_classes": 3, "input_shape": (4, 9), **kwargs})
