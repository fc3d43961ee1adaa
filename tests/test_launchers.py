"""Hydra launchers: the SLURM config shipped in lossbench.configs composes onto the submitit plugin, and a
comparison runs its jobs in parallel processes through the joblib launcher."""

from __future__ import annotations

import csv

import pytest
from conftest import lossbench
from hydra import compose, initialize_config_module


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
