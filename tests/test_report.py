"""The report from hand-made run directories: swept-parameter detection, summary statistics, convergence
measures (target, epochs/seconds to target, AUC), runs without metrics, and the figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from lossbench.errors import LossbenchError
from lossbench.metrics import METRIC_COLUMNS, accuracy_auc, epochs_to_target
from lossbench.report import build_report


def fake_run(root, name, loss, seed, accuracies, lr=0.1, status="finished", extra=None):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"seed": seed, "loss": {"name": loss, **(extra or {})}, "optim": {"lr": lr}, "data": {"name": "x"}}
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    (run_dir / "status.json").write_text(json.dumps({"status": status, "epoch": len(accuracies)}))
    if accuracies:
        rows = pd.DataFrame(0.0, index=range(len(accuracies)), columns=METRIC_COLUMNS)
        rows["epoch"] = range(1, len(accuracies) + 1)
        rows["elapsed_s"] = 10.0 * rows["epoch"]
        rows["test_acc"] = accuracies
        rows["test_score"] = 2 * rows["test_acc"]
        rows["grad_norm"] = 1.0
        rows.to_csv(run_dir / "metrics.csv", index=False)


def test_convergence_measures():
    curve = pd.DataFrame({"epoch": [1, 2, 3, 4], "elapsed_s": [5, 10, 15, 20], "test_acc": [0.2, 0.5, 0.8, 0.9]})
    assert epochs_to_target(curve, 0.75) == (3.0, 15.0)
    assert all(pd.isna(v) for v in epochs_to_target(curve, 0.95))
    # trapezoid from (0, 0): 0.1 + 0.35 + 0.65 + 0.85 = 1.95 over 4 epochs
    assert accuracy_auc(curve) == pytest.approx(1.95 / 4)


def test_summary_over_seeds_with_a_diverged_run(tmp_path):
    fake_run(tmp_path, "a", "ce", 0, [0.5, 0.8], extra=None)
    fake_run(tmp_path, "b", "ce", 1, [0.6, 0.9])
    fake_run(tmp_path, "c", "soft_label_ce", 0, [0.3, 0.4], extra={"tau": 0.5})
    fake_run(tmp_path, "d", "soft_label_ce", 1, [], status="diverged", extra={"tau": 0.5})
    report = build_report(tmp_path)
    summary = report.summary.set_index("loss")
    assert summary.loc["ce", "final_test_acc_mean"] == pytest.approx(0.85)
    assert summary.loc["ce", "final_test_acc_std"] == pytest.approx(0.05)
    assert summary.attrs["target"] == pytest.approx(0.9 * 0.85)
    # seed 0 reaches 0.765 at epoch 2, seed 1 at epoch 2: mean 2
    assert summary.loc["ce", "epochs_to_target_mean"] == 2 and summary.loc["ce", "seconds_to_target_mean"] == 20
    assert summary.loc["soft_label_ce", "runs"] == 2
    assert summary.loc["soft_label_ce", "status"] == "1 finished, 1 diverged"
    assert summary.loc["soft_label_ce", "final_test_acc_mean"] == pytest.approx(0.4)
    assert "| soft_label_ce | 2 | 1 finished, 1 diverged | 0.400 ± 0.000 |" in report.markdown
    assert "not reached" in report.markdown
    assert "tau" not in report.curves.columns  # a loss parameter is not a swept parameter
    for png in ("test_acc.png", "test_score.png", "grad_norm.png", "epochs_to_target.png"):
        assert (tmp_path / png).stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_swept_parameter_and_best_setting(tmp_path):
    fake_run(tmp_path, "a", "ce", 0, [0.5, 0.7], lr=0.01)
    fake_run(tmp_path, "b", "ce", 0, [0.6, 0.9], lr=0.1)
    fake_run(tmp_path, "c", "expected_score", 0, [0.3, 0.5], lr=0.01)
    fake_run(tmp_path, "d", "expected_score", 0, [0.2, 0.3], lr=0.1)
    report = build_report(tmp_path)
    assert set(report.curves["optim.lr"]) == {0.01, 0.1}
    best = report.markdown.split("## All settings")[0]
    assert "| ce | 0.1 |" in best and "| expected_score | 0.01 |" in best
    assert (tmp_path / "sweep_optim.lr.png").exists()


def test_no_runs_or_no_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(LossbenchError, match="no run directories found"):
        build_report(tmp_path)
    fake_run(tmp_path, "a", "ce", 0, [], status="running")
    with pytest.raises(LossbenchError, match="no run has finished an epoch yet"):
        build_report(tmp_path)
