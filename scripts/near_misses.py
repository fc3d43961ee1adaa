"""Which mistakes does each loss make? Per loss of a comparison, from each run's test confusion.csv and its score
table: the share of its mistakes that are near misses, counted only on the true classes that have one.

A mistake (pred != y) is a near miss when S[y, pred] is above the lowest score of row y's wrong answers; a row
whose wrong answers all score the same (e.g. a non-dog class in dogs20_groups) offers no near miss and is left
out, so the share reads "of the mistakes on classes where a better mistake exists, how many were better".
Printed as a markdown table: mean ± 95% t-interval over seeds, and the paired difference with ce.

Usage: python scripts/near_misses.py COMPARISON_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lossbench.errors import LossbenchError
from lossbench.rundir import CONFUSION_FILE, find_runs, read_config
from lossbench.scores import build_scores
from lossbench.stats import paired, summarise


def near_miss_share(counts: pd.DataFrame, scores: np.ndarray) -> float:
    """Near misses / mistakes over the rows that offer a near miss (NaN when there are no such mistakes)."""
    off = ~np.eye(len(scores), dtype=bool)
    worst = np.where(off, scores, np.inf).min(axis=1, keepdims=True)
    near = off & (scores > worst)
    rows = near.any(axis=1)
    n = counts.to_numpy(float)
    mistakes = (n * off)[rows].sum()
    return float((n * near)[rows].sum() / mistakes) if mistakes > 0 else float("nan")


def run_shares(root: Path) -> pd.DataFrame:
    """One row per run with a confusion.csv: loss, seed, near-miss share."""
    rows = []
    for run_dir in find_runs(root):
        path = run_dir / CONFUSION_FILE
        if not path.exists():
            continue
        cfg = read_config(run_dir)
        counts = pd.read_csv(path, index_col=0)
        matrix = build_scores(cfg.scores, list(counts.columns), warn=False).matrix.numpy()
        rows.append({"loss": str(cfg.loss.name), "seed": int(cfg.seed), "share": near_miss_share(counts, matrix)})
    return pd.DataFrame(rows)


def markdown(shares: pd.DataFrame) -> str:
    reference = shares[shares["loss"] == "ce"].set_index("seed")["share"]
    lines = ["| loss | near misses among mistakes | difference with ce (paired) | seeds |", "|---|---|---|---|"]
    for loss, group in shares.groupby("loss", sort=False):
        s = summarise(group["share"])
        cell = f"{s.mean:.3f} ± {s.ci95:.3f}" if s.n > 1 else f"{s.mean:.3f}"
        versus = "-"
        if loss != "ce" and len(reference):
            by_seed = group.set_index("seed")["share"]
            seeds = sorted(set(by_seed.index) & set(reference.index))
            p = paired(by_seed[seeds].to_numpy(), reference[seeds].to_numpy())
            versus = f"{p.diff:+.3f} ± {p.ci95:.3f} (p = {p.p_value:.3g})" if p.n > 1 else f"{p.diff:+.3f}"
        lines.append(f"| {loss} | {cell} | {versus} | {s.n} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        shares = run_shares(Path(argv[0]))
    except LossbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if shares.empty:
        print(f"error: no run under {argv[0]} has a {CONFUSION_FILE}", file=sys.stderr)
        return 2
    print(markdown(shares))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
