"""Hydra launchers: the SLURM config shipped in lossbench.configs composes onto the submitit plugin, a
comparison runs its jobs in parallel processes through the joblib launcher, and one run through submitit's local
executor survives a killed job."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HANG_S, lossbench
from hydra import compose, initialize_config_module

from lossbench.rundir import read_status


def test_slurm_launcher_config_extends_submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_module("lossbench.configs", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    # Our values over the plugin's defaults, the command line over ours, the plugin's other keys still there.
    assert (launcher.gpus_per_node, launcher.cpus_per_task, launcher.mem_gb) == (1, 4, 16)
    assert (launcher.partition, launcher.timeout_min) == ("gpu", 30)
    assert launcher.max_num_timeout == 0
    assert launcher.submitit_folder.endswith("/.submitit/%j")  # the plugin's default, inside the sweep directory
    assert "account" in launcher and "additional_parameters" in launcher


def test_compare_runs_jobs_through_joblib(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = tmp_path / "cmp"
    result = lossbench(
        "compare",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "losses=[ce,expected_score]",
        "train.epochs=1",
        "train.progress=false",
        "data.train_size=300",
        "data.test_size=200",
        "model.widths=[8,8,8]",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr  # the plugin launched the jobs
    assert (out / "summary.md").is_file()
    with (out / "curves.csv").open(newline="") as f:
        losses = {row["loss"] for row in csv.DictReader(f)}
    assert losses == {"ce", "expected_score"}
    # Each job wrote its own run directory, from its own process.
    for name in ("ce", "expected_score"):
        assert (out / f"loss={name},seed=0" / "metrics.csv").is_file()

    rebuilt = lossbench("report", str(out), cwd=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "expected_score" in (out / "summary.md").read_text()


def job_logs(comparison: Path) -> dict[int, str]:
    """submitit_local's jobs: controller pid (the job id, also its folder's name) -> the job's log so far."""
    logs = {}
    for log in comparison.glob(".submitit/*/*_0_log.out"):
        if log.parent.name.isdigit():
            logs[int(log.parent.name)] = log.read_text(errors="replace")
    return logs


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (the controller starts the job's task as its child)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the job's process through /proc")
def test_compare_through_submitit_local_survives_a_killed_job(tmp_path):
    """The job packaging SLURM uses, without a scheduler: each run is a pickled submitit job in its own process.
    One job is SIGKILLed after its first epoch (as the OOM killer or a preempted node would); `resume` then
    finishes it from its checkpoint, leaves the finished run alone, and reports both."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = tmp_path / "cmp"
    command = [
        sys.executable,
        "-m",
        "lossbench.cli",
        "compare",
        "hydra/launcher=submitit_local",
        "losses=[ce,expected_score]",
        "train.epochs=5",
        "train.progress=false",
        "data.train_size=2048",
        "data.test_size=256",
        "model.widths=[8,16,16]",
        "--out",
        str(out),
    ]
    compare = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG_S
        victim = None
        while victim is None and compare.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            victim = next((pid for pid, log in job_logs(out).items() if "expected_score seed 0 epoch 1/5" in log), None)
            # the epoch's log line comes before its checkpoint; the status records the epoch after it
            if victim is not None and read_status(out / "loss=expected_score,seed=0")["epoch"] < 1:
                victim = None
        assert victim is not None, "the expected_score job never finished its first epoch"
        tasks = child_pids(victim)
        assert len(tasks) == 1, f"submitit controller {victim} has tasks {tasks}"
        os.kill(tasks[0], signal.SIGKILL)
        _, stderr = compare.communicate(timeout=HANG_S)
    finally:
        if compare.poll() is None:
            compare.kill()
            compare.communicate()
    killed = out / "loss=expected_score,seed=0"
    status = json.loads((killed / "status.json").read_text())
    # Five epochs leave the poll above four epochs' time to kill it before it ends, even on a loaded machine.
    assert status["status"] == "running" and status["epoch"] < 5, "the job finished before it was killed"
    # compare reports what finished and says how to continue.
    assert compare.returncode == 1, stderr
    assert f"continue with `lossbench resume {out}`" in stderr
    assert "| ce | 1 | 1 finished |" in (out / "summary.md").read_text()

    resumed = lossbench("resume", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("ce", "expected_score"):
        assert json.loads((out / f"loss={name},seed=0" / "status.json").read_text())["status"] == "finished"
    with (killed / "metrics.csv").open(newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2, 3, 4, 5]  # continued, no epoch twice
    with (out / "summary.csv").open(newline="") as f:
        rows = {row["loss"]: row for row in csv.DictReader(f)}
    assert {name: row["status"] for name, row in rows.items()} == {"ce": "1 finished", "expected_score": "1 finished"}
    assert any(f"{killed}: resuming after epoch" in log for log in job_logs(out).values())


@pytest.mark.parametrize(
    "launcher, plugin", [("joblib", "hydra_joblib_launcher"), ("submitit_local", "hydra_submitit_launcher")]
)
def test_tune_prunes_trials_run_in_other_processes(tmp_path, launcher, plugin):
    """A trial's job in a launcher's worker process (joblib's, submitit's) opens the study, reports each epoch and
    is stopped by the pruner; its run directory and tune.json say pruned."""
    pytest.importorskip("optuna", minversion="4")
    pytest.importorskip(f"hydra_plugins.{plugin}")
    result = lossbench(
        "tune",
        f"hydra/launcher={launcher}",
        "losses=[soft_label_ce]",
        "train.epochs=3",
        "train.progress=false",
        "data.train_size=256",
        "data.test_size=128",
        "data.val_size=128",
        "seeds=[0]",
        "tune.pruner_startup=1",
        "tune.prune_after=1",
        "tune.search_only=true",
        "--trials",
        "4",
        "--out",
        "t",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "t" / "tuning" / "soft_label_ce"
    if launcher == "joblib":
        assert "Joblib.Parallel" in result.stdout + result.stderr
    else:
        assert (folder / ".submitit").is_dir()
    trials = json.loads((tmp_path / "t" / "tune.json").read_text())["losses"]["soft_label_ce"]["trials"]
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert pruned and all(t["status"] in ("finished", "pruned") for t in trials)
    for trial in pruned:
        status = read_status(folder / f"trial_{trial['trial']}")
        assert status["status"] == "pruned" and f"after epoch {trial['pruned_at']} of 3" in status["message"]
