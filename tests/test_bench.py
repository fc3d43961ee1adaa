"""scripts/bench_throughput.py: its packed network is its members side by side, and the script runs end to end."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lossbench.models import SmallCNN

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def members(count: int) -> list[SmallCNN]:
    nets = []
    for seed in range(count):
        torch.manual_seed(seed)
        nets.append(SmallCNN(5, widths=(4, 8)))
    for net in nets:  # running statistics that differ between members, so that eval mode tests them too
        with torch.no_grad():
            net(torch.randn(16, 3, 16, 16))
    return nets


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_packed_network_computes_each_members_logits_and_gradients(bench, mode):
    nets = members(3)
    packed = bench.PackedSmallCNN(nets)
    batches = [(torch.randn(6, 3, 16, 16), torch.randint(0, 5, (6,))) for _ in nets]
    x, y = bench.pack_batches(batches)
    assert x.shape == (6, 9, 16, 16) and y.shape == (3, 6)
    logits = getattr(packed, mode)()(x)
    assert logits.shape == (3, 6, 5)
    sum(torch.nn.functional.cross_entropy(logits[m], y[m]) for m in range(3)).backward()
    for m, (net, (xm, ym)) in enumerate(zip(nets, batches)):
        own = getattr(net, mode)()(xm)
        torch.testing.assert_close(logits[m], own, atol=1e-5, rtol=1e-4)
        torch.nn.functional.cross_entropy(own, ym).backward()
        torch.testing.assert_close(packed.head_weight.grad[m], net.head.weight.grad, atol=1e-5, rtol=1e-4)
        first_conv = packed.features[0].weight.grad.chunk(3)[m]
        torch.testing.assert_close(first_conv, net.features[0][0].weight.grad, atol=1e-5, rtol=1e-4)
    if mode == "train":  # each member's batch statistics went into its own running mean
        for m, net in enumerate(nets):
            torch.testing.assert_close(packed.features[1].running_mean.chunk(3)[m], net.features[0][1].running_mean)


def test_the_benchmark_runs_and_prints_its_verdict_lines(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--precision", "fp32", "--rounds", "1",
                           "--steps", "1", "--warmup", "0", "--batch-size", "16", "--pack", "2"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for prefix in ("efficiency: ", "ratio: ", "pack: "):
        line = next(line for line in lines if line.startswith(prefix))
        assert float(line.removeprefix(prefix).split()[0]) > 0
    assert "packed: 2 SmallCNNs as one network" in done.stdout


def test_the_benchmark_refuses_a_negative_pack():
    done = subprocess.run([sys.executable, str(SCRIPT), "--pack", "-1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--pack" in done.stderr
