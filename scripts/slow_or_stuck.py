"""Slow, or stuck? Per loss of a comparison trained at a constant learning rate (its curves.csv), over seeds: the
test score at chosen epochs, the final accuracy, the slope of the test score over the second half of the epochs
(per seed, then its mean and 95% t-interval over seeds), and the logit gradient's norm at the first and last epoch.
Then one line per loss that ends below ce: still rising (slow) or not (stuck), and at that slope how many more
epochs it would need to reach ce's final score.

Usage: python scripts/slow_or_stuck.py COMPARISON_DIR [--epochs 5,10,20,30]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from lossbench.errors import LossbenchError, require
from lossbench.report import read_curves
from lossbench.stats import interval_text, paired_text, slope, summarise

REFERENCE = "ce"
COLUMNS = ("loss", "seed", "epoch", "test_score", "test_acc", "grad_norm")


def second_half_slopes(runs: pd.DataFrame) -> dict[int, float]:
    """Per seed, the least-squares slope of test_score per epoch over the second half of its epochs."""
    slopes = {}
    for seed, run in runs.groupby("seed"):
        last = int(run["epoch"].max())
        half = run[run["epoch"] > last // 2]
        slopes[int(seed)] = slope(half["epoch"], half["test_score"]).slope
    return slopes


def slope_text(slopes: dict[int, float]) -> str:
    """Slopes are thousandths of a score point per epoch: four decimals, the interval over seeds when there is one."""
    rise = summarise(list(slopes.values()))
    return f"{rise.mean:+.4f} ± {rise.ci95:.4f}" if rise.n > 1 else f"{rise.mean:+.4f}"


def at_epoch(runs: pd.DataFrame, epoch: int, column: str) -> dict[int, float]:
    rows = runs[runs["epoch"] == epoch]
    return {int(seed): float(value) for seed, value in zip(rows["seed"], rows[column])}


def table(curves: pd.DataFrame, epochs: list[int]) -> list[str]:
    last = int(curves["epoch"].max())
    reference = curves[curves["loss"] == REFERENCE]
    heads = " | ".join(f"test_score, epoch {e}" for e in epochs)
    lines = [
        f"| loss | {heads} | test_acc, epoch {last} | vs {REFERENCE}, epoch {last} | slope per epoch, epochs "
        f"{last // 2 + 1}-{last} | grad_norm, epoch 1 -> {last} | seeds |",
        "|---|" + "---|" * (len(epochs) + 6),
    ]
    for loss, runs in curves.groupby("loss", sort=False):
        cells = [interval_text(list(at_epoch(runs, e, "test_score").values())) for e in epochs]
        versus = (
            paired_text(at_epoch(runs, last, "test_score"), at_epoch(reference, last, "test_score"))
            if loss != REFERENCE and len(reference)
            else "-"
        )
        grads = [summarise(list(at_epoch(runs, e, "grad_norm").values())).mean for e in (1, last)]
        lines.append(
            f"| {loss} | {' | '.join(cells)} | {interval_text(list(at_epoch(runs, last, 'test_acc').values()))} | "
            f"{versus} | {slope_text(second_half_slopes(runs))} | {grads[0]:.3f} -> "
            f"{grads[1]:.3f} | {runs['seed'].nunique()} |"
        )
    return lines


def verdicts(curves: pd.DataFrame) -> list[str]:
    """Per loss below the reference at the end: rising or not, and the epochs its slope needs to close the gap."""
    last = int(curves["epoch"].max())
    reference = summarise(list(at_epoch(curves[curves["loss"] == REFERENCE], last, "test_score").values())).mean
    lines = []
    for loss, runs in curves.groupby("loss", sort=False):
        final = summarise(list(at_epoch(runs, last, "test_score").values())).mean
        if loss == REFERENCE or math.isnan(reference) or final >= reference:
            continue
        rise = summarise(list(second_half_slopes(runs).values()))
        low, high = rise.mean - rise.ci95, rise.mean + rise.ci95
        gap = reference - final
        if rise.n < 2:
            lines.append(
                f"- {loss}: {gap:.3f} below {REFERENCE}, slope {rise.mean:+.4f} per epoch (one seed: no interval)"
            )
        elif low > 0:
            need = f"{gap / high:.0f}-{gap / low:.0f}" if high > low else f"{gap / rise.mean:.0f}"
            lines.append(
                f"- {loss}: slow, not stuck: still rising ({rise.mean:+.4f} per epoch, interval {low:+.4f} to "
                f"{high:+.4f}); {gap:.3f} below {REFERENCE}, about {need} more epochs at that rate"
            )
        else:
            lines.append(
                f"- {loss}: not shown to rise ({rise.mean:+.4f} per epoch, interval {low:+.4f} to {high:+.4f}), "
                f"{gap:.3f} below {REFERENCE}: stuck at this learning rate, or rising too slowly to tell"
            )
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--epochs", default="5,10,20,30", help="the epochs to show the test score at")
    args = parser.parse_args(argv)
    try:
        require(
            all(e.strip().isdigit() for e in args.epochs.split(",")),
            f"--epochs {args.epochs}: write whole epochs separated by commas",
        )
        curves = read_curves(args.directory, COLUMNS)
        epochs = [e for e in map(int, args.epochs.split(",")) if e <= curves["epoch"].max()]
    except (LossbenchError, OSError, pd.errors.ParserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(table(curves, epochs) + [""] + verdicts(curves)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
