"""scripts/replay_pruning.py: Optuna's median pruner replayed over an unpruned search's curves."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from lossbench.rundir import append_metrics

pytest.importorskip("optuna", minversion="4")
SCRIPT = Path(__file__).parents[1] / "scripts" / "replay_pruning.py"
spec = importlib.util.spec_from_file_location("replay_pruning", SCRIPT)
replay_pruning = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = replay_pruning  # its dataclass looks its module up
spec.loader.exec_module(replay_pruning)

# trial 3 starts worst and finishes best: a late bloomer, like a high learning rate
CURVES = [
    [0.5, 0.6, 0.7, 0.8],
    [0.4, 0.5, 0.6, 0.7],
    [0.45, 0.55, 0.65, 0.75],
    [0.1, 0.56, 0.8, 0.9],
    [0.2, 0.3, 0.4, 0.5],
]


def fake_tune(root: Path, curves: list[list[float]]) -> Path:
    (root / "tune.json").write_text(json.dumps({"losses": {"ce": {}}}))
    for number, curve in enumerate(curves):
        trial = root / "tuning" / "ce" / f"trial_{number}"
        trial.mkdir(parents=True)
        for epoch, value in enumerate(curve, start=1):
            append_metrics(trial, {"epoch": epoch, "elapsed_s": 1.0, "val_score": value})
    return root


def test_an_early_cut_loses_the_late_bloomer_and_a_late_one_keeps_it():
    early = replay_pruning.replay("ce", CURVES, after=1, startup=3)
    assert early.pruned == [3, 4] and early.chosen == 3 and not early.chosen_kept
    assert early.epochs == 12 + 1 + 1 and early.unpruned_epochs == 20
    late = replay_pruning.replay("ce", CURVES, after=2, startup=3)
    assert late.pruned == [4] and late.chosen_kept and late.epochs == 12 + 4 + 2


def test_the_table_counts_epochs_per_setting(tmp_path, capsys):
    assert replay_pruning.main([str(fake_tune(tmp_path, CURVES)), "--setting", "1:3", "--setting", "2:3"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 3 | ce | 3, 4 | 14 of 20 | trial 3, **pruned: lost** |" in out
    assert "- prune_after 2, pruner_startup 3: 18 of 20 epochs (10% fewer); the chosen trial lost for no loss" in out


@pytest.mark.parametrize(
    "curves, setting, message",
    [
        ([[0.5, 0.6], [0.4]], "1:1", "trial_1 stopped early: replay an unpruned search"),
        ([[0.5, 0.6]], "two", "--setting two: write AFTER:STARTUP"),
        ([[0.5, 0.6], []], "1:1", "trial_1 has no val_score row in its metrics.csv"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, curves, setting, message):
    assert replay_pruning.main([str(fake_tune(tmp_path, curves)), "--setting", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("record", ["[1,2", '{"losses": 5}'])
def test_a_damaged_or_foreign_tune_record_is_one_line(tmp_path, capsys, record):
    (tmp_path / "tune.json").write_text(record)
    assert replay_pruning.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tune.json: " in err
    assert len(err.strip().splitlines()) == 1
