"""Which mistakes does each loss make? Per loss of a comparison, from each run's test confusion.csv and its score
table, counted only on the true classes that offer a near miss: the share of its mistakes that are near misses,
and the share of those classes' test examples answered with a far mistake (what a better-mistakes loss must lower,
not just shift: a loss that errs twice as often can have a higher near-miss share and more far mistakes).

A mistake (pred != y) is a near miss when S[y, pred] is above the lowest score of row y's wrong answers; a row
whose wrong answers all score the same (e.g. a non-dog class in dogs20_groups) offers no near miss and is left
out, so the share reads "of the mistakes on classes where a better mistake exists, how many were better".
Printed as a markdown table: mean ± 95% t-interval over seeds, and the paired difference with ce.

A run's score table is built from its config.yaml only when it names lossbench's own components (a results folder
may come from anyone); `--trust mypkg.Table` allows one of yours.

Usage: python scripts/near_misses.py COMPARISON_DIR [--trust TARGET ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lossbench.errors import LossbenchError, one_line, printed_warnings
from lossbench.rundir import confusions_by_run, nothing_counted
from lossbench.scores import build_scores
from lossbench.stats import interval_text, paired_column_text
from lossbench.trust import check_config


def near_and_far(counts: pd.DataFrame, scores: np.ndarray) -> tuple[float, float]:
    """Over the rows that offer a near miss: (near misses / mistakes, far mistakes / examples); NaN where the
    denominator is 0."""
    off = ~np.eye(len(scores), dtype=bool)
    worst = np.where(off, scores, np.inf).min(axis=1, keepdims=True)
    near = off & (scores > worst)
    rows = near.any(axis=1)
    n = counts.to_numpy(float)[rows]
    mistakes, near_misses, examples = (n * off[rows]).sum(), (n * near[rows]).sum(), n.sum()
    share = near_misses / mistakes if mistakes > 0 else np.nan
    far = (mistakes - near_misses) / examples if examples > 0 else np.nan
    return float(share), float(far)


def run_shares(root: Path, trusted: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per run with a confusion.csv: loss, seed, near-miss share, far-mistake rate. A run whose
    confusion.csv, config or score table is damaged is left out with a warning, as the report does."""
    rows = []
    with printed_warnings() as warnings:
        for run_dir, counts, cfg, loss, seed in confusions_by_run(root, warnings):
            try:
                check_config(
                    OmegaConf.create({"scores": cfg.scores}),
                    str(run_dir / "config.yaml"),
                    trusted,
                    f"python scripts/near_misses.py {root}",
                )
                matrix = build_scores(cfg.scores, list(counts.columns), warn=False).matrix.numpy()
            except (LossbenchError, OmegaConfBaseException, ValueError, TypeError) as err:  # a config without scores
                warnings.append(f"{run_dir}: {one_line(err)}; run left out")
                continue
            share, far = near_and_far(counts, matrix)
            rows.append({"loss": loss, "seed": seed, "share": share, "far": far})
    return pd.DataFrame(rows)


def markdown(shares: pd.DataFrame) -> str:
    reference = shares[shares["loss"] == "ce"]
    lines = [
        "| loss | near misses among mistakes | vs ce (paired) | far mistakes per example | vs ce (paired) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for loss, group in shares.groupby("loss", sort=False):
        compare = loss != "ce" and len(reference)
        share_vs, far_vs = (
            (paired_column_text(group, reference, c) for c in ("share", "far")) if compare else ("-", "-")
        )
        lines.append(
            f"| {loss} | {interval_text(group['share'])} | {share_vs} | {interval_text(group['far'])} | {far_vs} | "
            f"{len(group)} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    trusted = [argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "--trust"]
    argv = [a for i, a in enumerate(argv) if a != "--trust" and (i == 0 or argv[i - 1] != "--trust")]
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        shares = run_shares(Path(argv[0]), trusted)
    except LossbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if shares.empty:
        print(f"error: {nothing_counted(argv[0])}", file=sys.stderr)
        return 2
    print(markdown(shares))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
