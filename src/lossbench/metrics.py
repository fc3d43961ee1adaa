"""Metric definitions: per-evaluation test metrics and the per-run convergence summaries.

The columns of metrics.csv are METRIC_COLUMNS, one row per evaluation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

METRIC_COLUMNS = [
    "epoch", "step", "elapsed_s", "lr", "train_loss", "train_acc", "test_nll", "test_acc",
    "test_score", "test_score_bayes", "test_expected_score", "grad_norm",
]  # fmt: skip
TIMING_COLUMNS = ["elapsed_s"]


def score_sums(logits: Tensor, targets: Tensor, scores: Tensor) -> Tensor:
    """Per-batch sums of [nll, correct, score, bayes score, expected score] (float32, stays on the device).

    score: S[y, argmax q]; bayes: S[y, k*] with k* = argmax_k sum_i q_i S[i, k] (the decision that maximises the
    expected score under the model's own belief); expected score: sum_j S[y, j] q_j."""
    logits = logits.float()
    q = logits.softmax(dim=1)
    predicted = logits.argmax(dim=1)
    bayes = (q @ scores).argmax(dim=1)
    rows = scores[targets]
    return torch.stack(
        [
            F.cross_entropy(logits, targets, reduction="sum"),
            (predicted == targets).sum().float(),
            rows.gather(1, predicted[:, None]).sum(),
            rows.gather(1, bayes[:, None]).sum(),
            (rows * q).sum(),
        ]
    )


def test_metrics(sums: Tensor, count: int) -> dict[str, float]:
    nll, correct, score, bayes, expected = (sums / count).tolist()
    return {
        "test_nll": nll,
        "test_acc": correct,
        "test_score": score,
        "test_score_bayes": bayes,
        "test_expected_score": expected,
    }


def epochs_to_target(curve: pd.DataFrame, target: float, column: str = "test_acc") -> tuple[float, float]:
    """(epoch, elapsed_s) of the first evaluation with `column` >= target, NaN if never."""
    hit = curve[curve[column] >= target]
    if hit.empty:
        return math.nan, math.nan
    first = hit.iloc[0]
    return float(first["epoch"]), float(first["elapsed_s"])


def curve_mean(curve: pd.DataFrame, column: str) -> float:
    """The AUC of `column` over training: its mean over the evaluated epochs (1.0 for an accuracy that is perfect
    from the first evaluation). No made-up value at epoch 0, which would reward nothing real."""
    values = curve[column].dropna() if column in curve else pd.Series(dtype=float)
    return float(values.mean()) if len(values) else math.nan
