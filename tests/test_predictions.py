"""predictions.npz (both engines), the decisions taken from it, `lossbench rescore`, the test-set interval, and
the training subset drawn per seed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import NPZ_DAMAGES, TINY, lossbench, make_cfg

from lossbench.data.loading import load_dataset
from lossbench.data.sources import dataset_classes
from lossbench.pack import train_packed
from lossbench.predictions import PREDICTIONS_FILE, read_predictions, rule_metrics
from lossbench.report import build_report
from lossbench.rundir import METRICS_FILE, claim
from lossbench.scores import build_scores
from lossbench.train import train_run

ONE_FLIP = 3 / 128  # one of TINY's 128 test images decided otherwise (scores span 2 to -1)


def check_against_metrics(run_dir):
    found, warning = read_predictions(run_dir)
    assert warning is None and found is not None
    last = pd.read_csv(run_dir / METRICS_FILE).iloc[-1]
    assert found.test_probs.shape == (128, 10) and len(found.val_labels) > 0
    for rule, column in (
        ("argmax", "test_score"),
        ("bayes", "test_score_bayes"),
        ("bayes_cal", "test_score_bayes_cal"),
    ):
        value = rule_metrics(found.test_probs, found.test_labels, found.scores, rule, found.temperature)["score"]
        assert abs(value - last[column]) <= 2 * ONE_FLIP, column  # float16 probabilities: a near-tie may flip
    assert rule_metrics(found.test_probs, found.test_labels, found.scores, "argmax")["acc"] == pytest.approx(
        last["test_acc"], abs=2 / 128
    )
    assert not found.rescored


def test_a_run_and_a_pack_save_their_final_predictions(tmp_path):
    cfg = make_cfg(*TINY, "precision=fp32", "loss=ce")
    assert train_run(cfg, tmp_path / "alone") == "finished"
    check_against_metrics(tmp_path / "alone")
    jobs = [
        (make_cfg(*TINY, "precision=fp32", f"loss={loss}"), tmp_path / "packed" / loss)
        for loss in ("ce", "soft_label_ce")
    ]
    assert train_packed(jobs, size=0) == ["finished", "finished"]
    for _, run_dir in jobs:
        check_against_metrics(run_dir)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """Two losses x two seeds, trained once for the tests below."""
    root = tmp_path_factory.mktemp("comparison")
    claim(root, "comparison")
    for loss in ("ce", "expected_score"):
        for seed in (0, 1):
            cfg = make_cfg(*TINY, "precision=fp32", f"loss={loss}", f"seed={seed}")
            assert train_run(cfg, root / f"loss={loss},seed={seed}") == "finished"
    return root


def test_the_report_gives_a_test_set_interval_beside_the_seed_interval(comparison, tmp_path):
    report = build_report(comparison)
    for candidate in report.verdict.candidates:
        low, high = candidate.test_interval
        assert low <= candidate.summary.mean <= high and high - low > 0.05  # 128 images: a wide interval
    glance = report.markdown.split("## At a glance")[1].split("## Details")[0]
    assert " to " in glance and 'Test-set interval "-"' not in glance


@pytest.mark.parametrize("damage", NPZ_DAMAGES.values(), ids=NPZ_DAMAGES)
def test_a_damaged_predictions_file_leaves_its_run_out_of_the_test_set_interval_and_is_named(
    comparison, tmp_path, damage
):
    copy = tmp_path / "copy"
    shutil.copytree(comparison, copy)
    path = copy / "loss=ce,seed=0" / PREDICTIONS_FILE
    path.write_bytes(damage(path.read_bytes()))
    found, warning = read_predictions(path.parent)
    assert found is None and warning.startswith(f"{path}: unreadable (")
    report = build_report(copy)
    assert [w for w in report.warnings if str(path) in w] == [f"{warning}; left out of the test-set intervals"]
    intervals = {c.loss: c.test_interval for c in report.verdict.candidates}
    assert intervals["ce"] is None and intervals["expected_score"] is not None  # the other loss keeps its interval


def test_rescore_redecides_every_run_under_another_table_without_its_config(comparison, tmp_path):
    table = tmp_path / "other.csv"
    classes = read_predictions(comparison / "loss=ce,seed=0")[0].classes
    other = np.where(np.eye(10) > 0, 1.0, 0.0)
    other[1, 9] = 5.0  # answering the last class for the second pays most
    lines = ["true\\pred," + ",".join(classes)] + [
        f"{c}," + ",".join(f"{v:g}" for v in row) for c, row in zip(classes, other)
    ]
    table.write_text("\n".join(lines) + "\n")
    # a config naming a class that does not exist: rescoring must build nothing from it
    copied = tmp_path / "source"
    shutil.copytree(comparison, copied)
    for config in copied.glob("*/config.yaml"):
        text = config.read_text().replace("lossbench.models.SmallCNN", "no_such_module.Boom")
        config.write_text(text.replace("lossbench.losses.", "no_such_module."))
    out = tmp_path / "rescored"
    result = lossbench("rescore", str(copied), "--scores", str(table), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Verdict" in result.stdout and "rescored 4 run(s)" in result.stdout
    markdown = (out / "summary.md").read_text()
    assert "## Rescored" in markdown and "4 of 4 runs were trained with another score table" in markdown
    for run_dir in sorted(out.glob("loss=*")):
        found, _ = read_predictions(run_dir)
        assert found.rescored and np.array_equal(found.scores, other)
        metrics = pd.read_csv(run_dir / METRICS_FILE)
        assert metrics["test_score"].iloc[:-1].isna().all()  # curves are not rescored
        expected = rule_metrics(found.test_probs, found.test_labels, other, "bayes", found.temperature)["score"]
        assert metrics["test_score_bayes"].iloc[-1] == pytest.approx(expected)
        assert metrics["test_acc"].notna().all()  # table-independent columns stay
        record = json.loads((run_dir / "rescore.json").read_text())
        assert record["trained_with_other_table"] is True
    # runs without predictions (older lossbench): one line, exit 2
    for path in copied.glob(f"*/{PREDICTIONS_FILE}"):
        path.unlink()
    refused = lossbench("rescore", str(copied), "--scores", str(table), "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert refused.returncode == 2 and "no finished run has predictions.npz" in refused.stderr


def test_the_training_subset_can_be_drawn_per_seed_and_the_test_set_stays(tmp_path):
    def data(*overrides):
        cfg = make_cfg(*TINY, *overrides)
        scores = build_scores(cfg.scores, dataset_classes(cfg.data))
        return load_dataset(cfg.data, scores.classes, scores.matrix)

    fixed = [data(f"seed={s}") for s in (0, 1)]
    assert torch.equal(fixed[0].val_x, fixed[1].val_x)  # the default: one draw for every seed
    drawn = [data(f"seed={s}", "data.train_subset_seed=${seed}") for s in (0, 1)]
    assert not torch.equal(drawn[0].val_x, drawn[1].val_x)  # each seed its own validation split (and subset)
    assert torch.equal(drawn[0].test_x, drawn[1].test_x) and torch.equal(drawn[0].test_x, fixed[0].test_x)
    again = data("seed=0", "data.train_subset_seed=${seed}")
    assert torch.equal(again.train_x, drawn[0].train_x)  # seeded: the same seed draws the same subset
