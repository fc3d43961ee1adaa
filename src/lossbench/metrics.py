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


def epochs_to_target(curve: pd.DataFrame, target: float) -> tuple[float, float]:
    """(epoch, elapsed_s) of the first evaluation with test_acc >= target, NaN if never."""
    hit = curve[curve["test_acc"] >= target]
    if hit.empty:
        return math.nan, math.nan
    first = hit.iloc[0]
    return float(first["epoch"]), float(first["elapsed_s"])


def accuracy_auc(curve: pd.DataFrame) -> float:
    """Area under test_acc vs epoch from epoch 0 (accuracy 1/C taken as 0) to the last epoch, divided by the
    number of epochs: the mean accuracy over training, 1.0 for a run that is perfect from the start."""
    epochs = np.concatenate([[0.0], curve["epoch"].to_numpy(float)])
    acc = np.concatenate([[0.0], curve["test_acc"].to_numpy(float)])
    if epochs[-1] <= 0:
        return math.nan
    area = np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(epochs))  # trapezoid rule
    return float(area / epochs[-1])
