"""scripts/slow_or_stuck.py: slow (still rising) or stuck, from a comparison's curves.csv."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "slow_or_stuck.py"
spec = importlib.util.spec_from_file_location("slow_or_stuck", SCRIPT)
slow_or_stuck = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = slow_or_stuck
spec.loader.exec_module(slow_or_stuck)


def fake_curves(tmp_path: Path) -> Path:
    """ce flat at 1.5; 'slow' rises 0.01 an epoch (seed-dependent offset) from 0.9; 'stuck' stays at 1.0 +- noise."""
    rows = []
    for seed in (0, 1, 2):
        for epoch in range(1, 21):
            wiggle = 0.002 * ((epoch + seed) % 3 - 1)
            for loss, score in (("ce", 1.5), ("slow", 0.9 + 0.01 * epoch + 0.01 * seed), ("stuck", 1.0)):
                rows.append(
                    {
                        "loss": loss,
                        "seed": seed,
                        "epoch": epoch,
                        "test_score": score + wiggle,
                        "test_acc": score / 2,
                        "grad_norm": 1.0 / epoch,
                    }
                )
    pd.DataFrame(rows).to_csv(tmp_path / "curves.csv", index=False)
    return tmp_path


def test_slow_is_told_from_stuck_with_the_epochs_to_close_the_gap(tmp_path, capsys):
    assert slow_or_stuck.main([str(fake_curves(tmp_path)), "--epochs", "5,20,40"]) == 0
    out = capsys.readouterr().out
    assert "| loss | test_score, epoch 5 | test_score, epoch 20 | test_acc, epoch 20 |" in out  # epoch 40 dropped
    assert "slope per epoch, epochs 11-20" in out and "| 1.000 -> 0.050 | 3 |" in out
    slow = next(line for line in out.splitlines() if line.startswith("- slow:"))
    # 1.5 - mean(1.1, 1.11, 1.12) = 0.39 below, at 0.01 an epoch: about 39 more
    assert "slow, not stuck: still rising (+0.0100 per epoch" in slow and "0.390 below ce" in slow
    assert slow.endswith("0.390 below ce, about 38-40 more epochs at that rate")
    assert "- stuck: not shown to rise" in out and "- ce:" not in out


@pytest.mark.parametrize(
    "content, args, message",
    [
        (None, [], "curves.csv: not found"),
        ("loss,seed,epoch\nce,0,1\n", [], "no column test_score, test_acc, grad_norm"),
        ("loss,seed,epoch,test_score,test_acc,grad_norm\nce,0,1,1,1,1\n", ["--epochs", "five"], "--epochs five"),
        ("loss,seed,epoch,test_score,test_acc,grad_norm\nce,0,1,x,1,1\n", [], "test_score holds 'x', not a number"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, content, args, message):
    if content is not None:
        (tmp_path / "curves.csv").write_text(content)
    assert slow_or_stuck.main([str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
