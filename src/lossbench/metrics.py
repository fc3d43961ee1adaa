"""Metric definitions: per-evaluation metrics of a split (val or test) and the per-run convergence summaries.

The columns of metrics.csv are METRIC_COLUMNS (lossbench.rundir), one row per evaluation. A split's metrics are
sums over its examples, accumulated on the device batch by batch (`split_sums`, a fixed-length vector) and read
back once (`split_metrics`). With q = softmax(z), y the true class, pred = argmax q:
- nll: -log q_y; acc: pred == y; top5_acc: y among the 5 largest q (NaN when C < 10, where top-5 says little:
  with 4 classes it is 1 for any model).
- score: S[y, pred], the score the user gets with the usual decision.
- score_bayes: S[y, k*], k* = argmax_k sum_i q_i S[i,k], the Bayes decision (Karthik et al. 2021).
- score_bayes_cal: the same decision on softmax(z / T), T fit on the validation split (`fit_temperature`);
  NaN when there is no validation split: T is never fit on test. On val itself it is in-sample.
- expected_score: sum_j S[y,j] q_j, the user's objective under the model's belief.
- mistake_severity: mean of S[y,y] - S[y,pred] over the mistakes (pred != y); NaN when there are none.
- ece: expected calibration error of the confidence max q over 15 equal-width bins (Guo et al. 2017, "On
  calibration of modern neural networks", ICML, who also introduced the temperature scaling used here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.rundir import split_columns

TIMING_COLUMNS = ["elapsed_s"]
ECE_BINS = 15
TOP_K, TOP_K_MIN_CLASSES = 5, 10
# Layout of split_sums: the per-example sums, then per confidence bin the sums of confidence and of correctness.
SUM_FIELDS = [
    "count",
    "nll",
    "correct",
    "top5_correct",
    "score",
    "score_bayes",
    "score_bayes_cal",
    "expected_score",
    "severity",
    "mistakes",
]
SUM_SIZE = len(SUM_FIELDS) + 2 * ECE_BINS
# Temperature search: golden-section on log T over [1/100, 100]; NLL is convex in 1/T, so unimodal in log T.
LOG_T_RANGE, T_ITERATIONS = (-math.log(100.0), math.log(100.0)), 40  # 40 steps: below float32 resolution


def bayes_decision(q: Tensor, scores: Tensor) -> Tensor:
    """argmax_k sum_i q_i S[i, k]: the answer with the highest expected score under the belief q."""
    return (q @ scores).argmax(dim=-1)


def split_sums(logits: Tensor, targets: Tensor, scores: Tensor, temperature: Tensor | None) -> Tensor:
    """The sums of SUM_FIELDS and the ECE bins over this batch (float32, stays on the device; add batches up).
    `logits` [..., N, C]: leading dimensions are models scored on the same N examples (a pack's members, in one
    call); the result is [..., SUM_SIZE]. `temperature` ([...], one per model) is the one fit on val;
    None makes score_bayes_cal NaN. Each model is reduced exactly as the one-model formulas reduce it (one
    F.cross_entropy sum per model, one matrix product for q @ S): bf16-trained logits tie often, and rounding
    another way would break their ties another way."""
    lead, (n, c) = logits.shape[:-2], logits.shape[-2:]
    logits = logits.float().reshape(-1, n, c)
    m = len(logits)
    q = logits.softmax(dim=-1)
    predicted = logits.argmax(dim=-1)  # the same argmax as confusion_counts
    confidence = q.gather(-1, predicted[..., None]).squeeze(-1)
    correct = (predicted == targets).float()
    rows = scores[targets]
    each_rows = rows.expand(m, n, c)  # a view: every model's examples have the same true rows
    score = each_rows.gather(-1, predicted[..., None]).squeeze(-1)
    nan = logits.new_full((m,), math.nan)
    if c >= TOP_K_MIN_CLASSES:
        top5 = (logits.topk(TOP_K, dim=-1).indices == targets[:, None]).any(dim=-1).float().sum(dim=-1)
    else:
        top5 = nan

    def bayes_scores(beliefs: Tensor) -> Tensor:  # [M]: the summed S[y, k*], one matrix product for all models
        decision = bayes_decision(beliefs.reshape(m * n, c), scores).view(m, n, 1)
        return each_rows.gather(-1, decision).sum(dim=(1, 2))

    calibrated = nan if temperature is None else bayes_scores((logits / temperature.reshape(m, 1, 1)).softmax(dim=-1))
    mistake = 1 - correct
    totals = torch.stack(
        [
            logits.new_full((m,), float(n)),
            torch.stack([F.cross_entropy(own, targets, reduction="sum") for own in logits]),
            correct.sum(dim=-1),
            top5,
            score.sum(dim=-1),
            bayes_scores(q),
            calibrated,
            (rows * q).sum(dim=(1, 2)),
            ((rows.gather(1, targets[:, None]).squeeze(1) - score) * mistake).sum(dim=-1),
            mistake.sum(dim=-1),
        ],
        dim=-1,
    )
    # bins (k/15, (k+1)/15]; a confidence is at least 1/C > 0, so the clamp only guards rounding at 1
    bins = (confidence * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1
    sums = torch.cat(
        [totals, per_model_sums(bins, confidence, ECE_BINS), per_model_sums(bins, correct, ECE_BINS)], dim=-1
    )
    return sums.view(*lead, SUM_SIZE)


def per_model_sums(cells: Tensor, values: Tensor, size: int) -> Tensor:
    """[M, size]: each model's values ([M, N]) summed into its cells ([M, N], each in 0..size-1), in one
    index_add_ (rather than bincount, which reads its input's maximum back to the host on CUDA)."""
    m = len(cells)
    flat = (cells + size * torch.arange(m, device=cells.device)[:, None]).flatten()
    sums = torch.zeros(m * size, dtype=values.dtype, device=values.device)
    return sums.index_add_(0, flat, values.flatten()).view(m, size)


def split_metrics(sums: Sequence[float], split: str) -> dict[str, float]:
    """The `{split}_*` metrics from split_sums read back to the host (all NaN for an empty split)."""
    total = dict(zip(SUM_FIELDS, sums))
    count = total["count"]
    if not count > 0:
        return dict.fromkeys(split_columns(split), math.nan)
    confidence_sums = np.asarray(sums[len(SUM_FIELDS) : len(SUM_FIELDS) + ECE_BINS])
    correct_sums = np.asarray(sums[len(SUM_FIELDS) + ECE_BINS :])
    values = {
        "nll": total["nll"] / count,
        "acc": total["correct"] / count,
        "top5_acc": total["top5_correct"] / count,
        "score": total["score"] / count,
        "score_bayes": total["score_bayes"] / count,
        "score_bayes_cal": total["score_bayes_cal"] / count,
        "expected_score": total["expected_score"] / count,
        "mistake_severity": total["severity"] / total["mistakes"] if total["mistakes"] > 0 else math.nan,
        # sum over bins of n_b / N * |acc_b - conf_b| = sum |correct_b - confidence_b| / N
        "ece": float(np.abs(correct_sums - confidence_sums).sum()) / count,
    }
    return {f"{split}_{name}": value for name, value in values.items()}


def fit_temperature(logits: Tensor, targets: Tensor) -> Tensor:
    """The T minimising the mean NLL of softmax(logits / T) (temperature scaling, Guo et al. 2017), as a tensor
    on the logits' device, one per model: logits [..., N, C] give T [...] (0-d for one model's [N, C]). A fixed
    number of golden-section steps on log T, so it is deterministic and never syncs with the host. Fit it on
    validation logits only."""
    lead, (n, classes) = logits.shape[:-2], logits.shape[-2:]
    logits = logits.float().reshape(-1, n, classes)
    m = len(logits)

    def nll(log_t: Tensor) -> Tensor:  # one mean per model, each reduced as a lone model's (see split_sums)
        t = log_t.exp()
        return torch.stack([F.cross_entropy(logits[i] / t[i], targets) for i in range(m)])

    ratio = (math.sqrt(5) - 1) / 2
    a, b = (logits.new_full((m,), bound) for bound in LOG_T_RANGE)
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    f_c, f_d = nll(c), nll(d)
    for _ in range(T_ITERATIONS):
        # the minimum lies in [a, d] when f(c) < f(d), else in [c, b]; the kept inner point is reused
        left = f_c < f_d
        a, b = torch.where(left, a, c), torch.where(left, d, b)
        c, d = torch.where(left, b - ratio * (b - a), d), torch.where(left, c, a + ratio * (b - a))
        value = nll(torch.where(left, c, d))
        f_c, f_d = torch.where(left, value, f_d), torch.where(left, f_c, value)
    return ((a + b) / 2).exp().view(lead)


def confusion_counts(logits: Tensor, targets: Tensor) -> Tensor:
    """C x C counts of (true class, argmax prediction): rows true, columns predicted (int64, on the device).
    Logits [..., N, C] of several models on the same examples give [..., C, C]."""
    lead, (n, c) = logits.shape[:-2], logits.shape[-2:]
    cells = targets * c + logits.reshape(-1, n, c).argmax(dim=-1)
    return per_model_sums(cells, torch.ones_like(cells), c * c).view(*lead, c, c)


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
