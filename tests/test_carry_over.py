"""scripts/carry_over.py: the chosen learning rate beside its neighbours at the full budget, judged on val."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, lossbench

SCRIPT = Path(__file__).parents[1] / "scripts" / "carry_over.py"
spec = importlib.util.spec_from_file_location("carry_over", SCRIPT)
carry_over = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = carry_over
spec.loader.exec_module(carry_over)

CHOSEN = {"ce": {"optim.lr": 0.08}, "label_smoothing": {"optim.lr": 0.04, "loss.eps": 0.16}}


def tune_json(tmp_path: Path, chosen: dict = CHOSEN) -> Path:
    losses = {loss: {"chosen": {"setting": setting, "val_score": 1.0}} for loss, setting in chosen.items()}
    path = tmp_path / "tune.json"
    path.write_text(json.dumps({"losses": losses}))
    return path


def fake_comparison(tmp_path: Path, name: str, loss: str, chosen_lr: float, val: dict[float, float]) -> Path:
    """Two seeds per factor, two epochs per run; the last epoch's val_score is val[factor] +- 0.001 by seed."""
    rows = []
    for factor, score in val.items():
        for seed in (0, 1):
            for epoch in (1, 2):
                final = score + 0.001 * (2 * seed - 1)
                value = final if epoch == 2 else final - 0.5
                rows.append(
                    {
                        "loss": loss,
                        "seed": seed,
                        "optim.lr": chosen_lr * factor,
                        "epoch": epoch,
                        "val_score": value,
                        "test_score": value - 0.01,
                    }
                )
    (tmp_path / name).mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / name / "curves.csv", index=False)
    return tmp_path / name


def test_sweep_gives_the_neighbouring_learning_rates_and_the_chosen_parameter(tmp_path, capsys):
    path = tune_json(tmp_path)
    assert carry_over.main(["sweep", str(path), "label_smoothing"]) == 0
    out = capsys.readouterr().out.split()
    assert out == ["losses=[label_smoothing]", "loss=label_smoothing", "optim.lr=0.02,0.04,0.08", "loss.eps=0.16"]
    assert carry_over.main(["sweep", str(path), "ce", "--factors", "2,1"]) == 0
    assert capsys.readouterr().out.split()[2:] == ["optim.lr=0.08,0.16"]


def test_a_neighbour_better_on_val_by_more_than_the_margin_is_a_miss(tmp_path, capsys):
    ce = fake_comparison(tmp_path, "ce", "ce", 0.08, {0.5: 1.50, 1.0: 1.55, 2.0: 1.54})
    ls = fake_comparison(tmp_path, "ls", "label_smoothing", 0.04, {0.5: 1.40, 1.0: 1.45, 2.0: 1.50})
    assert carry_over.main(["table", str(tune_json(tmp_path)), str(ce), str(ls)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| loss | chosen lr | val_score 0.5x | val_score 1x | val_score 2x | test_score 0.5x")
    ce_row, ls_row = out[2], out[3]
    assert ce_row.startswith("| ce | 0.08 | 1.500 ± 0.013 | 1.550 ± 0.013 |")
    assert ce_row.endswith("| yes: the choice is the best on val |")
    assert "1.540 ± 0.013 |" in ce_row  # test_score 2x: val - 0.01
    assert ls_row.endswith("| no: 2x is better on val by 0.050 |")
    assert carry_over.main(["table", str(tune_json(tmp_path)), str(ls), "--margin", "0.06"]) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("| yes: 2x is within 0.06 on val (+0.050) |")


@pytest.mark.parametrize(
    "args, message",
    [
        (["sweep", "TUNE", "soft_label_ce"], "no chosen setting for soft_label_ce"),
        (["sweep", "TUNE", "ce", "--factors", "0.5,2"], "--factors 0.5,2: write positive numbers"),
        (["sweep", "TUNE", "ce", "--factors", "a,1"], "--factors a,1"),
        (["sweep", "nope.json", "ce"], "nope.json: not a tune.json"),
        (["table", "TUNE", "missing", "--margin", "nan"], "--margin nan: write a number of 0 or more"),
        (["table", "TUNE", "missing", "--margin", "-0.1"], "--margin -0.1: write a number of 0 or more"),
        (["table", "TUNE", "missing"], "missing/curves.csv: not found"),
        (["table", "TUNE", "NOLR"], "no column optim.lr"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    (tmp_path / "nolr").mkdir()
    (tmp_path / "nolr" / "curves.csv").write_text("loss,seed,epoch,val_score,test_score\nce,0,1,1,1\n")
    where = {"TUNE": str(tune_json(tmp_path)), "NOLR": str(tmp_path / "nolr"), "missing": str(tmp_path / "missing")}
    assert carry_over.main([where.get(a, a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_a_tune_json_without_a_learning_rate_is_refused(tmp_path, capsys):
    path = tune_json(tmp_path, {"ce": {"loss.eps": 0.1}})
    assert carry_over.main(["sweep", str(path), "ce"]) == 2
    assert "ce has no positive chosen optim.lr" in capsys.readouterr().err


def test_the_sweep_runs_as_a_comparison_and_reads_back(tmp_path, capsys):
    """The overrides are what compare takes, and the table reads the comparison they made."""
    path = tune_json(tmp_path, {"label_smoothing": {"optim.lr": 0.04, "loss.eps": 0.16}})
    assert carry_over.main(["sweep", str(path), "label_smoothing", "--factors", "1,2"]) == 0
    overrides = capsys.readouterr().out.split()
    result = lossbench("compare", *TINY, *overrides, "--out", "c", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert carry_over.main(["table", str(path), str(tmp_path / "c"), "--factors", "1,2"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.startswith("| label_smoothing | 0.04 |") and row.count("|") == 8, row
    assert "| yes: " in row or "| no: " in row
