"""The training loop: metrics.csv columns, determinism, controlled comparisons, divergence, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import TINY, make_cfg
from lossbench.errors import LossbenchError
from lossbench.metrics import METRIC_COLUMNS, TIMING_COLUMNS
from lossbench.rundir import CHECKPOINT_FILE, read_status
from lossbench.train import train_run


def metrics(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")


def without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=TIMING_COLUMNS)


def test_run_writes_config_status_and_the_guide_columns(tmp_path, tiny_cfg):
    assert train_run(tiny_cfg, tmp_path / "run") == "finished"
    frame = metrics(tmp_path / "run")
    assert list(frame.columns) == METRIC_COLUMNS
    assert frame["epoch"].tolist() == [1, 2]
    assert frame["step"].tolist() == [4, 8]  # 256 images / batch 64
    assert frame["test_acc"].between(0, 1).all() and (frame["grad_norm"] > 0).all()
    assert read_status(tmp_path / "run")["status"] == "finished"
    assert (tmp_path / "run" / "config.yaml").exists()


def test_same_seed_same_metrics_on_cpu(tmp_path, tiny_cfg):
    train_run(tiny_cfg, tmp_path / "a")
    train_run(tiny_cfg, tmp_path / "b")
    pd.testing.assert_frame_equal(without_timing(metrics(tmp_path / "a")), without_timing(metrics(tmp_path / "b")))


def test_losses_share_initial_weights_and_data_order(tmp_path):
    """A controlled comparison: with lr=0 the loss cannot matter, so every loss sees the same model and data."""
    frames = []
    for loss in ("ce", "expected_score"):
        cfg = make_cfg(*TINY, f"loss={loss}", "optim.lr=1e-12", "optim.weight_decay=0")
        train_run(cfg, tmp_path / loss)
        frames.append(metrics(tmp_path / loss))
    for column in ("train_acc", "test_acc", "test_nll", "test_score"):
        assert frames[0][column].tolist() == frames[1][column].tolist()


def test_existing_run_directory_is_never_overwritten(tmp_path, tiny_cfg):
    train_run(tiny_cfg, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.csv").read_text()
    with pytest.raises(LossbenchError, match="already has results; continue it with `lossbench resume"):
        train_run(tiny_cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.csv").read_text() == before


def test_divergence_stops_and_is_marked(tmp_path):
    cfg = make_cfg(*TINY, "train.epochs=3", "optim.lr=1e30", "optim.warmup_epochs=0")
    assert train_run(cfg, tmp_path / "run") == "diverged"
    status = read_status(tmp_path / "run")
    assert status["status"] == "diverged" and "loss became" in status["message"]
    assert train_run(cfg, tmp_path / "run", resume=True) == "diverged"  # final: not trained again
    assert read_status(tmp_path / "run") == status


def test_resume_of_a_finished_run_changes_nothing(tmp_path, tiny_cfg):
    train_run(tiny_cfg, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.csv").read_text()
    assert train_run(tiny_cfg, tmp_path / "run", resume=True) == "finished"
    assert (tmp_path / "run" / "metrics.csv").read_text() == before


def test_checkpoint_loads_with_weights_only(tmp_path, tiny_cfg):
    train_run(tiny_cfg, tmp_path / "run")
    state = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 2 and "model" in state and "data_rng" in state


@pytest.mark.slow
def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path):
    """kill -9 a real `lossbench run` after its first checkpoint, resume it, compare with a straight run."""
    overrides = [*TINY, "train.epochs=4", "data.train_size=1024"]
    train_run(make_cfg(*overrides), tmp_path / "straight")

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "lossbench.cli", "run", *overrides, f"hydra.run.dir={killed}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while not (killed / CHECKPOINT_FILE).exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = read_status(killed)["epoch"]
    assert done < 4, "the run finished before it could be killed"

    result = subprocess.run([sys.executable, "-m", "lossbench.cli", "resume", str(killed)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((killed / "status.json").read_text())["status"] == "finished"
    pd.testing.assert_frame_equal(without_timing(metrics(killed)), without_timing(metrics(tmp_path / "straight")))
