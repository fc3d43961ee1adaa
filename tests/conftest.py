"""Shared test helpers: tiny configs that train in a second on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

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


def lossbench(*args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
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
