"""The report from hand-made run directories with known numbers: swept-parameter detection, the statistics
(against scipy.stats), score and accuracy targets, selection on val, trends, damaged files, provenance, the
n = 1 formatting and the figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.errors import LossbenchError
from lossbench.metrics import curve_mean, epochs_to_target
from lossbench.report import build_report
from lossbench.rundir import METRIC_COLUMNS, claim


def fake_run(root, name, loss, seed, accuracies, lr=0.1, status="finished", extra=None, columns=None, config=None):
    """A run directory whose test_score is 2 x test_acc unless `columns` gives other per-epoch values."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {
        "seed": seed,
        "loss": {"name": loss, **(extra or {})},
        "optim": {"lr": lr},
        "data": {"name": "x"},
        **(config or {}),
    }
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    (run_dir / "status.json").write_text(json.dumps({"status": status, "epoch": len(accuracies)}))
    if accuracies:
        rows = pd.DataFrame(0.0, index=range(len(accuracies)), columns=METRIC_COLUMNS)
        rows["epoch"] = range(1, len(accuracies) + 1)
        rows["elapsed_s"] = 10.0 * rows["epoch"]
        rows["test_acc"] = accuracies
        rows["test_score"] = 2 * rows["test_acc"]
        rows["grad_norm"] = 1.0
        for column, values in (columns or {}).items():
            rows[column] = values
        rows.to_csv(run_dir / "metrics.csv", index=False)
    return run_dir


def png_is_a_picture(path) -> bool:
    """A real figure: decodes, is not tiny, and is not one flat colour."""
    image = np.asarray(Image.open(path).convert("L"))
    return min(image.shape) > 200 and image.std() > 5


def test_convergence_measures():
    curve = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "elapsed_s": [5, 10, 15, 20],
            "test_acc": [0.2, 0.5, 0.8, 0.9],
            "test_score": [1.0, 1.5, 1.2, 1.7],
        }
    )
    assert epochs_to_target(curve, 0.75) == (3.0, 15.0)
    assert epochs_to_target(curve, 1.6, "test_score") == (4.0, 20.0)
    assert all(pd.isna(v) for v in epochs_to_target(curve, 0.95))
    # AUC: the mean over the evaluated epochs, no invented epoch 0
    assert curve_mean(curve, "test_acc") == pytest.approx((0.2 + 0.5 + 0.8 + 0.9) / 4)
    assert curve_mean(curve, "test_score") == pytest.approx(5.4 / 4)
    assert pd.isna(curve_mean(curve, "test_ece"))


def test_statistics_against_scipy(tmp_path):
    ce = {0: [0.5, 0.80], 1: [0.6, 0.90], 2: [0.5, 0.82]}
    other = {0: [0.4, 0.70], 1: [0.5, 0.85], 2: [0.3, 0.71]}
    for seed in ce:
        fake_run(tmp_path, f"ce{seed}", "ce", seed, ce[seed])
        fake_run(tmp_path, f"es{seed}", "expected_score", seed, other[seed])
    summary = build_report(tmp_path).summary.set_index("loss")
    final = np.array([v[-1] for v in ce.values()])
    t = scipy_stats.t.ppf(0.975, df=2)
    assert summary.loc["ce", "final_test_acc_mean"] == pytest.approx(final.mean())
    assert summary.loc["ce", "final_test_acc_sd"] == pytest.approx(final.std(ddof=1))
    assert summary.loc["ce", "final_test_acc_ci95"] == pytest.approx(t * final.std(ddof=1) / np.sqrt(3))
    assert summary.loc["ce", "final_test_acc_n"] == 3
    mine = np.array([v[-1] for v in other.values()])
    paired = scipy_stats.ttest_rel(mine, final)
    diff = mine - final
    row = summary.loc["expected_score"]
    assert row["final_test_acc_diff"] == pytest.approx(diff.mean())
    assert row["final_test_acc_diff_ci95"] == pytest.approx(t * diff.std(ddof=1) / np.sqrt(3))
    assert row["final_test_acc_p_value"] == pytest.approx(paired.pvalue, rel=1e-6)
    assert row["final_test_acc_pairs"] == 3
    assert pd.isna(summary.loc["ce", "final_test_acc_p_value"])  # ce is not compared with itself


def test_summary_words_verdicts_from_intervals(tmp_path):
    for seed, (a, b) in enumerate([(0.80, 0.60), (0.90, 0.71), (0.85, 0.64)]):
        fake_run(tmp_path, f"ce{seed}", "ce", seed, [0.5, a])
        fake_run(tmp_path, f"es{seed}", "expected_score", seed, [0.4, b])
        # same as ce up to noise: the difference's interval straddles 0
        fake_run(tmp_path, f"ces{seed}", "ce_expected_score", seed, [0.5, a + (0.01, -0.01, 0.005)[seed]])
    markdown = build_report(tmp_path).markdown
    line = next(li for li in markdown.splitlines() if li.startswith("| final test_acc |"))
    assert "lower (" in line.split("|")[2] and "no difference shown" in line.split("|")[3]
    assert "p_Holm = " in line.split("|")[2]
    assert "- **expected_score**: final test_score lower than ce" in markdown
    # a non-significant difference is never called a tie: only the equivalence test makes one
    assert "- **ce_expected_score**: final test_score no difference shown vs ce" in markdown
    assert "tied" not in line


def test_summary_over_seeds_with_a_diverged_run_and_n1_formatting(tmp_path):
    fake_run(tmp_path, "a", "ce", 0, [0.5, 0.8])
    fake_run(tmp_path, "b", "ce", 1, [0.6, 0.9])
    fake_run(tmp_path, "c", "soft_label_ce", 0, [0.3, 0.4], extra={"tau": 0.5})
    fake_run(tmp_path, "d", "soft_label_ce", 1, [], status="diverged", extra={"tau": 0.5})
    report = build_report(tmp_path)
    summary = report.summary.set_index("loss")
    assert summary.loc["ce", "final_test_acc_sd"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert summary.attrs["target_acc"] == pytest.approx(0.9 * 0.85)
    # seed 0 reaches 0.765 at epoch 2, seed 1 at epoch 2: mean 2
    assert summary.loc["ce", "epochs_to_target_acc_mean"] == 2
    assert summary.loc["ce", "seconds_to_target_acc_mean"] == 20
    assert summary.loc["soft_label_ce", "runs"] == 2
    assert summary.loc["soft_label_ce", "status"] == "1 finished, 1 diverged"
    assert summary.loc["soft_label_ce", "final_test_acc_n"] == 1
    # one value: shown with its n, never as "± 0.000" or "± nan"
    details = report.markdown.split("## Details")[1]
    row = next(li for li in details.splitlines() if li.startswith("| soft_label_ce |"))
    assert "| 0.400 (n=1) |" in row and "±" not in row
    assert "not reached" in row
    assert "No paired comparison: no loss has 2 seeds paired" in report.markdown
    assert "tau" not in report.curves.columns  # a loss parameter is not a swept parameter
    assert not list(tmp_path.glob("*.tmp"))


def test_one_seed_per_loss_gives_one_line_not_a_table_of_untested_cells(tmp_path):
    fake_run(tmp_path, "a", "ce", 0, [0.5, 0.8])
    fake_run(tmp_path, "b", "soft_label_ce", 0, [0.3, 0.4], extra={"tau": 0.5})
    markdown = build_report(tmp_path).markdown
    assert "No paired comparison: no loss has 2 seeds paired with ce's" in markdown
    assert "not tested" not in markdown


def test_score_target_does_not_move_when_a_loss_is_added(tmp_path):
    fake_run(tmp_path, "a", "ce", 0, [0.5, 0.7, 0.8])
    fake_run(tmp_path, "b", "ce", 1, [0.5, 0.8, 0.9])
    fake_run(tmp_path, "c", "expected_score", 0, [0.2, 0.3, 0.4])
    before = build_report(tmp_path).summary
    assert before.attrs["target_score"] == pytest.approx(2 * 0.85)  # ce's final mean test_score
    fake_run(tmp_path, "d", "ce_expected_score", 0, [0.9, 0.95, 0.99])
    after = build_report(tmp_path)
    assert after.summary.attrs["target_score"] == before.attrs["target_score"]
    assert after.summary.attrs["target_acc"] > before.attrs["target_acc"]  # the accuracy target moves
    table = after.summary.set_index("loss")
    assert table.loc["ce_expected_score", "epochs_to_target_score_mean"] == 1
    assert table.loc["ce", "epochs_to_target_score_n"] == 1  # only seed 1 reaches ce's own mean
    assert "ce's final mean test_score" in after.markdown


def test_score_target_from_the_user_or_without_ce(tmp_path):
    fake_run(tmp_path, "a", "expected_score", 0, [0.2, 0.3], config={"report": {"target_score": 0.5}})
    fake_run(tmp_path, "b", "soft_label_ce", 0, [0.5, 0.9], config={"report": {"target_score": 0.5}})
    report = build_report(tmp_path)
    assert report.summary.attrs["target_score"] == 0.5 and "set by report.target_score" in report.markdown
    assert build_report(tmp_path, target_score=1.7).summary.attrs["target_score"] == 1.7
    claim(tmp_path, "comparison", ignore=[p.name for p in tmp_path.iterdir()])  # as `compare` made it
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--target-score", "0.7"])
    assert result.exit_code == 0, result.output
    assert "test_score 0.700 (set by --target-score" in (tmp_path / "summary.md").read_text()
    for run in ("a", "b"):
        (tmp_path / run / "config.yaml").write_text(
            (tmp_path / run / "config.yaml").read_text().replace("target_score: 0.5", "target_score: null")
        )
    report = build_report(tmp_path)
    assert report.summary.attrs["target_score"] == pytest.approx(0.6)  # expected_score: the first loss present
    assert "ce is not in this comparison" in report.markdown


def test_runs_that_disagree_on_the_target_are_an_error(tmp_path):
    fake_run(tmp_path, "a", "ce", 0, [0.5], config={"report": {"target_score": 0.5}})
    fake_run(tmp_path, "b", "ce", 1, [0.5], config={"report": {"target_score": 0.7}})
    with pytest.raises(LossbenchError, match="disagree on report.target_score"):
        build_report(tmp_path)
    with pytest.raises(LossbenchError, match="--target-score nan"):
        build_report(tmp_path, target_score=float("nan"))


def test_settings_are_chosen_on_val_and_sweeps_plot_error_bars(tmp_path):
    # test prefers lr 0.1, val prefers lr 0.01: the val choice wins, test is only reported
    for seed in (0, 1):
        fake_run(tmp_path, f"a{seed}", "ce", seed, [0.5, 0.7 + seed / 100], lr=0.01, columns={"val_score": [1, 1.6]})
        fake_run(tmp_path, f"b{seed}", "ce", seed, [0.6, 0.9 - seed / 100], lr=0.1, columns={"val_score": [1, 1.2]})
        fake_run(tmp_path, f"c{seed}", "expected_score", seed, [0.3, 0.5], lr=0.01, columns={"val_score": [1, 1.0]})
        fake_run(tmp_path, f"d{seed}", "expected_score", seed, [0.2, 0.3], lr=0.1, columns={"val_score": [1, 0.9]})
    report = build_report(tmp_path)
    assert set(report.curves["optim.lr"]) == {0.01, 0.1}
    best = report.markdown.split("## Against ce")[0]
    assert "chosen on the validation score" in best
    assert "| ce | 0.01 |" in best and "| expected_score | 0.01 |" in best and "| ce | 0.1 |" not in best
    assert report.summary.attrs["target_score"] == pytest.approx(2 * 0.705)  # ce at its val-chosen lr
    assert png_is_a_picture(tmp_path / "sweep_optim.lr.png")


def test_each_loss_s_setting_is_chosen_once_and_the_verdict_and_tables_share_it(tmp_path, monkeypatch):
    """The settings are selected once, on val; the target, the paired comparison, the verdict and summary.csv's
    verdict columns all use that choice (ce and expected_score at lr 0.01 here)."""
    import lossbench.report as report_module

    for seed in (0, 1):
        fake_run(tmp_path, f"a{seed}", "ce", seed, [0.5, 0.7 + seed / 100], lr=0.01, columns={"val_score": [1, 1.6]})
        fake_run(tmp_path, f"b{seed}", "ce", seed, [0.6, 0.9 - seed / 100], lr=0.1, columns={"val_score": [1, 1.2]})
        fake_run(tmp_path, f"c{seed}", "expected_score", seed, [0.3, 0.5], lr=0.01, columns={"val_score": [1, 1.0]})
    calls = []
    real = report_module.select_settings
    monkeypatch.setattr(report_module, "select_settings", lambda *args: calls.append(args) or real(*args))
    summary = build_report(tmp_path).summary
    assert len(calls) == 1
    verdict_rows = summary[summary["verdict_test_score_mean"].notna()]
    assert sorted(zip(verdict_rows["loss"], verdict_rows["optim.lr"])) == [("ce", 0.01), ("expected_score", 0.01)]
    assert summary.attrs["target_score"] == pytest.approx(2 * 0.705)
    compared = summary[summary["final_test_score_diff"].notna()]
    assert list(compared["loss"]) == ["expected_score"]


def test_every_final_metric_the_report_reads_is_a_metrics_csv_column():
    """The one metrics.csv reader returns METRIC_COLUMNS: a final metric outside them would be NaN for every run."""
    from lossbench.report import FINAL_METRICS

    assert set(FINAL_METRICS) <= set(METRIC_COLUMNS)


def test_old_runs_without_val_fall_back_to_test_with_a_note(tmp_path):
    for name, lr, accuracies in (("a", 0.01, [0.5, 0.7]), ("b", 0.1, [0.6, 0.9])):
        metrics = fake_run(tmp_path, name, "ce", 0, accuracies, lr=lr) / "metrics.csv"
        rows = pd.read_csv(metrics)
        rows.drop(columns=[c for c in rows if c.startswith("val_")]).to_csv(metrics, index=False)  # before val
    report = build_report(tmp_path)
    assert "chosen on the final TEST score" in report.markdown and "| ce | 0.1 |" in report.markdown


def test_trend_says_whether_the_score_is_still_rising(tmp_path):
    fake_run(tmp_path, "a", "ce", 0, [0.1, 0.2, 0.3, 0.41, 0.5, 0.6, 0.69])
    fake_run(tmp_path, "b", "expected_score", 0, [0.1, 0.5, 0.51, 0.49, 0.5, 0.52, 0.5])
    fake_run(tmp_path, "c", "soft_label_ce", 0, [0.1, 0.2])
    summary = build_report(tmp_path).summary.set_index("loss")
    assert summary.loc["ce", "score_trend"] == "rising" and summary.loc["ce", "still_rising"]
    epochs, scores = np.arange(3, 8), 2 * np.array([0.3, 0.41, 0.5, 0.6, 0.69])
    fit = scipy_stats.linregress(epochs, scores)
    assert summary.loc["ce", "score_slope"] == pytest.approx(fit.slope)
    assert summary.loc["ce", "score_slope_ci95"] == pytest.approx(scipy_stats.t.ppf(0.975, 3) * fit.stderr)
    assert summary.loc["expected_score", "score_trend"] == "flat"
    assert summary.loc["soft_label_ce", "score_trend"] == "too short"


def test_a_long_run_s_trend_spans_the_last_half_of_its_evaluations(tmp_path):
    """A slow climb under epoch-to-epoch noise (as at a constant learning rate): flat over any 5 evaluations,
    rising over the last 20 of 40."""
    noise = np.tile([0.01, -0.01], 20)
    accuracies = 0.3 + 0.003 * np.arange(40) + noise
    fake_run(tmp_path, "a", "ce", 0, list(accuracies))
    summary = build_report(tmp_path).summary.set_index("loss")
    epochs, scores = np.arange(21, 41), 2 * accuracies[20:]
    fit = scipy_stats.linregress(epochs, scores)
    assert summary.loc["ce", "score_slope"] == pytest.approx(fit.slope)
    assert summary.loc["ce", "score_trend"] == "rising"
    last5 = scipy_stats.linregress(np.arange(36, 41), scores[-5:])
    assert last5.slope - scipy_stats.t.ppf(0.975, 3) * last5.stderr < 0  # a 5-evaluation window would say flat


def test_damaged_files_are_reported_per_run_and_never_block_the_others(tmp_path):
    fake_run(tmp_path, "good", "ce", 0, [0.5, 0.8])
    cut = fake_run(tmp_path, "cut", "expected_score", 0, [0.3, 0.4, 0.5])
    text = (cut / "metrics.csv").read_text()
    (cut / "metrics.csv").write_text(text[: len(text) - 9])  # half of the last row, no newline
    garbage = fake_run(tmp_path, "garbage", "soft_label_ce", 0, [0.3, 0.4, 0.6])
    lines = (garbage / "metrics.csv").read_text().splitlines(keepends=True)
    lines.insert(2, "\x00\x01 not, a row\n")
    (garbage / "metrics.csv").write_text("".join(lines))
    columns = fake_run(tmp_path, "columns", "log_expected_score", 0, [0.3])
    (columns / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    (fake_run(tmp_path, "empty", "power_expected_score", 0, [0.3]) / "metrics.csv").write_text("")
    (fake_run(tmp_path, "binary", "ce_expected_score", 0, [0.3]) / "metrics.csv").write_bytes(b"\xff\xfe\x00bad")
    (fake_run(tmp_path, "config", "ce", 1, [0.6]) / "config.yaml").write_text("loss: [unclosed\n")
    report = build_report(tmp_path)
    warnings = "\n".join(report.warnings)
    assert f"{cut / 'metrics.csv'}: damaged line(s) 4 skipped; using 2 row(s), epochs 1-2" in warnings
    assert f"{garbage / 'metrics.csv'}: damaged line(s) 3 skipped; using 3 row(s), epochs 1-3" in warnings
    assert f"{columns / 'metrics.csv'}: no column(s) elapsed_s, test_acc, test_score" in warnings
    assert f"{tmp_path / 'empty' / 'metrics.csv'}: empty; no rows used" in warnings
    assert f"{tmp_path / 'binary' / 'metrics.csv'}: unreadable" in warnings
    assert f"{tmp_path / 'config' / 'config.yaml'}: damaged" in warnings and "run skipped" in warnings
    summary = report.summary.set_index("loss")
    assert summary.loc["ce", "runs"] == 1 and summary.loc["ce", "final_test_acc_mean"] == 0.8
    assert summary.loc["expected_score", "final_test_acc_mean"] == 0.4
    assert summary.loc["soft_label_ce", "final_test_acc_mean"] == 0.6
    assert "## Warnings" in report.markdown and "damaged line(s) 4 skipped" in report.markdown


def test_a_repeated_epoch_keeps_its_last_row(tmp_path):
    run = fake_run(tmp_path, "a", "ce", 0, [0.5, 0.6])
    lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    (run / "metrics.csv").write_text("".join(lines + [lines[2].replace("0.6,", "0.7,", 1)]))
    report = build_report(tmp_path)
    assert report.summary.set_index("loss").loc["ce", "final_test_acc_mean"] == 0.7
    assert "1 repeated epoch row(s) replaced by the later one" in report.warnings[0]


def test_device_and_precision_come_from_run_json_then_config(tmp_path):
    run = fake_run(tmp_path, "a", "ce", 0, [0.5], config={"device": "auto", "precision": "fp32"})
    fake_run(tmp_path, "b", "ce", 1, [0.6], config={"device": "auto", "precision": "fp32"})
    fake_run(tmp_path, "c", "ce", 2, [0.6])
    (run / "run.json").write_text(json.dumps({"device": "NVIDIA H100", "precision": "bf16", "torch": "2.4"}))
    markdown = build_report(tmp_path).markdown
    assert "Device: " in markdown and "NVIDIA H100 (1 run)" in markdown and "auto (requested) (1 run)" in markdown
    assert "unknown (1 run)" in markdown and "bf16 (1 run)" in markdown and "fp32 (requested) (1 run)" in markdown


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\udcff"])
def test_a_damaged_run_json_is_a_warning_and_the_report_shows_what_was_requested(tmp_path, text):
    run = fake_run(tmp_path, "a", "ce", 0, [0.5], config={"device": "auto", "precision": "fp32"})
    fake_run(tmp_path, "b", "ce", 1, [0.6], config={"device": "auto", "precision": "fp32"})  # no run.json: no warning
    (run / "run.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    report = build_report(tmp_path)
    assert "auto (requested) (2 runs)" in report.markdown and "fp32 (requested) (2 runs)" in report.markdown
    damaged = [w for w in report.warnings if "run.json" in w]
    assert len(damaged) == 1 and damaged[0].startswith(f"{run / 'run.json'}: unreadable (")
    assert damaged[0].endswith("its device and precision are shown as requested")


def confusion(run_dir, classes, counts):
    table = pd.DataFrame(counts, index=classes, columns=classes)
    table.index.name = "true\\pred"
    table.to_csv(run_dir / "confusion.csv")


@pytest.mark.parametrize("classes", [10, 20])
def test_figures_confusion_and_pareto(tmp_path, classes):
    names = [f"class_{i}" for i in range(classes)]
    rng = np.random.default_rng(0)
    for loss in ("ce", "expected_score", "soft_label_ce", "label_smoothing"):
        for seed in (0, 1):
            severity = {"test_mistake_severity": [1.5, 1.0 + 0.1 * seed + 0.2 * len(loss) / 10]}
            run = fake_run(
                tmp_path, f"{loss}{seed}", loss, seed, [0.4, 0.6 + 0.05 * seed + len(loss) / 100], columns=severity
            )
            confusion(run, names, rng.integers(0, 5, (classes, classes)) + np.diag([40] * classes))
    damaged = tmp_path / "ce0" / "confusion.csv"
    report = build_report(tmp_path)
    for png in (
        "test_acc.png",
        "test_score.png",
        "grad_norm.png",
        "epochs_to_target.png",
        "pareto.png",
        "confusion.png",
    ):
        assert png_is_a_picture(tmp_path / png), png
    assert not report.warnings
    damaged.write_text("true\\pred,a\nb,1,2\n")
    report = build_report(tmp_path)
    assert any(str(damaged) in w and "left out of confusion.png" in w for w in report.warnings)
    assert png_is_a_picture(tmp_path / "confusion.png")


def test_no_runs_or_no_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(LossbenchError, match="no run directories found"):
        build_report(tmp_path)
    fake_run(tmp_path, "a", "ce", 0, [], status="running")
    with pytest.raises(LossbenchError, match="no run has finished an epoch yet"):
        build_report(tmp_path)
