"""scripts/near_misses.py: the share of mistakes that are near misses, on rows that offer one."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_cfg
from omegaconf import OmegaConf

SCRIPT = Path(__file__).parents[1] / "scripts" / "near_misses.py"
spec = importlib.util.spec_from_file_location("near_misses", SCRIPT)
near_misses = importlib.util.module_from_spec(spec)
spec.loader.exec_module(near_misses)

# rows: a (near miss: b), b (near miss: a), c (no near miss: every wrong answer scores -1)
S = np.array([[2.0, 1.0, -1.0], [1.0, 2.0, -1.0], [-1.0, -1.0, 2.0]])


def counts(table: list[list[int]]) -> pd.DataFrame:
    return pd.DataFrame(table, index=list("abc"), columns=list("abc"))


def test_share_counts_only_rows_that_offer_a_near_miss():
    # row a: 3 near (b), 1 far (c); row b: 1 near, 3 far; row c's 10 mistakes are left out
    share, far = near_misses.near_and_far(counts([[50, 3, 1], [1, 50, 3], [5, 5, 40]]), S)
    assert share == pytest.approx(4 / 8) and far == pytest.approx(4 / 108)
    share, far = near_misses.near_and_far(counts([[50, 0, 0], [0, 50, 0], [5, 5, 40]]), S)
    assert math.isnan(share) and far == 0


def fake_run(root: Path, loss: str, seed: int, table: list[list[int]]) -> None:
    run = root / f"loss={loss},seed={seed}"
    run.mkdir(parents=True)
    cfg = make_cfg(f"loss={loss}", f"seed={seed}", "scores=cifar10_groups")
    OmegaConf.save(cfg, run / "config.yaml")
    (run / "status.json").write_text('{"status": "finished"}')
    # a (airplane) and b (automobile) are vehicles, c (cat) an animal
    counts(table).set_axis(["airplane", "automobile", "cat"], axis=0).set_axis(
        ["airplane", "automobile", "cat"], axis=1
    ).to_csv(run / "confusion.csv")


def test_table_with_paired_difference(tmp_path, capsys):
    for seed, near in enumerate([2, 3, 4]):
        fake_run(tmp_path, "ce", seed, [[50, near, 4 - near], [0, 50, 4], [1, 1, 50]])
        fake_run(tmp_path, "soft_label_ce", seed, [[50, 4, 0], [near, 50, 4 - near], [1, 1, 50]])
    assert near_misses.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # near: 2/8, 3/8, 4/8 (SD 0.125, t(2) 4.303); far: 6, 5, 4 of 108
    assert "| ce | 0.375 ± 0.311 | - | 0.046 ± 0.023 | - | 3 |" in out
    assert (
        "| soft_label_ce | 0.875 ± 0.311 | +0.500 ± 0.000 (p = 0) | 0.009 ± 0.023 | -0.037 ± 0.000 (p = 0) | 3 |"
    ) in out


def test_no_runs_is_one_error_line(tmp_path, capsys):
    assert near_misses.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no run under")


def test_damaged_runs_are_left_out_with_a_warning(tmp_path, capsys):
    fake_run(tmp_path, "ce", 0, [[50, 2, 2], [0, 50, 4], [1, 1, 50]])
    fake_run(tmp_path, "ce", 5, [[50, 2, 2], [0, 50, 4], [1, 1, 50]])
    fake_run(tmp_path, "soft_label_ce", 0, [[50, 4, 0], [2, 50, 2], [1, 1, 50]])
    fake_run(tmp_path, "soft_label_ce", 1, [[50, 4, 0], [2, 50, 2], [1, 1, 50]])
    (tmp_path / "loss=ce,seed=0" / "confusion.csv").write_text('a,"unterminated\n')
    (tmp_path / "loss=soft_label_ce,seed=1" / "config.yaml").write_text("seed: 1\n")
    assert near_misses.main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and all("run left out" in w for w in warnings)
    assert "Traceback" not in captured.err
    # 6 of 8 mistakes near; ce's seed 0 is gone, so the two losses share no seed
    assert "| soft_label_ce | 0.750 | no shared seed | 0.019 | no shared seed | 1 |" in captured.out


def test_when_every_run_is_left_out_the_error_points_at_the_warnings_not_at_a_missing_file(tmp_path, capsys):
    fake_run(tmp_path, "ce", 0, [[50, 2, 2], [0, 50, 4], [1, 1, 50]])
    config = OmegaConf.load(tmp_path / "loss=ce,seed=0" / "config.yaml")
    config.scores = {"_target_": "lossbench.scores.load_scores", "name": "file", "path": str(tmp_path / "moved.csv")}
    OmegaConf.save(config, tmp_path / "loss=ce,seed=0" / "config.yaml")
    assert near_misses.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "moved.csv" in err[0] and "run left out" in err[0]
    assert err[1] == (
        f"error: no run under {tmp_path} has a confusion.csv that could be counted"
        " (a warning above names each run left out)"
    )


def test_a_score_table_that_is_not_lossbenchs_is_never_built(tmp_path, capsys):
    fake_run(tmp_path, "ce", 0, [[50, 2, 2], [0, 50, 4], [1, 1, 50]])
    fake_run(tmp_path, "ce", 1, [[50, 2, 2], [0, 50, 4], [1, 1, 50]])
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    config = OmegaConf.load(tmp_path / "loss=ce,seed=1" / "config.yaml")
    config.scores = {
        "_target_": "shutil.copyfile",
        "src": str(tmp_path / "loss=ce,seed=0" / "config.yaml"),
        "dst": str(victim),
    }
    OmegaConf.save(config, tmp_path / "loss=ce,seed=1" / "config.yaml")
    assert near_misses.main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "scores._target_=shutil.copyfile, which is not one of lossbench's own components" in err
    assert "run left out" in err and victim.read_text() == "mine"
