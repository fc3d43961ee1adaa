"""Shared test helpers: tiny configs that train in a second on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from lossbench.cpus import cpu_features
from lossbench.data.dataset import Dataset

# For a test that runs oneDNN's bf16 kernels themselves. The fallback on a CPU without them (AVX2 only) is tested
# on every machine by forcing the capability check's answer (tests/test_precision.py).
needs_bf16_kernels = pytest.mark.skipif(
    not cpu_features().onednn_bf16, reason="this CPU has no oneDNN bf16 kernels (AVX2 only)"
)

# Tiny runs train on the CPU, where a seed repeats bit for bit, wherever the suite runs; tests/test_cuda.py covers
# the GPU. LOSSBENCH_TEST_DEVICE=cuda runs them on the GPU instead (repeat-exactly tests then fail by design).
TINY = [
    f"device={os.environ.get('LOSSBENCH_TEST_DEVICE', 'cpu')}",
    "train.epochs=2",
    "train.batch_size=64",
    "train.progress=false",
    "data.train_size=256",
    "data.test_size=128",
    "model.widths=[8,8,8]",
]


def make_cfg(*overrides: str) -> DictConfig:
    with initialize_config_module("lossbench.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def evaluation_case(side: int, sizes: tuple[int, int, int]):
    """What `evaluate` takes, small and seeded: a linear model on random 3-class `side`x`side` images (train,
    test, val sizes), a score table with a near miss, and the normalisation. Returns (model, data, scores, mean,
    std)."""
    generator = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=generator)  # noqa: E731
    labels = lambda n: torch.randint(0, 3, (n,), generator=generator)  # noqa: E731
    train, test, val = sizes
    data = Dataset(images(train), labels(train), images(test), labels(test), ["a", "b", "c"], images(val), labels(val))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * side * side, 3))
    scores = torch.tensor([[2.0, 1.0, -1.0], [1.0, 2.0, -1.0], [-1.0, -1.0, 2.0]])
    return model, data, scores, torch.full((1, 3, 1, 1), 128.0), torch.full((1, 3, 1, 1), 64.0)


# Every wait in the suite is bounded by this, against a hang, never as a speed: on a 2-core machine whose cores
# other processes keep busy (CI's may be shared) a tiny comparison took over 300 s, and must still pass.
HANG_S = 1800


def flipped(data: bytes, start: int) -> bytes:
    return data[:start] + bytes(b ^ 0x5A for b in data[start : start + 64]) + data[start + 64 :]


# The ways an .npz file arrives damaged, for the tests of every reader of one (parametrize over the values, with
# the keys as ids): each must give one line naming the file, never a traceback.
NPZ_DAMAGES = {
    "empty": lambda data: b"",
    "not an archive": lambda data: b"not an archive",
    "cut short": lambda data: data[: len(data) // 2],  # a partial copy, a full disk
    "overwritten": lambda data: data[:30] + bytes(len(data) - 30),
    "inflates no more": lambda data: flipped(data, 60),  # a compressed member (zlib's error)
    "bad CRC": lambda data: flipped(data, len(data) // 2),  # zipfile's error
}


def lossbench(
    *args: str, cwd: Path, timeout: float = HANG_S, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (as a user would), returning its output; `env` adds variables."""
    return subprocess.run(
        [sys.executable, "-m", "lossbench.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def tiny_cfg() -> DictConfig:
    return make_cfg(*TINY)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Caches (precision=auto's measurements, decoded image folders) go to the test's tmp_path, never the
    user's ~/.cache; subprocesses inherit it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def layout_by_timer(monkeypatch, tmp_path, faster: str) -> None:
    """Make the CPU layout measurement answer `faster`, with a cache of its own (as on another machine)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / f"cache-{faster}"))
    seconds = lambda model, x, dtype: 0.1 if model.cpu_layout == faster else 0.2  # noqa: E731
    monkeypatch.setattr("lossbench.precision.time_step", seconds)
